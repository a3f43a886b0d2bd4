/* LoRA's low-rank path, fused row by row: each row of x and dy is read once, the rank-r
 * factors stay in cache. (BLIS runs these rank-r GEMMs memory-bound at a few GFLOP/s.) */
#include <stdlib.h>

#include "../ops/kernels.h"
#include "lora.h"

enum { CHUNK = 128 }; /* rows per reduction chunk of the backward */

/* xd = dropout(x row n) into buf, or x itself when p == 0 */
static const float *dropped_row(float *buf, const float *x, int n, int in, float p,
                                uint64_t seed) {
    if (p <= 0.0f) return x;
    float scale = 1.0f / (1.0f - p);
    uint64_t base = (uint64_t)n * in;
    for (int i = 0; i < in; i++) buf[i] = pc_keep(seed, base + i, p) ? x[i] * scale : 0.0f;
    return buf;
}

static void axpy(float *y, float a, const float *x, int n) {
    #pragma omp simd
    for (int i = 0; i < n; i++) y[i] += a * x[i];
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
                    const float *B, int N, int in, int out, int r, float scale, float p,
                    uint64_t seed) {
    float *Bt = scaled_transpose(B, out, r, scale);
    if (!Bt) return -1;
    int failed = 0;
    #pragma omp parallel num_threads(pc_threads_for((int64_t)N * (in + out) * r / 8))
    {
        float *buf = p > 0.0f ? malloc(sizeof(float) * (size_t)in) : NULL;
        if (p > 0.0f && !buf) failed = 1;
        #pragma omp for schedule(static)
        for (int n = 0; n < N; n++) {
            if (p > 0.0f && !buf) continue;
            const float *xd = dropped_row(buf, x + (int64_t)n * ldx, n, in, p, seed);
            float *un = u + (int64_t)n * r, *yn = y + (int64_t)n * ldy;
            for (int j = 0; j < r; j++) un[j] = pc_dot(xd, A + (int64_t)j * in, in);
            for (int j = 0; j < r; j++) axpy(yn, un[j], Bt + (int64_t)j * out, out);
        }
        free(buf);
    }
    free(Bt);
    return failed ? -1 : 0;
}

int pc_lora_backward(float *dx, int lddx, float *dA, float *dB, const float *dy, int ldy,
                     const float *u, const float *x, int ldx, const float *A, const float *B,
                     int N, int in, int out, int r, float scale, float p, uint64_t seed) {
    const int nchunks = (N + CHUNK - 1) / CHUNK;
    float *Bt = scaled_transpose(B, out, r, 1.0f);
    /* per-chunk partial sums: dBt (r,out) and dA (r,in) */
    const int64_t part = (int64_t)r * (out + in);
    float *partials = (dA || dB) ? calloc((size_t)nchunks * part, sizeof(float)) : NULL;
    if (!Bt || ((dA || dB) && !partials)) {
        free(Bt);
        free(partials);
        return -1;
    }
    const float inv_keep = p > 0.0f ? 1.0f / (1.0f - p) : 1.0f;
    int failed = 0;
    #pragma omp parallel num_threads(pc_threads_for((int64_t)N * (in + out) * r / 8))
    {
        float *buf = malloc(sizeof(float) * ((size_t)in + r));
        if (!buf) failed = 1;
        #pragma omp for schedule(static)
        for (int chunk = 0; chunk < nchunks; chunk++) {
            if (!buf) continue;
            float *g = buf + in;
            float *dBt_part = partials ? partials + chunk * part : NULL;
            float *dA_part = partials ? dBt_part + (int64_t)r * out : NULL;
            int n1 = (chunk + 1) * CHUNK < N ? (chunk + 1) * CHUNK : N;
            for (int n = chunk * CHUNK; n < n1; n++) {
                const float *dyn = dy + (int64_t)n * ldy;
                for (int j = 0; j < r; j++) g[j] = scale * pc_dot(dyn, Bt + (int64_t)j * out, out);
                if (dB)
                    for (int j = 0; j < r; j++)
                        axpy(dBt_part + (int64_t)j * out, scale * u[(int64_t)n * r + j], dyn, out);
                if (dA) {
                    const float *xd = dropped_row(buf, x + (int64_t)n * ldx, n, in, p, seed);
                    for (int j = 0; j < r; j++) axpy(dA_part + (int64_t)j * in, g[j], xd, in);
                }
                if (dx) {
                    float *dxn = dx + (int64_t)n * lddx;
                    if (p <= 0.0f) {
                        for (int j = 0; j < r; j++) axpy(dxn, g[j], A + (int64_t)j * in, in);
                    } else {
                        /* dx = mask ⊙ (g·A) / (1-p), through buf */
                        for (int i = 0; i < in; i++) buf[i] = 0.0f;
                        for (int j = 0; j < r; j++) axpy(buf, g[j], A + (int64_t)j * in, in);
                        uint64_t base = (uint64_t)n * in;
                        for (int i = 0; i < in; i++)
                            if (pc_keep(seed, base + i, p)) dxn[i] += buf[i] * inv_keep;
                    }
                }
            }
        }
        free(buf);
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
