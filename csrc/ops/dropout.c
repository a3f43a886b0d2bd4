/* Dropout with a counter-based RNG: the mask is a pure function of (seed, index). */
#include "kernels.h"

/* splitmix64's finaliser over seed ⊕ (golden-ratio·index): a well-mixed 64-bit value */
static inline uint64_t mix64(uint64_t seed, uint64_t i) {
    uint64_t z = seed + (i + 1) * 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* uniform in [0,1) from the top 24 bits; keep iff u >= p */
bool pc_dropout_keep(uint64_t seed, uint64_t i, float p) {
    float u = (float)(mix64(seed, i) >> 40) * (1.0f / 16777216.0f);
    return u >= p;
}

void pc_dropout_forward(float *out, const float *inp, int64_t n, float p, uint64_t seed) {
    float scale = p < 1.0f ? 1.0f / (1.0f - p) : 0.0f;
    PC_PARALLEL_FOR(n)
    for (int64_t i = 0; i < n; i++)
        out[i] = pc_dropout_keep(seed, (uint64_t)i, p) ? inp[i] * scale : 0.0f;
}

/* the forward was out = inp·mask/(1-p), so dinp += dout·mask/(1-p) */
void pc_dropout_backward(float *dinp, const float *dout, int64_t n, float p, uint64_t seed) {
    float scale = p < 1.0f ? 1.0f / (1.0f - p) : 0.0f;
    PC_PARALLEL_FOR(n)
    for (int64_t i = 0; i < n; i++)
        if (pc_dropout_keep(seed, (uint64_t)i, p)) dinp[i] += dout[i] * scale;
}
