/* BERT-family encoder: parameters, forward and backward over the engine's ops.
 *
 * Shapes: B sequences of T tokens, N = B·T rows, C = hidden, H heads of D = C/H,
 * I = intermediate. One encoder layer (post-LayerNorm, as BERT):
 *   qkv  = x·Wqkvᵀ + bqkv                       (N,3C)  one GEMM, q|k|v side by side
 *   ctx  = attention(q, k, v, mask)             (N,C)
 *   r1   = dropout(ctx·Waoᵀ + bao) + x          (N,C)
 *   h1   = LayerNorm1(r1)                       (N,C)
 *   pre  = h1·Wiᵀ + bi;  act = gelu(pre)        (N,I)
 *   r2   = dropout(act·Woᵀ + bo) + h1           (N,C)
 *   out  = LayerNorm2(r2)                       (N,C)
 * Any linear may carry adapters at its input and output sites (adapters/adapter.h): the
 * encoder runs a site's adapters through that interface and asks it which of its fused fast
 * paths stay valid, never naming a method.
 *
 * A classification forward needs only the first token of each sequence from the last layer:
 * there (first_token_only) k and v are computed for all N rows but the queries, attention
 * output, FFN and LayerNorms for the B first-token rows only, with the same result for
 * those rows and about 10/12 of the layer's work saved.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <omp.h>

#include "../ops/kernels.h"
#include "encoder.h"

enum { SLOT_Q, SLOT_K, SLOT_V, SLOT_AO, SLOT_I, SLOT_O, SLOTS_PER_LAYER };

typedef struct {
    pc_tensor *qkv_w, *qkv_b;            /* fused (3C,C), (3C): q|k|v */
    pc_tensor *ln1_w, *ln1_b, *ln2_w, *ln2_b;
    pc_linear_slot *slot[SLOTS_PER_LAYER];
    pc_site block[PC_BLOCKS]; /* adapters at the attention and FFN blocks' junctions */
    pc_site kv;               /* extra key/value rows of its attention */
} layer_params;

/* Activations of one layer, saved for the backward. Not saved, but shared by all layers and
 * recomputed by the backward when needed (bit for bit, by the same code): h1 = LN1(r1)
 * (from r1 and its statistics), act = gelu(pre) and out = LN2(r2) (layer outputs alternate
 * between two buffers; the backward rebuilds the next layer's input from r2). The attention
 * probabilities are recomputed from q and k when dense weights train (full fine-tuning,
 * where gradients and optimizer state already weigh 3× the model and the recompute is ~3 %
 * of a step) and kept per layer when only adapters or heads train (the recompute would
 * cost ~6 % of that cheaper step, and memory is small anyway). */
typedef struct {
    float *qkv, *probs, *ctx, *r1, *ln1_mean, *ln1_rstd, *h1, *pre, *act, *r2, *ln2_mean,
        *ln2_rstd, *out;
    float *kv; /* with a prefix: its rows k|v (P,2C), per sequence (B,P,2C) when gated */
    bool pre_is_slope; /* pre holds gelu'(pre) (ffn_keeps_slope) */
} layer_acts;

typedef struct {
    pc_tensor *t;
    char name[128];
    bool is_head;
} named_param;

struct pc_encoder {
    pc_encoder_config cfg;
    pc_tensor *word_emb, *pos_emb, *type_emb, *emb_ln_w, *emb_ln_b;
    layer_params *layer;
    pc_linear_slot *slots;  /* all linears: 6 per layer, then pooler, then head */
    int num_slots;
    pc_linear_slot *pooler, *cls_dense, *cls_out; /* cls_dense only for RoBERTa's head */
    pc_site emb; /* adapters at the word-embedding rows */
    named_param *params;
    int num_params, params_cap;

    /* activations: one arena, grown when a batch needs more, freed by
     * pc_encoder_release_activations */
    float *arena;
    int64_t arena_floats;
    int64_t failed_bytes; /* the allocation the last failed forward could not make */
    int B, T;
    int64_t inference_rows; /* eval forwards without a backward: tokens of scratch (0: all) */
    float *capture; /* (L+1, N, C) or NULL: every layer's output copied here by a forward */
    bool has_forward, training;
    bool first_token_only; /* the last layer of the last forward ran on first tokens only */
    bool keeping;          /* the forward in progress keeps its activations for a backward */
    bool probs_per_layer;  /* the last forward kept every layer's attention probabilities */
    bool backward_ready; /* the last forward kept its activations and no backward ran yet */
    bool forward_kept;   /* the last forward kept its activations (adapters' saved rows) */
    uint64_t seed;
    int64_t *ids, *positions, *types; /* copies of the last batch (for embedding backward) */
    float *key_mask;                  /* (N) or NULL */
    bool has_mask;
    float *emb_sum, *emb_mean, *emb_rstd, *emb_out;
    layer_acts *acts;
    layer_acts *workers;   /* without a backward: each worker's layer scratch (one group) */
    int workers_cap;
    float *first_x;        /* (B,C) the last layer's input at the first tokens */
    float *first_out;      /* (B,C) without a backward: a first-token-only last layer's output */
    float *act;            /* (N,I) every layer's activation output, then its gradient */
    float *probs, *h1;     /* (B,H,T,T), (N,C) every layer's, recomputed by the backward */
    float *out_buf[2];     /* (N,C) layer l's output in out_buf[l % 2] (one buffer without
                              a backward: a layer reads its input before writing its output,
                              and the embeddings are summed and normalised in it too) */
    float *cls_in, *pooled, *head_x1, *head_h, *head_x2, *logits; /* (B,C)/(B,L) */
    /* gradient scratch */
    float *d_x, *d_y, *d_h1, *d_r, *d_qkv, *d_ctx, *d_act, *d_head; /* d_x, d_y: ping-pong */
    float *d_logits; /* (B,L) a copy of the given gradient (adapters may transform it) */
    float *d_kv;     /* (B, P, 2C) with prefixes: each sequence's gradient of the prefix rows */
    /* linears with input-site adapters: their modified input (forward), then in the
     * backward its gradient and the rebuilt input side by side; (rows, 2·widest input) */
    float *in_scratch;
    int64_t in_scratch_cap, in_scratch_failed;
};

/* ------------------------------------------------------------ construction */

/* Add t to the named parameter list (the list owns the reference); NULL when out of memory. */
static pc_tensor *register_param(pc_encoder *enc, pc_tensor *t, const char *name, bool is_head) {
    if (!t) return NULL;
    t->requires_grad = true;
    if (enc->num_params == enc->params_cap) {
        int cap = enc->params_cap ? enc->params_cap * 2 : 64;
        named_param *p = realloc(enc->params, sizeof *p * cap);
        if (!p) { pc_tensor_release(t); return NULL; }
        enc->params = p;
        enc->params_cap = cap;
    }
    named_param *np = &enc->params[enc->num_params++];
    np->t = t;
    snprintf(np->name, sizeof np->name, "%s", name);
    np->is_head = is_head;
    return t;
}

static pc_tensor *new_param(pc_encoder *enc, const char *name, bool is_head, int ndim, int64_t a,
                            int64_t b) {
    int64_t shape[2] = {a, b};
    return register_param(enc, pc_tensor_new(PC_FLOAT32, ndim, shape), name, is_head);
}

/* a view (q/k/v rows of the fused buffers) registered under its own name */
static pc_tensor *new_view_param(pc_encoder *enc, const char *name, pc_tensor *base,
                                 int64_t offset, int ndim, int64_t a, int64_t b) {
    int64_t shape[2] = {a, b};
    return register_param(enc, pc_tensor_view(base, offset, ndim, shape), name, false);
}

static pc_linear_slot *init_slot(pc_encoder *enc, int index, const char *name, int layer,
                                 int in, int out, bool is_head, bool own_params) {
    pc_linear_slot *s = &enc->slots[index];
    snprintf(s->name, sizeof s->name, "%s", name);
    s->in = in;
    s->out = out;
    s->layer = layer;
    if (own_params) {
        char pname[128];
        snprintf(pname, sizeof pname, "%s.weight", name);
        s->weight = new_param(enc, pname, is_head, 2, out, in);
        snprintf(pname, sizeof pname, "%s.bias", name);
        s->bias = new_param(enc, pname, is_head, 1, out, 0);
        if (!s->weight || !s->bias) return NULL;
        pc_tensor_retain(s->weight); /* the slot's own references */
        pc_tensor_retain(s->bias);
    }
    return s;
}

static const char *check_config(const pc_encoder_config *c) {
    if (c->vocab_size <= 0 || c->hidden <= 0 || c->layers < 0 || c->heads <= 0 ||
        c->intermediate <= 0 || c->max_positions <= 0 || c->type_vocab_size <= 0)
        return "sizes must be positive";
    if (c->hidden % c->heads) return "hidden_size must be a multiple of num_attention_heads";
    if (!(c->layer_norm_eps > 0)) return "layer_norm_eps must be > 0";
    if (!(c->hidden_dropout >= 0 && c->hidden_dropout < 1) ||
        !(c->attention_dropout >= 0 && c->attention_dropout < 1) ||
        !(c->classifier_dropout >= 0 && c->classifier_dropout < 1))
        return "dropout probabilities must be in [0, 1)";
    if (c->head != PC_HEAD_NONE && c->num_labels <= 0) return "num_labels must be positive";
    if (c->head == PC_HEAD_BERT && !c->add_pooler) return "a BERT head needs the pooler";
    return NULL;
}

pc_encoder *pc_encoder_new(const pc_encoder_config *cfg, const char **err) {
    *err = check_config(cfg);
    if (*err) return NULL;
    pc_encoder *enc = calloc(1, sizeof *enc);
    if (!enc) { *err = "out of memory"; return NULL; }
    enc->cfg = *cfg;
    const int C = cfg->hidden, I = cfg->intermediate, L = cfg->layers;
    enc->num_slots = L * SLOTS_PER_LAYER + (cfg->add_pooler ? 1 : 0) +
                     (cfg->head == PC_HEAD_BERT ? 1 : cfg->head == PC_HEAD_ROBERTA ? 2 : 0);
    enc->slots = calloc((size_t)enc->num_slots + 1, sizeof *enc->slots);
    enc->layer = calloc((size_t)L + 1, sizeof *enc->layer);
    if (!enc->slots || !enc->layer) goto oom;

    if (!(enc->word_emb = new_param(enc, "embeddings.word_embeddings.weight", false, 2,
                                    cfg->vocab_size, C)) ||
        !(enc->pos_emb = new_param(enc, "embeddings.position_embeddings.weight", false, 2,
                                   cfg->max_positions, C)) ||
        !(enc->type_emb = new_param(enc, "embeddings.token_type_embeddings.weight", false, 2,
                                    cfg->type_vocab_size, C)) ||
        !(enc->emb_ln_w = new_param(enc, "embeddings.LayerNorm.weight", false, 1, C, 0)) ||
        !(enc->emb_ln_b = new_param(enc, "embeddings.LayerNorm.bias", false, 1, C, 0)))
        goto oom;

    static const char *const qkv_names[3] = {"query", "key", "value"};
    for (int l = 0; l < L; l++) {
        layer_params *lp = &enc->layer[l];
        char name[96], pname[128];
        int64_t fused_w[2] = {3 * (int64_t)C, C}, fused_b[1] = {3 * (int64_t)C};
        lp->qkv_w = pc_tensor_new(PC_FLOAT32, 2, fused_w);
        lp->qkv_b = pc_tensor_new(PC_FLOAT32, 1, fused_b);
        if (!lp->qkv_w || !lp->qkv_b) goto oom;
        for (int s = 0; s < 3; s++) {
            snprintf(name, sizeof name, "encoder.layer.%d.attention.self.%s", l, qkv_names[s]);
            pc_linear_slot *slot = init_slot(enc, l * SLOTS_PER_LAYER + s, name, l, C, C, false, false);
            snprintf(pname, sizeof pname, "%s.weight", name);
            slot->weight = new_view_param(enc, pname, lp->qkv_w, (int64_t)s * C * C, 2, C, C);
            snprintf(pname, sizeof pname, "%s.bias", name);
            slot->bias = new_view_param(enc, pname, lp->qkv_b, (int64_t)s * C, 1, C, 0);
            if (!slot->weight || !slot->bias) goto oom;
            pc_tensor_retain(slot->weight);
            pc_tensor_retain(slot->bias);
            lp->slot[s] = slot;
        }
        snprintf(name, sizeof name, "encoder.layer.%d.attention.output.dense", l);
        if (!(lp->slot[SLOT_AO] = init_slot(enc, l * SLOTS_PER_LAYER + SLOT_AO, name, l, C, C, false, true)))
            goto oom;
        snprintf(pname, sizeof pname, "encoder.layer.%d.attention.output.LayerNorm.weight", l);
        if (!(lp->ln1_w = new_param(enc, pname, false, 1, C, 0))) goto oom;
        snprintf(pname, sizeof pname, "encoder.layer.%d.attention.output.LayerNorm.bias", l);
        if (!(lp->ln1_b = new_param(enc, pname, false, 1, C, 0))) goto oom;
        snprintf(name, sizeof name, "encoder.layer.%d.intermediate.dense", l);
        if (!(lp->slot[SLOT_I] = init_slot(enc, l * SLOTS_PER_LAYER + SLOT_I, name, l, C, I, false, true)))
            goto oom;
        snprintf(name, sizeof name, "encoder.layer.%d.output.dense", l);
        if (!(lp->slot[SLOT_O] = init_slot(enc, l * SLOTS_PER_LAYER + SLOT_O, name, l, I, C, false, true)))
            goto oom;
        snprintf(pname, sizeof pname, "encoder.layer.%d.output.LayerNorm.weight", l);
        if (!(lp->ln2_w = new_param(enc, pname, false, 1, C, 0))) goto oom;
        snprintf(pname, sizeof pname, "encoder.layer.%d.output.LayerNorm.bias", l);
        if (!(lp->ln2_b = new_param(enc, pname, false, 1, C, 0))) goto oom;
    }
    int next = L * SLOTS_PER_LAYER;
    if (cfg->add_pooler && !(enc->pooler = init_slot(enc, next++, "pooler.dense", -1, C, C, false, true)))
        goto oom;
    if (cfg->head == PC_HEAD_BERT &&
        !(enc->cls_out = init_slot(enc, next++, "classifier", -1, C, cfg->num_labels, true, true)))
        goto oom;
    if (cfg->head == PC_HEAD_ROBERTA &&
        (!(enc->cls_dense = init_slot(enc, next++, "classifier.dense", -1, C, C, true, true)) ||
         !(enc->cls_out = init_slot(enc, next++, "classifier.out_proj", -1, C, cfg->num_labels, true, true))))
        goto oom;
    /* LayerNorm weights start at 1 as in transformers; the rest is set by the caller */
    for (int i = 0; i < enc->num_params; i++) {
        if (strstr(enc->params[i].name, "LayerNorm.weight")) {
            float *w = pc_f32(enc->params[i].t);
            for (int64_t j = 0; j < enc->params[i].t->numel; j++) w[j] = 1.0f;
        }
    }
    return enc;
oom:
    pc_encoder_free(enc);
    *err = "out of memory";
    return NULL;
}

