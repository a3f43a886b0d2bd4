/* Bottleneck adapters (Houlsby et al. 2019; Pfeiffer et al. 2021) at a block site, with the
 * data flow of AdapterHub's `adapters` (Adapter.pre_forward / forward / post_forward) for
 * one adapter. h is the block's branch output after its dropout, x its residual input, LN
 * the block's own LayerNorm; per row:
 *
 *   pre     s = h + x; z = original_ln_before ? LN(s) : h
 *           residual r = h (residual_before_ln True), s ("post_add" with original_ln_before),
 *           or z (False)
 *   adapter z1 = ln_before ? LNb(z) : z
 *           d = z1·Wdᵀ + bd (bottleneck r);  a = f(d);  u = a·Wuᵀ + bu
 *           q = dropout(u · scaling)   (scaling: a number, a learned scalar or per channel)
 *           o = q · g with g = mean over the sequence's rows of sigmoid(z·wg + bg), if gated
 *           o += r before (adapter_residual_before_ln) or after LNa (ln_after)
 *   post    out = original_ln_after ? LN(o + x) : o
 *
 * The backward mirrors it, in as few passes over the batch as the options allow (the sums
 * and LayerNorms fused, the branch's dropout applied by its last one). A forward that keeps
 * its activations saves, as (N, width) matrices in the site's buffer: the LayerNorms'
 * statistics and inputs, z (unless it is h, which the backward is handed again), z1, d, a,
 * u and the gate's sigmoids; one that does not works through sequences in chunks with
 * scratch of its own. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../ops/kernels.h"
#include "adapter.h"

enum { T_DOWN_W, T_DOWN_B, T_UP_W, T_UP_B, T_NB_W, T_NB_B, T_NA_W, T_NA_B, T_GATE_W, T_GATE_B,
       T_SCALE, NUM_TENSORS };
enum { O_ACT, O_RESIDUAL, O_LN_BEFORE, O_LN_AFTER, O_ARB, O_SCALING, O_DROPOUT, O_EPS,
       NUM_OPTIONS };
enum { ACT_RELU, ACT_SILU, ACT_GELU, ACT_GELU_TANH, ACT_TANH, ACT_LEAKY, ACT_LINEAR };
enum { RES_Z = 0, RES_H = 1, RES_S = 2 }; /* residual_before_ln False, True, "post_add" */
enum { CHUNK_ROWS = 256 };                /* rows per chunk of a forward that keeps nothing */

static const char *const tensor_names[NUM_TENSORS] = {
    "down_weight", "down_bias", "up_weight", "up_bias", "norm_before_weight",
    "norm_before_bias", "norm_after_weight", "norm_after_bias", "gate_weight", "gate_bias",
    "scaling"};
static const char *const option_names[NUM_OPTIONS] = {
    "non_linearity", "residual_before_ln", "original_ln_before", "original_ln_after",
    "adapter_residual_before_ln", "scaling", "dropout", "eps"};

/* ------------------------------------------------------------ the adapter's shape */

typedef struct {
    int C, r;
    int act, res;
    bool ln_before_orig, ln_after_orig, arb, norm_before, norm_after, gated;
    const float *Wd, *bd, *Wu, *bu, *nbw, *nbb, *naw, *nab, *wg, *bg, *scale;
    int scale_len; /* 0: the number opt[O_SCALING]; 1: learned scalar; C: per channel */
    float scale_value, p, eps;
} shape;

static shape shape_of(const pc_adapter *a, const pc_block_call *c) {
    pc_tensor *const *t = a->t;
    shape s = {0};
    s.C = (int)t[T_DOWN_W]->shape[1];
    s.r = (int)t[T_DOWN_W]->shape[0];
    s.act = (int)a->opt[O_ACT];
    s.res = (int)a->opt[O_RESIDUAL];
    s.ln_before_orig = a->opt[O_LN_BEFORE] != 0.0f;
    s.ln_after_orig = a->opt[O_LN_AFTER] != 0.0f;
    s.arb = a->opt[O_ARB] != 0.0f;
    if (s.res == RES_S && !s.ln_before_orig) s.res = RES_H; /* no s without the LayerNorm */
    s.norm_before = t[T_NB_W] != NULL;
    s.norm_after = t[T_NA_W] != NULL;
    s.gated = t[T_GATE_W] != NULL;
    s.Wd = pc_f32(t[T_DOWN_W]);
    s.bd = pc_f32(t[T_DOWN_B]);
    s.Wu = pc_f32(t[T_UP_W]);
    s.bu = pc_f32(t[T_UP_B]);
    s.nbw = pc_f32(t[T_NB_W]);
    s.nbb = pc_f32(t[T_NB_B]);
    s.naw = pc_f32(t[T_NA_W]);
    s.nab = pc_f32(t[T_NA_B]);
    s.wg = pc_f32(t[T_GATE_W]);
    s.bg = pc_f32(t[T_GATE_B]);
    s.scale = pc_f32(t[T_SCALE]);
    s.scale_len = t[T_SCALE] ? (int)t[T_SCALE]->numel : 0;
    s.scale_value = a->opt[O_SCALING];
    s.p = c && c->training ? a->opt[O_DROPOUT] : 0.0f;
    s.eps = a->opt[O_EPS];
    return s;
}

