/* Multi-head scaled-dot-product attention. One (batch, head) pair is one unit of work:
 * the pairs run in parallel, each with single-threaded products on strided views.
 * Per pair: Q (Tq,D), K and V (Tk,D), scores and probabilities (Tq,Tk).
 *
 * The per-pair products are small (128×128×32 for MiniLM), where a BLIS call spends as much
 * time setting up and packing as multiplying. When the output is at least 16 floats wide
 * they run in pc_tile_gemm (tiles.c), register tiles over unpacked operands; products whose
 * rows are the keys (Q·Kᵀ, dO·Vᵀ) first transpose K or V into per-thread scratch. Narrower
 * ones stay with BLIS.
 *
 * The backward reads a pair's dO, Q and K several times each: it first copies them into
 * contiguous rows (in the fused buffers their rows lie KBs apart, and 128 rows of one head
 * at such a stride share a few sets of the L1 cache), and keeps dS and the dropped P with a
 * row stride of an odd number of cache lines, since its products walk down their columns.
 * MiniLM, 32 sequences, one thread: backward 25.1 -> 18.5 ms (bench/attention.c). */
#include <float.h>
#include <stdlib.h>
#include <string.h>

#include "kernels.h"
#include "tiles.h"
#include "transpose.h"

/* the softmax's exponential wants fused multiply-adds (ISO C mode keeps a·b + c as two
 * roundings unless told otherwise) */
#pragma GCC optimize("fp-contract=fast")

/* columns [j0, j0 + T) of dst (D, ldd) = src (T,D) with row stride ld: a head's keys or
 * values as columns */
static void transpose_head(float *dst, int ldd, int j0, const float *src, int T, int D,
                           int ld) {
    pc_transpose_strided(dst + j0, ldd, src, ld, T, D);
}

/* the per-pair products go to pc_tile_gemm when their widths (Tk for scores, D for outputs)
 * hold at least one 16-float vector, else to BLIS */
static bool use_tiles(int width) { return width >= 16; }

/* One pair's keys (or values): P prefix rows (Yp, row stride ldp; P may be 0) then Tk own
 * rows (Y, row stride ldy), each (·,D). */
typedef struct {
    const float *Yp, *Y;
    int P, Tk, ldp, ldy;
} pair_rows;

/* A row stride for n keys of a 64-byte aligned buffer: whole cache lines, so that every row
 * starts on one. A prefix makes n = P + T, which at other strides would split each
 * vector's load (and store) across two lines. */
static int line_stride(int n) { return (n + 15) / 16 * 16; }

/* C (Tq,P+Tk) = alpha·X (Tq,D)·Yᵀ for Y's P+Tk rows: through Yᵀ in 64-byte aligned scratch
 * (D·line_stride(P+Tk) floats), one product over both parts */
static void times_keys_transposed(int Tq, int D, float alpha, const float *X, int ldx,
                                  const pair_rows *y, float *scratch, float *C, int ldc) {
    const int P = y->P, Tk = P + y->Tk, ldt = line_stride(Tk);
    if (use_tiles(Tk) && scratch) {
        if (P) transpose_head(scratch, ldt, 0, y->Yp, P, D, y->ldp);
        transpose_head(scratch, ldt, P, y->Y, y->Tk, D, y->ldy);
        pc_tile_gemm(false, Tq, Tk, D, alpha, X, ldx, scratch, ldt, 0.0f, C, ldc);
    } else {
        if (P) pc_sgemm_serial(false, true, Tq, P, D, alpha, X, ldx, y->Yp, y->ldp, 0.0f, C, ldc);
        pc_sgemm_serial(false, true, Tq, y->Tk, D, alpha, X, ldx, y->Y, y->ldy, 0.0f, C + P, ldc);
    }
}

/* C (M,D) = alpha·op(A)·Y + beta·C for Y (K,D) row stride ldy (a head's slice) */
static void times_head(bool trans_a, int M, int D, int K, float alpha, const float *A, int lda,
                       const float *Y, int ldy, float beta, float *C, int ldc) {
    if (use_tiles(D))
        pc_tile_gemm(trans_a, M, D, K, alpha, A, lda, Y, ldy, beta, C, ldc);
    else
        pc_sgemm_serial(trans_a, false, M, D, K, alpha, A, lda, Y, ldy, beta, C, ldc);
}

/* dropout on the probabilities (Tq,Tk) of pair bh (row stride lds), into dst with row
 * stride ldd: element (i,j) has index bh·Tq·Tk + i·Tk + j. keep (row stride ldd, or NULL)
 * receives the mask for the backward's second use of it. marks (NULL, or probs itself)
 * receives the probabilities with the dropped ones negated (marks_drops). */
static void dropout_probs(float *dst, int ldd, uint8_t *keep, const float *probs, int lds,
                          int Tq, int Tk, float p, uint64_t seed, int64_t bh, float *marks) {
    const float scale = 1.0f / (1.0f - p);
    const uint64_t t = pc_keep_threshold(p);
    const uint64_t base = (uint64_t)bh * (uint64_t)Tq * (uint64_t)Tk;
    for (int i = 0; i < Tq; i++) {
        const float *row = probs + (int64_t)i * lds;
        float *d = dst + (int64_t)i * ldd;
        const uint64_t first = base + (uint64_t)i * (uint64_t)Tk;
        if (!keep && !marks) {
            pc_dropout_span(d, row, Tk, scale, seed, first, t);
            continue;
        }
        uint8_t *kr = keep ? keep + (int64_t)i * ldd : NULL;
        int32_t m[PC_KEEP_CHUNK];
        for (int j0 = 0; j0 < Tk; j0 += PC_KEEP_CHUNK) {
            const int len = pc_keep_chunk_at(Tk, j0);
            pc_keep_mask(m, seed, first + (uint64_t)j0, len, t);
            if (kr)
                for (int j = 0; j < len; j++) kr[j0 + j] = (uint8_t)(m[j] & 1);
            pc_apply_keep(d + j0, row + j0, m, len, scale);
            if (!marks) continue;
            float *r = marks + (int64_t)i * lds + j0;
            int j = 0;
            for (; j + PC_VW <= len; j += PC_VW) /* the sign bit where m is 0 */
                pc_storev(r + j, (pc_vec)((pc_ivec)pc_loadv(r + j) |
                                          (~pc_load_keep(m + j) & ((pc_ivec){0} + INT32_MIN))));
            for (; j < len; j++) r[j] = m[j] ? r[j] : -r[j];
        }
    }
}

