/* Register-tiled small products (tiles.c). */
#ifndef PEFTCORE_TILES_H
#define PEFTCORE_TILES_H

#include <stdbool.h>

/* C (M,N) = alpha·op(A)·B + beta·C (beta == 0 overwrites C, NaN included) with B (K,N)
 * row-major (row stride ldb) and op(A) either A (M,K) with row stride lda or, trans_a, the
 * transpose of a stored (K,M) A with row stride lda. */
void pc_tile_gemm(bool trans_a, int M, int N, int K, float alpha, const float *A, int lda,
                  const float *B, int ldb, float beta, float *C, int ldc);

/* the same with B's K1 + K2 rows in two blocks: K1 rows at B1 (row stride ldb1), then K2 at
 * B2 (ldb2); op(A) has K1 + K2 columns. Each sum runs over k in order, as one product. */
void pc_tile_gemm_split(bool trans_a, int M, int N, int K1, int K2, float alpha,
                        const float *A, int lda, const float *B1, int ldb1, const float *B2,
                        int ldb2, float beta, float *C, int ldc);

#endif
