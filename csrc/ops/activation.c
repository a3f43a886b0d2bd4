/* Elementwise activations, softmax and the residual add. */
#include "kernels.h"

/* Exact GELU and its gradient over n floats, a vector at a time; the last n mod PC_VW go
 * through the same lane code, so an element's result does not depend on where it sits.
 * Their polynomials want fused multiply-adds, which ISO C mode leaves as two roundings
 * unless told (and only here: an auto-vectorised loop may contract its body and not its
 * scalar remainder). */
#pragma GCC push_options
#pragma GCC optimize("fp-contract=fast")
static void gelu_exact_span(float *out, const float *inp, int64_t n) {
    const int64_t nv = n / PC_VW * PC_VW;
    for (int64_t i = 0; i < nv; i += PC_VW) pc_storev(out + i, pc_gelu_v(pc_loadv(inp + i)));
    if (nv < n) pc_store_head(out + nv, pc_gelu_v(pc_load_head(inp + nv, n - nv)), n - nv);
}

static void gelu_exact_grad_span(float *d, const float *inp, int64_t n) {
    const int64_t nv = n / PC_VW * PC_VW;
    for (int64_t i = 0; i < nv; i += PC_VW)
        pc_storev(d + i, pc_loadv(d + i) * pc_gelu_derivative_v(pc_loadv(inp + i)));
    if (nv < n) {
        const int64_t rest = n - nv;
        pc_store_head(d + nv, pc_load_head(d + nv, rest) *
                                  pc_gelu_derivative_v(pc_load_head(inp + nv, rest)), rest);
    }
}

/* out = gelu(x), x = gelu'(x) in place: both from one exponential, the same bits as
 * gelu_exact_span and gelu_exact_grad_span */
static void gelu_exact_value_slope_span(float *out, float *x, int64_t n) {
    const int64_t nv = n / PC_VW * PC_VW;
    for (int64_t i = 0; i < nv; i += PC_VW) {
        pc_vec value;
        const pc_vec slope = pc_gelu_value_derivative_v(pc_loadv(x + i), &value);
        pc_storev(out + i, value);
        pc_storev(x + i, slope);
    }
    if (nv < n) {
        const int64_t rest = n - nv;
        pc_vec value;
        const pc_vec slope = pc_gelu_value_derivative_v(pc_load_head(x + nv, rest), &value);
        pc_store_head(out + nv, value, rest);
        pc_store_head(x + nv, slope, rest);
    }
}

/* One column group [c0, c1) of pc_gelu_scale_backward over all N rows: acc (c1 - c0)
 * gathers the column dots when dot */
static void gelu_scale_group(float *acc, float *d, const float *pre, const float *l, int N,
                             int C, int c0, int c1, bool dot) {
    for (int n = 0; n < N; n++) {
        float *dn = d + (int64_t)n * C;
        const float *xn = pre + (int64_t)n * C;
        for (int c = c0; c < c1; c += PC_VW) {
            const int w = c1 - c < PC_VW ? c1 - c : PC_VW;
            const pc_vec x = w == PC_VW ? pc_loadv(xn + c) : pc_load_head(xn + c, w);
            const pc_vec dv = w == PC_VW ? pc_loadv(dn + c) : pc_load_head(dn + c, w);
            const pc_vec lv = w == PC_VW ? pc_loadv(l + c) : pc_load_head(l + c, w);
            pc_vec gelu;
            const pc_vec deriv = pc_gelu_value_derivative_v(x, &gelu);
            if (dot) {
                float *a = acc + (c - c0);
                const pc_vec sum = w == PC_VW ? pc_loadv(a) : pc_load_head(a, w);
                if (w == PC_VW) pc_storev(a, sum + dv * gelu);
                else pc_store_head(a, sum + dv * gelu, w);
            }
            const pc_vec g = (dv * lv) * deriv;
            if (w == PC_VW) pc_storev(dn + c, g); else pc_store_head(dn + c, g, w);
        }
    }
}

#pragma GCC pop_options

/* the tanh form, element by element, contracted as gelu_grad_span's is */
static void gelu_tanh_scale_group(float *acc, float *d, const float *pre, const float *l, int N,
                                  int C, int c0, int c1, bool dot) {
    for (int n = 0; n < N; n++) {
        float *dn = d + (int64_t)n * C;
        const float *xn = pre + (int64_t)n * C;
        for (int c = c0; c < c1; c++) {
            if (dot) acc[c - c0] += dn[c] * pc_gelu_tanh(xn[c]);
            dn[c] = (dn[c] * l[c]) * pc_gelu_tanh_derivative(xn[c]);
        }
    }
}

/* threads own whole column groups (pc_column_groups_of), as in the column reductions */
void pc_gelu_scale_backward(float *dl, float *d, const float *pre, const float *l, int N, int C,
                            bool tanh_approx) {
    const pc_column_groups cg = pc_column_groups_of(N, C);
    PC_PRAGMA(omp parallel for schedule(static) num_threads(cg.threads))
    for (int g = 0; g < cg.count; g++) {
        const int c0 = g * cg.width, c1 = pc_column_group_end(&cg, g, C);
        float acc[PC_COLUMN_GROUP_MAX];
        if (dl) memset(acc, 0, sizeof(float) * (c1 - c0));
        if (tanh_approx)
            gelu_tanh_scale_group(acc, d, pre, l, N, C, c0, c1, dl != NULL);
        else
            gelu_scale_group(acc, d, pre, l, N, C, c0, c1, dl != NULL);
        if (dl)
            for (int c = c0; c < c1; c++) dl[c] += acc[c - c0];
    }
}

