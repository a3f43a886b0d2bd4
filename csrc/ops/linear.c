/* Fully connected layer on BLIS GEMMs. */
#include "kernels.h"

/* out (N,OC) = inp (N,IC) · weight (OC,IC)ᵀ + bias (OC) */
void pc_linear_forward(float *out, const float *inp, const float *weight, const float *bias,
                       int N, int IC, int OC) {
    float beta = 0.0f;
    if (bias) {
        PC_PARALLEL_FOR((int64_t)N * OC)
        for (int n = 0; n < N; n++) memcpy(out + (int64_t)n * OC, bias, sizeof(float) * OC);
        beta = 1.0f;
    }
    pc_sgemm(false, true, N, OC, IC, 1.0f, inp, IC, weight, IC, beta, out, OC);
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

void pc_column_sums(float *dst, const float *src, int ld, int N, int C) {
    enum { BLOCK = 64 };
    int nblocks = (C + BLOCK - 1) / BLOCK;
    PC_PARALLEL_FOR((int64_t)N * C)
    for (int blk = 0; blk < nblocks; blk++) {
        int c0 = blk * BLOCK, c1 = c0 + BLOCK < C ? c0 + BLOCK : C;
        float acc[BLOCK] = {0};
        for (int n = 0; n < N; n++) {
            const float *row = src + (int64_t)n * ld;
            for (int c = c0; c < c1; c++) acc[c - c0] += row[c];
        }
        for (int c = c0; c < c1; c++) dst[c] += acc[c - c0];
    }
}
