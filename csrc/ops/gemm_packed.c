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
 * So this file does the loops and the packing itself and leaves the multiply-adds to the
 * float micro-kernel of whatever kernel set BLIS runs (bli_cntx_get_l3_nat_ukr_dt), with
 * that set's MR, NR, MC, KC, NC and storage preference, all read from BLIS's context at
 * start-up. A column-preferring kernel (skx: 32×12) computes Cᵀ = op(B)ᵀ·op(A)ᵀ, storing
 * down Cᵀ's columns, which are C's rows; a row-preferring one (haswell, zen3: 6×16) computes
 * C directly. Panels read across k are transposed in registers: 16×16 in the AVX-512 build,
 * 8×8 in the AVX2 build, 4×4 in the SSE2 baseline (plain C where there is no SSE2). Lanes
 * past a partial panel's last row are packed as zeros; the micro-kernel takes the tile's
 * m <= MR, n <= NR itself (BLIS 0.9 kernels compute an edge tile into a buffer on their
 * stack and copy it out: GEMM_UKR_SETUP_CT in blis.h, checked on every kernel set).
 *
 * The micro-kernel sums each element of C over k in order, KC at a time, the same wherever
 * the element sits in a tile, so the bits do not depend on how callers split C among
 * threads or workers; they match BLIS's own GEMM to rounding.
 *
 * Where it runs by default: where it measured faster than BLIS's whole GEMM (bli_sgemm_ex,
 * small-matrix path off), with `bench/gemm.py --paths --clock cpu --threads 1` (1 thread, the
 * process's CPU time, 3-5 rounds alternating the paths; a 2-core Intel VM with AVX-512,
 * CPUID family 6 model 167, shared with other jobs) on the products of MiniLM's and bert-base's linear layers (forward x·Wᵀ,
 * dX = dY·W, dW = dYᵀ·X; 4096 and 128 rows), ours/BLIS:
 *   avx512 + skx:      geometric mean 1.13 over the 36 products, 0.88-1.48; 1.25-1.48 on
 *                      most 128-row ones (skx has no packing kernels of its own: BLIS packs
 *                      the k-contiguous operands with scalar code); on a quiet machine by
 *                      the wall clock, 1 thread 1.15 (0.94-1.53), 2 threads 1.16 (0.90-1.49;
 *                      forward at 128 rows 1.26-1.44). Default.
 *   avx2 + haswell:    1.04, 0.96-1.23 (forward 0.97-1.03, dW 1.00-1.12, dX up to 1.23 at
 *                      128 rows); on a quiet machine by the wall clock, 1 thread 1.045
 *                      (0.95-1.29), 2 threads 1.037 (0.93-1.21; forward 0.93-1.02). BLIS
 *                      has AVX2 packing kernels for haswell, so the gain is small. Default.
 *   avx2 + zen3:       the haswell micro-kernel and packing kernels, MC 144: 1.043
 *                      (0.96-1.23), measured as BLIS_ARCH_TYPE=zen3 on the same Intel CPU,
 *                      not on an AMD one. Default.
 *   baseline + penryn: 1.01, 0.90-1.10 (SSE2 8×4 kernel-bound at ~15 GFLOP/s; forward of
 *                      4096 rows 0.90-0.97). Not faster: BLIS stays the default.
 * Other kernel sets (a user's BLIS_ARCH_TYPE) were not measured and leave products to BLIS.
 *
 * On the AVX2 kernel sets (haswell, zen3) op(A) is not packed at all by default: their
 * row-preferring kernel broadcasts A's elements one at a time, which BLIS's small-matrix
 * ("sup") kernel for row-stored C does from any strides, so that kernel reads op(A) where
 * it lies and only B is packed (sup_block). Every linear layer's op(A) (x, or dY) is
 * k-contiguous, which packing must transpose; it is the bigger operand at 4096 rows. On an
 * AMD Zen 4 (family 25 model 17) held to AVX2, zen3 kernels, 2 threads, alternating
 * processes against packing both (PEFTCORE_GEMM=packed-a): the MiniLM forward at 32×128
 * 404 ms against 423 (-4.4 %), a LoRA train step 899 ms against 942 (-4.6 %); one-thread
 * products 1-3 % faster at 4096 rows, 4-8 % at 128 (bench/gemm.py --paths). skx has no
 * float sup kernel in BLIS 0.9, and its column-preferring kernel broadcasts from B's panel.
 * PEFTCORE_GEMM=blis leaves whole products to bli_sgemm_ex, PEFTCORE_GEMM=packed forces this
 * path, PEFTCORE_GEMM=packed-a this path with op(A) packed too; pc_set_gemm_path switches at
 * run time (bench/gemm.py). */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include <blis.h>

#include "../engine.h"

#include "transpose.h"

/* the kernel set BLIS runs, read from its context by pc_gemm_packed_init */
static struct {
    bool available; /* its micro-kernel can be fed from here */
    bool enabled;   /* and products go through here */
    cntx_t *context;
    sgemm_ukr_ft kernel;
    int mr, nr;        /* tile: the kernel computes C (mr×nr) at a time... */
    bool prefers_rows; /* ...storing along C's rows (else along its columns) */
    int64_t mc, kc, nc;
    /* BLIS's small-matrix ("sup") kernel for row-stored C and B, which broadcasts A's
     * elements from wherever they are (any strides), so op(A) can be read in place rather
     * than packed (sup_block); NULL where the kernel set has none with the native NR */
    sgemmsup_ker_ft sup;
    int sup_mr;
    bool a_in_place; /* products read op(A) in place through sup */
} ukr;

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

/* ------------------------------------------------------------------ packing
 *
 * A micro-panel holds p[k·width + i] = s[i·rs + k·cs] for i < rows, k < kc, and 0 for
 * rows <= i < width (width is MR or NR, rows <= width). Each instruction set supplies
 *   copy_lanes(dst, src, rows, width): dst[i] = src[i] for i < rows, 0 up to width;
 *   pack_across_k(p, width, rows, kc, s, rs): the panel when cs == 1 (k contiguous). */

#if defined(__AVX512F__)

static inline void copy_lanes(float *dst, const float *src, int rows, int width) {
    for (int i = 0; i < width; i += 16)
        _mm512_mask_storeu_ps(dst + i, pc_first_lanes(width - i),
                              _mm512_maskz_loadu_ps(pc_first_lanes(rows - i), src + i));
}

/* 16 rows at a time (16 streams through memory rather than 32), 16 k at a time */
static void pack_across_k(float *p, int width, int rows, int kc, const float *s, int64_t rs) {
    const int k16 = kc / 16 * 16;
    for (int h = 0; h < width; h += 16) {
        const __mmask16 lanes = pc_first_lanes(width - h);
        const int live = rows - h < 16 ? rows - h : 16; /* rows < 0: none */
        for (int k0 = 0; k0 < k16; k0 += 16) {
            __m512 r[16];
            for (int i = 0; i < 16; i++)
                r[i] = i < live ? _mm512_loadu_ps(s + (int64_t)(h + i) * rs + k0)
                                : _mm512_setzero_ps();
            pc_transpose16(r);
            for (int kk = 0; kk < 16; kk++)
                _mm512_mask_storeu_ps(p + (int64_t)(k0 + kk) * width + h, lanes, r[kk]);
        }
    }
    for (int k = k16; k < kc; k++)
        for (int i = 0; i < width; i++)
            p[(int64_t)k * width + i] = i < rows ? s[(int64_t)i * rs + k] : 0.0f;
}

#elif defined(__AVX2__)

static inline void copy_lanes(float *dst, const float *src, int rows, int width) {
    for (int i = 0; i < width; i += 8) {
        const __m256 v = rows - i >= 8 ? _mm256_loadu_ps(src + i)
                                       : _mm256_maskload_ps(src + i, pc_first_lanes(rows - i));
        pc_store_lanes(dst + i, v, width - i);
    }
}

/* 8 rows at a time, 8 k at a time (a 6-wide panel: 6 rows and 2 zeros, stored 4 + 2) */
static void pack_across_k(float *p, int width, int rows, int kc, const float *s, int64_t rs) {
    const int k8 = kc / 8 * 8;
    for (int h = 0; h < width; h += 8) {
        const int lanes = width - h < 8 ? width - h : 8;
        const int live = rows - h < 8 ? rows - h : 8; /* rows < 0: none */
        for (int k0 = 0; k0 < k8; k0 += 8) {
            __m256 r[8];
            for (int i = 0; i < 8; i++)
                r[i] = i < live ? _mm256_loadu_ps(s + (int64_t)(h + i) * rs + k0)
                                : _mm256_setzero_ps();
            pc_transpose8(r);
            for (int kk = 0; kk < 8; kk++)
                pc_store_lanes(p + (int64_t)(k0 + kk) * width + h, r[kk], lanes);
        }
    }
    for (int k = k8; k < kc; k++)
        for (int i = 0; i < width; i++)
            p[(int64_t)k * width + i] = i < rows ? s[(int64_t)i * rs + k] : 0.0f;
}

#else /* baseline: SSE2 on x86-64, plain C elsewhere */

static inline void copy_lanes(float *dst, const float *src, int rows, int width) {
    int i = 0;
    for (; i < rows; i++) dst[i] = src[i];
    for (; i < width; i++) dst[i] = 0.0f;
}

static void pack_across_k(float *p, int width, int rows, int kc, const float *s, int64_t rs) {
    int k4 = 0;
#if defined(__SSE2__)
    if (width % 4 == 0) { /* penryn's 8 and 4 */
        k4 = kc / 4 * 4;
        for (int h = 0; h < width; h += 4) {
            const int live = rows - h < 4 ? rows - h : 4;
            for (int k0 = 0; k0 < k4; k0 += 4) {
                __m128 r[4];
                for (int i = 0; i < 4; i++)
                    r[i] = i < live ? _mm_loadu_ps(s + (int64_t)(h + i) * rs + k0)
                                    : _mm_setzero_ps();
                pc_transpose4(r);
                for (int kk = 0; kk < 4; kk++) _mm_storeu_ps(p + (int64_t)(k0 + kk) * width + h, r[kk]);
            }
        }
    }
#endif
    /* the rest in strips of 8 k: each row's 8 values from one cache line or two */
    for (int k0 = k4; k0 < kc; k0 += 8) {
        const int kn = kc - k0 < 8 ? kc - k0 : 8;
        for (int i = 0; i < width; i++)
            for (int k = k0; k < k0 + kn; k++)
                p[(int64_t)k * width + i] = i < rows ? s[(int64_t)i * rs + k] : 0.0f;
    }
}

#endif

/* Rows [0, count) of an operand (row i at step k: s[i·rs + k·cs]) into micro-panels of
 * `width` rows, panel q at p + q·ps. When the panels' rows are contiguous (rs == 1), each
 * source row k is read once from end to end (a stream the hardware prefetches) and dealt
 * out to the panels; width is a constant in each case of the switch below, so the copies
 * unroll. */
static inline __attribute__((always_inline)) void copy_block(float *p, int64_t ps, int width,
                                                             int64_t count, int kc,
                                                             const float *s, int64_t cs) {
    const int64_t full = count / width * width;
    for (int k = 0; k < kc; k++) {
        const float *src = s + (int64_t)k * cs;
        float *dst = p + (int64_t)k * width;
        for (int64_t i = 0; i < full; i += width, dst += ps) copy_lanes(dst, src + i, width, width);
        if (full < count) copy_lanes(dst, src + full, (int)(count - full), width);
    }
}

static void pack_block(float *p, int64_t ps, int width, int64_t count, int kc, const float *s,
                       int64_t rs, int64_t cs) {
    if (rs == 1) {
        switch (width) {
#define WIDTH(w) case w: copy_block(p, ps, w, count, kc, s, cs); return;
            WIDTH(4) WIDTH(6) WIDTH(8) WIDTH(12) WIDTH(16) WIDTH(32)
#undef WIDTH
            default: copy_block(p, ps, width, count, kc, s, cs); return;
        }
    }
    for (int64_t i = 0; i < count; i += width, p += ps) {
        const int rows = count - i < width ? (int)(count - i) : width;
        if (cs == 1) { /* k is contiguous in each row: transposes */
            pack_across_k(p, width, rows, kc, s + i * rs, rs);
            continue;
        }
        for (int k = 0; k < kc; k++)
            for (int r = 0; r < width; r++)
                p[(int64_t)k * width + r] = r < rows ? s[(i + r) * rs + (int64_t)k * cs] : 0.0f;
    }
}

/* ------------------------------------------------------------------ the loops */

static inline int64_t round_to_line(int64_t floats) { return (floats + 15) / 16 * 16; }

/* A bias on a tile the kernel has just stored: each of `lines` lines of `len` contiguous
 * floats (stride ld) gets bias[0, len) added, after the whole sum over k as a separate pass
 * would add it */
static inline void add_bias_lines(float *c, int64_t ld, int lines, int len, const float *bias) {
    for (int l = 0; l < lines; l++) {
        float *row = c + (int64_t)l * ld;
        for (int j = 0; j < len; j++) row[j] += bias[j];
    }
}

/* The product of one ic × pc block through the sup kernel, A read in place (a: its first
 * element, A'(i, k) = a[i·ars + k·acs]), B from our packed NR-column panels (each a
 * row-stored kc×NR block), C row-stored (stride ldc). Every element goes through the full
 * sup_mr × NR tile's code, as in the native path: the kernel's edge variants for fewer rows
 * or columns sum in other orders (a product's bits would then depend on how it is split),
 * so an edge of rows is computed from a zero-padded copy of A's last rows and an edge of
 * columns into a scratch tile (holding C's values first when beta != 0), then copied out.
 * scratch: sup_mr·kc + mc·NR floats. */
static void sup_block(int64_t mc, int64_t nc, int kc, float alpha, const float *a, int64_t ars,
                      int64_t acs, float *b, int64_t ps_b, float beta, float *c, int64_t ldc,
                      const float *bias, float *scratch) {
    const int MR = ukr.sup_mr, NR = ukr.nr;
    const int64_t whole = mc / MR * MR;
    const int rest = (int)(mc - whole);
    float *a_rest = scratch, *c_edge = scratch + (int64_t)MR * kc;
    if (rest) /* A's last rows, zero-padded to a tile, row-stored with stride kc */
        for (int i = 0; i < MR; i++)
            for (int k = 0; k < kc; k++)
                a_rest[(int64_t)i * kc + k] = i < rest ? a[(whole + i) * ars + k * acs] : 0.0f;
    auxinfo_t aux;
    memset(&aux, 0, sizeof aux);
    for (int64_t jr = 0; jr < nc; jr += NR) {
        const int nr = (int)(nc - jr < NR ? nc - jr : NR);
        float *bp = b + jr / NR * ps_b, *cj = c + jr;
        /* whole tiles of rows straight into C, or into c_edge (ld NR) for an edge of columns */
        const bool edge = nr < NR;
        float *dst = edge ? c_edge : cj;
        const int64_t ld = edge ? NR : ldc;
        if (edge && beta != 0.0f)
            for (int64_t i = 0; i < whole; i++) memcpy(c_edge + i * NR, cj + i * ldc, sizeof(float) * nr);
        if (whole) {
            bli_auxinfo_set_ps_a(MR * ars, &aux);
            ukr.sup(BLIS_NO_CONJUGATE, BLIS_NO_CONJUGATE, whole, NR, kc, &alpha, (float *)a, ars,
                    acs, bp, NR, 1, &beta, dst, ld, 1, &aux, ukr.context);
        }
        if (rest) { /* the padded rows into a tile of their own */
            float tile[16 * 64] = {0}; /* MR <= 16, NR <= 64: checked at start-up */
            if (beta != 0.0f)
                for (int i = 0; i < rest; i++)
                    memcpy(tile + i * NR, cj + (whole + i) * ldc, sizeof(float) * nr);
            bli_auxinfo_set_ps_a((int64_t)MR * kc, &aux);
            ukr.sup(BLIS_NO_CONJUGATE, BLIS_NO_CONJUGATE, MR, NR, kc, &alpha, a_rest, kc, 1, bp,
                    NR, 1, &beta, tile, NR, 1, &aux, ukr.context);
            for (int i = 0; i < rest; i++)
                memcpy(cj + (whole + i) * ldc, tile + i * NR, sizeof(float) * nr);
        }
        if (edge)
            for (int64_t i = 0; i < whole; i++) memcpy(cj + i * ldc, c_edge + i * NR, sizeof(float) * nr);
        if (bias) add_bias_lines(cj, ldc, (int)mc, nr, bias + jr);
    }
}

/* C'(m, n) (element (i, j) at c[i·rs_c + j·cs_c]) = alpha·A'·B' + beta·C' with
 * A'(i, k) = a[i·ars + k·acs] (m, k) and B'(k, j) = b[k·brs + j·bcs] (k, n); A' is packed in
 * MR-row panels, B' in NR-column panels. bias (NULL: none) is added to each tile once its
 * sum is complete: bias[i] to C'(i, j) when bias_on_rows (C' is Cᵀ, rs_c == 1), else bias[j]
 * (cs_c == 1). */
static bool gemm_tiles(int64_t m, int64_t n, int64_t k, float alpha, const float *a,
                       int64_t ars, int64_t acs, const float *b, int64_t brs, int64_t bcs,
                       float beta, float *c, int64_t rs_c, int64_t cs_c, const float *bias,
                       bool bias_on_rows) {
    const int MR = ukr.mr, NR = ukr.nr;
    const int64_t MC = ukr.mc, KC = ukr.kc, NC = ukr.nc;
    const int64_t nc_max = n < NC ? n : NC, kc_max = k < KC ? k : KC, mc_max = m < MC ? m : MC;
    /* every panel starts on a cache line (the kernels load B, or A, with aligned loads);
     * the slack past the last one covers a kernel reading a step ahead */
    const int64_t slack = 2 * (int64_t)(MR > NR ? MR : NR) + 16;
    const size_t a_floats = ukr.a_in_place
                                ? (size_t)(ukr.sup_mr * kc_max + mc_max * NR)
                                : (size_t)((mc_max + MR - 1) / MR * round_to_line(MR * kc_max) + slack);
    pack_buffers *buf =
        thread_buffers(a_floats,
                       (size_t)((nc_max + NR - 1) / NR * round_to_line(NR * kc_max) + slack));
    if (!buf) return false;
    auxinfo_t aux;
    memset(&aux, 0, sizeof aux);
    bli_auxinfo_set_schema_a(BLIS_PACKED_ROW_PANELS, &aux);
    bli_auxinfo_set_schema_b(BLIS_PACKED_COL_PANELS, &aux);
    for (int64_t jc = 0; jc < n; jc += NC) {
        const int64_t nc = n - jc < NC ? n - jc : NC;
        for (int64_t pc = 0; pc < k; pc += KC) {
            const int kc = (int)(k - pc < KC ? k - pc : KC);
            const float beta_here = pc == 0 ? beta : 1.0f;
            const int64_t ps_a = round_to_line((int64_t)MR * kc), ps_b = round_to_line((int64_t)NR * kc);
            pack_block(buf->b, ps_b, NR, nc, kc, b + jc * bcs + pc * brs, bcs, brs);
            if (ukr.a_in_place) { /* C row-stored here: rs_c == ldc, cs_c == 1 */
                for (int64_t ic = 0; ic < m; ic += MC)
                    sup_block(m - ic < MC ? m - ic : MC, nc, kc, alpha, a + ic * ars + pc * acs,
                              ars, acs, buf->b, ps_b, beta_here, c + ic * rs_c + jc, rs_c,
                              bias && pc + kc >= k ? bias + jc : NULL, buf->a);
                continue;
            }
            for (int64_t ic = 0; ic < m; ic += MC) {
                const int64_t mc = m - ic < MC ? m - ic : MC;
                pack_block(buf->a, ps_a, MR, mc, kc, a + ic * ars + pc * acs, ars, acs);
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
                        float *tile = c + (ic + ir) * rs_c + (jc + jr) * cs_c;
                        ukr.kernel(mr, nr, kc, &alpha, ap, bp, (float *)&beta_here, tile, rs_c,
                                   cs_c, &aux, ukr.context);
                        if (bias && pc + kc >= k) {
                            if (bias_on_rows)
                                add_bias_lines(tile, cs_c, nr, mr, bias + ic + ir);
                            else
                                add_bias_lines(tile, rs_c, mr, nr, bias + jc + jr);
                        }
                    }
                }
            }
        }
    }
    return true;
}

