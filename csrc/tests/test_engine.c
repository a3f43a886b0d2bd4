/* C-only checks of the engine's ops against naive double-precision loops.
 *
 * Each check compares |got - ref| <= ATOL + RTOL·|ref| element by element, and prints one
 * line per check; the last line is "N passed, N failed" and the exit status is non-zero
 * when anything failed. Backward functions accumulate, so gradient buffers start filled
 * with a known pattern and the reference adds to the same pattern. */
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <omp.h>

#include "engine.h"
#include "models/encoder.h"
#include "ops/kernels.h" /* pc_keep_threshold */

#ifndef RTOL
#define RTOL 1e-4
#endif
#ifndef ATOL
#define ATOL 1e-5
#endif

static int n_passed = 0, n_failed = 0;

/* ------------------------------------------------------------------ helpers */

static uint64_t rng_state = 0x243F6A8885A308D3ull;
static float urand(void) { /* uniform in [-1, 1) */
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (float)((rng_state >> 40) * (1.0 / 8388608.0) - 1.0);
}
static float *frand(size_t n, float scale) {
    float *p = pc_alloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++) p[i] = urand() * scale;
    return p;
}
static double *dzeros(size_t n) { return calloc(n ? n : 1, sizeof(double)); }
static double *dfrom(const float *src, size_t n) {
    double *p = dzeros(n);
    for (size_t i = 0; i < n; i++) p[i] = src[i];
    return p;
}

/* compare n floats with a double reference; report the worst element */
static void check(const char *what, const float *got, const double *ref, size_t n) {
    size_t bad = 0, worst = 0;
    double worst_excess = -1.0;
    for (size_t i = 0; i < n; i++) {
        double err = fabs((double)got[i] - ref[i]);
        double lim = ATOL + RTOL * fabs(ref[i]);
        bool ok = err <= lim || (isnan(got[i]) && isnan(ref[i]));
        if (!ok) bad++;
        double excess = isnan(got[i]) ? INFINITY : err - lim;
        if (excess > worst_excess) { worst_excess = excess; worst = i; }
    }
    if (bad == 0) {
        n_passed++;
        printf("ok    %s\n", what);
    } else {
        n_failed++;
        printf("FAIL  %s: %zu of %zu elements off, e.g. [%zu] got %.9g want %.9g\n", what, bad,
               n, worst, n ? got[worst] : 0.0, n ? ref[worst] : 0.0);
    }
}
/* check with a part name appended: "<what>: <part>" */
static void check_part(const char *what, const char *part, const float *got, const double *ref,
                       size_t n) {
    char name[256];
    snprintf(name, sizeof name, "%s: %s", what, part);
    check(name, got, ref, n);
}
static void check_true(const char *what, bool cond) {
    if (cond) { n_passed++; printf("ok    %s\n", what); }
    else { n_failed++; printf("FAIL  %s\n", what); }
}

/* ------------------------------------------------------------------ linear */

static void test_linear(int N, int IC, int OC, bool use_bias) {
    char name[128];
    float *x = frand((size_t)N * IC, 1), *w = frand((size_t)OC * IC, 1), *b = frand(OC, 1);
    float *y = frand((size_t)N * OC, 100); /* garbage: the forward must overwrite it */
    pc_linear_forward(y, x, w, use_bias ? b : NULL, N, IC, OC);
    double *ref = dzeros((size_t)N * OC);
    for (int n = 0; n < N; n++)
        for (int o = 0; o < OC; o++) {
            double s = use_bias ? b[o] : 0.0;
            for (int i = 0; i < IC; i++) s += (double)x[n * IC + i] * w[o * IC + i];
            ref[n * OC + o] = s;
        }
    snprintf(name, sizeof name, "linear_forward N=%d IC=%d OC=%d bias=%d", N, IC, OC, use_bias);
    check(name, y, ref, (size_t)N * OC);

    /* backward accumulates into pre-filled buffers */
    float *dy = frand((size_t)N * OC, 1);
    float *dx = frand((size_t)N * IC, 1), *dw = frand((size_t)OC * IC, 1), *db = frand(OC, 1);
    double *rdx = dfrom(dx, (size_t)N * IC), *rdw = dfrom(dw, (size_t)OC * IC),
           *rdb = dfrom(db, OC);
    for (int n = 0; n < N; n++)
        for (int o = 0; o < OC; o++) {
            double g = dy[n * OC + o];
            rdb[o] += g;
            for (int i = 0; i < IC; i++) {
                rdx[n * IC + i] += g * w[o * IC + i];
                rdw[o * IC + i] += g * x[n * IC + i];
            }
        }
    pc_linear_backward(dx, dw, db, dy, x, w, N, IC, OC);
    snprintf(name, sizeof name, "linear_backward dinp N=%d IC=%d OC=%d (+=)", N, IC, OC);
    check(name, dx, rdx, (size_t)N * IC);
    snprintf(name, sizeof name, "linear_backward dweight N=%d IC=%d OC=%d (+=)", N, IC, OC);
    check(name, dw, rdw, (size_t)OC * IC);
    snprintf(name, sizeof name, "linear_backward dbias N=%d IC=%d OC=%d (+=)", N, IC, OC);
    check(name, db, rdb, OC);

    /* NULL gradients are allowed */
    float *dx2 = pc_alloc((size_t)N * IC * sizeof(float)); /* zeroed */
    pc_linear_backward(dx2, NULL, NULL, dy, x, w, N, IC, OC);
    double *rdx2 = dzeros((size_t)N * IC);
    for (int n = 0; n < N; n++)
        for (int i = 0; i < IC; i++) {
            double s = 0;
            for (int o = 0; o < OC; o++) s += (double)dy[n * OC + o] * w[o * IC + i];
            rdx2[n * IC + i] = s;
        }
    snprintf(name, sizeof name, "linear_backward dinp only N=%d IC=%d OC=%d", N, IC, OC);
    check(name, dx2, rdx2, (size_t)N * IC);

    pc_free(x); pc_free(w); pc_free(b); pc_free(y); pc_free(dy); pc_free(dx); pc_free(dw);
    pc_free(db); pc_free(dx2); free(ref); free(rdx); free(rdw); free(rdb); free(rdx2);
}

/* ------------------------------------------------------------------ column kernels */

/* pc_column_dots_scale, pc_column_sums and pc_scale_columns on strided rows (ld > C), against
 * double loops; C past one group of blocks and not a multiple of 64, N not a multiple of
 * the 8-row tile; the same bits on 1 and 2 threads */
static void test_column_kernels(int N, int C) {
    char what[96];
    const int ldd = C + 3, ldv = C + 5;
    float *d = frand((size_t)N * ldd, 1), *v = frand((size_t)N * ldv, 1), *l = frand(C, 1);
    float *d2 = pc_alloc((size_t)N * ldd * 4), *dl = frand(C, 1), *dl2 = pc_alloc(C * 4);
    float *sums = frand(C, 1), *y = pc_alloc((size_t)N * C * 4), *save = pc_alloc((size_t)N * C * 4);
    double *ref_dl = dfrom(dl, C), *ref_sums = dfrom(sums, C), *ref_d = dzeros((size_t)N * C);
    double *ref_y = dzeros((size_t)N * C), *ref_save = dzeros((size_t)N * C);
    float *got_d = pc_alloc((size_t)N * C * 4);
    for (int n = 0; n < N; n++)
        for (int c = 0; c < C; c++) {
            const double dv = d[(size_t)n * ldd + c];
            ref_dl[c] += dv * v[(size_t)n * ldv + c];
            ref_sums[c] += dv;
            ref_d[(size_t)n * C + c] = dv * l[c];
            ref_y[(size_t)n * C + c] = (double)v[(size_t)n * ldv + c] * l[c];
            ref_save[(size_t)n * C + c] = v[(size_t)n * ldv + c];
        }
    memcpy(d2, d, (size_t)N * ldd * 4);
    memcpy(dl2, dl, C * 4);
    const int before = pc_get_num_threads();
    pc_set_num_threads(1);
    pc_column_sums(sums, d, ldd, N, C);
    pc_column_dots_scale(dl, d, ldd, v, ldv, l, N, C);
    pc_set_num_threads(2);
    pc_column_dots_scale(dl2, d2, ldd, v, ldv, l, N, C);
    pc_scale_columns(y, C, v, ldv, l, N, C, save);
    pc_set_num_threads(before);
    for (int n = 0; n < N; n++) memcpy(got_d + (size_t)n * C, d + (size_t)n * ldd, C * 4);
    snprintf(what, sizeof what, "column kernels N=%d C=%d", N, C);
    check_part(what, "column_sums", sums, ref_sums, C);
    check_part(what, "column_dots_scale dst", dl, ref_dl, C);
    check_part(what, "column_dots_scale d", got_d, ref_d, (size_t)N * C);
    check_part(what, "scale_columns y", y, ref_y, (size_t)N * C);
    check_part(what, "scale_columns save", save, ref_save, (size_t)N * C);
    snprintf(what, sizeof what, "column kernels N=%d C=%d: 1 vs 2 threads bitwise equal", N, C);
    check_true(what, memcmp(dl, dl2, C * 4) == 0 && memcmp(d, d2, (size_t)N * ldd * 4) == 0);
    pc_free(d); pc_free(v); pc_free(l); pc_free(d2); pc_free(dl); pc_free(dl2); pc_free(sums);
    pc_free(y); pc_free(save); pc_free(got_d);
    free(ref_dl); free(ref_sums); free(ref_d); free(ref_y); free(ref_save);
}

/* pc_gelu_scale_backward (exact and tanh GELU) against double loops; the gradient of pre the
 * same bits as GELU recomputed, pc_column_dots_scale and pc_gelu_grad_inplace one after
 * another; the same bits on 1 and 2 threads; dl NULL leaves the gradient of pre as it was */
static double gelu_ref(double x, bool tanh_approx, double *deriv) {
    if (!tanh_approx) {
        const double cdf = 0.5 * (1.0 + erf(x / sqrt(2.0))), pdf = exp(-0.5 * x * x) / sqrt(2.0 * M_PI);
        *deriv = cdf + x * pdf;
        return x * cdf;
    }
    const double k = sqrt(2.0 / M_PI), u = k * (x + 0.044715 * x * x * x), t = tanh(u);
    *deriv = 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * k * (1.0 + 3.0 * 0.044715 * x * x);
    return 0.5 * x * (1.0 + t);
}

static void test_gelu_scale_backward(int N, int C, bool tanh_approx) {
    char what[96];
    const size_t NC = (size_t)N * C;
    float *pre = frand(NC, 4), *d = frand(NC, 1), *l = frand(C, 1), *dl = frand(C, 1);
    float *d1 = pc_alloc(NC * 4), *d2 = pc_alloc(NC * 4), *d3 = pc_alloc(NC * 4);
    float *dl2 = pc_alloc(C * 4), *act = pc_alloc(NC * 4), *dl3 = pc_alloc(C * 4);
    double *ref_dl = dfrom(dl, C), *ref_d = dzeros(NC);
    for (int n = 0; n < N; n++)
        for (int c = 0; c < C; c++) {
            const size_t i = (size_t)n * C + c;
            double deriv;
            const double a = gelu_ref(pre[i], tanh_approx, &deriv);
            ref_dl[c] += (double)d[i] * a;
            ref_d[i] = (double)d[i] * l[c] * deriv;
        }
    memcpy(d1, d, NC * 4);
    memcpy(d2, d, NC * 4);
    memcpy(d3, d, NC * 4);
    memcpy(dl2, dl, C * 4);
    memcpy(dl3, dl, C * 4);
    const int before = pc_get_num_threads();
    pc_set_num_threads(1);
    pc_gelu_scale_backward(dl, d1, pre, l, N, C, tanh_approx);
    pc_set_num_threads(2);
    pc_gelu_scale_backward(dl2, d2, pre, l, N, C, tanh_approx);
    /* the three passes it fuses */
    pc_gelu_forward(act, pre, (int64_t)NC, tanh_approx);
    pc_column_dots_scale(dl3, d3, C, act, C, l, N, C);
    pc_gelu_grad_inplace(d3, pre, (int64_t)NC, tanh_approx);
    pc_set_num_threads(before);
    snprintf(what, sizeof what, "gelu_scale_backward%s N=%d C=%d", tanh_approx ? " (tanh)" : "",
             N, C);
    check_part(what, "dl", dl, ref_dl, C);
    check_part(what, "d", d1, ref_d, NC);
    double *unfused = dfrom(dl3, C);
    check_part(what, "dl against the three passes", dl, unfused, C);
    free(unfused);
    char bits[224];
    snprintf(bits, sizeof bits, "%s: d the same bits as the three passes", what);
    check_true(bits, memcmp(d1, d3, NC * 4) == 0);
    snprintf(bits, sizeof bits, "%s: 1 vs 2 threads bitwise equal", what);
    check_true(bits, memcmp(dl, dl2, C * 4) == 0 && memcmp(d1, d2, NC * 4) == 0);
    /* the forward's slope: gelu(pre) and gelu'(pre) in one pass, the same bits as
     * pc_gelu_forward and the factor pc_gelu_grad_inplace applies (d = 1) */
    float *slope = pc_alloc(NC * 4), *value = pc_alloc(NC * 4), *ones = pc_alloc(NC * 4);
    memcpy(slope, pre, NC * 4);
    for (size_t i = 0; i < NC; i++) ones[i] = 1.0f;
    pc_gelu_value_slope_span(value, slope, (int64_t)NC, tanh_approx);
    pc_gelu_grad_inplace(ones, pre, (int64_t)NC, tanh_approx);
    snprintf(bits, sizeof bits, "%s: value and slope the same bits as gelu and gelu'", what);
    check_true(bits, memcmp(value, act, NC * 4) == 0 && memcmp(slope, ones, NC * 4) == 0);
    /* and the backward's product with it: d ⊙ slope is d ⊙= gelu'(pre) */
    memcpy(d2, d, NC * 4);
    memcpy(d3, d, NC * 4);
    pc_mul_inplace(d2, slope, (int64_t)NC);
    pc_gelu_grad_inplace(d3, pre, (int64_t)NC, tanh_approx);
    snprintf(bits, sizeof bits, "%s: d times the slope the same bits as gelu's backward", what);
    check_true(bits, memcmp(d2, d3, NC * 4) == 0);
    pc_free(slope); pc_free(value); pc_free(ones);
    /* no dl: only the gradient of pre, the same */
    memcpy(d2, d, NC * 4);
    pc_gelu_scale_backward(NULL, d2, pre, l, N, C, tanh_approx);
    snprintf(bits, sizeof bits, "%s: without dl the same gradient of pre", what);
    check_true(bits, memcmp(d1, d2, NC * 4) == 0);
    pc_free(pre); pc_free(d); pc_free(l); pc_free(dl); pc_free(d1); pc_free(d2); pc_free(d3);
    pc_free(dl2); pc_free(act); pc_free(dl3);
    free(ref_dl); free(ref_d);
}