static bool is_vector(const pc_tensor *t, int64_t n) { return t && t->numel == n; }

static int bn_check(pc_tensor *const *t, const float *opt, int C, char *err, size_t errlen) {
    const pc_tensor *Wd = t[T_DOWN_W];
    const int64_t r = Wd->ndim == 2 ? Wd->shape[0] : -1;
    if (Wd->ndim != 2 || Wd->shape[1] != C || r < 1 || !is_vector(t[T_DOWN_B], r) ||
        t[T_UP_W]->ndim != 2 || t[T_UP_W]->shape[0] != C || t[T_UP_W]->shape[1] != r ||
        !is_vector(t[T_UP_B], C)) {
        snprintf(err, errlen, "bottleneck: down_weight must be (r, %d), down_bias (r,), "
                 "up_weight (%d, r) and up_bias (%d,) with r >= 1", C, C, C);
        return -1;
    }
    for (int k = T_NB_W; k <= T_NA_B; k += 2)
        if ((t[k] != NULL) != (t[k + 1] != NULL) ||
            (t[k] && (!is_vector(t[k], C) || !is_vector(t[k + 1], C)))) {
            snprintf(err, errlen, "bottleneck: %s and %s go together, each of %d elements",
                     tensor_names[k], tensor_names[k + 1], C);
            return -1;
        }
    if ((t[T_GATE_W] != NULL) != (t[T_GATE_B] != NULL) ||
        (t[T_GATE_W] && (!is_vector(t[T_GATE_W], C) || !is_vector(t[T_GATE_B], 1)))) {
        snprintf(err, errlen, "bottleneck: gate_weight (1, %d) and gate_bias (1,) go together", C);
        return -1;
    }
    if (t[T_SCALE] && t[T_SCALE]->numel != 1 && t[T_SCALE]->numel != C) {
        snprintf(err, errlen, "bottleneck: a scaling tensor has 1 element (learned) or %d "
                 "(channel), got %lld", C, (long long)t[T_SCALE]->numel);
        return -1;
    }
    if (!(opt[O_ACT] >= ACT_RELU && opt[O_ACT] <= ACT_LINEAR) ||
        !(opt[O_RESIDUAL] >= 0 && opt[O_RESIDUAL] <= 2)) {
        snprintf(err, errlen, "bottleneck: bad non_linearity or residual_before_ln code");
        return -1;
    }
    if (!(opt[O_DROPOUT] >= 0.0f && opt[O_DROPOUT] < 1.0f) || !(opt[O_EPS] > 0.0f)) {
        snprintf(err, errlen, "bottleneck: dropout must be in [0, 1) and eps > 0, got %g and %g",
                 opt[O_DROPOUT], opt[O_EPS]);
        return -1;
    }
    return 0;
}

static const float option_defaults[NUM_OPTIONS] = {ACT_RELU, RES_H, 1, 1, 0, 1.0f, 0.0f, 1e-5f};

/* words the options take besides numbers */
static int bn_option_word(int option, const char *word, float *value) {
    static const char *const acts[] = {"relu", "silu", "gelu", "gelu_new", "tanh", "leakyrelu",
                                       "linear"};
    if (option == O_ACT) {
        if (!strcmp(word, "swish")) { *value = ACT_SILU; return 0; }
        for (int i = 0; i <= ACT_LINEAR; i++)
            if (!strcmp(word, acts[i])) { *value = (float)i; return 0; }
    }
    if (option == O_RESIDUAL && !strcmp(word, "post_add")) { *value = RES_S; return 0; }
    return -1;
}

