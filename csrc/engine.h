/* peftcore engine: the public C API.
 *
 * Plain C11 over raw float buffers, no Python.h. Every op is a forward/backward pair:
 * outputs first, then caches, then inputs and weights, then sizes (llm.c's order).
 * All backward functions ACCUMULATE (+=) into their gradient outputs, and any gradient
 * output may be NULL when it is not wanted. Matrices are row-major.
 */
#ifndef PEFTCORE_ENGINE_H
#define PEFTCORE_ENGINE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* ------------------------------------------------------------------ runtime */

/* Chooses the BLIS kernel set (unless BLIS_ARCH_TYPE is set) and initialises BLIS.
 * Idempotent. Returns 0. */
int pc_runtime_init(void);
const char *pc_blis_arch(void);       /* e.g. "skx" */
const char *pc_blis_version(void);    /* e.g. "0.9.0" */
const char *pc_cpu_simd(void);        /* e.g. "ssse3 sse4.2 avx avx2 fma avx512f avx512dq ..." */
/* An x86 feature by GCC's name ("avx2", "avx512bw", ...): the CPU has it and it is not
 * listed in PEFTCORE_DISABLE_CPU_FEATURES (which lets the paths of other CPUs run here).
 * false on other architectures. */
bool pc_cpu_has(const char *feature);
bool pc_blis_arch_from_env(void);     /* true when the user's BLIS_ARCH_TYPE was honoured */
const char *pc_blis_arch_note(void);  /* why the user's BLIS_ARCH_TYPE was ignored, or "" */
/* Instruction sets the kernels are compiled for (dispatch.c): on x86-64 all three, elsewhere
 * the portable build only. pc_runtime_init picks the best one this CPU runs, or the one the
 * environment variable PEFTCORE_ISA names (baseline, avx2 or avx512) when the CPU runs it. */
typedef enum { PC_ISA_BASELINE = 0, PC_ISA_AVX2 = 1, PC_ISA_AVX512 = 2, PC_ISA_COUNT = 3 } pc_isa;
pc_isa pc_isa_select(void);           /* by pc_runtime_init; returns the set picked */
pc_isa pc_isa_active(void);
bool pc_isa_runs(pc_isa isa);         /* compiled into this build and run by this CPU */
const char *pc_isa_name(pc_isa isa);  /* "baseline", "avx2", "avx512" */
const char *pc_isa_available(void);   /* the sets this build and CPU run, e.g. "baseline avx2" */
const char *pc_isa_note(void);        /* why PEFTCORE_ISA was ignored, or "" */
/* n >= 1: threads for BLIS and our kernels; returns the count now in use, which is 1 in a
 * process forked after the engine ran threads (see pc_fork_note) */
int pc_set_num_threads(int n);
int pc_get_num_threads(void);
/* GNU OpenMP cannot start threads in a child forked after its parent ran a parallel region
 * (the child hangs), so the engine runs single-threaded there and says so here; "" else. */
const char *pc_fork_note(void);
/* Threads the engine's ops use when called from here: pc_get_num_threads(), or 1 on a
 * thread of an active parallel region (a worker running its own share of a batch). */
int pc_threads_here(void);
int pc_default_num_threads(void);     /* usable cores */

/* C(M,N) = alpha * op(A) * op(B) + beta * C, row-major with leading dimensions.
 * op(A) is (M,K): A is (M,K) with lda, or (K,M) when trans_a. Likewise op(B) is (K,N). */
void pc_sgemm(bool trans_a, bool trans_b, int M, int N, int K, float alpha,
              const float *A, int lda, const float *B, int ldb, float beta, float *C, int ldc);
/* Blocks of rows or columns of C whose sizes are multiples of this give a product the same
 * bits as the whole (pc_sgemm splits among threads on such blocks): 1 on our packed path
 * with the x86 kernel sets, where any split does; else a whole number of BLIS's tiles. */
int pc_gemm_split_multiple(void);
/* Same, on the calling thread only: for use inside our own parallel loops. */
void pc_sgemm_serial(bool trans_a, bool trans_b, int M, int N, int K, float alpha,
                     const float *A, int lda, const float *B, int ldb, float beta,
                     float *C, int ldc);