void pc_encoder_free(pc_encoder *enc) {
    if (!enc) return;
    for (int i = 0; i < enc->num_params; i++) pc_tensor_release(enc->params[i].t);
    free(enc->params);
    if (enc->layer)
        for (int l = 0; l < enc->cfg.layers; l++) {
            pc_tensor_release(enc->layer[l].qkv_w);
            pc_tensor_release(enc->layer[l].qkv_b);
            for (int k = 0; k < PC_BLOCKS; k++) pc_site_clear(&enc->layer[l].block[k]);
            pc_site_clear(&enc->layer[l].kv);
        }
    if (enc->slots)
        for (int i = 0; i < enc->num_slots; i++) {
            pc_tensor_release(enc->slots[i].weight);
            pc_tensor_release(enc->slots[i].bias);
            for (int k = 0; k < PC_LINEAR_SITES; k++) pc_site_clear(&enc->slots[i].site[k]);
        }
    pc_site_clear(&enc->emb);
    free(enc->slots);
    free(enc->layer);
    free(enc->acts);
    free(enc->workers);
    free(enc->ids);
    free(enc->in_scratch);
    pc_free(enc->arena);
    free(enc);
}

const pc_encoder_config *pc_encoder_get_config(const pc_encoder *enc) { return &enc->cfg; }
int pc_encoder_num_params(const pc_encoder *enc) { return enc->num_params; }

pc_tensor *pc_encoder_param(const pc_encoder *enc, int i, const char **name, bool *is_head) {
    if (i < 0 || i >= enc->num_params) return NULL;
    if (name) *name = enc->params[i].name;
    if (is_head) *is_head = enc->params[i].is_head;
    return enc->params[i].t;
}

int pc_encoder_num_linears(const pc_encoder *enc) { return enc->num_slots; }

pc_linear_slot *pc_encoder_linear(pc_encoder *enc, int i) {
    return i >= 0 && i < enc->num_slots ? &enc->slots[i] : NULL;
}

int pc_encoder_set_adapters(pc_encoder *enc, int linear, pc_site_kind site, pc_adapter **list,
                            int n) {
    pc_linear_slot *s = pc_encoder_linear(enc, linear);
    if (!s || (unsigned)site >= PC_LINEAR_SITES || n < 0 || n > PC_SITE_MAX_ADAPTERS) return -1;
    for (int i = 0; i < n; i++) {
        char err[8];
        const pc_adapter *a = list[i];
        if (!a || a->site != site ||
            a->method->check((pc_tensor *const *)a->t, site, s->in, s->out, a->scale,
                             a->dropout, err, sizeof err) < 0)
            return -2;
    }
    pc_site_set(&s->site[site], list, n);
    enc->has_forward = false; /* a saved forward no longer matches the model */
    enc->backward_ready = false;
    return 0;
}

int pc_encoder_set_block_adapters(pc_encoder *enc, int layer, pc_block_kind block,
                                  pc_adapter **list, int n) {
    if (layer < 0 || layer >= enc->cfg.layers || (unsigned)block >= PC_BLOCKS || n < 0 || n > 1)
        return -1;
    for (int i = 0; i < n; i++) {
        char err[8];
        const pc_adapter *a = list[i];
        if (!a || a->site != PC_SITE_BLOCK ||
            a->method->block_check((pc_tensor *const *)a->t, a->opt, enc->cfg.hidden, err,
                                   sizeof err) < 0)
            return -2;
    }
    pc_site_set(&enc->layer[layer].block[block], list, n);
    enc->has_forward = false;
    enc->backward_ready = false;
    return 0;
}

/* the adapter of a KV site (layer >= 0) or of the embeddings (layer -1) */
static int set_rows_adapter(pc_encoder *enc, int layer, pc_site_kind site, pc_adapter **list,
                            int n) {
    if (layer < -1 || layer >= enc->cfg.layers || (layer < 0) != (site == PC_SITE_EMBEDDINGS) ||
        n < 0 || n > 1)
        return -1;
    for (int i = 0; i < n; i++) {
        char err[8];
        const pc_adapter *a = list[i];
        if (!a || a->site != site ||
            a->method->block_check((pc_tensor *const *)a->t, a->opt, enc->cfg.hidden, err,
                                   sizeof err) < 0)
            return -2;
    }
    pc_site_set(layer < 0 ? &enc->emb : &enc->layer[layer].kv, list, n);
    enc->has_forward = false;
    enc->backward_ready = false;
    return 0;
}

int pc_encoder_set_kv_adapters(pc_encoder *enc, int layer, pc_adapter **list, int n) {
    return layer < 0 ? -1 : set_rows_adapter(enc, layer, PC_SITE_KV, list, n);
}

int pc_encoder_set_embedding_adapters(pc_encoder *enc, pc_adapter **list, int n) {
    return set_rows_adapter(enc, -1, PC_SITE_EMBEDDINGS, list, n);
}

/* the extra key/value rows of layer l's attention, and the most of any layer */
static int kv_rows_of(const layer_params *lp) {
    return lp->kv.n ? lp->kv.entry[0].adapter->method->kv_rows(lp->kv.entry[0].adapter) : 0;
}

static int most_kv_rows(const pc_encoder *enc) {
    int P = 0;
    for (int l = 0; l < enc->cfg.layers; l++)
        if (kv_rows_of(&enc->layer[l]) > P) P = kv_rows_of(&enc->layer[l]);
    return P;
}

/* some layer has a block adapter */
static bool has_block_adapters(const pc_encoder *enc) {
    for (int l = 0; l < enc->cfg.layers; l++)
        for (int k = 0; k < PC_BLOCKS; k++)
            if (enc->layer[l].block[k].n) return true;
    return false;
}

int pc_encoder_set_linear_params(pc_encoder *enc, int linear, pc_tensor *weight, pc_tensor *bias) {
    pc_linear_slot *s = pc_encoder_linear(enc, linear);
    if (!s || s->layer >= 0) return -1; /* fused q/k/v and layer linears are not swappable */
    if (weight->dtype != PC_FLOAT32 || bias->dtype != PC_FLOAT32 ||
        weight->numel != s->weight->numel || bias->numel != s->bias->numel)
        return -2;
    pc_tensor_retain(weight);
    pc_tensor_retain(bias);
    pc_tensor_release(s->weight);
    pc_tensor_release(s->bias);
    s->weight = weight;
    s->bias = bias;
    enc->has_forward = false;
    return 0;
}

/* ------------------------------------------------------------ activations */

static int64_t round_up(int64_t n) { return (n + 15) / 16 * 16; }

/* floats per token of the grouped inference scratch region: max(4C, I) + C (see below) */
static int64_t group_scratch_width(const pc_encoder_config *c) {
    const int64_t C = c->hidden, I = c->intermediate;
    return (4 * C > I ? 4 * C : I) + C;
}

int64_t pc_encoder_inference_bytes_per_token(const pc_encoder *enc) {
    /* the region, plus the two LayerNorms' mean and rstd */
    return (int64_t)sizeof(float) * (group_scratch_width(&enc->cfg) + 4);
}

/* The shape of one forward's activations */
typedef struct {
    int B, T;
    bool keep;            /* a backward may follow: every layer keeps its activations */
    bool probs_per_layer; /* each layer keeps its attention probabilities */
    int workers, group;   /* without keep: workers, each with scratch for `group` sequences */
    bool first_token_only;
    bool blocks;          /* block adapters: their inputs and outputs kept apart */
    int prefix;           /* the most extra key/value rows of any layer */
} act_plan;

/* The one table of the activation arena: hands out every buffer of a forward in order and
 * returns the floats they take. With base NULL it only counts (nothing is written), so the
 * arena's size and its layout come from the same lines and cannot drift apart.
 *
 * With keep every layer keeps its activations and the gradient scratch is laid out too.
 * Without, only the hidden state (N,C) spans the batch: the embeddings and every layer work
 * in place in it (a layer reads its input before it writes its output; a first-token-only
 * last layer writes first_out), and each worker has one layer scratch region sized for a
 * group of sequences, through which it runs its groups. */
static int64_t lay_out_activations(pc_encoder *enc, const act_plan *pl, float *base) {
    const pc_encoder_config *c = &enc->cfg;
    const int B = pl->B, T = pl->T;
    const bool keep = pl->keep;
    const int64_t N = (int64_t)B * T, C = c->hidden, I = c->intermediate, H = c->heads;
    const int64_t L = c->layers, nl = c->num_labels > 0 ? c->num_labels : 1;
    const int64_t Ng = (int64_t)pl->group * T; /* rows of a worker's layer scratch */
    const int64_t Tk = T + pl->prefix; /* keys per sequence */
    const int64_t probs = (int64_t)pl->group * H * T * Tk;
    int64_t used = 0;
    layer_acts unused;
#define TAKE(dst, count)                                    \
    do {                                                    \
        float *at_ = base ? base + used : NULL;             \
        used += round_up(count);                            \
        if (base) (dst) = at_;                              \
    } while (0)
    TAKE(enc->out_buf[0], N * C);
    if (keep) {
        TAKE(enc->out_buf[1], N * C);
        TAKE(enc->emb_sum, N * C);
        TAKE(enc->emb_out, N * C);
    } else if (base) {
        enc->out_buf[1] = enc->emb_sum = enc->emb_out = enc->out_buf[0];
    }
    TAKE(enc->emb_mean, N);
    TAKE(enc->emb_rstd, N);
    if (keep) {
        TAKE(enc->act, N * I);
        if (!pl->probs_per_layer) TAKE(enc->probs, probs);
        TAKE(enc->h1, N * C);
    } else if (base) {
        enc->act = enc->probs = enc->h1 = NULL;
    }
    TAKE(enc->first_out, B * C);
    /* without keep one scratch region serves a layer's steps in turn, (W + C)·Ng floats
     * with W = max(4C, I): q|k|v (3C) and ctx (C), then pre (I) over both, and r1 = h1
     * (LayerNorm in place) behind; r2 is summed in the output rows (their input is consumed
     * by then) and the probabilities live in per-thread scratch */
    const int64_t wide = group_scratch_width(c) - C;
    for (int w = 0; !keep && L > 0 && w < pl->workers; w++) {
        layer_acts *a = base ? &enc->workers[w] : &unused;
        float *region = NULL;
        /* with block adapters h1 follows r1 (a junction writes its output apart from its
         * input), and the FFN branch r2 takes r1's place once h1 is made */
        TAKE(region, Ng * (wide + (pl->blocks ? 2 : 1) * C));
        a->qkv = region;
        a->ctx = region ? region + Ng * 3 * C : NULL;
        a->pre = a->act = region; /* gelu in place */
        a->r1 = a->h1 = region ? region + Ng * wide : NULL;
        a->r2 = NULL; /* the layer's output rows */
        if (pl->blocks && region) {
            a->h1 = region + Ng * (wide + C);
            a->r2 = a->r1;
        }
        a->probs = NULL;
        a->out = NULL;
        TAKE(a->ln1_mean, Ng);
        TAKE(a->ln1_rstd, Ng);
        TAKE(a->ln2_mean, Ng);
        TAKE(a->ln2_rstd, Ng);
        a->kv = NULL;
        if (pl->prefix) TAKE(a->kv, pl->group * pl->prefix * 2 * C);
    }
    for (int l = 0; l < L; l++) {
        layer_acts *a = base ? &enc->acts[l] : &unused;
        if (!keep) {
            /* only the output: the scratch is the worker's */
            memset(a, 0, sizeof *a);
            if (base) a->out = pl->first_token_only && l == L - 1 ? enc->first_out : enc->out_buf[0];
            continue;
        }
        TAKE(a->qkv, N * 3 * C);
        if (pl->probs_per_layer)
            TAKE(a->probs, probs);
        else
            a->probs = enc->probs;
        TAKE(a->ctx, N * C);
        TAKE(a->r1, N * C);
        a->h1 = enc->h1;
        TAKE(a->r2, N * C);
        a->out = enc->out_buf[l % 2];
        if (pl->blocks) { /* every layer's h1 and output kept: nothing rebuilt from them */
            TAKE(a->h1, N * C);
            if (l < L - 1) TAKE(a->out, N * C);
        }
        TAKE(a->pre, N * I);
        a->act = enc->act;
        TAKE(a->ln1_mean, N);
        TAKE(a->ln1_rstd, N);
        TAKE(a->ln2_mean, N);
        TAKE(a->ln2_rstd, N);
        a->kv = NULL;
        if (pl->prefix && kv_rows_of(&enc->layer[l])) TAKE(a->kv, B * pl->prefix * 2 * C);
    }
    TAKE(enc->first_x, B * C);
    TAKE(enc->cls_in, B * C);
    TAKE(enc->pooled, B * C);
    TAKE(enc->head_x1, B * C);
    TAKE(enc->head_h, B * C);
    TAKE(enc->head_x2, B * C);
    TAKE(enc->logits, B * nl);
    TAKE(enc->key_mask, N);
    if (keep) {
        TAKE(enc->d_x, N * C);
        TAKE(enc->d_y, N * C);
        TAKE(enc->d_h1, N * C);
        TAKE(enc->d_r, N * C);
        TAKE(enc->d_qkv, N * 3 * C);
        TAKE(enc->d_ctx, N * C);
        TAKE(enc->d_act, N * I);
        TAKE(enc->d_head, B * C);
        TAKE(enc->d_logits, B * nl);
        enc->d_kv = NULL;
        if (pl->prefix) TAKE(enc->d_kv, B * pl->prefix * 2 * C);
    } else if (base) {
        enc->d_x = enc->d_y = enc->d_h1 = enc->d_r = enc->d_qkv = enc->d_ctx = enc->d_act = NULL;
        enc->d_head = enc->d_logits = NULL;
    }
#undef TAKE
    return used;
}

