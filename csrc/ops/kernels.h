/* Shared inline helpers of the op kernels: threading and vectorisable math. */
#ifndef PEFTCORE_KERNELS_H
#define PEFTCORE_KERNELS_H

#include <math.h>
#include <stdint.h>
#include <string.h>

#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif

#include "../engine.h"

/* Parallel loops: our threads follow pc_set_num_threads; small jobs stay on one thread.
 * Work is always split by rows/columns that each thread owns whole, so results do not
 * depend on the thread count. */
#define PC_PRAGMA(x) _Pragma(#x)
#define PC_PARALLEL_FOR(work) \
    PC_PRAGMA(omp parallel for schedule(static) num_threads(pc_threads_for(work)))

static inline int pc_threads_for(int64_t work) {
    return work >= 32768 ? pc_threads_here() : 1;
}

/* Column reductions that must not depend on the thread count (a bias's gradient, (IA)³'s
 * vector's) give each thread whole groups of 64-column blocks, at most 32 blocks a group,
 * and sum every column in row order. For N rows of C columns: the threads, the groups and
 * their width; group g holds columns [g·width, min((g + 1)·width, C)). */
enum { PC_COLUMN_BLOCK = 64, PC_COLUMN_GROUP_MAX = 32 * PC_COLUMN_BLOCK };

typedef struct {
    int threads, count, width;
} pc_column_groups;

static inline pc_column_groups pc_column_groups_of(int64_t N, int C) {
    pc_column_groups g;
    g.threads = pc_threads_for(N * C);
    const int blocks = (C + PC_COLUMN_BLOCK - 1) / PC_COLUMN_BLOCK;
    int per = (blocks + g.threads - 1) / g.threads;
    per = per > PC_COLUMN_GROUP_MAX / PC_COLUMN_BLOCK ? PC_COLUMN_GROUP_MAX / PC_COLUMN_BLOCK
          : per < 1                                   ? 1
                                                      : per;
    g.width = per * PC_COLUMN_BLOCK;
    g.count = (C + g.width - 1) / g.width;
    return g;
}

static inline int pc_column_group_end(const pc_column_groups *g, int i, int C) {
    return (i + 1) * g->width < C ? (i + 1) * g->width : C;
}

/* dst = src (n floats), or 0 where src is NULL, on the threads: a serial memcpy of a
 * batch's activations leaves the other threads waiting */
static inline void pc_copy_floats(float *dst, const float *src, int64_t n) {
    enum { CHUNK = 1 << 14 };
    const int64_t chunks = (n + CHUNK - 1) / CHUNK;
    PC_PARALLEL_FOR(n)
    for (int64_t c = 0; c < chunks; c++) {
        const int64_t i = c * CHUNK, len = n - i < CHUNK ? n - i : CHUNK;
        if (src)
            memcpy(dst + i, src + i, sizeof(float) * (size_t)len);
        else
            memset(dst + i, 0, sizeof(float) * (size_t)len);
    }
}

/* each of dst's rows (rows × C, contiguous) = row: a bias before a GEMM adds to it */
static inline void pc_fill_rows(float *dst, const float *row, int64_t rows, int C) {
    PC_PARALLEL_FOR(rows * C)
    for (int64_t i = 0; i < rows; i++) memcpy(dst + i * C, row, sizeof(float) * (size_t)C);
}

/* one row of LayerNorm: y = (x - mean)·rstd·weight + bias (y may be x), statistics in double
 * (pc_layernorm_forward); the row's mean and rstd to *mean, *rstd unless NULL */
static inline __attribute__((always_inline)) void
pc_layernorm_row(float *y, float *mean, float *rstd, const float *x, const float *weight,
                 const float *bias, int C, float eps) {
    double sum = 0.0;
    #pragma omp simd reduction(+ : sum)
    for (int c = 0; c < C; c++) sum += x[c];
    float m = (float)(sum / C);
    double sq = 0.0;
    #pragma omp simd reduction(+ : sq)
    for (int c = 0; c < C; c++) {
        float d = x[c] - m;
        sq += (double)d * d;
    }
    float s = (float)(1.0 / sqrt(sq / C + eps));
    for (int c = 0; c < C; c++) y[c] = (x[c] - m) * s * weight[c] + bias[c];
    if (mean) *mean = m;
    if (rstd) *rstd = s;
}