/* C(M,N) = op(A)·op(B) + bias (N) on every row, the bias added to each element after its
 * whole sum (the bits of the product and then a pass adding the bias), on the packed path
 * while the product's tiles are in cache. */
void pc_sgemm_biased(bool trans_a, bool trans_b, int M, int N, int K, const float *A, int lda,
                     const float *B, int ldb, const float *bias, float *C, int ldc);
/* C(M,N) = alpha·op(A)·op(B) + beta·C (+ bias (N) on every row, unless NULL) for products
 * with a narrow dimension, a bottleneck's or a low rank's (tens), where BLIS's packing and
 * its micro-kernel's set-up cost more than the multiply-adds: register tiles over unpacked
 * operands (ops/tiles.c), op(B) = Bᵀ first copied into scratch (then N·K floats, small).
 * Threads own whole bands of C's rows (or its columns, where C has few rows), and each
 * element is summed over k in order, so the bits do not depend on the thread count; they
 * match pc_sgemm's to rounding. Returns 0, or -1 (C untouched) when out of memory. */
int pc_sgemm_narrow(bool trans_a, bool trans_b, int M, int N, int K, float alpha,
                    const float *A, int lda, const float *B, int ldb, float beta, float *C,
                    int ldc, const float *bias);
/* The same products through our own packing and BLIS's micro-kernel (gemm_packed.c), where
 * that is the path in use: false, with C untouched, where it is not. M, N, K >= 1. */
bool pc_sgemm_packed(bool trans_a, bool trans_b, int M, int N, int K, float alpha,
                     const float *A, int lda, const float *B, int ldb, float beta, float *C,
                     int ldc, const float *bias);
/* How products run (pc_gemm_packed_mode): not through gemm_packed.c (BLIS's own GEMM); both
 * operands packed for BLIS's micro-kernel; or op(B) packed and op(A) read in place by BLIS's
 * small-matrix kernel (the AVX2 kernel sets, where it measured faster) */
enum { PC_GEMM_PACKED_OFF, PC_GEMM_PACKED_BOTH, PC_GEMM_PACKED_A_IN_PLACE };
int pc_gemm_packed_mode(void);
/* whether products run on the packed path with a kernel set whose edge tiles sum as its
 * whole ones do, so that any split of a product gives its bits (pc_gemm_split_multiple) */
bool pc_gemm_packed_split_free(void);
/* whether BLIS's kernel set can run a mode; switch to it (false, unchanged, where it cannot) */
bool pc_gemm_packed_has(int mode);
bool pc_gemm_packed_use(int mode);
void pc_gemm_packed_init(void); /* by pc_runtime_init, after BLIS's */
/* Who computes products (pc_sgemm_serial): "packed" (gemm_packed.c, the default where it
 * is faster, reading op(A) in place where it can), "packed-a" (gemm_packed.c packing both
 * operands, where that differs), "blis" (bli_sgemm_ex with its small-matrix path off: a
 * product's bits do not depend on how it is split) or "blis-sup" (that path on: bits can
 * change with the split; for benchmarks). PEFTCORE_GEMM=blis|packed|packed-a sets it at
 * start-up. pc_set_gemm_path is false for an unknown name or an unavailable path; call it
 * while no product runs. */
bool pc_set_gemm_path(const char *name);
const char *pc_gemm_path(void);

/* Aligned, zeroed allocation for engine buffers (64-byte alignment). */
void *pc_alloc(size_t bytes);
void pc_free(void *p);

/* ------------------------------------------------------------------ tensors */

#define PC_MAX_DIMS 8

typedef enum { PC_FLOAT32 = 0, PC_INT32 = 1, PC_INT64 = 2 } pc_dtype;

typedef struct pc_tensor {
    void *data;
    pc_dtype dtype;
    int ndim;
    int64_t shape[PC_MAX_DIMS];
    int64_t numel;
    int refcount;
    bool owns_data;            /* data was allocated by pc_tensor_new */
    bool readonly;             /* borrowed read-only memory: never written (the optimizer
                                * refuses it, the glue exports it read-only) */
    struct pc_tensor *base;    /* a view keeps its base alive */
    bool requires_grad;        /* honoured by models and the optimizer */
    struct pc_tensor *grad;    /* same shape, float32; allocated on demand */
} pc_tensor;

