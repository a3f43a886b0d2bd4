/* Register-tiled products on unpacked operands, for the small and skinny products BLIS
 * spends more time packing than multiplying: attention's per-head products, LoRA's
 * rank-r gradient sums. Single-threaded: callers run them inside their own parallel loops.
 *
 * Tiles of TILE_ROWS rows × 2 vectors run over K in order, blocked for the registers of the
 * instruction set: AVX-512's 32 registers hold 8 × 2 accumulators of 16 floats; AVX2's 16
 * hold 6 × 2 of 8 floats (plus the two B vectors and A's broadcast), as SSE's do of 4.
 * Partial tiles: up to TILE_ROWS rows × 1 vector; columns past the last whole vector in a
 * masked vector, or, where more than one vector's worth is left past the pairs in a row of
 * whole tiles, a pair whose second vector is masked (it costs a pair, where a narrow tile
 * and a tail cost about two). B may come in two blocks of rows (pc_tile_gemm_split). Every
 * element sums over k in order, whatever tile computes it, so the same inputs give the
 * same bits. */
#include "tiles.h"

#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "kernels.h"

/* the tiles want fused multiply-adds (ISO C mode keeps a·b + c as two roundings unless told
 * otherwise) */
#pragma GCC optimize("fp-contract=fast")

#if PC_VW == 16
enum { TILE_ROWS = 8 }; /* 8 rows × 2 vectors: 16 of 32 registers */
#define TILE_ROWS_MAX_PARTIAL 7
#else
#define TILE_ROWS_MAX_PARTIAL 5
enum { TILE_ROWS = 6 }; /* 6 rows × 2 vectors: 12 of 16 registers */
#endif

/* B (K1+K2, N) as two blocks of rows: K1 at b1 (row stride ld1), then K2 at b2 (ld2). A
 * product over keys that live in two buffers (a prefix's and a sequence's own) runs as one,
 * its sums in registers across both, instead of a second pass that reloads C. */
typedef struct {
    const float *b1, *b2;
    int k1, k2, ld1, ld2;
} tile_b;

/* Store a finished accumulator: beta == 0 overwrites, so whatever C held (NaN included)
 * does not leak in. */
static inline void store_tile_row(float *c, pc_vec acc, float alpha, float beta) {
    pc_storev(c, beta == 0.0f ? alpha * acc : alpha * acc + beta * pc_loadv(c));
}

/* acc[r][0..1] += op(A)[r][k]·B[k][j .. j + PC_VW + cols2) for k over one block of B's rows
 * (K rows from B, row stride ldb); the second vector holds cols2 (<= PC_VW) columns */
static inline __attribute__((always_inline)) void pair_tile_block(
    pc_vec acc[TILE_ROWS][2], int cols2, int K, const float *A, int64_t a_row, int64_t a_col,
    const float *B, int ldb) {
    for (int k = 0; k < K; k++) {
        const float *b = B + (int64_t)k * ldb, *a = A + k * a_col;
        const pc_vec b0 = pc_loadv(b);
        const pc_vec b1 = cols2 == PC_VW ? pc_loadv(b + PC_VW) : pc_load_head(b + PC_VW, cols2);
        _Pragma("GCC unroll 8")
        for (int r = 0; r < TILE_ROWS; r++) {
            const float s = a[r * a_row];
            acc[r][0] += s * b0;
            acc[r][1] += s * b1;
        }
    }
}

/* The full tile: TILE_ROWS × (PC_VW + cols2) columns from j of C = alpha·op(A)·B + beta·C,
 * where op(A)[i][k] = A[i·a_row + k·a_col]. One copy overwrites C (beta == 0), one updates
 * it, both with two whole vectors: a store without the branch keeps the accumulators in
 * registers to the end. The third takes a second vector of fewer columns (masked). */