/* Lay out every activation of a (B,T) batch in one arena, growing it when needed. */
static int ensure_activations(pc_encoder *enc, int B, int T, bool keep, bool probs_per_layer,
                              int workers, int group, bool first_token_only) {
    const int64_t N = (int64_t)B * T, L = enc->cfg.layers;
    if (keep) {
        group = B;
        workers = 1;
    }
    const act_plan plan = {B, T, keep, probs_per_layer, workers, group, first_token_only,
                           has_block_adapters(enc), most_kv_rows(enc)};
    if (workers > enc->workers_cap) {
        layer_acts *w = calloc((size_t)workers, sizeof *w);
        if (!w) return -1;
        free(enc->workers);
        enc->workers = w;
        enc->workers_cap = workers;
    }
    const int64_t need = lay_out_activations(enc, &plan, NULL);
    if (need > enc->arena_floats) {
        float *arena = pc_alloc(sizeof(float) * (size_t)need);
        layer_acts *acts = calloc((size_t)L + 1, sizeof *acts);
        int64_t *ids = malloc(sizeof(int64_t) * 3 * (size_t)N);
        if (!arena || !acts || !ids) {
            pc_free(arena); free(acts); free(ids);
            enc->failed_bytes = (int64_t)sizeof(float) * need;
            return -1;
        }
        pc_free(enc->arena);
        free(enc->acts);
        free(enc->ids);
        enc->arena = arena;
        enc->acts = acts;
        enc->ids = ids;
        enc->arena_floats = need;
    } else if (enc->B * enc->T < N) {
        int64_t *ids = realloc(enc->ids, sizeof(int64_t) * 3 * (size_t)N);
        if (!ids) return -1;
        enc->ids = ids;
    }
    enc->positions = enc->ids + N;
    enc->types = enc->ids + 2 * N;
    lay_out_activations(enc, &plan, enc->arena);
    enc->B = B;
    enc->T = T;
    return 0;
}

void pc_encoder_capture_hidden_states(pc_encoder *enc, float *buf) { enc->capture = buf; }

void pc_encoder_set_inference_rows(pc_encoder *enc, int64_t rows) {
    enc->inference_rows = rows > 0 ? rows : 0;
}

void pc_encoder_release_activations(pc_encoder *enc) {
    pc_free(enc->arena);
    free(enc->acts);
    free(enc->ids);
    free(enc->workers);
    enc->arena = NULL;
    enc->acts = NULL;
    enc->ids = enc->positions = enc->types = NULL;
    enc->workers = NULL;
    enc->arena_floats = 0;
    enc->workers_cap = 0;
    enc->B = enc->T = 0;
    for (int i = 0; i < enc->num_slots; i++)
        for (int k = 0; k < PC_LINEAR_SITES; k++) pc_site_release_saved(&enc->slots[i].site[k]);
    for (int l = 0; l < enc->cfg.layers; l++)
        for (int k = 0; k < PC_BLOCKS; k++) pc_site_release_saved(&enc->layer[l].block[k]);
    free(enc->in_scratch);
    enc->in_scratch = NULL;
    enc->in_scratch_cap = 0;
    enc->has_forward = false;
    enc->backward_ready = false;
}

int64_t pc_encoder_failed_bytes(const pc_encoder *enc) {
    int64_t bytes = enc->failed_bytes > enc->in_scratch_failed ? enc->failed_bytes
                                                                : enc->in_scratch_failed;
    for (int i = 0; i < enc->num_slots; i++)
        for (int k = 0; k < PC_LINEAR_SITES; k++) {
            const int64_t b = pc_site_failed_bytes(&enc->slots[i].site[k]);
            if (b > bytes) bytes = b;
        }
    for (int l = 0; l < enc->cfg.layers; l++)
        for (int k = 0; k < PC_BLOCKS; k++) {
            const int64_t b = pc_site_failed_bytes(&enc->layer[l].block[k]);
            if (b > bytes) bytes = b;
        }
    return bytes;
}

int64_t pc_encoder_activation_bytes(const pc_encoder *enc) {
    return enc->arena_floats * (int64_t)sizeof(float);
}

/* ------------------------------------------------------------ dropout sites */

enum { SITE_EMB, SITE_ATTN, SITE_AO, SITE_O, SITE_HEAD1, SITE_HEAD2, SITE_ADAPTER_OUT,
       SITE_ADAPTER_IN, SITE_BLOCK_ATTN, SITE_BLOCK_FFN };

/* Each dropout site of a step gets its own stream: seed(step, layer, site) */
static uint64_t site_seed(uint64_t step_seed, int layer, int site) {
    uint64_t z = step_seed ^ (((uint64_t)(layer + 2) << 32) | (uint64_t)(site + 1) << 8);
    z = (z ^ (z >> 33)) * 0xff51afd7ed558ccdull;
    z = (z ^ (z >> 33)) * 0xc4ceb9fe1a85ec53ull;
    return z ^ (z >> 33);
}

static void dropout_inplace(float *x, int64_t n, float p, uint64_t seed) {
    if (p <= 0.0f) return;
    pc_dropout_forward(x, x, n, p, seed);
}

/* dx = mask ⊙ dy / (1-p) in place */
/* ------------------------------------------------------------ linears */

static bool wants_grad(const pc_tensor *t) { return t && t->requires_grad; }

static float *grad_or_null(pc_tensor *t, int *oom) {
    if (!wants_grad(t)) return NULL;
    pc_tensor *g = pc_tensor_grad(t);
    if (!g) *oom = 1;
    return pc_f32(g);
}

static pc_site *in_site(pc_linear_slot *s) { return &s->site[PC_SITE_LINEAR_IN]; }
static pc_site *out_site(pc_linear_slot *s) { return &s->site[PC_SITE_LINEAR_OUT]; }

static bool slot_has_trainable(const pc_linear_slot *s) {
    return wants_grad(s->weight) || wants_grad(s->bias) ||
           pc_site_trains(&s->site[PC_SITE_LINEAR_IN]) ||
           pc_site_trains(&s->site[PC_SITE_LINEAR_OUT]);
}

/* The vector l of the slot's input site when its one adapter is a column scale (x ⊙ l) that
 * the activation producing x can apply in its own passes: forward, bias_activation scales
 * as it writes; backward, pc_gelu_scale_backward recomputes GELU once for l's gradient and
 * pre's. Only where nothing else reads the scaled input: no output adapters, a frozen
 * weight; and for GELU, the activation of every model here. NULL otherwise. */
static pc_tensor *fused_input_scale(const pc_encoder *enc, pc_linear_slot *s) {
    const pc_site *in = &s->site[PC_SITE_LINEAR_IN];
    if (in->n != 1 || s->site[PC_SITE_LINEAR_OUT].n || wants_grad(s->weight)) return NULL;
    if (enc->cfg.activation != PC_ACT_GELU && enc->cfg.activation != PC_ACT_GELU_TANH)
        return NULL;
    const pc_adapter *a = in->entry[0].adapter;
    return a->method->column_scale ? a->method->column_scale(a) : NULL;
}

/* The backward reads the linear's input: for its weight's gradient or its adapters */
static bool slot_reads_input(const pc_linear_slot *s) {
    return wants_grad(s->weight) || s->site[PC_SITE_LINEAR_IN].n || s->site[PC_SITE_LINEAR_OUT].n;
}

/* Whether a forward that keeps its activations keeps GELU's slope gelu'(pre) in place of
 * pre: when the backward needs nothing of pre but that, i.e. the output projection's
 * backward does not read act (frozen weight, no adapters) and no (IA)3 scale is fused into
 * GELU's passes. The slope costs the forward a few operations on the exponential it
 * computes anyway and turns the backward's GELU pass into a product. */
static bool ffn_keeps_slope(const pc_encoder *enc, pc_linear_slot *o) {
    const int kind = enc->cfg.activation;
    return enc->keeping && (kind == PC_ACT_GELU || kind == PC_ACT_GELU_TANH) &&
           !slot_reads_input(o) && !fused_input_scale(enc, o);
}

/* A call at one of the slot's sites for N rows: whole sequences of T rows in the layers,
 * except the first-token rows of a first-token-only last layer (all but keys and values)
 * and the head's (one row per sequence) */
static pc_site_call site_call(const pc_encoder *enc, const pc_linear_slot *s, pc_site_kind site,
                              int N) {
    const int index = (int)(s - enc->slots), kind = index % SLOTS_PER_LAYER;
    const bool first_rows = enc->first_token_only && s->layer == enc->cfg.layers - 1 &&
                            kind != SLOT_K && kind != SLOT_V;
    pc_site_call c = {.N = N, .in = s->in, .out = s->out,
                      .T = s->layer < 0 || first_rows ? 1 : enc->T, .training = enc->training,
                      .seed = site_seed(enc->seed, index,
                                        site == PC_SITE_LINEAR_IN ? SITE_ADAPTER_IN
                                                                  : SITE_ADAPTER_OUT)};
    return c;
}

/* The query projection's call in a first-token-only last layer, which runs on the first
 * tokens: it also carries x, the layer's input at every row of those sequences (T each),
 * for gates to average over, and dx (NULL: not wanted), where their share of x's gradient
 * goes. */
static pc_site_call with_sequences(pc_site_call c, const float *x, int T, float *dx) {
    c.seq_x = x;
    c.seq_ldx = c.in;
    c.seq_T = T;
    c.seq_dx = dx;
    c.seq_lddx = c.in;
    return c;
}

/* The scratch of input sites, with room for `floats` (it grows, never shrinks) */
static float *input_scratch(pc_encoder *enc, int64_t floats) {
    if (floats <= enc->in_scratch_cap) return enc->in_scratch;
    float *p = realloc(enc->in_scratch, sizeof(float) * (size_t)floats);
    if (!p) {
        enc->in_scratch_failed = (int64_t)sizeof(float) * floats;
        return NULL;
    }
    enc->in_scratch = p;
    enc->in_scratch_cap = floats;
    return p;
}

/* floats per row of the input scratch in a forward: the widest input of any linear, so
 * that rows [row, row + N) of any linear lie within rows [row, row + N) of the scratch,
 * whatever their width (workers own disjoint rows) */
static int64_t input_scratch_width(const pc_encoder *enc) {
    return enc->cfg.hidden > enc->cfg.intermediate ? enc->cfg.hidden : enc->cfg.intermediate;
}

/* x through the slot's input site into the input scratch from row `row` on (x itself when
 * the site is empty); NULL when out of memory */
static const float *slot_input(pc_encoder *enc, pc_linear_slot *s, const float *x, int ldx,
                               int N, int64_t row) {
    if (!in_site(s)->n) return x;
    const int64_t width = input_scratch_width(enc);
    float *xs = input_scratch(enc, (row + N) * width);
    if (!xs) return NULL;
    xs += row * width;
    const pc_site_call c = site_call(enc, s, PC_SITE_LINEAR_IN, N);
    if (pc_site_input_forward(in_site(s), &c, xs, s->in, x, ldx, row, enc->keeping) < 0)
        return NULL;
    return xs;
}

/* the output site's adapters over y (N,out) stride ldy, x (N,in) the GEMM's input; seq_x:
 * NULL, or the layer's input at every row of the N first tokens' sequences (with_sequences) */
static int slot_output(pc_encoder *enc, pc_linear_slot *s, float *y, int ldy, const float *x,
                       int ldx, int N, int64_t row, const float *seq_x) {
    pc_site_call c = site_call(enc, s, PC_SITE_LINEAR_OUT, N);
    if (seq_x) c = with_sequences(c, seq_x, enc->T, NULL);
    return pc_site_output_forward(out_site(s), &c, y, ldy, x, ldx, row, enc->keeping);
}

