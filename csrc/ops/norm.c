/* Layer normalisation over the last dimension. */
#include "kernels.h"

/* inp (N,C): mean_n = Σ_c x/C, var_n = Σ_c (x-mean)²/C, rstd_n = 1/√(var_n + eps),
 * out = (x - mean)·rstd·weight + bias. Two-pass statistics in double for accuracy. */
void pc_layernorm_forward(float *out, float *mean, float *rstd, const float *inp,
                          const float *weight, const float *bias, int N, int C, float eps) {
    PC_PARALLEL_FOR((int64_t)N * C)
    for (int n = 0; n < N; n++)
        pc_layernorm_row(out + (int64_t)n * C, mean ? mean + n : NULL, rstd ? rstd + n : NULL,
                      inp + (int64_t)n * C, weight, bias, C, eps);
}

/* sum = (a + b) + c (c NULL: a + b), out = LN(sum), a row at a time while it is in cache
 * (out may be an input) */
void pc_layernorm_forward_sum(float *out, float *mean, float *rstd, float *sum, const float *a,
                              const float *b, const float *c3, const float *weight,
                              const float *bias, int N, int C, float eps) {
    PC_PARALLEL_FOR((int64_t)N * C)
    for (int n = 0; n < N; n++) {
        const int64_t o = (int64_t)n * C;
        if (c3)
            for (int c = 0; c < C; c++) sum[o + c] = (a[o + c] + b[o + c]) + c3[o + c];
        else
            for (int c = 0; c < C; c++) sum[o + c] = a[o + c] + b[o + c];
        pc_layernorm_row(out + o, mean ? mean + n : NULL, rstd ? rstd + n : NULL, sum + o, weight,
                      bias, C, eps);
    }
}

/* With x̂ = (x - mean)·rstd and y = x̂·w + b:
 *   dbias += Σ_n dy,  dweight += Σ_n dy·x̂
 *   dx = rstd · (g - mean_c(g) - x̂·mean_c(g·x̂))  where g = dy·w
 * dx is row-parallel; the column sums are column-parallel (deterministic). dx is added to
 * dinp, or (pc_layernorm_backward_to) stored in dcopy when that is not NULL and in dinp
 * through dropout's backward (p > 0: element n·C + c kept or not as pc_dropout_forward
 * decides with seed, then scaled by 1/(1 - p)); or, in
 * pc_layernorm_backward_junction: dcopy += dx (+ dextra), dinp = dropout's backward of
 * dx + dextra. */
enum { LN_ADD, LN_STORE, LN_JUNCTION };

/* a junction's row: v the input's gradient; res += v (+ extra), branch = drop(v + extra),
 * extra may be branch itself (each element read before it is written) */
static inline __attribute__((always_inline)) void
junction_row(float *branch, float *res, const float *extra, bool in_place, bool extra_to_res,
             const float *dy,
             const float *x, const float *weight, float m, float s, float g_mean, float gx_mean,
             int C, bool drop, float scale, uint64_t threshold, uint64_t seed, uint64_t first) {
    for (int c = 0; c < C; c++) {
        const float xhat = (x[c] - m) * s;
        float v = s * (dy[c] * weight[c] - g_mean - xhat * gx_mean);
        res[c] += v;
        if (extra) { /* in place: extra is branch (a vector load then a store, as ever) */
            const float e = in_place ? branch[c] : extra[c];
            if (extra_to_res) res[c] += e;
            v += e;
        }
        branch[c] = v;
    }
    if (drop) pc_dropout_span(branch, branch, C, scale, seed, first, threshold);
}