size_t pc_dtype_size(pc_dtype dtype);
/* Elements of a shape, or -1 when a dimension is negative or the count (or its bytes for
 * a dtype of itemsize bytes) passes INT64_MAX. */
int64_t pc_shape_numel(int ndim, const int64_t *shape, size_t itemsize);
/* New zeroed tensor with its own memory (refcount 1), or NULL when out of memory or the
 * shape is invalid (check it with pc_shape_numel first to tell the two apart). */
pc_tensor *pc_tensor_new(pc_dtype dtype, int ndim, const int64_t *shape);
/* Tensor over memory owned by someone else (refcount 1); the caller keeps it alive. */
pc_tensor *pc_tensor_borrow(void *data, pc_dtype dtype, int ndim, const int64_t *shape);
/* View of `numel(shape)` elements of base starting at element `offset`. */
pc_tensor *pc_tensor_view(pc_tensor *base, int64_t offset, int ndim, const int64_t *shape);
void pc_tensor_retain(pc_tensor *t);
void pc_tensor_release(pc_tensor *t);
/* The gradient buffer (zeroed on first use), or NULL when out of memory. */
pc_tensor *pc_tensor_grad(pc_tensor *t);
static inline float *pc_f32(const pc_tensor *t) { return t ? (float *)t->data : NULL; }

/* ------------------------------------------------------------------ ops */

/* linear: inp (N,IC), weight (OC,IC), bias (OC) or NULL -> out (N,OC) = inp·Wᵀ + b */
void pc_linear_forward(float *out, const float *inp, const float *weight, const float *bias,
                       int N, int IC, int OC);
/* dinp (N,IC) += dout·W;  dweight (OC,IC) += doutᵀ·inp;  dbias (OC) += Σ_n dout */
void pc_linear_backward(float *dinp, float *dweight, float *dbias, const float *dout,
                        const float *inp, const float *weight, int N, int IC, int OC);

/* dst (C) += Σ_n src[n, :] over N rows of stride ld (threads own whole columns) */
void pc_column_sums(float *dst, const float *src, int ld, int N, int C);
/* dst (C) += Σ_n d[n, :]·v[n, :] (dst NULL: none), then d[n, :] ⊙= l (l NULL: none): the
 * backward of a per-column scale. Each column is summed in row order whatever the threads. */
void pc_column_dots_scale(float *dst, float *d, int ldd, const float *v, int ldv,
                          const float *l, int N, int C);
/* y[n, :] = x[n, :] ⊙ l over N rows (y may be x); when save, save (N,C) = x first */
void pc_scale_columns(float *y, int ldy, const float *x, int ldx, const float *l, int N, int C,
                      float *save);

/* x·w over n floats, in four vectors of running sums of the set's native width */
float pc_gate_dot(const float *x, const float *w, int n);

/* UniPELT's gates (ops/gate.c): sig (N,G) = sigmoid(x·wgᵀ + bg), wg (G,in), bg (G); g (N/T, G)
 * their means over each sequence's T rows. The backward from dg (N/T, G): dwg, dbg (NULL:
 * not wanted) += their gradients, dx (NULL: not wanted) += x's share; -1 when out of
 * memory. */
void pc_gate_forward(float *sig, float *g, const float *x, int ldx, const float *wg,
                     const float *bg, int N, int T, int in, int G);
int pc_gate_backward(float *dwg, float *dbg, float *dx, int lddx, const float *dg,
                     const float *sig, const float *x, int ldx, const float *wg, int N, int T,
                     int in, int G);

/* embedding: ids (N) in [0,V) -> out (N,C) = weight[ids]; ids are checked by the caller */
void pc_embedding_forward(float *out, const int64_t *ids, const float *weight, int N, int C);
/* dweight (V,C) scatter-add: dweight[ids[n]] += dout[n] (deterministic) */
void pc_embedding_backward(float *dweight, const float *dout, const int64_t *ids, int N, int C);

