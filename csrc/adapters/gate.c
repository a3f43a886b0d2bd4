/* UniPELT's gates (Mao et al. 2022, as AdapterHub `adapters` computes them), shared by the
 * methods that take one: G gate outputs per sequence, each the mean over the sequence's T
 * rows of sigmoid(x·wgᵀ + bg), wg (G,in), bg (G). */
#include <math.h>

#include "../ops/kernels.h"
#include "adapter.h"

void pc_gate_forward(float *sig, float *g, const float *x, int ldx, const float *wg,
                     const float *bg, int N, int T, int in, int G) {
    /* sig (N,G): each row's sigmoids */
    PC_PARALLEL_FOR((int64_t)N * in * G)
    for (int n = 0; n < N; n++)
        for (int j = 0; j < G; j++) {
            float v = bg[j];
            const float *w = wg + (int64_t)j * in, *xr = x + (int64_t)n * ldx;
            for (int i = 0; i < in; i++) v += xr[i] * w[i];
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

void pc_gate_backward(float *dwg, float *dbg, float *dx, int lddx, const float *dg,
                      const float *sig, const float *x, int ldx, const float *wg, int N, int T,
                      int in, int G) {
    /* in the forward g_bj = mean_t s_tj, s = sigmoid(logit): so d logit_tj = dg_bj / T ·
     * s_tj (1 − s_tj), and logit_tj = x_t·wg_j + bg_j hands it to wg_j, bg_j and x_t */
    for (int n = 0; n < N; n++) {
        const int b = n / T;
        const float *xr = x + (int64_t)n * ldx;
        for (int j = 0; j < G; j++) {
            const float s = sig[(int64_t)n * G + j];
            const float dl = dg[(int64_t)b * G + j] / (float)T * s * (1.0f - s);
            if (dwg)
                for (int i = 0; i < in; i++) dwg[(int64_t)j * in + i] += dl * xr[i];
            if (dbg) dbg[j] += dl;
            if (dx)
                for (int i = 0; i < in; i++) dx[(int64_t)n * lddx + i] += dl * wg[(int64_t)j * in + i];
        }
    }
}