static int slot_forward(pc_encoder *enc, pc_linear_slot *s, float *y, const float *x, int N) {
    const float *xe = slot_input(enc, s, x, s->in, N, 0);
    if (!xe) return -1;
    pc_linear_forward(y, xe, pc_f32(s->weight), pc_f32(s->bias), N, s->in, s->out);
    return slot_output(enc, s, y, s->out, xe, s->in, N, 0, NULL);
}

/* y = x·Wᵀ (+ adapters) leaving the bias to the pass after the GEMM (bias_dropout_residual,
 * bias_activation: one pass over y instead of two), which gets it in *late_bias; NULL when
 * the output site's adapters need y with its bias, which the GEMM then adds itself.
 * input_done: x has been through the input site already (fused_input_scale). */
static int slot_forward_unbiased(pc_encoder *enc, pc_linear_slot *s, float *y, const float *x,
                                 int N, int64_t row, const float **late_bias, bool input_done) {
    const bool late = pc_site_keeps(out_site(s), PC_KEEPS_LATE_BIAS);
    *late_bias = late ? pc_f32(s->bias) : NULL;
    const float *xe = input_done ? x : slot_input(enc, s, x, s->in, N, row);
    if (!xe) return -1;
    pc_linear_forward(y, xe, pc_f32(s->weight), late ? NULL : pc_f32(s->bias), N, s->in, s->out);
    return slot_output(enc, s, y, s->out, xe, s->in, N, row, NULL);
}

/* Weight and bias gradients of one linear, for those that want them (the weight's unless
 * weight_done: computed already). dy (N,out) stride ldy, xe (N,in) stride ldx the GEMM's
 * input. */
static int linear_param_grads(pc_linear_slot *s, const float *dy, int ldy, const float *xe,
                              int ldx, int N, bool weight_done) {
    if (wants_grad(s->weight) && !weight_done) {
        pc_tensor *g = pc_tensor_grad(s->weight);
        if (!g) return -1;
        /* dW (out,in) += dyᵀ (out,N) · x (N,in) */
        pc_sgemm(true, false, s->out, s->in, N, 1.0f, dy, ldy, xe, ldx, 1.0f, pc_f32(g), s->in);
    }
    if (wants_grad(s->bias)) {
        pc_tensor *g = pc_tensor_grad(s->bias);
        if (!g) return -1;
        pc_column_sums(pc_f32(g), dy, ldy, N, s->out);
    }
    return 0;
}

/* The input gradient of the GEMM and the output site: dxe (N,in) stride lddx = dy·W (or +=
 * when accumulate), plus the output adapters' shares through xe. dy, the gradient of the
 * linear's result, becomes that of the GEMM's output in place. dxe NULL: not wanted. */
static int gemm_and_output_backward(pc_encoder *enc, pc_linear_slot *s, float *dxe, int lddx,
                                    bool accumulate, float *dy, int ldy, const float *xe,
                                    int ldx, int N) {
    const pc_site_call c = site_call(enc, s, PC_SITE_LINEAR_OUT, N);
    const float *w = pc_f32(s->weight);
    if (pc_site_keeps(out_site(s), PC_KEEPS_GRADIENT)) {
        /* dy is the GEMM's output gradient already: the product first, overwriting */
        if (dxe)
            pc_sgemm(false, false, N, s->in, s->out, 1.0f, dy, ldy, w, s->in,
                     accumulate ? 1.0f : 0.0f, dxe, lddx);
        return pc_site_output_backward(out_site(s), &c, dy, ldy, dxe, lddx, xe, ldx, 0);
    }
    if (dxe && !accumulate)
        for (int n = 0; n < N; n++) memset(dxe + (int64_t)n * lddx, 0, sizeof(float) * s->in);
    if (pc_site_output_backward(out_site(s), &c, dy, ldy, dxe, lddx, xe, ldx, 0) < 0) return -1;
    if (dxe) pc_sgemm(false, false, N, s->in, s->out, 1.0f, dy, ldy, w, s->in, 1.0f, dxe, lddx);
    return 0;
}

/* Full backward of one linear with its sites. dy (N,out) stride ldy: the gradient of its
 * result (used as scratch). x (N,in) stride ldx: its input (before the input site). dx
 * (stride lddx) receives the input gradient (overwriting whatever it held when overwrite_dx,
 * else added); NULL: not wanted. */
static int linear_backward(pc_encoder *enc, pc_linear_slot *s, float *dx, int lddx,
                           bool overwrite_dx, float *dy, int ldy, const float *x, int ldx,
                           int N) {
    if (!in_site(s)->n) {
        if (gemm_and_output_backward(enc, s, dx, lddx, !overwrite_dx, dy, ldy, x, ldx, N) < 0)
            return -1;
        return linear_param_grads(s, dy, ldy, x, ldx, N, false);
    }
    /* with input-site adapters: d (N,in), the gradient of the GEMM's input, is dx itself
     * when it is overwritten, else scratch; xe (N,in) is the GEMM's input rebuilt when the
     * weight's gradient or the output site needs it (the site's adapters then reuse it) */
    const bool need_xe = wants_grad(s->weight) || out_site(s)->n || in_site(s)->n > 1;
    const bool need_d = dx || pc_site_trains(in_site(s));
    const bool d_is_dx = dx && overwrite_dx;
    const int ldd = d_is_dx ? lddx : s->in;
    float *scratch = input_scratch(enc, (int64_t)(!d_is_dx + need_xe) * N * s->in);
    if (!scratch && (!d_is_dx || need_xe)) return -1;
    float *d = d_is_dx ? dx : scratch;
    float *xe = need_xe ? scratch + (d_is_dx ? 0 : (int64_t)N * s->in) : NULL;
    const pc_site_call c = site_call(enc, s, PC_SITE_LINEAR_IN, N);
    if (xe && pc_site_input_forward(in_site(s), &c, xe, s->in, x, ldx, 0, true) < 0) return -1;
    if (gemm_and_output_backward(enc, s, need_d ? d : NULL, ldd, false, dy, ldy, xe, s->in,
                                 N) < 0 ||
        linear_param_grads(s, dy, ldy, xe, s->in, N, false) < 0)
        return -1;
    if (!need_d) return 0;
    if (pc_site_input_backward(in_site(s), &c, d, ldd, x, ldx, xe, 0) < 0) return -1;
    if (dx && !d_is_dx)
        for (int n = 0; n < N; n++) {
            float *dst = dx + (int64_t)n * lddx;
            const float *src = d + (int64_t)n * s->in;
            for (int i = 0; i < s->in; i++) dst[i] += src[i];
        }
    return 0;
}

static int slot_backward(pc_encoder *enc, pc_linear_slot *s, float *dx, float *dy,
                         const float *x, int N, bool overwrite_dx) {
    return linear_backward(enc, s, dx, s->in, overwrite_dx, dy, s->out, x, s->in, N);
}

/* ------------------------------------------------------------ forward */

static void activation_forward(const pc_encoder *enc, float *out, const float *inp, int64_t n) {
    switch (enc->cfg.activation) {
    case PC_ACT_GELU: pc_gelu_forward(out, inp, n, false); break;
    case PC_ACT_GELU_TANH: pc_gelu_forward(out, inp, n, true); break;
    case PC_ACT_RELU: pc_relu_forward(out, inp, n); break;
    }
}

/* pre (N,I) += bias (unless NULL), act = activation(pre) ⊙ scale (scale NULL: none) in one
 * pass (act may be pre: in place); slope (GELU, act apart from pre): pre becomes GELU's
 * slope at pre (ffn_keeps_slope) */
static void bias_activation(const pc_encoder *enc, float *act, float *pre, const float *bias,
                            const float *scale, int N, int I, bool slope) {
    const int kind = enc->cfg.activation;
    PC_PARALLEL_FOR((int64_t)N * I)
    for (int n = 0; n < N; n++) {
        float *x = pre + (int64_t)n * I, *y = act + (int64_t)n * I;
        if (bias)
            for (int i = 0; i < I; i++) x[i] += bias[i];
        switch (kind) {
        case PC_ACT_GELU:
        case PC_ACT_GELU_TANH:
            if (slope)
                pc_gelu_value_slope_span(y, x, I, kind == PC_ACT_GELU_TANH);
            else
                pc_gelu_span(y, x, I, kind == PC_ACT_GELU_TANH);
            break;
        case PC_ACT_RELU:
            for (int i = 0; i < I; i++) y[i] = x[i] < 0.0f ? 0.0f : x[i];
            break;
        }
        if (scale)
            for (int i = 0; i < I; i++) y[i] *= scale[i];
    }
}

/* d (n) ⊙= activation'(inp): the gradient of the activation's output becomes its input's */
static void activation_backward_inplace(const pc_encoder *enc, float *d, const float *inp,
                                        int64_t n) {
    switch (enc->cfg.activation) {
    case PC_ACT_GELU:
    case PC_ACT_GELU_TANH:
        pc_gelu_grad_inplace(d, inp, n, enc->cfg.activation == PC_ACT_GELU_TANH);
        break;
    case PC_ACT_RELU: {
        PC_PARALLEL_FOR(n)
        for (int64_t i = 0; i < n; i++) d[i] = inp[i] > 0.0f ? d[i] : 0.0f;
        break;
    }
    }
}

static void embeddings_forward(pc_encoder *enc, int N) {
    const int C = enc->cfg.hidden;
    const float *we = pc_f32(enc->word_emb), *pe = pc_f32(enc->pos_emb), *te = pc_f32(enc->type_emb);
    if (enc->emb.n) {
        /* the word rows first, through the embeddings site's adapter */
        for (int n = 0; n < N; n++)
            memcpy(enc->emb_sum + (int64_t)n * C, we + enc->ids[n] * C, sizeof(float) * C);
        const pc_adapter *a = enc->emb.entry[0].adapter;
        a->method->emb_forward(a, enc->emb_sum, enc->B, enc->T);
    }
    const bool words_done = enc->emb.n > 0;
    PC_PARALLEL_FOR((int64_t)N * C)
    for (int n = 0; n < N; n++) {
        const float *w = words_done ? enc->emb_sum + (int64_t)n * C : we + enc->ids[n] * C;
        const float *p = pe + enc->positions[n] * C, *t = te + enc->types[n] * C;
        float *o = enc->emb_sum + (int64_t)n * C;
        for (int c = 0; c < C; c++) o[c] = w[c] + t[c] + p[c];
    }
    pc_layernorm_forward(enc->emb_out, enc->emb_mean, enc->emb_rstd, enc->emb_sum,
                         pc_f32(enc->emb_ln_w), pc_f32(enc->emb_ln_b), N, C, enc->cfg.layer_norm_eps);
    if (enc->training)
        dropout_inplace(enc->emb_out, (int64_t)N * C, enc->cfg.hidden_dropout,
                        site_seed(enc->seed, -1, SITE_EMB));
}

/* Which rows of layer l compute queries and outputs: all N (Tq = T), or, in the last layer of
 * a first-token-only forward, the B first tokens (Tq = 1). q, k, v point into the layer's
 * qkv buffer: fused (N,3C) rows q|k|v, or k|v (N,2C) followed by q (B,C). */
typedef struct {
    bool first_tokens;
    bool folded; /* first tokens: keys and values folded into attention, never projected */
    int Nq, Tq;
    const float *xq;       /* (Nq,C) the layer's input at the query rows */
    float *q, *k, *v;      /* the same offsets address the gradients in d_qkv */
    int ld_q, ld_kv;
} layer_rows;

/* The column scale of the one adapter on a key or value projection's output, when it is
 * one ((IA)³) and nothing adapts the projection's input, else NULL */
static pc_tensor *kv_column_scale(const pc_linear_slot *s) {
    const pc_site *out = &s->site[PC_SITE_LINEAR_OUT];
    if (out->n != 1 || s->site[PC_SITE_LINEAR_IN].n) return NULL;
    const pc_adapter *a = out->entry[0].adapter;
    return a->method->column_scale ? a->method->column_scale(a) : NULL;
}

/* every adapter on layer l's key and value projections allows folding them into attention:
 * it keeps the fold, or it is a column scale that folds with them */
static bool kv_adapters_allow_folding(const layer_params *lp) {
    for (int s = SLOT_K; s <= SLOT_V; s++) {
        if (kv_column_scale(lp->slot[s])) continue;
        for (int k = 0; k < PC_LINEAR_SITES; k++)
            if (!pc_site_keeps(&lp->slot[s]->site[k], PC_KEEPS_FOLDED_KV)) return false;
    }
    return true;
}

/* a column scale's values, or NULL */
static const float *scale_values(const pc_tensor *t) { return t ? pc_f32(t) : NULL; }

/* The backward of a first-token last layer can fold the key and value projections into
 * attention's backward (pc_attention_first_query_backward_folded: their share of d_x and
 * their weights' and biases' gradients without forming dK, dV) when every adapter on them
 * allows it, no projection's input is adapted, and the scratch fits in d_qkv's k|v rows. */
static bool backward_can_fold(const pc_encoder *enc, int l, int B) {
    const layer_params *lp = &enc->layer[l];
    const int64_t T = enc->T, C = enc->cfg.hidden, H = enc->cfg.heads;
    if (!kv_adapters_allow_folding(lp)) return false;
    for (int s = SLOT_Q; s <= SLOT_V; s++)
        if (lp->slot[s]->site[PC_SITE_LINEAR_IN].n) return false;
    pc_attention_prefix prefix = {.P = kv_rows_of(lp)};
    const pc_attention_dims dims = {B, 1, (int)T, (int)H, (int)(C / H), (int)C, (int)(2 * C),
                                    prefix.P ? &prefix : NULL, false};
    return pc_attention_folded_backward_scratch_floats(&dims) <= (int64_t)B * T * 2 * C;
}