/* LSTM, one direction of one layer (ops/lstm.c): x (B,T,I), w_ih (4H,I), w_hh (4H,H), biases
 * (4H) or NULL -> h (B,T,H), saving gates (B,T,4H) and cell states c (B,T,H); reverse runs
 * the steps from T-1 down. The backward accumulates into dx, dw_ih, dw_hh, db (each may be
 * NULL). 0, or -1 out of memory. */
int pc_lstm_forward(float *h, float *gates, float *c, const float *x, const float *w_ih,
                    const float *w_hh, const float *b_ih, const float *b_hh, int B, int T, int IN,
                    int H, bool reverse);
int pc_lstm_backward(float *dx, float *dw_ih, float *dw_hh, float *db, const float *dh,
                     const float *x, const float *h, const float *gates, const float *c,
                     const float *w_ih, const float *w_hh, int B, int T, int IN, int H,
                     bool reverse);

/* layernorm over the last dim: out = (inp - mean) * rstd * weight + bias.
 * mean, rstd (N) are saved for the backward (may be NULL). */
void pc_layernorm_forward(float *out, float *mean, float *rstd, const float *inp,
                          const float *weight, const float *bias, int N, int C, float eps);
void pc_layernorm_backward(float *dinp, float *dweight, float *dbias, const float *dout,
                           const float *inp, const float *weight, const float *mean,
                           const float *rstd, int N, int C);
/* the same, but the input's gradient is stored (not added) in dcopy when that is not NULL
 * (a residual's share) and in dinp through dropout's backward of rate p (0: none; the mask
 * of pc_dropout_forward with seed over the N·C elements): the branch that was dropped out
 * before the residual sum this LayerNorm normalizes */
void pc_layernorm_backward_to(float *dinp, float *dcopy, float *dweight, float *dbias,
                              const float *dout, const float *inp, const float *weight,
                              const float *mean, const float *rstd, int N, int C, float p,
                              uint64_t seed);

/* sum = (a + b) + c3 (c3 NULL: a + b) and out = LayerNorm(sum) in one pass (out may be an
 * input): a residual junction */
void pc_layernorm_forward_sum(float *out, float *mean, float *rstd, float *sum, const float *a,
                              const float *b, const float *c3, const float *weight,
                              const float *bias, int N, int C, float eps);
/* a junction's LayerNorm backward: with v the input's gradient, dres += v (then += dextra
 * when extra_to_res) and dbranch = dropout's backward (rate p, as pc_layernorm_backward_to)
 * of v + dextra; dextra may be NULL (none) or dbranch itself */
void pc_layernorm_backward_junction(float *dbranch, float *dres, const float *dextra,
                                    bool extra_to_res, float *dweight, float *dbias,
                                    const float *dout, const float *inp, const float *weight,
                                    const float *mean, const float *rstd, int N, int C, float p,
                                    uint64_t seed);

/* Activations over n elements. GELU: exact x·Φ(x), or the tanh approximation. */
void pc_gelu_forward(float *out, const float *inp, int64_t n, bool tanh_approx);
void pc_gelu_backward(float *dinp, const float *dout, const float *inp, int64_t n,
                      bool tanh_approx);
/* out = gelu(inp) on the calling thread alone (out may be inp), for callers' own loops */
void pc_gelu_span(float *out, const float *inp, int64_t n, bool tanh_approx);
/* d ⊙= gelu'(inp): the gradient of GELU's output becomes its input's, in place */
void pc_gelu_grad_inplace(float *d, const float *inp, int64_t n, bool tanh_approx);
/* out = gelu(x) and x = gelu'(x) in place, on the calling thread alone: a forward that
 * keeps the slope instead of GELU's input, for a backward that needs only d ⊙= slope. The
 * same bits as pc_gelu_span and pc_gelu_grad_inplace's factor. */
void pc_gelu_value_slope_span(float *out, float *x, int64_t n, bool tanh_approx);
/* d ⊙= s elementwise */
void pc_mul_inplace(float *d, const float *s, int64_t n);
/* The backward of y = gelu(pre) ⊙ l over N rows of C columns (contiguous) in one pass, gelu
 * recomputed from pre: dl (C) += Σ_n d[n] ⊙ gelu(pre[n]) (dl NULL: not wanted), each
 * column summed in row order as pc_column_dots_scale does, and d[n] ← (d[n] ⊙ l) ⊙
 * gelu'(pre[n]) in place, the gradient of pre. */