/* d[j] = v[j]·scale where s[j]'s sign bit is clear (kept by the forward's marks), else 0,
 * for j < n (d may be v): the dropped copy of marked probabilities (v = s), or the mask
 * applied to their gradient (v = d) */
static void keep_by_signs(float *d, const float *v, const float *s, int n, float scale) {
    int j = 0;
    for (; j + PC_VW <= n; j += PC_VW)
        pc_storev(d + j, (pc_vec)(((pc_ivec)pc_loadv(s + j) >= 0) &
                                  (pc_ivec)(pc_loadv(v + j) * scale)));
    for (; j < n; j++) d[j] = signbit(s[j]) ? 0.0f : v[j] * scale;
}

/* d[j] = d[j]·scale where keep[j] (1 or 0) is set, else 0, for j < n: the product and-ed
 * with the bytes widened to a mask */
static void apply_keep_bytes(float *d, const uint8_t *keep, int n, float scale) {
    typedef uint8_t bytes __attribute__((vector_size(PC_VW)));
    int j = 0;
    for (; j + PC_VW <= n; j += PC_VW) {
        bytes b;
        memcpy(&b, keep + j, sizeof b);
        const pc_ivec k = -__builtin_convertvector(b, pc_ivec);
        pc_storev(d + j, (pc_vec)(k & (pc_ivec)(pc_loadv(d + j) * scale)));
    }
    for (; j < n; j++) d[j] = keep[j] ? d[j] * scale : 0.0f;
}

/* A softmax row's score gradient from its probabilities' gradient ds (n), in place:
 * dropout's backward first (the mask from the marks' signs, or the keep bytes drawn again),
 * then ds = |p| ⊙ (ds - Σ |p| ds) (a marked p < 0 meets ds = 0 in the dot) */
static void scores_gradient_row(float *ds, const float *p, int n, bool marked,
                                const uint8_t *keep, float inv_keep) {
    if (marked)
        keep_by_signs(ds, ds, p, n, inv_keep);
    else if (keep)
        apply_keep_bytes(ds, keep, n, inv_keep);
    const float dot = pc_dot(ds, p, n);
    for (int j = 0; j < n; j++) ds[j] = fabsf(p[j]) * (ds[j] - dot);
}

/* A row stride of at least n floats, whole cache lines, and an odd number of them: the
 * backward walks down columns of its (Tq,Tk) scratch, and rows 2^k lines apart would crowd
 * into a few of the L1 cache's sets. */
static int padded_stride(int n) {
    const int lines = (n + 15) / 16;
    return 16 * (lines % 2 ? lines : lines + 1);
}

/* bias (Tk) = the additive bias of a sequence's key mask m (Tk): 0 where m != 0, else
 * -FLT_MAX; returns bias */
static float *mask_bias(float *bias, const float *m, int Tk) {
    for (int j = 0; j < Tk; j++) bias[j] = m[j] != 0.0f ? 0.0f : -FLT_MAX;
    return bias;
}

static int prefix_rows(const pc_attention_dims *d) { return d->prefix ? d->prefix->P : 0; }

/* every key of a pair: the prefix's and the sequence's own */
static int all_keys(const pc_attention_dims *d) { return prefix_rows(d) + d->Tk; }

/* pair (b, h)'s keys (which = 0) or values (1): the prefix's rows, then the sequence's */
static pair_rows rows_of_pair(const pc_attention_dims *d, const float *own, int b, int h,
                              int which) {
    const pc_attention_prefix *p = d->prefix;
    pair_rows r = {NULL, own + (int64_t)b * d->Tk * d->ld_kv + (int64_t)h * d->D, 0, d->Tk, 0,
                   d->ld_kv};
    if (p) {
        r.Yp = (which ? p->v : p->k) + b * p->stride + (int64_t)h * d->D;
        r.P = p->P;
        r.ldp = p->ld;
    }
    return r;
}

/* dst (rows,D) contiguous = a head's slice src (rows,D) with row stride ld; returns dst */
static const float *gather_head(float *dst, const float *src, int rows, int64_t ld, int D) {
    for (int i = 0; i < rows; i++)
        for (int e = 0; e < D; e++) dst[(int64_t)i * D + e] = src[(int64_t)i * ld + e];
    return dst;
}

/* per-thread scratch of pair_probs, 64-byte aligned: Kᵀ (D,P+Tk) with row stride
 * line_stride(P+Tk), then the mask's bias row (P+Tk) */
static int64_t probs_scratch_floats(const pc_attention_dims *d) {
    return (int64_t)d->D * line_stride(all_keys(d)) + all_keys(d);
}