/* Whether our packing is the default for this build's instruction set and BLIS's kernel
 * set: where it measured faster (the header comment). */
static bool packed_by_default(const char *arch) {
#if defined(__AVX512F__)
    return strcmp(arch, "skx") == 0;
#elif defined(__AVX2__)
    return strcmp(arch, "haswell") == 0 || strcmp(arch, "zen3") == 0;
#else
    (void)arch;
    return false; /* penryn: no faster than BLIS */
#endif
}

/* Whether op(A) is read in place by BLIS's sup kernel, with B still packed by us, for this
 * kernel set (the header comment) */
static bool sup_by_default(const char *arch) {
#if defined(__AVX2__) && !defined(__AVX512F__)
    return strcmp(arch, "haswell") == 0 || strcmp(arch, "zen3") == 0;
#else
    (void)arch;
    return false;
#endif
}

void pc_gemm_packed_init(void) {
    cntx_t *cntx = bli_gks_query_cntx();
    const int64_t mr = bli_cntx_get_blksz_def_dt(BLIS_FLOAT, BLIS_MR, cntx);
    const int64_t nr = bli_cntx_get_blksz_def_dt(BLIS_FLOAT, BLIS_NR, cntx);
    sgemm_ukr_ft kernel = (sgemm_ukr_ft)bli_cntx_get_l3_nat_ukr_dt(BLIS_FLOAT, BLIS_GEMM_UKR, cntx);
    if (!kernel || mr < 1 || mr > 64 || nr < 1 || nr > 64) return;
    ukr.context = cntx;
    ukr.kernel = kernel;
    ukr.mr = (int)mr;
    ukr.nr = (int)nr;
    ukr.prefers_rows = bli_cntx_l3_nat_ukr_prefers_rows_dt(BLIS_FLOAT, BLIS_GEMM_UKR, cntx);
    ukr.mc = bli_cntx_get_blksz_def_dt(BLIS_FLOAT, BLIS_MC, cntx) / mr * mr;
    ukr.kc = bli_cntx_get_blksz_def_dt(BLIS_FLOAT, BLIS_KC, cntx);
    ukr.nc = bli_cntx_get_blksz_def_dt(BLIS_FLOAT, BLIS_NC, cntx) / nr * nr;
    if (ukr.mc < mr || ukr.kc < 1 || ukr.nc < nr) return;
    if (pthread_key_create(&buffers_key, free_buffers) != 0) return;
    ukr.available = true;
    if (ukr.prefers_rows && sup_by_default(pc_blis_arch()) &&
        bli_cntx_get_l3_sup_blksz_def_dt(BLIS_FLOAT, BLIS_NR, cntx) == nr && nr <= 64) {
        const int64_t sup_mr = bli_cntx_get_l3_sup_blksz_def_dt(BLIS_FLOAT, BLIS_MR, cntx);
        ukr.sup = (sgemmsup_ker_ft)bli_cntx_get_l3_sup_ker_dt(BLIS_FLOAT, BLIS_RRR, cntx);
        ukr.sup_mr = (int)sup_mr;
        if (sup_mr < 1 || sup_mr > 16) ukr.sup = NULL;
    }
    const char *choice = getenv("PEFTCORE_GEMM");
    const bool pack_a = choice && strcmp(choice, "packed-a") == 0;
    ukr.enabled = choice && (strcmp(choice, "packed") == 0 || pack_a) ? true
                  : choice && strcmp(choice, "blis") == 0            ? false
                                                                     : packed_by_default(pc_blis_arch());
    ukr.a_in_place = ukr.sup && !pack_a;
}

