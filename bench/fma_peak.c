/* The CPU's single-precision FMA peak: GFLOP/s of independent 512-bit FMAs on registers
 * only (no memory traffic), per thread and in all, the ceiling every GEMM here is measured
 * against.
 *
 *     cc -O3 -mavx512f -fopenmp bench/fma_peak.c -o /tmp/fma_peak
 *     OMP_NUM_THREADS=2 /tmp/fma_peak
 *
 * Each thread runs CHAINS independent accumulators acc[i] = acc[i]·b + c, enough to cover
 * the FMA latency on every pipe; one FMA on 16 floats counts 32 FLOPs. */
#include <immintrin.h>
#include <omp.h>
#include <stdio.h>
#include <time.h>

enum { CHAINS = 12, ROUNDS = 3 };

static double seconds_now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

int main(void) {
    const long iterations = 25000000;
    const int threads = omp_get_max_threads();
    double best = 0.0;
    float sink = 0.0f; /* keeps the result live */
    for (int round = 0; round < ROUNDS; round++) {
        const double start = seconds_now();
#pragma omp parallel reduction(+ : sink)
        {
            const __m512 b = _mm512_set1_ps(1.0000001f), c = _mm512_set1_ps(1e-9f);
            __m512 acc[CHAINS];
            for (int i = 0; i < CHAINS; i++) acc[i] = _mm512_set1_ps((float)i);
            for (long it = 0; it < iterations; it++)
                for (int i = 0; i < CHAINS; i++) acc[i] = _mm512_fmadd_ps(acc[i], b, c);
            __m512 total = acc[0];
            for (int i = 1; i < CHAINS; i++) total = _mm512_add_ps(total, acc[i]);
            sink += _mm512_reduce_add_ps(total);
        }
        const double elapsed = seconds_now() - start;
        const double gflops = (double)iterations * CHAINS * 32 * threads / elapsed / 1e9;
        if (gflops > best) best = gflops;
    }
    printf("FMA peak, %d thread(s): %.1f GFLOP/s in all, %.1f per thread (checksum %g)\n",
           threads, best, best / threads, (double)sink);
    return 0;
}