/* ------------------------------------------------------------ activations */

static float act_forward(int kind, float v) {
    switch (kind) {
    case ACT_RELU: return v > 0.0f ? v : 0.0f;
    case ACT_SILU: return v / (1.0f + expf(-v));
    case ACT_GELU: return 0.5f * v * (1.0f + erff(v * 0.70710678118654752f));
    case ACT_GELU_TANH:
        return 0.5f * v * (1.0f + tanhf(0.79788456080286536f * (v + 0.044715f * v * v * v)));
    case ACT_TANH: return tanhf(v);
    case ACT_LEAKY: return v > 0.0f ? v : 0.01f * v;
    default: return v;
    }
}

/* d f(v) / dv */
static float act_slope(int kind, float v) {
    switch (kind) {
    case ACT_RELU: return v > 0.0f ? 1.0f : 0.0f;
    case ACT_SILU: {
        const float s = 1.0f / (1.0f + expf(-v));
        return s * (1.0f + v * (1.0f - s));
    }
    case ACT_GELU:
        return 0.5f * (1.0f + erff(v * 0.70710678118654752f)) +
               v * 0.39894228040143268f * expf(-0.5f * v * v);
    case ACT_GELU_TANH: {
        const float k = 0.79788456080286536f, u = k * (v + 0.044715f * v * v * v);
        const float th = tanhf(u);
        return 0.5f * (1.0f + th) + 0.5f * v * (1.0f - th * th) * k * (1.0f + 3 * 0.044715f * v * v);
    }
    case ACT_TANH: {
        const float th = tanhf(v);
        return 1.0f - th * th;
    }
    case ACT_LEAKY: return v > 0.0f ? 1.0f : 0.01f;
    default: return 1.0f;
    }
}

/* ------------------------------------------------------------ activations saved */

/* Where a forward's intermediates of n rows live: (n, width) matrices side by side */
typedef struct {
    float *pre_mean, *pre_rstd, *z, *nb_mean, *nb_rstd, *z1, *d, *a, *u, *sig, *g, *na_mean,
        *na_rstd, *na_in, *po_mean, *po_rstd, *po_in, *s;
} rows_layout;

/* lays out n rows from base (base NULL: only counts); returns the floats taken */
static int64_t lay_out(const shape *s, int64_t n, float *base, rows_layout *L) {
    int64_t used = 0;
#define TAKE(field, width, cond)                              \
    do {                                                      \
        L->field = (cond) && base ? base + used : NULL;       \
        used += (cond) ? n * (width) : 0;                     \
    } while (0)
    TAKE(pre_mean, 1, s->ln_before_orig);
    TAKE(pre_rstd, 1, s->ln_before_orig);
    TAKE(z, s->C, s->ln_before_orig); /* else z is h itself, which the backward gets again */
    TAKE(nb_mean, 1, s->norm_before);
    TAKE(nb_rstd, 1, s->norm_before);
    TAKE(z1, s->C, s->norm_before);
    TAKE(d, s->r, true);
    TAKE(a, s->r, true);
    TAKE(u, s->C, true);
    TAKE(sig, 1, s->gated);
    TAKE(g, 1, s->gated);
    TAKE(na_mean, 1, s->norm_after);
    TAKE(na_rstd, 1, s->norm_after);
    TAKE(na_in, s->C, s->norm_after);
    TAKE(po_mean, 1, s->ln_after_orig);
    TAKE(po_rstd, 1, s->ln_after_orig);
    TAKE(po_in, s->C, s->ln_after_orig);
    TAKE(s, s->C, s->ln_before_orig); /* h + x, the first LayerNorm's input */
#undef TAKE
    return used;
}

/* rows are independent unless a gate averages over each sequence's rows */
static unsigned bn_keeps(const pc_adapter *a) {
    return a->t[T_GATE_W] ? 0u : PC_KEEPS_FIRST_TOKEN_ONLY;
}

static int64_t bn_saved_per_row(const pc_adapter *a, int in, int out, bool keeping) {
    if (!keeping) return 0;
    const shape s = shape_of(a, NULL);
    rows_layout L;
    return lay_out(&s, 1, NULL, &L);
}

/* the scaling of channel c */
static float scale_at(const shape *s, int c) {
    return s->scale_len == 0 ? s->scale_value : s->scale_len == 1 ? s->scale[0] : s->scale[c];
}

/* ------------------------------------------------------------ forward */