/* floats of 64-byte aligned memory, or NULL */
static float *aligned_floats(int64_t floats) {
    return aligned_alloc(64, (sizeof(float) * (size_t)floats + 63) / 64 * 64);
}

/* S (Tq,P+Tk) of pair bh, row stride lds, = softmax(Q·Kᵀ/√D + mask bias), row by row */
static void pair_probs(float *S, int lds, const float *q, const float *k, const float *key_mask,
                       const pc_attention_dims *d, int64_t bh, float *scratch) {
    const int Tq = d->Tq, Tk = all_keys(d), P = prefix_rows(d);
    const int b = (int)(bh / d->H), h = (int)(bh % d->H);
    const float *Q = q + (int64_t)b * Tq * d->ld_q + (int64_t)h * d->D;
    const pair_rows keys = rows_of_pair(d, k, b, h, 0);
    times_keys_transposed(Tq, d->D, 1.0f / sqrtf((float)d->D), Q, d->ld_q, &keys, scratch, S,
                          lds);
    float *bias = NULL;
    if (key_mask) {
        bias = scratch + (int64_t)d->D * line_stride(Tk);
        for (int j = 0; j < P; j++) bias[j] = 0.0f;
        mask_bias(bias + P, key_mask + (int64_t)b * d->Tk, d->Tk);
    }
    for (int i = 0; i < Tq; i++) {
        float *row = S + (int64_t)i * lds;
        pc_softmax_row_biased(row, row, bias, Tk);
    }
}

/* C (M,D) = alpha·A (M,P+T)·Y + beta·C for a pair's P + T keys or values Y: one product
 * over both parts, the prefix's rows first */
static void times_pair_rows(int M, int D, float alpha, const float *A, int lda,
                            const pair_rows *y, float beta, float *C, int ldc) {
    if (!y->P) {
        times_head(false, M, D, y->Tk, alpha, A, lda, y->Y, y->ldy, beta, C, ldc);
    } else if (use_tiles(D)) {
        pc_tile_gemm_split(false, M, D, y->P, y->Tk, alpha, A, lda, y->Yp, y->ldp, y->Y,
                           y->ldy, beta, C, ldc);
    } else {
        times_head(false, M, D, y->P, alpha, A, lda, y->Yp, y->ldp, beta, C, ldc);
        times_head(false, M, D, y->Tk, alpha, A + y->P, lda, y->Y, y->ldy, 1.0f, C, ldc);
    }
}

int pc_attention_probs(float *probs, const float *q, const float *k, const float *key_mask,
                       const pc_attention_dims *dims) {
    const int64_t pair = (int64_t)dims->Tq * all_keys(dims), pairs = (int64_t)dims->B * dims->H;
    bool failed = false;
    #pragma omp parallel num_threads(pc_threads_for(pairs * pair))
    {
        float *scratch = aligned_floats(probs_scratch_floats(dims));
        if (!scratch) failed = true; /* benign race: every writer stores true */
        #pragma omp for schedule(static)
        for (int64_t bh = 0; bh < pairs; bh++)
            if (scratch)
                pair_probs(probs + bh * pair, all_keys(dims), q, k, key_mask, dims, bh, scratch);
        free(scratch);
    }
    return failed ? -1 : 0;
}

int pc_attention_forward(float *out, float *probs, const float *q, const float *k,
                         const float *v, const float *key_mask, const pc_attention_dims *dims,
                         float dropout_p, uint64_t seed) {
    const int B = dims->B, Tq = dims->Tq, Tk = all_keys(dims), H = dims->H, D = dims->D;
    const int C = H * D;
    const int64_t pair = (int64_t)Tq * Tk;
    const bool use_dropout = dropout_p > 0.0f;
    bool failed = false;
    #pragma omp parallel num_threads(pc_threads_for((int64_t)B * H * pair))
    {
        /* per thread, 64-byte aligned: pair_probs' scratch; without probs (no backward
         * follows) the pair's probabilities; with dropout the dropped ones. The last two
         * with rows on whole cache lines. */
        const int ld = line_stride(Tk);
        const int64_t own = line_stride((int)probs_scratch_floats(dims)), mine = (int64_t)Tq * ld;
        float *kt = aligned_floats(own + (probs ? 0 : mine) + (use_dropout ? mine : 0));
        float *own_probs = kt ? kt + own : NULL;
        float *dropped = own_probs ? own_probs + (probs ? 0 : mine) : NULL;
        if (!kt) failed = true;
        #pragma omp for schedule(static)
        for (int64_t bh = 0; bh < (int64_t)B * H; bh++) {
            if (!kt) continue;
            int b = (int)(bh / H), h = (int)(bh % H);
            const pair_rows V = rows_of_pair(dims, v, b, h, 1);
            float *S = probs ? probs + bh * pair : own_probs;
            const int lds = probs ? Tk : ld;
            pair_probs(S, lds, q, k, key_mask, dims, bh, kt);
            const float *P = S;
            int ldp = lds;
            if (use_dropout) {
                dropout_probs(dropped, ld, NULL, S, lds, Tq, Tk, dropout_p, seed, bh,
                              probs && dims->marks_drops ? S : NULL);
                P = dropped;
                ldp = ld;
            }
            times_pair_rows(Tq, D, 1.0f, P, ldp, &V, 0.0f,
                            out + (int64_t)b * Tq * C + (int64_t)h * D, C);
        }
        free(kt);
    }
    return failed ? -1 : 0;
}

int64_t pc_attention_folded_backward_scratch_floats(const pc_attention_dims *d) {
    const int64_t C = (int64_t)d->H * d->D;
    return (int64_t)d->B * d->H * (2 * d->Tk + 4 * C + 1 + prefix_rows(d));
}

