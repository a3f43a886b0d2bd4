/* Prefix tuning (Li and Liang 2021) and P-tuning v2 (Liu et al. 2022) at a layer's KV site:
 * P trainable key rows and P value rows (P,C) that every sequence's queries attend to before
 * its own keys. The gradients the encoder hands back are already summed over the batch. */
#include <stdio.h>
#include <string.h>

#include "adapter.h"

enum { T_KEY, T_VALUE, NUM_TENSORS };
static const char *const tensor_names[NUM_TENSORS] = {"key", "value"};

static int prefix_check(pc_tensor *const *t, const float *opt, int C, char *err, size_t errlen) {
    const pc_tensor *k = t[T_KEY], *v = t[T_VALUE];
    if (k->ndim != 2 || v->ndim != 2 || k->shape[1] != C || v->shape[1] != C ||
        k->shape[0] != v->shape[0] || k->shape[0] < 1) {
        snprintf(err, errlen, "prefix: key and value must both be (P, %d) with P >= 1", C);
        return -1;
    }
    return 0;
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
    for (int i = 0; i < NUM_TENSORS; i++) {
        if (!a->t[i]->requires_grad) continue;
        pc_tensor *g = pc_tensor_grad(a->t[i]);
        if (!g) return -1;
        for (int p = 0; p < P; p++)
            for (int c = 0; c < C; c++) pc_f32(g)[(int64_t)p * C + c] += d[i][(int64_t)p * ld + c];
    }
    return 0;
}

static int64_t prefix_saved_per_row(const pc_adapter *a, int in, int out, bool keeping) {
    return 0;
}

const pc_adapter_method pc_prefix_method = {
    .name = "prefix",
    .sites = 1u << PC_SITE_KV,
    .num_tensors = NUM_TENSORS,
    .keeps = PC_KEEPS_FIRST_TOKEN_ONLY, /* keys and values must exist: no folding */
    .saved_per_row = prefix_saved_per_row,
    .tensor_names = tensor_names,
    .num_required = NUM_TENSORS,
    .block_check = prefix_check,
    .kv_rows = prefix_rows,
    .kv_forward = prefix_forward,
    .kv_backward = prefix_backward,
};
