/* Losses: cross-entropy (mean, ignore_index; optionally class-weighted), mean squared error
 * and binary cross-entropy on logits (multi-label). */
#include "kernels.h"

/* The row's largest value into *mx; returns Σ_c exp(x[c] - mx) (the stable logsumexp's sum). */
static double row_sumexp(const float *x, int C, float *mx_out) {
    float mx = -INFINITY;
    for (int c = 0; c < C; c++) mx = x[c] > mx ? x[c] : mx;
    double sum = 0.0;
    for (int c = 0; c < C; c++) sum += exp((double)x[c] - mx);
    *mx_out = mx;
    return sum;
}

/* One row's cross-entropy gradient: dx += g·(softmax(x) - onehot(target)) */
static void add_softmax_grad(float *dx, const float *x, int C, int64_t target, float g) {
    float mx;
    double sum = row_sumexp(x, C, &mx);
    for (int c = 0; c < C; c++) {
        float p = (float)(exp((double)x[c] - mx) / sum);
        dx[c] += g * (p - (c == target ? 1.0f : 0.0f));
    }
}

/* loss = mean over counted rows of logsumexp(x) - x[target] */
float pc_cross_entropy_forward(const float *logits, const int64_t *targets, int N, int C,
                               int64_t ignore_index, int *count) {
    double total = 0.0;
    int counted = 0;
    for (int n = 0; n < N; n++) {
        if (targets[n] == ignore_index) continue;
        const float *x = logits + (int64_t)n * C;
        float mx;
        double sum = row_sumexp(x, C, &mx);
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
        add_softmax_grad(dx, x, C, targets[n], g);
    }
}

/* Class-weighted, as torch's cross_entropy(weight=w): each counted row n weighs w[t_n] and
 * the mean divides by the sum of those weights:
 *   loss = Σ_n w[t_n]·(logsumexp(x_n) - x_n[t_n]) / Σ_n w[t_n]
 * *weight_sum receives the denominator (0: no row counted, loss NaN). */
float pc_cross_entropy_weighted_forward(const float *logits, const int64_t *targets,
                                        const float *weight, int N, int C,
                                        int64_t ignore_index, double *weight_sum) {
    double total = 0.0, wsum = 0.0;
    for (int n = 0; n < N; n++) {
        if (targets[n] == ignore_index) continue;
        const float *x = logits + (int64_t)n * C;
        float mx;
        double sum = row_sumexp(x, C, &mx);
        double w = weight[targets[n]];
        total += w * (log(sum) + mx - x[targets[n]]);
        wsum += w;
    }
    if (weight_sum) *weight_sum = wsum;
    return wsum != 0.0 ? (float)(total / wsum) : NAN;
}

/* In the forward each row added w[t_n]·nll_n / W, so now
 * dlogits_n += dloss·w[t_n]·(softmax(x_n) - onehot(t_n)) / W. */
void pc_cross_entropy_weighted_backward(float *dlogits, const float *logits,
                                        const int64_t *targets, const float *weight, int N,
                                        int C, int64_t ignore_index, float dloss) {
    double wsum = 0.0;
    for (int n = 0; n < N; n++)
        if (targets[n] != ignore_index) wsum += weight[targets[n]];
    if (wsum == 0.0) return;
    for (int n = 0; n < N; n++) {
        if (targets[n] == ignore_index) continue;
        const float *x = logits + (int64_t)n * C;
        float *dx = dlogits + (int64_t)n * C;
        float g = (float)(dloss * weight[targets[n]] / wsum);
        add_softmax_grad(dx, x, C, targets[n], g);
    }
}

/* Binary cross-entropy on logits, mean over n elements (torch's
 * binary_cross_entropy_with_logits), in the stable form
 *   l = max(x, 0) - x·t + log(1 + exp(-|x|)) */
float pc_bce_with_logits_forward(const float *inp, const float *target, int64_t n) {
    double total = 0.0;
    for (int64_t i = 0; i < n; i++) {
        double x = inp[i];
        total += (x > 0 ? x : 0.0) - x * target[i] + log1p(exp(-fabs(x)));
    }
    return n ? (float)(total / n) : NAN;
}

/* dl/dx = sigmoid(x) - t: dx += dloss·(sigmoid(x) - t)/n */
void pc_bce_with_logits_backward(float *dinp, const float *inp, const float *target,
                                 int64_t n, float dloss) {
    if (!n) return;
    double g = (double)dloss / (double)n;
    for (int64_t i = 0; i < n; i++) {
        double x = inp[i];
        double s = x >= 0 ? 1.0 / (1.0 + exp(-x)) : exp(x) / (1.0 + exp(x));
        dinp[i] += (float)(g * (s - target[i]));
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