int64_t pc_attention_folded_scratch_floats(const pc_attention_dims *d, int prefix_rows) {
    const int64_t C = (int64_t)d->H * d->D, Tk = (int64_t)prefix_rows + d->Tk;
    return (int64_t)d->B * (d->H * (2 * C + 2 * Tk + 1) + Tk + 2 * C);
}

/* qs (B,C) = q ⊙ sk per row (q's row stride ld_q): the queries as keys with a column scale
 * sk meet them */
static void scaled_queries(float *qs, const float *q, int ld_q, const float *sk, int B, int C) {
    for (int b = 0; b < B; b++)
        for (int c = 0; c < C; c++) qs[(int64_t)b * C + c] = q[(int64_t)b * ld_q + c] * sk[c];
}

/* Per head h, Wk_h and Wv_h being rows h·D ... h·D + D - 1 of Wk and Wv, and the prefix's
 * P rows first in each row of S:
 *   U (B,H,C):     u_bh = Wk_hᵀ q_bh / √D            (per head, (B,D)·(D,C))
 *   S (B,H,P+T):   s_bh = softmax([q_bh·(kp_j,h - bk_h)/√D]_j<P, U_b · x_bᵀ + mask bias)
 *   S' (B,H,P+T):  s' = dropout(s), as pc_attention_forward draws it (s without dropout)
 *   X̄ (B,H,C):     x̄_bh = Σ_j s'_bh,P+j x_bj        (per sequence, (H,T)·(T,C))
 *   σ (B,H):       σ_bh = Σ_j s'_bh,P+j               (1 without a prefix or dropout)
 *   out_bh = Σ_j<P s'_bh,j vp_j,h + Wv_h x̄_bh + σ_bh bv_h   (per head, (B,C)·(C,D)) */
void pc_attention_first_query_folded(float *out, float *probs, const float *q, const float *x,
                                     const pc_folded_projections *f, const float *key_mask,
                                     const pc_attention_dims *d, float dropout_p, uint64_t seed,
                                     float *scratch) {
    const int B = d->B, T = d->Tk, H = d->H, D = d->D, C = H * D;
    const int P = f->prefix ? f->prefix_rows : 0, Tk = P + T;
    const bool use_dropout = dropout_p > 0.0f, summed = P || use_dropout;
    float *U = scratch, *S = U + (int64_t)B * H * C, *dropped = S + (int64_t)B * H * Tk;
    float *Xbar = dropped + (int64_t)B * H * Tk;
    float *biases = Xbar + (int64_t)B * H * C, *sigma = biases + (int64_t)B * Tk;
    float *qs = sigma + (int64_t)B * H, *Y = qs + (int64_t)B * C;
    if (probs) S = probs;
    const float scale = 1.0f / sqrtf((float)D);
    /* the queries the own keys meet: q ⊙ sk with a key scale */
    const float *qk = q;
    int ld_qk = d->ld_q;
    if (f->sk) {
        scaled_queries(qs, q, d->ld_q, f->sk, B, C);
        qk = qs;
        ld_qk = C;
    }
    PC_PARALLEL_FOR((int64_t)B * C * C)
    for (int h = 0; h < H; h++)
        pc_sgemm_serial(false, false, B, C, D, scale, qk + (int64_t)h * D, ld_qk,
                        f->wk + (int64_t)h * D * C, C, 0.0f, U + (int64_t)h * C, H * C);
    PC_PARALLEL_FOR((int64_t)B * H * T * C)
    for (int b = 0; b < B; b++) {
        const float *xb = x + (int64_t)b * T * C, *qb = q + (int64_t)b * d->ld_q;
        float *Sb = S + (int64_t)b * H * Tk;
        pc_sgemm_serial(false, true, H, T, C, 1.0f, U + (int64_t)b * H * C, C, xb, C, 0.0f,
                        Sb + P, Tk);
        float *bias = NULL;
        if (key_mask) {
            bias = biases + (int64_t)b * Tk;
            for (int j = 0; j < P; j++) bias[j] = 0.0f;
            mask_bias(bias + P, key_mask + (int64_t)b * T, T);
        }
        for (int h = 0; h < H; h++) {
            float *s = Sb + (int64_t)h * Tk;
            const float *qh = qb + (int64_t)h * D;
            if (P) {
                const float shift =
                    pc_dot(qk + (int64_t)b * ld_qk + (int64_t)h * D, f->bk + (int64_t)h * D, D);
                for (int j = 0; j < P; j++)
                    s[j] = (pc_dot(qh, f->prefix + (int64_t)j * 2 * C + (int64_t)h * D, D) -
                            shift) * scale;
            }
            pc_softmax_row_biased(s, s, bias, Tk);
        }
        const float *Pb = Sb; /* the probabilities the context takes */
        if (use_dropout) {
            float *db = dropped + (int64_t)b * H * Tk;
            for (int h = 0; h < H; h++) {
                float *s = Sb + (int64_t)h * Tk;
                dropout_probs(db + (int64_t)h * Tk, Tk, NULL, s, Tk, 1, Tk, dropout_p, seed,
                              (int64_t)b * H + h, probs && d->marks_drops ? s : NULL);
            }
            Pb = db;
        }
        pc_sgemm_serial(false, false, H, C, T, 1.0f, Pb + P, Tk, xb, C, 0.0f,
                        Xbar + (int64_t)b * H * C, C);
        if (!summed) continue;
        /* the values' bias counts Σ_j s'_j times; the prefix's share of the context, which
         * the last step adds to */
        for (int h = 0; h < H; h++) {
            const float *s = Pb + (int64_t)h * Tk;
            float real = 0.0f;
            for (int j = 0; j < T; j++) real += s[P + j];
            sigma[(int64_t)b * H + h] = real;
            if (!P) continue;
            float *o = out + (int64_t)b * C + (int64_t)h * D;
            for (int e = 0; e < D; e++) o[e] = 0.0f;
            for (int j = 0; j < P; j++) {
                const float *vp = f->prefix + (int64_t)j * 2 * C + C + (int64_t)h * D;
                for (int e = 0; e < D; e++) o[e] += s[j] * vp[e];
            }
        }
    }
    PC_PARALLEL_FOR((int64_t)B * C * C)
    for (int h = 0; h < H; h++) {
        /* the own values' share, into the context (after the prefix's) or, with a value
         * scale, into Y first */
        float *out_h = out + (int64_t)h * D, *dst = f->sv ? Y + (int64_t)h * D : out_h;
        const float *bv = f->bv + (int64_t)h * D;
        pc_sgemm_serial(false, true, B, D, C, 1.0f, Xbar + (int64_t)h * C, H * C,
                        f->wv + (int64_t)h * D * C, C, P && !f->sv ? 1.0f : 0.0f, dst, C);
        for (int b = 0; b < B; b++) {
            const float w = summed ? sigma[(int64_t)b * H + h] : 1.0f;
            for (int e = 0; e < D; e++) dst[(int64_t)b * C + e] += w * bv[e];
        }
        if (!f->sv) continue;
        const float *sv = f->sv + (int64_t)h * D;
        for (int b = 0; b < B; b++)
            for (int e = 0; e < D; e++) {
                float *o = out_h + (int64_t)b * C + e;
                *o = (P ? *o : 0.0f) + sv[e] * dst[(int64_t)b * C + e];
            }
    }
}

