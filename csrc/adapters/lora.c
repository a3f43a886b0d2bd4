/* LoRA (Hu et al. 2021) at a linear's output site: y' = y + c·dropout(x)·Aᵀ·Bᵀ with A (r,in),
 * B (out,r) and c the scale, or, gated (UniPELT, Mao et al. 2022, as AdapterHub's LoRA with
 * use_gating), c = g_b = mean over sequence b's rows of sigmoid(x·wg + bg), wg (1,in), bg (1).
 * It saves u = dropout(x)·Aᵀ (N,r) for the backward (and, gated, first the sequences' gates
 * g and each row's sigmoid, ops/gate.c);
 * the row kernels are peft/lora.c's (compiled per instruction set). Ungated it adds a term
 * independent of y, so the bias may follow it and the gradient of y passes through it
 * unchanged; gated, the same, but its rows depend on their whole sequence: on the first
 * tokens alone it needs the rest of their sequences' input (pc_site_call's seq_x). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../ops/kernels.h"
#include "../peft/lora.h"
#include "adapter.h"

enum { T_A, T_B, T_GATE_W, T_GATE_B, NUM_TENSORS };

static int lora_check(pc_tensor *const *t, pc_site_kind site, int in, int out, float scale,
                      float dropout, char *err, size_t errlen) {
    const pc_tensor *A = t[T_A], *B = t[T_B];
    if (A->ndim != 2 || B->ndim != 2 || A->shape[1] != in || B->shape[0] != out ||
        B->shape[1] != A->shape[0] || A->shape[0] < 1) {
        snprintf(err, errlen, "lora A must be float32 (r, %d) and B (%d, r) with r >= 1", in, out);
        return -1;
    }
    if ((t[T_GATE_W] != NULL) != (t[T_GATE_B] != NULL) ||
        (t[T_GATE_W] && (t[T_GATE_W]->numel != in || t[T_GATE_B]->numel != 1))) {
        snprintf(err, errlen, "lora gate: weight (1, %d) and bias (1,) go together", in);
        return -1;
    }
    if (!(dropout >= 0.0f && dropout < 1.0f)) {
        snprintf(err, errlen, "lora dropout must be in [0, 1), got %g", dropout);
        return -1;
    }
    return 0;
}

static int rank(const pc_adapter *a) { return (int)a->t[T_A]->shape[0]; }
static bool gated(const pc_adapter *a) { return a->t[T_GATE_W] != NULL; }

static float dropout_p(const pc_adapter *a, const pc_site_call *c) {
    return c->training ? a->dropout : 0.0f;
}

/* u is the kernel's scratch in every forward, and what the backward reads; gated, before it
 * each sequence's gate and each row's sigmoid (see gate_rows) */
static int64_t lora_saved_per_row(const pc_adapter *a, int in, int out, bool keeping) {
    return rank(a) + (gated(a) ? 2 : 0);
}

static unsigned lora_keeps(const pc_adapter *a) {
    return PC_KEEPS_LATE_BIAS | PC_KEEPS_GRADIENT |
           (gated(a) ? PC_KEEPS_FIRST_TOKENS_WITH_SEQUENCES : PC_KEEPS_FIRST_TOKEN_ONLY);
}

/* The rows a gated call's gates average over: its own N (sequences of T), or, on first
 * tokens, their sequences' (seq_x). Its saved floats: the gates g (one per sequence) at 0,
 * the rows' sigmoids from `sig`, u (N,r) from `u`: within the N·(r + 2) floats of the
 * call's own rows, or of the sequences' N·seq_T rows, which the site then reserves. */
typedef struct {
    const float *x;
    int ldx, rows, T;
    float *dx; /* the backward's share through the gates goes here */
    int lddx;
    int64_t sig, u;
} gate_rows;

static gate_rows gate_rows_of(const pc_site_call *c, const float *x, int ldx, float *dx,
                              int lddx) {
    gate_rows r = {x, ldx, c->N, c->T, dx, lddx, 0, 0};
    if (c->seq_x)
        r = (gate_rows){c->seq_x, c->seq_ldx, c->N * c->seq_T, c->seq_T, c->seq_dx,
                        c->seq_lddx, 0, 0};
    r.sig = r.rows / r.T;
    r.u = r.sig + r.rows;
    return r;
}

/* gated: each row's scale, its sequence's gate g_b (the caller frees it) */
static float *row_gates(const float *g, int N, int T) {
    float *rs = malloc(sizeof(float) * (size_t)N);
    if (rs)
        for (int n = 0; n < N; n++) rs[n] = g[n / T];
    return rs;
}