/* The last layer of a first-token forward folds the key and value projections into
 * attention (pc_attention_first_query_folded) when its backward can fold them too, a prefix
 * (if any) is not gated per sequence, and the fold's scratch fits where k|v (N,2C) would be:
 * H·(2C + 2(P + T) + 1) + P + T <= 2·T·C, which also means it is cheaper (it needs about
 * T >= H). The same whether a backward follows or not, whatever trains: the bits of a
 * classification forward do not depend on either. */
static bool can_fold_keys_values(const pc_encoder *enc, int l, int B) {
    const layer_params *lp = &enc->layer[l];
    const pc_encoder_config *c = &enc->cfg;
    const int64_t T = enc->T, C = c->hidden, H = c->heads;
    const pc_attention_dims dims = {B, 1, (int)T, (int)H, (int)(C / H), (int)C, (int)(2 * C),
                                    NULL, false};
    return !pc_site_kv_gated(&lp->kv) &&
           pc_attention_folded_scratch_floats(&dims, kv_rows_of(lp)) <= (int64_t)B * T * 2 * C &&
           backward_can_fold(enc, l, B);
}

/* Whether the backward of layer l folds the key and value projections: always after a
 * forward that folded them, else where x's gradient is wanted and it can (column scales
 * aside: their gradients need the unscaled keys and values) */
static bool fold_keys_values_backward(const pc_encoder *enc, int l, const layer_rows *r, int B,
                                      bool need_dx) {
    const layer_params *lp = &enc->layer[l];
    return r->folded || (r->first_tokens && need_dx && backward_can_fold(enc, l, B) &&
                         !kv_column_scale(lp->slot[SLOT_K]) && !kv_column_scale(lp->slot[SLOT_V]));
}

/* B sequences from x on; first_x receives their first tokens' rows in the last layer */
static layer_rows rows_of(const pc_encoder *enc, int l, const float *x, float *qkv, int B,
                          float *first_x) {
    const int T = enc->T, N = B * T, C = enc->cfg.hidden;
    layer_rows r;
    r.first_tokens = enc->first_token_only && l == enc->cfg.layers - 1;
    r.folded = r.first_tokens && can_fold_keys_values(enc, l, B);
    if (!r.first_tokens) {
        r.Nq = N; r.Tq = T; r.xq = x;
        r.q = qkv; r.k = qkv + C; r.v = qkv + 2 * C;
        r.ld_q = r.ld_kv = 3 * C;
    } else {
        r.Nq = B; r.Tq = 1; r.xq = first_x;
        r.k = qkv; r.v = qkv + C; r.q = qkv + (int64_t)N * 2 * C;
        r.ld_q = C; r.ld_kv = 2 * C;
    }
    return r;
}

static pc_attention_dims attention_dims(const pc_encoder *enc, const layer_rows *r, int B) {
    /* probabilities kept from the forward for the backward carry their dropout mask */
    pc_attention_dims d = {B, r->Tq, enc->T, enc->cfg.heads, enc->cfg.hidden / enc->cfg.heads,
                           r->ld_q, r->ld_kv, NULL, enc->probs_per_layer};
    return d;
}

/* Where layer l's prefix rows k|v live (in kv, see layer_acts), and where the backward puts
 * each sequence's gradient of them (d_kv, (B,P,2C)) */
static pc_attention_prefix prefix_view(const layer_params *lp, int C, float *kv, float *d_kv) {
    const int P = kv_rows_of(lp);
    const int64_t seq = (int64_t)P * 2 * C;
    return (pc_attention_prefix){P, kv, kv + C, 2 * C, pc_site_kv_gated(&lp->kv) ? seq : 0,
                                 d_kv, d_kv ? d_kv + C : NULL, 2 * C, seq};
}

/* Layer l's prefix rows for B sequences into kv: the adapter's P rows k|v, which every
 * sequence shares; a gated prefix scales a copy per sequence by its gates, computed from x. */
static int prefix_forward(const pc_encoder *enc, layer_params *lp, int B, int T, int C,
                          const float *x, float *kv, int64_t row) {
    const int P = kv_rows_of(lp);
    const pc_adapter *prefix = lp->kv.entry[0].adapter;
    prefix->method->kv_forward(prefix, kv, kv + C, 2 * C);
    if (!pc_site_kv_gated(&lp->kv)) return 0;
    const int64_t seq = (int64_t)P * 2 * C;
    pc_fill_rows(kv + seq, kv, B - 1, (int)seq);
    const pc_site_call call = {.N = B * T, .in = C, .out = C, .T = T, .training = enc->training};
    return pc_site_kv_gate_forward(&lp->kv, &call, kv, 2 * C, seq, x, C, row, enc->keeping);
}

/* slot s ∈ {q, k, v}: where its output lives and which input rows feed it */
static void qkv_slot_view(const layer_rows *r, int s, const float *x, int N, float **y, int *ldy,
                          const float **in, int *rows) {
    *y = s == SLOT_Q ? r->q : s == SLOT_K ? r->k : r->v;
    *ldy = s == SLOT_Q ? r->ld_q : r->ld_kv;
    *in = s == SLOT_Q ? r->xq : x;
    *rows = s == SLOT_Q ? r->Nq : N;
}

/* A call at layer l's block junction for N rows of T per sequence; with grads, the
 * LayerNorm's gradient buffers where its parameters train (NULL when out of memory, which
 * the caller finds in *oom) */
static pc_block_call block_call_grads(pc_encoder *enc, int l, pc_block_kind block, int N, int T,
                                      bool grads, int *oom) {
    layer_params *lp = &enc->layer[l];
    pc_tensor *w = block == PC_BLOCK_ATTENTION ? lp->ln1_w : lp->ln2_w;
    pc_tensor *b = block == PC_BLOCK_ATTENTION ? lp->ln1_b : lp->ln2_b;
    pc_block_call c = {N, enc->cfg.hidden, T, enc->training,
                       site_seed(enc->seed, l, block == PC_BLOCK_ATTENTION ? SITE_BLOCK_ATTN
                                                                           : SITE_BLOCK_FFN),
                       pc_f32(w), pc_f32(b), enc->cfg.layer_norm_eps, NULL, NULL,
                       enc->training ? enc->cfg.hidden_dropout : 0.0f,
                       site_seed(enc->seed, l, block == PC_BLOCK_ATTENTION ? SITE_AO : SITE_O)};
    if (grads) {
        c.d_ln_w = grad_or_null(w, oom);
        c.d_ln_b = grad_or_null(b, oom);
    }
    return c;
}

static pc_block_call block_call(pc_encoder *enc, int l, pc_block_kind block, int N, int T,
                                bool grads) {
    int oom = 0;
    return block_call_grads(enc, l, block, N, T, grads, &oom);
}

/* Layer l on sequences [b0, b0 + B) of the batch: reads their rows of x (B·T rows from
 * x + b0·T·C) and writes their rows of out (from out + b0·T·C, or in a first-token-only last
 * layer B rows from out + b0·C). The scratch `a` (acts[l], or a worker's) holds these B
 * sequences; what adapters save goes to the rows of the batch's, from b0·T. */
static int layer_forward(pc_encoder *enc, int l, layer_acts *a, const float *x_batch,
                         float *out_batch, int b0, int B) {
    const pc_encoder_config *c = &enc->cfg;
    const int T = enc->T, N = B * T, C = c->hidden, I = c->intermediate;
    const int64_t u_row = (int64_t)b0 * T;
    layer_params *lp = &enc->layer[l];
    const float *x = x_batch + (int64_t)b0 * T * C;
    const float *key_mask = enc->has_mask ? enc->key_mask + (int64_t)b0 * T : NULL;
    float p_hidden = enc->training ? c->hidden_dropout : 0.0f;
    float p_attn = enc->training ? c->attention_dropout : 0.0f;
    float *first_x = enc->first_x + (int64_t)b0 * C;
    const layer_rows r = rows_of(enc, l, x, a->qkv, B, first_x);
    const int Nq = r.Nq;
    float *out = out_batch + (int64_t)b0 * (r.first_tokens ? 1 : T) * C;
    const float *wqkv = pc_f32(lp->qkv_w), *bqkv = pc_f32(lp->qkv_b);

    if (!r.first_tokens) {
        pc_linear_forward(a->qkv, x, wqkv, bqkv, N, C, 3 * C);
    } else {
        for (int b = 0; b < B; b++)
            memcpy(first_x + (int64_t)b * C, x + (int64_t)b * T * C, sizeof(float) * C);
        /* k|v (N,2C) = x·[Wk;Wv]ᵀ + [bk;bv] (unless folded);  q (B,C) = x_first·Wqᵀ + bq */
        if (!r.folded) pc_linear_forward(r.k, x, wqkv + (int64_t)C * C, bqkv + C, N, C, 2 * C);
        pc_linear_forward(r.q, r.xq, wqkv, bqkv, B, C, C);
    }
    /* the adapters of q, k and v: a projection whose input site changes its input is
     * computed again from that input (the fused GEMM read x) */
    for (int s = SLOT_Q; s <= (r.folded ? SLOT_Q : SLOT_V); s++) {
        pc_linear_slot *slot = lp->slot[s];
        float *y; const float *in; int ldy, rows;
        qkv_slot_view(&r, s, x, N, &y, &ldy, &in, &rows);
        const float *xe = slot_input(enc, slot, in, C, rows, u_row);
        if (!xe) return -1;
        if (xe != in) {
            const float *b = pc_f32(slot->bias);
            pc_sgemm(false, true, rows, C, C, 1.0f, xe, C, pc_f32(slot->weight), C, 0.0f, y, ldy);
            for (int n = 0; n < rows; n++)
                for (int c = 0; c < C; c++) y[(int64_t)n * ldy + c] += b[c];
        }
        if (slot_output(enc, slot, y, ldy, xe, C, rows, u_row,
                        s == SLOT_Q && r.first_tokens ? x : NULL) < 0)
            return -1;
    }
    const int P = kv_rows_of(lp);
    if (r.folded) {
        /* the scratch takes the place of k|v; a prefix's own rows go in kv */
        const pc_attention_dims dims = attention_dims(enc, &r, B);
        const pc_adapter *prefix = P ? lp->kv.entry[0].adapter : NULL;
        if (prefix) prefix->method->kv_forward(prefix, a->kv, a->kv + C, 2 * C);
        const pc_folded_projections fold = {wqkv + (int64_t)C * C, bqkv + C,
                                            wqkv + (int64_t)2 * C * C, bqkv + 2 * C,
                                            prefix ? a->kv : NULL, P,
                                            scale_values(kv_column_scale(lp->slot[SLOT_K])),
                                            scale_values(kv_column_scale(lp->slot[SLOT_V]))};
        pc_attention_first_query_folded(a->ctx, enc->keeping ? a->probs : NULL, r.q, x, &fold,
                                        key_mask, &dims, p_attn,
                                        site_seed(enc->seed, l, SITE_ATTN), a->qkv);
    } else if (P) {
        /* a prefix: every query also attends to P rows of the prefix's keys and values */
        if (prefix_forward(enc, lp, B, T, C, x, a->kv, u_row) < 0) return -1;
        const pc_attention_prefix view = prefix_view(lp, C, a->kv, NULL);
        pc_attention_dims dims = attention_dims(enc, &r, B);
        dims.prefix = &view;
        if (pc_attention_forward(a->ctx, a->probs, r.q, r.k, r.v, key_mask, &dims, p_attn,
                                 site_seed(enc->seed, l, SITE_ATTN)) < 0)
            return -1;
    } else {
        const pc_attention_dims dims = attention_dims(enc, &r, B);
        if (pc_attention_forward(a->ctx, a->probs, r.q, r.k, r.v, key_mask, &dims, p_attn,
                                 site_seed(enc->seed, l, SITE_ATTN)) < 0)
            return -1;
    }
    pc_linear_slot *ao = lp->slot[SLOT_AO], *inter = lp->slot[SLOT_I], *o = lp->slot[SLOT_O];
    /* each block's junction: LayerNorm(branch + residual), or its adapter */
    pc_site *attn_block = &lp->block[PC_BLOCK_ATTENTION], *ffn_block = &lp->block[PC_BLOCK_FFN];
    const float *late_bias;
    if (slot_forward_unbiased(enc, ao, a->r1, a->ctx, Nq, u_row, &late_bias, false) < 0)
        return -1;
    if (attn_block->n) {
        pc_bias_dropout_residual(a->r1, late_bias, NULL, Nq, C, p_hidden,
                                 site_seed(enc->seed, l, SITE_AO));
        const pc_block_call bc = block_call(enc, l, PC_BLOCK_ATTENTION, Nq, r.Tq, false);
        if (pc_site_block_forward(attn_block, &bc, a->h1, a->r1, r.xq, u_row, enc->keeping) < 0)
            return -1;
    } else {
        pc_bias_dropout_residual_norm(a->r1, late_bias, r.xq, Nq, C, p_hidden,
                                      site_seed(enc->seed, l, SITE_AO), a->h1, a->ln1_mean,
                                      a->ln1_rstd, pc_f32(lp->ln1_w), pc_f32(lp->ln1_b),
                                      c->layer_norm_eps);
    }
    if (slot_forward_unbiased(enc, inter, a->pre, a->h1, Nq, u_row, &late_bias, false) < 0)
        return -1;
    const pc_tensor *scale = fused_input_scale(enc, o);
    a->pre_is_slope = ffn_keeps_slope(enc, o);
    bias_activation(enc, a->act, a->pre, late_bias, scale ? pc_f32(scale) : NULL, Nq, I,
                    a->pre_is_slope);
    float *r2 = a->r2 ? a->r2 : out;
    if (slot_forward_unbiased(enc, o, r2, a->act, Nq, u_row, &late_bias, scale != NULL) < 0)
        return -1;
    if (ffn_block->n) {
        pc_bias_dropout_residual(r2, late_bias, NULL, Nq, C, p_hidden,
                                 site_seed(enc->seed, l, SITE_O));
        const pc_block_call bc = block_call(enc, l, PC_BLOCK_FFN, Nq, r.Tq, false);
        return pc_site_block_forward(ffn_block, &bc, out, r2, a->h1, u_row, enc->keeping);
    }
    pc_bias_dropout_residual_norm(r2, late_bias, a->h1, Nq, C, p_hidden,
                                  site_seed(enc->seed, l, SITE_O), out, a->ln2_mean,
                                  a->ln2_rstd, pc_f32(lp->ln2_w), pc_f32(lp->ln2_b),
                                  c->layer_norm_eps);
    return 0;
}