/* Backward of one pair, mirroring the forward:
 *   dP' (Tq,Tk) = dO · Vᵀ          dV += P'ᵀ · dO        (P' = dropout(P))
 *   dP = dropout_backward(dP')     dS = P ⊙ (dP - rowsum(dP ⊙ P))
 *   dQ += dS · K / √D              dK += dSᵀ · Q / √D
 * With a prefix, K and V's first P rows are its own and their dK, dV rows go to its
 * gradients (written: each pair owns its sequence's rows and head's columns there). */
static int attention_backward(float *dq, float *dk, float *dv, float *coef, const float *dout,
                              const float *probs, const float *q, const float *k,
                              const float *v, const pc_attention_dims *dims, float dropout_p,
                              uint64_t seed, float beta) {
    const int B = dims->B, Tq = dims->Tq, Tk = all_keys(dims), H = dims->H, D = dims->D;
    const int C = H * D, ld_q = dims->ld_q, ld_kv = dims->ld_kv, NP = prefix_rows(dims);
    const int T = dims->Tk; /* the sequence's own keys */
    const pc_attention_prefix *pre = dims->prefix;
    const int64_t pair = (int64_t)Tq * Tk;
    const float scale = 1.0f / sqrtf((float)D);
    const bool use_dropout = dropout_p > 0.0f, marked = use_dropout && dims->marks_drops;
    const bool keeps_bytes = use_dropout && !marked; /* the mask drawn again, kept as bytes */
    bool failed = false;
    #pragma omp parallel num_threads(pc_threads_for((int64_t)B * H * pair))
    {
        /* per thread: dS (Tq,Tk) and P' (Tq,Tk) with row stride ld (the mask's bytes with
         * it), Vᵀ (D,Tk), and the pair's dO (Tq,D), Q (Tq,D), K (T,D) gathered into
         * contiguous rows */
        const int ld = padded_stride(Tk);
        const int64_t padded = (int64_t)Tq * ld;
        const int64_t heads = (int64_t)(2 * Tq + T) * D;
        const int64_t floats =
            2 * padded + (int64_t)D * line_stride(Tk) + heads + (keeps_bytes ? padded / 4 : 0);
        float *dS = aligned_floats(floats);
        float *Pd = dS ? dS + padded : NULL, *vt = Pd ? Pd + padded : NULL;
        float *dO_c = vt ? vt + (int64_t)D * line_stride(Tk) : NULL;
        float *q_c = dO_c ? dO_c + (int64_t)Tq * D : NULL;
        float *k_c = q_c ? q_c + (int64_t)Tq * D : NULL;
        uint8_t *keep = keeps_bytes && k_c ? (uint8_t *)(k_c + (int64_t)T * D) : NULL;
        if (!dS) failed = true;
        #pragma omp for schedule(static)
        for (int64_t bh = 0; bh < (int64_t)B * H; bh++) {
            if (!dS) continue;
            int b = (int)(bh / H), h = (int)(bh % H);
            int64_t q0 = (int64_t)b * Tq * ld_q + (int64_t)h * D;
            int64_t kv0 = (int64_t)b * T * ld_kv + (int64_t)h * D;
            const pair_rows keys = rows_of_pair(dims, k, b, h, 0);
            const pair_rows values = rows_of_pair(dims, v, b, h, 1);
            float *dpk = NULL, *dpv = NULL;
            if (NP) {
                dpk = pre->dk + b * pre->d_stride + (int64_t)h * D;
                dpv = pre->dv + b * pre->d_stride + (int64_t)h * D;
            }
            const float *dO =
                gather_head(dO_c, dout + (int64_t)b * Tq * C + (int64_t)h * D, Tq, C, D);
            const float *Qh = dk || NP ? gather_head(q_c, q + q0, Tq, ld_q, D) : NULL;
            const float *Kh = dq ? gather_head(k_c, k + kv0, T, ld_kv, D) : NULL;
            const float *P = probs + bh * pair;
            if (marked)
                for (int i = 0; i < Tq; i++) {
                    const float *row = P + (int64_t)i * Tk;
                    keep_by_signs(Pd + (int64_t)i * ld, row, row, Tk, 1.0f / (1.0f - dropout_p));
                }
            else if (use_dropout)
                dropout_probs(Pd, ld, keep, P, Tk, Tq, Tk, dropout_p, seed, bh, NULL);
            else
                for (int i = 0; i < Tq; i++)
                    memcpy(Pd + (int64_t)i * ld, P + (int64_t)i * Tk, sizeof(float) * Tk);
            if (NP) times_head(true, NP, D, Tq, 1.0f, Pd, ld, dO, D, 0.0f, dpv, pre->d_ld);
            if (dv) times_head(true, T, D, Tq, 1.0f, Pd + NP, ld, dO, D, beta, dv + kv0, ld_kv);
            float *coef_k = coef ? coef + ((int64_t)b * 2 * H + h) * T : NULL;
            if (coef) memcpy(coef_k + (int64_t)H * T, Pd + NP, sizeof(float) * T);
            if (!dq && !dk && !NP && !coef) continue; /* no gradient of the scores wanted */
            times_keys_transposed(Tq, D, 1.0f, dO, D, &values, vt, dS, ld);
            const float inv_keep = use_dropout ? 1.0f / (1.0f - dropout_p) : 1.0f;
            for (int i = 0; i < Tq; i++)
                scores_gradient_row(dS + (int64_t)i * ld, P + (int64_t)i * Tk, Tk, marked,
                                    keep ? keep + (int64_t)i * ld : NULL, inv_keep);
            if (NP) times_head(true, NP, D, Tq, scale, dS, ld, Qh, D, 0.0f, dpk, pre->d_ld);
            if (dq) {
                const pair_rows gathered = {keys.Yp, Kh, NP, T, keys.ldp, D};
                times_pair_rows(Tq, D, scale, dS, ld, &gathered, beta, dq + q0, ld_q);
            }
            if (dk) times_head(true, T, D, Tq, scale, dS + NP, ld, Qh, D, beta, dk + kv0, ld_kv);
            if (coef)
                for (int j = 0; j < T; j++) coef_k[j] = scale * dS[NP + j];
        }
        free(dS);
    }
    return failed ? -1 : 0;
}