/* the adapter's input z: LN(h + x) as saved, or h itself */
static const float *z_of(const shape *s, const rows_layout *L, const float *h) {
    return s->ln_before_orig ? L->z : h;
}

/* Rows [0, n) (rows row0.. of the batch, sequences of T rows): out from h and x. Returns 0,
 * or -1 when out of memory. */
static int forward_rows(const shape *s, const pc_block_call *c, const rows_layout *L, int n,
                         int64_t row0, float *out, const float *h, const float *x,
                         uint64_t seed) {
    const int C = s->C, r = s->r;
    const int64_t nC = (int64_t)n * C;
    /* pre */
    if (s->ln_before_orig)
        pc_layernorm_forward_sum(L->z, L->pre_mean, L->pre_rstd, L->s, h, x, NULL, c->ln_w,
                                 c->ln_b, n, C, c->ln_eps);
    const float *z = z_of(s, L, h);
    /* down, non-linearity, up */
    const float *z1 = z;
    if (s->norm_before) {
        pc_layernorm_forward(L->z1, L->nb_mean, L->nb_rstd, z, s->nbw, s->nbb, n, C, s->eps);
        z1 = L->z1;
    }
    if (pc_sgemm_narrow(false, true, n, r, C, 1.0f, z1, C, s->Wd, C, 0.0f, L->d, r, s->bd) < 0)
        return -1;
    PC_PARALLEL_FOR((int64_t)n * r * 8)
    for (int64_t i = 0; i < (int64_t)n * r; i++) L->a[i] = act_forward(s->act, L->d[i]);
    if (pc_sgemm_narrow(false, true, n, C, r, 1.0f, L->a, r, s->Wu, r, 0.0f, L->u, C, s->bu) < 0)
        return -1;
    if (s->gated) {
        /* the sequences' gates (ops/gate.c) into g's first entries, then spread to each row,
         * from the last sequence back (row b·T + t ≥ b: no gate is overwritten unread) */
        const int T = c->T, seqs = n / T;
        pc_gate_forward(L->sig, L->g, z, C, s->wg, s->bg, n, T, C, 1);
        for (int b = seqs - 1; b >= 0; b--)
            for (int t = T - 1; t >= 0; t--) L->g[(int64_t)b * T + t] = L->g[b];
    }
    /* post, where o is u + h: LN((u + h) + x) in one pass, nothing of o stored */
    if (s->ln_after_orig && !s->norm_after && s->res == RES_H && s->p == 0.0f && !s->gated &&
        s->scale_len == 0 && s->scale_value == 1.0f) {
        pc_layernorm_forward_sum(out, L->po_mean, L->po_rstd, L->po_in, L->u, h, x, c->ln_w,
                                 c->ln_b, n, C, c->ln_eps);
        return 0;
    }
    /* o = dropout(u · scaling)·g, plus the residual unless a LayerNorm (LNa) comes between:
     * into LNa's input, or out */
    const bool residual_now = s->arb || !s->norm_after;
    float *o_rows = s->norm_after ? L->na_in : out;
    const float keep_scale = s->p > 0.0f ? 1.0f / (1.0f - s->p) : 1.0f;
    PC_PARALLEL_FOR(nC)
    for (int i = 0; i < n; i++) {
        float *o = o_rows + (int64_t)i * C;
        const float *u = L->u + (int64_t)i * C;
        const float *res = s->res == RES_Z ? z + (int64_t)i * C : h + (int64_t)i * C;
        const float *xs = x + (int64_t)i * C;
        const uint64_t first = (uint64_t)(row0 + i) * (uint64_t)C;
        if (s->p == 0.0f && s->scale_len != C) {
            /* one scaling, no dropout: branch-free loops (a gate of 1 multiplies exactly) */
            const float sc = scale_at(s, 0), g = s->gated ? L->g[i] : 1.0f;
            if (!residual_now)
                for (int k = 0; k < C; k++) o[k] = u[k] * sc * g;
            else if (s->res == RES_S)
                for (int k = 0; k < C; k++) o[k] = u[k] * sc * g + (res[k] + xs[k]);
            else
                for (int k = 0; k < C; k++) o[k] = u[k] * sc * g + res[k];
            continue;
        }
        for (int k = 0; k < C; k++) {
            float q = u[k] * scale_at(s, k);
            if (s->p > 0.0f) q = pc_keep(seed, first + k, s->p) ? q * keep_scale : 0.0f;
            if (s->gated) q *= L->g[i];
            if (residual_now) q += s->res == RES_S ? res[k] + xs[k] : res[k];
            o[k] = q;
        }
    }
    if (s->norm_after) {
        pc_layernorm_forward(out, L->na_mean, L->na_rstd, L->na_in, s->naw, s->nab, n, C, s->eps);
        if (!s->arb) {
            const float *res = s->res == RES_Z ? z : h;
            PC_PARALLEL_FOR(nC)
            for (int64_t i = 0; i < nC; i++) out[i] += s->res == RES_S ? res[i] + x[i] : res[i];
        }
    }
    /* post */
    if (s->ln_after_orig)
        pc_layernorm_forward_sum(out, L->po_mean, L->po_rstd, L->po_in, out, x, NULL, c->ln_w,
                                 c->ln_b, n, C, c->ln_eps);
    return 0;
}

