/* The CPU's single-precision FMA peak: GFLOP/s of independent FMAs on registers only (no
 * memory traffic), per thread and in all, for 256-bit (AVX2) and, where the CPU has it,
 * 512-bit (AVX-512) vectors: the ceilings each instruction set's GEMMs are measured against.
 *
 *     cc -O3 -fopenmp bench/fma_peak.c -o /tmp/fma_peak
 *     OMP_NUM_THREADS=2 /tmp/fma_peak
 *
 * Each thread runs CHAINS independent accumulators acc[i] = acc[i]·b + c, enough to cover
 * the FMA latency on every pipe; one FMA on W floats counts 2·W FLOPs. Each width's loop is
 * compiled for its own instruction set and runs only where the CPU has it. */
#include <immintrin.h>
#include <omp.h>
#include <stdio.h>
#include <time.h>

enum { CHAINS = 12, ROUNDS = 3 };
static const long ITERATIONS = 25000000;

static double seconds_now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

/* one thread's chains, W floats per FMA; returns a checksum that keeps the work live */
#define FMA_CHAINS(name, isa, vec, set1, fmadd, add, store, W)                           \
    __attribute__((target(isa))) static float name(void) {                                   \
        const vec b = set1(1.0000001f), c = set1(1e-9f);                                   \
        vec acc[CHAINS];                                                                   \
        for (int i = 0; i < CHAINS; i++) acc[i] = set1((float)i);                          \
        for (long it = 0; it < ITERATIONS; it++)                                           \
            for (int i = 0; i < CHAINS; i++) acc[i] = fmadd(acc[i], b, c);                 \
        vec total = acc[0];                                                                \
        for (int i = 1; i < CHAINS; i++) total = add(total, acc[i]);                       \
        float lanes[W], sum = 0.0f;                                                        \
        store(lanes, total);                                                               \
        for (int i = 0; i < W; i++) sum += lanes[i];                                       \
        return sum;                                                                        \
    }
FMA_CHAINS(chains256, "avx2,fma", __m256, _mm256_set1_ps, _mm256_fmadd_ps, _mm256_add_ps,
           _mm256_storeu_ps, 8)
FMA_CHAINS(chains512, "avx512f", __m512, _mm512_set1_ps, _mm512_fmadd_ps, _mm512_add_ps,
           _mm512_storeu_ps, 16)

static void measure(const char *label, float (*chains)(void), int width) {
    const int threads = omp_get_max_threads();
    double best = 0.0;
    float sink = 0.0f;
    for (int round = 0; round < ROUNDS; round++) {
        const double start = seconds_now();
#pragma omp parallel reduction(+ : sink)
        sink += chains();
        const double elapsed = seconds_now() - start;
        const double gflops = (double)ITERATIONS * CHAINS * 2 * width * threads / elapsed / 1e9;
        if (gflops > best) best = gflops;
    }
    printf("FMA peak, %s, %d thread(s): %.1f GFLOP/s in all, %.1f per thread (checksum %g)\n",
           label, threads, best, best / threads, (double)sink);
}

int main(void) {
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
        measure("AVX2 (256-bit)", chains256, 8);
    else
        printf("FMA peak, AVX2 (256-bit): this CPU has no AVX2 + FMA\n");
    if (__builtin_cpu_supports("avx512f"))
        measure("AVX-512 (512-bit)", chains512, 16);
    else
        printf("FMA peak, AVX-512 (512-bit): this CPU has no AVX-512\n");
    return 0;
}
