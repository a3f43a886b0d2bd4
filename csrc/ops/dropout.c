/* Dropout with a counter-based RNG: the mask is a pure function of (seed, index). */
#include "kernels.h"

bool pc_dropout_keep(uint64_t seed, uint64_t i, float p) { return pc_keep(seed, i, p); }

void pc_dropout_forward(float *out, const float *inp, int64_t n, float p, uint64_t seed) {
    float scale = p < 1.0f ? 1.0f / (1.0f - p) : 0.0f;
    PC_PARALLEL_FOR(n)
    for (int64_t i = 0; i < n; i++)
        out[i] = pc_keep(seed, (uint64_t)i, p) ? inp[i] * scale : 0.0f;
}

/* the forward was out = inp·mask/(1-p), so dinp += dout·mask/(1-p) */
void pc_dropout_backward(float *dinp, const float *dout, int64_t n, float p, uint64_t seed) {
    float scale = p < 1.0f ? 1.0f / (1.0f - p) : 0.0f;
    PC_PARALLEL_FOR(n)
    for (int64_t i = 0; i < n; i++)
        if (pc_keep(seed, (uint64_t)i, p)) dinp[i] += dout[i] * scale;
}