#define PAIR_TILE(name, COLS2, STORE1)                                                        \
    static __attribute__((noinline)) void name(                                               \
        int cols2, float alpha, const float *A, int64_t a_row, int64_t a_col,                 \
        const tile_b *B, int j, float beta, float *C, int ldc) {                              \
        pc_vec acc[TILE_ROWS][2];                                                             \
        _Pragma("GCC unroll 8")                                                               \
        for (int r = 0; r < TILE_ROWS; r++) acc[r][0] = acc[r][1] = (pc_vec){0};              \
        pair_tile_block(acc, COLS2, B->k1, A, a_row, a_col, B->b1 + j, B->ld1);               \
        pair_tile_block(acc, COLS2, B->k2, A + B->k1 * a_col, a_row, a_col, B->b2 + j,        \
                        B->ld2);                                                              \
        _Pragma("GCC unroll 8")                                                               \
        for (int r = 0; r < TILE_ROWS; r++) {                                                 \
            float *c = C + (int64_t)r * ldc;                                                  \
            STORE1(c, acc[r][0]);                                                             \
            if (COLS2 == PC_VW) {                                                             \
                STORE1(c + PC_VW, acc[r][1]);                                                 \
            } else {                                                                          \
                const pc_vec v = alpha * acc[r][1];                                           \
                pc_store_head(c + PC_VW,                                                      \
                              beta == 0.0f ? v : v + beta * pc_load_head(c + PC_VW, cols2),   \
                              cols2);                                                         \
            }                                                                                 \
        }                                                                                     \
    }
#define OVERWRITE(c, acc) pc_storev(c, alpha * (acc))
#define UPDATE(c, acc) pc_storev(c, alpha * (acc) + beta * pc_loadv(c))
#define EITHER(c, acc) store_tile_row(c, acc, alpha, beta)
PAIR_TILE(pair_tile_overwrite, PC_VW, OVERWRITE)
PAIR_TILE(pair_tile_update, PC_VW, UPDATE)
PAIR_TILE(pair_tile_masked, cols2, EITHER)
#undef OVERWRITE
#undef UPDATE
#undef EITHER
#undef PAIR_TILE

/* A narrow tile: rows (<= TILE_ROWS, a constant where inlined) × one vector, or × the
 * first `cols` (< PC_VW) columns of one (masked loads and stores: nothing past them is
 * touched). */
static inline __attribute__((always_inline)) void narrow_block(
    pc_vec acc[TILE_ROWS], int rows, int cols, int K, const float *A, int64_t a_row,
    int64_t a_col, const float *B, int ldb) {
    for (int k = 0; k < K; k++) {
        const float *a = A + k * a_col;
        const float *b = B + (int64_t)k * ldb;
        const pc_vec b0 = cols == PC_VW ? pc_loadv(b) : pc_load_head(b, cols);
        _Pragma("GCC unroll 8")
        for (int r = 0; r < rows; r++) acc[r] += a[r * a_row] * b0;
    }
}

static inline __attribute__((always_inline)) void pair_tile_narrow_cols(
    int rows, int cols, float alpha, const float *A, int64_t a_row, int64_t a_col,
    const tile_b *B, int j, float beta, float *C, int ldc) {
    pc_vec acc[TILE_ROWS];
    _Pragma("GCC unroll 8")
    for (int r = 0; r < TILE_ROWS; r++) acc[r] = (pc_vec){0};
    narrow_block(acc, rows, cols, B->k1, A, a_row, a_col, B->b1 + j, B->ld1);
    narrow_block(acc, rows, cols, B->k2, A + B->k1 * a_col, a_row, a_col, B->b2 + j, B->ld2);
    _Pragma("GCC unroll 8")
    for (int r = 0; r < rows; r++) {
        float *c = C + (int64_t)r * ldc;
        if (cols == PC_VW) {
            store_tile_row(c, acc[r], alpha, beta);
        } else {
            const pc_vec v = alpha * acc[r];
            pc_store_head(c, beta == 0.0f ? v : v + beta * pc_load_head(c, cols), cols);
        }
    }
}

static inline __attribute__((always_inline)) void pair_tile_narrow(
    int rows, float alpha, const float *A, int64_t a_row, int64_t a_col, const tile_b *B,
    int j, float beta, float *C, int ldc) {
    pair_tile_narrow_cols(rows, PC_VW, alpha, A, a_row, a_col, B, j, beta, C, ldc);
}

