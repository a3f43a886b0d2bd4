/* Losses: cross-entropy (mean, ignore_index) and mean squared error. */
#include "kernels.h"

/* loss = mean over counted rows of logsumexp(x) - x[target] */
float pc_cross_entropy_forward(const float *logits, const int64_t *targets, int N, int C,
                               int64_t ignore_index, int *count) {
    double total = 0.0;
    int counted = 0;
    for (int n = 0; n < N; n++) {
        if (targets[n] == ignore_index) continue;
        const float *x = logits + (int64_t)n * C;
        float mx = -INFINITY;
        for (int c = 0; c < C; c++) mx = x[c] > mx ? x[c] : mx;
        double sum = 0.0;
        for (int c = 0; c < C; c++) sum += exp((double)x[c] - mx);
        total += log(sum) + mx - x[targets[n]];
        counted++;
    }
    if (count) *count = counted;
    return counted ? (float)(total / counted) : NAN;
}

/* dlogits += dloss·(softmax(x) - onehot(target))/count on counted rows */
void pc_cross_entropy_backward(float *dlogits, const float *logits, const int64_t *targets,
                               int N, int C, int64_t ignore_index, float dloss) {
    int counted = 0;
    for (int n = 0; n < N; n++) counted += targets[n] != ignore_index;
    if (!counted) return;
    float g = dloss / counted;
    for (int n = 0; n < N; n++) {
        if (targets[n] == ignore_index) continue;
        const float *x = logits + (int64_t)n * C;
        float *dx = dlogits + (int64_t)n * C;
        float mx = -INFINITY;
        for (int c = 0; c < C; c++) mx = x[c] > mx ? x[c] : mx;
        double sum = 0.0;
        for (int c = 0; c < C; c++) sum += exp((double)x[c] - mx);
        for (int c = 0; c < C; c++) {
            float p = (float)(exp((double)x[c] - mx) / sum);
            dx[c] += g * (p - (c == targets[n] ? 1.0f : 0.0f));
        }
    }
}

float pc_mse_forward(const float *inp, const float *target, int64_t n) {
    double total = 0.0;
    for (int64_t i = 0; i < n; i++) {
        double d = (double)inp[i] - target[i];
        total += d * d;
    }
    return n ? (float)(total / n) : NAN;
}

/* loss = Σ (x - t)²/n: dx += dloss·2(x - t)/n */
void pc_mse_backward(float *dinp, const float *inp, const float *target, int64_t n,
                     float dloss) {
    if (!n) return;
    float g = 2.0f * dloss / (float)n;
    for (int64_t i = 0; i < n; i++) dinp[i] += g * (inp[i] - target[i]);
}