static int lora_forward(const pc_adapter *a, const pc_site_call *c, float *y, int ldy,
                        const float *x, int ldx, float *saved, bool keeping) {
    const int r = rank(a), N = c->N;
    if (!gated(a))
        return pc_lora_forward(y, ldy, saved, x, ldx, pc_f32(a->t[T_A]), pc_f32(a->t[T_B]), N,
                               c->in, c->out, r, a->scale, NULL, dropout_p(a, c), c->seed);
    /* the gate of each sequence (ops/gate.c), then every row in one call, scaled by its g_b */
    const gate_rows gr = gate_rows_of(c, x, ldx, NULL, 0);
    pc_gate_forward(saved + gr.sig, saved, gr.x, gr.ldx, pc_f32(a->t[T_GATE_W]),
                    pc_f32(a->t[T_GATE_B]), gr.rows, gr.T, c->in, 1);
    float *rs = row_gates(saved, N, c->T);
    if (!rs) return -1;
    const int status = pc_lora_forward(y, ldy, saved + gr.u, x, ldx, pc_f32(a->t[T_A]),
                                       pc_f32(a->t[T_B]), N, c->in, c->out, r, 1.0f, rs,
                                       dropout_p(a, c), c->seed);
    free(rs);
    return status;
}

static int lora_gate_values(const pc_adapter *a, int N, int T, int in, int out,
                            const float *saved, float *g) {
    if (!gated(a)) return 0;
    memcpy(g, saved, sizeof(float) * (size_t)(N / T)); /* first in either layout */
    return 1;
}

static int lora_backward(const pc_adapter *a, const pc_site_call *c, float *dy, int lddy,
                         float *dx, int lddx, const float *x, int ldx, const float *saved) {
    pc_tensor *A = a->t[T_A], *B = a->t[T_B];
    const bool gate_trains = gated(a) && (a->t[T_GATE_W]->requires_grad ||
                                          a->t[T_GATE_B]->requires_grad);
    if (!A->requires_grad && !B->requires_grad && !dx && !gate_trains) return 0;
    pc_tensor *dA = A->requires_grad ? pc_tensor_grad(A) : NULL;
    pc_tensor *dB = B->requires_grad ? pc_tensor_grad(B) : NULL;
    if ((A->requires_grad && !dA) || (B->requires_grad && !dB)) return -1;
    const int r = rank(a), N = c->N;
    if (!gated(a))
        return pc_lora_backward(dx, lddx, pc_f32(dA), pc_f32(dB), dy, lddy, saved, x, ldx,
                                pc_f32(A), pc_f32(B), N, c->in, c->out, r, a->scale, NULL,
                                dropout_p(a, c), c->seed);
    const gate_rows gr = gate_rows_of(c, x, ldx, dx, lddx);
    const float *g = saved, *u = saved + gr.u;
    const int T = c->T, seqs = N / T;
    /* dg_b = Σ over b's rows of dy·(u·Bᵀ) = Σ (dy·B)·u, then the gate's logits */
    const float *Bw = pc_f32(B), *wg = pc_f32(a->t[T_GATE_W]);
    float *dwg = NULL, *dbg = NULL;
    if (a->t[T_GATE_W]->requires_grad) {
        pc_tensor *gt = pc_tensor_grad(a->t[T_GATE_W]);
        if (!gt) return -1;
        dwg = pc_f32(gt);
    }
    if (a->t[T_GATE_B]->requires_grad) {
        pc_tensor *gt = pc_tensor_grad(a->t[T_GATE_B]);
        if (!gt) return -1;
        dbg = pc_f32(gt);
    }
    /* dyB (N,r) = dy (N,out) · B (out,r), one GEMM; then dg_b = Σ over b's rows of dyB·u */
    float *dg = malloc(sizeof(float) * (size_t)seqs);
    float *dyB = malloc(sizeof(float) * (size_t)N * r);
    float *rs = row_gates(g, N, T);
    if (!dg || !dyB || !rs ||
        pc_sgemm_narrow(false, false, N, r, c->out, 1.0f, dy, lddy, Bw, r, 0.0f, dyB, r, NULL) <
            0) {
        free(dg);
        free(dyB);
        free(rs);
        return -1;
    }
    for (int b = 0; b < seqs; b++) {
        double sum = 0.0;
        for (int64_t i = (int64_t)b * T * r; i < (int64_t)(b + 1) * T * r; i++)
            sum += (double)dyB[i] * u[i];
        dg[b] = (float)sum;
    }
    int status = pc_lora_backward(dx, lddx, pc_f32(dA), pc_f32(dB), dy, lddy, u, x, ldx,
                                  pc_f32(A), Bw, N, c->in, c->out, r, 1.0f, rs, dropout_p(a, c),
                                  c->seed);
    /* then the gate's logits (ops/gate.c) */
    if (status == 0)
        status = pc_gate_backward(dwg, dbg, gr.dx, gr.lddx, dg, saved + gr.sig, gr.x, gr.ldx, wg,
                                  gr.rows, gr.T, c->in, 1);
    free(dg);
    free(dyB);
    free(rs);
    return status;
}

const pc_adapter_method pc_lora_method = {
    .name = "lora",
    .sites = 1u << PC_SITE_LINEAR_OUT,
    .num_tensors = NUM_TENSORS,
    .num_required = 2,
    .keeps = PC_KEEPS_LATE_BIAS | PC_KEEPS_GRADIENT | PC_KEEPS_FIRST_TOKEN_ONLY,
    .adapter_keeps = lora_keeps,
    .check = lora_check,
    .saved_per_row = lora_saved_per_row,
    .forward = lora_forward,
    .backward = lora_backward,
    .gate_values = lora_gate_values,
};