/* ------------------------------------------------------------------ layernorm */

static void test_layernorm(int N, int C) {
    char name[128];
    const float eps = 1e-5f;
    float *x = frand((size_t)N * C, 3), *w = frand(C, 1), *b = frand(C, 1);
    for (int i = 0; i < N * C; i++) x[i] += 1.0f;
    float *y = frand((size_t)N * C, 100), *mean = frand(N, 1), *rstd = frand(N, 1);
    pc_layernorm_forward(y, mean, rstd, x, w, b, N, C, eps);
    double *ry = dzeros((size_t)N * C), *rm = dzeros(N), *rr = dzeros(N);
    for (int n = 0; n < N; n++) {
        double m = 0, v = 0;
        for (int c = 0; c < C; c++) m += x[n * C + c];
        m /= C;
        for (int c = 0; c < C; c++) v += (x[n * C + c] - m) * (x[n * C + c] - m);
        v /= C;
        double s = 1.0 / sqrt(v + eps);
        rm[n] = m;
        rr[n] = s;
        for (int c = 0; c < C; c++) ry[n * C + c] = (x[n * C + c] - m) * s * w[c] + b[c];
    }
    snprintf(name, sizeof name, "layernorm_forward out N=%d C=%d", N, C);
    check(name, y, ry, (size_t)N * C);
    snprintf(name, sizeof name, "layernorm_forward N=%d C=%d", N, C);
    check_part(name, "mean", mean, rm, N);
    check_part(name, "rstd", rstd, rr, N);

    float *dy = frand((size_t)N * C, 1);
    float *dx = frand((size_t)N * C, 1), *dw = frand(C, 1), *db = frand(C, 1);
    double *rdx = dfrom(dx, (size_t)N * C), *rdw = dfrom(dw, C), *rdb = dfrom(db, C);
    for (int n = 0; n < N; n++) {
        double gm = 0, gxm = 0;
        for (int c = 0; c < C; c++) {
            double xh = (x[n * C + c] - rm[n]) * rr[n], g = (double)dy[n * C + c] * w[c];
            gm += g;
            gxm += g * xh;
            rdw[c] += dy[n * C + c] * xh;
            rdb[c] += dy[n * C + c];
        }
        gm /= C;
        gxm /= C;
        for (int c = 0; c < C; c++) {
            double xh = (x[n * C + c] - rm[n]) * rr[n];
            rdx[n * C + c] += rr[n] * ((double)dy[n * C + c] * w[c] - gm - xh * gxm);
        }
    }
    pc_layernorm_backward(dx, dw, db, dy, x, w, mean, rstd, N, C);
    snprintf(name, sizeof name, "layernorm_backward N=%d C=%d (+=)", N, C);
    check_part(name, "dinp", dx, rdx, (size_t)N * C);
    check_part(name, "dweight", dw, rdw, C);
    check_part(name, "dbias", db, rdb, C);

    /* the storing form: the gradient a zeroed buffer accumulates, stored over whatever the
     * outputs held (NaN here), in the copy too; the parameter sums still add */
    float *dz = pc_alloc(sizeof(float) * (size_t)N * C), *ds = pc_alloc(sizeof(float) * (size_t)N * C);
    float *dc = pc_alloc(sizeof(float) * (size_t)N * C), *dw2 = frand(C, 1), *db2 = frand(C, 1);
    memcpy(dw2, dw, sizeof(float) * C);
    memcpy(db2, db, sizeof(float) * C);
    pc_layernorm_backward(dz, NULL, NULL, dy, x, w, mean, rstd, N, C);
    pc_layernorm_backward(NULL, dw, db, dy, x, w, mean, rstd, N, C);
    for (size_t i = 0; i < (size_t)N * C; i++) ds[i] = dc[i] = NAN;
    pc_layernorm_backward_to(ds, dc, dw2, db2, dy, x, w, mean, rstd, N, C, 0.0f, 0);
    snprintf(name, sizeof name, "layernorm_backward_to N=%d C=%d: stores dinp and its copy "
             "(bitwise the sum from zero), adds the parameter sums", N, C);
    check_true(name, memcmp(ds, dz, sizeof(float) * (size_t)N * C) == 0 &&
                         memcmp(dc, dz, sizeof(float) * (size_t)N * C) == 0 &&
                         memcmp(dw2, dw, sizeof(float) * C) == 0 &&
                         memcmp(db2, db, sizeof(float) * C) == 0);
    for (size_t i = 0; i < (size_t)N * C; i++) ds[i] = NAN;
    pc_layernorm_backward_to(ds, NULL, NULL, NULL, dy, x, w, mean, rstd, N, C, 0.0f, 0);
    snprintf(name, sizeof name, "layernorm_backward_to N=%d C=%d without a copy", N, C);
    check_true(name, memcmp(ds, dz, sizeof(float) * (size_t)N * C) == 0);
    /* through a dropout: dinp what pc_dropout_backward_inplace makes of the gradient, the
     * copy the gradient itself */
    for (size_t i = 0; i < (size_t)N * C; i++) ds[i] = dc[i] = NAN;
    pc_layernorm_backward_to(ds, dc, NULL, NULL, dy, x, w, mean, rstd, N, C, 0.3f, 77);
    const bool copy_plain = memcmp(dc, dz, sizeof(float) * (size_t)N * C) == 0;
    pc_dropout_backward_inplace(dz, (int64_t)N * C, 0.3f, 77);
    snprintf(name, sizeof name, "layernorm_backward_to N=%d C=%d through dropout: dinp the "
             "dropout's backward bitwise, the copy without it", N, C);
    check_true(name, copy_plain && memcmp(ds, dz, sizeof(float) * (size_t)N * C) == 0);

    /* a junction's forms, bitwise the passes they fuse. Forward: sum = a + b, out = LN(sum),
     * also with out over a (as the adapters call it) */
    const size_t NC = (size_t)N * C;
    float *a2 = frand(NC, 2), *sum = pc_alloc(sizeof(float) * NC);
    float *out = pc_alloc(sizeof(float) * NC);
    float *want_sum = pc_alloc(sizeof(float) * NC), *want_out = pc_alloc(sizeof(float) * NC);
    float *m2 = pc_alloc(sizeof(float) * (size_t)N), *r2 = pc_alloc(sizeof(float) * (size_t)N);
    for (size_t i = 0; i < NC; i++) want_sum[i] = a2[i] + x[i];
    pc_layernorm_forward(want_out, mean, rstd, want_sum, w, b, N, C, eps);
    pc_layernorm_forward_sum(out, m2, r2, sum, a2, x, NULL, w, b, N, C, eps);
    bool same = !memcmp(sum, want_sum, sizeof(float) * NC) &&
                !memcmp(out, want_out, sizeof(float) * NC) &&
                !memcmp(m2, mean, sizeof(float) * N) && !memcmp(r2, rstd, sizeof(float) * N);
    /* three terms: (a + b) + c */
    float *c3 = frand(NC, 3);
    for (size_t i = 0; i < NC; i++) want_sum[i] = (a2[i] + x[i]) + c3[i];
    pc_layernorm_forward(want_out, NULL, NULL, want_sum, w, b, N, C, eps);
    pc_layernorm_forward_sum(out, NULL, NULL, sum, a2, x, c3, w, b, N, C, eps);
    same = same && !memcmp(sum, want_sum, sizeof(float) * NC) &&
           !memcmp(out, want_out, sizeof(float) * NC);
    for (size_t i = 0; i < NC; i++) want_sum[i] = a2[i] + x[i];
    pc_layernorm_forward(want_out, NULL, NULL, want_sum, w, b, N, C, eps);
    pc_free(c3);
    pc_layernorm_forward_sum(a2, NULL, NULL, sum, a2, x, NULL, w, b, N, C, eps); /* out over a */
    same = same && !memcmp(a2, want_out, sizeof(float) * NC);
    snprintf(name, sizeof name, "layernorm_forward_sum N=%d C=%d: the sum (of two or three), "
             "then LayerNorm, bitwise (out over an input too)", N, C);
    check_true(name, same);
    /* backward: with v LN's input gradient, res += v (+ extra), branch = dropout(v + extra),
     * extra apart or the branch itself */
    float *v = pc_alloc(sizeof(float) * NC), *extra = frand(NC, 1), *res0 = frand(NC, 1);
    float *br = pc_alloc(sizeof(float) * NC), *res = pc_alloc(sizeof(float) * NC);
    float *want_br = pc_alloc(sizeof(float) * NC), *want_res = pc_alloc(sizeof(float) * NC);
    pc_layernorm_backward_to(v, NULL, NULL, NULL, dy, x, w, mean, rstd, N, C, 0.0f, 0);
    for (int variant = 0; variant < 6; variant++) {
        const bool with_extra = variant >= 2, in_place = variant >= 4, to_res = variant % 2;
        const float p = variant == 1 ? 0.0f : 0.3f;
        for (size_t i = 0; i < NC; i++) {
            want_res[i] = res0[i] + v[i];
            if (with_extra && to_res) want_res[i] += extra[i];
            want_br[i] = with_extra ? v[i] + extra[i] : v[i];
        }
        pc_dropout_backward_inplace(want_br, (int64_t)NC, p, 91);
        memcpy(res, res0, sizeof(float) * NC);
        if (in_place) memcpy(br, extra, sizeof(float) * NC);
        float *dw3 = frand(C, 1), *db3 = frand(C, 1), *dw4 = pc_alloc(sizeof(float) * C),
              *db4 = pc_alloc(sizeof(float) * C);
        memcpy(dw4, dw3, sizeof(float) * C);
        memcpy(db4, db3, sizeof(float) * C);
        pc_layernorm_backward(NULL, dw4, db4, dy, x, w, mean, rstd, N, C);
        pc_layernorm_backward_junction(br, res, !with_extra ? NULL : in_place ? br : extra, to_res,
                                       dw3, db3, dy, x, w, mean, rstd, N, C, p, 91);
        snprintf(name, sizeof name, "layernorm_backward_junction N=%d C=%d extra %s%s, p %.1f: "
                 "the separate passes' bits", N, C, !with_extra ? "none" : in_place ? "in place"
                 : "apart", with_extra && to_res ? " (to res too)" : "", p);
        check_true(name, !memcmp(br, want_br, sizeof(float) * NC) &&
                             !memcmp(res, want_res, sizeof(float) * NC) &&
                             !memcmp(dw3, dw4, sizeof(float) * C) &&
                             !memcmp(db3, db4, sizeof(float) * C));
        pc_free(dw3); pc_free(db3); pc_free(dw4); pc_free(db4);
    }
    /* a junction's forward: the branch's bias, dropout and residual, then LayerNorm, in one
     * pass (out apart or over y), against the two calls */
    for (int variant = 0; variant < 8; variant++) {
        const float p = variant & 1 ? 0.2f : 0.0f;
        const bool with_bias = variant & 2, over = variant & 4;
        float *bias2 = frand((size_t)C, 1);
        memcpy(want_sum, a2, sizeof(float) * NC);
        pc_bias_dropout_residual(want_sum, with_bias ? bias2 : NULL, x, N, C, p, 17);
        pc_layernorm_forward(want_out, mean, rstd, want_sum, w, b, N, C, eps);
        memcpy(sum, a2, sizeof(float) * NC);
        float *o = over ? sum : out;
        pc_bias_dropout_residual_norm(sum, with_bias ? bias2 : NULL, x, N, C, p, 17, o, m2, r2, w,
                                      b, eps);
        snprintf(name, sizeof name, "bias_dropout_residual_norm N=%d C=%d p %.1f%s%s: the two "
                 "calls' bits", N, C, p, with_bias ? ", bias" : "", over ? ", out over y" : "");
        check_true(name, (over || !memcmp(sum, want_sum, sizeof(float) * NC)) &&
                             !memcmp(o, want_out, sizeof(float) * NC) &&
                             !memcmp(m2, mean, sizeof(float) * N) &&
                             !memcmp(r2, rstd, sizeof(float) * N));
        pc_free(bias2);
    }
    /* a branch's two shares, then its dropout */
    for (int k = 0; k < 2; k++) {
        const float p = k ? 0.25f : 0.0f;
        for (size_t i = 0; i < NC; i++) want_br[i] = br[i] + extra[i];
        pc_dropout_backward_inplace(want_br, (int64_t)NC, p, 5);
        pc_sum_dropout_backward(br, extra, (int64_t)NC, p, 5);
        snprintf(name, sizeof name, "sum_dropout_backward n=%d p %.2f: the sum, then dropout's "
                 "backward, bitwise", N * C, p);
        check_true(name, !memcmp(br, want_br, sizeof(float) * NC));
    }
    pc_free(a2); pc_free(sum); pc_free(out); pc_free(want_sum); pc_free(want_out); pc_free(m2);
    pc_free(r2); pc_free(v); pc_free(extra); pc_free(res0); pc_free(br); pc_free(res);
    pc_free(want_br); pc_free(want_res);
    pc_free(dz); pc_free(ds); pc_free(dc); pc_free(dw2); pc_free(db2);
    pc_free(x); pc_free(w); pc_free(b); pc_free(y); pc_free(mean); pc_free(rstd); pc_free(dy);
    pc_free(dx); pc_free(dw); pc_free(db);
    free(ry); free(rm); free(rr); free(rdx); free(rdw); free(rdb);
}

/* ------------------------------------------------------------------ softmax */