void pc_encoder_batch_shape(const pc_encoder *enc, int *B, int *T) {
    *B = enc->B;
    *T = enc->T;
}

/* the last hidden state, (B,T,C) or, after a first-token-only forward, (B,C) */
static const float *last_hidden(const pc_encoder *enc) {
    return enc->cfg.layers ? enc->acts[enc->cfg.layers - 1].out : enc->emb_out;
}

/* row stride between the first tokens of consecutive sequences in last_hidden() */
static int64_t first_token_stride(const pc_encoder *enc) {
    bool compact = enc->first_token_only && enc->cfg.layers > 0;
    return (int64_t)(compact ? 1 : enc->T) * enc->cfg.hidden;
}

bool pc_encoder_has_forward(const pc_encoder *enc) { return enc->has_forward; }

const float *pc_encoder_hidden(const pc_encoder *enc) {
    if (!enc->has_forward || (enc->first_token_only && enc->cfg.layers > 0)) return NULL;
    return last_hidden(enc);
}

const float *pc_encoder_pooled(const pc_encoder *enc) {
    return enc->has_forward && enc->cfg.add_pooler ? enc->pooled : NULL;
}

const float *pc_encoder_logits(const pc_encoder *enc) {
    return enc->has_forward && enc->cfg.head != PC_HEAD_NONE ? enc->logits : NULL;
}

/* Pooler and head on the first token of each sequence:
 *   pooler:  pooled = tanh(cls·Wpᵀ + bp)
 *   BERT:    logits = dropout(pooled)·Wcᵀ + bc
 *   RoBERTa: logits = dropout(tanh(dropout(cls)·Wdᵀ + bd))·Woᵀ + bo */
static int head_forward(pc_encoder *enc) {
    const pc_encoder_config *c = &enc->cfg;
    const int B = enc->B, C = c->hidden;
    const float *hidden = last_hidden(enc);
    const int64_t stride = first_token_stride(enc);
    for (int b = 0; b < B; b++)
        memcpy(enc->cls_in + (int64_t)b * C, hidden + b * stride, sizeof(float) * C);
    float p = enc->training ? c->classifier_dropout : 0.0f;
    if (c->add_pooler) {
        if (slot_forward(enc, enc->pooler, enc->head_h, enc->cls_in, B) < 0) return -1;
        pc_tanh_forward(enc->pooled, enc->head_h, (int64_t)B * C);
    }
    if (c->head == PC_HEAD_BERT) {
        memcpy(enc->head_x1, enc->pooled, sizeof(float) * B * C);
        dropout_inplace(enc->head_x1, (int64_t)B * C, p, site_seed(enc->seed, -1, SITE_HEAD1));
        if (slot_forward(enc, enc->cls_out, enc->logits, enc->head_x1, B) < 0) return -1;
    } else if (c->head == PC_HEAD_ROBERTA) {
        memcpy(enc->head_x1, enc->cls_in, sizeof(float) * B * C);
        dropout_inplace(enc->head_x1, (int64_t)B * C, p, site_seed(enc->seed, -1, SITE_HEAD1));
        /* head_h is free again once the pooler (if any) has produced pooled */
        if (slot_forward(enc, enc->cls_dense, enc->head_h, enc->head_x1, B) < 0) return -1;
        pc_tanh_forward(enc->head_h, enc->head_h, (int64_t)B * C);
        memcpy(enc->head_x2, enc->head_h, sizeof(float) * B * C);
        dropout_inplace(enc->head_x2, (int64_t)B * C, p, site_seed(enc->seed, -1, SITE_HEAD2));
        if (slot_forward(enc, enc->cls_out, enc->logits, enc->head_x2, B) < 0) return -1;
    }
    return 0;
}

/* Every layer on sequences [begin, end), `group` sequences at a time, in the scratch `worker`
 * (NULL: each layer's own, acts[l]) */
static int layers_forward(pc_encoder *enc, layer_acts *worker, int begin, int end, int group) {
    const int64_t rows = (int64_t)enc->T * enc->cfg.hidden, N = (int64_t)enc->B * rows;
    for (int b0 = begin; b0 < end; b0 += group) {
        const int n = end - b0 < group ? end - b0 : group;
        const float *x = enc->emb_out;
        for (int l = 0; l < enc->cfg.layers; l++) {
            if (layer_forward(enc, l, worker ? worker : &enc->acts[l], x, enc->acts[l].out, b0,
                              n) < 0)
                return -1;
            x = enc->acts[l].out;
            if (enc->capture) /* before the next layer overwrites it in place */
                memcpy(enc->capture + (l + 1) * N + b0 * rows, x + b0 * rows,
                       sizeof(float) * n * rows);
        }
    }
    return 0;
}

/* Eval forwards without a backward split the batch among W workers, one per thread: worker
 * w runs every layer on sequences [w·S, (w+1)·S), S = ⌊B/W⌋, with single-threaded ops,
 * `group` sequences at a time in its own scratch, so the threads meet once per forward
 * instead of after every op. The B mod W sequences left over then run with all threads on
 * each op. Each row's result is the same either way. */
static int workers_forward(pc_encoder *enc, int B, int workers, int group) {
    if (workers == 1) return layers_forward(enc, &enc->workers[0], 0, B, group);
    const int share = B / workers;
    /* what adapters save, and the input sites' scratch, for the whole batch, before the
     * workers write their rows */
    const int64_t rows = (int64_t)B * enc->T;
    bool inputs = false;
    for (int i = 0; i < enc->num_slots; i++) {
        pc_linear_slot *s = &enc->slots[i];
        for (int k = 0; k < PC_LINEAR_SITES; k++)
            if (pc_site_reserve(&s->site[k], s->in, s->out, rows, false) < 0) return -1;
        inputs |= s->site[PC_SITE_LINEAR_IN].n > 0;
    }
    for (int l = 0; l < enc->cfg.layers; l++)
        if (pc_site_reserve(&enc->layer[l].kv, enc->cfg.hidden, enc->cfg.hidden, rows, false) < 0)
            return -1;
    for (int l = 0; l < enc->cfg.layers; l++)
        for (int k = 0; k < PC_BLOCKS; k++)
            if (enc->layer[l].block[k].n &&
                pc_site_reserve(&enc->layer[l].block[k], enc->cfg.hidden, enc->cfg.hidden, rows,
                                false) < 0)
                return -1;
    if (inputs && !input_scratch(enc, rows * input_scratch_width(enc))) return -1;
    int failed = 0;
    #pragma omp parallel num_threads(workers)
    {
        for (int w = omp_get_thread_num(); w < workers; w += omp_get_num_threads())
            if (layers_forward(enc, &enc->workers[w], w * share, (w + 1) * share, group) < 0) {
                #pragma omp atomic write
                failed = 1;
            }
    }
    if (failed) return -1;
    return layers_forward(enc, &enc->workers[0], workers * share, B, group);
}

/* every adapter of the last layer may run on the first tokens alone: its rows are
 * independent, or it is on the query's output and needs only the layer's input of every row
 * besides (with_sequences; which the backward hands it only when no input site of q, k, v
 * makes a projection's backward its own). The keys and values run on every row anyway. */
static bool last_layer_allows_first_tokens(const pc_encoder *enc) {
    const layer_params *lp = &enc->layer[enc->cfg.layers - 1];
    for (int k = 0; k < PC_BLOCKS; k++)
        if (!pc_site_keeps(&lp->block[k], PC_KEEPS_FIRST_TOKEN_ONLY)) return false;
    bool qkv_inputs = false;
    for (int s = SLOT_Q; s <= SLOT_V; s++) qkv_inputs |= in_site(lp->slot[s])->n > 0;
    for (int s = 0; s < SLOTS_PER_LAYER; s++) {
        if (s == SLOT_K || s == SLOT_V) continue;
        for (int k = 0; k < PC_LINEAR_SITES; k++) {
            const pc_site *site = &lp->slot[s]->site[k];
            if (pc_site_keeps(site, PC_KEEPS_FIRST_TOKEN_ONLY)) continue;
            if (s == SLOT_Q && k == PC_SITE_LINEAR_OUT && !qkv_inputs &&
                pc_site_keeps(site, PC_KEEPS_FIRST_TOKENS_WITH_SEQUENCES))
                continue;
            return false;
        }
    }
    return true;
}

int pc_encoder_forward(pc_encoder *enc, const int64_t *ids, const int64_t *positions,
                       const int64_t *token_types, const float *key_mask, int B, int T,
                       bool training, bool keep_activations, bool first_token_only,
                       uint64_t seed) {
    if (first_token_only && enc->cfg.layers > 0 &&
        (enc->capture || !last_layer_allows_first_tokens(enc)))
        first_token_only = false; /* the whole last layer: the same first-token rows */
    enc->has_forward = false;
    enc->backward_ready = false;
    enc->failed_bytes = enc->in_scratch_failed = 0;
    for (int i = 0; i < enc->num_slots; i++)
        for (int k = 0; k < PC_LINEAR_SITES; k++) pc_site_clear_failed(&enc->slots[i].site[k]);
    for (int l = 0; l < enc->cfg.layers; l++)
        for (int k = 0; k < PC_BLOCKS; k++) pc_site_clear_failed(&enc->layer[l].block[k]);
    /* keep the attention probabilities per layer unless dense weights train */
    bool dense_trains = false;
    for (int l = 0; l < enc->cfg.layers; l++)
        for (int s = 0; s < SLOTS_PER_LAYER; s++)
            dense_trains = dense_trains || wants_grad(enc->layer[l].slot[s]->weight);
    const bool probs_per_layer = keep_activations && !dense_trains;
    /* eval forwards without a backward run on workers (workers_forward), each through its
     * groups of sequences, the scratch of all workers together for at most inference_rows
     * tokens (but one sequence each); dropout counts its elements over the whole batch, so
     * training forwards run whole */
    const bool split = !keep_activations && !training;
    int workers = 1, group = B;
    if (split) {
        const int threads = pc_threads_here();
        workers = threads < B ? threads : B > 1 ? B : 1;
        group = B / workers;
        if (enc->inference_rows > 0) {
            const int64_t per = enc->inference_rows / workers / T;
            group = per < 1 ? 1 : per < group ? (int)per : group;
        }
        /* as few groups as that allows, evened out (16 sequences as 8 + 8, not 14 + 2: a
         * short last group runs short GEMMs) */
        const int share = B / workers, groups = (share + group - 1) / group;
        group = (share + groups - 1) / groups;
    }
    if (ensure_activations(enc, B, T, keep_activations, probs_per_layer, workers, group,
                           first_token_only) < 0)
        return -1;
    enc->probs_per_layer = probs_per_layer;
    const int64_t N = (int64_t)B * T;
    memcpy(enc->ids, ids, sizeof(int64_t) * N);
    memcpy(enc->positions, positions, sizeof(int64_t) * N);
    memcpy(enc->types, token_types, sizeof(int64_t) * N);
    enc->has_mask = key_mask != NULL;
    if (key_mask) memcpy(enc->key_mask, key_mask, sizeof(float) * N);
    enc->training = training;
    enc->first_token_only = first_token_only;
    enc->keeping = keep_activations;
    enc->seed = seed;
    embeddings_forward(enc, (int)N);
    if (enc->capture) memcpy(enc->capture, enc->emb_out, sizeof(float) * N * enc->cfg.hidden);
    if (keep_activations ? layers_forward(enc, NULL, 0, B, B) < 0
                         : workers_forward(enc, B, workers, group) < 0)
        return -1;
    enc->has_forward = true;
    if (head_forward(enc) < 0) {
        enc->has_forward = false;
        return -1;
    }
    enc->backward_ready = keep_activations;
    enc->forward_kept = keep_activations;
    return 0;
}

int pc_encoder_gate_values(const pc_encoder *enc, pc_gate_visit visit, void *ctx) {
    if (!enc->has_forward || !enc->forward_kept) return -2;
    const int B = enc->B, T = enc->T, N = B * T, C = enc->cfg.hidden;
    float *g = malloc(sizeof(float) * (size_t)B * PC_GATE_MAX);
    if (!g) return -1;
    for (int i = 0; i < enc->num_slots; i++) {
        const pc_linear_slot *s = &enc->slots[i];
        if (s->layer < 0) continue; /* the head's rows are one per sequence: no gates */
        for (int k = 0; k < s->site[PC_SITE_LINEAR_OUT].n; k++) {
            const int G = pc_site_gate_values(&s->site[PC_SITE_LINEAR_OUT], k, N, T, s->in,
                                              s->out, g);
            if (G) visit(ctx, s->layer, PC_SITE_LINEAR_OUT, i, G, g, B);
        }
    }
    for (int l = 0; l < enc->cfg.layers; l++) {
        const layer_params *lp = &enc->layer[l];
        for (int k = 0; k < PC_BLOCKS; k++) {
            const int G = pc_site_gate_values(&lp->block[k], 0, N, T, C, C, g);
            if (G) visit(ctx, l, PC_SITE_BLOCK, k, G, g, B);
        }
        const int G = pc_site_gate_values(&lp->kv, 0, N, T, C, C, g);
        if (G) visit(ctx, l, PC_SITE_KV, 0, G, g, B);
    }
    free(g);
    return 0;
}

