/* GEMM on BLIS's micro-kernel with packing of our own.
 *
 * BLIS computes C += A·B in blocks: it copies ("packs") a KC×NC block of B into micro-panels
 * of NR columns (for each k, NR consecutive values) and an MC×KC block of A into
 * micro-panels of MR rows, then its micro-kernel multiplies one MR-panel by one NR-panel.
 * Packing reads the operands across their contiguous dimension whenever that dimension is
 * k, and every linear layer here is such a case: y = x·Wᵀ with x (N, IC) and W (OC, IC)
 * both contiguous in k = IC. Debian's BLIS 0.9 packs those with scalar loads and stores
 * (about one float per cycle), which cost over 20 % of a one-sequence forward, whose GEMMs
 * have few rows and whose time goes into packing the weights.
 *
 * So for BLIS's `skx` kernel set (MR = 32, NR = 12, column-preferring) this file does the
 * loops and the packing itself, transposing 16×16 tiles in AVX-512 registers, and leaves
 * the multiply-adds to BLIS's own micro-kernel (bli_cntx_get_l3_nat_ukr_dt), with BLIS's
 * blocksizes. The micro-kernel sums each element of C over k in order, KC at a time, the
 * same wherever the element sits in a tile, so the bits do not depend on how callers split
 * C among threads or workers; they match BLIS's own GEMM to rounding.
 * Other kernel sets, other CPUs and builds without AVX-512 use bli_sgemm_ex unchanged
 * (PEFTCORE_GEMM=blis forces that path). */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include <blis.h>

#include "../engine.h"

#ifdef __AVX512F__
#include <immintrin.h>

enum { MR = 32, NR = 12 };

static bool enabled = false;
static cntx_t *context;
static sgemm_ukr_ft micro_kernel;
static int64_t block_m, block_k, block_n; /* MC, KC, NC */

/* per thread: the packed A block (MC×KC) and B block (KC×NC), kept for the thread's life */
typedef struct {
    float *a, *b;
    size_t a_floats, b_floats;
} pack_buffers;

static pthread_key_t buffers_key;

static void free_buffers(void *p) {
    pack_buffers *buf = p;
    free(buf->a);
    free(buf->b);
    free(buf);
}

/* a 64-byte aligned region of at least `floats` floats in *p (grown when needed) */
static bool reserve(float **p, size_t *have, size_t floats) {
    if (*have >= floats) return true;
    size_t bytes = (floats * sizeof(float) + 63) / 64 * 64;
    float *q = aligned_alloc(64, bytes);
    if (!q) return false;
    free(*p);
    *p = q;
    *have = bytes / sizeof(float);
    return true;
}

static pack_buffers *thread_buffers(size_t a_floats, size_t b_floats) {
    pack_buffers *buf = pthread_getspecific(buffers_key);
    if (!buf) {
        buf = calloc(1, sizeof *buf);
        if (!buf || pthread_setspecific(buffers_key, buf) != 0) {
            free(buf);
            return NULL;
        }
    }
    if (!reserve(&buf->a, &buf->a_floats, a_floats) ||
        !reserve(&buf->b, &buf->b_floats, b_floats))
        return NULL;
    return buf;
}

/* r[i] lane j -> r[j] lane i: a 16×16 transpose in registers */
static inline void transpose16(__m512 r[16]) {
    __m512 t[16], u[16];
    for (int p = 0; p < 8; p++) {
        t[2 * p] = _mm512_unpacklo_ps(r[2 * p], r[2 * p + 1]);
        t[2 * p + 1] = _mm512_unpackhi_ps(r[2 * p], r[2 * p + 1]);
    }
    for (int q = 0; q < 4; q++) {
        __m512d x0 = _mm512_castps_pd(t[4 * q]), x1 = _mm512_castps_pd(t[4 * q + 1]);
        __m512d x2 = _mm512_castps_pd(t[4 * q + 2]), x3 = _mm512_castps_pd(t[4 * q + 3]);
        u[4 * q] = _mm512_castpd_ps(_mm512_unpacklo_pd(x0, x2));
        u[4 * q + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(x0, x2));
        u[4 * q + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(x1, x3));
        u[4 * q + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(x1, x3));
    }
    for (int c = 0; c < 4; c++) {
        __m512 e0 = _mm512_shuffle_f32x4(u[c], u[4 + c], 0x88);
        __m512 e1 = _mm512_shuffle_f32x4(u[c], u[4 + c], 0xDD);
        __m512 e2 = _mm512_shuffle_f32x4(u[8 + c], u[12 + c], 0x88);
        __m512 e3 = _mm512_shuffle_f32x4(u[8 + c], u[12 + c], 0xDD);
        r[c] = _mm512_shuffle_f32x4(e0, e2, 0x88);
        r[8 + c] = _mm512_shuffle_f32x4(e0, e2, 0xDD);
        r[4 + c] = _mm512_shuffle_f32x4(e1, e3, 0x88);
        r[12 + c] = _mm512_shuffle_f32x4(e1, e3, 0xDD);
    }
}