static void test_softmax(int N, int C) {
    char name[128];
    /* y holds one float past the last row, which must keep its value */
    float *x = frand((size_t)N * C, 5), *y = frand((size_t)N * C + 1, 100);
    const float past = y[(size_t)N * C];
    pc_softmax_forward(y, x, N, C);
    snprintf(name, sizeof name, "softmax_forward N=%d C=%d leaves the float past its rows", N, C);
    check_true(name, y[(size_t)N * C] == past);
    double *ry = dzeros((size_t)N * C);
    for (int n = 0; n < N; n++) {
        double mx = -INFINITY, s = 0;
        for (int c = 0; c < C; c++) mx = fmax(mx, x[n * C + c]);
        for (int c = 0; c < C; c++) s += exp(x[n * C + c] - mx);
        for (int c = 0; c < C; c++) ry[n * C + c] = exp(x[n * C + c] - mx) / s;
    }
    snprintf(name, sizeof name, "softmax_forward N=%d C=%d", N, C);
    check(name, y, ry, (size_t)N * C);
    float *dy = frand((size_t)N * C, 1), *dx = frand((size_t)N * C, 1);
    double *rdx = dfrom(dx, (size_t)N * C);
    for (int n = 0; n < N; n++) {
        double dot = 0;
        for (int c = 0; c < C; c++) dot += dy[n * C + c] * ry[n * C + c];
        for (int c = 0; c < C; c++) rdx[n * C + c] += ry[n * C + c] * (dy[n * C + c] - dot);
    }
    pc_softmax_backward(dx, dy, y, N, C);
    snprintf(name, sizeof name, "softmax_backward N=%d C=%d (+=)", N, C);
    check(name, dx, rdx, (size_t)N * C);
    pc_free(x); pc_free(y); pc_free(dy); pc_free(dx); free(ry); free(rdx);
}

/* ------------------------------------------------------------------ attention */

/* k, v: (B,T) rows; q: (B,Tq) rows. q, k, v live in one (B,T,3C) buffer (fused QKV, row
 * stride 3C, Tq = T) when fused, else in three buffers of row stride C. */
static void test_attention(int B, int Tq, int T, int H, int D, bool masked, float p, bool fused) {
    char name[160];
    const int C = H * D, ld = fused ? 3 * C : C;
    const uint64_t seed = 1234567;
    size_t nkv = (size_t)B * T * ld, nq = fused ? nkv : (size_t)B * Tq * C;
    float *qbuf = frand(nq, 1), *kbuf = fused ? qbuf : frand(nkv, 1),
          *vbuf = fused ? qbuf : frand(nkv, 1);
    const float *q = qbuf, *k = kbuf + (fused ? C : 0), *v = vbuf + (fused ? 2 * C : 0);
    const pc_attention_dims dims = {B, Tq, T, H, D, ld, ld, NULL, false};
    float *mask = NULL;
    if (masked) {
        mask = pc_alloc((size_t)B * T * sizeof(float));
        for (int b = 0; b < B; b++)
            for (int t = 0; t < T; t++) mask[b * T + t] = (b == 0 || t < T - 1 - b) ? 1.0f : 0.0f;
        if (B > 1) for (int t = 0; t < T; t++) mask[(B - 1) * T + t] = 0.0f; /* all padding */
    }
    const size_t nout = (size_t)B * Tq * C, nprobs = (size_t)B * H * Tq * T;
    float *out = frand(nout, 100), *probs = frand(nprobs, 100);
    pc_attention_forward(out, probs, q, k, v, mask, &dims, p, seed);

    /* naive reference in double */
    double *rP = dzeros(nprobs), *rPd = dzeros(nprobs), *rout = dzeros(nout);
    const double scale = 1.0 / sqrt((double)D), keep_scale = 1.0 / (1.0 - p);
#define QAT(b, i, c) q[((size_t)(b) * Tq + (i)) * ld + (c)]
#define KVAT(m, b, j, c) m[((size_t)(b) * T + (j)) * ld + (c)]
    for (int b = 0; b < B; b++)
        for (int h = 0; h < H; h++)
            for (int i = 0; i < Tq; i++) {
                double *P = rP + (((size_t)b * H + h) * Tq + i) * T;
                double *Pd = rPd + (((size_t)b * H + h) * Tq + i) * T;
                double mx = -INFINITY, sum = 0;
                for (int j = 0; j < T; j++) {
                    double s = 0;
                    for (int d = 0; d < D; d++)
                        s += (double)QAT(b, i, h * D + d) * KVAT(k, b, j, h * D + d);
                    s *= scale;
                    if (mask && mask[b * T + j] == 0.0f) s += -FLT_MAX;
                    P[j] = s;
                    mx = fmax(mx, s);
                }
                for (int j = 0; j < T; j++) sum += (P[j] = exp(P[j] - mx));
                for (int j = 0; j < T; j++) {
                    P[j] /= sum;
                    uint64_t idx = (((uint64_t)b * H + h) * Tq + i) * T + j;
                    Pd[j] = p > 0 ? (pc_dropout_keep(seed, idx, p) ? P[j] * keep_scale : 0.0)
                                  : P[j];
                }
                for (int d = 0; d < D; d++) {
                    double s = 0;
                    for (int j = 0; j < T; j++) s += Pd[j] * KVAT(v, b, j, h * D + d);
                    rout[((size_t)b * Tq + i) * C + h * D + d] = s;
                }
            }
    snprintf(name, sizeof name, "attention_forward B=%d Tq=%d T=%d H=%d D=%d mask=%d p=%.1f fused=%d",
             B, Tq, T, H, D, masked, p, fused);
    check_part(name, "out", out, rout, nout);
    check_part(name, "probs", probs, rP, nprobs);
    float *again = frand(nprobs, 100);
    pc_attention_probs(again, q, k, mask, &dims);
    snprintf(name, sizeof name, "attention_probs B=%d Tq=%d T=%d H=%d D=%d mask=%d: the forward's bits",
             B, Tq, T, H, D, masked);
    check_true(name, memcmp(again, probs, nprobs * sizeof(float)) == 0);
    pc_free(again);

    /* backward: gradients accumulate into pre-filled buffers with the same row strides */
    float *dout = frand(nout, 1);
    float *dqbuf = frand(nq, 1), *dkbuf = fused ? dqbuf : frand(nkv, 1),
          *dvbuf = fused ? dqbuf : frand(nkv, 1);
    float *dq = dqbuf, *dk = dkbuf + (fused ? C : 0), *dv = dvbuf + (fused ? 2 * C : 0);
    double *rdq = dfrom(dqbuf, nq), *rdk = fused ? rdq : dfrom(dkbuf, nkv),
           *rdv = fused ? rdq : dfrom(dvbuf, nkv);
    double *rdqv = rdq, *rdkv = rdk + (fused ? C : 0), *rdvv = rdv + (fused ? 2 * C : 0);
    double *init_q = dfrom(dqbuf, nq), *init_k = dfrom(dkbuf, nkv), *init_v = dfrom(dvbuf, nkv);
    double *dP = dzeros(T);
    for (int b = 0; b < B; b++)
        for (int h = 0; h < H; h++)
            for (int i = 0; i < Tq; i++) {
                const double *P = rP + (((size_t)b * H + h) * Tq + i) * T;
                const double *Pd = rPd + (((size_t)b * H + h) * Tq + i) * T;
                const float *dO = dout + ((size_t)b * Tq + i) * C + h * D;
                double dot = 0;
                for (int j = 0; j < T; j++) {
                    double s = 0;
                    for (int d = 0; d < D; d++) {
                        s += (double)dO[d] * KVAT(v, b, j, h * D + d);
                        KVAT(rdvv, b, j, h * D + d) += Pd[j] * dO[d];
                    }
                    if (p > 0) {
                        uint64_t idx = (((uint64_t)b * H + h) * Tq + i) * T + j;
                        s = pc_dropout_keep(seed, idx, p) ? s * keep_scale : 0.0;
                    }
                    dP[j] = s;
                    dot += s * P[j];
                }
                for (int j = 0; j < T; j++) {
                    double dS = P[j] * (dP[j] - dot) * scale;
                    for (int d = 0; d < D; d++) {
                        rdqv[((size_t)b * Tq + i) * ld + h * D + d] += dS * KVAT(k, b, j, h * D + d);
                        KVAT(rdkv, b, j, h * D + d) += dS * QAT(b, i, h * D + d);
                    }
                }
            }
#undef QAT
#undef KVAT
    pc_attention_backward(dq, dk, dv, dout, probs, q, k, v, &dims, p, seed);
    snprintf(name, sizeof name, "attention_backward B=%d Tq=%d T=%d H=%d D=%d mask=%d p=%.1f fused=%d (+=)",
             B, Tq, T, H, D, masked, p, fused);
    check_part(name, fused ? "dqkv" : "dq", dqbuf, rdq, nq);
    if (!fused) {
        check_part(name, "dk", dkbuf, rdk, nkv);
        check_part(name, "dv", dvbuf, rdv, nkv);
    }
    if (!fused) {
        /* _into writes every element and reads none: NaN-filled outputs get the bare gradients */
        for (size_t e = 0; e < nq; e++) { rdq[e] -= init_q[e]; dqbuf[e] = NAN; }
        for (size_t e = 0; e < nkv; e++) {
            rdk[e] -= init_k[e]; dkbuf[e] = NAN;
            rdv[e] -= init_v[e]; dvbuf[e] = NAN;
        }
        pc_attention_backward_into(dq, dk, dv, dout, probs, q, k, v, &dims, p, seed);
        snprintf(name, sizeof name, "attention_backward_into B=%d Tq=%d T=%d H=%d D=%d mask=%d p=%.1f",
                 B, Tq, T, H, D, masked, p);
        check_part(name, "dq", dqbuf, rdq, nq);
        check_part(name, "dk", dkbuf, rdk, nkv);
        check_part(name, "dv", dvbuf, rdv, nkv);
        /* any of dq, dk, dv not wanted (NULL): the others the same bits, its buffer untouched */
        float *part[3] = {pc_alloc(nq * 4), pc_alloc(nkv * 4), pc_alloc(nkv * 4)};
        const float *full[3] = {dqbuf, dkbuf, dvbuf};
        const size_t count[3] = {nq, nkv, nkv};
        bool same = true;
        for (int wanted = 0; wanted < 7; wanted++) {
            for (int i = 0; i < 3; i++)
                for (size_t e = 0; e < count[i]; e++) part[i][e] = NAN;
            pc_attention_backward_into(wanted & 1 ? part[0] : NULL, wanted & 2 ? part[1] : NULL,
                                       wanted & 4 ? part[2] : NULL, dout, probs, q, k, v, &dims,
                                       p, seed);
            for (int i = 0; i < 3; i++)
                for (size_t e = 0; e < count[i]; e++) {
                    const bool untouched = isnan(part[i][e]);
                    same &= wanted & (1 << i) ? memcmp(&part[i][e], &full[i][e], 4) == 0
                                              : untouched;
                }
        }
        snprintf(name, sizeof name, "attention_backward_into B=%d Tq=%d T=%d H=%d D=%d mask=%d "
                 "p=%.1f: dq, dk, dv each optional, the rest the same bits", B, Tq, T, H, D,
                 masked, p);
        check_true(name, same);
        for (int i = 0; i < 3; i++) pc_free(part[i]);
    }
    free(init_q); free(init_k); free(init_v);
    if (p > 0.0f) {
        /* marks_drops: the forward's output the same bits, each dropped probability negated
         * (and nothing else changed), the backward the same bits from the signs as from the
         * draws */
        pc_attention_dims marking = dims;
        marking.marks_drops = true;
        float *out_m = frand(nout, 100), *probs_m = frand(nprobs, 100);
        pc_attention_forward(out_m, probs_m, q, k, v, mask, &marking, p, seed);
        bool signs = true;
        for (size_t e = 0; e < nprobs; e++) {
            const float a = fabsf(probs_m[e]);
            signs &= memcmp(&a, &probs[e], 4) == 0 &&
                     (signbit(probs_m[e]) != 0) == !pc_dropout_keep(seed, e, p);
        }
        snprintf(name, sizeof name, "attention marks_drops B=%d Tq=%d T=%d H=%d D=%d mask=%d "
                 "p=%.1f fused=%d: out the same bits, dropped probabilities negated", B, Tq, T,
                 H, D, masked, p, fused);
        check_true(name, signs && memcmp(out_m, out, nout * 4) == 0);
        float *g[2][3];
        for (int m = 0; m < 2; m++) {
            const size_t count[3] = {nq, nkv, nkv};
            for (int i = 0; i < 3; i++) {
                g[m][i] = pc_alloc(count[i] * 4);
                for (size_t e = 0; e < count[i]; e++) g[m][i][e] = NAN;
            }
            pc_attention_backward_into(g[m][0], g[m][1], g[m][2], dout, m ? probs_m : probs, q,
                                       k, v, m ? &marking : &dims, p, seed);
        }
        snprintf(name, sizeof name, "attention marks_drops B=%d Tq=%d T=%d H=%d D=%d mask=%d "
                 "p=%.1f fused=%d: backward the same bits", B, Tq, T, H, D, masked, p, fused);
        check_true(name, memcmp(g[0][0], g[1][0], nq * 4) == 0 &&
                             memcmp(g[0][1], g[1][1], nkv * 4) == 0 &&
                             memcmp(g[0][2], g[1][2], nkv * 4) == 0);
        for (int m = 0; m < 2; m++)
            for (int i = 0; i < 3; i++) pc_free(g[m][i]);
        pc_free(out_m); pc_free(probs_m);
    }

    pc_free(qbuf);
    if (!fused) { pc_free(kbuf); pc_free(vbuf); pc_free(dkbuf); pc_free(dvbuf); free(rdk); free(rdv); }
    pc_free(mask); pc_free(out); pc_free(probs); pc_free(dout); pc_free(dqbuf);
    free(rP); free(rPd); free(rout); free(rdq); free(dP);
}

/* ------------------------------------------------------------------ threads */

/* the same op with 1 and 2 threads gives the same bits (work is split by owned rows/cols) */
/* A prefix read in place (pc_attention_prefix: P shared or per-sequence rows of keys and
 * values before each sequence's own) against the same attention over keys and values copied
 * into one (B, P+T) buffer with the prefix unmasked: probabilities, outputs, and every
 * gradient, the prefix's per sequence, under dropout and a mask. */
