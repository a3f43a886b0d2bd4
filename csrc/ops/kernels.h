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
    return work >= 32768 ? pc_get_num_threads() : 1;
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

/* exp(x) for float, vectorisable: x = n·ln2 + r, exp(r) by a degree-6 polynomial.
 * Relative error ~2 ulp; NaN propagates; exactly 0 below -87.3 (so masked attention keys
 * get probability 0, as in torch). */
static inline float pc_expf(float x) {
    const bool underflow = x < -87.3f;
    x = underflow ? -87.3f : x;
    x = x > 88.7f ? 88.7f : x;
    float n = nearbyintf(x * 1.44269504088896341f);
    float r = x - n * 0.693145751953125f;
    r = r - n * 1.428606765330187045e-06f;
    float p = 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    /* n in [-126, 128]: build 2^n in two halves so n = 128 does not overflow the exponent */
    int32_t ni = (int32_t)n;
    int32_t n1 = ni >> 1, n2 = ni - n1;
    uint32_t b1 = (uint32_t)(n1 + 127) << 23, b2 = (uint32_t)(n2 + 127) << 23;
    float s1, s2;
    memcpy(&s1, &b1, sizeof s1); /* bit casts the vectoriser understands */
    memcpy(&s2, &b2, sizeof s2);
    return underflow ? 0.0f : p * s1 * s2;
}

/* Φ(x), the standard normal CDF, via erfc (Abramowitz & Stegun 7.1.26, |error| < 1.5e-7),
 * keeping relative accuracy in the lower tail. */
static inline float pc_normal_cdf(float x) {
    float z = fabsf(x) * 0.70710678118654752f;
    float t = 1.0f / (1.0f + 0.3275911f * z);
    float poly = t * (0.254829592f + t * (-0.284496736f + t * (1.421413741f +
                 t * (-1.453152027f + t * 1.061405429f))));
    float half_erfc = 0.5f * poly * pc_expf(-z * z);
    return x < 0.0f ? half_erfc : 1.0f - half_erfc;
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

/* gelu(x) = x·Φ(x), or with tanh_approx 0.5·x·(1 + tanh(√(2/π)(x + 0.044715x³))) */
static inline float pc_gelu(float x, bool tanh_approx) {
    if (tanh_approx)
        return 0.5f * x * (1.0f + pc_tanhf(PC_SQRT_2_OVER_PI * (x + PC_GELU_TANH_COEF * x * x * x)));
    return x * pc_normal_cdf(x);
}

/* one row in place or out of place: y = exp(x - max) / Σ exp(x - max) */
static inline void pc_softmax_row(float *y, const float *x, int C) {
    float mx = -INFINITY;
    #pragma omp simd reduction(max : mx)
    for (int c = 0; c < C; c++) mx = x[c] > mx ? x[c] : mx;
    float sum = 0.0f;
    #pragma omp simd reduction(+ : sum)
    for (int c = 0; c < C; c++) {
        y[c] = pc_expf(x[c] - mx);
        sum += y[c];
    }
    float inv = 1.0f / sum;
    #pragma omp simd
    for (int c = 0; c < C; c++) y[c] *= inv;
}

/* Σ a·b, vectorised (the order is fixed for a given n, so results are reproducible) */
static inline float pc_dot(const float *a, const float *b, int n) {
    float s = 0.0f;
    #pragma omp simd reduction(+ : s)
    for (int i = 0; i < n; i++) s += a[i] * b[i];
    return s;
}

#endif