int pc_attention_backward(float *dq, float *dk, float *dv, const float *dout,
                          const float *probs, const float *q, const float *k, const float *v,
                          const pc_attention_dims *dims, float dropout_p, uint64_t seed) {
    return attention_backward(dq, dk, dv, NULL, dout, probs, q, k, v, dims, dropout_p, seed,
                              1.0f);
}

int pc_attention_backward_into(float *dq, float *dk, float *dv, const float *dout,
                               const float *probs, const float *q, const float *k,
                               const float *v, const pc_attention_dims *dims, float dropout_p,
                               uint64_t seed) {
    return attention_backward(dq, dk, dv, NULL, dout, probs, q, k, v, dims, dropout_p, seed,
                              0.0f);
}

/* The scores' gradient for a forward that folded the projections too (no K, V): per
 * sequence b and head h, with the own keys' k_j = Wk_h x_j + bk_h and v_j = Wv_h x_j + bv_h,
 *   dP'_j = dO_h·v_j = (dO_h Wv_h)·x_j + dO_h·bv_h      ((H,C)·(C,T) per sequence, R's rows)
 *   dS = |p| ⊙ (dP - Σ |p| dP)  (dP = dropout_backward(dP'), as attention_backward)
 * coef receives what attention_backward would give: (B,2H,T) rows h the own keys' dS/√D,
 * rows H + h their p'. sums (B,H) receives Σ_j dS_j/√D over the own keys and dS_prefix
 * (B,H,P) the prefix's dS/√D, for dq; the prefix's own gradients are written here. dvs
 * (B,C): dO as the own values meet it (dO ⊙ sv with a value scale; R's rows from it). */
