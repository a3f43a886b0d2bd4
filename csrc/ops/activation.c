/* Elementwise activations, softmax and the residual add. */
#include "kernels.h"

/* exact: gelu(x) = x·Φ(x);  tanh form: 0.5·x·(1 + tanh(√(2/π)(x + 0.044715x³))) */
void pc_gelu_forward(float *out, const float *inp, int64_t n, bool tanh_approx) {
    if (tanh_approx) {
        PC_PARALLEL_FOR(n)
        for (int64_t i = 0; i < n; i++) out[i] = pc_gelu(inp[i], true);
    } else {
        PC_PARALLEL_FOR(n)
        for (int64_t i = 0; i < n; i++) out[i] = pc_gelu(inp[i], false);
    }
}

/* dinp += dout · gelu'(inp) */
void pc_gelu_backward(float *dinp, const float *dout, const float *inp, int64_t n,
                      bool tanh_approx) {
    if (tanh_approx) {
        PC_PARALLEL_FOR(n)
        for (int64_t i = 0; i < n; i++) dinp[i] += dout[i] * pc_gelu_derivative(inp[i], true);
    } else {
        PC_PARALLEL_FOR(n)
        for (int64_t i = 0; i < n; i++) dinp[i] += dout[i] * pc_gelu_derivative(inp[i], false);
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