/* ------------------------------------------------------------ backward */

static bool layer_has_trainable(const pc_encoder *enc, int l) {
    const layer_params *lp = &enc->layer[l];
    for (int s = 0; s < SLOTS_PER_LAYER; s++)
        if (slot_has_trainable(lp->slot[s])) return true;
    for (int k = 0; k < PC_BLOCKS; k++)
        if (pc_site_trains(&lp->block[k])) return true;
    if (pc_site_trains(&lp->kv)) return true;
    return wants_grad(lp->ln1_w) || wants_grad(lp->ln1_b) || wants_grad(lp->ln2_w) ||
           wants_grad(lp->ln2_b);
}

static bool embeddings_trainable(const pc_encoder *enc) {
    return pc_site_trains(&enc->emb) || wants_grad(enc->word_emb) || wants_grad(enc->pos_emb) || wants_grad(enc->type_emb) ||
           wants_grad(enc->emb_ln_w) || wants_grad(enc->emb_ln_b);
}

/* Whether anything of a layer under its FFN junction (ffn) or under its attention junction
 * trains: where a backward that wants no gradient of the layer's input may stop */
static bool trains_under_junction(const layer_params *lp, bool ffn) {
    if (ffn && (slot_has_trainable(lp->slot[SLOT_O]) || slot_has_trainable(lp->slot[SLOT_I]) ||
                pc_site_trains(&lp->block[PC_BLOCK_ATTENTION]) || wants_grad(lp->ln1_w) ||
                wants_grad(lp->ln1_b)))
        return true;
    for (int s = SLOT_Q; s <= SLOT_AO; s++)
        if (slot_has_trainable(lp->slot[s])) return true;
    return pc_site_trains(&lp->kv);
}

/* Attention's backward in layer l into dq, dk, dv (pc_attention_backward_into), or, when
 * fold, folded: the keys' and values' share added to dx (NULL: not wanted), scratch as its
 * scratch, reading x in place of the keys and values the forward did not project */
static int qkv_attention_backward(pc_encoder *enc, int l, const layer_rows *r, float *dq,
                                  float *dk, float *dv, const pc_attention_dims *dims, bool fold,
                                  float *dx, const float *x, float *scratch) {
    const layer_params *lp = &enc->layer[l];
    const float p_attn = enc->training ? enc->cfg.attention_dropout : 0.0f;
    const uint64_t seed = site_seed(enc->seed, l, SITE_ATTN);
    float *probs = enc->acts[l].probs;
    if (!fold)
        return pc_attention_backward_into(dq, dk, dv, enc->d_ctx, probs, r->q, r->k, r->v, dims,
                                          p_attn, seed);
    const int64_t C = enc->cfg.hidden;
    const float *w = pc_f32(lp->qkv_w), *b = pc_f32(lp->qkv_b);
    pc_tensor *sk = kv_column_scale(lp->slot[SLOT_K]), *sv = kv_column_scale(lp->slot[SLOT_V]);
    const pc_folded_projections f = {w + C * C, b + C, w + 2 * C * C, b + 2 * C, NULL, 0,
                                     scale_values(sk), scale_values(sv)};
    int oom = 0;
    const pc_folded_grads g = {dx, grad_or_null(lp->slot[SLOT_K]->weight, &oom),
                               grad_or_null(lp->slot[SLOT_V]->weight, &oom),
                               grad_or_null(lp->slot[SLOT_K]->bias, &oom),
                               grad_or_null(lp->slot[SLOT_V]->bias, &oom),
                               sk ? grad_or_null(sk, &oom) : NULL,
                               sv ? grad_or_null(sv, &oom) : NULL};
    if (oom) return -1;
    return pc_attention_first_query_backward_folded(
        dq, &g, enc->d_ctx, probs, r->q, r->folded ? NULL : r->k, r->folded ? NULL : r->v, x,
        &f, dims, p_attn, seed, scratch);
}

/* d_out (Nq,C) is the gradient of the layer's output rows; on return d_x (N,C) holds the
 * gradient of its input when need_dx. Mirrors layer_forward line by line, as far down as a
 * gradient is wanted. */
static int layer_backward(pc_encoder *enc, int l, const float *x, float *d_out, float *d_x,
                          bool need_dx) {
    const pc_encoder_config *c = &enc->cfg;
    const int B = enc->B, T = enc->T, N = B * T, C = c->hidden, I = c->intermediate;
    layer_params *lp = &enc->layer[l];
    layer_acts *a = &enc->acts[l];
    float p_hidden = enc->training ? c->hidden_dropout : 0.0f;
    int oom = 0;
    const layer_rows r = rows_of(enc, l, x, a->qkv, B, enc->first_x);
    const layer_rows dr = rows_of(enc, l, x, enc->d_qkv, B, enc->first_x); /* same layout */
    const int Nq = r.Nq;
    const int64_t NqC = (int64_t)Nq * C;

    pc_site *attn_block = &lp->block[PC_BLOCK_ATTENTION], *ffn_block = &lp->block[PC_BLOCK_FFN];
    float *d_r = enc->d_r, *d_h1 = enc->d_h1;
    if (ffn_block->n) {
        /* out = junction(r2, h1): d_r (through the branch's dropout), d_h1 from its adapter */
        const pc_block_call bc = block_call_grads(enc, l, PC_BLOCK_FFN, Nq, r.Tq, true, &oom);
        if (oom || pc_site_block_backward(ffn_block, &bc, d_r, d_h1, d_out, a->r2, a->h1, 0) < 0)
            return -1;
    } else {
        /* out = LN2(r2) with r2 = dropout(o) + h1: in one pass the residual's share of
         * LN2ᵀ d_out to h1 and the branch's, through its dropout, to d_r (Nq,C) */
        pc_layernorm_backward_to(d_r, d_h1, grad_or_null(lp->ln2_w, &oom),
                                 grad_or_null(lp->ln2_b, &oom), d_out, a->r2, pc_f32(lp->ln2_w),
                                 a->ln2_mean, a->ln2_rstd, Nq, C, p_hidden,
                                 site_seed(enc->seed, l, SITE_O));
    }
    if (!need_dx && !trains_under_junction(lp, true)) return oom ? -1 : 0;
    float *d_pre = enc->d_act;
    pc_linear_slot *o = lp->slot[SLOT_O];
    pc_tensor *scale = fused_input_scale(enc, o);
    if (scale) {
        /* o = (gelu(pre) ⊙ l)·Woᵀ + bo, Wo frozen: the product's input gradient, then l's
         * and pre's in one pass */
        if (gemm_and_output_backward(enc, o, d_pre, I, false, d_r, C, NULL, I, Nq) < 0 ||
            linear_param_grads(o, d_r, C, NULL, I, Nq, false) < 0)
            return -1;
        float *dl = grad_or_null(scale, &oom);
        if (oom) return -1;
        pc_gelu_scale_backward(dl, d_pre, a->pre, pc_f32(scale), Nq, I,
                               c->activation == PC_ACT_GELU_TANH);
    } else if (a->pre_is_slope) {
        /* o = act·Woᵀ + bo, its backward reading nothing of act; the forward kept gelu'(pre) */
        if (slot_backward(enc, o, d_pre, d_r, NULL, Nq, true) < 0) return -1;
        pc_mul_inplace(d_pre, a->pre, (int64_t)Nq * I);
    } else {
        /* o = act·Woᵀ + bo; act is recomputed when Wo's backward reads it */
        if (slot_reads_input(o)) activation_forward(enc, a->act, a->pre, (int64_t)Nq * I);
        if (slot_backward(enc, o, d_pre, d_r, a->act, Nq, true) < 0) return -1;
        /* act = gelu(pre): d_pre = d_act ⊙ gelu'(pre), in place */
        activation_backward_inplace(enc, d_pre, a->pre, (int64_t)Nq * I);
    }
    /* pre = h1·Wiᵀ + bi; h1 is recomputed when Wi's backward reads it (block adapters keep
     * every layer's) */
    if (slot_reads_input(lp->slot[SLOT_I]) && a->h1 == enc->h1)
        pc_layernorm_forward(a->h1, a->ln1_mean, a->ln1_rstd, a->r1, pc_f32(lp->ln1_w),
                             pc_f32(lp->ln1_b), Nq, C, c->layer_norm_eps);
    if (slot_backward(enc, lp->slot[SLOT_I], d_h1, d_pre, a->h1, Nq, false) < 0) return -1;
    /* d_res: the gradient of the attention block's residual input xq */
    float *d_res = d_r;
    bool dx_has_residual = false; /* d_x holds the residual's share already */
    bool dropped = false;         /* d_r has been through the branch's dropout */
    if (attn_block->n) {
        /* h1 = junction(r1, xq): d_r (through the branch's dropout) and d_res, straight into
         * d_x when every row was computed, else in d_ctx (free until the AO backward) */
        dx_has_residual = need_dx && !r.first_tokens;
        d_res = dx_has_residual ? d_x : enc->d_ctx;
        dropped = true;
        const pc_block_call bc = block_call_grads(enc, l, PC_BLOCK_ATTENTION, Nq, r.Tq, true, &oom);
        if (oom || pc_site_block_backward(attn_block, &bc, d_r, d_res, d_h1, a->r1, r.xq, 0) < 0)
            return -1;
    } else {
        /* h1 = LN1(r1), r1 = dropout(ao) + xq: the residual's share goes to d_x in the same
         * pass when every row was computed, and then the branch's, through its dropout, to
         * d_r; else d_r takes the residual's share, for the first tokens' rows of d_x below */
        float *copy = need_dx && !r.first_tokens ? d_x : NULL;
        dropped = copy || !need_dx;
        pc_layernorm_backward_to(d_r, copy, grad_or_null(lp->ln1_w, &oom),
                                 grad_or_null(lp->ln1_b, &oom), d_h1, a->r1, pc_f32(lp->ln1_w),
                                 a->ln1_mean, a->ln1_rstd, Nq, C, dropped ? p_hidden : 0.0f,
                                 site_seed(enc->seed, l, SITE_AO));
        dx_has_residual = copy != NULL;
    }
    /* the residual's share of d_x (at the first tokens only, when only those rows were
     * computed) */
    if (need_dx && !dx_has_residual) {
        if (!r.first_tokens) {
            pc_copy_floats(d_x, d_res, NqC);
        } else {
            pc_copy_floats(d_x, NULL, (int64_t)N * C);
            for (int b = 0; b < B; b++)
                memcpy(d_x + (int64_t)b * T * C, d_res + (int64_t)b * C, sizeof(float) * C);
        }
    }
    if (!need_dx && !trains_under_junction(lp, false)) return oom ? -1 : 0;
    if (!dropped)
        pc_dropout_backward_inplace(d_r, NqC, p_hidden, site_seed(enc->seed, l, SITE_AO));
    /* ao = ctx·Waoᵀ + bao */
    if (slot_backward(enc, lp->slot[SLOT_AO], enc->d_ctx, d_r, a->ctx, Nq, true) < 0) return -1;
    /* ctx = attention(q, k, v); the gradient of q, k or v only where x's is wanted or that
     * projection has something to train (the lowest trained layer needs no more) */
    bool want[3];
    for (int s = SLOT_Q; s <= SLOT_V; s++)
        want[s - SLOT_Q] = need_dx || slot_has_trainable(lp->slot[s]);
    const int P = kv_rows_of(lp);
    const pc_attention_dims plain_dims = attention_dims(enc, &r, B);
    /* folded: the keys' and values' share of d_x comes from the attention's backward, their
     * gradients never formed (d_qkv's k|v rows are its scratch) */
    const bool fold = fold_keys_values_backward(enc, l, &r, B, need_dx);
    if (fold) want[1] = want[2] = false;
    float *dq = want[0] ? dr.q : NULL, *dk = want[1] ? dr.k : NULL, *dv = want[2] ? dr.v : NULL;
    if (P) {
        /* with a prefix: the sequences' key|value gradients straight into d_qkv, each
         * sequence's gradient of the prefix rows into d_kv (B, P, 2C), then summed over the
         * batch */
        const int64_t seq = (int64_t)P * 2 * C;
        float *d_kv = enc->d_kv;
        const pc_attention_prefix view = prefix_view(lp, C, a->kv, d_kv);
        pc_attention_dims pd = attention_dims(enc, &r, B);
        pd.prefix = &view;
        const float *key_mask = enc->has_mask ? enc->key_mask : NULL;
        if (!enc->probs_per_layer && !r.folded &&
            pc_attention_probs(a->probs, r.q, r.k, key_mask, &pd) < 0)
            return -1;
        if (qkv_attention_backward(enc, l, &r, dq, dk, dv, &pd, fold, need_dx ? d_x : NULL, x,
                                   dr.k) < 0)
            return -1;
        /* a gated prefix: its gates' gradients and x's share, and each sequence's rows
         * scaled back by its gates */
        const pc_site_call call = {.N = N, .in = C, .out = C, .T = T, .training = enc->training};
        if (pc_site_kv_gate_backward(&lp->kv, &call, d_kv, 2 * C, seq, need_dx ? d_x : NULL, C,
                                     x, C, 0) < 0)
            return -1;
        for (int b = 1; b < B; b++) /* in order, into the first sequence's prefix rows */
            for (int64_t i = 0; i < seq; i++) d_kv[i] += d_kv[b * seq + i];
        const pc_adapter *prefix = lp->kv.entry[0].adapter;
        if (prefix->method->kv_backward(prefix, d_kv, d_kv + C, 2 * C) < 0) return -1;
    } else {
        if (!enc->probs_per_layer && !r.folded &&
            pc_attention_probs(a->probs, r.q, r.k, enc->has_mask ? enc->key_mask : NULL,
                               &plain_dims) < 0)
            return -1;
        if (qkv_attention_backward(enc, l, &r, dq, dk, dv, &plain_dims, fold,
                                   need_dx ? d_x : NULL, x, dr.k) < 0)
            return -1;
    }
    /* q, k, v = x·Wᵀ + b (a query row's input gradient belongs to d_x's row of that token:
     * stride T·C between first tokens) */
    const int ld_dxq = r.first_tokens ? T * C : C;
    bool inputs_adapted = false;
    for (int s = SLOT_Q; s <= SLOT_V; s++) inputs_adapted |= in_site(lp->slot[s])->n > 0;
    if (inputs_adapted) {
        /* an input site makes that projection's input its own: each projection whole */
        for (int s = SLOT_Q; s <= SLOT_V; s++) {
            if (!want[s - SLOT_Q]) continue;
            float *dy; const float *in; int ldy, rows;
            qkv_slot_view(&dr, s, x, N, &dy, &ldy, &in, &rows);
            if (linear_backward(enc, lp->slot[s], need_dx ? d_x : NULL, s == SLOT_Q ? ld_dxq : C,
                                false, dy, ldy, in, C, rows) < 0)
                return -1;
        }
        return oom ? -1 : 0;
    }
    /* the output sites first: they turn d_qkv into the gradient of the fused GEMM's output
     * and add their shares to d_x */
    for (int s = SLOT_Q; s <= SLOT_V; s++) {
        if (!want[s - SLOT_Q]) continue;
        pc_linear_slot *slot = lp->slot[s];
        float *dy; const float *in; int ldy, rows;
        qkv_slot_view(&dr, s, x, N, &dy, &ldy, &in, &rows);
        pc_site_call call = site_call(enc, slot, PC_SITE_LINEAR_OUT, rows);
        if (s == SLOT_Q && r.first_tokens) call = with_sequences(call, x, T, need_dx ? d_x : NULL);
        if (pc_site_output_backward(out_site(slot), &call, dy, ldy, need_dx ? d_x : NULL,
                                    s == SLOT_Q ? ld_dxq : C, in, C, 0) < 0)
            return -1;
    }
    /* when all three weights train and every row has a query, their gradients come from
     * one GEMM (3C,C) = d_qkvᵀ·x into scratch (d_act is free by now), then added to each
     * (BLIS runs one 3C-row product faster than three C-row ones) */
    bool qkv_weights_done = false;
    if (!r.first_tokens && (int64_t)N * I >= 3 * (int64_t)C * C &&
        wants_grad(lp->slot[SLOT_Q]->weight) && wants_grad(lp->slot[SLOT_K]->weight) &&
        wants_grad(lp->slot[SLOT_V]->weight)) {
        float *dw = enc->d_act;
        pc_sgemm(true, false, 3 * C, C, N, 1.0f, enc->d_qkv, 3 * C, x, C, 0.0f, dw, C);
        for (int s = SLOT_Q; s <= SLOT_V; s++) {
            pc_tensor *g = pc_tensor_grad(lp->slot[s]->weight);
            if (!g) return -1;
            pc_add_forward(pc_f32(g), pc_f32(g), dw + (int64_t)s * C * C, (int64_t)C * C);
        }
        qkv_weights_done = true;
    }
    for (int s = SLOT_Q; s <= SLOT_V; s++) {
        if (!want[s - SLOT_Q]) continue;
        float *dy; const float *in; int ldy, rows;
        qkv_slot_view(&dr, s, x, N, &dy, &ldy, &in, &rows);
        if (linear_param_grads(lp->slot[s], dy, ldy, in, C, rows, qkv_weights_done) < 0)
            return -1;
    }
    if (need_dx) {
        const float *w = pc_f32(lp->qkv_w);
        if (!r.first_tokens) {
            /* d_x (N,C) += d_qkv (N,3C) · Wqkv (3C,C) */
            pc_sgemm(false, false, N, C, 3 * C, 1.0f, enc->d_qkv, 3 * C, w, C, 1.0f, d_x, C);
        } else {
            /* d_x += d_kv (N,2C) · [Wk;Wv] (2C,C) (unless folded: added already); first-token
             * rows += d_q (B,C) · Wq */
            if (!fold)
                pc_sgemm(false, false, N, C, 2 * C, 1.0f, dr.k, 2 * C, w + (int64_t)C * C, C,
                         1.0f, d_x, C);
            pc_sgemm(false, false, B, C, C, 1.0f, dr.q, C, w, C, 1.0f, d_x, ld_dxq);
        }
    }
    return oom ? -1 : 0;
}

