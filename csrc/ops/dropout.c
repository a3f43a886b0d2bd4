/* Dropout with a counter-based RNG: the mask is a pure function of (seed, index). */
#include "kernels.h"

bool pc_dropout_keep(uint64_t seed, uint64_t i, float p) { return pc_keep(seed, i, p); }

void pc_dropout_forward(float *out, const float *inp, int64_t n, float p, uint64_t seed) {
    const float scale = p < 1.0f ? 1.0f / (1.0f - p) : 0.0f;
    const uint64_t t = pc_keep_threshold(p);
    PC_PARALLEL_FOR(n)
    for (int64_t j0 = 0; j0 < n; j0 += PC_KEEP_CHUNK)
        pc_dropout_span(out + j0, inp + j0, pc_keep_chunk_at(n, j0), scale, seed, (uint64_t)j0,
                        t);
}

/* the forward was out = inp·mask/(1-p), so dinp += dout·mask/(1-p) */
void pc_dropout_backward(float *dinp, const float *dout, int64_t n, float p, uint64_t seed) {
    const float scale = p < 1.0f ? 1.0f / (1.0f - p) : 0.0f;
    const uint64_t t = pc_keep_threshold(p);
    PC_PARALLEL_FOR(n)
    for (int64_t j0 = 0; j0 < n; j0 += PC_KEEP_CHUNK) {
        const int len = pc_keep_chunk_at(n, j0);
        int32_t keep[PC_KEEP_CHUNK];
        pc_keep_mask(keep, seed, (uint64_t)j0, len, t);
        float *d = dinp + j0;
        const float *g = dout + j0;
        int j = 0;
        for (; j + PC_VW <= len; j += PC_VW) {
            const pc_vec v = pc_loadv(d + j);
            pc_storev(d + j, pc_select(pc_load_keep(keep + j), v + pc_loadv(g + j) * scale, v));
        }
        for (; j < len; j++) d[j] = keep[j] ? d[j] + g[j] * scale : d[j];
    }
}

/* d (n) = d·mask/(1-p) in place: dropout's backward when its input's gradient is d alone */
void pc_dropout_backward_inplace(float *d, int64_t n, float p, uint64_t seed) {
    if (p <= 0.0f) return;
    pc_dropout_forward(d, d, n, p, seed);
}

/* d (n) = dropout's backward of d + a: a branch's gradient from two shares, then its dropout
 * (element i as pc_dropout_forward counts) */
void pc_sum_dropout_backward(float *d, const float *a, int64_t n, float p, uint64_t seed) {
    const float scale = p > 0.0f ? 1.0f / (1.0f - p) : 1.0f;
    const uint64_t t = pc_keep_threshold(p);
    PC_PARALLEL_FOR(n)
    for (int64_t j0 = 0; j0 < n; j0 += PC_KEEP_CHUNK) {
        const int len = pc_keep_chunk_at(n, j0);
        float *v = d + j0;
        for (int j = 0; j < len; j++) v[j] += a[j0 + j];
        if (p > 0.0f) pc_dropout_span(v, v, len, scale, seed, (uint64_t)j0, t);
    }
}

/* one row of pc_bias_dropout_residual, its first element numbered `first` */
static inline __attribute__((always_inline)) void
bias_dropout_residual_row(float *row, const float *bias, const float *res, int C, float p,
                          float scale, uint64_t t, uint64_t seed, uint64_t first) {
    if (bias)
        for (int c = 0; c < C; c++) row[c] += bias[c];
    if (p > 0.0f) pc_dropout_span(row, row, C, scale, seed, first, t);
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
