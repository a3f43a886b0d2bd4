/* Shared inline helpers of the op kernels: threading and vectorisable math. */
#ifndef PEFTCORE_KERNELS_H
#define PEFTCORE_KERNELS_H

#include <math.h>
#include <stdint.h>
#include <string.h>

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

/* Dropout's counter-based RNG: splitmix64's finaliser over seed + golden-ratio·(i+1);
 * element i is kept iff its top 24 bits, as a uniform in [0,1), are >= p. */
static inline bool pc_keep(uint64_t seed, uint64_t i, float p) {
    uint64_t z = seed + (i + 1) * 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    return (float)(z >> 40) * (1.0f / 16777216.0f) >= p;
}

/* exp's two halves, for a float or a pc_vec16: r = x - n·ln2 (ln2 in a high part exact in
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
 * x·Φ(x), runs on 16 lanes: pc_gelu16) */
static inline float pc_gelu_tanh(float x) {
    return 0.5f * x * (1.0f + pc_tanhf(PC_SQRT_2_OVER_PI * (x + PC_GELU_TANH_COEF * x * x * x)));
}

/* its derivative 0.5(1+t) + 0.5x(1-t²)·√(2/π)(1 + 3·0.044715x²) with t = tanh(u) */
static inline float pc_gelu_tanh_derivative(float x) {
    float t = pc_tanhf(PC_SQRT_2_OVER_PI * (x + PC_GELU_TANH_COEF * x * x * x));
    float du = PC_SQRT_2_OVER_PI * (1.0f + 3.0f * PC_GELU_TANH_COEF * x * x);
    return 0.5f * (1.0f + t) + 0.5f * x * (1.0f - t * t) * du;
}

/* ---- 16-float vectors (GCC vector extensions: AVX-512 registers where the target has
 * them, pairs or quadruples of narrower ones elsewhere) */
typedef float pc_vec16 __attribute__((vector_size(64), aligned(4)));
typedef int32_t pc_ivec16 __attribute__((vector_size(64), aligned(4)));

static inline pc_vec16 pc_load16(const float *p) {
    pc_vec16 v;
    memcpy(&v, p, sizeof v);
    return v;
}

static inline void pc_store16(float *p, pc_vec16 v) { memcpy(p, &v, sizeof v); }

static inline pc_vec16 pc_splat16(float x) { return (pc_vec16){0} + x; }

/* lanes of a where mask (all ones or all zeros per lane) is set, else of b */
static inline pc_vec16 pc_select16(pc_ivec16 mask, pc_vec16 a, pc_vec16 b) {
    return (pc_vec16)((mask & (pc_ivec16)a) | (~mask & (pc_ivec16)b));
}

/* lane-wise max; a NaN lane in a yields b's lane, as the scalar x > m ? x : m */
static inline pc_vec16 pc_max16(pc_vec16 a, pc_vec16 b) { return pc_select16(a > b, a, b); }

/* horizontal sum and max in a fixed tree order (halves, then quarters, ...) */
static inline float pc_hsum16(pc_vec16 v) {
    v += __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15, 0, 1, 2, 3, 4, 5, 6, 7);
    v += __builtin_shufflevector(v, v, 4, 5, 6, 7, 0, 1, 2, 3, 4, 5, 6, 7, 0, 1, 2, 3);
    v += __builtin_shufflevector(v, v, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3, 0, 1);
    return v[0] + v[1];
}

static inline float pc_hmax16(pc_vec16 v) {
    v = pc_max16(v, __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15, 0, 1, 2, 3, 4, 5, 6, 7));
    v = pc_max16(v, __builtin_shufflevector(v, v, 4, 5, 6, 7, 0, 1, 2, 3, 4, 5, 6, 7, 0, 1, 2, 3));
    v = pc_max16(v, __builtin_shufflevector(v, v, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3, 0, 1));
    return v[0] > v[1] ? v[0] : v[1];
}

/* exp(x) on 16 lanes for x <= 0 (softmax's shifted scores), as pc_expf: x = n·ln2 + r,
 * exp(r) by the degree-6 polynomial, 2^n (n in [-126, 0]) built in the exponent field;
 * exactly 0 below -87.3, NaN propagates. */
static inline pc_vec16 pc_exp16_nonpositive(pc_vec16 x) {
    const pc_ivec16 underflow = x < -87.3f;
    /* round x·log2(e) to an integer: adding and subtracting 1.5·2^23 is exact here */
    const pc_vec16 n = (x * PC_LOG2_E + 12582912.0f) - 12582912.0f;
    const pc_vec16 p = PC_EXP_POLY(PC_EXP_REDUCE(x, n));
    const pc_ivec16 ni = __builtin_convertvector(n, pc_ivec16);
    const pc_vec16 two_n = (pc_vec16)((ni + 127) << 23);
    return pc_select16(underflow, pc_splat16(0.0f), p * two_n);
}

