/* model.h - the MiniMax-Text-01 forward pass, written once against core/backend.h.
 * The pieces are callable separately because the cluster splits exactly there:
 *   embed -> layers [l0, l1) -> head          (attention-svc stages own layer ranges)
 *   inside a layer: attention, then MoE = route (gate) -> experts on grouped tokens -> combine
 * A forward call takes a ragged batch: any mix of prefill chunks and single decode tokens of
 * different sequences at different positions. */
#ifndef MX_MODEL_H
#define MX_MODEL_H

#include <stdbool.h>
#include <stdint.h>

#include "backend.h"
#include "config.h"
#include "weights.h"

/* Weights bound to a backend (device copies; on the CPU, views of the mapped checkpoint). */
typedef struct mx_model mx_model;

/* Binds weights (borrowed; must outlive the model) to a backend (borrowed). */
int mx_model_create(const mx_weights *w, mx_backend *be, mx_model **out, mx_error *err);
void mx_model_free(mx_model *m);
const mx_config *mx_model_config(const mx_model *m);
mx_backend *mx_model_backend(const mx_model *m);

/* Per-sequence state for the layers [layer_begin, layer_end): lightning states for lightning
 * layers, KV caches for softmax layers. length = tokens processed so far. */
typedef struct mx_sequence {
    int layer_begin, layer_end;
    int64_t length;
    mx_lightning_state *lightning; /* [num_layers], used for lightning layers in range */
    mx_kv_cache *kv;               /* [num_layers], used for softmax layers in range */
} mx_sequence;

int mx_sequence_create(mx_model *m, int layer_begin, int layer_end, mx_sequence **out, mx_error *err);
void mx_sequence_free(mx_model *m, mx_sequence *s);
/* Bytes of state the sequence holds now (lightning states + KV cache). */
uint64_t mx_sequence_bytes(const mx_sequence *s);

/* Undo of one step (an atomic RunBatch: every sequence of a batch advances, or none does).
 * Before the step mx_sequence_save copies the sequence's lightning states to host floats
 * (mx_sequence_undo_floats of them: heads x head_dim^2 per lightning layer in range); after a
 * failure mx_sequence_rollback puts them back, truncates every KV cache to `length` (the
 * length saved before the step) and sets the length. KV needs no copy: a step only appends. */
size_t mx_sequence_undo_floats(const mx_model *m, const mx_sequence *s);
int mx_sequence_save(mx_model *m, const mx_sequence *s, float *undo, mx_error *err);
int mx_sequence_rollback(mx_model *m, mx_sequence *s, int64_t length, const float *undo, mx_error *err);

/* A ragged batch: sequence i owns rows [spans[i].start, +spans[i].len) of the hidden states. */
typedef struct mx_batch {
    int n_seqs;
    mx_sequence **seqs;
    mx_span *spans;
    int n_tokens;
} mx_batch;

/* The MoE step of one layer, pluggable so attention-svc can send it over the network.
 * x2: [T, hidden] normalised input; ids/weights: the router's top-k per token [T*k];
 * out: [T, hidden] zeroed by the caller, receives sum_k w_k * expert_k(x2). */
typedef struct mx_moe_executor {
    int (*run)(void *ctx, int layer, const mx_tensor *x2, const int32_t *ids, const float *weights, int k,
               mx_tensor *out, mx_error *err);
    void *ctx;
} mx_moe_executor;

/* h[T, hidden] = embedding rows of ids (needs the embedding loaded). */
int mx_model_embed(mx_model *m, const int32_t *ids, int n, mx_tensor *h, mx_error *err);

/* Runs layers [l0, l1) over the batch's hidden states h [n_tokens, hidden] in place,
 * advancing each sequence's state. moe == NULL: the model's own (loaded) experts. Does not
 * change seq->length; call mx_batch_advance once after the last layer. */
int mx_model_run_layers(mx_model *m, int l0, int l1, const mx_batch *b, mx_tensor *h,
                        const mx_moe_executor *moe, mx_error *err);
void mx_batch_advance(const mx_batch *b);

/* Final norm + lm_head on `rows` rows of h given by row indices; logits to host [n, vocab]. */
int mx_model_head(mx_model *m, const mx_tensor *h, const int32_t *rows, int n, float *logits, mx_error *err);

/* The whole model on a batch: embed, every layer, head on the last token of every span.
 * tokens: [b->n_tokens]; logits: host [n_seqs, vocab]. Advances the sequences. */
int mx_model_forward(mx_model *m, const mx_batch *b, const int32_t *tokens, float *logits, mx_error *err);

/* ---- MoE pieces (used by the router and expert-svc) ---- */

/* Router of a layer: ids/weights [T*k] on the host. */
int mx_moe_route(mx_model *m, int layer, const mx_tensor *x2, int32_t *ids, float *weights, mx_error *err);

/* One expert's SwiGLU on a group of rows: y[n, hidden] = w2 . (silu(w1 . x) * (w3 . x)).
 * scratch: two [n, intermediate] tensors supplied by the caller (or NULL to allocate). */
int mx_expert_forward(mx_backend *be, const mx_expert_weights *ew, const mx_tensor *x, mx_tensor *y,
                      mx_error *err);

/* Device copy of a layer's expert e held by this model (NULL if not loaded). */
const mx_expert_weights *mx_model_expert(const mx_model *m, int layer, int expert);

/* Groups the batch's tokens by expert, runs every selected expert held by this model, and
 * combines into out (out += w * y). Fails with MX_ENOTFOUND if an expert is not loaded. */
int mx_moe_local(mx_model *m, int layer, const mx_tensor *x2, const int32_t *ids, const float *weights,
                 int k, mx_tensor *out, mx_error *err);

/* fp32 decay rate s_h of a lightning layer (spec 3.3): slope_h * (1 - l/(L-1) + 1e-5). */
void mx_lightning_decay(int heads, int layer, int num_layers, float *decay);

#endif