static void layernorm_backward(float *dinp, float *dcopy, int mode, const float *dextra,
                               bool extra_to_copy, float *dweight, float *dbias,
                               const float *dout, const float *inp, const float *weight,
                               const float *mean, const float *rstd, int N, int C, float p,
                               uint64_t seed) {
    const bool add = mode == LN_ADD, drop = !add && p > 0.0f;
    const float scale = drop ? 1.0f / (1.0f - p) : 1.0f;
    const uint64_t threshold = pc_keep_threshold(p);
    if (dinp) {
        PC_PARALLEL_FOR((int64_t)N * C)
        for (int n = 0; n < N; n++) {
            const float *x = inp + (int64_t)n * C, *dy = dout + (int64_t)n * C;
            float *dx = dinp + (int64_t)n * C;
            float m = mean[n], s = rstd[n];
            float g_mean = 0.0f, gx_mean = 0.0f;
            #pragma omp simd reduction(+ : g_mean, gx_mean)
            for (int c = 0; c < C; c++) {
                float g = dy[c] * weight[c];
                g_mean += g;
                gx_mean += g * (x[c] - m) * s;
            }
            g_mean /= C;
            gx_mean /= C;
            float *copy = dcopy ? dcopy + (int64_t)n * C : NULL;
            const uint64_t first = (uint64_t)n * (uint64_t)C;
            const float *extra = dextra ? dextra + (int64_t)n * C : NULL;
            if (mode == LN_JUNCTION) {
                /* the flags as constants in each call, so that each loop is branch-free */
#define JUNCTION(e, in_place, to_res)                                                          \
    junction_row(dx, copy, e, in_place, to_res, dy, x, weight, m, s, g_mean, gx_mean, C, drop, \
                 scale, threshold, seed, first)
                if (!extra)
                    JUNCTION(NULL, false, false);
                else if (extra == dx)
                    extra_to_copy ? JUNCTION(extra, true, true) : JUNCTION(extra, true, false);
                else
                    extra_to_copy ? JUNCTION(extra, false, true) : JUNCTION(extra, false, false);
#undef JUNCTION
                continue;
            }
            for (int c = 0; c < C; c++) {
                float xhat = (x[c] - m) * s;
                float v = s * (dy[c] * weight[c] - g_mean - xhat * gx_mean);
                if (add) {
                    dx[c] += v;
                } else {
                    if (copy) copy[c] = v;
                    dx[c] = v;
                }
            }
            if (drop) pc_dropout_span(dx, dx, C, scale, seed, first, threshold);
        }
    }
    if (dweight || dbias) {
        /* threads own whole column groups and walk the rows once each (a sweep per 64-column
         * block read every row's lines several times over, prefetched neighbours and all) */
        const pc_column_groups cg = pc_column_groups_of(N, C);
        PC_PRAGMA(omp parallel for schedule(static) num_threads(cg.threads))
        for (int g = 0; g < cg.count; g++) {
            const int c0 = g * cg.width, c1 = pc_column_group_end(&cg, g, C);
            float dw[PC_COLUMN_GROUP_MAX], db[PC_COLUMN_GROUP_MAX];
            memset(dw, 0, sizeof(float) * (c1 - c0));
            memset(db, 0, sizeof(float) * (c1 - c0));
            for (int n = 0; n < N; n++) {
                const float *x = inp + (int64_t)n * C, *dy = dout + (int64_t)n * C;
                float m = mean[n], s = rstd[n];
                if (dweight)
                    for (int c = c0; c < c1; c++) dw[c - c0] += dy[c] * (x[c] - m) * s;
                for (int c = c0; c < c1; c++) db[c - c0] += dy[c];
            }
            for (int c = c0; c < c1; c++) {
                if (dweight) dweight[c] += dw[c - c0];
                if (dbias) dbias[c] += db[c - c0];
            }
        }
    }
}

void pc_layernorm_backward(float *dinp, float *dweight, float *dbias, const float *dout,
                           const float *inp, const float *weight, const float *mean,
                           const float *rstd, int N, int C) {
    layernorm_backward(dinp, NULL, LN_ADD, NULL, false, dweight, dbias, dout, inp, weight, mean,
                       rstd, N, C, 0.0f, 0);
}

void pc_layernorm_backward_to(float *dinp, float *dcopy, float *dweight, float *dbias,
                              const float *dout, const float *inp, const float *weight,
                              const float *mean, const float *rstd, int N, int C, float p,
                              uint64_t seed) {
    layernorm_backward(dinp, dcopy, LN_STORE, NULL, false, dweight, dbias, dout, inp, weight,
                       mean, rstd, N, C, p, seed);
}

void pc_layernorm_backward_junction(float *dbranch, float *dres, const float *dextra,
                                    bool extra_to_res, float *dweight, float *dbias,
                                    const float *dout, const float *inp, const float *weight,
                                    const float *mean, const float *rstd, int N, int C, float p,
                                    uint64_t seed) {
    layernorm_backward(dbranch, dres, LN_JUNCTION, dextra, extra_to_res, dweight, dbias, dout,
                       inp, weight, mean, rstd, N, C, p, seed);
}
