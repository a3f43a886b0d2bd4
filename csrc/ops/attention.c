/* Multi-head scaled-dot-product attention. One (batch, head) pair is one unit of work:
 * the pairs run in parallel, each with single-threaded BLIS GEMMs on strided views.
 * Per pair: Q (Tq,D), K and V (Tk,D), scores and probabilities (Tq,Tk). */
#include <float.h>
#include <stdlib.h>

#include "kernels.h"

/* dropout on the probabilities of pair bh: element (i,j) has index bh·Tq·Tk + i·Tk + j */
static void dropout_probs(float *dst, const float *probs, int64_t count, float p, uint64_t seed,
                          int64_t bh) {
    float scale = 1.0f / (1.0f - p);
    uint64_t base = (uint64_t)bh * (uint64_t)count;
    for (int64_t e = 0; e < count; e++)
        dst[e] = pc_keep(seed, base + e, p) ? probs[e] * scale : 0.0f;
}

/* S (Tq,Tk) of pair bh = softmax(Q·Kᵀ/√D + mask bias), row by row */
static void pair_probs(float *S, const float *q, const float *k, const float *key_mask,
                       const pc_attention_dims *d, int64_t bh) {
    const int Tq = d->Tq, Tk = d->Tk, b = (int)(bh / d->H), h = (int)(bh % d->H);
    const float *Q = q + (int64_t)b * Tq * d->ld_q + (int64_t)h * d->D;
    const float *K = k + (int64_t)b * Tk * d->ld_kv + (int64_t)h * d->D;
    pc_sgemm_serial(false, true, Tq, Tk, d->D, 1.0f / sqrtf((float)d->D), Q, d->ld_q, K,
                    d->ld_kv, 0.0f, S, Tk);
    const float *m = key_mask ? key_mask + (int64_t)b * Tk : NULL;
    for (int i = 0; i < Tq; i++) {
        float *row = S + (int64_t)i * Tk;
        if (m)
            for (int j = 0; j < Tk; j++) row[j] += m[j] != 0.0f ? 0.0f : -FLT_MAX;
        pc_softmax_row(row, row, Tk);
    }
}

void pc_attention_probs(float *probs, const float *q, const float *k, const float *key_mask,
                        const pc_attention_dims *dims) {
    const int64_t pair = (int64_t)dims->Tq * dims->Tk, pairs = (int64_t)dims->B * dims->H;
    #pragma omp parallel for schedule(static) num_threads(pc_threads_for(pairs * pair))
    for (int64_t bh = 0; bh < pairs; bh++) pair_probs(probs + bh * pair, q, k, key_mask, dims, bh);
}

int pc_attention_forward(float *out, float *probs, const float *q, const float *k,
                         const float *v, const float *key_mask, const pc_attention_dims *dims,
                         float dropout_p, uint64_t seed) {
    const int B = dims->B, Tq = dims->Tq, Tk = dims->Tk, H = dims->H, D = dims->D;
    const int C = H * D, ld_kv = dims->ld_kv;
    const int64_t pair = (int64_t)Tq * Tk;
    const bool use_dropout = dropout_p > 0.0f;
    bool failed = false;
    #pragma omp parallel num_threads(pc_threads_for((int64_t)B * H * pair))
    {
        /* without probs (no backward follows) each thread keeps its pair's in scratch */
        float *scratch = probs ? NULL : malloc(sizeof(float) * (size_t)pair);
        float *dropped = use_dropout ? malloc(sizeof(float) * (size_t)pair) : NULL;
        const bool ready = (probs || scratch) && (!use_dropout || dropped);
        #pragma omp for schedule(static)
        for (int64_t bh = 0; bh < (int64_t)B * H; bh++) {
            if (!ready) continue;
            int b = (int)(bh / H), h = (int)(bh % H);
            const float *V = v + (int64_t)b * Tk * ld_kv + (int64_t)h * D;
            float *S = probs ? probs + bh * pair : scratch;
            pair_probs(S, q, k, key_mask, dims, bh);
            const float *P = S;
            if (use_dropout) {
                dropout_probs(dropped, S, pair, dropout_p, seed, bh);
                P = dropped;
            }
            /* out (Tq,D) = P (Tq,Tk) · V (Tk,D) */
            pc_sgemm_serial(false, false, Tq, D, Tk, 1.0f, P, Tk, V, ld_kv, 0.0f,
                            out + (int64_t)b * Tq * C + (int64_t)h * D, C);
        }
        if (!ready) failed = true;
        free(scratch);
        free(dropped);
    }
    return failed ? -1 : 0;
}

