/* Embedding lookup and its scatter-add backward. */
#include "kernels.h"

/* out (N,C) = weight (V,C)[ids (N)] */
void pc_embedding_forward(float *out, const int64_t *ids, const float *weight, int N, int C) {
    PC_PARALLEL_FOR((int64_t)N * C)
    for (int n = 0; n < N; n++)
        memcpy(out + (int64_t)n * C, weight + ids[n] * (int64_t)C, sizeof(float) * C);
}

/* dweight[ids[n]] += dout[n]. Threads own column blocks and walk n in order, so repeated
 * ids accumulate in the same order whatever the thread count. */
void pc_embedding_backward(float *dweight, const float *dout, const int64_t *ids, int N, int C) {
    enum { BLOCK = 64 };
    int nblocks = (C + BLOCK - 1) / BLOCK;
    PC_PARALLEL_FOR((int64_t)N * C)
    for (int blk = 0; blk < nblocks; blk++) {
        int c0 = blk * BLOCK, c1 = c0 + BLOCK < C ? c0 + BLOCK : C;
        for (int n = 0; n < N; n++) {
            float *dst = dweight + ids[n] * (int64_t)C;
            const float *src = dout + (int64_t)n * C;
            for (int c = c0; c < c1; c++) dst[c] += src[c];
        }
    }
}
