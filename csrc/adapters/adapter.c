/* Adapters and sites: the method list, construction, and running a site's adapters in order
 * (forward) and in reverse (backward) with their saved buffers. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "adapter.h"

/* every method: one line each (the tables live in the methods' own files) */
extern const pc_adapter_method pc_lora_method, pc_ia3_method, pc_bottleneck_method,
    pc_prefix_method, pc_prompt_method;
static const pc_adapter_method *const methods[] = {&pc_lora_method, &pc_ia3_method,
                                                   &pc_bottleneck_method, &pc_prefix_method,
                                                   &pc_prompt_method};

const pc_adapter_method *pc_adapter_method_find(const char *name) {
    for (size_t i = 0; i < sizeof methods / sizeof *methods; i++)
        if (!strcmp(methods[i]->name, name)) return methods[i];
    return NULL;
}

static const char *site_name(pc_site_kind site) {
    static const char *const names[] = {"linear input", "linear output", "block", "kv",
                                        "embeddings"};
    return (unsigned)site <= PC_SITE_EMBEDDINGS ? names[site] : "?";
}

static void unknown_method(const char *method, char *err, size_t errlen) {
    char known[128] = "";
    for (size_t i = 0; i < sizeof methods / sizeof *methods; i++)
        snprintf(known + strlen(known), sizeof known - strlen(known), "%s'%s'", i ? ", " : "",
                 methods[i]->name);
    snprintf(err, errlen, "unknown adapter method '%s' (known: %s)", method, known);
}

/* a new adapter of method m at site holding (and retaining) t[0..m->num_tensors), NULL
 * where an optional one is absent; NULL with a message in err when out of memory */
static pc_adapter *adapter_alloc(const pc_adapter_method *m, pc_site_kind site,
                                 pc_tensor *const *t, char *err, size_t errlen) {
    pc_adapter *a = calloc(1, sizeof *a);
    if (!a) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    a->method = m;
    a->site = site;
    for (int i = 0; i < m->num_tensors; i++) {
        a->t[i] = t[i];
        if (t[i]) pc_tensor_retain(t[i]);
    }
    return a;
}

pc_adapter *pc_adapter_new(const char *method, pc_site_kind site, pc_tensor *const *t, int n,
                           float scale, float dropout, int in, int out, char *err,
                           size_t errlen) {
    const pc_adapter_method *m = pc_adapter_method_find(method);
    if (!m) {
        unknown_method(method, err, errlen);
        return NULL;
    }
    if ((unsigned)site >= PC_LINEAR_SITES || !(m->sites & (1u << site))) {
        snprintf(err, errlen, "adapter method '%s' cannot act at a linear's %s site", method,
                 site == PC_SITE_LINEAR_IN ? "in" : site == PC_SITE_LINEAR_OUT ? "out" : "?");
        return NULL;
    }
    const int least = m->num_required ? m->num_required : m->num_tensors;
    if (n < least || n > m->num_tensors) {
        if (least == m->num_tensors)
            snprintf(err, errlen, "adapter method '%s' takes %d tensors, got %d", method,
                     m->num_tensors, n);
        else
            snprintf(err, errlen, "adapter method '%s' takes %d to %d tensors, got %d", method,
                     least, m->num_tensors, n);
        return NULL;
    }
    pc_tensor *given[PC_ADAPTER_MAX_TENSORS] = {0}; /* the optional ones not given: NULL */
    for (int i = 0; i < n; i++) {
        if (!t[i] || t[i]->dtype != PC_FLOAT32) {
            snprintf(err, errlen, "adapter method '%s': tensor %d must be float32", method, i);
            return NULL;
        }
        given[i] = t[i];
    }
    if (m->check(given, site, in, out, scale, dropout, err, errlen) < 0) return NULL;
    pc_adapter *a = adapter_alloc(m, site, given, err, errlen);
    if (!a) return NULL;
    a->scale = scale;
    a->dropout = dropout;
    return a;
}

pc_adapter *pc_site_adapter_new(const char *method, pc_site_kind site, pc_tensor *const *t,
                                const float *opt, int C, char *err, size_t errlen) {
    const pc_adapter_method *m = pc_adapter_method_find(method);
    if (!m) {
        unknown_method(method, err, errlen);
        return NULL;
    }
    if (site < PC_SITE_BLOCK || site > PC_SITE_EMBEDDINGS || !(m->sites & (1u << site))) {
        snprintf(err, errlen, "adapter method '%s' cannot act at the %s site", method,
                 site_name(site));
        return NULL;
    }
    for (int i = 0; i < m->num_tensors; i++) {
        if (!t[i] && i < m->num_required) {
            snprintf(err, errlen, "adapter method '%s' needs tensor '%s'", method,
                     m->tensor_names[i]);
            return NULL;
        }
        if (t[i] && t[i]->dtype != PC_FLOAT32) {
            snprintf(err, errlen, "adapter method '%s': tensor '%s' must be float32", method,
                     m->tensor_names[i]);
            return NULL;
        }
    }
    if (m->block_check(t, opt, C, err, errlen) < 0) return NULL;
    pc_adapter *a = adapter_alloc(m, site, t, err, errlen);
    if (!a) return NULL;
    for (int i = 0; i < m->num_options; i++) a->opt[i] = opt[i];
    return a;
}