static void test_prefixed_attention(int B, int Tq, int T, int H, int D, int P, bool shared,
                                    bool masked, float p) {
    char name[200];
    const int C = H * D, Tk = P + T;
    const uint64_t seed = 777;
    float *q = frand((size_t)B * Tq * C, 1), *kv = frand((size_t)B * T * 2 * C, 1);
    float *pre = frand((size_t)(shared ? 1 : B) * P * 2 * C, 1);
    float *mask = NULL, *cat_mask = pc_alloc((size_t)B * Tk * sizeof(float));
    if (masked) mask = pc_alloc((size_t)B * T * sizeof(float));
    float *cat = pc_alloc((size_t)B * Tk * 2 * C * sizeof(float));
    for (int b = 0; b < B; b++) {
        const float *pb = pre + (shared ? 0 : (size_t)b * P * 2 * C);
        memcpy(cat + (size_t)b * Tk * 2 * C, pb, sizeof(float) * P * 2 * C);
        memcpy(cat + ((size_t)b * Tk + P) * 2 * C, kv + (size_t)b * T * 2 * C,
               sizeof(float) * T * 2 * C);
        for (int j = 0; j < Tk; j++) {
            float m = j < P ? 1.0f : (b == 0 || j - P < T - 1 - b) ? 1.0f : 0.0f;
            if (masked && j >= P) mask[b * T + j - P] = m;
            cat_mask[b * Tk + j] = masked ? m : 1.0f;
        }
    }
    float *dp = frand((size_t)B * P * 2 * C, 100); /* written, whatever it held */
    const pc_attention_prefix prefix = {P, pre, pre + C, 2 * C, shared ? 0 : (int64_t)P * 2 * C,
                                        dp, dp + C, 2 * C, (int64_t)P * 2 * C};
    const pc_attention_dims dims = {B, Tq, T, H, D, C, 2 * C, &prefix, false};
    const pc_attention_dims cat_dims = {B, Tq, Tk, H, D, C, 2 * C, NULL, false};
    const size_t nout = (size_t)B * Tq * C, nprobs = (size_t)B * H * Tq * Tk;
    float *out = frand(nout, 100), *probs = frand(nprobs, 100);
    float *rout = frand(nout, 100), *rprobs = frand(nprobs, 100);
    pc_attention_forward(out, probs, q, kv, kv + C, mask, &dims, p, seed);
    pc_attention_forward(rout, rprobs, q, cat, cat + C, cat_mask, &cat_dims, p, seed);
    snprintf(name, sizeof name, "prefixed attention B=%d Tq=%d T=%d H=%d D=%d P=%d shared=%d "
             "mask=%d p=%.1f", B, Tq, T, H, D, P, shared, masked, p);
    char what[260];
    double *ref = dfrom(rprobs, nprobs);
    snprintf(what, sizeof what, "%s: probs", name);
    check(what, probs, ref, nprobs);
    free(ref);
    ref = dfrom(rout, nout);
    snprintf(what, sizeof what, "%s: out", name);
    check(what, out, ref, nout);
    free(ref);
    float *again = frand(nprobs, 100);
    pc_attention_probs(again, q, kv, mask, &dims);
    snprintf(what, sizeof what, "%s: probs alone are the forward's bits", name);
    check_true(what, memcmp(again, probs, sizeof(float) * nprobs) == 0);

    /* backward: written (_into), then added (the prefix's rows are written either way) */
    float *dout = frand(nout, 1);
    for (int add = 0; add < 2; add++) {
        float *dq = frand((size_t)B * Tq * C, 1), *dkv = frand((size_t)B * T * 2 * C, 1);
        float *rdq = pc_alloc((size_t)B * Tq * C * sizeof(float));
        float *rdkv = pc_alloc((size_t)B * Tk * 2 * C * sizeof(float));
        double *want_q = dfrom(dq, (size_t)B * Tq * C), *want_kv = dfrom(dkv, (size_t)B * T * 2 * C);
        if (add)
            pc_attention_backward(dq, dkv, dkv + C, dout, probs, q, kv, kv + C, &dims, p, seed);
        else
            pc_attention_backward_into(dq, dkv, dkv + C, dout, probs, q, kv, kv + C, &dims, p,
                                       seed);
        pc_attention_backward_into(rdq, rdkv, rdkv + C, dout, rprobs, q, cat, cat + C,
                                   &cat_dims, p, seed);
        double *want_p = dzeros((size_t)B * P * 2 * C);
        for (size_t i = 0; i < (size_t)B * Tq * C; i++) want_q[i] = (add ? want_q[i] : 0) + rdq[i];
        for (int b = 0; b < B; b++) {
            for (size_t i = 0; i < (size_t)T * 2 * C; i++) {
                size_t at = (size_t)b * T * 2 * C + i;
                want_kv[at] = (add ? want_kv[at] : 0) + rdkv[((size_t)b * Tk + P) * 2 * C + i];
            }
            for (size_t i = 0; i < (size_t)P * 2 * C; i++)
                want_p[(size_t)b * P * 2 * C + i] = rdkv[(size_t)b * Tk * 2 * C + i];
        }
        snprintf(what, sizeof what, "%s: %s dq", name, add ? "+=" : "=");
        check(what, dq, want_q, (size_t)B * Tq * C);
        snprintf(what, sizeof what, "%s: %s dk|dv", name, add ? "+=" : "=");
        check(what, dkv, want_kv, (size_t)B * T * 2 * C);
        snprintf(what, sizeof what, "%s: the prefix's gradients per sequence", name);
        check(what, dp, want_p, (size_t)B * P * 2 * C);
        if (!add) {
            /* none of q, k, v wanted: the prefix's gradients alone, the same bits */
            float *kept = pc_alloc((size_t)B * P * 2 * C * sizeof(float));
            memcpy(kept, dp, (size_t)B * P * 2 * C * sizeof(float));
            for (size_t i = 0; i < (size_t)B * P * 2 * C; i++) dp[i] = NAN;
            pc_attention_backward_into(NULL, NULL, NULL, dout, probs, q, kv, kv + C, &dims, p,
                                       seed);
            snprintf(what, sizeof what, "%s: the prefix's gradients alone, the same bits", name);
            check_true(what, memcmp(kept, dp, (size_t)B * P * 2 * C * sizeof(float)) == 0);
            pc_free(kept);
        }
        pc_free(dq); pc_free(dkv); pc_free(rdq); pc_free(rdkv);
        free(want_q); free(want_kv); free(want_p);
    }
    if (p > 0.0f) {
        /* marks_drops with a prefix: the same bits, forward and backward, prefix's included */
        pc_attention_dims marking = dims;
        marking.marks_drops = true;
        float *out_m = frand(nout, 100), *probs_m = frand(nprobs, 100);
        pc_attention_forward(out_m, probs_m, q, kv, kv + C, mask, &marking, p, seed);
        bool same = memcmp(out_m, out, nout * 4) == 0;
        for (size_t e = 0; e < nprobs; e++) {
            const float a = fabsf(probs_m[e]);
            same &= memcmp(&a, &probs[e], 4) == 0 &&
                    (signbit(probs_m[e]) != 0) == !pc_dropout_keep(seed, e, p);
        }
        const size_t nq = (size_t)B * Tq * C, nkv = (size_t)B * T * 2 * C,
                     np = (size_t)B * P * 2 * C;
        float *g[2][3];
        for (int m = 0; m < 2; m++) {
            g[m][0] = pc_alloc(nq * 4);
            g[m][1] = pc_alloc(nkv * 4);
            g[m][2] = pc_alloc(np * 4);
            pc_attention_backward_into(g[m][0], g[m][1], g[m][1] + C, dout, m ? probs_m : probs,
                                       q, kv, kv + C, m ? &marking : &dims, p, seed);
            memcpy(g[m][2], dp, np * 4);
        }
        same &= memcmp(g[0][0], g[1][0], nq * 4) == 0 && memcmp(g[0][1], g[1][1], nkv * 4) == 0 &&
                memcmp(g[0][2], g[1][2], np * 4) == 0;
        snprintf(what, sizeof what, "%s: marks_drops, forward and backward the same bits", name);
        check_true(what, same);
        for (int m = 0; m < 2; m++)
            for (int i = 0; i < 3; i++) pc_free(g[m][i]);
        pc_free(out_m); pc_free(probs_m);
    }
    pc_free(q); pc_free(kv); pc_free(pre); pc_free(mask); pc_free(cat_mask); pc_free(cat);
    pc_free(dp); pc_free(out); pc_free(probs); pc_free(rout); pc_free(rprobs); pc_free(again);
    pc_free(dout);
}

/* Folded first-query attention against projecting keys and values explicitly (in double):
 * k_j = Wk x_j + bk, v_j = Wv x_j + bv after P prefix rows of k|v given as they are, then
 * softmax(q·k_j/√D + mask bias)·v per head. */
static void test_folded_attention(int B, int T, int H, int D, int P, bool masked) {
    const int C = H * D, ld_q = 2 * C, Tk = P + T; /* q rows inside a wider buffer */
    float *q = frand((size_t)B * ld_q, 1), *x = frand((size_t)B * T * C, 1);
    float *wk = frand((size_t)C * C, 0.5f), *wv = frand((size_t)C * C, 0.5f);
    float *bk = frand(C, 1), *bv = frand(C, 1);
    float *prefix = P ? frand((size_t)P * 2 * C, 2) : NULL;
    float *mask = NULL;
    if (masked) {
        mask = pc_alloc((size_t)B * T * sizeof(float));
        for (int b = 0; b < B; b++)
            for (int t = 0; t < T; t++) mask[b * T + t] = t < T - b ? 1.0f : 0.0f;
    }
    const pc_attention_dims dims = {B, 1, T, H, D, ld_q, 2 * C, NULL, false};
    const pc_folded_projections fold = {wk, bk, wv, bv, prefix, P, NULL, NULL};
    float *scratch = frand((size_t)pc_attention_folded_scratch_floats(&dims, P), 100);
    float *out = frand((size_t)B * C, 100);
    pc_attention_first_query_folded(out, NULL, q, x, &fold, mask, &dims, 0.0f, 0, scratch);

    double *ref = dzeros((size_t)B * C), *kj = dzeros((size_t)Tk * C), *vj = dzeros((size_t)Tk * C);
    double *p = dzeros(Tk);
    for (int j = 0; j < P; j++)
        for (int o = 0; o < C; o++) {
            kj[(size_t)j * C + o] = prefix[(size_t)j * 2 * C + o];
            vj[(size_t)j * C + o] = prefix[(size_t)j * 2 * C + C + o];
        }
    for (int b = 0; b < B; b++) {
        for (int j = 0; j < T; j++)
            for (int o = 0; o < C; o++) {
                double sk = bk[o], sv = bv[o];
                for (int c = 0; c < C; c++) {
                    double xc = x[((size_t)b * T + j) * C + c];
                    sk += (double)wk[(size_t)o * C + c] * xc;
                    sv += (double)wv[(size_t)o * C + c] * xc;
                }
                kj[(size_t)(P + j) * C + o] = sk;
                vj[(size_t)(P + j) * C + o] = sv;
            }
        for (int h = 0; h < H; h++) {
            double mx = -INFINITY, sum = 0;
            for (int j = 0; j < Tk; j++) {
                double s = 0;
                for (int d = 0; d < D; d++) s += (double)q[(size_t)b * ld_q + h * D + d] * kj[(size_t)j * C + h * D + d];
                bool off = mask && j >= P && mask[b * T + j - P] == 0.0f;
                p[j] = s / sqrt((double)D) + (off ? -FLT_MAX : 0.0);
                mx = fmax(mx, p[j]);
            }
            for (int j = 0; j < Tk; j++) sum += (p[j] = exp(p[j] - mx));
            for (int d = 0; d < D; d++) {
                double s = 0;
                for (int j = 0; j < Tk; j++) s += p[j] / sum * vj[(size_t)j * C + h * D + d];
                ref[(size_t)b * C + h * D + d] = s;
            }
        }
    }
    char name[128];
    snprintf(name, sizeof name, "attention_first_query_folded B=%d T=%d H=%d D=%d P=%d mask=%d",
             B, T, H, D, P, masked);
    check(name, out, ref, (size_t)B * C);
    pc_free(q); pc_free(x); pc_free(wk); pc_free(wv); pc_free(bk); pc_free(bv); pc_free(mask);
    pc_free(prefix); pc_free(scratch); pc_free(out);
    free(ref); free(kj); free(vj); free(p);
}

/* The folded backward of one query per sequence against the plain one: keys and values
 * projected explicitly, pc_attention_backward_into's dK, dV taken back through Wk, Wv (in
 * double) for the input gradient; dq and a shared prefix's gradients compared too, with
 * dropout (marked in the probabilities or drawn again) and a mask. from_inputs: after a
 * forward that folded the projections too (the probabilities and context checked against
 * pc_attention_forward's), the backward reads x and the projections' biases, not K and V;
 * scaled: with column scales sk, sv of their outputs too ((IA)³), and their gradients. */
