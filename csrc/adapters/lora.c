/* LoRA (Hu et al. 2021) at a linear's output site: y' = y + s·dropout(x)·Aᵀ·Bᵀ with A (r,in),
 * B (out,r), s = scale. It saves u = dropout(x)·Aᵀ (N,r) for the backward; the row kernels
 * are peft/lora.c's (compiled per instruction set). It adds a term independent of y, so the
 * bias may follow it and the gradient of y passes through it unchanged. */
#include <stdio.h>

#include "../peft/lora.h"
#include "adapter.h"

static int lora_check(pc_tensor *const *t, pc_site_kind site, int in, int out, float scale,
                      float dropout, char *err, size_t errlen) {
    const pc_tensor *A = t[0], *B = t[1];
    if (A->ndim != 2 || B->ndim != 2 || A->shape[1] != in || B->shape[0] != out ||
        B->shape[1] != A->shape[0] || A->shape[0] < 1) {
        snprintf(err, errlen, "lora A must be float32 (r, %d) and B (%d, r) with r >= 1", in, out);
        return -1;
    }
    if (!(dropout >= 0.0f && dropout < 1.0f)) {
        snprintf(err, errlen, "lora dropout must be in [0, 1), got %g", dropout);
        return -1;
    }
    return 0;
}

static int rank(const pc_adapter *a) { return (int)a->t[0]->shape[0]; }

static float dropout_p(const pc_adapter *a, const pc_site_call *c) {
    return c->training ? a->dropout : 0.0f;
}

/* u is the kernel's scratch in every forward, and what the backward reads */
static int64_t lora_saved_per_row(const pc_adapter *a, int in, int out, bool keeping) {
    return rank(a);
}

static int lora_forward(const pc_adapter *a, const pc_site_call *c, float *y, int ldy,
                        const float *x, int ldx, float *saved, bool keeping) {
    return pc_lora_forward(y, ldy, saved, x, ldx, pc_f32(a->t[0]), pc_f32(a->t[1]), c->N, c->in,
                           c->out, rank(a), a->scale, dropout_p(a, c), c->seed);
}

static int lora_backward(const pc_adapter *a, const pc_site_call *c, float *dy, int lddy,
                         float *dx, int lddx, const float *x, int ldx, const float *saved) {
    pc_tensor *A = a->t[0], *B = a->t[1];
    if (!A->requires_grad && !B->requires_grad && !dx) return 0;
    pc_tensor *dA = A->requires_grad ? pc_tensor_grad(A) : NULL;
    pc_tensor *dB = B->requires_grad ? pc_tensor_grad(B) : NULL;
    if ((A->requires_grad && !dA) || (B->requires_grad && !dB)) return -1;
    return pc_lora_backward(dx, lddx, pc_f32(dA), pc_f32(dB), dy, lddy, saved, x, ldx,
                            pc_f32(A), pc_f32(B), c->N, c->in, c->out, rank(a), a->scale,
                            dropout_p(a, c), c->seed);
}

const pc_adapter_method pc_lora_method = {
    .name = "lora",
    .sites = 1u << PC_SITE_LINEAR_OUT,
    .num_tensors = 2,
    .keeps = PC_KEEPS_LATE_BIAS | PC_KEEPS_GRADIENT | PC_KEEPS_FIRST_TOKEN_ONLY,
    .check = lora_check,
    .saved_per_row = lora_saved_per_row,
    .forward = lora_forward,
    .backward = lora_backward,
};
