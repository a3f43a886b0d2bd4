/* UniPELT's gates (Mao et al. 2022, as AdapterHub `adapters` computes them), shared by the
 * methods that take one: G gate outputs per sequence, each the mean over the sequence's T
 * rows of sigmoid(x·wgᵀ + bg), wg (G,in), bg (G). Compiled per instruction set like every
 * kernel: the dots run on the set's native vectors. */
#include <math.h>
#include <stdlib.h>

#include "kernels.h"

float pc_gate_dot(const float *x, const float *w, int n) {
    enum { SUMS = 4 }; /* vectors of running sums: four additions in flight */
    pc_vec acc[SUMS];
    for (int p = 0; p < SUMS; p++) acc[p] = (pc_vec){0};
    int i = 0;
    for (; i + SUMS * PC_VW <= n; i += SUMS * PC_VW)
        for (int p = 0; p < SUMS; p++)
            acc[p] += pc_loadv(x + i + p * PC_VW) * pc_loadv(w + i + p * PC_VW);
    for (; i + PC_VW <= n; i += PC_VW) acc[0] += pc_loadv(x + i) * pc_loadv(w + i);
    if (i < n) acc[1] += pc_load_head(x + i, n - i) * pc_load_head(w + i, n - i);
    return pc_hsum((acc[0] + acc[1]) + (acc[2] + acc[3]));
}

void pc_gate_forward(float *sig, float *g, const float *x, int ldx, const float *wg,
                     const float *bg, int N, int T, int in, int G) {
    /* sig (N,G): each row's sigmoids */
    PC_PARALLEL_FOR((int64_t)N * in * G)
    for (int n = 0; n < N; n++)
        for (int j = 0; j < G; j++) {
            const float v = bg[j] + pc_gate_dot(x + (int64_t)n * ldx, wg + (int64_t)j * in, in);
            sig[(int64_t)n * G + j] = 1.0f / (1.0f + expf(-v));
        }
    /* g (B,G): their mean over each sequence */
    for (int b = 0; b < N / T; b++)
        for (int j = 0; j < G; j++) {
            float sum = 0.0f;
            for (int t = 0; t < T; t++) sum += sig[((int64_t)b * T + t) * G + j];
            g[(int64_t)b * G + j] = sum / (float)T;
        }
}

enum { GATE_COLUMNS = 64 }; /* columns of dwg per task of the backward */

int pc_gate_backward(float *dwg, float *dbg, float *dx, int lddx, const float *dg,
                     const float *sig, const float *x, int ldx, const float *wg, int N, int T,
                     int in, int G) {
    /* in the forward g_bj = mean_t s_tj, s = sigmoid(logit): so d logit_tj = dg_bj / T ·
     * s_tj (1 − s_tj), and logit_tj = x_t·wg_j + bg_j hands it to wg_j, bg_j and x_t */
    float *dl = malloc(sizeof(float) * (size_t)N * G);
    if (!dl) return -1;
    for (int n = 0; n < N; n++)
        for (int j = 0; j < G; j++) {
            const float s = sig[(int64_t)n * G + j];
            dl[(int64_t)n * G + j] = dg[(int64_t)(n / T) * G + j] / (float)T * s * (1.0f - s);
        }
    if (dwg) {
        /* Σ over rows in order, each task a block of columns: the same sums on any number
         * of threads */
        const int blocks = (in + GATE_COLUMNS - 1) / GATE_COLUMNS;
        PC_PARALLEL_FOR((int64_t)N * in * G)
        for (int task = 0; task < blocks * G; task++) {
            const int j = task / blocks, i0 = task % blocks * GATE_COLUMNS;
            const int i1 = i0 + GATE_COLUMNS < in ? i0 + GATE_COLUMNS : in;
            float acc[GATE_COLUMNS] = {0};
            for (int n = 0; n < N; n++) {
                const float d = dl[(int64_t)n * G + j];
                const float *xr = x + (int64_t)n * ldx;
                for (int i = i0; i < i1; i++) acc[i - i0] += d * xr[i];
            }
            for (int i = i0; i < i1; i++) dwg[(int64_t)j * in + i] += acc[i - i0];
        }
    }
    if (dbg)
        for (int j = 0; j < G; j++) {
            double sum = 0.0;
            for (int n = 0; n < N; n++) sum += dl[(int64_t)n * G + j];
            dbg[j] += (float)sum;
        }
    if (dx) {
        PC_PARALLEL_FOR((int64_t)N * in * G)
        for (int n = 0; n < N; n++)
            for (int j = 0; j < G; j++) {
                const float d = dl[(int64_t)n * G + j];
                const float *w = wg + (int64_t)j * in;
                float *dxr = dx + (int64_t)n * lddx;
                for (int i = 0; i < in; i++) dxr[i] += d * w[i];
            }
    }
    free(dl);
    return 0;
}
