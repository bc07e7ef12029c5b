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
/* Bytes of state the sequence holds now (lightning states, spares included, + KV cache). */
uint64_t mx_sequence_bytes(const mx_sequence *s);

/* Undo of one step (an atomic RunBatch: every sequence of a batch advances, or none does).
 * Before the step mx_sequence_save marks the step's start; after a failure
 * mx_sequence_rollback puts the lightning states back, truncates every KV cache to `length`
 * (the length saved before the step) and sets the length. KV needs no copy: a step only
 * appends. Lightning states: a sequence in undo mode (mx_sequence_keep_undo: two buffers per
 * lightning layer, twice the state memory) keeps the state from before each layer's advance
 * in the other buffer, so save copies nothing and rollback swaps back the layers the step
 * advanced; otherwise save copies the states to host floats (mx_sequence_undo_floats of them:
 * heads x head_dim^2 per lightning layer in range) and rollback copies them back. */
int mx_sequence_keep_undo(mx_model *m, mx_sequence *s, mx_error *err);
size_t mx_sequence_undo_floats(const mx_model *m, const mx_sequence *s);
int mx_sequence_save(mx_model *m, mx_sequence *s, float *undo, mx_error *err);
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

/* ---- Workspace: every buffer a step needs, so a step allocates nothing ----
 * Sized at start for max_tokens rows (the step limit) and max_seqs sequences; a larger step
 * grows it once (doubling), which invalidates views taken from it before. One workspace
 * serves one step at a time; the _ws calls take it explicitly. Calls without one
 * (mx_model_forward, mx_model_run_layers, mx_model_head, mx_moe_local) use the model's own,
 * grown to the largest step seen; a concurrent or nested caller gets a temporary one. */
typedef struct mx_workspace mx_workspace;
int mx_workspace_create(mx_model *m, int max_tokens, int max_seqs, mx_workspace **out, mx_error *err);
void mx_workspace_free(mx_model *m, mx_workspace *ws);
/* Grows ws to hold a step of tokens rows and seqs sequences (no-op when it does). */
int mx_workspace_reserve(mx_model *m, mx_workspace *ws, int tokens, int seqs, mx_error *err);
int mx_workspace_max_tokens(const mx_workspace *ws);
/* A [rows, hidden] tensor of the workspace for the step's hidden states (rows <= max). */
mx_tensor mx_workspace_hidden(mx_workspace *ws, int rows);
/* Room for max_seqs spans (a caller's sub-batch). */
mx_span *mx_workspace_spans(mx_workspace *ws);

/* h[T, hidden] = embedding rows of ids (needs the embedding loaded). */
int mx_model_embed(mx_model *m, const int32_t *ids, int n, mx_tensor *h, mx_error *err);

/* Runs layers [l0, l1) over the batch's hidden states h [n_tokens, hidden] in place,
 * advancing each sequence's state. moe == NULL: the model's own (loaded) experts. Does not
 * change seq->length; call mx_batch_advance once after the last layer. */
int mx_model_run_layers(mx_model *m, int l0, int l1, const mx_batch *b, mx_tensor *h,
                        const mx_moe_executor *moe, mx_error *err);
void mx_batch_advance(const mx_batch *b);
int mx_model_run_layers_ws(mx_model *m, mx_workspace *ws, int l0, int l1, const mx_batch *b, mx_tensor *h,
                           const mx_moe_executor *moe, mx_error *err);
/* The checks mx_model_run_layers makes on its arguments (layer range, contiguous spans). */
int mx_batch_check(const mx_model *m, int l0, int l1, const mx_batch *b, const mx_tensor *h, mx_error *err);

/* One layer in two halves around its MoE, for callers that overlap a batch's expert calls
 * with another batch's attention (attention-svc). layer_begin: RMSNorm, attention, residual,
 * RMSNorm, route; fills in (views into ws, valid until ws's next layer_begin) with x2, the
 * top-k ids/weights and a zeroed out. The caller runs the MoE into in->out, then
 * layer_end adds the MoE residual into h. Does the per-layer checks of run_layers, not
 * mx_batch_check's. */
typedef struct mx_moe_input {
    mx_tensor x2, out;
    int32_t *ids;
    float *weights;
    int k;
} mx_moe_input;
int mx_model_layer_begin(mx_model *m, mx_workspace *ws, int layer, const mx_batch *b, mx_tensor *h,
                         mx_moe_input *in, mx_error *err);
int mx_model_layer_end(mx_model *m, int layer, mx_tensor *h, const mx_moe_input *in, mx_error *err);

/* Final norm + lm_head on `rows` rows of h given by row indices; logits to host [n, vocab]. */
int mx_model_head(mx_model *m, const mx_tensor *h, const int32_t *rows, int n, float *logits, mx_error *err);
int mx_model_head_ws(mx_model *m, mx_workspace *ws, const mx_tensor *h, const int32_t *rows, int n, float *logits,
                     mx_error *err);

/* The whole model on a batch: embed, every layer, head on the last token of every span.
 * tokens: [b->n_tokens]; logits: host [n_seqs, vocab]. Advances the sequences. */
int mx_model_forward(mx_model *m, const mx_batch *b, const int32_t *tokens, float *logits, mx_error *err);

/* ---- MoE pieces (used by the router and expert-svc) ---- */

/* Router of a layer: ids/weights [T*k] on the host. */
int mx_moe_route(mx_model *m, int layer, const mx_tensor *x2, int32_t *ids, float *weights, mx_error *err);

/* One expert's SwiGLU on a group of rows: y[n, hidden] = w2 . (silu(w1 . x) * (w3 . x)).
 * Allocates its two [n, intermediate] halves per call (expert-svc); the model's own MoE
 * uses a workspace's. */
int mx_expert_forward(mx_backend *be, const mx_expert_weights *ew, const mx_tensor *x, mx_tensor *y,
                      mx_error *err);

/* Device copy of a layer's expert e held by this model (NULL if not loaded). */
const mx_expert_weights *mx_model_expert(const mx_model *m, int layer, int expert);

/* Groups the batch's tokens by expert, runs every selected expert held by this model, and
 * combines into out (out += w * y). Fails with MX_ENOTFOUND if an expert is not loaded. */
int mx_moe_local(mx_model *m, int layer, const mx_tensor *x2, const int32_t *ids, const float *weights,
                 int k, mx_tensor *out, mx_error *err);
/* The same with ws's expert buffers (x2 may be ws's own layer view; no growth here). */
int mx_moe_local_ws(mx_model *m, mx_workspace *ws, int layer, const mx_tensor *x2, const int32_t *ids,
                    const float *weights, int k, mx_tensor *out, mx_error *err);

/* fp32 decay rate s_h of a lightning layer (spec 3.3): slope_h * (1 - l/(L-1) + 1e-5). */
void mx_lightning_decay(int heads, int layer, int num_layers, float *decay);

#endif
