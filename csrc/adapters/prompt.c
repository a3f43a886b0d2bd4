/* Prompt tuning (Lester et al. 2021) at the embeddings site: the first P word-embedding rows
 * of every sequence are P trainable virtual-token embeddings (P,C) (the caller gives any
 * in-range ids there; positions and token types are added to them as to any row). Their
 * gradient is the sum over the batch of those rows'; the rows before the site get none. */
#include <stdio.h>
#include <string.h>

#include "adapter.h"

enum { T_PROMPT, NUM_TENSORS };
static const char *const tensor_names[NUM_TENSORS] = {"prompt"};

static int prompt_check(pc_tensor *const *t, const float *opt, int C, char *err, size_t errlen) {
    const pc_tensor *p = t[T_PROMPT];
    if (p->ndim != 2 || p->shape[1] != C || p->shape[0] < 1) {
        snprintf(err, errlen, "prompt: the virtual tokens must be (P, %d) with P >= 1", C);
        return -1;
    }
    return 0;
}

static int prompt_rows(const pc_adapter *a) { return (int)a->t[T_PROMPT]->shape[0]; }

static void prompt_forward(const pc_adapter *a, float *rows, int B, int T) {
    const int P = prompt_rows(a) < T ? prompt_rows(a) : T, C = (int)a->t[T_PROMPT]->shape[1];
    for (int b = 0; b < B; b++)
        memcpy(rows + (int64_t)b * T * C, pc_f32(a->t[T_PROMPT]), sizeof(float) * P * C);
}

static int prompt_backward(const pc_adapter *a, float *d, int B, int T) {
    const int P = prompt_rows(a) < T ? prompt_rows(a) : T, C = (int)a->t[T_PROMPT]->shape[1];
    float *g = NULL;
    if (a->t[T_PROMPT]->requires_grad) {
        pc_tensor *gt = pc_tensor_grad(a->t[T_PROMPT]);
        if (!gt) return -1;
        g = pc_f32(gt);
    }
    for (int b = 0; b < B; b++) {
        float *rows = d + (int64_t)b * T * C;
        if (g)
            for (int64_t i = 0; i < (int64_t)P * C; i++) g[i] += rows[i];
        memset(rows, 0, sizeof(float) * P * C); /* overwritten in the forward */
    }
    return 0;
}

static int64_t prompt_saved_per_row(const pc_adapter *a, int in, int out, bool keeping) {
    return 0;
}

const pc_adapter_method pc_prompt_method = {
    .name = "prompt",
    .sites = 1u << PC_SITE_EMBEDDINGS,
    .num_tensors = NUM_TENSORS,
    .keeps = PC_KEEPS_FIRST_TOKEN_ONLY,
    .saved_per_row = prompt_saved_per_row,
    .tensor_names = tensor_names,
    .num_required = NUM_TENSORS,
    .block_check = prompt_check,
    .emb_forward = prompt_forward,
    .emb_backward = prompt_backward,
};
