/* (IA)³ (Liu et al. 2022): a learned vector l scales activations, element by element.
 *   input site (feed-forward layers):  x' = x ⊙ l, l (in)     saves nothing (x is the input)
 *   output site (other layers):        y' = y ⊙ l, l (out)    saves y for the backward
 * Backward: dl = Σ_n d ⊙ (x or y), and the gradient passes on as d ⊙ l. The sum over rows
 * runs per block of 64 columns, each block whole on one thread and its rows in order, so
 * no result depends on the thread count. */
#include <stdio.h>
#include <string.h>

#include "../ops/kernels.h"
#include "adapter.h"

#pragma GCC optimize("fp-contract=fast")

enum { BLOCK = 64 };

static int ia3_check(pc_tensor *const *t, pc_site_kind site, int in, int out, float scale,
                     float dropout, char *err, size_t errlen) {
    const int64_t want = site == PC_SITE_LINEAR_IN ? in : out;
    if (t[0]->numel != want) {
        snprintf(err, errlen,
                 "ia3 vector at a linear's %s must have %lld elements (the linear's %s "
                 "features), got %lld",
                 site == PC_SITE_LINEAR_IN ? "input" : "output", (long long)want,
                 site == PC_SITE_LINEAR_IN ? "input" : "output", (long long)t[0]->numel);
        return -1;
    }
    return 0;
}

static int64_t ia3_saved_per_row(const pc_adapter *a, int in, int out, bool keeping) {
    return a->site == PC_SITE_LINEAR_OUT && keeping ? out : 0;
}

/* y (N,W) = x ⊙ l row by row (y may be x); with save, save (N,W) = x first */
static void scale_rows(float *y, int ldy, const float *x, int ldx, const float *l, int N, int W,
                       float *save) {
    PC_PARALLEL_FOR((int64_t)N * W)
    for (int n = 0; n < N; n++) {
        const float *xn = x + (int64_t)n * ldx;
        float *yn = y + (int64_t)n * ldy;
        if (save) memcpy(save + (int64_t)n * W, xn, sizeof(float) * W);
        for (int i = 0; i < W; i++) yn[i] = xn[i] * l[i];
    }
}

static int ia3_forward(const pc_adapter *a, const pc_site_call *c, float *y, int ldy,
                       const float *x, int ldx, float *saved, bool keeping) {
    const float *l = pc_f32(a->t[0]);
    if (a->site == PC_SITE_LINEAR_IN)
        scale_rows(y, ldy, x, ldx, l, c->N, c->in, NULL);
    else
        scale_rows(y, ldy, y, ldy, l, c->N, c->out, keeping ? saved : NULL);
    return 0;
}

/* dl (W) += Σ_n d[n]·v[n] (when dl), then d ⊙= l */
static void scale_backward(float *d, int ldd, const float *v, int ldv, const float *l, float *dl,
                           int N, int W) {
    const int blocks = (W + BLOCK - 1) / BLOCK;
    PC_PARALLEL_FOR((int64_t)N * W)
    for (int b = 0; b < blocks; b++) {
        const int i0 = b * BLOCK, w = W - i0 < BLOCK ? W - i0 : BLOCK;
        float acc[BLOCK] = {0};
        for (int n = 0; n < N; n++) {
            float *dn = d + (int64_t)n * ldd + i0;
            const float *vn = v + (int64_t)n * ldv + i0;
            if (dl)
                for (int i = 0; i < w; i++) acc[i] += dn[i] * vn[i];
            for (int i = 0; i < w; i++) dn[i] *= l[i0 + i];
        }
        if (dl)
            for (int i = 0; i < w; i++) dl[i0 + i] += acc[i];
    }
}

static int ia3_backward(const pc_adapter *a, const pc_site_call *c, float *dy, int lddy,
                        float *dx, int lddx, const float *x, int ldx, const float *saved) {
    pc_tensor *l = a->t[0];
    float *dl = NULL;
    if (l->requires_grad) {
        pc_tensor *g = pc_tensor_grad(l);
        if (!g) return -1;
        dl = pc_f32(g);
    }
    if (a->site == PC_SITE_LINEAR_IN)
        scale_backward(dy, lddy, x, ldx, pc_f32(l), dl, c->N, c->in);
    else
        scale_backward(dy, lddy, saved, c->out, pc_f32(l), dl, c->N, c->out);
    return 0;
}

const pc_adapter_method pc_ia3_method = {
    .name = "ia3",
    .sites = 1u << PC_SITE_LINEAR_IN | 1u << PC_SITE_LINEAR_OUT,
    .num_tensors = 1,
    /* it scales y (the bias too) and the gradient; keys and values must exist */
    .keeps = PC_KEEPS_FIRST_TOKEN_ONLY,
    .check = ia3_check,
    .saved_per_row = ia3_saved_per_row,
    .forward = ia3_forward,
    .backward = ia3_backward,
};