void pc_gelu_scale_backward(float *dl, float *d, const float *pre, const float *l, int N, int C,
                            bool tanh_approx);
void pc_tanh_forward(float *out, const float *inp, int64_t n);
void pc_tanh_backward(float *dinp, const float *dout, const float *out, int64_t n);
void pc_relu_forward(float *out, const float *inp, int64_t n);
void pc_relu_backward(float *dinp, const float *dout, const float *inp, int64_t n);

/* softmax over the last dim of (N,C) */
void pc_softmax_forward(float *out, const float *inp, int N, int C);
void pc_softmax_backward(float *dinp, const float *dout, const float *out, int N, int C);

/* residual add: out = a + b; backward: da += dout, db += dout */
void pc_add_forward(float *out, const float *a, const float *b, int64_t n);
void pc_add_backward(float *da, float *db, const float *dout, int64_t n);

/* dropout with a counter-based RNG: element i is kept iff hash(seed, i) >= p, and kept
 * elements are scaled by 1/(1-p). The mask depends on (seed, i) only, never on threads. */
void pc_dropout_forward(float *out, const float *inp, int64_t n, float p, uint64_t seed);
void pc_dropout_backward(float *dinp, const float *dout, int64_t n, float p, uint64_t seed);
void pc_dropout_backward_inplace(float *d, int64_t n, float p, uint64_t seed);
/* d = dropout's backward of d + a (p 0: the sum alone) */
void pc_sum_dropout_backward(float *d, const float *a, int64_t n, float p, uint64_t seed);
/* y (N,C) = dropout(y + bias) + residual, element n·C + c (bias, residual NULL: none) */
void pc_bias_dropout_residual(float *y, const float *bias, const float *residual, int N, int C,
                              float p, uint64_t seed);
/* the same, then out = LayerNorm(y) with mean, rstd (N) per row, in one pass (out may be y):
 * the bits of the two calls */
void pc_bias_dropout_residual_norm(float *y, const float *bias, const float *residual, int N,
                                   int C, float p, uint64_t seed, float *out, float *mean,
                                   float *rstd, const float *weight, const float *ln_bias,
                                   float eps);
/* keep-or-drop of element i (the same mask the functions above use) */
bool pc_dropout_keep(uint64_t seed, uint64_t i, float p);

/* Multi-head scaled-dot-product attention, heads inside the kernel. Each of B sequences has
 * Tq queries and Tk keys/values; Tq < Tk serves a layer that only needs some positions'
 * outputs (the first token's, for a classification head).
 * q: (B,Tq,H·D) row stride ld_q; k, v: (B,Tk,H·D) row stride ld_kv (3·H·D for a fused QKV
 * buffer). key_mask: (B,Tk) 1 = attend, 0 = padding, or NULL. Masked keys get the additive
 * bias -FLT_MAX as transformers does (a fully masked row becomes uniform).
 * probs (B,H,Tq,Tk): softmax(QKᵀ/√D + bias), saved for the backward (before dropout).
 * out (B,Tq,H·D) row stride H·D = dropout(probs)·V. */
typedef struct pc_attention_prefix pc_attention_prefix;
typedef struct {
    int B, Tq, Tk, H, D;
    int ld_q, ld_kv;
    const pc_attention_prefix *prefix; /* NULL, or P more keys/values before each sequence's */
    /* With dropout and probs: the forward stores each dropped probability negated (its sign
     * bit set; probabilities are >= 0, so |p| is what it was), and the backward reads the
     * mask back from the signs instead of drawing it again. Set it in both or in neither, and
     * only for probs that pass from the forward to the backward untouched. */
    bool marks_drops;
} pc_attention_dims;