static void test_folded_attention_backward(int B, int T, int H, int D, int P, bool masked,
                                           float p_drop, bool marks, bool from_inputs,
                                           bool scaled) {
    const int C = H * D, ld_q = 2 * C, Tk = P + T;
    float *q = frand((size_t)B * ld_q, 1), *x = frand((size_t)B * T * C, 1);
    float *wk = frand((size_t)C * C, 0.5f), *wv = frand((size_t)C * C, 0.5f);
    float *bkv = frand((size_t)2 * C, 1);
    float *skv = frand((size_t)2 * C, 0.5f); /* sk|sv: 1 ± 0.5 */
    for (int o = 0; o < 2 * C; o++) skv[o] = scaled ? 1.0f + skv[o] : 1.0f;
    float *kv = pc_alloc(sizeof(float) * (size_t)B * T * 2 * C);
    double *raw = dzeros((size_t)B * T * 2 * C); /* before the scales */
    for (int n = 0; n < B * T; n++)
        for (int o = 0; o < 2 * C; o++) {
            const float *w = (o < C ? wk : wv) + (size_t)(o % C) * C;
            double s = bkv[o];
            for (int c = 0; c < C; c++) s += (double)w[c] * x[(size_t)n * C + c];
            raw[(size_t)n * 2 * C + o] = s;
            kv[(size_t)n * 2 * C + o] = (float)(s * skv[o]);
        }
    float *pre = P ? frand((size_t)P * 2 * C, 2) : NULL;
    float *d_pre = P ? frand((size_t)B * P * 2 * C, 100) : NULL;
    float *d_pre_ref = P ? frand((size_t)B * P * 2 * C, 100) : NULL;
    float *mask = NULL;
    if (masked) {
        mask = pc_alloc((size_t)B * T * sizeof(float));
        for (int b = 0; b < B; b++)
            for (int t = 0; t < T; t++) mask[b * T + t] = t < T - b ? 1.0f : 0.0f;
    }
    pc_attention_prefix view = {P, pre, pre ? pre + C : NULL, 2 * C, 0,
                                d_pre_ref, d_pre_ref ? d_pre_ref + C : NULL, 2 * C,
                                (int64_t)P * 2 * C};
    pc_attention_dims dims = {B, 1, T, H, D, ld_q, 2 * C, P ? &view : NULL, marks};
    float *out = frand((size_t)B * C, 100), *probs = frand((size_t)B * H * Tk, 100);
    const uint64_t seed = 11;
    pc_attention_forward(out, probs, q, kv, kv + C, mask, &dims, p_drop, seed);
    float *dout = frand((size_t)B * C, 1);
    float *dq_ref = frand((size_t)B * ld_q, 100), *dkv = frand((size_t)B * T * 2 * C, 100);
    pc_attention_backward_into(dq_ref, dkv, dkv + C, dout, probs, q, kv, kv + C, &dims, p_drop,
                               seed);
    float *base = frand((size_t)B * T * C, 1);
    double *dx_ref = dfrom(base, (size_t)B * T * C);
    for (int n = 0; n < B * T; n++)
        for (int c = 0; c < C; c++)
            for (int o = 0; o < C; o++)
                dx_ref[(size_t)n * C + c] +=
                    (double)dkv[(size_t)n * 2 * C + o] * skv[o] * wk[(size_t)o * C + c] +
                    (double)dkv[(size_t)n * 2 * C + C + o] * skv[C + o] * wv[(size_t)o * C + c];

    char name[160], what[280];
    snprintf(name, sizeof name,
             "attention_first_query_backward_folded B=%d T=%d H=%d D=%d P=%d mask=%d p=%.1f "
             "marks=%d%s%s", B, T, H, D, P, masked, p_drop, marks, from_inputs ? " from x" : "",
             scaled ? ", scaled" : "");
    float *probs_used = probs;
    if (from_inputs) {
        /* the folded forward's probabilities (marked alike) and context */
        const pc_folded_projections f = {wk,  bkv, wv,  bkv + C, pre, P,
                                         scaled ? skv : NULL, scaled ? skv + C : NULL};
        float *fs = frand((size_t)pc_attention_folded_scratch_floats(&dims, P), 100);
        float *fout = frand((size_t)B * C, 100);
        probs_used = frand((size_t)B * H * Tk, 100);
        pc_attention_first_query_folded(fout, probs_used, q, x, &f, mask, &dims, p_drop, seed,
                                        fs);
        double *ref = dfrom(probs, (size_t)B * H * Tk);
        snprintf(what, sizeof what, "%s: the folded forward's probabilities", name);
        check(what, probs_used, ref, (size_t)B * H * Tk);
        bool signs = true;
        for (size_t e = 0; e < (size_t)B * H * Tk; e++)
            signs &= !signbit(probs_used[e]) == !signbit(probs[e]);
        snprintf(what, sizeof what, "%s: the folded forward drops what the plain one drops", name);
        check_true(what, signs);
        free(ref);
        ref = dfrom(out, (size_t)B * C);
        snprintf(what, sizeof what, "%s: the folded forward's context", name);
        check(what, fout, ref, (size_t)B * C);
        free(ref);
        pc_free(fs);
        pc_free(fout);
    }
    view.dk = d_pre;
    view.dv = d_pre ? d_pre + C : NULL;
    const pc_folded_projections fold = {wk, from_inputs ? bkv : NULL, wv,
                                        from_inputs ? bkv + C : NULL, NULL, 0,
                                        scaled ? skv : NULL, scaled ? skv + C : NULL};
    float *scratch = frand((size_t)pc_attention_folded_backward_scratch_floats(&dims), 100);
    float *dq = frand((size_t)B * ld_q, 100), *dx = pc_alloc(sizeof(float) * (size_t)B * T * C);
    memcpy(dx, base, sizeof(float) * (size_t)B * T * C);
    /* the biases' gradients, added to: the column sums of dK and dV */
    float *db = frand((size_t)2 * C, 1), *db2 = pc_alloc(sizeof(float) * 2 * C);
    memcpy(db2, db, sizeof(float) * 2 * C); /* for a second call, without dx */
    double *db_ref = dfrom(db, (size_t)2 * C);
    for (int n = 0; n < B * T; n++)
        for (int o = 0; o < 2 * C; o++) db_ref[o] += (double)dkv[(size_t)n * 2 * C + o] * skv[o];
    /* the scales' gradients, added to: Σ_n dK'_n ⊙ (Wk x_n + bk), and the values' alike */
    float *ds = frand((size_t)2 * C, 1), *ds2 = pc_alloc(sizeof(float) * 2 * C);
    memcpy(ds2, ds, sizeof(float) * 2 * C);
    double *ds_ref = dfrom(ds, (size_t)2 * C);
    for (int n = 0; n < B * T; n++)
        for (int o = 0; o < 2 * C; o++)
            ds_ref[o] += (double)dkv[(size_t)n * 2 * C + o] * raw[(size_t)n * 2 * C + o];
    /* the weights' gradients, added to: dWk = dKᵀ·x, dWv = dVᵀ·x */
    float *dw = frand((size_t)2 * C * C, 1), *dw2 = pc_alloc(sizeof(float) * 2 * C * C);
    memcpy(dw2, dw, sizeof(float) * 2 * C * C);
    double *dw_ref = dfrom(dw, (size_t)2 * C * C);
    for (int n = 0; n < B * T; n++)
        for (int o = 0; o < 2 * C; o++)
            for (int c = 0; c < C; c++)
                dw_ref[(size_t)o * C + c] +=
                    (double)dkv[(size_t)n * 2 * C + o] * skv[o] * x[(size_t)n * C + c];
    const pc_folded_grads grads = {dx, dw, dw + C * C, db, db + C, scaled ? ds : NULL,
                                   scaled ? ds + C : NULL};
    check_true(name, pc_attention_first_query_backward_folded(
                         dq, &grads, dout, probs_used, q, from_inputs ? NULL : kv,
                         from_inputs ? NULL : kv + C, x, &fold, &dims, p_drop, seed,
                         scratch) == 0);
    snprintf(what, sizeof what, "%s: dx", name);
    check(what, dx, dx_ref, (size_t)B * T * C);
    snprintf(what, sizeof what, "%s: the key and value biases' gradients", name);
    check(what, db, db_ref, (size_t)2 * C);
    snprintf(what, sizeof what, "%s: the key and value weights' gradients", name);
    check(what, dw, dw_ref, (size_t)2 * C * C);
    if (scaled) {
        snprintf(what, sizeof what, "%s: the key and value scales' gradients", name);
        check(what, ds, ds_ref, (size_t)2 * C);
    }
    /* dq's columns past H·D in each row are not its own: compare the rows' first C */
    for (int b = 0; b < B; b++)
        for (int c = C; c < ld_q; c++) dq[(size_t)b * ld_q + c] = dq_ref[(size_t)b * ld_q + c];
    if (from_inputs) { /* other sums: to rounding */
        double *ref = dfrom(dq_ref, (size_t)B * ld_q);
        snprintf(what, sizeof what, "%s: dq", name);
        check(what, dq, ref, (size_t)B * ld_q);
        free(ref);
        if (P) {
            ref = dfrom(d_pre_ref, (size_t)B * P * 2 * C);
            snprintf(what, sizeof what, "%s: the prefix's gradients", name);
            check(what, d_pre, ref, (size_t)B * P * 2 * C);
            free(ref);
        }
    } else {
        snprintf(what, sizeof what, "%s: dq the same bits as the plain backward", name);
        check_true(what, memcmp(dq, dq_ref, sizeof(float) * (size_t)B * ld_q) == 0);
        if (P) {
            snprintf(what, sizeof what, "%s: the prefix's gradients the same bits", name);
            check_true(what,
                       memcmp(d_pre, d_pre_ref, sizeof(float) * (size_t)B * P * 2 * C) == 0);
        }
    }
    /* no input gradient wanted (dx NULL): the same query, weight and bias gradients */
    float *dq2 = frand((size_t)B * ld_q, 100);
    for (int b = 0; b < B; b++) /* the columns past H·D as in dq */
        for (int c = C; c < ld_q; c++) dq2[(size_t)b * ld_q + c] = dq[(size_t)b * ld_q + c];
    snprintf(what, sizeof what,
             "%s: without dx, dq and the weights' and biases' gradients the same bits", name);
    const pc_folded_grads no_dx = {NULL, dw2, dw2 + C * C, db2, db2 + C, scaled ? ds2 : NULL,
                                   scaled ? ds2 + C : NULL};
    check_true(what, pc_attention_first_query_backward_folded(
                         dq2, &no_dx, dout, probs_used, q, from_inputs ? NULL : kv,
                         from_inputs ? NULL : kv + C, x, &fold, &dims, p_drop, seed,
                         scratch) == 0 &&
                         memcmp(db2, db, sizeof(float) * 2 * C) == 0 &&
                         memcmp(dw2, dw, sizeof(float) * 2 * C * C) == 0 &&
                         memcmp(ds2, ds, sizeof(float) * 2 * C) == 0 &&
                         memcmp(dq2, dq, sizeof(float) * (size_t)B * ld_q) == 0);
    pc_free(dq2);
    pc_free(db2);
    pc_free(dw);
    pc_free(dw2);
    free(dw_ref);
    pc_free(ds);
    pc_free(ds2);
    free(ds_ref);
    pc_free(skv);
    free(raw);
    if (from_inputs) pc_free(probs_used);
    pc_free(q); pc_free(x); pc_free(wk); pc_free(wv); pc_free(bkv); pc_free(kv); pc_free(pre);
    pc_free(d_pre); pc_free(d_pre_ref); pc_free(mask); pc_free(out); pc_free(probs); pc_free(dout);
    pc_free(dq_ref); pc_free(dkv); pc_free(base); pc_free(scratch); pc_free(dq); pc_free(dx);
    pc_free(db);
    free(dx_ref); free(db_ref);
}

static void test_thread_determinism(void) {
    const int N = 256, IC = 384, OC = 320, B = 2, T = 64, H = 4, D = 16, C = H * D;
    float *x = frand((size_t)N * IC, 1), *w = frand((size_t)OC * IC, 1), *bias = frand(OC, 1);
    float *y1 = pc_alloc((size_t)N * OC * 4), *y2 = pc_alloc((size_t)N * OC * 4);
    float *db1 = pc_alloc(OC * 4), *db2 = pc_alloc(OC * 4);
    float *q = frand((size_t)B * T * C, 1), *k = frand((size_t)B * T * C, 1),
          *v = frand((size_t)B * T * C, 1);
    float *o1 = pc_alloc((size_t)B * T * C * 4), *o2 = pc_alloc((size_t)B * T * C * 4);
    float *p1 = pc_alloc((size_t)B * H * T * T * 4), *p2 = pc_alloc((size_t)B * H * T * T * 4);
    const pc_attention_dims dims = {B, T, T, H, D, C, C, NULL, false};
    int before = pc_get_num_threads();
    pc_set_num_threads(1);
    pc_linear_forward(y1, x, w, bias, N, IC, OC);
    pc_linear_backward(NULL, NULL, db1, y1, x, w, N, IC, OC);
    pc_attention_forward(o1, p1, q, k, v, NULL, &dims, 0.1f, 99);
    pc_set_num_threads(2);
    pc_linear_forward(y2, x, w, bias, N, IC, OC);
    pc_linear_backward(NULL, NULL, db2, y2, x, w, N, IC, OC);
    pc_attention_forward(o2, p2, q, k, v, NULL, &dims, 0.1f, 99);
    check_true("threads: get_num_threads after set(2)", pc_get_num_threads() == 2);
    pc_set_num_threads(before);
    check_true("threads: linear_forward 1 vs 2 threads bitwise equal",
               memcmp(y1, y2, (size_t)N * OC * 4) == 0);
    check_true("threads: linear dbias 1 vs 2 threads bitwise equal", memcmp(db1, db2, OC * 4) == 0);
    check_true("threads: attention 1 vs 2 threads bitwise equal",
               memcmp(o1, o2, (size_t)B * T * C * 4) == 0 &&
               memcmp(p1, p2, (size_t)B * H * T * T * 4) == 0);
    /* called from the threads of a parallel region (workers, each on its own share of a
     * batch), the ops run on the calling thread alone, with the same bits */
    pc_set_num_threads(2);
    float *yw[2], *ow[2];
    int here[2] = {0, 0}, team = 0;
    for (int t = 0; t < 2; t++) {
        yw[t] = pc_alloc((size_t)N * OC * 4);
        ow[t] = pc_alloc((size_t)B * T * C * 4);
    }
    #pragma omp parallel num_threads(2)
    {
        int t = omp_get_thread_num();
        if (t == 0) team = omp_get_num_threads(); /* 1 under OMP_THREAD_LIMIT=1 */
        if (t < 2) {
            here[t] = pc_threads_here();
            pc_linear_forward(yw[t], x, w, bias, N, IC, OC);
            pc_attention_forward(ow[t], NULL, q, k, v, NULL, &dims, 0.0f, 0);
        }
    }
    pc_attention_forward(o2, NULL, q, k, v, NULL, &dims, 0.0f, 0);
    bool inside_one = pc_threads_here() == 2, inside_same = team >= 1;
    for (int t = 0; t < team && t < 2; t++) {
        /* a team of one is no active region: its ops may start threads of their own */
        inside_one = inside_one && (team == 1 || here[t] == 1);
        inside_same = inside_same && memcmp(yw[t], y1, (size_t)N * OC * 4) == 0 &&
                      memcmp(ow[t], o2, (size_t)B * T * C * 4) == 0;
    }
    check_true("threads: threads_here is all threads outside, 1 in a parallel region",
               inside_one);
    check_true("threads: ops inside a parallel region equal the all-threads result bitwise",
               inside_same);
    pc_set_num_threads(before);
    for (int t = 0; t < 2; t++) {
        pc_free(yw[t]);
        pc_free(ow[t]);
    }
    pc_free(x); pc_free(w); pc_free(bias); pc_free(y1); pc_free(y2); pc_free(db1); pc_free(db2);
    pc_free(q); pc_free(k); pc_free(v); pc_free(o1); pc_free(o2); pc_free(p1); pc_free(p2);
}

