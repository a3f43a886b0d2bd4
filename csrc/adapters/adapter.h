/* The adapter interface: how every PEFT method meets the encoder.
 *
 * The encoder offers sites, fixed places where adapters act, and calls a site's adapters in
 * order through this interface; it never names a method. A method is one C file in this
 * folder: a pc_adapter_method table (forward, backward, what it saves, which of the
 * encoder's fused fast paths it leaves valid) registered in adapter.c's method list.
 *
 * Sites of a linear layer y = x·Wᵀ + b (every linear of the model has both):
 *   PC_SITE_LINEAR_IN   the input, before the GEMM: x' = f(x) (N,in); the GEMM reads x'.
 *                       (IA)³ on feed-forward layers: x' = x ⊙ l.
 *   PC_SITE_LINEAR_OUT  the output: y' = f(y, x') (N,out), x' the GEMM's input. LoRA adds
 *                       s·x'·Aᵀ·Bᵀ; (IA)³ on other layers scales y' = y ⊙ l.
 * Several adapters may share a site: the forward runs them in order, each on its
 * predecessor's result, and the backward in reverse.
 *
 * Sites of a block (each encoder layer has two: the attention block, whose branch is the
 * attention output projection, and the FFN block, whose branch is the output projection):
 *   PC_SITE_BLOCK       the junction where the block's branch output h (after its dropout)
 *                       meets its residual input x: out = LayerNorm(h + x) without an adapter.
 *                       An adapter there computes out from h, x and the block's LayerNorm as
 *                       it likes: before, after or instead of the residual and LayerNorm
 *                       (bottleneck adapters, as Houlsby's and Pfeiffer's placements).
 *
 * Sites of attention and embeddings:
 *   PC_SITE_KV          extra key/value rows in one layer's attention: P rows before each
 *                       sequence's keys and values, which every query sees (prefix tuning).
 *   PC_SITE_EMBEDDINGS  the word-embedding rows of the input, before position and token-type
 *                       embeddings are added (prompt tuning replaces the first P rows of
 *                       each sequence by virtual tokens).
 *
 * Gates: a method may scale what it adds by a gate computed from its site's input, as
 * UniPELT does (the mean over each sequence's rows of sigmoid(x·wg + bg), ops/gate.c): LoRA,
 * the bottleneck adapter and the prefix take optional gate tensors (the prefix's gate reads
 * the layer's input and scales its keys and values per sequence). A gated adapter's rows depend on their
 * whole sequence, so it declares (adapter_keeps) that a first-token-only last layer does not
 * hold for it, and the encoder then runs that layer whole; unless, like LoRA, it can run on
 * the first tokens alone when handed their sequences' every row of the same input (its gate
 * reads nothing else): the encoder can do that for the query projection, whose input is the
 * layer's, and then keeps the first-token-only last layer.
 *
 * Activations: an adapter saves what its backward needs in a buffer the site owns for it,
 * saved_per_row floats per row of the batch (grown, never shrunk, freed with the encoder's
 * activations); the rows of a forward split among workers are disjoint parts of it.
 */
#ifndef PEFTCORE_ADAPTER_H
#define PEFTCORE_ADAPTER_H

#include <stddef.h>

#include "../engine.h"

typedef enum {
    PC_SITE_LINEAR_IN = 0,
    PC_SITE_LINEAR_OUT = 1,
    PC_LINEAR_SITES = 2,
    PC_SITE_BLOCK = 2,
    PC_SITE_KV = 3,
    PC_SITE_EMBEDDINGS = 4,
} pc_site_kind;

typedef enum { PC_BLOCK_ATTENTION = 0, PC_BLOCK_FFN = 1, PC_BLOCKS = 2 } pc_block_kind;

/* The encoder's fused fast paths an adapter may leave valid (pc_adapter_method.keeps) */
enum {
    /* output site: the linear's bias may be added after the adapter (in the pass that
     * follows the GEMM) with the same result: the adapter adds a term that does not depend
     * on y */
    PC_KEEPS_LATE_BIAS = 1u << 0,
    /* output site: the backward passes dy through unchanged (the gradient of y is that of
     * y'), so the linear's own backward may run before or after it */
    PC_KEEPS_GRADIENT = 1u << 1,
    /* on the key or value projection: a forward of first tokens may fold keys and values
     * into attention, never materialising them, and its backward their gradients, never
     * forming dK and dV (a column scale folds without it: column_scale) */
    PC_KEEPS_FOLDED_KV = 1u << 2,
    /* in the last layer: a classification forward may compute only each sequence's first
     * token there (the adapter's rows are independent of each other) */
    PC_KEEPS_FIRST_TOKEN_ONLY = 1u << 3,
    /* the same when the call also hands it the rows of the first tokens' whole sequences
     * (pc_site_call's seq_x): its gate averages over those */
    PC_KEEPS_FIRST_TOKENS_WITH_SEQUENCES = 1u << 4,
};