static int embeddings_backward(pc_encoder *enc, const float *d_emb) {
    const int N = enc->B * enc->T, C = enc->cfg.hidden;
    int oom = 0;
    float *d = enc->d_r;
    pc_copy_floats(d, d_emb, (int64_t)N * C);
    if (enc->training)
        pc_dropout_backward_inplace(d, (int64_t)N * C, enc->cfg.hidden_dropout,
                                 site_seed(enc->seed, -1, SITE_EMB));
    float *d_sum = enc->d_h1;
    pc_layernorm_backward_to(d_sum, NULL, grad_or_null(enc->emb_ln_w, &oom),
                             grad_or_null(enc->emb_ln_b, &oom), d, enc->emb_sum,
                             pc_f32(enc->emb_ln_w), enc->emb_mean, enc->emb_rstd, N, C, 0.0f, 0);
    float *dw = grad_or_null(enc->word_emb, &oom), *dp = grad_or_null(enc->pos_emb, &oom),
          *dt = grad_or_null(enc->type_emb, &oom);
    if (oom) return -1;
    if (dp) pc_embedding_backward(dp, d_sum, enc->positions, N, C);
    if (dt) pc_embedding_backward(dt, d_sum, enc->types, N, C);
    /* the word rows: through the embeddings site's adapter first (in place: the positions
     * and token types have had theirs) */
    if (enc->emb.n) {
        const pc_adapter *a = enc->emb.entry[0].adapter;
        if (a->method->emb_backward(a, d_sum, enc->B, enc->T) < 0) return -1;
    }
    if (dw) pc_embedding_backward(dw, d_sum, enc->ids, N, C);
    /* as torch's Embedding(padding_idx): the padding row is never updated */
    const pc_encoder_config *c = &enc->cfg;
    if (dw && c->word_padding_idx >= 0 && c->word_padding_idx < c->vocab_size)
        memset(dw + (int64_t)c->word_padding_idx * C, 0, sizeof(float) * C);
    if (dp && c->position_padding_idx >= 0 && c->position_padding_idx < c->max_positions)
        memset(dp + (int64_t)c->position_padding_idx * C, 0, sizeof(float) * C);
    return 0;
}

/* Head backward: d_logits (B,L) → d_pooled / d_cls; returns the gradient of the last hidden
 * state in d_hidden_out: (N,C) with only the first token of each sequence non-zero, or (B,C)
 * after a first-token-only forward. */
static int head_backward(pc_encoder *enc, const float *d_logits_in, const float *d_pooled_in,
                         float *d_hidden_out, bool need_below) {
    const pc_encoder_config *c = &enc->cfg;
    const int B = enc->B, T = enc->T, C = c->hidden;
    const int64_t BC = (int64_t)B * C;
    float p = enc->training ? c->classifier_dropout : 0.0f;
    float *d_cls = enc->d_head; /* (B,C) gradient of the first-token features */
    memset(d_cls, 0, sizeof(float) * BC);
    float *tmp = enc->d_ctx;    /* (B,C) scratch, free during the head backward */
    bool via_pooler = false;
    float *d_pooled = enc->d_act; /* (B,C) scratch */
    memset(d_pooled, 0, sizeof(float) * BC);
    float *d_logits = NULL; /* a copy: the caller's buffer stays as given */
    if (d_logits_in) {
        d_logits = enc->d_logits;
        memcpy(d_logits, d_logits_in, sizeof(float) * (size_t)B * c->num_labels);
    }
    if (d_logits && c->head == PC_HEAD_BERT) {
        if (slot_backward(enc, enc->cls_out, d_pooled, d_logits, enc->head_x1, B, false) < 0) return -1;
        pc_dropout_backward_inplace(d_pooled, BC, p, site_seed(enc->seed, -1, SITE_HEAD1));
        via_pooler = true;
    } else if (d_logits && c->head == PC_HEAD_ROBERTA) {
        memset(tmp, 0, sizeof(float) * BC);
        if (slot_backward(enc, enc->cls_out, tmp, d_logits, enc->head_x2, B, false) < 0) return -1;
        pc_dropout_backward_inplace(tmp, BC, p, site_seed(enc->seed, -1, SITE_HEAD2));
        float *d_pre = enc->d_qkv;
        memset(d_pre, 0, sizeof(float) * BC);
        pc_tanh_backward(d_pre, tmp, enc->head_h, BC);
        if (slot_backward(enc, enc->cls_dense, d_cls, d_pre, enc->head_x1, B, false) < 0) return -1;
        pc_dropout_backward_inplace(d_cls, BC, p, site_seed(enc->seed, -1, SITE_HEAD1));
    } else if (d_pooled_in) {
        memcpy(d_pooled, d_pooled_in, sizeof(float) * BC);
        via_pooler = true;
    }
    if (via_pooler) {
        /* pooled = tanh(cls·Wpᵀ + bp): d_pre_pool = d_pooled ⊙ (1 - pooled²) */
        float *d_pre = enc->d_qkv;
        memset(d_pre, 0, sizeof(float) * BC);
        pc_tanh_backward(d_pre, d_pooled, enc->pooled, BC);
        if (slot_backward(enc, enc->pooler, need_below ? d_cls : NULL, d_pre, enc->cls_in, B, false) < 0)
            return -1;
    }
    if (need_below) {
        const int64_t stride = first_token_stride(enc);
        if (stride != C) memset(d_hidden_out, 0, sizeof(float) * (size_t)B * T * C);
        for (int b = 0; b < B; b++)
            memcpy(d_hidden_out + b * stride, d_cls + (int64_t)b * C, sizeof(float) * C);
    }
    return 0;
}

int pc_encoder_backward(pc_encoder *enc, const float *d_logits, const float *d_hidden,
                        const float *d_pooled) {
    if (!enc->has_forward) return -2;
    if (!enc->backward_ready) return -3;
    if (d_hidden && enc->first_token_only && enc->cfg.layers > 0) return -4;
    /* a forward that kept GELU's slope kept nothing to rebuild act from: an output
     * projection whose backward reads act (its weight set to train since) needs a new one */
    for (int l = 0; l < enc->cfg.layers; l++)
        if (enc->acts[l].pre_is_slope && slot_reads_input(enc->layer[l].slot[SLOT_O])) return -5;
    /* one backward per forward, whatever part of the model it reaches (and also when it
     * fails half-way): the layer loop below overwrites activations with gradients */
    enc->has_forward = false;
    enc->backward_ready = false;
    const pc_encoder_config *c = &enc->cfg;
    const int N = enc->B * enc->T, C = c->hidden;
    /* the lowest part of the model holding anything trainable: below it nothing is needed */
    int lowest = c->layers; /* = no encoder layer trainable */
    for (int l = 0; l < c->layers; l++)
        if (layer_has_trainable(enc, l)) { lowest = l; break; }
    bool emb = embeddings_trainable(enc);
    if (emb) lowest = -1;
    bool need_below_head = lowest < c->layers;

    /* d_out: gradient of the current layer's output, d_in: of its input */
    float *d_out = enc->d_x;
    if (d_logits || d_pooled) {
        if (head_backward(enc, d_logits, d_pooled, d_out, need_below_head) < 0) return -1;
    } else {
        pc_copy_floats(d_out, d_hidden, (int64_t)N * C);
    }
    if (!need_below_head) return 0;
    for (int l = c->layers - 1; l >= 0 && l >= lowest; l--) {
        /* the layer's input: the embeddings, or the layer below's LN2(r2) rebuilt in place */
        const float *x = enc->emb_out;
        if (l > 0) {
            layer_acts *below = &enc->acts[l - 1];
            const layer_params *bp = &enc->layer[l - 1];
            if (below->out == enc->out_buf[(l - 1) % 2]) /* not kept: rebuilt */
                pc_layernorm_forward(below->out, below->ln2_mean, below->ln2_rstd, below->r2,
                                     pc_f32(bp->ln2_w), pc_f32(bp->ln2_b), N, C,
                                     c->layer_norm_eps);
            x = below->out;
        }
        bool need_dx = l > lowest;
        float *d_in = d_out == enc->d_x ? enc->d_y : enc->d_x;
        if (layer_backward(enc, l, x, d_out, d_in, need_dx) < 0) return -1;
        d_out = d_in;
    }
    if (emb && embeddings_backward(enc, d_out) < 0) return -1;
    return 0;
}