/* the last N mod PC_VW columns of `rows` rows */
static __attribute__((noinline)) void pair_tile_tail(int rows, int cols, float alpha,
                                                     const float *A, int64_t a_row,
                                                     int64_t a_col, const tile_b *B, int j,
                                                     float beta, float *C, int ldc) {
#define TAIL_TILE(R)                                                                          \
    case R:                                                                                   \
        pair_tile_narrow_cols(R, cols, alpha, A, a_row, a_col, B, j, beta, C, ldc);           \
        break;
    switch (rows) {
        TAIL_TILE(1) TAIL_TILE(2) TAIL_TILE(3) TAIL_TILE(4) TAIL_TILE(5) TAIL_TILE(6)
#if TILE_ROWS_MAX_PARTIAL > 5 /* AVX-512: tiles of 8 rows */
        TAIL_TILE(7) TAIL_TILE(8)
#endif
    }
#undef TAIL_TILE
}

static void tile_gemm(bool trans_a, int M, int N, float alpha, const float *A, int lda,
                      const tile_b *B, float beta, float *C, int ldc) {
    const int64_t a_row = trans_a ? 1 : lda, a_col = trans_a ? lda : 1;
    const int n32 = N / (2 * PC_VW) * (2 * PC_VW), n16 = N / PC_VW * PC_VW;
    /* whole rows of tiles: more than one vector left past the pairs goes to a pair with a
     * masked second vector, which costs a pair's time; one or less, a narrow tile */
    const bool masked_pair = N - n32 > PC_VW;
    for (int i = 0; i < M; i += TILE_ROWS) {
        const int rows = M - i < TILE_ROWS ? M - i : TILE_ROWS;
        const float *Ai = A + i * a_row;
        float *Ci = C + (int64_t)i * ldc;
        if (rows == TILE_ROWS) {
            for (int j = 0; j < n32; j += 2 * PC_VW) {
                if (beta == 0.0f)
                    pair_tile_overwrite(PC_VW, alpha, Ai, a_row, a_col, B, j, beta, Ci + j, ldc);
                else
                    pair_tile_update(PC_VW, alpha, Ai, a_row, a_col, B, j, beta, Ci + j, ldc);
            }
            if (masked_pair) {
                pair_tile_masked(N - n16, alpha, Ai, a_row, a_col, B, n32, beta, Ci + n32, ldc);
                continue;
            }
            if (n16 > n32)
                pair_tile_narrow(TILE_ROWS, alpha, Ai, a_row, a_col, B, n32, beta, Ci + n32,
                                 ldc);
        } else {
            /* a constant row count per case keeps the accumulators in registers */
            for (int j = 0; j < n16; j += PC_VW) {
#define PARTIAL_TILE(R) \
    case R: pair_tile_narrow(R, alpha, Ai, a_row, a_col, B, j, beta, Ci + j, ldc); break;
                switch (rows) {
                    PARTIAL_TILE(1) PARTIAL_TILE(2) PARTIAL_TILE(3) PARTIAL_TILE(4)
                    PARTIAL_TILE(5)
#if TILE_ROWS_MAX_PARTIAL > 5
                    PARTIAL_TILE(6) PARTIAL_TILE(7)
#endif
                }
#undef PARTIAL_TILE
            }
        }
        if (N > n16) /* columns past the last whole vector */
            pair_tile_tail(rows, N - n16, alpha, Ai, a_row, a_col, B, n16, beta, Ci + n16, ldc);
    }
}

void pc_tile_gemm(bool trans_a, int M, int N, int K, float alpha, const float *A, int lda,
                  const float *B, int ldb, float beta, float *C, int ldc) {
    const tile_b b = {B, B, K, 0, ldb, ldb};
    tile_gemm(trans_a, M, N, alpha, A, lda, &b, beta, C, ldc);
}

void pc_tile_gemm_split(bool trans_a, int M, int N, int K1, int K2, float alpha,
                        const float *A, int lda, const float *B1, int ldb1, const float *B2,
                        int ldb2, float beta, float *C, int ldc) {
    const tile_b b = {B1, B2, K1, K2, ldb1, ldb2};
    tile_gemm(trans_a, M, N, alpha, A, lda, &b, beta, C, ldc);
}

/* Rows per band of pc_sgemm_narrow: a whole number of tiles on every set (8 and 6 rows),
 * few enough that a band's rows of C are still in cache when its bias is added */
enum { NARROW_BAND = 48 };

/* C (M,N) = alpha·op(A)·B + beta·C (+ bias) for rows [i0, i1) and columns [j0, j1), B (K,N)
 * row-major, band by band */
