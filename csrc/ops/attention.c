/* Multi-head scaled-dot-product attention. One (batch, head) pair is one unit of work:
 * the pairs run in parallel, each with single-threaded BLIS GEMMs on strided views. */
#include <float.h>
#include <stdlib.h>

#include "kernels.h"

/* dropout on the attention probabilities of pair bh: index = bh·T·T + i·T + j */
static void dropout_probs(float *dst, const float *probs, int T, float p, uint64_t seed,
                          int64_t bh) {
    float scale = 1.0f / (1.0f - p);
    uint64_t base = (uint64_t)bh * T * T;
    for (int64_t e = 0; e < (int64_t)T * T; e++)
        dst[e] = pc_keep(seed, base + e, p) ? probs[e] * scale : 0.0f;
}

void pc_attention_forward(float *out, float *probs, const float *q, const float *k,
                          const float *v, int ld_qkv, const float *key_mask, int B, int T,
                          int H, int D, float dropout_p, uint64_t seed) {
    const int C = H * D;
    const float scale = 1.0f / sqrtf((float)D);
    const bool use_dropout = dropout_p > 0.0f;
    #pragma omp parallel num_threads(pc_threads_for((int64_t)B * H * T * T))
    {
        float *dropped = use_dropout ? malloc(sizeof(float) * T * T) : NULL;
        #pragma omp for schedule(static)
        for (int64_t bh = 0; bh < (int64_t)B * H; bh++) {
            int b = (int)(bh / H), h = (int)(bh % H);
            int64_t row0 = (int64_t)b * T * ld_qkv + (int64_t)h * D;
            float *S = probs + bh * T * T;
            /* S (T,T) = Q (T,D) · K (T,D)ᵀ / √D */
            pc_sgemm_serial(false, true, T, T, D, scale, q + row0, ld_qkv, k + row0, ld_qkv,
                            0.0f, S, T);
            for (int i = 0; i < T; i++) {
                float *s = S + (int64_t)i * T;
                if (key_mask) {
                    const float *m = key_mask + (int64_t)b * T;
                    for (int j = 0; j < T; j++) s[j] += m[j] != 0.0f ? 0.0f : -FLT_MAX;
                }
                pc_softmax_row(s, s, T);
            }
            const float *P = S;
            if (use_dropout && dropped) {
                dropout_probs(dropped, S, T, dropout_p, seed, bh);
                P = dropped;
            }
            /* out (T,D) = P (T,T) · V (T,D) */
            pc_sgemm_serial(false, false, T, D, T, 1.0f, P, T, v + row0, ld_qkv, 0.0f,
                            out + (int64_t)b * T * C + (int64_t)h * D, C);
        }
        free(dropped);
    }
}

/* Backward of one pair, mirroring the forward:
 *   dP' (T,T) = dO · Vᵀ            dV += P'ᵀ · dO        (P' = dropout(P))
 *   dP = dropout_backward(dP')     dS = P ⊙ (dP - rowsum(dP ⊙ P))
 *   dQ += dS · K / √D              dK += dSᵀ · Q / √D */
void pc_attention_backward(float *dq, float *dk, float *dv, int ld_dqkv, const float *dout,
                           const float *probs, const float *q, const float *k, const float *v,
                           int ld_qkv, int B, int T, int H, int D, float dropout_p,
                           uint64_t seed) {
    const int C = H * D;
    const float scale = 1.0f / sqrtf((float)D);
    const bool use_dropout = dropout_p > 0.0f;
    #pragma omp parallel num_threads(pc_threads_for((int64_t)B * H * T * T))
    {
        float *dS = malloc(sizeof(float) * T * T);
        float *dropped = use_dropout ? malloc(sizeof(float) * T * T) : NULL;
        #pragma omp for schedule(static)
        for (int64_t bh = 0; bh < (int64_t)B * H; bh++) {
            if (!dS || (use_dropout && !dropped)) continue;
            int b = (int)(bh / H), h = (int)(bh % H);
            int64_t row0 = (int64_t)b * T * ld_qkv + (int64_t)h * D;
            int64_t drow0 = (int64_t)b * T * ld_dqkv + (int64_t)h * D;
            const float *dO = dout + (int64_t)b * T * C + (int64_t)h * D;
            const float *P = probs + bh * T * T;
            const float *Pd = P;
            if (use_dropout) {
                dropout_probs(dropped, P, T, dropout_p, seed, bh);
                Pd = dropped;
            }
            pc_sgemm_serial(false, true, T, T, D, 1.0f, dO, C, v + row0, ld_qkv, 0.0f, dS, T);
            pc_sgemm_serial(true, false, T, D, T, 1.0f, Pd, T, dO, C, 1.0f, dv + drow0,
                            ld_dqkv);
            if (use_dropout) {
                float inv_keep = 1.0f / (1.0f - dropout_p);
                uint64_t base = (uint64_t)bh * T * T;
                for (int64_t e = 0; e < (int64_t)T * T; e++)
                    dS[e] = pc_keep(seed, base + e, dropout_p) ? dS[e] * inv_keep : 0.0f;
            }
            for (int i = 0; i < T; i++) {
                float *ds = dS + (int64_t)i * T;
                const float *p = P + (int64_t)i * T;
                float dot = pc_dot(ds, p, T);
                for (int j = 0; j < T; j++) ds[j] = p[j] * (ds[j] - dot);
            }
            pc_sgemm_serial(false, false, T, D, T, scale, dS, T, k + row0, ld_qkv, 1.0f,
                            dq + drow0, ld_dqkv);
            pc_sgemm_serial(true, false, T, D, T, scale, dS, T, q + row0, ld_qkv, 1.0f,
                            dk + drow0, ld_dqkv);
        }
        free(dS);
        free(dropped);
    }
}