/* A prefix (prefix tuning, P-tuning v2): P rows of keys k and values v (head h at columns
 * h·D, row stride ld) that each sequence's queries attend to before its Tk own, unmasked.
 * Sequence b's rows start at + b·stride (0: every sequence shares them). The probabilities
 * are then (B,H,Tq,P+Tk), the prefix's columns first, and key_mask still covers the Tk own
 * keys. The backward writes (never adds) each sequence's prefix gradients to dk, dv: (B,P,·)
 * with row stride d_ld, sequence b's at + b·d_stride. The keys and values are read where
 * they are: no (B, P+Tk) copy of them is made. */
struct pc_attention_prefix {
    int P;
    const float *k, *v;
    int ld;
    int64_t stride;
    float *dk, *dv;
    int d_ld;
    int64_t d_stride;
};

/* probs may be NULL when no backward follows (each thread then keeps one pair's in
 * scratch); -1 when that scratch cannot be allocated. */
int pc_attention_forward(float *out, float *probs, const float *q, const float *k,
                         const float *v, const float *key_mask, const pc_attention_dims *dims,
                         float dropout_p, uint64_t seed);
/* probs alone, bit for bit as the forward computes them (for a backward that recomputes
 * them instead of keeping them). */
int pc_attention_probs(float *probs, const float *q, const float *k, const float *key_mask,
                       const pc_attention_dims *dims);
/* dq, dk, dv (the row strides of q, k, v) += gradients, given dout (B,Tq,H·D).
 * Like the forward, both return -1 when their per-thread scratch cannot be allocated. */
int pc_attention_backward(float *dq, float *dk, float *dv, const float *dout,
                          const float *probs, const float *q, const float *k, const float *v,
                          const pc_attention_dims *dims, float dropout_p, uint64_t seed);
/* The same, but dq, dk, dv receive the gradients (what they held is never read): every
 * element of their B·Tq (or B·Tk) rows and H·D columns is written. In both, any of dq, dk,
 * dv may be NULL: not wanted, and the products that only it needs are skipped (a prefix's
 * own gradients are always made). */
int pc_attention_backward_into(float *dq, float *dk, float *dv, const float *dout,
                               const float *probs, const float *q, const float *k,
                               const float *v, const pc_attention_dims *dims, float dropout_p,
                               uint64_t seed);

/* One query per sequence with the key and value projections folded in, for a last layer
 * whose only wanted output is the first token's. Keys and values are never projected: with
 * Wk_h, Wv_h (D,C) head h's rows of Wk, Wv and x_j the layer's input rows,
 *   q_h·(Wk_h x_j + bk_h)/√D = (Wk_hᵀ q_h/√D)·x_j + q_h·bk_h/√D
 *   Σ_j p_j (Wv_h x_j + bv_h) = Wv_h (Σ_j p_j x_j) + bv_h Σ_j p_j
 * so each key costs 2·H·C multiply-adds instead of 2·C² for its projections. Without a
 * prefix the constant q_h·bk_h/√D leaves the softmax and Σ_j p_j = 1. With one, every query
 * first attends to the same P rows of keys and values (projected already), whose scores
 * are shifted by that constant instead. */
typedef struct {
    const float *wk, *bk, *wv, *bv; /* (C,C) row-major (out, in), and (C) */
    const float *prefix;            /* (P,2C) rows k|v, or NULL */
    int prefix_rows;                /* P */
    /* (C) or NULL: column scales of the projections' outputs, k_j = sk ⊙ (Wk x_j + bk) and
     * v_j = sv ⊙ (Wv x_j + bv) ((IA)³ on key and value; never the prefix's rows), folded as
     * q_h ⊙ sk_h in the scores and sv_h ⊙ … on the context */
    const float *sk, *sv;
} pc_folded_projections;
/* dims: Tq = 1, Tk = T the sequences' own keys, ld_q the row stride of q (B,H·D); x (B,T,C)
 * with row stride C = H·D; key_mask (B,T) or NULL (the prefix is never masked); out (B,C)
 * receives the context rows. Dropout on the probabilities draws what pc_attention_forward
 * draws; probs (B,H,P+T), or NULL, receives them for a backward (marked as dims->marks_drops
 * says), which is then pc_attention_first_query_backward_folded with k = v = NULL. scratch:
 * pc_attention_folded_scratch_floats(dims, P) floats. */
