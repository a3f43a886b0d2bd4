/* The engine's attention kernels alone at an encoder's shape: forward and backward GFLOP/s
 * for B sequences, by the calling thread's CPU time (so other processes on the machine
 * slow the figures less than they would the wall clock). Small B keeps the probabilities
 * (B·H·T·T floats) in cache; a training batch streams them through memory, which is what
 * the two columns of B below compare.
 *
 *     make -C csrc -s build/libpeftcore.a
 *     cc -O2 -fopenmp -Icsrc bench/attention.c csrc/build/libpeftcore.a -lblis -lm \
 *         -o /tmp/attention_bench
 *     /tmp/attention_bench [H D T]            # default 12 32 128 (MiniLM-L6)
 *     PEFTCORE_ISA=avx2 /tmp/attention_bench  # another instruction set
 *
 * Queries, keys and values are read from a fused (B,T,3·H·D) buffer as the encoder holds
 * them; one thread; dropout 0 and 0.1; the best of 5 calls after one warm-up. */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "engine.h"

static double cpu_seconds(void) {
    struct timespec t;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static void fill(float *x, int64_t n, uint32_t salt) {
    for (int64_t i = 0; i < n; i++)
        x[i] = (float)(((uint32_t)i * 2654435761u ^ salt) % 1000u) * 0.001f - 0.5f;
}

/* best forward and backward seconds of 5 calls */
static int measure(int B, int H, int D, int T, float p, double *fwd, double *bwd) {
    const int C = H * D;
    /* the engine's allocator, as the encoder's buffers (huge pages where Linux grants them) */
    float *qkv = pc_alloc(sizeof(float) * (size_t)B * T * 3 * C);
    float *dqkv = pc_alloc(sizeof(float) * (size_t)B * T * 3 * C);
    float *probs = pc_alloc(sizeof(float) * (size_t)B * H * T * T);
    float *dout = pc_alloc(sizeof(float) * (size_t)B * T * C);
    float *out = pc_alloc(sizeof(float) * (size_t)B * T * C);
    if (!qkv || !dqkv || !probs || !dout || !out) return -1;
    fill(qkv, (int64_t)B * T * 3 * C, 1);
    fill(dout, (int64_t)B * T * C, 2);
    const pc_attention_dims d = {B, T, T, H, D, 3 * C, 3 * C, NULL};
    *fwd = *bwd = 1e30;
    for (int round = 0; round < 6; round++) {
        const double t0 = cpu_seconds();
        if (pc_attention_forward(out, probs, qkv, qkv + C, qkv + 2 * C, NULL, &d, p, 7) < 0)
            return -1;
        const double t1 = cpu_seconds();
        if (pc_attention_backward_into(dqkv, dqkv + C, dqkv + 2 * C, dout, probs, qkv, qkv + C,
                                       qkv + 2 * C, &d, p, 7) < 0)
            return -1;
        const double t2 = cpu_seconds();
        if (round > 0) {
            *fwd = t1 - t0 < *fwd ? t1 - t0 : *fwd;
            *bwd = t2 - t1 < *bwd ? t2 - t1 : *bwd;
        }
    }
    pc_free(qkv);
    pc_free(dqkv);
    pc_free(probs);
    pc_free(dout);
    pc_free(out);
    return 0;
}

int main(int argc, char **argv) {
    const int H = argc > 1 ? atoi(argv[1]) : 12, D = argc > 2 ? atoi(argv[2]) : 32;
    const int T = argc > 3 ? atoi(argv[3]) : 128;
    if (H < 1 || D < 1 || T < 1) {
        fprintf(stderr, "usage: %s [H D T], each >= 1\n", argv[0]);
        return 2;
    }
    if (pc_runtime_init() < 0) return 1;
    pc_set_num_threads(1);
    printf("attention, H=%d D=%d T=%d, one thread, %s\n", H, D, T, pc_isa_name(pc_isa_active()));
    printf("%4s %8s %12s %12s %14s %14s\n", "B", "dropout", "forward ms", "GFLOP/s",
           "backward ms", "GFLOP/s");
    static const int batches[] = {1, 32};
    static const float drops[] = {0.0f, 0.1f};
    for (int i = 0; i < 2; i++)
        for (int j = 0; j < 2; j++) {
            const int B = batches[i];
            double fwd, bwd;
            if (measure(B, H, D, T, drops[j], &fwd, &bwd) < 0) {
                fprintf(stderr, "out of memory\n");
                return 1;
            }
            /* forward Q·Kᵀ and P·V; backward dO·Vᵀ, Pᵀ·dO, dS·K, dSᵀ·Q */
            const double pair_flops = 2.0 * T * T * D * B * H;
            printf("%4d %8.1f %12.2f %12.1f %14.2f %14.1f\n", B, drops[j], fwd * 1e3,
                   2 * pair_flops / fwd / 1e9, bwd * 1e3, 4 * pair_flops / bwd / 1e9);
        }
    return 0;
}