static inline __mmask16 first_lanes(int n) {
    return n >= 16 ? (__mmask16)0xFFFF : n <= 0 ? (__mmask16)0 : (__mmask16)((1u << n) - 1);
}

/* One micro-panel: p[k·width + i] = s[i·rs + k·cs] for i < rows, k < kc; lanes i >= rows
 * are zero (width is MR or NR, rows <= width). */
static void pack_panel(float *p, int width, int rows, int kc, const float *s, int64_t rs,
                       int64_t cs) {
    if (rs == 1) { /* the panel's rows are contiguous at each k: copies */
        const __mmask16 lo = first_lanes(rows), hi = first_lanes(rows - 16);
        for (int k = 0; k < kc; k++) {
            const float *src = s + (int64_t)k * cs;
            if (width > 16) {
                _mm512_storeu_ps(p + (int64_t)k * width, _mm512_maskz_loadu_ps(lo, src));
                _mm512_storeu_ps(p + (int64_t)k * width + 16,
                                 _mm512_maskz_loadu_ps(hi, src + 16));
            } else {
                _mm512_mask_storeu_ps(p + (int64_t)k * width, first_lanes(width),
                                      _mm512_maskz_loadu_ps(lo, src));
            }
        }
        return;
    }
    if (cs == 1) { /* k is contiguous in each row: 16×16 transposes, 16 rows at a time
                    * (16 streams through memory rather than 32) */
        const int k16 = kc / 16 * 16;
        for (int h = 0; h * 16 < width; h++) {
            const __mmask16 lanes = first_lanes(width - h * 16);
            const int live = rows - h * 16 < 16 ? rows - h * 16 : 16; /* rows < 0: none */
            for (int k0 = 0; k0 < k16; k0 += 16) {
                __m512 r[16];
                for (int i = 0; i < 16; i++)
                    r[i] = i < live ? _mm512_loadu_ps(s + (int64_t)(h * 16 + i) * rs + k0)
                                    : _mm512_setzero_ps();
                transpose16(r);
                for (int kk = 0; kk < 16; kk++)
                    _mm512_mask_storeu_ps(p + (int64_t)(k0 + kk) * width + h * 16, lanes, r[kk]);
            }
        }
        for (int k0 = k16; k0 < kc; k0++)
            for (int i = 0; i < width; i++)
                p[(int64_t)k0 * width + i] = i < rows ? s[(int64_t)i * rs + k0] : 0.0f;
        return;
    }
    for (int k = 0; k < kc; k++)
        for (int i = 0; i < width; i++)
            p[(int64_t)k * width + i] = i < rows ? s[(int64_t)i * rs + (int64_t)k * cs] : 0.0f;
}

static inline int64_t round_to_line(int64_t floats) { return (floats + 15) / 16 * 16; }

/* Column-major C' (m, n) (element (i, j) at c[i + j·ldc]) = alpha·A'·B' + beta·C' with
 * A'(i, k) = a[i·ars + k·acs] (m, k) and B'(k, j) = b[k·brs + j·bcs] (k, n). */