enum { PC_ADAPTER_MAX_TENSORS = 12, PC_ADAPTER_MAX_OPTIONS = 8, PC_SITE_MAX_ADAPTERS = 4 };

typedef struct pc_adapter pc_adapter;

/* One call at a site: N rows of a linear (in, out), sequences of T rows each. When the N
 * rows are the first tokens of N sequences (T = 1) whose every row of the same input exists,
 * seq_x holds those (N·seq_T rows, stride seq_ldx) for gates to average over, and the
 * backward adds their share of the gradient to seq_dx (stride seq_lddx, the rows of seq_x;
 * NULL: not wanted). Otherwise seq_x is NULL. */
typedef struct {
    int N, in, out, T;
    bool training; /* train mode: the adapter's dropout acts */
    uint64_t seed; /* the adapter's random stream for this step and site */
    const float *seq_x;
    int seq_ldx, seq_T;
    float *seq_dx;
    int seq_lddx;
} pc_site_call;

/* One call at a block site: the junction of N rows (sequences of T rows each) */
typedef struct {
    int N, C, T;
    bool training;
    uint64_t seed;
    const float *ln_w, *ln_b; /* the block's LayerNorm */
    float ln_eps;
    float *d_ln_w, *d_ln_b;   /* backward: its gradients, or NULL where frozen */
    /* the dropout the encoder applied to the branch h before the junction (rate 0: none;
     * element n·C + c with branch_seed, as pc_dropout_forward): the backward returns dh
     * through it */
    float branch_p;
    uint64_t branch_seed;
} pc_block_call;

