/* Register-tiled products on unpacked operands, for the small and skinny products BLIS
 * spends more time packing than multiplying: attention's per-head products, LoRA's
 * rank-r gradient sums. Single-threaded: callers run them inside their own parallel loops.
 *
 * Tiles of 8 rows × 32 columns (16 accumulators of 16 floats) run over K in order; partial
 * tiles of up to 8 rows × 16 columns; columns past the last multiple of 16 in a scalar loop.
 * Every element sums over k in order, whatever tile computes it, so the same inputs give the
 * same bits. */
#include "tiles.h"

#include <string.h>

#include "kernels.h"

/* the tiles want fused multiply-adds (ISO C mode keeps a·b + c as two roundings unless told
 * otherwise) */
#pragma GCC optimize("fp-contract=fast")

enum { TILE_ROWS = 8 }; /* 8 rows × 2 vectors: 16 accumulators */

/* Store a finished accumulator: beta == 0 overwrites, so whatever C held (NaN included)
 * does not leak in. */
static inline void store_tile_row(float *c, pc_vec16 acc, float alpha, float beta) {
    pc_store16(c, beta == 0.0f ? alpha * acc : alpha * acc + beta * pc_load16(c));
}

/* The full tile: TILE_ROWS × 32 columns of C = alpha·op(A)·B + beta·C, where
 * op(A)[i][k] = A[i·a_row + k·a_col] and B (K,32) has row stride ldb. One copy overwrites
 * C (beta == 0), one updates it: a store without the branch keeps the accumulators in
 * registers to the end. */
#define PAIR_TILE_FULL(name, STORE)                                                           \
    static __attribute__((noinline)) void name(                         \
        int K, float alpha, const float *A, int64_t a_row, int64_t a_col, const float *B,     \
        int ldb, float beta, float *C, int ldc) {                                             \
        pc_vec16 acc[TILE_ROWS][2];                                                           \
        _Pragma("GCC unroll 8")                                                               \
        for (int r = 0; r < TILE_ROWS; r++) acc[r][0] = acc[r][1] = (pc_vec16){0};            \
        for (int k = 0; k < K; k++) {                                                         \
            const float *b = B + (int64_t)k * ldb, *a = A + k * a_col;                        \
            const pc_vec16 b0 = pc_load16(b), b1 = pc_load16(b + 16);                         \
            _Pragma("GCC unroll 8")                                                           \
            for (int r = 0; r < TILE_ROWS; r++) {                                             \
                const float s = a[r * a_row];                                                 \
                acc[r][0] += s * b0;                                                          \
                acc[r][1] += s * b1;                                                          \
            }                                                                                 \
        }                                                                                     \
        _Pragma("GCC unroll 8")                                                               \
        for (int r = 0; r < TILE_ROWS; r++)                                                   \
            _Pragma("GCC unroll 2")                                                           \
            for (int half = 0; half < 2; half++) {                                            \
                float *c = C + (int64_t)r * ldc + 16 * half;                                  \
                STORE;                                                                        \
            }                                                                                 \
    }
PAIR_TILE_FULL(pair_tile_overwrite, pc_store16(c, alpha * acc[r][half]))
PAIR_TILE_FULL(pair_tile_update, pc_store16(c, alpha * acc[r][half] + beta * pc_load16(c)))
#undef PAIR_TILE_FULL

static inline void pair_tile_full(int K, float alpha, const float *A, int64_t a_row,
                                  int64_t a_col, const float *B, int ldb, float beta, float *C,
                                  int ldc) {
    if (beta == 0.0f)
        pair_tile_overwrite(K, alpha, A, a_row, a_col, B, ldb, beta, C, ldc);
    else
        pair_tile_update(K, alpha, A, a_row, a_col, B, ldb, beta, C, ldc);
}

/* A narrow tile: rows (<= TILE_ROWS, a constant where inlined) × 16 columns. */
static inline __attribute__((always_inline)) void pair_tile_narrow(
    int rows, int K, float alpha, const float *A, int64_t a_row, int64_t a_col,
    const float *B, int ldb, float beta, float *C, int ldc) {
    pc_vec16 acc[TILE_ROWS];
    for (int r = 0; r < TILE_ROWS; r++) acc[r] = (pc_vec16){0};
    for (int k = 0; k < K; k++) {
        const float *a = A + k * a_col;
        const pc_vec16 b0 = pc_load16(B + (int64_t)k * ldb);
        for (int r = 0; r < rows; r++) acc[r] += a[r * a_row] * b0;
    }
    for (int r = 0; r < rows; r++) store_tile_row(C + (int64_t)r * ldc, acc[r], alpha, beta);
}

void pc_tile_gemm(bool trans_a, int M, int N, int K, float alpha, const float *A, int lda,
                  const float *B, int ldb, float beta, float *C, int ldc) {
    const int64_t a_row = trans_a ? 1 : lda, a_col = trans_a ? lda : 1;
    const int n32 = N / 32 * 32, n16 = N / 16 * 16;
    for (int i = 0; i < M; i += TILE_ROWS) {
        const int rows = M - i < TILE_ROWS ? M - i : TILE_ROWS;
        const float *Ai = A + i * a_row;
        float *Ci = C + (int64_t)i * ldc;
        if (rows == TILE_ROWS) {
            for (int j = 0; j < n32; j += 32)
                pair_tile_full(K, alpha, Ai, a_row, a_col, B + j, ldb, beta, Ci + j, ldc);
            if (n16 > n32)
                pair_tile_narrow(TILE_ROWS, K, alpha, Ai, a_row, a_col, B + n32, ldb, beta,
                                 Ci + n32, ldc);
        } else {
            /* a constant row count per case keeps the accumulators in registers */
            for (int j = 0; j < n16; j += 16) {
#define PARTIAL_TILE(R) \
    case R: pair_tile_narrow(R, K, alpha, Ai, a_row, a_col, B + j, ldb, beta, Ci + j, ldc); break;
                switch (rows) {
                    PARTIAL_TILE(1) PARTIAL_TILE(2) PARTIAL_TILE(3) PARTIAL_TILE(4)
                    PARTIAL_TILE(5) PARTIAL_TILE(6) PARTIAL_TILE(7)
                }
#undef PARTIAL_TILE
            }
        }
        for (int r = 0; r < rows; r++) /* columns past the last multiple of 16 */
            for (int j = n16; j < N; j++) {
                float sum = 0.0f;
                for (int k = 0; k < K; k++) sum += Ai[r * a_row + k * a_col] * B[(int64_t)k * ldb + j];
                float *c = Ci + (int64_t)r * ldc + j;
                *c = beta == 0.0f ? alpha * sum : alpha * sum + beta * *c;
            }
    }
}