void pc_adapter_free(pc_adapter *a) {
    if (!a) return;
    for (int i = 0; i < PC_ADAPTER_MAX_TENSORS; i++) pc_tensor_release(a->t[i]);
    free(a);
}

bool pc_adapter_trains(const pc_adapter *a) {
    for (int i = 0; i < a->method->num_tensors; i++)
        if (a->t[i] && a->t[i]->requires_grad) return true;
    return false;
}

/* ------------------------------------------------------------ sites */

void pc_site_set(pc_site *s, pc_adapter **list, int n) {
    pc_site_clear(s);
    for (int i = 0; i < n; i++) s->entry[i].adapter = list[i];
    s->n = n;
}

void pc_site_release_saved(pc_site *s) {
    for (int i = 0; i < PC_SITE_MAX_ADAPTERS; i++) {
        free(s->entry[i].saved);
        s->entry[i].saved = NULL;
        s->entry[i].saved_cap = 0;
    }
}

void pc_site_clear(pc_site *s) {
    pc_site_release_saved(s);
    for (int i = 0; i < s->n; i++) pc_adapter_free(s->entry[i].adapter);
    memset(s, 0, sizeof *s);
}

bool pc_site_keeps(const pc_site *s, unsigned flags) {
    for (int i = 0; i < s->n; i++) {
        const pc_adapter *a = s->entry[i].adapter;
        unsigned keeps = a->method->adapter_keeps ? a->method->adapter_keeps(a)
                                                  : a->method->keeps;
        /* rows independent of each other: handed their sequences' rows, it ignores them */
        if (keeps & PC_KEEPS_FIRST_TOKEN_ONLY) keeps |= PC_KEEPS_FIRST_TOKENS_WITH_SEQUENCES;
        if ((keeps & flags) != flags) return false;
    }
    return true;
}

bool pc_site_trains(const pc_site *s) {
    for (int i = 0; i < s->n; i++)
        if (pc_adapter_trains(s->entry[i].adapter)) return true;
    return false;
}

int64_t pc_site_failed_bytes(const pc_site *s) {
    int64_t bytes = 0;
    for (int i = 0; i < s->n; i++)
        if (s->entry[i].saved_failed > bytes) bytes = s->entry[i].saved_failed;
    return bytes;
}

void pc_site_clear_failed(pc_site *s) {
    for (int i = 0; i < s->n; i++) s->entry[i].saved_failed = 0;
}

uint64_t pc_site_seed(uint64_t site_seed, int k) {
    return k == 0 ? site_seed : site_seed ^ (0x9e3779b97f4a7c15ull * (uint64_t)k);
}

int pc_site_reserve(pc_site *s, int in, int out, int64_t rows, bool keeping) {
    for (int i = 0; i < s->n; i++) {
        pc_site_entry *e = &s->entry[i];
        const int64_t need = rows * e->adapter->method->saved_per_row(e->adapter, in, out, keeping);
        if (need <= e->saved_cap) continue;
        float *p = realloc(e->saved, sizeof(float) * (size_t)need);
        if (!p) {
            e->saved_failed = (int64_t)sizeof(float) * need;
            return -1;
        }
        e->saved = p;
        e->saved_cap = need;
    }
    return 0;
}

/* adapter k's call: the site's with its own seed */
static pc_site_call entry_call(const pc_site_call *c, int k) {
    pc_site_call ck = *c;
    ck.seed = pc_site_seed(c->seed, k);
    return ck;
}

/* the rows a call's saved floats are reserved for: its own, or those of the sequences it
 * was handed (seq_x) */
static int64_t call_rows(const pc_site_call *c) {
    return c->seq_x ? (int64_t)c->N * c->seq_T : c->N;
}

static float *saved_rows(const pc_site_entry *e, const pc_site_call *c, int64_t row, bool keeping) {
    const int64_t per = e->adapter->method->saved_per_row(e->adapter, c->in, c->out, keeping);
    return per ? e->saved + row * per : NULL;
}

int pc_site_output_forward(pc_site *s, const pc_site_call *c, float *y, int ldy, const float *x,
                           int ldx, int64_t row, bool keeping) {
    if (!s->n) return 0;
    if (pc_site_reserve(s, c->in, c->out, row + call_rows(c), keeping) < 0) return -1;
    for (int k = 0; k < s->n; k++) {
        const pc_site_entry *e = &s->entry[k];
        const pc_site_call ck = entry_call(c, k);
        if (e->adapter->method->forward(e->adapter, &ck, y, ldy, x, ldx,
                                        saved_rows(e, c, row, keeping), keeping) < 0)
            return -1;
    }
    return 0;
}