/* Backward of one pair, mirroring the forward:
 *   dP' (Tq,Tk) = dO · Vᵀ          dV += P'ᵀ · dO        (P' = dropout(P))
 *   dP = dropout_backward(dP')     dS = P ⊙ (dP - rowsum(dP ⊙ P))
 *   dQ += dS · K / √D              dK += dSᵀ · Q / √D */
void pc_attention_backward(float *dq, float *dk, float *dv, const float *dout,
                           const float *probs, const float *q, const float *k, const float *v,
                           const pc_attention_dims *dims, float dropout_p, uint64_t seed) {
    const int B = dims->B, Tq = dims->Tq, Tk = dims->Tk, H = dims->H, D = dims->D;
    const int C = H * D, ld_q = dims->ld_q, ld_kv = dims->ld_kv;
    const int64_t pair = (int64_t)Tq * Tk;
    const float scale = 1.0f / sqrtf((float)D);
    const bool use_dropout = dropout_p > 0.0f;
    #pragma omp parallel num_threads(pc_threads_for((int64_t)B * H * pair))
    {
        float *dS = malloc(sizeof(float) * (size_t)pair);
        float *dropped = use_dropout ? malloc(sizeof(float) * (size_t)pair) : NULL;
        #pragma omp for schedule(static)
        for (int64_t bh = 0; bh < (int64_t)B * H; bh++) {
            if (!dS || (use_dropout && !dropped)) continue;
            int b = (int)(bh / H), h = (int)(bh % H);
            int64_t q0 = (int64_t)b * Tq * ld_q + (int64_t)h * D;
            int64_t kv0 = (int64_t)b * Tk * ld_kv + (int64_t)h * D;
            const float *dO = dout + (int64_t)b * Tq * C + (int64_t)h * D;
            const float *P = probs + bh * pair;
            const float *Pd = P;
            if (use_dropout) {
                dropout_probs(dropped, P, pair, dropout_p, seed, bh);
                Pd = dropped;
            }
            pc_sgemm_serial(false, true, Tq, Tk, D, 1.0f, dO, C, v + kv0, ld_kv, 0.0f, dS, Tk);
            pc_sgemm_serial(true, false, Tk, D, Tq, 1.0f, Pd, Tk, dO, C, 1.0f, dv + kv0, ld_kv);
            if (use_dropout) {
                float inv_keep = 1.0f / (1.0f - dropout_p);
                uint64_t base = (uint64_t)bh * (uint64_t)pair;
                for (int64_t e = 0; e < pair; e++)
                    dS[e] = pc_keep(seed, base + e, dropout_p) ? dS[e] * inv_keep : 0.0f;
            }
            for (int i = 0; i < Tq; i++) {
                float *ds = dS + (int64_t)i * Tk;
                const float *p = P + (int64_t)i * Tk;
                float dot = pc_dot(ds, p, Tk);
                for (int j = 0; j < Tk; j++) ds[j] = p[j] * (ds[j] - dot);
            }
            pc_sgemm_serial(false, false, Tq, D, Tk, scale, dS, Tk, k + kv0, ld_kv, 1.0f,
                            dq + q0, ld_q);
            pc_sgemm_serial(true, false, Tk, D, Tq, scale, dS, Tk, q + q0, ld_q, 1.0f,
                            dk + kv0, ld_kv);
        }
        free(dS);
        free(dropped);
    }
}
