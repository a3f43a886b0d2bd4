/* LoRA's low-rank path, fused row by row so rank-r products never go through BLIS (which
 * runs them memory-bound at a few GFLOP/s): every row of x, y, dy and dx is read once and
 * written at most once, and the rank-r factors stay in cache.
 *
 * Per row: the r dot products u = xd·Aᵀ (and g = s·dy·B) share one sweep over the row; the
 * update y += u·(sBᵀ) (and dx += g·A) keeps a block of 64 outputs in registers over all r
 * ranks. The sums over rows (dB, dA) run per chunk of rows in register tiles (tiles.c), the
 * chunks' partial sums then added in chunk order, so no result depends on the thread count. */
#include <stdlib.h>

#include "../ops/kernels.h"
#include "../ops/tiles.h"
#include "lora.h"

/* fused multiply-adds in the vector loops (ISO C mode would round a·b + c twice) */
#pragma GCC optimize("fp-contract=fast")

enum { CHUNK = 64 };      /* rows per chunk of the backward's sums over rows */
enum { RANKS = 8 };       /* ranks per sweep of the dot products */
enum { COLUMNS = 4 * PC_VW }; /* outputs per register block of the row updates (4 vectors) */

/* out[j] = Σ_i x[i]·M[j·n + i] for j < r: RANKS dot products per sweep over x */
static void row_dots(float *out, const float *x, const float *M, int r, int n) {
    const int nv = n / PC_VW * PC_VW;
    int j0 = 0;
    for (; j0 + RANKS <= r; j0 += RANKS) {
        const float *m = M + (int64_t)j0 * n;
        pc_vec acc[RANKS];
        for (int j = 0; j < RANKS; j++) acc[j] = pc_splat(0.0f);
        for (int i = 0; i < nv; i += PC_VW) {
            const pc_vec xv = pc_loadv(x + i);
            for (int j = 0; j < RANKS; j++) acc[j] += xv * pc_loadv(m + (int64_t)j * n + i);
        }
        for (int j = 0; j < RANKS; j++) {
            float s = pc_hsum(acc[j]);
            for (int i = nv; i < n; i++) s += x[i] * m[(int64_t)j * n + i];
            out[j0 + j] = s;
        }
    }
    for (int j = j0; j < r; j++) out[j] = pc_dot(x, M + (int64_t)j * n, n);
}

/* y[i] += keep[i]·Σ_j c[j]·M[j·n + i] for i < n (keep (n) a dropout row of 0 and 1/(1-p),
 * or NULL for all ones): COLUMNS outputs at a time stay in registers over the r ranks */
static void row_update(float *y, const float *c, const float *M, int r, int n,
                       const float *keep) {
    int i = 0;
    for (; i + COLUMNS <= n; i += COLUMNS) {
        pc_vec acc[COLUMNS / PC_VW];
        for (int v = 0; v < COLUMNS / PC_VW; v++) acc[v] = pc_splat(0.0f);
        for (int j = 0; j < r; j++) {
            const float *m = M + (int64_t)j * n + i;
            for (int v = 0; v < COLUMNS / PC_VW; v++) acc[v] += c[j] * pc_loadv(m + PC_VW * v);
        }
        for (int v = 0; v < COLUMNS / PC_VW; v++) {
            pc_vec sum = acc[v];
            if (keep) {
                const pc_vec k = pc_loadv(keep + i + PC_VW * v);
                sum = pc_select(k != 0.0f, sum * k, pc_splat(0.0f)); /* dropped: exactly 0 */
            }
            pc_storev(y + i + PC_VW * v, pc_loadv(y + i + PC_VW * v) + sum);
        }
    }
    for (; i < n; i++) {
        float s = 0.0f;
        for (int j = 0; j < r; j++) s += c[j] * M[(int64_t)j * n + i];
        y[i] += !keep ? s : keep[i] != 0.0f ? keep[i] * s : 0.0f;
    }
}