static void narrow_product_block(bool trans_a, int i0, int i1, int j0, int j1, float alpha,
                                 const float *A, int lda, const float *B, int ldb, int K,
                                 float beta, float *C, int ldc, const float *bias) {
    for (int b0 = i0; b0 < i1; b0 += NARROW_BAND) {
        const int rows = i1 - b0 < NARROW_BAND ? i1 - b0 : NARROW_BAND;
        const float *Ab = trans_a ? A + b0 : A + (int64_t)b0 * lda;
        float *Cb = C + (int64_t)b0 * ldc + j0;
        pc_tile_gemm(trans_a, rows, j1 - j0, K, alpha, Ab, lda, B + j0, ldb, beta, Cb, ldc);
        if (bias)
            for (int i = 0; i < rows; i++)
                for (int j = j0; j < j1; j++) Cb[(int64_t)i * ldc + j - j0] += bias[j];
    }
}

int pc_sgemm_narrow(bool trans_a, bool trans_b, int M, int N, int K, float alpha,
                    const float *A, int lda, const float *B, int ldb, float beta, float *C,
                    int ldc, const float *bias) {
    if (M <= 0 || N <= 0) return 0;
#if PC_VW != 16
    if (trans_a) {
        /* sums over many rows (weights' gradients): BLIS's own products measured as fast as
         * these tiles, or faster, with 8- and 4-float vectors (bench/narrow.c) */
        pc_sgemm(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
        if (bias)
            for (int i = 0; i < M; i++)
                for (int j = 0; j < N; j++) C[(int64_t)i * ldc + j] += bias[j];
        return 0;
    }
#endif
    float *bt = NULL;
    if (trans_b && K > 0) { /* op(B) = Bᵀ (K,N) from B (N,K) */
        bt = malloc(sizeof(float) * (size_t)K * (size_t)N);
        if (!bt) return -1;
        for (int j = 0; j < N; j++)
            for (int k = 0; k < K; k++) bt[(int64_t)k * N + j] = B[(int64_t)j * ldb + k];
        B = bt;
        ldb = N;
    }
    if (K <= 0) { /* an empty sum: beta·C, plus the bias */
        for (int i = 0; i < M; i++)
            for (int j = 0; j < N; j++) {
                float *c = C + (int64_t)i * ldc + j;
                *c = (beta == 0.0f ? 0.0f : beta * *c) + (bias ? bias[j] : 0.0f);
            }
        return 0;
    }
    if (trans_a && N < 2 * PC_VW && M >= 2 * PC_VW && !bt) {
        /* a sum over many k of few columns (a weight's gradient, (M,N) = aᵀ·b with N
         * narrow): as Cᵀ (N,M) = op(B)ᵀ·A, whose rows are wide, then added to C */
        float *ct = malloc(sizeof(float) * (size_t)M * (size_t)N);
        if (!ct) return -1;
        pc_sgemm_narrow(true, false, N, M, K, alpha, B, ldb, A, lda, 0.0f, ct, M, NULL);
        for (int i = 0; i < M; i++)
            for (int j = 0; j < N; j++) {
                float *c = C + (int64_t)i * ldc + j;
                const float v = ct[(int64_t)j * M + i] + (bias ? bias[j] : 0.0f);
                *c = beta == 0.0f ? v : beta * *c + v;
            }
        free(ct);
        return 0;
    }
    /* threads own whole bands of rows or, where C is wider than tall, whole pairs of vectors
     * of its columns; the choice and the split change no bit (tiles.c's header) */
    const int nt = pc_threads_for((int64_t)M * N * K >> 6);
    const bool by_rows = M >= N;
    const int extent = by_rows ? M : N, unit = by_rows ? NARROW_BAND : 2 * PC_VW;
    const int units = (extent + unit - 1) / unit;
    PC_PRAGMA(omp parallel num_threads(nt))
    {
        const int t = omp_get_thread_num(), n = omp_get_num_threads();
        const int per = (units + n - 1) / n * unit;
        const int begin = t * per, end = begin + per < extent ? begin + per : extent;
        if (begin < end && by_rows)
            narrow_product_block(trans_a, begin, end, 0, N, alpha, A, lda, B, ldb, K, beta, C,
                                 ldc, bias);
        else if (begin < end)
            narrow_product_block(trans_a, 0, M, begin, end, alpha, A, lda, B, ldb, K, beta, C,
                                 ldc, bias);
    }
    free(bt);
    return 0;
}