static int scores_gradient_from_inputs(float *coef, float *sums, float *dS_prefix,
                                       const float *R, const float *dout, const float *dvs,
                                       const float *probs, const float *q, const float *x,
                                       const pc_folded_projections *f,
                                       const pc_attention_dims *d, float dropout_p,
                                       uint64_t seed) {
    const int B = d->B, T = d->Tk, H = d->H, D = d->D, C = H * D, NP = prefix_rows(d);
    const int Tk = NP + T;
    const pc_attention_prefix *pre = d->prefix;
    const float scale = 1.0f / sqrtf((float)D);
    const bool use_dropout = dropout_p > 0.0f, marked = use_dropout && d->marks_drops;
    const float inv_keep = use_dropout ? 1.0f / (1.0f - dropout_p) : 1.0f;
    bool failed = false;
    #pragma omp parallel num_threads(pc_threads_for((int64_t)B * H * T * C))
    {
        /* p', dP and the keep bytes of a pair */
        float *pd = aligned_floats(3 * (int64_t)line_stride(Tk));
        float *dp = pd ? pd + line_stride(Tk) : NULL;
        uint8_t *keep = use_dropout && !marked && dp ? (uint8_t *)(dp + line_stride(Tk)) : NULL;
        if (!pd) failed = true;
        #pragma omp for schedule(static)
        for (int b = 0; b < B; b++) {
            if (!pd) continue;
            float *ck = coef + (int64_t)b * 2 * H * T, *cv = ck + (int64_t)H * T;
            /* the own keys' dP' (H,T), bias aside, into the keys' coefficients */
            pc_sgemm_serial(false, true, H, T, C, 1.0f, R + ((int64_t)b * 2 * H + H) * C, C,
                            x + (int64_t)b * T * C, C, 0.0f, ck, T);
            for (int h = 0; h < H; h++) {
                const int64_t bh = (int64_t)b * H + h;
                const float *p = probs + bh * Tk;
                const float *dO = dout + (int64_t)b * C + (int64_t)h * D;
                if (marked)
                    keep_by_signs(pd, p, p, Tk, inv_keep);
                else if (use_dropout)
                    dropout_probs(pd, Tk, keep, p, Tk, 1, Tk, dropout_p, seed, bh, NULL);
                else
                    memcpy(pd, p, sizeof(float) * Tk);
                for (int j = 0; j < NP; j++)
                    dp[j] = pc_dot(dO, pre->v + b * pre->stride + (int64_t)j * pre->ld + h * D, D);
                const float shift =
                    f->bv ? pc_dot(dvs + (int64_t)b * C + (int64_t)h * D, f->bv + (int64_t)h * D, D)
                          : 0.0f;
                float *dpo = ck + (int64_t)h * T;
                for (int j = 0; j < T; j++) dp[NP + j] = dpo[j] + shift;
                scores_gradient_row(dp, p, Tk, marked, keep, inv_keep);
                float sum = 0.0f;
                for (int j = 0; j < T; j++) {
                    dpo[j] = scale * dp[NP + j];
                    sum += dpo[j];
                }
                sums[bh] = sum;
                memcpy(cv + (int64_t)h * T, pd + NP, sizeof(float) * T);
                if (!NP) continue;
                /* the prefix's rows: dk_j = (dS_j/√D) q_h, dv_j = p'_j dO_h (written) */
                const float *qh = q + (int64_t)b * d->ld_q + (int64_t)h * D;
                float *dsp = dS_prefix + bh * NP;
                for (int j = 0; j < NP; j++) {
                    dsp[j] = scale * dp[j];
                    float *dk = pre->dk + b * pre->d_stride + (int64_t)j * pre->d_ld + h * D;
                    float *dv = pre->dv + b * pre->d_stride + (int64_t)j * pre->d_ld + h * D;
                    for (int e = 0; e < D; e++) {
                        dk[e] = dsp[j] * qh[e];
                        dv[e] = pd[j] * dO[e];
                    }
                }
            }
        }
        free(pd);
    }
    return failed ? -1 : 0;
}

