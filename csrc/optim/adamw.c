/* AdamW, elementwise and parallel; the arithmetic follows torch's single-tensor path. */
#include <math.h>

#include "../ops/kernels.h"
#include "adamw.h"

void pc_adamw_step(float *p, const float *g, float *m, float *v, int64_t n, int64_t t, float lr,
                   float beta1, float beta2, float eps, float weight_decay) {
    const float decay = 1.0f - lr * weight_decay;
    const double bias1 = 1.0 - pow(beta1, (double)t);
    const double bias2 = 1.0 - pow(beta2, (double)t);
    const float step_size = (float)(lr / bias1);
    const float bias2_sqrt = (float)sqrt(bias2);
    PC_PARALLEL_FOR(n)
    for (int64_t i = 0; i < n; i++) {
        float pi = p[i] * decay;
        float mi = m[i] + (g[i] - m[i]) * (1.0f - beta1); /* torch's lerp form */
        float vi = v[i] * beta2 + (1.0f - beta2) * g[i] * g[i];
        float denom = sqrtf(vi) / bias2_sqrt + eps;
        p[i] = pi - step_size * (mi / denom);
        m[i] = mi;
        v[i] = vi;
    }
}

double pc_sum_squares(const float *g, int64_t n) {
    double s = 0.0;
    for (int64_t i = 0; i < n; i++) s += (double)g[i] * g[i];
    return s;
}

void pc_scale(float *g, int64_t n, float scale) {
    PC_PARALLEL_FOR(n)
    for (int64_t i = 0; i < n; i++) g[i] *= scale;
}