static int bn_forward(const pc_adapter *a, const pc_block_call *c, float *out, const float *h,
                      const float *x, float *saved, bool keeping) {
    const shape s = shape_of(a, c);
    rows_layout L;
    if (keeping) {
        lay_out(&s, c->N, saved, &L);
        return forward_rows(&s, c, &L, c->N, 0, out, h, x, c->seed);
    }
    /* whole sequences at a time (the gate averages over one), in scratch of their own */
    const int T = c->T > 0 ? c->T : 1;
    const int seqs = CHUNK_ROWS / T > 0 ? CHUNK_ROWS / T : 1, rows = seqs * T;
    float *scratch = malloc(sizeof(float) * (size_t)lay_out(&s, rows, NULL, &L));
    if (!scratch) return -1;
    for (int n0 = 0; n0 < c->N; n0 += rows) {
        const int n = c->N - n0 < rows ? c->N - n0 : rows;
        const int64_t off = (int64_t)n0 * s.C;
        lay_out(&s, n, scratch, &L);
        if (forward_rows(&s, c, &L, n, n0, out + off, h + off, x + off, c->seed) < 0) {
            free(scratch);
            return -1;
        }
    }
    free(scratch);
    return 0;
}

/* ------------------------------------------------------------ backward */

static float *grad_of(pc_tensor *t, int *oom) {
    if (!t || !t->requires_grad) return NULL;
    pc_tensor *g = pc_tensor_grad(t);
    if (!g) *oom = 1;
    return pc_f32(g);
}