/* keep (in) = 1/(1-p) or 0 per element of row n (dropout's mask, keyed on n·in + i), and
 * xd (in) = x ⊙ keep with dropped elements exactly 0 (whatever x holds there) */
static void dropout_row(float *keep, float *xd, const float *x, int n, int in, float p,
                        uint64_t seed) {
    const float scale = 1.0f / (1.0f - p);
    const uint64_t base = (uint64_t)n * in;
    const uint64_t t = pc_keep_threshold(p);
    const pc_ivec factor = (pc_ivec)pc_splat(scale);
    int32_t m[PC_KEEP_CHUNK];
    for (int i0 = 0; i0 < in; i0 += PC_KEEP_CHUNK) { /* a chunk's mask, used twice */
        const int len = pc_keep_chunk_at(in, i0);
        pc_keep_mask(m, seed, base + (uint64_t)i0, len, t);
        int i = 0;
        for (; i + PC_VW <= len; i += PC_VW) {
            pc_storev(keep + i0 + i, (pc_vec)(pc_load_keep(m + i) & factor));
        }
        for (; i < len; i++) keep[i0 + i] = m[i] ? scale : 0.0f;
        if (xd) pc_apply_keep(xd + i0, x + i0, m, len, scale);
    }
}

/* Bt (r,out) = scale · Bᵀ, so the rank-r updates run along contiguous rows */
static float *scaled_transpose(const float *B, int out, int r, float scale) {
    float *Bt = malloc(sizeof(float) * (size_t)r * out);
    if (!Bt) return NULL;
    for (int o = 0; o < out; o++)
        for (int j = 0; j < r; j++) Bt[(int64_t)j * out + o] = scale * B[(int64_t)o * r + j];
    return Bt;
}

int pc_lora_forward(float *y, int ldy, float *u, const float *x, int ldx, const float *A,
                    const float *B, int N, int in, int out, int r, float scale,
                    const float *row_scale, float p, uint64_t seed) {
    float *Bt = scaled_transpose(B, out, r, scale);
    if (!Bt) return -1;
    int failed = 0;
    #pragma omp parallel num_threads(pc_threads_for((int64_t)N * (in + out) * r / 8))
    {
        /* per thread: with dropout the row's keep factors and dropped input; with row
         * scales the row's scaled u */
        const size_t floats = (p > 0.0f ? 2 * (size_t)in : 0) + (row_scale ? (size_t)r : 0);
        float *keep = floats ? malloc(sizeof(float) * floats) : NULL;
        float *us = keep && row_scale ? keep + (p > 0.0f ? 2 * (size_t)in : 0) : NULL;
        if (floats && !keep) failed = 1;
        #pragma omp for schedule(static)
        for (int n = 0; n < N; n++) {
            if (floats && !keep) continue;
            const float *xn = x + (int64_t)n * ldx;
            if (p > 0.0f) {
                dropout_row(keep, keep + in, xn, n, in, p, seed);
                xn = keep + in;
            }
            float *un = u + (int64_t)n * r;
            row_dots(un, xn, A, r, in);
            if (us)
                for (int j = 0; j < r; j++) us[j] = row_scale[n] * un[j];
            row_update(y + (int64_t)n * ldy, us ? us : un, Bt, r, out, NULL);
        }
        free(keep);
    }
    free(Bt);
    return failed ? -1 : 0;
}