void pc_gelu_span(float *out, const float *inp, int64_t n, bool tanh_approx) {
    if (!tanh_approx) {
        gelu_exact_span(out, inp, n);
        return;
    }
    for (int64_t i = 0; i < n; i++) out[i] = pc_gelu_tanh(inp[i]);
}

void pc_gelu_value_slope_span(float *out, float *x, int64_t n, bool tanh_approx) {
    if (!tanh_approx) {
        gelu_exact_value_slope_span(out, x, n);
        return;
    }
    for (int64_t i = 0; i < n; i++) {
        const float v = x[i];
        out[i] = pc_gelu_tanh(v);
        x[i] = pc_gelu_tanh_derivative(v);
    }
}

/* d (n) ⊙= gelu'(inp) on one thread */
static void gelu_grad_span(float *d, const float *inp, int64_t n, bool tanh_approx) {
    if (!tanh_approx) {
        gelu_exact_grad_span(d, inp, n);
        return;
    }
    for (int64_t i = 0; i < n; i++) d[i] *= pc_gelu_tanh_derivative(inp[i]);
}

/* threads take whole chunks of this many floats (a multiple of every PC_VW) */
enum { SPAN_CHUNK = 4096 };

/* span(y + i, x + i, len, tanh_approx) over [0, n) in chunks shared among the threads */
static void over_chunks(void (*span)(float *, const float *, int64_t, bool), float *y,
                        const float *x, int64_t n, bool tanh_approx) {
    const int64_t chunks = (n + SPAN_CHUNK - 1) / SPAN_CHUNK;
    PC_PARALLEL_FOR(n)
    for (int64_t c = 0; c < chunks; c++) {
        const int64_t i = c * SPAN_CHUNK;
        span(y + i, x + i, n - i < SPAN_CHUNK ? n - i : SPAN_CHUNK, tanh_approx);
    }
}

/* exact: gelu(x) = x·Φ(x);  tanh form: 0.5·x·(1 + tanh(√(2/π)(x + 0.044715x³))) */
void pc_gelu_forward(float *out, const float *inp, int64_t n, bool tanh_approx) {
    over_chunks(pc_gelu_span, out, inp, n, tanh_approx);
}

void pc_gelu_grad_inplace(float *d, const float *inp, int64_t n, bool tanh_approx) {
    over_chunks(gelu_grad_span, d, inp, n, tanh_approx);
}

void pc_mul_inplace(float *d, const float *s, int64_t n) {
    PC_PARALLEL_FOR(n)
    for (int64_t i = 0; i < n; i++) d[i] *= s[i];
}

/* dinp += dout · gelu'(inp) */
void pc_gelu_backward(float *dinp, const float *dout, const float *inp, int64_t n,
                      bool tanh_approx) {
    const int64_t chunks = (n + SPAN_CHUNK - 1) / SPAN_CHUNK;
    PC_PARALLEL_FOR(n)
    for (int64_t c = 0; c < chunks; c++) {
        const int64_t i = c * SPAN_CHUNK, len = n - i < SPAN_CHUNK ? n - i : SPAN_CHUNK;
        float grad[SPAN_CHUNK];
        memcpy(grad, dout + i, sizeof(float) * (size_t)len);
        gelu_grad_span(grad, inp + i, len, tanh_approx);
        for (int64_t j = 0; j < len; j++) dinp[i + j] += grad[j];
    }
}

void pc_tanh_forward(float *out, const float *inp, int64_t n) {
    PC_PARALLEL_FOR(n)
    for (int64_t i = 0; i < n; i++) out[i] = pc_tanhf(inp[i]);
}

/* y = tanh(x): dx = dy·(1 - y²) */
void pc_tanh_backward(float *dinp, const float *dout, const float *out, int64_t n) {
    PC_PARALLEL_FOR(n)
    for (int64_t i = 0; i < n; i++) dinp[i] += dout[i] * (1.0f - out[i] * out[i]);
}

/* NaN stays NaN: the comparison is false for it and x is returned */
void pc_relu_forward(float *out, const float *inp, int64_t n) {
    PC_PARALLEL_FOR(n)
    for (int64_t i = 0; i < n; i++) out[i] = inp[i] < 0.0f ? 0.0f : inp[i];
}

void pc_relu_backward(float *dinp, const float *dout, const float *inp, int64_t n) {
    PC_PARALLEL_FOR(n)
    for (int64_t i = 0; i < n; i++) dinp[i] += inp[i] > 0.0f ? dout[i] : 0.0f;
}

void pc_softmax_forward(float *out, const float *inp, int N, int C) {
    PC_PARALLEL_FOR((int64_t)N * C)
    for (int n = 0; n < N; n++) pc_softmax_row(out + (int64_t)n * C, inp + (int64_t)n * C, C);
}

/* dx = y ⊙ (dy - Σ_c dy·y) */
void pc_softmax_backward(float *dinp, const float *dout, const float *out, int N, int C) {
    PC_PARALLEL_FOR((int64_t)N * C)
    for (int n = 0; n < N; n++) {
        const float *y = out + (int64_t)n * C, *dy = dout + (int64_t)n * C;
        float *dx = dinp + (int64_t)n * C;
        float dot = pc_dot(dy, y, C);
        for (int c = 0; c < C; c++) dx[c] += y[c] * (dy[c] - dot);
    }
}

void pc_add_forward(float *out, const float *a, const float *b, int64_t n) {
    PC_PARALLEL_FOR(n)
    for (int64_t i = 0; i < n; i++) out[i] = a[i] + b[i];
}

void pc_add_backward(float *da, float *db, const float *dout, int64_t n) {
    PC_PARALLEL_FOR(n)
    for (int64_t i = 0; i < n; i++) {
        if (da) da[i] += dout[i];
        if (db) db[i] += dout[i];
    }
}
