/* weights.h - the model's weights as named tensors, bound from a checkpoint by a load plan.
 * A plan names the layer range, whether attention/norm/gate tensors, the embedding and the
 * head are needed, and which experts of which layers; nothing else is mapped. Every tensor's
 * shape is checked against the config. Tensors are CPU views into the checkpoint's mappings,
 * except experts or attention projections a plan asks for in int8: those are quantized copies
 * the weights own. */
#ifndef MX_WEIGHTS_H
#define MX_WEIGHTS_H

#include <stdbool.h>
#include <stdint.h>

#include "checkpoint.h"
#include "config.h"
#include "quantize.h"
#include "tensor.h"

typedef struct mx_expert_weights {
    bool loaded;
    mx_tensor w1; /* gate proj [intermediate, hidden] */
    mx_tensor w3; /* up proj   [intermediate, hidden] */
    mx_tensor w2; /* down proj [hidden, intermediate] */
} mx_expert_weights;

typedef struct mx_layer_weights {
    mx_attn_kind kind;
    bool has_attention;      /* attention, both norms and the router gate are loaded */
    mx_tensor input_norm;    /* [hidden] */
    mx_tensor post_norm;     /* [hidden] */
    /* lightning */
    mx_tensor qkv;           /* [3*heads*head_dim, hidden], per-head q|k|v */
    mx_tensor output_gate;   /* [heads*head_dim, hidden] */
    mx_tensor attn_norm;     /* [heads*head_dim] */
    mx_tensor out_proj;      /* [hidden, heads*head_dim] */
    /* softmax */
    mx_tensor q_proj, k_proj, v_proj, o_proj;
    /* MoE */
    mx_tensor router;        /* [experts, hidden], F32 in the real checkpoint */
    mx_expert_weights *experts; /* [num_local_experts]; NULL when the plan loads none */
} mx_layer_weights;

typedef struct mx_load_plan {
    int layer_begin, layer_end;  /* [begin, end) */
    bool attention;              /* norms, attention and router gate of those layers */
    bool embed;                  /* model.embed_tokens */
    bool head;                   /* model.norm + lm_head */
    bool all_experts;            /* every expert of the layer range */
    const uint8_t *expert_mask;  /* else, if non-NULL: [num_layers * num_experts], 1 = load */
    /* Expert weights (w1, w3, w2) as stored (default) or quantized to int8 once here, with
     * quantize_threads threads (0 = one per core); router, embedding and head stay as stored. */
    mx_weight_format expert_format;
    /* Likewise, separately, the attention projections (lightning qkv_proj, output_gate,
     * out_proj; softmax q/k/v/o_proj); the norms always stay as stored. */
    mx_weight_format attn_format;
    int quantize_threads;
    mx_progress_fn progress;
    void *progress_ctx;
} mx_load_plan;

typedef struct mx_weights {
    mx_checkpoint *ckpt;         /* owned: closing it unmaps every tensor below */
    mx_config cfg;
    mx_load_plan plan;           /* a copy; expert_mask is not kept */
    mx_tensor embed;             /* [vocab, hidden] */
    mx_tensor final_norm;        /* [hidden] */
    mx_tensor lm_head;           /* [vocab, hidden] */
    mx_layer_weights *layers;    /* [num_hidden_layers]; only the plan's range is filled */
    uint64_t bytes_mapped;
    void *quantized;             /* owned: the int8 experts / projections and their scales, or NULL */
    uint64_t bytes_quantized;
} mx_weights;

/* A plan for the whole model (every layer, every expert, embedding and head). */
mx_load_plan mx_load_plan_full(const mx_config *cfg);

int mx_weights_load(const char *dir, const mx_load_plan *plan, mx_weights **out, mx_error *err);
void mx_weights_free(mx_weights *w);

#endif