int pc_lora_backward(float *dx, int lddx, float *dA, float *dB, const float *dy, int ldy,
                     const float *u, const float *x, int ldx, const float *A, const float *B,
                     int N, int in, int out, int r, float scale, const float *row_scale,
                     float p, uint64_t seed) {
    const int nchunks = (N + CHUNK - 1) / CHUNK;
    float *Bt = scaled_transpose(B, out, r, 1.0f);
    /* per-chunk partial sums: dBt (r,out) and dA (r,in), each written whole by its chunk */
    const int64_t part = (int64_t)r * (out + in);
    float *partials = (dA || dB) ? malloc(sizeof(float) * (size_t)nchunks * part) : NULL;
    if (!Bt || ((dA || dB) && !partials)) {
        free(Bt);
        free(partials);
        return -1;
    }
    const bool dropout = p > 0.0f;
    int failed = 0;
    #pragma omp parallel num_threads(pc_threads_for((int64_t)N * (in + out) * r / 8))
    {
        /* per thread: g (CHUNK,r); with dropout one row's keep factors; for dA with dropout
         * the chunk's dropped input (CHUNK,in); for dB with row scales the chunk's scaled u */
        const bool keep_xd = dA && dropout, scale_u = dB && row_scale;
        const size_t floats = (size_t)CHUNK * r + (scale_u ? (size_t)CHUNK * r : 0) +
                              (dropout ? (size_t)in : 0) + (keep_xd ? (size_t)CHUNK * in : 0);
        float *g = malloc(sizeof(float) * floats);
        float *us = g && scale_u ? g + (size_t)CHUNK * r : NULL;
        float *keep = g && dropout ? g + (size_t)CHUNK * r * (scale_u ? 2 : 1) : NULL;
        float *xd = keep && keep_xd ? keep + in : NULL;
        if (!g) failed = 1;
        #pragma omp for schedule(static)
        for (int chunk = 0; chunk < nchunks; chunk++) {
            if (!g) continue;
            const int n0 = chunk * CHUNK, rows = N - n0 < CHUNK ? N - n0 : CHUNK;
            for (int m = 0; m < rows; m++) {
                const int n = n0 + m;
                float *gn = g + (int64_t)m * r;
                /* g = s·dy·B */
                row_dots(gn, dy + (int64_t)n * ldy, Bt, r, out);
                const float sn = row_scale ? scale * row_scale[n] : scale;
                for (int j = 0; j < r; j++) gn[j] *= sn;
                if (us)
                    for (int j = 0; j < r; j++)
                        us[(int64_t)m * r + j] = row_scale[n] * u[(int64_t)n * r + j];
                if (dropout && (dx || xd))
                    dropout_row(keep, xd ? xd + (int64_t)m * in : NULL, x + (int64_t)n * ldx,
                                n, in, p, seed);
                /* dx += dropout_backward(g·A) */
                if (dx) row_update(dx + (int64_t)n * lddx, gn, A, r, in, dropout ? keep : NULL);
            }
            float *dBt_part = partials ? partials + chunk * part : NULL;
            float *dA_part = partials ? dBt_part + (int64_t)r * out : NULL;
            /* dBt (r,out) = s·uᵀ·dy and dA (r,in) = gᵀ·xd over the chunk's rows */
            if (dB)
                pc_tile_gemm(true, r, out, rows, scale, us ? us : u + (int64_t)n0 * r, r,
                             dy + (int64_t)n0 * ldy, ldy, 0.0f, dBt_part, out);
            if (dA)
                pc_tile_gemm(true, r, in, rows, 1.0f, g, r, xd ? xd : x + (int64_t)n0 * ldx,
                             xd ? in : ldx, 0.0f, dA_part, in);
        }
        free(g);
    }
    if (partials && !failed) {
        /* sum the chunks in order; threads own columns of the (r, out+in) partial layout */
        PC_PARALLEL_FOR((int64_t)nchunks * part)
        for (int64_t e = 0; e < part; e++) {
            float s = 0.0f;
            for (int c = 0; c < nchunks; c++) s += partials[c * part + e];
            int64_t j = e < (int64_t)r * out ? e / out : (e - (int64_t)r * out) / in;
            if (e < (int64_t)r * out) {
                if (dB) dB[(e % out) * r + j] += s;
            } else if (dA) {
                dA[j * in + (e - (int64_t)r * out) % in] += s;
            }
        }
    }
    free(Bt);
    free(partials);
    return failed ? -1 : 0;
}