typedef struct {
    const char *name;     /* as set_adapters names it: "lora", "ia3" */
    unsigned sites;       /* 1u << pc_site_kind for every site it can act at */
    int num_tensors;
    unsigned keeps;       /* PC_KEEPS_* */
    unsigned (*adapter_keeps)(const pc_adapter *a); /* or per adapter (NULL: keeps) */
    /* 0 when the tensors fit a linear (in, out) at `site`, else -1 with a message in err */
    int (*check)(pc_tensor *const *t, pc_site_kind site, int in, int out, float scale,
                 float dropout, char *err, size_t errlen);
    /* floats per row the forward writes to `saved`: what the backward reads when `keeping`
     * (and any scratch the forward needs either way) */
    int64_t (*saved_per_row)(const pc_adapter *a, int in, int out, bool keeping);
    /* LINEAR_OUT: y (N,out) stride ldy ← f(y, x), x (N,in) stride ldx the linear's input.
     * LINEAR_IN: y (N,in) stride ldy ← f(x) (y may be x). 0, or -1 out of memory. */
    int (*forward)(const pc_adapter *a, const pc_site_call *c, float *y, int ldy,
                   const float *x, int ldx, float *saved, bool keeping);
    /* dy holds the gradient of the forward's result; on return that of its input y
     * (LINEAR_OUT; unchanged with PC_KEEPS_GRADIENT) or x (LINEAR_IN), in place. LINEAR_OUT:
     * dx (stride lddx, NULL: not wanted) += the share that reaches x through the adapter.
     * Gradients of its tensors that require them are accumulated. 0, or -1 out of memory. */
    int (*backward)(const pc_adapter *a, const pc_site_call *c, float *dy, int lddy, float *dx,
                    int lddx, const float *x, int ldx, const float *saved);
    /* Optional: the vector l when the adapter is a column scale, x' = x ⊙ l at LINEAR_IN or
     * y' = y ⊙ l at LINEAR_OUT (NULL: it is not, or not at this site). At an input site it
     * must save nothing, and the encoder may apply it in the pass that makes x (the
     * feed-forward activation) and do its backward (l's gradient Σ_n d ⊙ x, then d ⊙= l) in
     * the pass of that activation's. On a key or value projection's output the encoder may
     * fold it into attention with the projection (pc_folded_projections' sk, sv). */
    pc_tensor *(*column_scale)(const pc_adapter *a);

    /* Block-site methods name their tensors (NULL where an optional one is absent; the
     * required ones are the first num_required) and their numeric options, in these orders */
    const char *const *tensor_names;
    int num_required;
    const char *const *option_names;
    const float *option_defaults; /* for options not given */
    int num_options;
    /* an option given as a word: 0 with its value, or -1 when the word is not one of it */
    int (*option_word)(int option, const char *word, float *value);
    /* 0 when the tensors and options fit hidden size C, else -1 with a message in err */
    int (*block_check)(pc_tensor *const *t, const float *opt, int C, char *err, size_t errlen);
    /* out (N,C) from h (N,C), the branch output, and x (N,C), the residual input. out may
     * be neither. 0, or -1 out of memory. */
    int (*block_forward)(const pc_adapter *a, const pc_block_call *c, float *out,
                         const float *h, const float *x, float *saved, bool keeping);
    /* dh, dx (N,C) = the gradients of h (through the branch's dropout, c->branch_p) and x,
     * overwritten, from dout; tensor and LayerNorm gradients accumulated. */
    int (*block_backward)(const pc_adapter *a, const pc_block_call *c, float *dh, float *dx,
                          const float *dout, const float *h, const float *x,
                          const float *saved);

    /* KV site: P, the rows it adds; k, v (P,C) row stride ld ← its keys and values (the
     * same for every sequence); backward: dk, dv, their gradients summed over the batch */
    int (*kv_rows)(const pc_adapter *a);
    void (*kv_forward)(const pc_adapter *a, float *k, float *v, int ld);
    int (*kv_backward)(const pc_adapter *a, const float *dk, const float *dv, int ld);
    /* KV site, gated (NULL: never gated; or the adapter has no gate tensors, kv_gated):
     * sequence b of c's N = B·T rows x (the layer's input, row stride ldx) gets its rows
     * kv + b·seq (P rows of stride ld: keys, values at + c->in) scaled by its gates, which
     * saved keeps (saved_per_row). The backward, on d_kv in the same layout: the gates'
     * gradients, then d_kv scaled alike (what kv_backward then reads, summed over the batch),
     * the gate tensors' gradients accumulated and dx (NULL: not wanted) += x's share. */
    bool (*kv_gated)(const pc_adapter *a);
    void (*kv_gate_forward)(const pc_adapter *a, const pc_site_call *c, float *kv, int ld,
                            int64_t seq, const float *x, int ldx, float *saved);
    int (*kv_gate_backward)(const pc_adapter *a, const pc_site_call *c, float *dkv, int ld,
                            int64_t seq, float *dx, int lddx, const float *x, int ldx,
                            const float *saved);
    /* A gated adapter's gates after a forward of one call over N rows (sequences of T) whose
     * saved rows start at `saved` (keeping): g (N/T, G) ← them; returns G (0: not gated).
     * The same when that call ran on the sequences' first tokens (seq_x). */
    int (*gate_values)(const pc_adapter *a, int N, int T, int in, int out, const float *saved,
                       float *g);

    /* Embeddings site: rows (B·T, C) of word embeddings, B sequences of T, changed in place;
     * backward: d (B·T, C), their gradient, becomes in place that of the rows before */
    void (*emb_forward)(const pc_adapter *a, float *rows, int B, int T);
    int (*emb_backward)(const pc_adapter *a, float *d, int B, int T);
} pc_adapter_method;

struct pc_adapter {
    const pc_adapter_method *method;
    pc_site_kind site;
    pc_tensor *t[PC_ADAPTER_MAX_TENSORS]; /* retained; NULL: an absent optional tensor */
    float scale, dropout;
    float opt[PC_ADAPTER_MAX_OPTIONS];    /* a block method's options */
};

const pc_adapter_method *pc_adapter_method_find(const char *name);

/* The adapter `method` at `site` over tensors t (retained), for a linear (in, out).
 * NULL with a message in err when the method is unknown, cannot act there or the tensors
 * do not fit. */
pc_adapter *pc_adapter_new(const char *method, pc_site_kind site, pc_tensor *const *t, int n,
                           float scale, float dropout, int in, int out, char *err,
                           size_t errlen);