int pc_site_input_forward(pc_site *s, const pc_site_call *c, float *y, int ldy, const float *x,
                          int ldx, int64_t row, bool keeping) {
    if (pc_site_reserve(s, c->in, c->out, row + c->N, keeping) < 0) return -1;
    for (int k = 0; k < s->n; k++) {
        const pc_site_entry *e = &s->entry[k];
        const pc_site_call ck = entry_call(c, k);
        if (e->adapter->method->forward(e->adapter, &ck, y, ldy, k ? y : x, k ? ldy : ldx,
                                        saved_rows(e, c, row, keeping), keeping) < 0)
            return -1;
    }
    return 0;
}

int pc_site_output_backward(pc_site *s, const pc_site_call *c, float *dy, int lddy, float *dx,
                            int lddx, const float *x, int ldx, int64_t row) {
    for (int k = s->n - 1; k >= 0; k--) {
        const pc_site_entry *e = &s->entry[k];
        const pc_site_call ck = entry_call(c, k);
        if (e->adapter->method->backward(e->adapter, &ck, dy, lddy, dx, lddx, x, ldx,
                                         saved_rows(e, c, row, true)) < 0)
            return -1;
    }
    return 0;
}

int pc_site_input_backward(pc_site *s, const pc_site_call *c, float *d, int ldd, const float *x,
                           int ldx, float *scratch, int64_t row) {
    for (int k = s->n - 1; k >= 0; k--) {
        const pc_site_entry *e = &s->entry[k];
        /* adapter k's input: x, or x through adapters 0..k-1 again (the same code and
         * order as the forward, so bit for bit what it saw) */
        const float *xk = x;
        int ldk = ldx;
        if (k > 0) {
            for (int j = 0; j < k; j++) {
                const pc_site_call cj = entry_call(c, j);
                const pc_site_entry *ej = &s->entry[j];
                if (ej->adapter->method->forward(ej->adapter, &cj, scratch, c->in,
                                                 j ? scratch : x, j ? c->in : ldx,
                                                 saved_rows(ej, c, row, true), true) < 0)
                    return -1;
            }
            xk = scratch;
            ldk = c->in;
        }
        const pc_site_call ck = entry_call(c, k);
        if (e->adapter->method->backward(e->adapter, &ck, d, ldd, NULL, 0, xk, ldk,
                                         saved_rows(e, c, row, true)) < 0)
            return -1;
    }
    return 0;
}

int pc_site_block_forward(pc_site *s, const pc_block_call *c, float *out, const float *h,
                          const float *x, int64_t row, bool keeping) {
    pc_site_entry *e = &s->entry[0];
    if (pc_site_reserve(s, c->C, c->C, row + c->N, keeping) < 0) return -1;
    const int64_t per = e->adapter->method->saved_per_row(e->adapter, c->C, c->C, keeping);
    return e->adapter->method->block_forward(e->adapter, c, out, h, x,
                                             per ? e->saved + row * per : NULL, keeping);
}

int pc_site_block_backward(pc_site *s, const pc_block_call *c, float *dh, float *dx,
                           const float *dout, const float *h, const float *x, int64_t row) {
    const pc_site_entry *e = &s->entry[0];
    const int64_t per = e->adapter->method->saved_per_row(e->adapter, c->C, c->C, true);
    return e->adapter->method->block_backward(e->adapter, c, dh, dx, dout, h, x,
                                              per ? e->saved + row * per : NULL);
}

bool pc_site_kv_gated(const pc_site *s) {
    const pc_adapter *a = s->n ? s->entry[0].adapter : NULL;
    return a && a->method->kv_gated && a->method->kv_gated(a);
}

int pc_site_kv_gate_forward(pc_site *s, const pc_site_call *c, float *kv, int ld, int64_t seq,
                            const float *x, int ldx, int64_t row, bool keeping) {
    if (!pc_site_kv_gated(s)) return 0;
    if (pc_site_reserve(s, c->in, c->out, row + c->N, keeping) < 0) return -1;
    const pc_site_entry *e = &s->entry[0];
    e->adapter->method->kv_gate_forward(e->adapter, c, kv, ld, seq, x, ldx,
                                        saved_rows(e, c, row, keeping));
    return 0;
}

int pc_site_kv_gate_backward(pc_site *s, const pc_site_call *c, float *dkv, int ld, int64_t seq,
                             float *dx, int lddx, const float *x, int ldx, int64_t row) {
    if (!pc_site_kv_gated(s)) return 0;
    const pc_site_entry *e = &s->entry[0];
    return e->adapter->method->kv_gate_backward(e->adapter, c, dkv, ld, seq, dx, lddx, x, ldx,
                                                saved_rows(e, c, row, true));
}

int pc_site_gate_values(const pc_site *s, int k, int N, int T, int in, int out, float *g) {
    if (k < 0 || k >= s->n) return 0;
    const pc_site_entry *e = &s->entry[k];
    const pc_adapter *a = e->adapter;
    if (!a->method->gate_values || !e->saved ||
        e->saved_cap < (int64_t)N * a->method->saved_per_row(a, in, out, true))
        return 0;
    return a->method->gate_values(a, N, T, in, out, e->saved, g);
}