/* A child forked after the engine ran threads: GNU OpenMP would hang starting a team
 * there, so the engine holds the child to one thread (and says why). The child runs a
 * linear big enough to be split across threads; an alarm turns a hang into a failure. */
static void test_fork_after_threads(void) {
    const int N = 512, IC = 96, OC = 80; /* M·N·K above pc_sgemm's serial cut-off */
    float *x = frand((size_t)N * IC, 3), *w = frand((size_t)OC * IC, 4);
    float *y = pc_alloc((size_t)N * OC * 4), *y_child = pc_alloc((size_t)N * OC * 4);
    int before = pc_get_num_threads();
    pc_set_num_threads(2);
    pc_linear_forward(y, x, w, NULL, N, IC, OC); /* threads started in this process */
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        alarm(60);
        bool held = pc_get_num_threads() == 1 && pc_set_num_threads(2) == 1 &&
                    pc_fork_note()[0] != '\0';
        pc_linear_forward(y_child, x, w, NULL, N, IC, OC);
        bool same = memcmp(y, y_child, (size_t)N * OC * 4) == 0;
        _exit(held && same ? 0 : 1);
    }
    int status = 0;
    bool forked = pid > 0 && waitpid(pid, &status, 0) == pid;
    check_true("fork: a child forked after threads ran runs on one thread, same bits",
               forked && WIFEXITED(status) && WEXITSTATUS(status) == 0);
    check_true("fork: the parent keeps its threads and no note",
               pc_get_num_threads() == 2 && pc_fork_note()[0] == '\0');
    pc_set_num_threads(before);
    pc_free(x); pc_free(w); pc_free(y); pc_free(y_child);
}

/* ------------------------------------------------------------------ packed GEMM */

/* got within float rounding of ref, whose terms' absolute values sum to scale[i]: a wrong
 * or missing term is off by far more */
static void check_rounding(const char *what, const float *got, const double *ref,
                           const double *scale, size_t n) {
    size_t bad = 0, worst = 0;
    for (size_t i = 0; i < n; i++)
        if (!(fabs((double)got[i] - ref[i]) <= 1e-6 + 4 * FLT_EPSILON * scale[i])) {
            if (!bad) worst = i;
            bad++;
        }
    if (!bad) { n_passed++; printf("ok    %s\n", what); return; }
    n_failed++;
    printf("FAIL  %s: %zu of %zu elements off, e.g. [%zu] got %.9g want %.9g\n", what, bad, n,
           worst, got[worst], ref[worst]);
}

/* The double-precision reference of C = alpha·op(A)·op(B) + beta·C + bias (bias NULL: none)
 * over C's first N columns, its padding up to ldc kept (ref), and each element's scale for
 * check_rounding: the magnitudes of its terms summed (scale) */
static void gemm_reference(double *ref, double *scale, bool ta, bool tb, int M, int N, int K,
                           float alpha, const float *A, int lda, const float *B, int ldb,
                           float beta, const float *C, int ldc, const float *bias) {
    for (int i = 0; i < M; i++)
        for (int j = 0; j < ldc; j++) {
            double sum = 0, abs_sum = 0;
            for (int k = 0; j < N && k < K; k++) {
                const double term =
                    (double)(ta ? A[(int64_t)k * lda + i] : A[(int64_t)i * lda + k]) *
                    (tb ? B[(int64_t)j * ldb + k] : B[(int64_t)k * ldb + j]);
                sum += term;
                abs_sum += fabs(term);
            }
            const double old = C[(int64_t)i * ldc + j], b = bias && j < N ? bias[j] : 0.0;
            ref[(int64_t)i * ldc + j] = j < N ? alpha * sum + (beta == 0 ? 0 : beta * old) + b
                                              : old; /* padding untouched */
            scale[(int64_t)i * ldc + j] = fabs(alpha) * abs_sum + fabs(beta * old) + fabs(b);
        }
}

/* One product's operands for the GEMM tests: A and B random with padded leading dimensions,
 * C (M, ldc = N + 2) random, the reference and scales (gemm_reference) from that C, then C's
 * first N columns set to NaN where beta == 0 (the product must overwrite them) */
typedef struct {
    int lda, ldb, ldc;
    float *A, *B, *C;
    double *ref, *scale;
} gemm_case;

static gemm_case gemm_case_make(bool ta, bool tb, int M, int N, int K, float alpha, float beta,
                                const float *bias) {
    gemm_case g = {(ta ? M : K) + 3, (tb ? K : N) + 1, N + 2, NULL, NULL, NULL, NULL, NULL};
    g.A = frand((size_t)(ta ? K : M) * g.lda + 1, 1);
    g.B = frand((size_t)(tb ? N : K) * g.ldb + 1, 1);
    g.C = frand((size_t)M * g.ldc, 1);
    g.ref = dzeros((size_t)M * g.ldc);
    g.scale = dzeros((size_t)M * g.ldc);
    gemm_reference(g.ref, g.scale, ta, tb, M, N, K, alpha, g.A, g.lda, g.B, g.ldb, beta, g.C,
                   g.ldc, bias);
    if (beta == 0.0f)
        for (int i = 0; i < M; i++)
            for (int j = 0; j < N; j++) g.C[(int64_t)i * g.ldc + j] = NAN;
    return g;
}

static void gemm_case_free(gemm_case *g) {
    pc_free(g->A); pc_free(g->B); pc_free(g->C); free(g->ref); free(g->scale);
}

/* pc_sgemm_packed against a double-precision reference: every transpose case, padded
 * leading dimensions, alpha and beta (beta = 0 must overwrite a NaN-filled C), shapes on
 * both sides of the kernels' MR / NR (skx 32 / 12, haswell 6 / 16, penryn 8 / 4) and of
 * BLIS's KC and MC blocks (skx 384 and 480, haswell 256 and 168), whether or not the packed
 * path is the default. Where it is not available it must say so and leave C alone. */
static void test_sgemm_packed_path(const char *path);

static void test_sgemm_packed(void) {
    test_sgemm_packed_path("packed");
    if (pc_gemm_packed_has(PC_GEMM_PACKED_A_IN_PLACE)) test_sgemm_packed_path("packed-a");
}

static void test_sgemm_packed_path(const char *path) {
    const char *before = pc_gemm_path();
    const bool available = pc_set_gemm_path(path);
    static const int shapes[][3] = {{1, 1, 1}, {5, 3, 7}, {32, 12, 16}, {33, 13, 17},
                                    {31, 11, 383}, {64, 24, 385}, {481, 25, 40},
                                    {100, 700, 769}, {7, 3100, 20}, {129, 384, 1536},
                                    {6, 16, 256}, {169, 17, 257}, {3, 4097, 5}};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
        for (int trans = 0; trans < 4; trans++) {
            const int M = shapes[s][0], N = shapes[s][1], K = shapes[s][2];
            const bool ta = trans & 1, tb = trans & 2;
            const float alpha = trans == 3 ? -0.5f : 1.0f, beta = (s % 3 == 0) ? 0.0f : 0.75f;
            gemm_case g = gemm_case_make(ta, tb, M, N, K, alpha, beta, NULL);
            const int lda = g.lda, ldb = g.ldb, ldc = g.ldc;
            float *A = g.A, *B = g.B, *C = g.C;
            const double *ref = g.ref, *scale = g.scale;
            char name[128];
            snprintf(name, sizeof name, "sgemm_packed [%s] %dx%dx%d trans_a=%d trans_b=%d beta=%g",
                     path, M, N, K, ta, tb, beta);
            if (available) {
                bool done = pc_sgemm_packed(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, NULL);
                check_true(name, done);
                check_rounding(name, C, ref, scale, (size_t)M * ldc);
            } else {
                float *before = pc_alloc((size_t)M * ldc * sizeof(float));
                memcpy(before, C, (size_t)M * ldc * sizeof(float));
                bool done = pc_sgemm_packed(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, NULL);
                check_true(name, !done && memcmp(before, C, (size_t)M * ldc * sizeof(float)) == 0);
                pc_free(before);
            }
            gemm_case_free(&g);
        }
    pc_set_gemm_path(before);
    printf("      packed GEMM [%s] %s, %s by default\n", path, available ? "available" : "unavailable",
           pc_gemm_path());
}

/* pc_sgemm_narrow against a double-precision reference: every transpose case, padded
 * leading dimensions, alpha, beta (0 must overwrite a NaN-filled C) and a bias, on shapes
 * with a narrow side (a bottleneck's or a rank's) around the tiles' rows (6, 8), bands (48)
 * and vectors (4, 8, 16; pairs of them); then the same call on 1 and on 2 threads, bit for
 * bit, and padding past N untouched. */
static void test_sgemm_narrow(void) {
    static const int shapes[][3] = {{1, 1, 1},    {7, 3, 5},     {300, 24, 384},
                                    {300, 384, 24}, {24, 384, 300}, {384, 24, 300},
                                    {97, 8, 77},  {130, 33, 17}, {49, 47, 129},
                                    {5, 70, 200}, {40, 5, 0}};
    const int threads_before = pc_get_num_threads();
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
        for (int trans = 0; trans < 4; trans++)
            for (int with_bias = 0; with_bias < 2; with_bias++) {
                const int M = shapes[s][0], N = shapes[s][1], K = shapes[s][2];
                const bool ta = trans & 1, tb = trans & 2;
                const float alpha = trans == 3 ? -0.5f : 1.0f;
                const float beta = (s + (size_t)with_bias) % 2 ? 0.75f : 0.0f;
                float *bias = with_bias ? frand((size_t)N, 1) : NULL;
                gemm_case g = gemm_case_make(ta, tb, M, N, K, alpha, beta, bias);
                const int lda = g.lda, ldb = g.ldb, ldc = g.ldc;
                const float *A = g.A, *B = g.B, *C0 = g.C;
                float *C[2];
                int status[2];
                for (int t = 0; t < 2; t++) {
                    C[t] = pc_alloc((size_t)M * ldc * sizeof(float));
                    memcpy(C[t], C0, (size_t)M * ldc * sizeof(float));
                    pc_set_num_threads(t + 1);
                    status[t] = pc_sgemm_narrow(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C[t],
                                                ldc, bias);
                }
                pc_set_num_threads(threads_before);
                char name[160];
                snprintf(name, sizeof name, "sgemm_narrow %dx%dx%d trans_a=%d trans_b=%d beta=%g%s",
                         M, N, K, ta, tb, beta, bias ? " +bias" : "");
                check_true(name, status[0] == 0 && status[1] == 0);
                check_rounding(name, C[1], g.ref, g.scale, (size_t)M * ldc);
                char same[200];
                snprintf(same, sizeof same, "%s: 1 and 2 threads bitwise equal", name);
                check_true(same, memcmp(C[0], C[1], (size_t)M * ldc * sizeof(float)) == 0);
                pc_free(C[0]); pc_free(C[1]);
                if (bias) pc_free(bias);
                gemm_case_free(&g);
            }
}

/* A product's bits do not depend on how it is split: C (M, N) = alpha·op(A)·op(B) + beta·C
 * computed in blocks of s rows (of op(A) and C) or of s columns (of op(B) and C), for block
 * sizes around the kernels' tiles (MR = 6 or 8 or 32, NR = 4, 12 or 16) on our packed path
 * and for whole numbers of tiles on BLIS's own GEMM (pc_gemm_split_multiple), equals the
 * whole product bit for bit, and so does pc_sgemm on 2 threads; the whole product is within
 * 1e-5 of a double-precision reference, relative to the sum of its terms' magnitudes. Run
 * through every path this kernel set has (packed and BLIS), whichever is the default.
 * beta = 0 must overwrite a NaN-filled C; beta = 1 adds to it. */
/* one path, one beta: whole against the reference (sum, mag: the sum of op(A)·op(B)'s terms
 * and of their magnitudes), then in blocks */
