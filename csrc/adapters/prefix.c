/* Prefix tuning (Li and Liang 2021) and P-tuning v2 (Liu et al. 2022) at a layer's KV site:
 * P trainable key rows and P value rows (P,C) that every sequence's queries attend to before
 * its own keys. The gradients the encoder hands back are already summed over the batch.
 *
 * Gated (UniPELT, Mao et al. 2022, as AdapterHub's PrefixTuningConfig(use_gating=True)):
 * gate_weight (G,C), gate_bias (G), G = 1 (shared_gating) or 2; sequence b's gates are the
 * means over its rows of sigmoid(x·wgᵀ + bg), x the layer's input (the attention's hidden
 * states); its prefix keys are scaled by gate 0 and its values by gate G-1. It saves each
 * row's sigmoids (N,G) and then the gates (B,G) in room for (N,G). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "adapter.h"

enum { T_KEY, T_VALUE, T_GATE_W, T_GATE_B, NUM_TENSORS };
static const char *const tensor_names[NUM_TENSORS] = {"key", "value", "gate_weight",
                                                      "gate_bias"};

static int prefix_check(pc_tensor *const *t, const float *opt, int C, char *err, size_t errlen) {
    const pc_tensor *k = t[T_KEY], *v = t[T_VALUE];
    if (k->ndim != 2 || v->ndim != 2 || k->shape[1] != C || v->shape[1] != C ||
        k->shape[0] != v->shape[0] || k->shape[0] < 1) {
        snprintf(err, errlen, "prefix: key and value must both be (P, %d) with P >= 1", C);
        return -1;
    }
    const pc_tensor *gw = t[T_GATE_W], *gb = t[T_GATE_B];
    if ((gw != NULL) != (gb != NULL) ||
        (gw && (gw->ndim != 2 || gw->shape[1] != C || gw->shape[0] < 1 || gw->shape[0] > 2 ||
                gb->ndim != 1 || gb->shape[0] != gw->shape[0]))) {
        snprintf(err, errlen, "prefix gate: gate_weight (G, %d) and gate_bias (G,) with G 1 "
                 "(shared) or 2 go together", C);
        return -1;
    }
    return 0;
}

static bool prefix_gated(const pc_adapter *a) { return a->t[T_GATE_W] != NULL; }
static int gates_of(const pc_adapter *a) {
    return prefix_gated(a) ? (int)a->t[T_GATE_W]->shape[0] : 0;
}

static int prefix_rows(const pc_adapter *a) { return (int)a->t[T_KEY]->shape[0]; }

static void prefix_forward(const pc_adapter *a, float *k, float *v, int ld) {
    const int P = prefix_rows(a), C = (int)a->t[T_KEY]->shape[1];
    for (int p = 0; p < P; p++) {
        memcpy(k + (int64_t)p * ld, pc_f32(a->t[T_KEY]) + (int64_t)p * C, sizeof(float) * C);
        memcpy(v + (int64_t)p * ld, pc_f32(a->t[T_VALUE]) + (int64_t)p * C, sizeof(float) * C);
    }
}

static int prefix_backward(const pc_adapter *a, const float *dk, const float *dv, int ld) {
    const int P = prefix_rows(a), C = (int)a->t[T_KEY]->shape[1];
    const float *d[2] = {dk, dv};
    for (int i = 0; i < 2; i++) {
        if (!a->t[i]->requires_grad) continue;
        pc_tensor *g = pc_tensor_grad(a->t[i]);
        if (!g) return -1;
        for (int p = 0; p < P; p++)
            for (int c = 0; c < C; c++) pc_f32(g)[(int64_t)p * C + c] += d[i][(int64_t)p * ld + c];
    }
    return 0;
}

static int64_t prefix_saved_per_row(const pc_adapter *a, int in, int out, bool keeping) {
    return 2 * gates_of(a);
}

/* sequence b's rows kv + b·seq: keys (P,C) times g_b0, values (at + C) times g_b,G-1 */
static void prefix_gate_forward(const pc_adapter *a, const pc_site_call *c, float *kv, int ld,
                                int64_t seq, const float *x, int ldx, float *saved) {
    const int G = gates_of(a), N = c->N, T = c->T, C = c->in, P = prefix_rows(a);
    float *sig = saved, *g = saved + (int64_t)N * G;
    pc_gate_forward(sig, g, x, ldx, pc_f32(a->t[T_GATE_W]), pc_f32(a->t[T_GATE_B]), N, T, C, G);
    for (int b = 0; b < N / T; b++) {
        const float gk = g[b * G], gv = g[b * G + G - 1];
        for (int p = 0; p < P; p++) {
            float *row = kv + b * seq + (int64_t)p * ld;
            for (int i = 0; i < C; i++) {
                row[i] *= gk;
                row[C + i] *= gv;
            }
        }
    }
}