/* Dropout's counter-based RNG: splitmix64's finaliser over seed + golden-ratio·(i+1);
 * element i is kept iff its top 24 bits, as a uniform in [0,1), are >= p. As the integer
 * u = z >> 40 is exact in a float and so is u·2⁻²⁴, that is u >= ceil(p·2²⁴): the
 * threshold pc_keep_threshold gives, compared in integers (which vectorise where a 64-bit
 * integer to float conversion does not, as on AVX2). */
static inline uint64_t pc_keep_threshold(float p) {
    if (p != p || p > 1.0f) return (uint64_t)1 << 24; /* never kept */
    if (p <= 0.0f) return 0;
    const float x = p * 16777216.0f;       /* exact: a power-of-two scaling, <= 2^24 */
    const uint64_t t = (uint64_t)x;
    return (float)t < x ? t + 1 : t;
}

static inline bool pc_keep_t(uint64_t seed, uint64_t i, uint64_t threshold) {
    uint64_t z = seed + (i + 1) * 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    return (z >> 40) >= threshold;
}

static inline bool pc_keep(uint64_t seed, uint64_t i, float p) {
    return pc_keep_t(seed, i, pc_keep_threshold(p));
}

#if defined(__AVX2__) && !defined(__AVX512F__)
/* x·c mod 2⁶⁴ per 64-bit lane, c's halves in clo and chi: AVX2 multiplies only 32-bit
 * halves (left to itself, GCC keeps the hash scalar, with a branch per element) */
static inline __m256i pc_mul64_by(__m256i x, __m256i clo, __m256i chi) {
    const __m256i cross = _mm256_add_epi64(_mm256_mul_epu32(_mm256_srli_epi64(x, 32), clo),
                                           _mm256_mul_epu32(x, chi));
    return _mm256_add_epi64(_mm256_mul_epu32(x, clo), _mm256_slli_epi64(cross, 32));
}

/* all ones in the lanes of z = seed + golden-ratio·(i+1) that pc_keep_t drops. The final
 * z ^= z >> 31 leaves bits 40-63 as they are, so it is skipped. */
static inline __m256i pc_dropped4(__m256i z, __m256i threshold) {
    z = _mm256_xor_si256(z, _mm256_srli_epi64(z, 30));
    z = pc_mul64_by(z, _mm256_set1_epi64x(0x1CE4E5B9), _mm256_set1_epi64x(0xBF58476D));
    z = _mm256_xor_si256(z, _mm256_srli_epi64(z, 27));
    z = pc_mul64_by(z, _mm256_set1_epi64x(0x133111EB), _mm256_set1_epi64x(0x94D049BB));
    return _mm256_cmpgt_epi64(threshold, _mm256_srli_epi64(z, 40)); /* both below 2^63 */
}
#endif

/* keep[j] = -1 if pc_keep_t keeps element first + j, else 0, for j < n: dropout's mask by
 * whole vectors, for a loop that then applies it */
static inline __attribute__((always_inline)) void
pc_keep_mask(int32_t *keep, uint64_t seed, uint64_t first, int n, uint64_t threshold) {
    int j = 0;
#if defined(__AVX2__) && !defined(__AVX512F__)
    const uint64_t g = 0x9E3779B97F4A7C15ull, z = seed + (first + 1) * g;
    __m256i lo = _mm256_setr_epi64x((int64_t)z, (int64_t)(z + g), (int64_t)(z + 2 * g),
                                    (int64_t)(z + 3 * g));
    __m256i hi = _mm256_add_epi64(lo, _mm256_set1_epi64x((int64_t)(4 * g)));
    const __m256i step = _mm256_set1_epi64x((int64_t)(8 * g));
    const __m256i t = _mm256_set1_epi64x((int64_t)threshold);
    for (; j + 8 <= n; j += 8) {
        /* the low halves of both dropped masks, in element order, inverted */
        const __m256 halves = _mm256_shuffle_ps(_mm256_castsi256_ps(pc_dropped4(lo, t)),
                                                _mm256_castsi256_ps(pc_dropped4(hi, t)),
                                                _MM_SHUFFLE(2, 0, 2, 0));
        const __m256i dropped =
            _mm256_permute4x64_epi64(_mm256_castps_si256(halves), _MM_SHUFFLE(3, 1, 2, 0));
        _mm256_storeu_si256((__m256i *)(keep + j),
                            _mm256_xor_si256(dropped, _mm256_set1_epi32(-1)));
        lo = _mm256_add_epi64(lo, step);
        hi = _mm256_add_epi64(hi, step);
    }
#endif
    for (; j < n; j++) keep[j] = pc_keep_t(seed, first + (uint64_t)j, threshold) ? -1 : 0;
}

