/* Fully connected layer on BLIS GEMMs. */
#include "kernels.h"

/* out (N,OC) = inp (N,IC) · weight (OC,IC)ᵀ + bias (OC) */
void pc_linear_forward(float *out, const float *inp, const float *weight, const float *bias,
                       int N, int IC, int OC) {
    if (bias)
        pc_sgemm_biased(false, true, N, OC, IC, inp, IC, weight, IC, bias, out, OC);
    else
        pc_sgemm(false, true, N, OC, IC, 1.0f, inp, IC, weight, IC, 0.0f, out, OC);
}

/* In the forward out = inp·Wᵀ + b, so now:
 *   dinp (N,IC)   += dout (N,OC) · W (OC,IC)
 *   dweight (OC,IC) += doutᵀ (OC,N) · inp (N,IC)
 *   dbias (OC)    += Σ_n dout[n]  (each thread owns whole columns: deterministic) */
void pc_linear_backward(float *dinp, float *dweight, float *dbias, const float *dout,
                        const float *inp, const float *weight, int N, int IC, int OC) {
    if (dinp) pc_sgemm(false, false, N, IC, OC, 1.0f, dout, OC, weight, IC, 1.0f, dinp, IC);
    if (dweight) pc_sgemm(true, false, OC, IC, N, 1.0f, dout, OC, inp, IC, 1.0f, dweight, IC);
    if (dbias) pc_column_sums(dbias, dout, OC, N, OC);
}

/* The column reductions of a backward, one implementation: dst (C) += Σ_n d[n]·v[n] (or
 * Σ_n d[n] when v is NULL) over N rows, each column summed in row order from zero and then
 * added to dst; then, when l, d[n] ⊙= l. Threads own whole 64-column blocks and walk their
 * blocks 8 rows at a time, so their loads stream along rows (a block's own column of rows,
 * one block after another, ran at a third of the speed on 1536 columns) and no bit depends
 * on the thread count. */
enum { COL_BLOCK = PC_COLUMN_BLOCK, COL_ROWS = 8 };

static inline __attribute__((always_inline)) void
column_tile(float *acc, float *d, int ldd, const float *v, int ldv, const float *l, int n0,
            int n1, int w, bool dot, bool scale) {
    for (int n = n0; n < n1; n++) {
        float *dn = d + (int64_t)n * ldd;
        const float *vn = dot ? v + (int64_t)n * ldv : NULL;
        for (int i = 0; i < w; i++) {
            acc[i] += dot ? dn[i] * vn[i] : dn[i];
            if (scale) dn[i] *= l[i];
        }
    }
}

static inline __attribute__((always_inline)) void
column_reduce(float *dst, float *d, int ldd, const float *v, int ldv, const float *l, int N,
              int C, bool dot, bool scale) {
    const pc_column_groups cg = pc_column_groups_of(N, C);
    PC_PRAGMA(omp parallel for schedule(static) num_threads(cg.threads))
    for (int g = 0; g < cg.count; g++) {
        const int c0 = g * cg.width, c1 = pc_column_group_end(&cg, g, C);
        float acc[PC_COLUMN_GROUP_MAX];
        memset(acc, 0, sizeof(float) * (c1 - c0));
        for (int n0 = 0; n0 < N; n0 += COL_ROWS) {
            const int n1 = n0 + COL_ROWS < N ? n0 + COL_ROWS : N;
            for (int b = c0; b < c1; b += COL_BLOCK) {
                float *a = acc + (b - c0);
                const float *vb = dot ? v + b : NULL, *lb = scale ? l + b : NULL;
                if (c1 - b >= COL_BLOCK) /* the whole block: a fixed trip count */
                    column_tile(a, d + b, ldd, vb, ldv, lb, n0, n1, COL_BLOCK, dot, scale);
                else
                    column_tile(a, d + b, ldd, vb, ldv, lb, n0, n1, c1 - b, dot, scale);
            }
        }
        for (int c = c0; c < c1; c++) dst[c] += acc[c - c0];
    }
}

void pc_column_sums(float *dst, const float *src, int ld, int N, int C) {
    column_reduce(dst, (float *)src, ld, NULL, 0, NULL, N, C, false, false);
}

void pc_column_dots_scale(float *dst, float *d, int ldd, const float *v, int ldv,
                          const float *l, int N, int C) {
    if (dst && l)
        column_reduce(dst, d, ldd, v, ldv, l, N, C, true, true);
    else if (dst)
        column_reduce(dst, d, ldd, v, ldv, NULL, N, C, true, false);
    else if (l)
        pc_scale_columns(d, ldd, d, ldd, l, N, C, NULL);
}

/* y[n] = x[n] ⊙ l for N rows of C columns (y may be x); with save, save (N,C) = x first */
void pc_scale_columns(float *y, int ldy, const float *x, int ldx, const float *l, int N, int C,
                      float *save) {
    PC_PARALLEL_FOR((int64_t)N * C)
    for (int n = 0; n < N; n++) {
        const float *xn = x + (int64_t)n * ldx;
        float *yn = y + (int64_t)n * ldy;
        if (save) memcpy(save + (int64_t)n * C, xn, sizeof(float) * C);
        for (int i = 0; i < C; i++) yn[i] = xn[i] * l[i];
    }
}
