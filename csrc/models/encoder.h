/* BERT / RoBERTa / MiniLM encoders with optional classification heads; adapters
 * (adapters/adapter.h) at the input and output site of any linear.
 *
 * Parameters are engine tensors named as transformers names them (without the "bert." /
 * "roberta." prefix the Python side adds). query/key/value weights are views into one
 * fused (3C, C) buffer so the QKV projection is a single GEMM.
 */
#ifndef PEFTCORE_ENCODER_H
#define PEFTCORE_ENCODER_H

#include "../adapters/adapter.h"
#include "../engine.h"

typedef enum { PC_ACT_GELU = 0, PC_ACT_GELU_TANH = 1, PC_ACT_RELU = 2 } pc_activation;
typedef enum { PC_HEAD_NONE = 0, PC_HEAD_BERT = 1, PC_HEAD_ROBERTA = 2 } pc_head_kind;

typedef struct {
    int vocab_size, hidden, layers, heads, intermediate, max_positions, type_vocab_size;
    float layer_norm_eps, hidden_dropout, attention_dropout, classifier_dropout;
    pc_activation activation;
    bool add_pooler;      /* BertModel / RobertaModel pooler (tanh(dense(h[:,0]))) */
    pc_head_kind head;    /* sequence-classification head, or none */
    int num_labels;
    int word_padding_idx;     /* embedding row that never gets a gradient, or -1 */
    int position_padding_idx; /* RoBERTa's padding position, or -1 */
} pc_encoder_config;

/* One linear layer of the model, as transformers names it ("encoder.layer.0.attention.self.query"). */
typedef struct {
    char name[96];
    pc_tensor *weight, *bias; /* (out,in), (out,) */
    int in, out;
    int layer;                /* encoder layer index; -1 for pooler/head */
    pc_site site[PC_LINEAR_SITES]; /* adapters at its input and output */
} pc_linear_slot;

typedef struct pc_encoder pc_encoder;

/* NULL with a message in *err (static string) on bad config or out of memory. */
pc_encoder *pc_encoder_new(const pc_encoder_config *cfg, const char **err);
void pc_encoder_free(pc_encoder *enc);
const pc_encoder_config *pc_encoder_get_config(const pc_encoder *enc);

/* Parameters in a fixed order; *name is the transformers name, *is_head marks head params. */
int pc_encoder_num_params(const pc_encoder *enc);
pc_tensor *pc_encoder_param(const pc_encoder *enc, int i, const char **name, bool *is_head);
int pc_encoder_num_linears(const pc_encoder *enc);
pc_linear_slot *pc_encoder_linear(pc_encoder *enc, int i);
/* Replace the adapters at a linear's input or output site by list[0..n) (n may be 0), run
 * in that order. On success the encoder owns them (and frees the old ones); on failure the
 * caller keeps them and nothing changed: -1 bad index or n, -2 an adapter was not built for
 * this linear and site (pc_adapter_new with its in, out). */
int pc_encoder_set_adapters(pc_encoder *enc, int linear, pc_site_kind site, pc_adapter **list,
                            int n);

/* Replace the adapter at a layer's attention or FFN block junction by list[0..n), n <= 1
 * (owned from now on on success; on failure the caller keeps it): -1 bad layer, block or n,
 * -2 an adapter not built for a block of this hidden size (pc_block_adapter_new). */
int pc_encoder_set_block_adapters(pc_encoder *enc, int layer, pc_block_kind block,
                                  pc_adapter **list, int n);

/* The adapter (n <= 1) adding key/value rows to layer `layer`'s attention, or at the
 * word-embedding rows; the same returns as pc_encoder_set_block_adapters. */
int pc_encoder_set_kv_adapters(pc_encoder *enc, int layer, pc_adapter **list, int n);
int pc_encoder_set_embedding_adapters(pc_encoder *enc, pc_adapter **list, int n);

/* Point a linear at other weight/bias tensors of the same shapes (retained), e.g. an
 * adapter's trainable copy of a head (PEFT's modules_to_save). Returns 0, or -2 on shapes. */
