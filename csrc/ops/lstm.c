/* One direction of one LSTM layer (torch.nn.LSTM's cell, gate order i, f, g, o), batch first,
 * zero initial state. A bidirectional or stacked LSTM is several calls (the caller
 * concatenates directions and applies dropout between layers).
 *
 *   gates_t = x_t·W_ihᵀ + b_ih + h_{t-1}·W_hhᵀ + b_hh              (B,4H)
 *   i, f, o = σ(gates_t[i|f|o]);  g = tanh(gates_t[g])
 *   c_t = f ⊙ c_{t-1} + i ⊙ g;     h_t = o ⊙ tanh(c_t)
 *
 * With reverse, steps run t = T-1 .. 0 (h_{t+1} is the previous state). */
#include <stdlib.h>

#include "kernels.h"

static inline float sigmoidf(float x) { return 1.0f / (1.0f + pc_expf(-x)); }

/* x (B,T,IN), w_ih (4H,IN), w_hh (4H,H), b_ih, b_hh (4H) or NULL -> h (B,T,H); gates (B,T,4H)
 * keeps i, f, g, o after their nonlinearities and c (B,T,H) the cell states, for the
 * backward. Returns 0. */
int pc_lstm_forward(float *h, float *gates, float *c, const float *x, const float *w_ih,
                    const float *w_hh, const float *b_ih, const float *b_hh, int B, int T, int IN,
                    int H, bool reverse) {
    const int G = 4 * H;
    /* every step's input projection at once: gates (B·T, 4H) = x·W_ihᵀ + b_ih + b_hh */
    pc_sgemm(false, true, B * T, G, IN, 1.0f, x, IN, w_ih, IN, 0.0f, gates, G);
    for (int64_t r = 0; r < (int64_t)B * T; r++)
        for (int j = 0; j < G; j++)
            gates[r * G + j] += (b_ih ? b_ih[j] : 0.0f) + (b_hh ? b_hh[j] : 0.0f);
    for (int s = 0; s < T; s++) {
        const int t = reverse ? T - 1 - s : s, tp = reverse ? t + 1 : t - 1;
        float *gt = gates + (int64_t)t * G;  /* row b at gt + b·T·4H */
        if (s > 0) /* += h_{prev}·W_hhᵀ for the B rows of this step */
            pc_sgemm(false, true, B, G, H, 1.0f, h + (int64_t)tp * H, T * H, w_hh, H, 1.0f, gt,
                     T * G);
        for (int b = 0; b < B; b++) {
            float *g = gt + (int64_t)b * T * G;
            const int64_t row = ((int64_t)b * T + t) * H, prev = ((int64_t)b * T + tp) * H;
            for (int j = 0; j < H; j++) {
                const float ig = sigmoidf(g[j]), fg = sigmoidf(g[H + j]);
                const float gg = pc_tanhf(g[2 * H + j]), og = sigmoidf(g[3 * H + j]);
                g[j] = ig, g[H + j] = fg, g[2 * H + j] = gg, g[3 * H + j] = og;
                const float cp = s > 0 ? c[prev + j] : 0.0f;
                c[row + j] = fg * cp + ig * gg;
                h[row + j] = og * pc_tanhf(c[row + j]);
            }
        }
    }
    return 0;
}

/* dh (B,T,H), the gradient of h, back through the steps ("in the forward h_t = o·tanh(c_t),
 * so now do = dh·tanh(c_t), dc += dh·o·(1 - tanh²c_t)", and so on up the gates). dx (B,T,IN),
 * dw_ih (4H,IN), dw_hh (4H,H) and db (4H) (the gradient of b_ih and of b_hh alike) are
 * accumulated into; NULL: not wanted. 0, or -1 out of memory. */
int pc_lstm_backward(float *dx, float *dw_ih, float *dw_hh, float *db, const float *dh,
                     const float *x, const float *h, const float *gates, const float *c,
                     const float *w_ih, const float *w_hh, int B, int T, int IN, int H,
                     bool reverse) {
    const int G = 4 * H;
    float *dg = malloc(sizeof(float) * ((size_t)B * T * G + 2 * (size_t)B * H));
    if (!dg) return -1;
    float *dh_next = dg + (size_t)B * T * G, *dc_next = dh_next + (size_t)B * H;
    memset(dh_next, 0, sizeof(float) * 2 * (size_t)B * H);
    for (int s = T - 1; s >= 0; s--) {
        const int t = reverse ? T - 1 - s : s, tp = reverse ? t + 1 : t - 1;
        for (int b = 0; b < B; b++) {
            const float *g = gates + ((int64_t)b * T + t) * G;
            float *d = dg + ((int64_t)b * T + t) * G;
            const int64_t row = ((int64_t)b * T + t) * H, prev = ((int64_t)b * T + tp) * H;
            for (int j = 0; j < H; j++) {
                const float ig = g[j], fg = g[H + j], gg = g[2 * H + j], og = g[3 * H + j];
                const float dht = dh[row + j] + dh_next[(int64_t)b * H + j];
                const float tc = pc_tanhf(c[row + j]);
                const float dc = dc_next[(int64_t)b * H + j] + dht * og * (1.0f - tc * tc);
                const float cp = s > 0 ? c[prev + j] : 0.0f;
                d[j] = dc * gg * ig * (1.0f - ig);
                d[H + j] = dc * cp * fg * (1.0f - fg);
                d[2 * H + j] = dc * ig * (1.0f - gg * gg);
                d[3 * H + j] = dht * tc * og * (1.0f - og);
                dc_next[(int64_t)b * H + j] = dc * fg;
            }
        }
        const float *dgt = dg + (int64_t)t * G;
        if (s > 0) {
            /* dh_{prev} = dgates_t·W_hh;  dW_hh += dgates_tᵀ·h_{prev} */
            pc_sgemm(false, false, B, H, G, 1.0f, dgt, T * G, w_hh, H, 0.0f, dh_next, H);
            if (dw_hh)
                pc_sgemm(true, false, G, H, B, 1.0f, dgt, T * G, h + (int64_t)tp * H, T * H, 1.0f,
                         dw_hh, H);
        }
    }
    if (dx) pc_sgemm(false, false, B * T, IN, G, 1.0f, dg, G, w_ih, IN, 1.0f, dx, IN);
    if (dw_ih) pc_sgemm(true, false, G, IN, B * T, 1.0f, dg, G, x, IN, 1.0f, dw_ih, IN);
    if (db) pc_column_sums(db, dg, G, B * T, G);
    free(dg);
    return 0;
}