static int prefix_gate_backward(const pc_adapter *a, const pc_site_call *c, float *dkv, int ld,
                                int64_t seq, float *dx, int lddx, const float *x, int ldx,
                                const float *saved) {
    const int G = gates_of(a), N = c->N, T = c->T, B = N / T, C = c->in, P = prefix_rows(a);
    const float *sig = saved, *g = saved + (int64_t)N * G;
    const float *K = pc_f32(a->t[T_KEY]), *V = pc_f32(a->t[T_VALUE]);
    pc_tensor *gw = a->t[T_GATE_W], *gb = a->t[T_GATE_B];
    float *dwg = NULL, *dbg = NULL;
    if (gw->requires_grad) {
        pc_tensor *d = pc_tensor_grad(gw);
        if (!d) return -1;
        dwg = pc_f32(d);
    }
    if (gb->requires_grad) {
        pc_tensor *d = pc_tensor_grad(gb);
        if (!d) return -1;
        dbg = pc_f32(d);
    }
    float *dg = calloc((size_t)B * G, sizeof(float));
    if (!dg) return -1;
    for (int b = 0; b < B; b++) {
        /* keys_b = K·g_b0, values_b = V·g_b,G-1: dg from the rows before scaling, then
         * the rows' gradients scaled to those of K and V */
        double dk = 0.0, dv = 0.0;
        const float gk = g[b * G], gv = g[b * G + G - 1];
        for (int p = 0; p < P; p++) {
            float *row = dkv + b * seq + (int64_t)p * ld;
            for (int i = 0; i < C; i++) {
                dk += (double)row[i] * K[(int64_t)p * C + i];
                dv += (double)row[C + i] * V[(int64_t)p * C + i];
                row[i] *= gk;
                row[C + i] *= gv;
            }
        }
        dg[b * G] += (float)dk;
        dg[b * G + G - 1] += (float)dv;
    }
    int status = 0;
    if (dwg || dbg || dx)
        status = pc_gate_backward(dwg, dbg, dx, lddx, dg, sig, x, ldx, pc_f32(gw), N, T, C, G);
    free(dg);
    return status;
}

static int prefix_gate_values(const pc_adapter *a, int N, int T, int in, int out,
                              const float *saved, float *g) {
    const int G = gates_of(a);
    if (G) memcpy(g, saved + (int64_t)N * G, sizeof(float) * (size_t)(N / T) * G);
    return G;
}

const pc_adapter_method pc_prefix_method = {
    .name = "prefix",
    .sites = 1u << PC_SITE_KV,
    .num_tensors = NUM_TENSORS,
    .keeps = PC_KEEPS_FIRST_TOKEN_ONLY, /* keys and values must exist: no folding */
    .saved_per_row = prefix_saved_per_row,
    .tensor_names = tensor_names,
    .num_required = 2,
    .block_check = prefix_check,
    .kv_rows = prefix_rows,
    .kv_forward = prefix_forward,
    .kv_backward = prefix_backward,
    .kv_gated = prefix_gated,
    .kv_gate_forward = prefix_gate_forward,
    .kv_gate_backward = prefix_gate_backward,
    .gate_values = prefix_gate_values,
};