int pc_encoder_set_linear_params(pc_encoder *enc, int linear, pc_tensor *weight, pc_tensor *bias);

/* Forward over a (B,T) batch. ids, positions, token_types: (B,T) int64, already checked to
 * be in range; key_mask (B,T) float 1/0 or NULL. keep_activations: a backward may follow.
 * first_token_only: the last layer computes only each sequence's first token (all a pooler
 * or classification head reads; unless an adapter of the last layer needs every row, which
 * makes it run whole); the last hidden state is then not available.
 * Returns 0, or -1 when out of memory.
 * Results: hidden (B,T,C), pooled (B,C) or NULL, logits (B,num_labels) or NULL. */
int pc_encoder_forward(pc_encoder *enc, const int64_t *ids, const int64_t *positions,
                       const int64_t *token_types, const float *key_mask, int B, int T,
                       bool training, bool keep_activations, bool first_token_only,
                       uint64_t seed);
bool pc_encoder_has_forward(const pc_encoder *enc);
/* (B, T) of the last forward */
void pc_encoder_batch_shape(const pc_encoder *enc, int *B, int *T);
/* NULL without a forward, or after a first-token-only one */
const float *pc_encoder_hidden(const pc_encoder *enc);
const float *pc_encoder_pooled(const pc_encoder *enc);
const float *pc_encoder_logits(const pc_encoder *enc);

/* The gates of the last forward, when it kept its activations (UniPELT's gated adapters):
 * visit(ctx, layer, site, which, G, g, B) once per gated adapter, which the linear's index
 * (output site), the block (block site) or 0 (KV site), g (B,G) its gates per sequence.
 * Returns 0, -1 out of memory, -2 without such a forward. */
typedef void (*pc_gate_visit)(void *ctx, int layer, pc_site_kind site, int which, int G,
                              const float *g, int B);
int pc_encoder_gate_values(const pc_encoder *enc, pc_gate_visit visit, void *ctx);

/* Backward of the last forward: accumulates into .grad of every parameter (and adapter
 * tensor) with requires_grad. Give exactly one of d_logits (B,L) (models with a head),
 * d_pooled (B,C) or d_hidden (B,T,C) (either may be given without a head). Returns 0,
 * -1 when out of memory, -2 when there was no forward, -3 when the forward did not keep its
 * activations (keep_activations false: inference, one set of buffers for all layers), -4 for
 * d_hidden after a first-token-only forward, -5 when a feed-forward output weight that was
 * frozen in the forward trains now (the forward kept GELU's slope, not its input). -2 to -5
 * leave the forward as it was. */
int pc_encoder_backward(pc_encoder *enc, const float *d_logits, const float *d_hidden,
                        const float *d_pooled);

/* Eval forwards without a backward run the layers in groups of whole sequences of about
 * rows tokens each (at least one sequence), bounding their scratch; 0 (the default): the
 * whole batch at once. The outputs are the same either way. */
void pc_encoder_set_inference_rows(pc_encoder *enc, int64_t rows);
/* Forwards while buf is set (not NULL) copy the embeddings' output and every layer's output,
 * (layers + 1, B, T, hidden) floats, into buf, and run the last layer on every token. The
 * caller owns buf and sets it back to NULL. */
void pc_encoder_capture_hidden_states(pc_encoder *enc, float *buf);

/* Scratch bytes a grouped inference forward holds per token of a group (for choosing rows). */
int64_t pc_encoder_inference_bytes_per_token(const pc_encoder *enc);

/* Bytes held for activations and scratch (for reports). */
int64_t pc_encoder_activation_bytes(const pc_encoder *enc);

/* Free the activation arena and every scratch buffer sized by a batch (they only grow
 * while forwards run); the next forward allocates what it needs. Forgets the last forward. */
void pc_encoder_release_activations(pc_encoder *enc);

/* Bytes of the allocation a forward that returned -1 could not make (0 if none). */
int64_t pc_encoder_failed_bytes(const pc_encoder *enc);

#endif