static int bn_backward(const pc_adapter *a, const pc_block_call *c, float *dh, float *dx,
                       const float *dout, const float *h, const float *x, const float *saved) {
    const shape s = shape_of(a, c);
    const int N = c->N, C = s.C, r = s.r;
    const int64_t NC = (int64_t)N * C;
    rows_layout L;
    lay_out(&s, N, (float *)saved, &L);
    const float *z = z_of(&s, &L, h);
    int oom = 0;
    float *dWd = grad_of(a->t[T_DOWN_W], &oom), *dbd = grad_of(a->t[T_DOWN_B], &oom),
          *dWu = grad_of(a->t[T_UP_W], &oom), *dbu = grad_of(a->t[T_UP_B], &oom),
          *dnbw = grad_of(a->t[T_NB_W], &oom), *dnbb = grad_of(a->t[T_NB_B], &oom),
          *dnaw = grad_of(a->t[T_NA_W], &oom), *dnab = grad_of(a->t[T_NA_B], &oom),
          *dwg = grad_of(a->t[T_GATE_W], &oom), *dbg = grad_of(a->t[T_GATE_B], &oom),
          *dscale = grad_of(a->t[T_SCALE], &oom);
    /* three (N,C) buffers (LNa's input gradient, du, dz), dact and dd (N,r), and per
     * sequence the gate's gradient */
    float *work = malloc(sizeof(float) * (size_t)(3 * NC + 2 * (int64_t)N * r + N));
    if (oom || !work) {
        free(work);
        return -1;
    }
    float *w_na = work, *w_du = work + NC, *dz = work + 2 * NC, *dd = dz + NC,
          *dact = dd + (int64_t)N * r, *dgate = dact + (int64_t)N * r;
    /* post: out = LN(o + x); d_o lives in dh until the last step, x's share goes to dx */
    float *d_o = dh;
    if (s.ln_after_orig) {
        pc_layernorm_backward_to(d_o, dx, c->d_ln_w, c->d_ln_b, dout, L.po_in, c->ln_w,
                                 L.po_mean, L.po_rstd, N, C, 0.0f, 0);
    } else {
        pc_copy_floats(d_o, dout, NC);
        pc_copy_floats(dx, NULL, NC);
    }
    /* dq, the gradient of q (plus the residual's when LNa comes after both), and dres, the
     * residual's, after LNa or before it */
    const float *dq = d_o, *dres = d_o;
    if (s.norm_after) {
        pc_layernorm_backward_to(w_na, NULL, dnaw, dnab, d_o, L.na_in, s.naw, L.na_mean,
                                 L.na_rstd, N, C, 0.0f, 0);
        dq = w_na;
        if (s.arb) dres = w_na;
    }
    /* q = dropout(u·scaling)·g: the gate's gradient, then du (dq itself when all three are
     * identities) */
    const float keep_scale = s.p > 0.0f ? 1.0f / (1.0f - s.p) : 1.0f;
    if (s.gated) {
        const int T = c->T, seqs = N / T;
        PC_PARALLEL_FOR(NC)
        for (int b = 0; b < seqs; b++) {
            double dg = 0.0;
            for (int t = 0; t < T; t++) {
                const int64_t i = (int64_t)b * T + t;
                const uint64_t first = (uint64_t)i * (uint64_t)C;
                if (s.p == 0.0f && s.scale_len <= 1) { /* one scaling for every channel */
                    dg += (double)scale_at(&s, 0) * pc_gate_dot(dq + i * C, L.u + i * C, C);
                    continue;
                }
                double acc = 0.0;
                for (int k = 0; k < C; k++) {
                    float q = L.u[i * C + k] * scale_at(&s, k);
                    if (s.p > 0.0f) q = pc_keep(c->seed, first + k, s.p) ? q * keep_scale : 0.0f;
                    acc += (double)dq[i * C + k] * q;
                }
                dg += acc;
            }
            dgate[b] = (float)dg;
        }
    }
    const bool unit_scale = s.scale_len == 0 && s.scale_value == 1.0f;
    const float *du = dq;
    if (s.gated || s.p > 0.0f || !unit_scale) {
        /* the gradient of u·scaling (gate, dropout), then of u unless scaling learns: its
         * gradient reads the former */
        PC_PARALLEL_FOR(NC)
        for (int i = 0; i < N; i++) {
            const uint64_t first = (uint64_t)i * (uint64_t)C;
            const float *d = dq + (int64_t)i * C;
            float *o = w_du + (int64_t)i * C;
            if (s.p == 0.0f && s.scale_len == 0) { /* branch-free: a gate of 1 is exact */
                const float g = s.gated ? L.g[i] : 1.0f, sc = s.scale_value;
                for (int k = 0; k < C; k++) o[k] = d[k] * g * sc;
                continue;
            }
            for (int k = 0; k < C; k++) {
                float v = s.gated ? d[k] * L.g[i] : d[k];
                if (s.p > 0.0f) v = pc_keep(c->seed, first + k, s.p) ? v * keep_scale : 0.0f;
                o[k] = dscale ? v : v * scale_at(&s, k);
            }
        }
        du = w_du;
    }
    if (dscale) {
        /* Σ over rows of du_s·u per channel (rows in order within a block of channels),
         * then for a learned scalar the channels' sums in order */
        double *per_channel = calloc((size_t)C, sizeof(double));
        if (!per_channel) {
            free(work);
            return -1;
        }
        PC_PARALLEL_FOR(NC)
        for (int k0 = 0; k0 < C; k0 += 64) {
            const int k1 = k0 + 64 < C ? k0 + 64 : C;
            for (int i = 0; i < N; i++)
                for (int k = k0; k < k1; k++)
                    per_channel[k] += (double)w_du[(int64_t)i * C + k] * L.u[(int64_t)i * C + k];
        }
        if (s.scale_len == C) {
            for (int k = 0; k < C; k++) dscale[k] += (float)per_channel[k];
        } else {
            double sum = 0.0;
            for (int k = 0; k < C; k++) sum += per_channel[k];
            dscale[0] += (float)sum;
        }
        free(per_channel);
        PC_PARALLEL_FOR(NC)
        for (int i = 0; i < N; i++)
            for (int k = 0; k < C; k++) w_du[(int64_t)i * C + k] *= scale_at(&s, k);
    }
    /* u = a·Wuᵀ + bu */
    if (dWu && pc_sgemm_narrow(true, false, C, r, N, 1.0f, du, C, L.a, r, 1.0f, dWu, r, NULL) < 0)
        goto oom;
    if (dbu) pc_column_sums(dbu, du, C, N, C);
    if (pc_sgemm_narrow(false, false, N, r, C, 1.0f, du, C, s.Wu, r, 0.0f, dact, r, NULL) < 0)
        goto oom;
    /* a = f(d) */
    PC_PARALLEL_FOR((int64_t)N * r * 8)
    for (int64_t i = 0; i < (int64_t)N * r; i++) dd[i] = dact[i] * act_slope(s.act, L.d[i]);
    /* d = z1·Wdᵀ + bd */
    const float *z1 = s.norm_before ? L.z1 : z;
    if (dWd && pc_sgemm_narrow(true, false, r, C, N, 1.0f, dd, r, z1, C, 1.0f, dWd, C, NULL) < 0)
        goto oom;
    if (dbd) pc_column_sums(dbd, dd, r, N, r);
    if (s.norm_before) {
        float *dz1 = w_du; /* du is read no more */
        if (pc_sgemm_narrow(false, false, N, C, r, 1.0f, dd, r, s.Wd, C, 0.0f, dz1, C, NULL) < 0)
            goto oom;
        pc_layernorm_backward_to(dz, NULL, dnbw, dnbb, dz1, z, s.nbw, L.nb_mean, L.nb_rstd, N,
                                 C, 0.0f, 0);
    } else {
        if (pc_sgemm_narrow(false, false, N, C, r, 1.0f, dd, r, s.Wd, C, 0.0f, dz, C, NULL) < 0)
            goto oom;
    }
    /* the gate, g = mean over the sequence of sigmoid(z·wg + bg) (ops/gate.c) */
    if (s.gated &&
        pc_gate_backward(dwg, dbg, dz, C, dgate, L.sig, z, C, s.wg, N, c->T, C, 1) < 0) {
        free(work);
        return -1;
    }
    if (s.res == RES_Z) {
        PC_PARALLEL_FOR(NC)
        for (int64_t i = 0; i < NC; i++) dz[i] += dres[i];
    }
    /* pre: z = LN(h + x) or h; dh (holding d_o, which dres may be) gets the residual's share
     * when that is h (or h + x), and then the branch's dropout */
    const float *res_share = s.res == RES_Z ? NULL : dres;
    if (s.ln_before_orig) {
        pc_layernorm_backward_junction(dh, dx, res_share, s.res == RES_S, c->d_ln_w, c->d_ln_b,
                                       dz, L.s, c->ln_w, L.pre_mean, L.pre_rstd, N, C,
                                       c->branch_p, c->branch_seed);
    } else if (res_share) { /* RES_H: dh = dropout(dres + dz) */
        if (res_share != dh) pc_copy_floats(dh, res_share, NC);
        pc_sum_dropout_backward(dh, dz, NC, c->branch_p, c->branch_seed);
    } else { /* RES_Z: dh = dropout(dz), the mask the forward's */
        pc_dropout_forward(dh, dz, NC, c->branch_p, c->branch_seed);
    }
    free(work);
    return 0;
oom:
    free(work);
    return -1;
}

/* after a kept forward of one call over N rows: each sequence's gate (its first row's g) */
static int bn_gate_values(const pc_adapter *a, int N, int T, int in, int out, const float *saved,
                          float *g) {
    const shape s = shape_of(a, NULL);
    if (!s.gated) return 0;
    rows_layout L;
    lay_out(&s, N, (float *)saved, &L);
    for (int b = 0; b < N / T; b++) g[b] = L.g[(int64_t)b * T];
    return 1;
}

const pc_adapter_method pc_bottleneck_method = {
    .name = "bottleneck",
    .sites = 1u << PC_SITE_BLOCK,
    .num_tensors = NUM_TENSORS,
    .keeps = 0,
    .adapter_keeps = bn_keeps,
    .saved_per_row = bn_saved_per_row,
    .tensor_names = tensor_names,
    .num_required = 4,
    .option_names = option_names,
    .option_defaults = option_defaults,
    .num_options = NUM_OPTIONS,
    .option_word = bn_option_word,
    .block_check = bn_check,
    .block_forward = bn_forward,
    .block_backward = bn_backward,
    .gate_values = bn_gate_values,
};