/* exp's two halves, for a float or a pc_vec: r = x - n·ln2 (ln2 in a high part exact in
 * float and a low part), then exp(r) for |r| <= ln2/2 by its degree-6 Taylor polynomial */
#define PC_LOG2_E 1.44269504088896341f
#define PC_EXP_REDUCE(x, n) (((x) - (n) * 0.693145751953125f) - (n) * 1.428606765330187045e-06f)
#define PC_EXP_POLY(r)                                                                       \
    ((((((1.0f / 720.0f * (r) + 1.0f / 120.0f) * (r) + 1.0f / 24.0f) * (r) + 1.0f / 6.0f) * \
         (r) + 0.5f) * (r) + 1.0f) * (r) + 1.0f)

/* exp(x) for float, vectorisable: x = n·ln2 + r, exp(r) by a degree-6 polynomial.
 * Relative error ~2 ulp; NaN propagates; exactly 0 below -87.3 (so masked attention keys
 * get probability 0, as in torch). */
static inline float pc_expf(float x) {
    const bool underflow = x < -87.3f;
    x = underflow ? -87.3f : x;
    x = x > 88.7f ? 88.7f : x;
    float n = nearbyintf(x * PC_LOG2_E);
    float p = PC_EXP_POLY(PC_EXP_REDUCE(x, n));
    /* n in [-126, 128]: build 2^n in two halves so n = 128 does not overflow the exponent */
    int32_t ni = (int32_t)n;
    int32_t n1 = ni >> 1, n2 = ni - n1;
    uint32_t b1 = (uint32_t)(n1 + 127) << 23, b2 = (uint32_t)(n2 + 127) << 23;
    float s1, s2;
    memcpy(&s1, &b1, sizeof s1); /* bit casts the vectoriser understands */
    memcpy(&s2, &b2, sizeof s2);
    return underflow ? 0.0f : p * s1 * s2;
}

/* tanh(x): odd Taylor polynomial near 0, 1 - 2/(e^{2|x|}+1) elsewhere. */
static inline float pc_tanhf(float x) {
    float a = fabsf(x);
    float x2 = x * x;
    float small = x * (1.0f + x2 * (-1.0f / 3.0f + x2 * (2.0f / 15.0f + x2 * (-17.0f / 315.0f +
                  x2 * (62.0f / 2835.0f)))));
    float big = 1.0f - 2.0f / (pc_expf(2.0f * a) + 1.0f);
    big = x < 0.0f ? -big : big;
    return a < 0.3f ? small : big;
}

#define PC_SQRT_2_OVER_PI 0.7978845608028654f
#define PC_GELU_TANH_COEF 0.044715f

/* GELU's tanh form: 0.5·x·(1 + tanh(u)) with u = √(2/π)(x + 0.044715x³) (the exact form,
 * x·Φ(x), runs on vectors: pc_gelu_v) */
static inline float pc_gelu_tanh(float x) {
    return 0.5f * x * (1.0f + pc_tanhf(PC_SQRT_2_OVER_PI * (x + PC_GELU_TANH_COEF * x * x * x)));
}

/* its derivative 0.5(1+t) + 0.5x(1-t²)·√(2/π)(1 + 3·0.044715x²) with t = tanh(u) */
static inline float pc_gelu_tanh_derivative(float x) {
    float t = pc_tanhf(PC_SQRT_2_OVER_PI * (x + PC_GELU_TANH_COEF * x * x * x));
    float du = PC_SQRT_2_OVER_PI * (1.0f + 3.0f * PC_GELU_TANH_COEF * x * x);
    return 0.5f * (1.0f + t) + 0.5f * x * (1.0f - t * t) * du;
}

/* ---- native vectors of PC_VW floats: 16 in the AVX-512 build of a kernel, 8 in the AVX2
 * build, 4 elsewhere (GCC vector extensions; wider vectors than the target's registers
 * would be split, and their comparisons and conversions done lane by lane). The results of
 * a set do not depend on the thread count or on where an element sits; they differ between
 * sets by rounding (other lane counts sum in other orders). */
#if defined(__AVX512F__)
#define PC_VW 16
#elif defined(__AVX2__)
#define PC_VW 8
#else
#define PC_VW 4
#endif
typedef float pc_vec __attribute__((vector_size(4 * PC_VW), aligned(4)));
typedef int32_t pc_ivec __attribute__((vector_size(4 * PC_VW), aligned(4)));