static bool gemm_columns(int64_t m, int64_t n, int64_t k, float alpha, const float *a,
                         int64_t ars, int64_t acs, const float *b, int64_t brs, int64_t bcs,
                         float beta, float *c, int64_t ldc) {
    const int64_t nc_max = n < block_n ? n : block_n, kc_max = k < block_k ? k : block_k;
    const int64_t mc_max = m < block_m ? m : block_m;
    /* floats per packed B micro-panel, rounded up so every panel starts on a cache line
     * (an A panel, MR·kc floats, always does) */
    const int64_t panel_b = round_to_line(NR * kc_max);
    pack_buffers *buf = thread_buffers((size_t)((mc_max + MR - 1) / MR * MR * kc_max),
                                       (size_t)((nc_max + NR - 1) / NR * panel_b));
    if (!buf) return false;
    auxinfo_t aux;
    memset(&aux, 0, sizeof aux);
    bli_auxinfo_set_schema_a(BLIS_PACKED_ROW_PANELS, &aux);
    bli_auxinfo_set_schema_b(BLIS_PACKED_COL_PANELS, &aux);
    for (int64_t jc = 0; jc < n; jc += block_n) {
        const int64_t nc = n - jc < block_n ? n - jc : block_n;
        for (int64_t pc = 0; pc < k; pc += block_k) {
            const int kc = (int)(k - pc < block_k ? k - pc : block_k);
            const float beta_here = pc == 0 ? beta : 1.0f;
            const int64_t ps_b = round_to_line((int64_t)NR * kc);
            for (int64_t jr = 0; jr < nc; jr += NR)
                pack_panel(buf->b + jr / NR * ps_b, NR, (int)(nc - jr < NR ? nc - jr : NR), kc,
                           b + (jc + jr) * bcs + pc * brs, bcs, brs);
            for (int64_t ic = 0; ic < m; ic += block_m) {
                const int64_t mc = m - ic < block_m ? m - ic : block_m;
                const int64_t ps_a = (int64_t)MR * kc;
                for (int64_t ir = 0; ir < mc; ir += MR)
                    pack_panel(buf->a + ir / MR * ps_a, MR, (int)(mc - ir < MR ? mc - ir : MR),
                               kc, a + (ic + ir) * ars + pc * acs, ars, acs);
                for (int64_t jr = 0; jr < nc; jr += NR) {
                    const int nr = (int)(nc - jr < NR ? nc - jr : NR);
                    float *bp = buf->b + jr / NR * ps_b;
                    for (int64_t ir = 0; ir < mc; ir += MR) {
                        const int mr = (int)(mc - ir < MR ? mc - ir : MR);
                        float *ap = buf->a + ir / MR * ps_a;
                        /* the panels the kernel will read next, for its prefetches */
                        const bool last_row = ir + MR >= mc;
                        bli_auxinfo_set_next_a(last_row ? buf->a : ap + ps_a, &aux);
                        bli_auxinfo_set_next_b(!last_row ? bp : jr + NR < nc ? bp + ps_b : buf->b,
                                               &aux);
                        micro_kernel(mr, nr, kc, &alpha, ap, bp, (float *)&beta_here,
                                     c + (ic + ir) + (jc + jr) * ldc, 1, ldc, &aux, context);
                    }
                }
            }
        }
    }
    return true;
}

void pc_gemm_packed_init(void) {
    const char *choice = getenv("PEFTCORE_GEMM");
    if (choice && strcmp(choice, "blis") == 0) return;
    if (!__builtin_cpu_supports("avx512f") || strcmp(pc_blis_arch(), "skx") != 0) return;
    context = bli_gks_query_cntx();
    if (bli_cntx_get_blksz_def_dt(BLIS_FLOAT, BLIS_MR, context) != MR ||
        bli_cntx_get_blksz_def_dt(BLIS_FLOAT, BLIS_NR, context) != NR ||
        bli_cntx_l3_vir_ukr_prefers_rows_dt(BLIS_FLOAT, BLIS_GEMM_UKR, context))
        return;
    micro_kernel = (sgemm_ukr_ft)bli_cntx_get_l3_nat_ukr_dt(BLIS_FLOAT, BLIS_GEMM_UKR, context);
    block_m = bli_cntx_get_blksz_def_dt(BLIS_FLOAT, BLIS_MC, context) / MR * MR;
    block_k = bli_cntx_get_blksz_def_dt(BLIS_FLOAT, BLIS_KC, context);
    block_n = bli_cntx_get_blksz_def_dt(BLIS_FLOAT, BLIS_NC, context) / NR * NR;
    if (!micro_kernel || block_m < MR || block_k < 1 || block_n < NR) return;
    if (pthread_key_create(&buffers_key, free_buffers) != 0) return;
    enabled = true;
}

bool pc_gemm_packed_enabled(void) { return enabled; }

/* Row-major C (M, N) = alpha·op(A)·op(B) + beta·C, as the column-major product
 * Cᵀ = op(B)ᵀ·op(A)ᵀ, so the column-preferring kernel stores along C's rows. False (C
 * untouched) when disabled or out of memory. M, N, K >= 1. */
bool pc_sgemm_packed(bool trans_a, bool trans_b, int M, int N, int K, float alpha,
                     const float *A, int lda, const float *B, int ldb, float beta, float *C,
                     int ldc) {
    if (!enabled) return false;
    /* A'(i, k) = op(B)(k, i) and B'(k, j) = op(A)(j, k) */
    const int64_t a_rs = trans_b ? ldb : 1, a_cs = trans_b ? 1 : ldb;
    const int64_t b_rs = trans_a ? lda : 1, b_cs = trans_a ? 1 : lda;
    return gemm_columns(N, M, K, alpha, B, a_rs, a_cs, A, b_rs, b_cs, beta, C, ldc);
}

#else /* no AVX-512 in this build: BLIS does everything */

void pc_gemm_packed_init(void) {}
bool pc_gemm_packed_enabled(void) { return false; }
bool pc_sgemm_packed(bool trans_a, bool trans_b, int M, int N, int K, float alpha,
                     const float *A, int lda, const float *B, int ldb, float beta, float *C,
                     int ldc) {
    return false;
}

#endif