int pc_attention_first_query_backward_folded(float *dq, const pc_folded_grads *g,
                                             const float *dout, const float *probs,
                                             const float *q, const float *k, const float *v,
                                             const float *x, const pc_folded_projections *f,
                                             const pc_attention_dims *dims, float dropout_p,
                                             uint64_t seed, float *scratch) {
    const int B = dims->B, T = dims->Tk, H = dims->H, D = dims->D, C = H * D;
    const int NP = prefix_rows(dims), ld_q = dims->ld_q;
    const bool scaled = f->sk || f->sv;
    if (scaled && k) return -1; /* the scales are folded from x only */
    float *coef = scratch, *R = coef + (int64_t)B * 2 * H * T, *G = R + (int64_t)B * 2 * H * C;
    float *sums = G + (int64_t)B * 2 * H * C, *dS_prefix = sums + (int64_t)B * H;
    /* with column scales, the queries and dO as the own keys and values meet them (qk, dvs),
     * and each head's gradient of the scaled keys' and values' sums (uk, uv) */
    float *ext = scaled ? aligned_floats((int64_t)4 * B * C) : NULL;
    if (scaled && !ext) return -1;
    const float *qk = q, *dvs = dout;
    int ld_qk = ld_q;
    float *uk = ext ? ext + (int64_t)2 * B * C : NULL, *uv = uk ? uk + (int64_t)B * C : NULL;
    if (f->sk) {
        scaled_queries(ext, q, ld_q, f->sk, B, C);
        qk = ext;
        ld_qk = C;
    }
    if (f->sv) {
        float *d = ext + (int64_t)B * C;
        for (int64_t i = 0; i < (int64_t)B * C; i++) d[i] = dout[i] * f->sv[i % C];
        dvs = d;
    }
    /* R (B,2H,C): rows h = qk_h·Wk_h (dK's coefficients carry 1/√D), rows H + h = dvs_h·Wv_h */
    PC_PARALLEL_FOR((int64_t)B * C * C * 2)
    for (int i = 0; i < 2 * H; i++) {
        const int h = i % H;
        const float *in = i < H ? qk + (int64_t)h * D : dvs + (int64_t)h * D;
        const float *w = (i < H ? f->wk : f->wv) + (int64_t)h * D * C;
        pc_sgemm_serial(false, false, B, C, D, 1.0f, in, i < H ? ld_qk : C, w, C, 0.0f,
                        R + (int64_t)i * C, 2 * H * C);
    }
    if (k ? attention_backward(dq, NULL, NULL, coef, dout, probs, q, k, v, dims, dropout_p,
                               seed, 0.0f) < 0
          : scores_gradient_from_inputs(coef, sums, dS_prefix, R, dout, dvs, probs, q, x, f,
                                        dims, dropout_p, seed) < 0) {
        free(ext);
        return -1;
    }
    /* G (B,2H,C): the coefficients' sums of the inputs, rows h Σ_j (dS_j/√D) x_j, rows H + h
     * Σ_j p'_j x_j: dK = coef_k qk and dV = coef_v dvs summed against x */
    const bool dq_here = dq && !k;
    if (dq_here || g->dwk || g->dwv || g->dsk || g->dsv) {
        PC_PARALLEL_FOR((int64_t)B * T * C * 2 * H)
        for (int b = 0; b < B; b++)
            pc_sgemm_serial(false, false, 2 * H, C, T, 1.0f, coef + (int64_t)b * 2 * H * T, T,
                            x + (int64_t)b * T * C, C, 0.0f, G + (int64_t)b * 2 * H * C, C);
    }
    /* per head: the weights' gradients dWk_h (D,C) += qk_hᵀ·G_h, dWv_h += dvs_hᵀ·G_{H+h};
     * from x, the scaled keys' sums' gradient u_h (B,D) = G_h·Wk_hᵀ + (Σ_j dS_j/√D) bk_h,
     * then dq_h = sk_h ⊙ u_h (+ the prefix's keys) and dsk_h += Σ_b q_bh ⊙ u_bh; the scaled
     * values' dsv_h += Σ_b dO_bh ⊙ (G_{H+h}·Wv_hᵀ + (Σ_j p'_j) bv_h) */
    PC_PARALLEL_FOR((int64_t)B * C * C * 3)
    for (int h = 0; h < H; h++) {
        if (g->dwk)
            pc_sgemm_serial(true, false, D, C, B, 1.0f, qk + (int64_t)h * D, ld_qk,
                            G + (int64_t)h * C, 2 * H * C, 1.0f, g->dwk + (int64_t)h * D * C, C);
        if (g->dwv)
            pc_sgemm_serial(true, false, D, C, B, 1.0f, dvs + (int64_t)h * D, C,
                            G + (int64_t)(H + h) * C, 2 * H * C, 1.0f,
                            g->dwv + (int64_t)h * D * C, C);
        if (f->sv && g->dsv) {
            float *t = uv + (int64_t)h * D;
            pc_sgemm_serial(false, true, B, D, C, 1.0f, G + (int64_t)(H + h) * C, 2 * H * C,
                            f->wv + (int64_t)h * D * C, C, 0.0f, t, C);
            for (int b = 0; b < B; b++) {
                const float *cv = coef + ((int64_t)b * 2 * H + H + h) * T;
                float sigma = 0.0f;
                for (int j = 0; j < T; j++) sigma += cv[j];
                const float *dO = dout + (int64_t)b * C + (int64_t)h * D;
                for (int e = 0; e < D; e++) {
                    const float te = t[(int64_t)b * C + e] + (f->bv ? sigma * f->bv[h * D + e] : 0.0f);
                    g->dsv[h * D + e] += dO[e] * te;
                }
            }
        }
        const bool want_u = dq_here || (f->sk && g->dsk);
        if (!want_u) continue;
        /* u into dq's rows, or into uk with a key scale */
        float *u = f->sk ? uk + (int64_t)h * D : dq + (int64_t)h * D;
        const int ld_u = f->sk ? C : ld_q;
        pc_sgemm_serial(false, true, B, D, C, 1.0f, G + (int64_t)h * C, 2 * H * C,
                        f->wk + (int64_t)h * D * C, C, 0.0f, u, ld_u);
        for (int b = 0; b < B; b++) {
            const int64_t bh = (int64_t)b * H + h;
            float *ub = u + (int64_t)b * ld_u;
            if (f->bk)
                for (int e = 0; e < D; e++) ub[e] += sums[bh] * f->bk[h * D + e];
            if (f->sk) {
                const float *qh = q + (int64_t)b * ld_q + (int64_t)h * D;
                if (g->dsk)
                    for (int e = 0; e < D; e++) g->dsk[h * D + e] += qh[e] * ub[e];
                if (dq_here)
                    for (int e = 0; e < D; e++)
                        dq[(int64_t)b * ld_q + h * D + e] = f->sk[h * D + e] * ub[e];
            }
            if (!dq_here) continue;
            float *dqh = dq + (int64_t)b * ld_q + (int64_t)h * D;
            for (int j = 0; j < NP; j++) {
                const float *kp = dims->prefix->k + b * dims->prefix->stride +
                                  (int64_t)j * dims->prefix->ld + h * D;
                for (int e = 0; e < D; e++) dqh[e] += dS_prefix[bh * NP + j] * kp[e];
            }
        }
    }
    /* the biases': dbk_h += Σ_b (Σ_j coef_k) qk_bh, dbv_h += Σ_b (Σ_j coef_v) dvs_bh */
    for (int i = 0; i < 2 * H; i++) {
        float *db = i < H ? g->dbk : g->dbv;
        if (!db) continue;
        const int h = i % H;
        for (int b = 0; b < B; b++) {
            const float *c = coef + ((int64_t)b * 2 * H + i) * T;
            float sum = 0.0f;
            for (int j = 0; j < T; j++) sum += c[j];
            const float *in = i < H ? qk + (int64_t)b * ld_qk : dvs + (int64_t)b * C;
            for (int e = 0; e < D; e++) db[h * D + e] += sum * in[h * D + e];
        }
    }
    free(ext);
    if (!g->dx) return 0;
    /* dx_b (T,C) += coef_bᵀ (T,2H) · R_b (2H,C) */
    PC_PARALLEL_FOR((int64_t)B * T * C * 2 * H)
    for (int b = 0; b < B; b++)
        pc_sgemm_serial(true, false, T, C, 2 * H, 1.0f, coef + (int64_t)b * 2 * H * T, T,
                        R + (int64_t)b * 2 * H * C, C, 1.0f, g->dx + (int64_t)b * T * C, C);
    return 0;
}