bool pc_gemm_packed_split_free(void) {
    /* the kernel sets measured here (packed_by_default's) compute an edge tile as a whole
     * one would; another's (cortexa57's) rounds alpha·A·B apart there */
    return ukr.enabled && packed_by_default(pc_blis_arch());
}

int pc_gemm_packed_mode(void) {
    return !ukr.enabled ? PC_GEMM_PACKED_OFF : ukr.a_in_place ? PC_GEMM_PACKED_A_IN_PLACE
                                                               : PC_GEMM_PACKED_BOTH;
}

bool pc_gemm_packed_has(int mode) {
    return mode == PC_GEMM_PACKED_OFF || (ukr.available && (mode == PC_GEMM_PACKED_BOTH ||
                                                            (mode == PC_GEMM_PACKED_A_IN_PLACE && ukr.sup)));
}

bool pc_gemm_packed_use(int mode) {
    if (!pc_gemm_packed_has(mode)) return false;
    ukr.enabled = mode != PC_GEMM_PACKED_OFF;
    ukr.a_in_place = mode == PC_GEMM_PACKED_A_IN_PLACE;
    return true;
}

/* Row-major C (M, N) = alpha·op(A)·op(B) + beta·C (+ bias (N) on every row, unless NULL).
 * A row-preferring kernel computes C as is; a column-preferring one computes the
 * column-major Cᵀ = op(B)ᵀ·op(A)ᵀ, so it too stores along C's rows. False (C untouched) when
 * disabled or out of memory. M, N, K >= 1. */
bool pc_sgemm_packed(bool trans_a, bool trans_b, int M, int N, int K, float alpha,
                     const float *A, int lda, const float *B, int ldb, float beta, float *C,
                     int ldc, const float *bias) {
    if (!ukr.enabled) return false;
    /* op(A)(i, k) = A[i·a_rs + k·a_cs], op(B)(k, j) = B[k·b_rs + j·b_cs] */
    const int64_t a_rs = trans_a ? 1 : lda, a_cs = trans_a ? lda : 1;
    const int64_t b_rs = trans_b ? 1 : ldb, b_cs = trans_b ? ldb : 1;
    if (ukr.prefers_rows)
        return gemm_tiles(M, N, K, alpha, A, a_rs, a_cs, B, b_rs, b_cs, beta, C, ldc, 1, bias,
                          false);
    /* A'(i, k) = op(B)(k, i), B'(k, j) = op(A)(j, k), C'(i, j) = C(j, i) */
    return gemm_tiles(N, M, K, alpha, B, b_cs, b_rs, A, a_cs, a_rs, beta, C, 1, ldc, bias, true);
}