/* erfc(z)·exp(z²) for z = |x|/√2 >= 0 (Abramowitz & Stegun 7.1.26, |error| < 1.5e-7):
 * t·P(t) with t = 1/(1 + 0.3275911z) */
static inline pc_vec16 pc_erfc_scaled16(pc_vec16 z) {
    const pc_vec16 t = 1.0f / (1.0f + 0.3275911f * z);
    return t * (0.254829592f + t * (-0.284496736f + t * (1.421413741f +
                t * (-1.453152027f + t * 1.061405429f))));
}

/* Φ(x), the standard normal CDF, on 16 lanes via erfc, keeping relative accuracy in the
 * lower tail; e = exp(-x²/2), which the density shares */
static inline pc_vec16 pc_normal_cdf16_with(pc_vec16 x, pc_vec16 e) {
    const pc_vec16 z = pc_select16(x < 0.0f, -x, x) * 0.70710678118654752f;
    const pc_vec16 half_erfc = 0.5f * pc_erfc_scaled16(z) * e;
    return pc_select16(x < 0.0f, half_erfc, 1.0f - half_erfc);
}

/* gelu(x) = x·Φ(x) on 16 lanes (exact form; exp(-x²/2) <= 1 needs only the non-positive
 * exponential) */
static inline pc_vec16 pc_gelu16(pc_vec16 x) {
    return x * pc_normal_cdf16_with(x, pc_exp16_nonpositive(-0.5f * x * x));
}

#define PC_INV_SQRT_2PI 0.3989422804014327f

/* gelu'(x) = Φ(x) + x·φ(x) on 16 lanes, one exponential serving both. At ±inf x·φ(x) would
 * be ±inf·0 = NaN; for |x| >= 13 it is below 1e-35, so it is dropped (a NaN x still
 * propagates through Φ). */
static inline pc_vec16 pc_gelu_derivative16(pc_vec16 x) {
    const pc_vec16 e = pc_exp16_nonpositive(-0.5f * x * x);
    const pc_ivec16 finite_tail = pc_splat16(13.0f) > pc_select16(x < 0.0f, -x, x);
    const pc_vec16 xpdf = pc_select16(finite_tail, x * PC_INV_SQRT_2PI * e, pc_splat16(0.0f));
    return pc_normal_cdf16_with(x, e) + xpdf;
}

/* One row in place or out of place: y = exp(z - max z) / Σ exp(z - max z) with
 * z = x + bias (bias (C), e.g. an attention mask's 0 / -FLT_MAX, or NULL). Whole vectors
 * first, the last C mod 16 lanes one by one. */
static inline void pc_softmax_row_biased(float *y, const float *x, const float *bias, int C) {
    const int c16 = C / 16 * 16;
    pc_vec16 mv = pc_splat16(-INFINITY);
    for (int c = 0; c < c16; c += 16)
        mv = pc_max16(pc_load16(x + c) + (bias ? pc_load16(bias + c) : pc_splat16(0.0f)), mv);
    float mx = pc_hmax16(mv);
    for (int c = c16; c < C; c++) {
        float z = x[c] + (bias ? bias[c] : 0.0f);
        mx = z > mx ? z : mx;
    }
    pc_vec16 sv = pc_splat16(0.0f);
    for (int c = 0; c < c16; c += 16) {
        pc_vec16 z = pc_load16(x + c) + (bias ? pc_load16(bias + c) : pc_splat16(0.0f));
        pc_vec16 e = pc_exp16_nonpositive(z - mx);
        pc_store16(y + c, e);
        sv += e;
    }
    float sum = pc_hsum16(sv);
    for (int c = c16; c < C; c++) {
        y[c] = pc_expf(x[c] + (bias ? bias[c] : 0.0f) - mx);
        sum += y[c];
    }
    const float inv = 1.0f / sum;
    for (int c = 0; c < c16; c += 16) pc_store16(y + c, pc_load16(y + c) * inv);
    for (int c = c16; c < C; c++) y[c] *= inv;
}

static inline void pc_softmax_row(float *y, const float *x, int C) {
    pc_softmax_row_biased(y, x, NULL, C);
}

/* Σ a·b: two vector accumulators, then the lanes in a fixed tree, then the tail in order
 * (the order is fixed for a given n, so results are reproducible) */
static inline float pc_dot(const float *a, const float *b, int n) {
    const int n32 = n / 32 * 32, n16 = n / 16 * 16;
    pc_vec16 s0 = pc_splat16(0.0f), s1 = pc_splat16(0.0f);
    for (int i = 0; i < n32; i += 32) {
        s0 += pc_load16(a + i) * pc_load16(b + i);
        s1 += pc_load16(a + i + 16) * pc_load16(b + i + 16);
    }
    if (n16 > n32) s0 += pc_load16(a + n32) * pc_load16(b + n32);
    float s = pc_hsum16(s0 + s1);
    for (int i = n16; i < n; i++) s += a[i] * b[i];
    return s;
}

#endif