/* unaligned loads and stores through a may_alias type (a memcpy of a vector went through
 * the stack in halves under -mtune=generic, stalling on store forwarding) */
typedef pc_vec pc_vec_alias __attribute__((may_alias));

static inline pc_vec pc_loadv(const float *p) { return *(const pc_vec_alias *)p; }

static inline void pc_storev(float *p, pc_vec v) { *(pc_vec_alias *)p = v; }

static inline pc_vec pc_splat(float x) { return (pc_vec){0} + x; }

/* the first `count` (< PC_VW) floats of p as lanes, the rest 0; and back. Memory past
 * count is never touched: masked loads (and AVX-512's masked stores); AVX2's stores go as
 * 4, 2 and 1 floats, since AMD's Zen cores run vmaskmovps to memory as a long microcoded
 * sequence (attention over 148 keys: 1.27 -> 1.19 of 128's time on a Zen 4 with this and
 * the narrow tiles' unrolling, bench/README.md). */
static inline pc_vec pc_load_head(const float *p, int64_t count) {
#if defined(__AVX512F__)
    return (pc_vec)_mm512_maskz_loadu_ps((__mmask16)((1u << count) - 1u), p);
#elif defined(__AVX2__)
    const __m256i lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    return (pc_vec)_mm256_maskload_ps(p, _mm256_cmpgt_epi32(_mm256_set1_epi32((int)count), lanes));
#else
    float lanes[PC_VW] = {0};
    memcpy(lanes, p, sizeof(float) * (size_t)count);
    return pc_loadv(lanes);
#endif
}

static inline void pc_store_head(float *p, pc_vec v, int64_t count) {
#if defined(__AVX512F__)
    _mm512_mask_storeu_ps(p, (__mmask16)((1u << count) - 1u), (__m512)v);
#elif defined(__AVX2__)
    __m128 part = _mm256_castps256_ps128((__m256)v);
    if (count & 4) {
        _mm_storeu_ps(p, part);
        part = _mm256_extractf128_ps((__m256)v, 1);
        p += 4;
    }
    if (count & 2) {
        _mm_storel_pi((__m64 *)p, part);
        part = _mm_movehl_ps(part, part);
        p += 2;
    }
    if (count & 1) _mm_store_ss(p, part);
#else
    float lanes[PC_VW];
    pc_storev(lanes, v);
    memcpy(p, lanes, sizeof(float) * (size_t)count);
#endif
}

/* lanes below count: all ones, the others zero */
static inline pc_ivec pc_lanes_below(int count) {
    pc_ivec index;
    for (int i = 0; i < PC_VW; i++) index[i] = i;
    return index < count;
}

/* lanes of a where mask (all ones or all zeros per lane) is set, else of b */
static inline pc_vec pc_select(pc_ivec mask, pc_vec a, pc_vec b) {
    return (pc_vec)((mask & (pc_ivec)a) | (~mask & (pc_ivec)b));
}

/* PC_VW lanes of a mask from pc_keep_mask's int32 array */
static inline pc_ivec pc_load_keep(const int32_t *keep) {
    pc_ivec k;
    memcpy(&k, keep, sizeof k);
    return k;
}

/* d[j] = s[j]·scale where keep[j] (-1 or 0, pc_keep_mask's) is set, else 0, for j < n (d
 * may be s): the product and-ed with the mask */
static inline __attribute__((always_inline)) void
pc_apply_keep(float *d, const float *s, const int32_t *keep, int n, float scale) {
    int j = 0;
    for (; j + PC_VW <= n; j += PC_VW) {
        pc_storev(d + j, (pc_vec)(pc_load_keep(keep + j) & (pc_ivec)(pc_loadv(s + j) * scale)));
    }
    for (; j < n; j++) d[j] = keep[j] ? s[j] * scale : 0.0f;
}

/* masks are made PC_KEEP_CHUNK elements at a time, in a buffer on the stack; the length of
 * the chunk at j0 of n */
enum { PC_KEEP_CHUNK = 256 };
static inline int pc_keep_chunk_at(int64_t n, int64_t j0) {
    return n - j0 < PC_KEEP_CHUNK ? (int)(n - j0) : PC_KEEP_CHUNK;
}

/* dst[j] = src[j]·scale where element first + j is kept, else 0, for j < n (dst may be src):
 * dropout */
