/* Dropout with a counter-based RNG: the mask is a pure function of (seed, index). */
#include "kernels.h"

bool pc_dropout_keep(uint64_t seed, uint64_t i, float p) { return pc_keep(seed, i, p); }

void pc_dropout_forward(float *out, const float *inp, int64_t n, float p, uint64_t seed) {
    const float scale = p < 1.0f ? 1.0f / (1.0f - p) : 0.0f;
    const uint64_t t = pc_keep_threshold(p);
    PC_PARALLEL_FOR(n)
    for (int64_t i = 0; i < n; i++) out[i] = pc_keep_t(seed, (uint64_t)i, t) ? inp[i] * scale : 0.0f;
}

/* the forward was out = inp·mask/(1-p), so dinp += dout·mask/(1-p) */
void pc_dropout_backward(float *dinp, const float *dout, int64_t n, float p, uint64_t seed) {
    const float scale = p < 1.0f ? 1.0f / (1.0f - p) : 0.0f;
    const uint64_t t = pc_keep_threshold(p);
    PC_PARALLEL_FOR(n)
    for (int64_t i = 0; i < n; i++)
        if (pc_keep_t(seed, (uint64_t)i, t)) dinp[i] += dout[i] * scale;
}

/* d (n) = d·mask/(1-p) in place: dropout's backward when its input's gradient is d alone */
void pc_dropout_backward_inplace(float *d, int64_t n, float p, uint64_t seed) {
    if (p <= 0.0f) return;
    const float scale = 1.0f / (1.0f - p);
    const uint64_t t = pc_keep_threshold(p);
    PC_PARALLEL_FOR(n)
    for (int64_t i = 0; i < n; i++) d[i] = pc_keep_t(seed, (uint64_t)i, t) ? d[i] * scale : 0.0f;
}

/* d (n) = dropout's backward of d + a: a branch's gradient from two shares, then its dropout
 * (element i as pc_dropout_forward counts) */
void pc_sum_dropout_backward(float *d, const float *a, int64_t n, float p, uint64_t seed) {
    const float scale = p > 0.0f ? 1.0f / (1.0f - p) : 1.0f;
    const uint64_t t = pc_keep_threshold(p);
    PC_PARALLEL_FOR(n)
    for (int64_t i = 0; i < n; i++) {
        const float v = d[i] + a[i];
        d[i] = p <= 0.0f || pc_keep_t(seed, (uint64_t)i, t) ? v * scale : 0.0f;
    }
}

/* one row of pc_bias_dropout_residual, its first element numbered `first` */
static inline __attribute__((always_inline)) void
bias_dropout_residual_row(float *row, const float *bias, const float *res, int C, float p,
                          float scale, uint64_t t, uint64_t seed, uint64_t first) {
    if (p > 0.0f) {
        if (bias)
            for (int c = 0; c < C; c++)
                row[c] = pc_keep_t(seed, first + c, t) ? (row[c] + bias[c]) * scale : 0.0f;
        else
            for (int c = 0; c < C; c++)
                row[c] = pc_keep_t(seed, first + c, t) ? row[c] * scale : 0.0f;
    } else if (bias) {
        for (int c = 0; c < C; c++) row[c] += bias[c];
    }
    if (res)
        for (int c = 0; c < C; c++) row[c] += res[c];
}

/* y (N,C) = dropout(y + bias) + residual: a residual branch's linear output, its dropout
 * (element n·C + c, as pc_dropout_forward counts) and the skip connection in one pass; bias
 * NULL: added already; residual NULL: the branch alone */
void pc_bias_dropout_residual(float *y, const float *bias, const float *residual, int N, int C,
                              float p, uint64_t seed) {
    const float scale = p > 0.0f ? 1.0f / (1.0f - p) : 1.0f;
    const uint64_t t = pc_keep_threshold(p);
    PC_PARALLEL_FOR((int64_t)N * C)
    for (int n = 0; n < N; n++)
        bias_dropout_residual_row(y + (int64_t)n * C, bias,
                                  residual ? residual + (int64_t)n * C : NULL, C, p, scale, t,
                                  seed, (uint64_t)n * (uint64_t)C);
}

/* the same, then out = LayerNorm(y) (mean, rstd per row; out may be y) while each row is in
 * cache: a residual junction */
void pc_bias_dropout_residual_norm(float *y, const float *bias, const float *residual, int N,
                                   int C, float p, uint64_t seed, float *out, float *mean,
                                   float *rstd, const float *weight, const float *ln_bias,
                                   float eps) {
    const float scale = p > 0.0f ? 1.0f / (1.0f - p) : 1.0f;
    const uint64_t t = pc_keep_threshold(p);
    PC_PARALLEL_FOR((int64_t)N * C)
    for (int n = 0; n < N; n++) {
        float *row = y + (int64_t)n * C;
        bias_dropout_residual_row(row, bias, residual ? residual + (int64_t)n * C : NULL, C, p,
                                  scale, t, seed, (uint64_t)n * (uint64_t)C);
        pc_layernorm_row(out + (int64_t)n * C, mean ? mean + n : NULL, rstd ? rstd + n : NULL, row,
                         weight, ln_bias, C, eps);
    }
}
