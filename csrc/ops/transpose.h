/* Transposes in registers, per instruction set (included by kernel sources compiled once
 * per set): 16×16 on AVX-512, 8×8 on AVX2, 4×4 on SSE2; and pc_transpose_strided, a strided
 * block transpose on them (plain C where the set has none). All are inlined: a function of a
 * kernel source is named per set only when it is external (isa_names.h). */
#ifndef PEFTCORE_TRANSPOSE_H
#define PEFTCORE_TRANSPOSE_H

#include <stdint.h>

#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#elif defined(__SSE2__)
#include <emmintrin.h>
#endif

#if defined(__AVX512F__)

/* lanes [0, n) set */
static inline __attribute__((always_inline)) __mmask16 pc_first_lanes(int n) {
    return n >= 16 ? (__mmask16)0xFFFF : n <= 0 ? (__mmask16)0 : (__mmask16)((1u << n) - 1);
}

/* r[i] lane j -> r[j] lane i: a 16×16 transpose in registers */
static inline __attribute__((always_inline)) void pc_transpose16(__m512 r[16]) {
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

#elif defined(__AVX2__)

/* lanes [0, n) set, for maskload */
static inline __attribute__((always_inline)) __m256i pc_first_lanes(int n) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

/* dst[0..n) = v's first n lanes, 1 <= n <= 8, in at most three plain stores (masked
 * stores are slow on AMD) */
static inline __attribute__((always_inline)) void pc_store_lanes(float *dst, __m256 v, int n) {
    if (n >= 8) {
        _mm256_storeu_ps(dst, v);
        return;
    }
    __m128 x = _mm256_castps256_ps128(v);
    if (n >= 4) {
        _mm_storeu_ps(dst, x);
        x = _mm256_extractf128_ps(v, 1);
        dst += 4;
        n -= 4;
    }
    if (n >= 2) {
        _mm_storel_pi((__m64 *)dst, x);
        x = _mm_movehl_ps(x, x);
        dst += 2;
        n -= 2;
    }
    if (n) _mm_store_ss(dst, x);
}

/* r[i] lane j -> r[j] lane i: an 8×8 transpose in registers */
static inline __attribute__((always_inline)) void pc_transpose8(__m256 r[8]) {
    __m256 t[8], u[8];
    for (int p = 0; p < 4; p++) { /* t0 = a0 b0 a1 b1 | a4 b4 a5 b5, t1 = a2 b2 a3 b3 | ... */
        t[2 * p] = _mm256_unpacklo_ps(r[2 * p], r[2 * p + 1]);
        t[2 * p + 1] = _mm256_unpackhi_ps(r[2 * p], r[2 * p + 1]);
    }
    for (int q = 0; q < 2; q++) { /* u0 = a0 b0 c0 d0 | a4 b4 c4 d4, u1 = a1 ... */
        u[4 * q] = _mm256_shuffle_ps(t[4 * q], t[4 * q + 2], 0x44);
        u[4 * q + 1] = _mm256_shuffle_ps(t[4 * q], t[4 * q + 2], 0xEE);
        u[4 * q + 2] = _mm256_shuffle_ps(t[4 * q + 1], t[4 * q + 3], 0x44);
        u[4 * q + 3] = _mm256_shuffle_ps(t[4 * q + 1], t[4 * q + 3], 0xEE);
    }
    for (int c = 0; c < 4; c++) { /* rows a-d from u[c], e-h from u[4 + c] */
        r[c] = _mm256_permute2f128_ps(u[c], u[4 + c], 0x20);
        r[4 + c] = _mm256_permute2f128_ps(u[c], u[4 + c], 0x31);
    }
}

#elif defined(__SSE2__)

/* r[i] lane j -> r[j] lane i: a 4×4 transpose in registers */
static inline __attribute__((always_inline)) void pc_transpose4(__m128 r[4]) {
    const __m128 t0 = _mm_unpacklo_ps(r[0], r[1]), t1 = _mm_unpacklo_ps(r[2], r[3]); /* a0 b0 a1 b1 */
    const __m128 t2 = _mm_unpackhi_ps(r[0], r[1]), t3 = _mm_unpackhi_ps(r[2], r[3]); /* a2 b2 a3 b3 */
    r[0] = _mm_movelh_ps(t0, t1);
    r[1] = _mm_movehl_ps(t1, t0);
    r[2] = _mm_movelh_ps(t2, t3);
    r[3] = _mm_movehl_ps(t3, t2);
}

#endif

/* dst[c·ldd + r] = src[r·lds + c] for r < rows, c < cols: blocks of the set's width, read
 * along src's rows and written along dst's (a column of src at a time would hit few cache
 * sets when lds is a multiple of a large power of two) */
static inline __attribute__((always_inline)) void pc_transpose_strided(
    float *dst, int64_t ldd, const float *src, int64_t lds, int rows, int cols) {
#if defined(__AVX512F__)
    for (int r0 = 0; r0 < rows; r0 += 16) {
        const int live = rows - r0 < 16 ? rows - r0 : 16;
        const __mmask16 store = pc_first_lanes(live);
        for (int c0 = 0; c0 < cols; c0 += 16) {
            const int n = cols - c0 < 16 ? cols - c0 : 16;
            const __mmask16 load = pc_first_lanes(n);
            __m512 v[16];
            for (int i = 0; i < 16; i++)
                v[i] = i < live ? _mm512_maskz_loadu_ps(load, src + (int64_t)(r0 + i) * lds + c0)
                                : _mm512_setzero_ps();
            pc_transpose16(v);
            for (int k = 0; k < n; k++)
                _mm512_mask_storeu_ps(dst + (int64_t)(c0 + k) * ldd + r0, store, v[k]);
        }
    }
#elif defined(__AVX2__)
    const int r8 = rows / 8 * 8;
    for (int r0 = 0; r0 < r8; r0 += 8) {
        for (int c0 = 0; c0 < cols; c0 += 8) {
            const int n = cols - c0 < 8 ? cols - c0 : 8;
            __m256 v[8];
            for (int i = 0; i < 8; i++) {
                const float *s = src + (int64_t)(r0 + i) * lds + c0;
                v[i] = n == 8 ? _mm256_loadu_ps(s) : _mm256_maskload_ps(s, pc_first_lanes(n));
            }
            pc_transpose8(v);
            for (int k = 0; k < n; k++) _mm256_storeu_ps(dst + (int64_t)(c0 + k) * ldd + r0, v[k]);
        }
    }
    for (int r = r8; r < rows; r++)
        for (int c = 0; c < cols; c++) dst[(int64_t)c * ldd + r] = src[(int64_t)r * lds + c];
#else
    for (int r = 0; r < rows; r++)
        for (int c = 0; c < cols; c++) dst[(int64_t)c * ldd + r] = src[(int64_t)r * lds + c];
#endif
}

#endif
