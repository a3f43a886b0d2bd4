/* (IA)³ (Liu et al. 2022): a learned vector l scales activations, element by element.
 *   input site (feed-forward layers):  x' = x ⊙ l, l (in)     saves nothing (x is the input)
 *   output site (other layers):        y' = y ⊙ l, l (out)    saves y for the backward
 * Backward: dl = Σ_n d ⊙ (x or y), and the gradient passes on as d ⊙ l, in one pass of the
 * per-instruction-set kernel pc_column_dots_scale (each column summed in row order, so no
 * result depends on the thread count). */
#include <stdio.h>

#include "../engine.h"
#include "adapter.h"

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

static int ia3_forward(const pc_adapter *a, const pc_site_call *c, float *y, int ldy,
                       const float *x, int ldx, float *saved, bool keeping) {
    const float *l = pc_f32(a->t[0]);
    if (a->site == PC_SITE_LINEAR_IN)
        pc_scale_columns(y, ldy, x, ldx, l, c->N, c->in, NULL);
    else
        pc_scale_columns(y, ldy, y, ldy, l, c->N, c->out, keeping ? saved : NULL);
    return 0;
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
        pc_column_dots_scale(dl, dy, lddy, x, ldx, pc_f32(l), c->N, c->in);
    else
        pc_column_dots_scale(dl, dy, lddy, saved, c->out, pc_f32(l), c->N, c->out);
    return 0;
}

static pc_tensor *ia3_column_scale(const pc_adapter *a) { return a->t[0]; }

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
    .column_scale = ia3_column_scale,
};