static inline __attribute__((always_inline)) void
pc_dropout_span(float *dst, const float *src, int64_t n, float scale, uint64_t seed,
                uint64_t first, uint64_t threshold) {
    int32_t keep[PC_KEEP_CHUNK];
    for (int64_t j0 = 0; j0 < n; j0 += PC_KEEP_CHUNK) {
        const int len = pc_keep_chunk_at(n, j0);
        pc_keep_mask(keep, seed, first + (uint64_t)j0, len, threshold);
        pc_apply_keep(dst + j0, src + j0, keep, len, scale);
    }
}

/* lane-wise max; a NaN lane in a yields b's lane, as the scalar x > m ? x : m */
static inline pc_vec pc_vmax(pc_vec a, pc_vec b) { return pc_select(a > b, a, b); }

/* v's upper half folded onto its lower half, by op (+ or max): the fixed tree of the
 * horizontal reductions below (halves, then quarters, ...) */
#if PC_VW == 16
#define PC_FOLD(v, fold)                                                                      \
    do {                                                                                      \
        v = fold(v, __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15, 0, 1, 2, 3, 4, \
                                            5, 6, 7));                                        \
        v = fold(v, __builtin_shufflevector(v, v, 4, 5, 6, 7, 0, 1, 2, 3, 4, 5, 6, 7, 0, 1, 2, \
                                            3));                                              \
        v = fold(v, __builtin_shufflevector(v, v, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3, 0, \
                                            1));                                              \
    } while (0)
#elif PC_VW == 8
#define PC_FOLD(v, fold)                                                                      \
    do {                                                                                      \
        v = fold(v, __builtin_shufflevector(v, v, 4, 5, 6, 7, 0, 1, 2, 3));                   \
        v = fold(v, __builtin_shufflevector(v, v, 2, 3, 0, 1, 2, 3, 0, 1));                   \
    } while (0)
#else
#define PC_FOLD(v, fold)                                                                      \
    do {                                                                                      \
        v = fold(v, __builtin_shufflevector(v, v, 2, 3, 0, 1));                               \
    } while (0)
#endif
#define PC_ADD(a, b) ((a) + (b))

static inline float pc_hsum(pc_vec v) {
    PC_FOLD(v, PC_ADD);
    return v[0] + v[1];
}

static inline float pc_hmax(pc_vec v) {
    PC_FOLD(v, pc_vmax);
    return v[0] > v[1] ? v[0] : v[1];
}

/* exp(x) on a vector for x <= 0 (softmax's shifted scores), as pc_expf: x = n·ln2 + r,
 * exp(r) by the degree-6 polynomial, 2^n (n in [-126, 0]) built in the exponent field;
 * exactly 0 below -87.3, NaN propagates. */
static inline pc_vec pc_exp_nonpositive(pc_vec x) {
    const pc_ivec underflow = x < -87.3f;
    /* round x·log2(e) to an integer: adding and subtracting 1.5·2^23 is exact here */
    const pc_vec n = (x * PC_LOG2_E + 12582912.0f) - 12582912.0f;
    const pc_vec p = PC_EXP_POLY(PC_EXP_REDUCE(x, n));
    const pc_ivec ni = __builtin_convertvector(n, pc_ivec);
    const pc_vec two_n = (pc_vec)((ni + 127) << 23);
    return pc_select(underflow, pc_splat(0.0f), p * two_n);
}

/* erfc(z)·exp(z²) for z = |x|/√2 >= 0 (Abramowitz & Stegun 7.1.26, |error| < 1.5e-7):
 * t·P(t) with t = 1/(1 + 0.3275911z) */
static inline pc_vec pc_erfc_scaled(pc_vec z) {
    const pc_vec t = 1.0f / (1.0f + 0.3275911f * z);
    return t * (0.254829592f + t * (-0.284496736f + t * (1.421413741f +
                t * (-1.453152027f + t * 1.061405429f))));
}

/* Φ(x), the standard normal CDF, on a vector via erfc, keeping relative accuracy in the
 * lower tail; e = exp(-x²/2), which the density shares */
static inline pc_vec pc_normal_cdf_with(pc_vec x, pc_vec e) {
    const pc_vec z = pc_select(x < 0.0f, -x, x) * 0.70710678118654752f;
    const pc_vec half_erfc = 0.5f * pc_erfc_scaled(z) * e;
    return pc_select(x < 0.0f, half_erfc, 1.0f - half_erfc);
}

