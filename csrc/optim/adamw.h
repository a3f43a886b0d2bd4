/* AdamW with decoupled weight decay (Loshchilov & Hutter), as torch.optim.AdamW. */
#ifndef PEFTCORE_ADAMW_H
#define PEFTCORE_ADAMW_H

#include <stdint.h>

/* One step t (1-based) over n parameters p with gradient g and moments m, v:
 *   p ← p·(1 - lr·wd)
 *   m ← β1·m + (1-β1)·g          v ← β2·v + (1-β2)·g²
 *   p ← p - (lr / (1-β1^t)) · m / (√v / √(1-β2^t) + eps) */
void pc_adamw_step(float *p, const float *g, float *m, float *v, int64_t n, int64_t t, float lr,
                   float beta1, float beta2, float eps, float weight_decay);

/* Σ g² in double (for the global gradient norm) */
double pc_sum_squares(const float *g, int64_t n);
/* g ← g·scale */
void pc_scale(float *g, int64_t n, float scale);

#endif