int64_t pc_attention_folded_scratch_floats(const pc_attention_dims *dims, int prefix_rows);
void pc_attention_first_query_folded(float *out, float *probs, const float *q, const float *x,
                                     const pc_folded_projections *f, const float *key_mask,
                                     const pc_attention_dims *dims, float dropout_p,
                                     uint64_t seed, float *scratch);

/* The backward of one query per sequence (Tq = 1) with the key and value projections
 * folded in: dK and dV of the sequences' own keys are never formed. After
 * pc_attention_forward it reads the keys and values k, v; after a forward that folded them
 * too (pc_attention_first_query_folded with probs), k = v = NULL and it reads f's weights,
 * biases and scales instead (a prefix's rows still come from dims->prefix); column scales
 * need k = NULL. With s the scores'
 * gradient and p' the dropped probabilities of head h over the own keys,
 *   dx_j += Wk_hᵀ (s_j q_h/√D) + Wv_hᵀ (p'_j dO_h) = (s_j/√D)·(q_h Wk_h) + p'_j·(dO_h Wv_h)
 *   dWk_h += Σ_j (s_j/√D) q_hᵀ x_j = q_hᵀ·(Σ_j (s_j/√D) x_j),  dWv_h += dO_hᵀ·(Σ_j p'_j x_j)
 * so each key costs 2·H·C multiply-adds instead of 2·C² for its projections' backward. dq
 * (B,H·D) row stride dims->ld_q receives the queries' gradient, and the prefix's gradients
 * go where dims->prefix says, as in pc_attention_backward_into. x (B,T,C) row stride C is the
 * layer's input. What g points to is added to; NULL members are not wanted. scratch:
 * pc_attention_folded_backward_scratch_floats(dims) floats. */
typedef struct {
    float *dx;         /* (B,T,C): the keys' and values' share of x's gradient */
    float *dwk, *dwv;  /* (C,C): the key and value weights' gradients */
    float *dbk, *dbv;  /* (C): their biases' */
    float *dsk, *dsv;  /* (C): f's column scales' (k = NULL only) */
} pc_folded_grads;
int64_t pc_attention_folded_backward_scratch_floats(const pc_attention_dims *dims);
int pc_attention_first_query_backward_folded(float *dq, const pc_folded_grads *g,
                                             const float *dout, const float *probs,
                                             const float *q, const float *k, const float *v,
                                             const float *x, const pc_folded_projections *f,
                                             const pc_attention_dims *dims, float dropout_p,
                                             uint64_t seed, float *scratch);

/* cross-entropy over logits (N,C) and targets (N): mean over targets != ignore_index
 * (NaN when there are none, as torch). *count receives how many were counted. */
float pc_cross_entropy_forward(const float *logits, const int64_t *targets, int N, int C,
                               int64_t ignore_index, int *count);
/* dlogits (N,C) += dloss * (softmax(logits) - onehot(target)) / count */
void pc_cross_entropy_backward(float *dlogits, const float *logits, const int64_t *targets,
                               int N, int C, int64_t ignore_index, float dloss);
/* class-weighted cross-entropy (torch's weight=): Σ w[t]·nll / Σ w[t] over counted rows;
 * *weight_sum receives Σ w[t] */
float pc_cross_entropy_weighted_forward(const float *logits, const int64_t *targets,
                                        const float *weight, int N, int C,
                                        int64_t ignore_index, double *weight_sum);
void pc_cross_entropy_weighted_backward(float *dlogits, const float *logits,
                                        const int64_t *targets, const float *weight, int N,
                                        int C, int64_t ignore_index, float dloss);
/* binary cross-entropy on logits (multi-label), mean over n elements */
float pc_bce_with_logits_forward(const float *inp, const float *target, int64_t n);
void pc_bce_with_logits_backward(float *dinp, const float *inp, const float *target,
                                 int64_t n, float dloss);
/* mean squared error over n elements */
float pc_mse_forward(const float *inp, const float *target, int64_t n);
void pc_mse_backward(float *dinp, const float *inp, const float *target, int64_t n,
                     float dloss);

#endif