static void sgemm_blocks_case(const char *path, int M, int N, int K, bool ta, bool tb,
                              float beta, const float *A, int lda, const float *B, int ldb,
                              const float *C0, int ldc, const double *sum, const double *mag) {
    static const int block_sizes[] = {1, 5, 6, 7, 31, 33};
    const float alpha = beta == 0.0f ? -0.75f : 1.0f;
    const size_t bytes = (size_t)M * ldc * sizeof(float);
    float *whole = pc_alloc(bytes), *part = pc_alloc(bytes), *start = pc_alloc(bytes);
    memcpy(start, C0, bytes);
    if (beta == 0.0f)
        for (int i = 0; i < M; i++)
            for (int j = 0; j < N; j++) start[(int64_t)i * ldc + j] = NAN;
    memcpy(whole, start, bytes);
    pc_sgemm_serial(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, whole, ldc);

    size_t bad = 0;
    double worst = 0;
    for (int64_t e = 0; e < (int64_t)M * ldc; e++) {
        const double old = C0[e];
        const bool inside = e % ldc < N;
        const double ref = inside ? alpha * sum[e] + beta * old : start[e];
        const double err = fabs(whole[e] - ref) /
                           (inside ? fabs(alpha) * mag[e] + fabs(beta * old) + 1e-30 : 1.0);
        if (!(err <= 1e-5) && !(!inside && isnan(whole[e]) && isnan(ref))) bad++;
        if (!(err <= worst)) worst = err;
    }
    char name[160], what[256];
    snprintf(name, sizeof name, "sgemm [%s] %dx%dx%d trans_a=%d trans_b=%d beta=%g", path, M, N,
             K, ta, tb, beta);
    snprintf(what, sizeof what, "%s: within 1e-5 of double (worst %.2g)", name, worst);
    check_true(what, bad == 0);

    /* any block sizes on our packed path; on BLIS's own GEMM whole numbers of its tiles
     * (pc_gemm_split_multiple: with alpha != 1 some kernel sets round edge tiles apart) */
    const int multiple = pc_gemm_split_multiple();
    const int tiles[] = {multiple, 2 * multiple, 3 * multiple};
    const int *sizes = multiple == 1 ? block_sizes : tiles;
    const size_t count = multiple == 1 ? sizeof block_sizes / sizeof block_sizes[0] : 3;
    char listed[64] = "";
    for (size_t b = 0; b < count; b++)
        snprintf(listed + strlen(listed), sizeof listed - strlen(listed), "%s%d", b ? ", " : "",
                 sizes[b]);
    bool rows_same = true, cols_same = true;
    for (size_t b = 0; b < count; b++) {
        const int s = sizes[b];
        memcpy(part, start, bytes);
        for (int i0 = 0; i0 < M; i0 += s) {
            const int m = M - i0 < s ? M - i0 : s;
            pc_sgemm_serial(ta, tb, m, N, K, alpha, ta ? A + i0 : A + (int64_t)i0 * lda, lda, B,
                            ldb, beta, part + (int64_t)i0 * ldc, ldc);
        }
        rows_same = rows_same && memcmp(part, whole, bytes) == 0;
        memcpy(part, start, bytes);
        for (int j0 = 0; j0 < N; j0 += s) {
            const int n = N - j0 < s ? N - j0 : s;
            pc_sgemm_serial(ta, tb, M, n, K, alpha, A, lda, tb ? B + (int64_t)j0 * ldb : B + j0,
                            ldb, beta, part + j0, ldc);
        }
        cols_same = cols_same && memcmp(part, whole, bytes) == 0;
    }
    snprintf(what, sizeof what, "%s: in blocks of %s rows, same bits", name, listed);
    check_true(what, rows_same);
    snprintf(what, sizeof what, "%s: in blocks of %s columns, same bits", name, listed);
    check_true(what, cols_same);
    /* threads split the big ones (above pc_sgemm's serial cut-off) */
    if ((int64_t)M * N * K >= ((int64_t)1 << 21)) {
        const int before = pc_get_num_threads();
        pc_set_num_threads(2);
        memcpy(part, start, bytes);
        pc_sgemm(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, part, ldc);
        pc_set_num_threads(before);
        snprintf(what, sizeof what, "%s: on 2 threads, same bits", name);
        check_true(what, memcmp(part, whole, bytes) == 0);
    }
    pc_free(whole); pc_free(part); pc_free(start);
}

/* pc_sgemm_biased: the bits of the product (alpha 1, beta 0) and then a pass adding the bias,
 * on 1 and 2 threads; C's padding untouched. ldc may be N (no padding: with N = 1 a
 * row-preferring kernel's tiles then have both strides 1) */
static void sgemm_biased_case(const char *path, int M, int N, int K, bool ta, bool tb,
                              const float *A, int lda, const float *B, int ldb, const float *C0,
                              int ldc) {
    const size_t bytes = (size_t)M * ldc * sizeof(float);
    float *want = pc_alloc(bytes), *got = pc_alloc(bytes), *bias = frand((size_t)N, 1);
    memcpy(want, C0, bytes);
    pc_sgemm(ta, tb, M, N, K, 1.0f, A, lda, B, ldb, 0.0f, want, ldc);
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++) want[(int64_t)i * ldc + j] += bias[j];
    const int before = pc_get_num_threads();
    for (int threads = 1; threads <= 2; threads++) {
        pc_set_num_threads(threads);
        memcpy(got, C0, bytes);
        for (int i = 0; i < M; i++)
            for (int j = 0; j < N; j++) got[(int64_t)i * ldc + j] = NAN; /* overwritten */
        pc_sgemm_biased(ta, tb, M, N, K, A, lda, B, ldb, bias, got, ldc);
        char what[200];
        snprintf(what, sizeof what, "sgemm_biased [%s] %dx%dx%d ldc=%d trans_a=%d trans_b=%d, %d "
                 "thread(s): the product's bits plus the bias", path, M, N, K, ldc, ta, tb, threads);
        check_true(what, memcmp(got, want, bytes) == 0);
    }
    pc_set_num_threads(before);
    pc_free(want); pc_free(got); pc_free(bias);
}

static void test_sgemm_blocks(void) {
    static const int shapes[][3] = {{1, 1, 1},      {1, 1000, 3},    {3, 17, 1000},
                                    {17, 257, 1},   {257, 3, 17},    {1000, 17, 257},
                                    {257, 1000, 3}, {17, 1000, 257}, {257, 17, 1000},
                                    {17, 257, 1000}, {300, 1, 40}};
    static const char *const paths[3] = {"packed", "packed-a", "blis"};
    const char *before = pc_gemm_path();
    bool have[3];
    for (int p = 0; p < 3; p++)
        if (!(have[p] = pc_set_gemm_path(paths[p])))
            printf("      sgemm blocks: no %s path for BLIS's %s kernels\n", paths[p], pc_blis_arch());
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
        for (int trans = 0; trans < 4; trans++) {
            const int M = shapes[s][0], N = shapes[s][1], K = shapes[s][2];
            const bool ta = trans & 1, tb = trans & 2;
            const int lda = (ta ? M : K) + 1, ldb = (tb ? K : N) + 2, ldc = N + 3;
            float *A = frand((size_t)(ta ? K : M) * lda, 1), *B = frand((size_t)(tb ? N : K) * ldb, 1);
            float *C0 = frand((size_t)M * ldc, 1);
            double *sum = dzeros((size_t)M * ldc), *mag = dzeros((size_t)M * ldc);
            for (int i = 0; i < M; i++)
                for (int j = 0; j < N; j++)
                    for (int k = 0; k < K; k++) {
                        const double t =
                            (double)(ta ? A[(int64_t)k * lda + i] : A[(int64_t)i * lda + k]) *
                            (tb ? B[(int64_t)j * ldb + k] : B[(int64_t)k * ldb + j]);
                        sum[(int64_t)i * ldc + j] += t;
                        mag[(int64_t)i * ldc + j] += fabs(t);
                    }
            for (int p = 0; p < 3; p++) {
                if (!have[p]) continue;
                pc_set_gemm_path(paths[p]);
                for (int beta = 0; beta < 2; beta++)
                    sgemm_blocks_case(paths[p], M, N, K, ta, tb, (float)beta, A, lda, B, ldb,
                                      C0, ldc, sum, mag);
                sgemm_biased_case(paths[p], M, N, K, ta, tb, A, lda, B, ldb, C0, ldc);
                sgemm_biased_case(paths[p], M, N, K, ta, tb, A, lda, B, ldb, C0, N); /* tight */
            }
            pc_free(A); pc_free(B); pc_free(C0); free(sum); free(mag);
        }
    pc_set_gemm_path(before);
    printf("      GEMM path by default: %s\n", before);
}

/* ------------------------------------------------------------------ runtime */

static void test_runtime(void) {
    check_true("runtime: pc_runtime_init returns 0", pc_runtime_init() == 0);
    check_true("runtime: pc_runtime_init is idempotent", pc_runtime_init() == 0);
    const char *arch = pc_blis_arch(), *ver = pc_blis_version();
    printf("      BLIS %s, arch %s, %d threads, simd: %s\n", ver, arch, pc_get_num_threads(),
           pc_cpu_simd());
    check_true("runtime: arch and version are named", arch && *arch && ver && *ver);
    check_true("runtime: default threads >= 1", pc_get_num_threads() >= 1 &&
                                                pc_default_num_threads() >= 1);
    /* dropout mask: keep-rate ~ 1-p, depends on (seed, i) only */
    int kept = 0, n = 100000;
    for (int i = 0; i < n; i++) kept += pc_dropout_keep(7, (uint64_t)i, 0.25f);
    check_true("dropout_keep: keep rate within 6 sigma of 0.75",
               fabs(kept / (double)n - 0.75) < 6 * sqrt(0.25 * 0.75 / n));
    check_true("dropout_keep: p = 0 keeps everything", pc_dropout_keep(1, 5, 0.0f));
    /* the kernels compare the hash's top 24 bits u with pc_keep_threshold(p) in integers:
     * the same as the float comparison u·2^-24 >= p for every u, on and between the
     * multiples of 2^-24 */
    const float ps[] = {0.0f, 1e-30f, 0x1p-24f, 0x1.8p-24f, 0.1f, 0.25f, 1.0f / 3.0f,
                        0.5f, nextafterf(0.5f, 1.0f), 0.9f, 1.0f - 0x1p-24f, 1.0f, 1.5f, NAN};
    bool same = true;
    for (size_t j = 0; j < sizeof ps / sizeof ps[0]; j++) {
        const uint64_t t = pc_keep_threshold(ps[j]);
        for (uint64_t u = 0; u < (1u << 24) && same; u++)
            same = (u >= t) == ((float)u * (1.0f / 16777216.0f) >= ps[j]);
    }
    check_true("dropout_keep: the integer threshold equals the float comparison for all 2^24 "
               "values", same);
    /* the kernels' masks, made by whole vectors, are pc_dropout_keep's: element i of
     * pc_dropout_forward, and element n·C + c of a row of C = 37 (rows starting off any
     * vector boundary) */
    enum { N = 29, C = 37, LEN = N * C };
    float ones[LEN], out[LEN], acc[LEN], rows[LEN];
    for (int i = 0; i < LEN; i++) ones[i] = 1.0f;
    const float drops[] = {0.1f, 0.5f, 0x1p-24f, 1.0f - 0x1p-24f};
    const uint64_t seeds[] = {0, 12345, ~0ull};
    bool fwd = true, bwd = true, res = true;
    for (size_t a = 0; a < sizeof drops / sizeof drops[0]; a++)
        for (size_t b = 0; b < sizeof seeds / sizeof seeds[0]; b++) {
            const float p = drops[a], scale = 1.0f / (1.0f - p);
            const uint64_t seed = seeds[b];
            pc_dropout_forward(out, ones, LEN, p, seed);
            for (int i = 0; i < LEN; i++) acc[i] = 2.0f, rows[i] = 0.5f;
            pc_dropout_backward(acc, ones, LEN, p, seed);
            pc_bias_dropout_residual(rows, ones, NULL, N, C, p, seed);
            for (int i = 0; i < LEN; i++) {
                const bool kept = pc_dropout_keep(seed, (uint64_t)i, p);
                fwd = fwd && out[i] == (kept ? scale : 0.0f);
                bwd = bwd && acc[i] == (kept ? 2.0f + scale : 2.0f);
                res = res && rows[i] == (kept ? 1.5f * scale : 0.0f);
            }
        }
    check_true("dropout: pc_dropout_forward keeps what pc_dropout_keep keeps", fwd);
    check_true("dropout: pc_dropout_backward adds where pc_dropout_keep keeps", bwd);
    check_true("dropout: pc_bias_dropout_residual's rows of 37 keep what pc_dropout_keep keeps",
               res);
}

/* Element counts that overflow int64 (or whose bytes do) are refused, never wrapped: a
 * wrapped count once allocated 16 bytes for a (2^62 + 1, 4) tensor. */
static void test_tensor_shapes(void) {
    const int64_t wraps[] = {((int64_t)1 << 62) + 1, 4}, huge[] = {(int64_t)1 << 40, (int64_t)1 << 40},
                  bytes[] = {(int64_t)1 << 33, (int64_t)1 << 31}, empty[] = {0, (int64_t)1 << 62},
                  fine[] = {0, (int64_t)1 << 60}, neg[] = {2, -1}, ok[] = {3, 5};
    check_true("tensor: (2^62+1, 4) is refused", pc_shape_numel(2, wraps, 4) == -1 &&
                                                  !pc_tensor_new(PC_FLOAT32, 2, wraps));
    check_true("tensor: (2^40, 2^40) is refused", pc_shape_numel(2, huge, 4) == -1);
    check_true("tensor: (2^33, 2^31) float32 is refused (bytes pass 2^63)",
               pc_shape_numel(2, bytes, 4) == -1);
    check_true("tensor: (0, 2^62) float32 is refused (NumPy could not view it)",
               pc_shape_numel(2, empty, 4) == -1);
    check_true("tensor: (0, 2^60) has 0 elements", pc_shape_numel(2, fine, 4) == 0);
    check_true("tensor: negative dimensions are refused", pc_shape_numel(2, neg, 4) == -1);
    check_true("tensor: too many dimensions are refused", pc_shape_numel(PC_MAX_DIMS + 1, ok, 4) == -1);
    pc_tensor *t = pc_tensor_new(PC_INT64, 2, ok);
    check_true("tensor: (3, 5) int64 has 15 elements", t && t->numel == 15);
    pc_tensor *v = t ? pc_tensor_view(t, 14, 1, (int64_t[]){2}) : NULL;
    check_true("tensor: a view past its base is refused", t && !v);
    pc_tensor_release(t);
}

/* Known issue, reported and not counted as a failure: with K = 0 and beta = 0, pc_sgemm
 * multiplies C by 0 instead of overwriting it (BLAS/BLIS semantics), so a NaN left in an
 * output buffer survives pc_linear_forward with in_features = 0 and no bias. */
static void known_issue_sgemm_k0(void) {
    float out[6], x[1] = {0}, w[1] = {0};
    for (int i = 0; i < 6; i++) out[i] = NAN;
    pc_linear_forward(out, x, w, NULL, 2, 0, 3);
    bool ok = true;
    for (int i = 0; i < 6; i++) ok = ok && out[i] == 0.0f;
    printf("%s linear_forward IC=0 without bias overwrites a NaN-filled output with 0%s\n",
           ok ? "ok   " : "xfail", ok ? " (known issue fixed: count it as a check)" :
           " (known issue: pc_sgemm K<=0 path does C *= beta)");
}


/* ------------------------------------------------------------------ adapter sites */

