/* The products of a bottleneck adapter (rank r = C/16) and of a gated LoRA's gate (rank 8)
 * over a training batch's N = 4096 rows, through pc_sgemm (BLIS, or its micro-kernel behind
 * our packing) and through pc_sgemm_narrow (register tiles on unpacked operands), in one
 * process, alternating, 2 threads, by the wall clock: the median of 5 rounds of 20 calls.
 *
 *     make -C csrc -s build/libpeftcore.a
 *     cc -O2 -fopenmp -Icsrc bench/narrow.c csrc/build/libpeftcore.a -lblis -lm \
 *         -o /tmp/narrow_bench
 *     /tmp/narrow_bench [C]                    # default 384 (MiniLM); 768 for bert-base
 *     PEFTCORE_ISA=avx2 /tmp/narrow_bench      # another instruction set */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "engine.h"

enum { ROWS = 4096, CALLS = 20, ROUNDS = 5 };

static double seconds(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static float *filled(size_t n, uint32_t salt) {
    float *x = pc_alloc(sizeof(float) * n);
    for (size_t i = 0; i < n; i++)
        x[i] = (float)(((uint32_t)i * 2654435761u ^ salt) % 1000u) * 0.001f - 0.5f;
    return x;
}

typedef struct {
    const char *name;
    bool ta, tb;
    int M, N, K;
    const float *A, *B, *bias;
    int lda, ldb, ldc;
    float beta;
    float *C;
} product;

static double run(const product *p, bool narrow) {
    const double t0 = seconds();
    for (int i = 0; i < CALLS; i++) {
        if (narrow)
            pc_sgemm_narrow(p->ta, p->tb, p->M, p->N, p->K, 1.0f, p->A, p->lda, p->B, p->ldb,
                            p->beta, p->C, p->ldc, p->bias);
        else if (p->bias)
            pc_sgemm_biased(p->ta, p->tb, p->M, p->N, p->K, p->A, p->lda, p->B, p->ldb, p->bias,
                            p->C, p->ldc);
        else
            pc_sgemm(p->ta, p->tb, p->M, p->N, p->K, 1.0f, p->A, p->lda, p->B, p->ldb, p->beta,
                     p->C, p->ldc);
    }
    return (seconds() - t0) / CALLS;
}

static int by_value(const void *a, const void *b) {
    const double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv) {
    const int N = ROWS, C = argc > 1 ? atoi(argv[1]) : 384, r = C / 16, q = 8;
    if (C < 16) return 1;
    if (pc_runtime_init() < 0) return 1;
    pc_set_num_threads(2);
    float *x = filled((size_t)N * C, 1), *dy = filled((size_t)N * C, 2);
    float *wd = filled((size_t)r * C, 3), *wu = filled((size_t)C * r, 4);
    float *bq = filled((size_t)C * q, 5), *bias = filled((size_t)C, 6);
    float *a = filled((size_t)N * r, 7), *d = filled((size_t)N * r, 8);
    float *big = filled((size_t)N * C, 9), *small = filled((size_t)N * r, 10);
    float *gwd = filled((size_t)r * C, 11), *gwu = filled((size_t)C * r, 12);
    const product ps[] = {
        {"down  x.Wd^T + bd", false, true, N, r, C, x, wd, bias, C, C, r, 0.0f, small},
        {"up    a.Wu^T + bu", false, true, N, C, r, a, wu, bias, r, r, C, 0.0f, big},
        {"dA    du.Wu", false, false, N, r, C, dy, wu, NULL, C, r, r, 0.0f, small},
        {"dZ    dd.Wd", false, false, N, C, r, d, wd, NULL, r, C, C, 0.0f, big},
        {"dWd  += dd^T.x", true, false, r, C, N, d, x, NULL, r, C, C, 1.0f, gwd},
        {"dWu  += du^T.a", true, false, C, r, N, dy, a, NULL, C, r, r, 1.0f, gwu},
        {"gate  dy.B (rank 8)", false, false, N, q, C, dy, bq, NULL, C, q, q, 0.0f, small},
    };
    printf("narrow products, N=%d C=%d r=%d, 2 threads, %s (BLIS %s)\n", N, C, r,
           pc_isa_name(pc_isa_active()), pc_blis_arch());
    printf("%-22s %12s %12s %8s\n", "product", "pc_sgemm ms", "narrow ms", "ratio");
    double total[2] = {0, 0};
    for (size_t i = 0; i < sizeof ps / sizeof ps[0]; i++) {
        double t[2][ROUNDS];
        run(&ps[i], false);
        run(&ps[i], true);
        for (int k = 0; k < ROUNDS; k++) {
            t[0][k] = run(&ps[i], false);
            t[1][k] = run(&ps[i], true);
        }
        qsort(t[0], ROUNDS, sizeof(double), by_value);
        qsort(t[1], ROUNDS, sizeof(double), by_value);
        const double s = t[0][ROUNDS / 2], n = t[1][ROUNDS / 2];
        total[0] += s;
        total[1] += n;
        printf("%-22s %12.3f %12.3f %7.2fx\n", ps[i].name, 1e3 * s, 1e3 * n, s / n);
    }
    printf("%-22s %12.3f %12.3f %7.2fx\n", "all", 1e3 * total[0], 1e3 * total[1],
           total[0] / total[1]);
    return 0;
}
