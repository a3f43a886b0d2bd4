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
 * Activations: an adapter saves what its backward needs in a buffer the site owns for it,
 * saved_per_row floats per row of the batch (grown, never shrunk, freed with the encoder's
 * activations); the rows of a forward split among workers are disjoint parts of it.
 */
#ifndef PEFTCORE_ADAPTER_H
#define PEFTCORE_ADAPTER_H

#include <stddef.h>

#include "../engine.h"

typedef enum { PC_SITE_LINEAR_IN = 0, PC_SITE_LINEAR_OUT = 1, PC_LINEAR_SITES = 2 } pc_site_kind;

/* The encoder's fused fast paths an adapter may leave valid (pc_adapter_method.keeps) */
enum {
    /* output site: the linear's bias may be added after the adapter (in the pass that
     * follows the GEMM) with the same result: the adapter adds a term that does not depend
     * on y */
    PC_KEEPS_LATE_BIAS = 1u << 0,
    /* output site: the backward passes dy through unchanged (the gradient of y is that of
     * y'), so the linear's own backward may run before or after it */
    PC_KEEPS_GRADIENT = 1u << 1,
    /* on the key or value projection: an eval forward of first tokens may fold keys and
     * values into attention, never materialising them */
    PC_KEEPS_FOLDED_KV = 1u << 2,
};

enum { PC_ADAPTER_MAX_TENSORS = 4, PC_SITE_MAX_ADAPTERS = 4 };

typedef struct pc_adapter pc_adapter;

/* One call at a site: N rows of a linear (in, out) */
typedef struct {
    int N, in, out;
    bool training; /* train mode: the adapter's dropout acts */
    uint64_t seed; /* the adapter's random stream for this step and site */
} pc_site_call;

typedef struct {
    const char *name;     /* as set_adapters names it: "lora", "ia3" */
    unsigned sites;       /* 1u << pc_site_kind for every site it can act at */
    int num_tensors;
    unsigned keeps;       /* PC_KEEPS_* */
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
} pc_adapter_method;

struct pc_adapter {
    const pc_adapter_method *method;
    pc_site_kind site;
    pc_tensor *t[PC_ADAPTER_MAX_TENSORS]; /* retained */
    float scale, dropout;
};

/* The adapter `method` at `site` over tensors t (retained), for a linear (in, out).
 * NULL with a message in err when the method is unknown, cannot act there or the tensors
 * do not fit. */
pc_adapter *pc_adapter_new(const char *method, pc_site_kind site, pc_tensor *const *t, int n,
                           float scale, float dropout, int in, int out, char *err,
                           size_t errlen);
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

/* seed of adapter k of a site for a step (so two adapters never share a dropout mask) */
uint64_t pc_site_seed(uint64_t site_seed, int k);

#endif
