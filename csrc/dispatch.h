/* The kernels compiled once per instruction set (every external function of csrc/ops,
 * csrc/peft and csrc/optim but pc_tile_gemm, which only other kernels call), as one list:
 *   X(kind, return type, name, (parameters), (arguments))
 * kind is VOID or VALUE. dispatch.c turns it into the table of each set and the plain-named
 * entry points; isa_names.h renames the same functions inside the kernel sources. */
#ifndef PEFTCORE_DISPATCH_H
#define PEFTCORE_DISPATCH_H

#include "engine.h"
#include "optim/adamw.h"
#include "peft/lora.h"

#define PC_DISPATCHED_KERNELS(X)                                                             \
    X(VOID, void, pc_gelu_span, (float *out, const float *inp, int64_t n, bool tanh_approx),   \
      (out, inp, n, tanh_approx))                                                            \
    X(VOID, void, pc_gelu_forward, (float *out, const float *inp, int64_t n, bool tanh_approx), \
      (out, inp, n, tanh_approx))                                                            \
    X(VOID, void, pc_gelu_grad_inplace, (float *d, const float *inp, int64_t n, bool tanh_approx), \
      (d, inp, n, tanh_approx))                                                              \
    X(VOID, void, pc_gelu_value_slope_span, (float *out, float *x, int64_t n, bool tanh_approx), \
      (out, x, n, tanh_approx))                                                              \
    X(VOID, void, pc_mul_inplace, (float *d, const float *s, int64_t n), (d, s, n))            \
    X(VOID, void, pc_gelu_scale_backward,                                                    \
      (float *dl, float *d, const float *pre, const float *l, int N, int C, bool tanh_approx), \
      (dl, d, pre, l, N, C, tanh_approx))                                                    \
    X(VOID, void, pc_gelu_backward,                                                          \
      (float *dinp, const float *dout, const float *inp, int64_t n, bool tanh_approx),       \
      (dinp, dout, inp, n, tanh_approx))                                                     \
    X(VOID, void, pc_tanh_forward, (float *out, const float *inp, int64_t n), (out, inp, n))   \
    X(VOID, void, pc_tanh_backward, (float *dinp, const float *dout, const float *out, int64_t n), \
      (dinp, dout, out, n))                                                                  \
    X(VOID, void, pc_relu_forward, (float *out, const float *inp, int64_t n), (out, inp, n))   \
    X(VOID, void, pc_relu_backward, (float *dinp, const float *dout, const float *inp, int64_t n), \
      (dinp, dout, inp, n))                                                                  \
    X(VOID, void, pc_softmax_forward, (float *out, const float *inp, int N, int C),           \
      (out, inp, N, C))                                                                      \
    X(VOID, void, pc_softmax_backward,                                                       \
      (float *dinp, const float *dout, const float *out, int N, int C), (dinp, dout, out, N, C)) \
    X(VOID, void, pc_add_forward, (float *out, const float *a, const float *b, int64_t n),   \
      (out, a, b, n))                                                                        \
    X(VOID, void, pc_add_backward, (float *da, float *db, const float *dout, int64_t n),     \
      (da, db, dout, n))                                                                     \
    X(VALUE, int, pc_attention_probs,                                                        \
      (float *probs, const float *q, const float *k, const float *key_mask,                  \
       const pc_attention_dims *dims),                                                       \
      (probs, q, k, key_mask, dims))                                                         \
    X(VALUE, int, pc_attention_forward,                                                      \
      (float *out, float *probs, const float *q, const float *k, const float *v,             \
       const float *key_mask, const pc_attention_dims *dims, float dropout_p, uint64_t seed), \
      (out, probs, q, k, v, key_mask, dims, dropout_p, seed))                                \
    X(VALUE, int64_t, pc_attention_folded_scratch_floats,                                    \
      (const pc_attention_dims *dims, int prefix_rows), (dims, prefix_rows))                 \
    X(VOID, void, pc_attention_first_query_folded,                                           \
      (float *out, float *probs, const float *q, const float *x,                             \
       const pc_folded_projections *f, const float *key_mask, const pc_attention_dims *dims, \
       float dropout_p, uint64_t seed, float *scratch),                                      \
      (out, probs, q, x, f, key_mask, dims, dropout_p, seed, scratch))                       \
    X(VALUE, int, pc_attention_backward,                                                     \
      (float *dq, float *dk, float *dv, const float *dout, const float *probs, const float *q, \
       const float *k, const float *v, const pc_attention_dims *dims, float dropout_p,       \
       uint64_t seed),                                                                       \
      (dq, dk, dv, dout, probs, q, k, v, dims, dropout_p, seed))                             \
    X(VALUE, int, pc_attention_backward_into,                                                \
      (float *dq, float *dk, float *dv, const float *dout, const float *probs, const float *q, \
       const float *k, const float *v, const pc_attention_dims *dims, float dropout_p,       \
       uint64_t seed),                                                                       \
      (dq, dk, dv, dout, probs, q, k, v, dims, dropout_p, seed))                             \
    X(VALUE, int64_t, pc_attention_folded_backward_scratch_floats,                           \
      (const pc_attention_dims *dims), (dims))                                               \
    X(VALUE, int, pc_attention_first_query_backward_folded,                                  \
      (float *dq, const pc_folded_grads *g, const float *dout, const float *probs,           \
       const float *q, const float *k, const float *v, const float *x,                       \
       const pc_folded_projections *f, const pc_attention_dims *dims, float dropout_p,       \
       uint64_t seed, float *scratch),                                                       \
      (dq, g, dout, probs, q, k, v, x, f, dims, dropout_p, seed, scratch))                   \
    X(VOID, void, pc_dropout_forward,                                                        \
      (float *out, const float *inp, int64_t n, float p, uint64_t seed), (out, inp, n, p, seed)) \
    X(VOID, void, pc_dropout_backward,                                                       \
      (float *dinp, const float *dout, int64_t n, float p, uint64_t seed),                   \
      (dinp, dout, n, p, seed))                                                              \
    X(VOID, void, pc_dropout_backward_inplace, (float *d, int64_t n, float p, uint64_t seed),  \
      (d, n, p, seed))                                                                       \
    X(VOID, void, pc_bias_dropout_residual,                                                  \
      (float *y, const float *bias, const float *residual, int N, int C, float p, uint64_t seed), \
      (y, bias, residual, N, C, p, seed))                                                    \
    X(VOID, void, pc_bias_dropout_residual_norm,                                             \
      (float *y, const float *bias, const float *residual, int N, int C, float p,            \
       uint64_t seed, float *out, float *mean, float *rstd, const float *weight,             \
       const float *ln_bias, float eps),                                                     \
      (y, bias, residual, N, C, p, seed, out, mean, rstd, weight, ln_bias, eps))             \
    X(VOID, void, pc_sum_dropout_backward,                                                   \
      (float *d, const float *a, int64_t n, float p, uint64_t seed), (d, a, n, p, seed))      \
    X(VALUE, bool, pc_dropout_keep, (uint64_t seed, uint64_t i, float p), (seed, i, p))      \
    X(VOID, void, pc_embedding_forward,                                                      \
      (float *out, const int64_t *ids, const float *weight, int N, int C), (out, ids, weight, N, C)) \
    X(VOID, void, pc_embedding_backward,                                                     \
      (float *dweight, const float *dout, const int64_t *ids, int N, int C),                 \
      (dweight, dout, ids, N, C))                                                            \
    X(VALUE, int, pc_lstm_forward,                                                           \
      (float *h, float *gates, float *c, const float *x, const float *w_ih, const float *w_hh, \
       const float *b_ih, const float *b_hh, int B, int T, int IN, int H, bool reverse),       \
      (h, gates, c, x, w_ih, w_hh, b_ih, b_hh, B, T, IN, H, reverse))                         \
    X(VALUE, int, pc_lstm_backward,                                                          \
      (float *dx, float *dw_ih, float *dw_hh, float *db, const float *dh, const float *x,   \
       const float *h, const float *gates, const float *c, const float *w_ih,               \
       const float *w_hh, int B, int T, int IN, int H, bool reverse),                        \
      (dx, dw_ih, dw_hh, db, dh, x, h, gates, c, w_ih, w_hh, B, T, IN, H, reverse))           \
    X(VOID, void, pc_gemm_packed_init, (void), ())                                           \
    X(VALUE, int, pc_gemm_packed_mode, (void), ())                                           \
    X(VALUE, bool, pc_gemm_packed_has, (int mode), (mode))                                   \
    X(VALUE, bool, pc_gemm_packed_split_free, (void), ())                                    \
    X(VALUE, bool, pc_gemm_packed_use, (int mode), (mode))                                   \
    X(VALUE, bool, pc_sgemm_packed,                                                          \
      (bool trans_a, bool trans_b, int M, int N, int K, float alpha, const float *A, int lda, \
       const float *B, int ldb, float beta, float *C, int ldc, const float *bias),            \
      (trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, bias))                \
    X(VOID, void, pc_linear_forward,                                                         \
      (float *out, const float *inp, const float *weight, const float *bias, int N, int IC,  \
       int OC),                                                                              \
      (out, inp, weight, bias, N, IC, OC))                                                   \
    X(VOID, void, pc_linear_backward,                                                        \
      (float *dinp, float *dweight, float *dbias, const float *dout, const float *inp,       \
       const float *weight, int N, int IC, int OC),                                          \
      (dinp, dweight, dbias, dout, inp, weight, N, IC, OC))                                  \
    X(VOID, void, pc_column_sums, (float *dst, const float *src, int ld, int N, int C),      \
      (dst, src, ld, N, C))                                                                  \
    X(VOID, void, pc_column_dots_scale,                                                      \
      (float *dst, float *d, int ldd, const float *v, int ldv, const float *l, int N, int C),  \
      (dst, d, ldd, v, ldv, l, N, C))                                                        \
    X(VOID, void, pc_scale_columns,                                                          \
      (float *y, int ldy, const float *x, int ldx, const float *l, int N, int C, float *save), \
      (y, ldy, x, ldx, l, N, C, save))                                                       \
    X(VALUE, float, pc_gate_dot, (const float *x, const float *w, int n), (x, w, n))          \
    X(VOID, void, pc_gate_forward,                                                           \
      (float *sig, float *g, const float *x, int ldx, const float *wg, const float *bg, int N, \
       int T, int in, int G),                                                                \
      (sig, g, x, ldx, wg, bg, N, T, in, G))                                                 \
    X(VALUE, int, pc_gate_backward,                                                          \
      (float *dwg, float *dbg, float *dx, int lddx, const float *dg, const float *sig,       \
       const float *x, int ldx, const float *wg, int N, int T, int in, int G),               \
      (dwg, dbg, dx, lddx, dg, sig, x, ldx, wg, N, T, in, G))                                \
    X(VALUE, float, pc_cross_entropy_forward,                                                \
      (const float *logits, const int64_t *targets, int N, int C, int64_t ignore_index,      \
       int *count),                                                                          \
      (logits, targets, N, C, ignore_index, count))                                          \
    X(VOID, void, pc_cross_entropy_backward,                                                 \
      (float *dlogits, const float *logits, const int64_t *targets, int N, int C,            \
       int64_t ignore_index, float dloss),                                                   \
      (dlogits, logits, targets, N, C, ignore_index, dloss))                                 \
    X(VALUE, float, pc_cross_entropy_weighted_forward,                                       \
      (const float *logits, const int64_t *targets, const float *weight, int N, int C,       \
       int64_t ignore_index, double *weight_sum),                                            \
      (logits, targets, weight, N, C, ignore_index, weight_sum))                             \
    X(VOID, void, pc_cross_entropy_weighted_backward,                                        \
      (float *dlogits, const float *logits, const int64_t *targets, const float *weight,     \
       int N, int C, int64_t ignore_index, float dloss),                                     \
      (dlogits, logits, targets, weight, N, C, ignore_index, dloss))                         \
    X(VALUE, float, pc_bce_with_logits_forward,                                              \
      (const float *inp, const float *target, int64_t n), (inp, target, n))                  \
    X(VOID, void, pc_bce_with_logits_backward,                                               \
      (float *dinp, const float *inp, const float *target, int64_t n, float dloss),          \
      (dinp, inp, target, n, dloss))                                                         \
    X(VALUE, float, pc_mse_forward, (const float *inp, const float *target, int64_t n),     \
      (inp, target, n))                                                                      \
    X(VOID, void, pc_mse_backward,                                                           \
      (float *dinp, const float *inp, const float *target, int64_t n, float dloss),          \
      (dinp, inp, target, n, dloss))                                                         \
    X(VOID, void, pc_layernorm_forward,                                                      \
      (float *out, float *mean, float *rstd, const float *inp, const float *weight,          \
       const float *bias, int N, int C, float eps),                                          \
      (out, mean, rstd, inp, weight, bias, N, C, eps))                                       \
    X(VOID, void, pc_layernorm_backward,                                                     \
      (float *dinp, float *dweight, float *dbias, const float *dout, const float *inp,       \
       const float *weight, const float *mean, const float *rstd, int N, int C),             \
      (dinp, dweight, dbias, dout, inp, weight, mean, rstd, N, C))                           \
    X(VOID, void, pc_layernorm_backward_to,                                                  \
      (float *dinp, float *dcopy, float *dweight, float *dbias, const float *dout,           \
       const float *inp, const float *weight, const float *mean, const float *rstd, int N,   \
       int C, float p, uint64_t seed),                                                       \
      (dinp, dcopy, dweight, dbias, dout, inp, weight, mean, rstd, N, C, p, seed))           \
    X(VOID, void, pc_layernorm_forward_sum,                                                  \
      (float *out, float *mean, float *rstd, float *sum, const float *a, const float *b,     \
       const float *c3, const float *weight, const float *bias, int N, int C, float eps),    \
      (out, mean, rstd, sum, a, b, c3, weight, bias, N, C, eps))                             \
    X(VOID, void, pc_layernorm_backward_junction,                                            \
      (float *dbranch, float *dres, const float *dextra, bool extra_to_res, float *dweight,  \
       float *dbias, const float *dout, const float *inp, const float *weight,               \
       const float *mean, const float *rstd, int N, int C, float p, uint64_t seed),          \
      (dbranch, dres, dextra, extra_to_res, dweight, dbias, dout, inp, weight, mean, rstd, N, \
       C, p, seed))                                                                          \
    X(VALUE, int, pc_sgemm_narrow,                                                           \
      (bool trans_a, bool trans_b, int M, int N, int K, float alpha, const float *A, int lda, \
       const float *B, int ldb, float beta, float *C, int ldc, const float *bias),            \
      (trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, bias))                \
    X(VALUE, int, pc_lora_forward,                                                           \
      (float *y, int ldy, float *u, const float *x, int ldx, const float *A, const float *B, \
       int N, int in, int out, int r, float scale, const float *row_scale, float p,          \
       uint64_t seed),                                                                       \
      (y, ldy, u, x, ldx, A, B, N, in, out, r, scale, row_scale, p, seed))                   \
    X(VALUE, int, pc_lora_backward,                                                          \
      (float *dx, int lddx, float *dA, float *dB, const float *dy, int ldy, const float *u,  \
       const float *x, int ldx, const float *A, const float *B, int N, int in, int out,      \
       int r, float scale, const float *row_scale, float p, uint64_t seed),                  \
      (dx, lddx, dA, dB, dy, ldy, u, x, ldx, A, B, N, in, out, r, scale, row_scale, p,       \
       seed))                                                                                \
    X(VOID, void, pc_adamw_step,                                                             \
      (float *p, const float *g, float *m, float *v, int64_t n, int64_t t, float lr,         \
       float beta1, float beta2, float eps, float weight_decay),                             \
      (p, g, m, v, n, t, lr, beta1, beta2, eps, weight_decay))                               \
    X(VALUE, double, pc_sum_squares, (const float *g, int64_t n), (g, n))                    \
    X(VOID, void, pc_scale, (float *g, int64_t n, float scale), (g, n, scale))

#endif