/* An adapter at a block, KV or embeddings site: t and opt in the method's tensor_names /
 * option_names orders, for hidden size C. NULL with a message in err when they do not fit. */
pc_adapter *pc_site_adapter_new(const char *method, pc_site_kind site, pc_tensor *const *t,
                                const float *opt, int C, char *err, size_t errlen);
void pc_adapter_free(pc_adapter *a);
bool pc_adapter_trains(const pc_adapter *a);

/* The adapters of one site, in order, each with its saved buffer */
typedef struct {
    pc_adapter *adapter;
    float *saved;
    int64_t saved_cap;    /* floats */
    int64_t saved_failed; /* bytes a failed forward could not allocate */
} pc_site_entry;

typedef struct {
    pc_site_entry entry[PC_SITE_MAX_ADAPTERS];
    int n;
} pc_site;

/* Replace the site's adapters by list[0..n) (owned from now on; the old ones are freed) */
void pc_site_set(pc_site *s, pc_adapter **list, int n);
void pc_site_clear(pc_site *s);          /* frees the adapters and their buffers */
void pc_site_release_saved(pc_site *s);  /* frees the saved buffers only */
bool pc_site_keeps(const pc_site *s, unsigned flags); /* every adapter keeps all `flags` */
bool pc_site_trains(const pc_site *s);   /* some adapter tensor wants a gradient */
int64_t pc_site_failed_bytes(const pc_site *s);
void pc_site_clear_failed(pc_site *s);

/* Saved buffers with room for rows [0, rows) (before workers write their parts) */
int pc_site_reserve(pc_site *s, int in, int out, int64_t rows, bool keeping);

/* Output site: y (N,out) ← the adapters in order, x (N,in) the linear's input; their saved
 * rows from `row` on. */
int pc_site_output_forward(pc_site *s, const pc_site_call *c, float *y, int ldy, const float *x,
                           int ldx, int64_t row, bool keeping);
/* Input site: y (N,in) ← the adapters in order over x (y may be x) */
int pc_site_input_forward(pc_site *s, const pc_site_call *c, float *y, int ldy, const float *x,
                          int ldx, int64_t row, bool keeping);
/* Output site backward: the adapters in reverse, dy transformed in place to the gradient
 * of the linear's own output; dx += their shares through x (dx may be NULL). */
int pc_site_output_backward(pc_site *s, const pc_site_call *c, float *dy, int lddy, float *dx,
                            int lddx, const float *x, int ldx, int64_t row);
/* Input site backward: d (N,in) from the gradient of the site's result to that of x, in
 * place. With more than one adapter, scratch (N,in) rebuilds their inputs. */
int pc_site_input_backward(pc_site *s, const pc_site_call *c, float *d, int ldd, const float *x,
                           int ldx, float *scratch, int64_t row);

/* Block site: out (N,C) from the branch h and residual x (one adapter at most) */
int pc_site_block_forward(pc_site *s, const pc_block_call *c, float *out, const float *h,
                          const float *x, int64_t row, bool keeping);
int pc_site_block_backward(pc_site *s, const pc_block_call *c, float *dh, float *dx,
                           const float *dout, const float *h, const float *x, int64_t row);

/* The KV site's gate (when its adapter has one): see kv_gate_forward / kv_gate_backward;
 * row: where the call's rows start in the site's saved buffer */
bool pc_site_kv_gated(const pc_site *s);
int pc_site_kv_gate_forward(pc_site *s, const pc_site_call *c, float *kv, int ld, int64_t seq,
                            const float *x, int ldx, int64_t row, bool keeping);
int pc_site_kv_gate_backward(pc_site *s, const pc_site_call *c, float *dkv, int ld, int64_t seq,
                             float *dx, int lddx, const float *x, int ldx, int64_t row);
/* adapter k's gates after a kept forward of one call over N rows: (N/T, G) into g (room for
 * N/T · PC_GATE_MAX floats); returns G, 0 when it has no gate */
enum { PC_GATE_MAX = 2 };
int pc_site_gate_values(const pc_site *s, int k, int N, int T, int in, int out, float *g);

/* seed of adapter k of a site for a step (so two adapters never share a dropout mask) */
uint64_t pc_site_seed(uint64_t site_seed, int k);

#endif