/* A one-layer encoder with random parameters (the same for the same seed) */
static pc_encoder *small_encoder(uint64_t seed) {
    pc_encoder_config cfg = {.vocab_size = 11, .hidden = 8, .layers = 1, .heads = 2,
                             .intermediate = 12, .max_positions = 9, .type_vocab_size = 2,
                             .layer_norm_eps = 1e-5f, .activation = PC_ACT_GELU,
                             .add_pooler = false, .head = PC_HEAD_NONE,
                             .word_padding_idx = -1, .position_padding_idx = -1};
    const char *err;
    pc_encoder *enc = pc_encoder_new(&cfg, &err);
    if (!enc) return NULL;
    rng_state = seed;
    for (int i = 0; i < pc_encoder_num_params(enc); i++) {
        pc_tensor *t = pc_encoder_param(enc, i, NULL, NULL);
        for (int64_t j = 0; j < t->numel; j++) pc_f32(t)[j] += 0.5f * urand();
        t->requires_grad = false;
    }
    return enc;
}

static pc_tensor *vector_of(int n, float spread) {
    int64_t shape[1] = {n};
    pc_tensor *t = pc_tensor_new(PC_FLOAT32, 1, shape);
    for (int i = 0; i < n; i++) pc_f32(t)[i] = 1.0f + spread * urand();
    return t;
}

/* (IA)³ at the value projection's output and the FFN output's input, through the adapter
 * interface alone: the hidden state equals a model with the vectors merged into the weights,
 * and the vectors' gradients equal the chain rule through the merged weights. */
static void test_encoder_adapters(void) {
    const int B = 2, T = 5, N = B * T, C = 8, I = 12;
    int64_t ids[10], pos[10], types[10];
    for (int n = 0; n < N; n++) { ids[n] = 1 + n % 10; pos[n] = n % T; types[n] = n % 2; }
    pc_encoder *enc = small_encoder(7), *ref = small_encoder(7);
    if (!enc || !ref) { check_true("encoder adapters: build", false); return; }
    pc_linear_slot *v = pc_encoder_linear(enc, 2), *o = pc_encoder_linear(enc, 5);
    check_true("encoder adapters: slots 2 and 5 are value and output.dense",
               strstr(v->name, "self.value") && strstr(o->name, ".output.dense") &&
               !strstr(o->name, "attention"));
    pc_tensor *lv = vector_of(C, 0.5f), *lo = vector_of(I, 0.5f);
    lv->requires_grad = lo->requires_grad = true;
    char err[128];
    pc_adapter *av = pc_adapter_new("ia3", PC_SITE_LINEAR_OUT, &lv, 1, 1.0f, 0.0f, C, C, err, sizeof err);
    pc_adapter *ao = pc_adapter_new("ia3", PC_SITE_LINEAR_IN, &lo, 1, 1.0f, 0.0f, I, C, err, sizeof err);
    pc_adapter *bad = pc_adapter_new("ia3", PC_SITE_LINEAR_IN, &lo, 1, 1.0f, 0.0f, C, C, err, sizeof err);
    check_true("encoder adapters: a vector of the wrong length is refused with a message",
               !bad && strstr(err, "must have 8 elements"));
    check_true("encoder adapters: an adapter built for another linear is refused",
               pc_encoder_set_adapters(enc, 2, PC_SITE_LINEAR_IN, &ao, 1) == -2);
    check_true("encoder adapters: set", av && ao &&
               pc_encoder_set_adapters(enc, 2, PC_SITE_LINEAR_OUT, &av, 1) == 0 &&
               pc_encoder_set_adapters(enc, 5, PC_SITE_LINEAR_IN, &ao, 1) == 0);
    /* the reference: value rows and bias scaled, output.dense columns scaled */
    pc_linear_slot *rv = pc_encoder_linear(ref, 2), *ro = pc_encoder_linear(ref, 5);
    for (int r = 0; r < C; r++) {
        for (int c = 0; c < C; c++) pc_f32(rv->weight)[r * C + c] *= pc_f32(lv)[r];
        pc_f32(rv->bias)[r] *= pc_f32(lv)[r];
        for (int c = 0; c < I; c++) pc_f32(ro->weight)[r * I + c] *= pc_f32(lo)[c];
    }
    rv->weight->requires_grad = rv->bias->requires_grad = ro->weight->requires_grad = true;
    float *d_hidden = frand((size_t)N * C, 1.0f);
    int rc = pc_encoder_forward(enc, ids, pos, types, NULL, B, T, false, true, false, 1) |
             pc_encoder_forward(ref, ids, pos, types, NULL, B, T, false, true, false, 1);
    double *want = dfrom(pc_encoder_hidden(ref), (size_t)N * C);
    check("encoder adapters: hidden state = merged weights' (value out, output.dense in)",
          pc_encoder_hidden(enc), want, (size_t)N * C);
    rc |= pc_encoder_backward(enc, NULL, d_hidden, NULL) | pc_encoder_backward(ref, NULL, d_hidden, NULL);
    check_true("encoder adapters: forwards and backwards ran", rc == 0);
    /* dl_v[r] = Σ_c G[r,c]·W[r,c] + g[r]·b[r]; dl_o[c] = Σ_r G[r,c]·W[r,c] (unmerged W, b) */
    double dv[8] = {0}, dlo[12] = {0};
    const float *Gv = pc_f32(rv->weight->grad), *gv = pc_f32(rv->bias->grad), *Go = pc_f32(ro->weight->grad);
    for (int r = 0; r < C; r++) {
        for (int c = 0; c < C; c++) dv[r] += (double)Gv[r * C + c] * pc_f32(v->weight)[r * C + c];
        dv[r] += (double)gv[r] * pc_f32(v->bias)[r];
        for (int c = 0; c < I; c++) dlo[c] += (double)Go[r * I + c] * pc_f32(o->weight)[r * I + c];
    }
    check("encoder adapters: value output vector's gradient = chain rule", pc_f32(lv->grad), dv, C);
    check("encoder adapters: output.dense input vector's gradient = chain rule", pc_f32(lo->grad), dlo, I);
    free(want);
    pc_free(d_hidden);
    pc_tensor_release(lv);
    pc_tensor_release(lo);
    pc_encoder_free(enc);
    pc_encoder_free(ref);
}

/* pc_encoder_capture_hidden_states: an eval forward split among workers with the last layer
 * on first tokens alone copies the embeddings' and every layer's output, and its last layer
 * runs on every token, equal to the hidden state of a forward that keeps its activations;
 * with the capture unset a forward writes nothing there. */
static void test_encoder_hidden_capture(void) {
    const int B = 3, T = 4, N = B * T, C = 8, L = 1;
    int64_t ids[12], pos[12], types[12];
    for (int n = 0; n < N; n++) { ids[n] = 1 + n % 10; pos[n] = n % T; types[n] = 0; }
    pc_encoder *enc = small_encoder(11);
    if (!enc) { check_true("hidden capture: build", false); return; }
    const size_t per = (size_t)N * C, all = (size_t)(L + 1) * per;
    float *buf = pc_alloc(sizeof(float) * all);
    for (size_t i = 0; i < all; i++) buf[i] = NAN;
    int rc = pc_encoder_forward(enc, ids, pos, types, NULL, B, T, false, true, false, 1);
    double *want = dfrom(pc_encoder_hidden(enc), per);
    pc_encoder_capture_hidden_states(enc, buf);
    rc |= pc_encoder_forward(enc, ids, pos, types, NULL, B, T, false, false, true, 1);
    pc_encoder_capture_hidden_states(enc, NULL);
    check_true("hidden capture: forwards ran", rc == 0);
    check("hidden capture: the last layer's rows = a kept forward's hidden state", buf + L * per,
          want, per);
    bool finite = true;
    for (size_t i = 0; i < per; i++) finite = finite && isfinite(buf[i]);
    check_true("hidden capture: the embeddings' output is written", finite);
    buf[0] = -7.0f;
    rc = pc_encoder_forward(enc, ids, pos, types, NULL, B, T, false, false, true, 1);
    check_true("hidden capture: unset, a forward writes nothing", rc == 0 && buf[0] == -7.0f);
    free(want);
    pc_free(buf);
    pc_encoder_free(enc);
}

int main(void) {
    pc_runtime_init();
    test_runtime();
    test_tensor_shapes();
    test_sgemm_packed();
    test_sgemm_blocks();
    test_sgemm_narrow();

    static const int lin[][3] = {{1, 1, 1}, {3, 5, 7}, {91, 17, 5}, {1, 64, 65}, {33, 70, 19}};
    for (size_t i = 0; i < sizeof lin / sizeof lin[0]; i++)
        for (int bias = 0; bias < 2; bias++) test_linear(lin[i][0], lin[i][1], lin[i][2], bias);

    static const int cols[][2] = {{1, 1}, {7, 63}, {129, 64}, {300, 130}, {203, 1536},
                                  {33, 2113}};
    for (size_t i = 0; i < sizeof cols / sizeof cols[0]; i++)
        test_column_kernels(cols[i][0], cols[i][1]);

    for (size_t i = 0; i < sizeof cols / sizeof cols[0]; i++)
        for (int tanh_approx = 0; tanh_approx < 2; tanh_approx++)
            test_gelu_scale_backward(cols[i][0], cols[i][1], tanh_approx);

    static const int ln[][2] = {{1, 1}, {3, 5}, {91, 17}, {2, 130}};
    for (size_t i = 0; i < sizeof ln / sizeof ln[0]; i++) test_layernorm(ln[i][0], ln[i][1]);

    /* rows ending in every count of floats past the last whole vector on AVX2 (1-7: its
     * partial stores go as 4, 2 and 1) and in 1, 2, 3, 5, 6, 7, 11, 12 and 15 on AVX-512 */
    static const int sm[][2] = {{1, 1}, {3, 5}, {91, 17}, {4, 300}, {2, 2},  {3, 3},
                                {2, 6},  {5, 7}, {2, 22},  {3, 27},  {2, 150}, {1, 31}};
    for (size_t i = 0; i < sizeof sm / sizeof sm[0]; i++) test_softmax(sm[i][0], sm[i][1]);

    static const int at[][4] = {{1, 1, 1, 1}, {1, 1, 3, 2}, {2, 5, 1, 4}, {2, 5, 3, 2},
                                {3, 7, 3, 5}, {2, 16, 4, 8},
                                /* register-tiled pair products: full and partial tiles of
                                 * rows and of 32, 16 and fewer columns; heads of widths
                                 * that leave partial blocks in the keys' transposes */
                                {2, 37, 2, 16}, {1, 40, 1, 48}, {2, 24, 3, 32}, {2, 21, 2, 12},
                                /* a pair of vectors whose second is partial: 27 keys are
                                 * 16 + 11 (AVX-512) and 2·8 + 8 + 3 (AVX2) */
                                {2, 27, 2, 16}};
    for (size_t i = 0; i < sizeof at / sizeof at[0]; i++)
        for (int masked = 0; masked < 2; masked++) {
            test_attention(at[i][0], at[i][1], at[i][1], at[i][2], at[i][3], masked, 0.0f, false);
            test_attention(at[i][0], at[i][1], at[i][1], at[i][2], at[i][3], masked, 0.3f, false);
            /* fewer queries than keys (one per sequence, as the classification layer) */
            test_attention(at[i][0], 1, at[i][1], at[i][2], at[i][3], masked, 0.3f, false);
        }
    test_attention(3, 2, 5, 2, 3, true, 0.0f, false);
    test_attention(2, 6, 6, 3, 4, true, 0.0f, true);
    test_attention(2, 6, 6, 3, 4, true, 0.2f, true);
    test_attention(2, 33, 33, 2, 32, true, 0.2f, true);
    /* prefixes: tiled (P + T >= 16) and not, 1 and several rows, one query or all */
    static const int prefixed[][5] = {{1, 1, 1, 1, 1}, {2, 5, 3, 2, 3}, {3, 13, 2, 8, 4},
                                      {2, 40, 4, 16, 5}, {2, 24, 3, 32, 20},
                                      /* MiniLM's 128 tokens and 20 rows: 148 keys end in a
                                       * partial pair of vectors on AVX-512 */
                                      {1, 128, 2, 32, 20}, {2, 9, 2, 16, 18}};
    for (size_t i = 0; i < sizeof prefixed / sizeof prefixed[0]; i++)
        for (int shared = 0; shared < 2; shared++)
            for (int masked = 0; masked < 2; masked++) {
                const int *c = prefixed[i];
                test_prefixed_attention(c[0], c[1], c[1], c[2], c[3], c[4], shared, masked,
                                        masked ? 0.3f : 0.0f);
                test_prefixed_attention(c[0], 1, c[1], c[2], c[3], c[4], shared, masked, 0.0f);
            }
    static const int folded[][4] = {{1, 1, 1, 1}, {2, 5, 3, 2}, {3, 17, 2, 8}, {2, 40, 4, 16}};
    for (size_t i = 0; i < sizeof folded / sizeof folded[0]; i++)
        for (int masked = 0; masked < 2; masked++)
            for (int P = 0; P < 2; P++) /* without a prefix, then with one of 1 or 5 rows */
                test_folded_attention(folded[i][0], folded[i][1], folded[i][2], folded[i][3],
                                      P ? 1 + 4 * (int)(i % 2) : 0, masked);

    static const int folded_back[][5] = {{1, 1, 1, 1, 0}, {2, 5, 3, 2, 0}, {3, 17, 2, 8, 3},
                                         {2, 40, 4, 16, 0}, {2, 33, 2, 32, 20}};
    for (size_t i = 0; i < sizeof folded_back / sizeof folded_back[0]; i++)
        for (int masked = 0; masked < 2; masked++)
            for (int drop = 0; drop < 3; drop++) /* none; marked; drawn again */
                for (int from = 0; from < 3; from++) { /* K, V; x; x with scales */
                    const int *c = folded_back[i];
                    test_folded_attention_backward(c[0], c[1], c[2], c[3], c[4], masked,
                                                   drop ? 0.3f : 0.0f, drop == 1, from > 0,
                                                   from == 2);
                }

    test_encoder_adapters();
    test_encoder_hidden_capture();
    test_thread_determinism();
    test_fork_after_threads();
    known_issue_sgemm_k0();

    printf("%d passed, %d failed\n", n_passed, n_failed);
    return n_failed ? 1 : 0;
}