/* gelu(x) = x·Φ(x) on a vector (exact form; exp(-x²/2) <= 1 needs only the non-positive
 * exponential) */
static inline pc_vec pc_gelu_v(pc_vec x) {
    return x * pc_normal_cdf_with(x, pc_exp_nonpositive(-0.5f * x * x));
}

#define PC_INV_SQRT_2PI 0.3989422804014327f

/* gelu'(x) = Φ(x) + x·φ(x) on a vector, one exponential serving both (and gelu(x) in *value,
 * for a caller that wants it too). At ±inf x·φ(x) would be ±inf·0 = NaN; for |x| >= 13 it
 * is below 1e-35, so it is dropped (a NaN x still propagates through Φ). */
static inline pc_vec pc_gelu_value_derivative_v(pc_vec x, pc_vec *value) {
    const pc_vec e = pc_exp_nonpositive(-0.5f * x * x);
    const pc_vec cdf = pc_normal_cdf_with(x, e);
    *value = x * cdf; /* gelu(x), as pc_gelu_v has it */
    const pc_ivec finite_tail = pc_splat(13.0f) > pc_select(x < 0.0f, -x, x);
    const pc_vec xpdf = pc_select(finite_tail, x * PC_INV_SQRT_2PI * e, pc_splat(0.0f));
    return cdf + xpdf;
}

static inline pc_vec pc_gelu_derivative_v(pc_vec x) {
    pc_vec value;
    return pc_gelu_value_derivative_v(x, &value);
}

/* One row in place or out of place: y = exp(z - max z) / Σ exp(z - max z) with
 * z = x + bias (bias (C), e.g. an attention mask's 0 / -FLT_MAX, or NULL). Whole vectors,
 * then the last C mod PC_VW lanes as one masked vector (their sum joins the whole vectors'
 * before the lanes are added up). */
static inline void pc_softmax_row_biased(float *y, const float *x, const float *bias, int C) {
    const int c16 = C / PC_VW * PC_VW, tail = C - c16;
    const pc_ivec in_tail = pc_lanes_below(tail);
    pc_vec zt = pc_splat(0.0f);
    if (tail) zt = pc_load_head(x + c16, tail) + (bias ? pc_load_head(bias + c16, tail) : zt);
    pc_vec mv = tail ? pc_select(in_tail, zt, pc_splat(-INFINITY)) : pc_splat(-INFINITY);
    for (int c = 0; c < c16; c += PC_VW)
        mv = pc_vmax(pc_loadv(x + c) + (bias ? pc_loadv(bias + c) : pc_splat(0.0f)), mv);
    const float mx = pc_hmax(mv);
    pc_vec sv = pc_splat(0.0f);
    for (int c = 0; c < c16; c += PC_VW) {
        pc_vec z = pc_loadv(x + c) + (bias ? pc_loadv(bias + c) : pc_splat(0.0f));
        pc_vec e = pc_exp_nonpositive(z - mx);
        pc_storev(y + c, e);
        sv += e;
    }
    pc_vec et = pc_splat(0.0f);
    if (tail) {
        et = pc_select(in_tail, pc_exp_nonpositive(pc_select(in_tail, zt - mx, et)), et);
        sv += et;
    }
    const float inv = 1.0f / pc_hsum(sv);
    for (int c = 0; c < c16; c += PC_VW) pc_storev(y + c, pc_loadv(y + c) * inv);
    if (tail) pc_store_head(y + c16, et * inv, tail);
}

static inline void pc_softmax_row(float *y, const float *x, int C) {
    pc_softmax_row_biased(y, x, NULL, C);
}

/* Σ a·b: two vector accumulators, then the lanes in a fixed tree, then the tail in order
 * (the order is fixed for a given n, so results are reproducible) */
static inline float pc_dot(const float *a, const float *b, int n) {
    const int n32 = n / (2 * PC_VW) * (2 * PC_VW), n16 = n / PC_VW * PC_VW;
    pc_vec s0 = pc_splat(0.0f), s1 = pc_splat(0.0f);
    for (int i = 0; i < n32; i += 2 * PC_VW) {
        s0 += pc_loadv(a + i) * pc_loadv(b + i);
        s1 += pc_loadv(a + i + PC_VW) * pc_loadv(b + i + PC_VW);
    }
    if (n16 > n32) s0 += pc_loadv(a + n32) * pc_loadv(b + n32);
    float s = pc_hsum(s0 + s1);
    for (int i = n16; i < n; i++) s += a[i] * b[i];
    return s;
}

#endif
