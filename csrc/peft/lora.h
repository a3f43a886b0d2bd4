/* LoRA: the low-rank path of a linear, fused so rank-r products never go through BLIS. */
#ifndef PEFTCORE_LORA_H
#define PEFTCORE_LORA_H

#include "../engine.h"

/* Forward, x (N,in) row stride ldx, A (r,in), B (out,r):
 *   xd = dropout_p(x) (mask keyed on (seed, n·in + i))
 *   u (N,r) = xd·Aᵀ               saved for the backward
 *   y (N,out) row stride ldy += s_n · u·Bᵀ, s_n = scale · row_scale[n] (row_scale NULL: 1)
 * Returns 0, or -1 when out of memory. */
int pc_lora_forward(float *y, int ldy, float *u, const float *x, int ldx, const float *A,
                    const float *B, int N, int in, int out, int r, float scale,
                    const float *row_scale, float p, uint64_t seed);

/* Backward, given dy (N,out) row stride ldy:
 *   g (N,r) = s_n · dy·B  (s_n as in the forward, per row)
 *   dB (out,r) += Σ_n s_n · dy_nᵀ·u_n      dA (r,in) += gᵀ·xd      dx (N,in) += dropout_p(g·A)
 * Any of dx, dA, dB may be NULL. Reductions over N use fixed row chunks summed in order,
 * so results do not depend on the thread count. Returns 0, or -1 when out of memory. */
int pc_lora_backward(float *dx, int lddx, float *dA, float *dB, const float *dy, int ldy,
                     const float *u, const float *x, int ldx, const float *A, const float *B,
                     int N, int in, int out, int r, float scale, const float *row_scale,
                     float p, uint64_t seed);

#endif
