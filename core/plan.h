/* plan.h - how S attention stages and E expert shards of a model fit device memory at a
 * context length, from config.json alone: pure arithmetic over mx_config and core/kv_cache.h
 * (no weights, no backend), shared by `mx plan` and its unit test. */
#ifndef MX_PLAN_H
#define MX_PLAN_H

#include <stdbool.h>
#include <stdint.h>

#include "config.h"
#include "error.h"
#include "kv_cache.h"

/* Storage of 2-D weight matrices. int8 keeps one fp32 scale per output row. 1-D weights
 * (norms) stay bf16, router gates fp32, and the embedding and lm_head bf16 whatever is chosen
 * (attn_dtype covers the attention projections, expert_dtype w1/w3/w2). */
typedef enum mx_weight_dtype { MX_WEIGHT_BF16 = 0, MX_WEIGHT_INT8, MX_WEIGHT_DTYPE_COUNT } mx_weight_dtype;

const char *mx_weight_dtype_name(mx_weight_dtype t); /* "bf16", "int8" */
int mx_weight_dtype_parse(const char *s, const char *what, mx_weight_dtype *out, mx_error *err);
/* Bytes of a [rows, cols] matrix: bf16 rows*cols*2; int8 rows*cols int8 values + rows fp32
 * scales, each part padded to 64 bytes (mx_quantized_i8_bytes, the int8 loader's layout). */
uint64_t mx_weight_matrix_bytes(mx_weight_dtype t, int64_t rows, int64_t cols);

/* How layers are cut into stages. */
typedef enum mx_plan_split {
    MX_SPLIT_LAYERS = 0, /* equal layer counts, stage s = [s*L/S, (s+1)*L/S): what `mx cluster` runs */
    MX_SPLIT_MEMORY,     /* contiguous ranges chosen to minimise the largest stage's memory
                            (weights + workspace + batch x (KV + state) at the context) */
} mx_plan_split;

/* H200: 141 GB of HBM3e on the data sheet, taken as decimal bytes (the driver reports a little
 * more), so plans err on the safe side. */
#define MX_PLAN_DEFAULT_DEVICE_BYTES 141000000000ull
/* Kept free on every pod: CUDA context, cuBLAS/NCCL buffers, allocator fragmentation. */
#define MX_PLAN_DEFAULT_RESERVE_FRACTION 0.05
/* The gateway's default max_step_tokens (tokens per micro-batch step). */
#define MX_PLAN_DEFAULT_STEP_TOKENS 512

typedef struct mx_plan_options {
    int stages;                /* S >= 1, <= layers */
    int expert_shards;         /* E >= 1, <= experts */
    int64_t context_tokens;    /* N: tokens each sequence must hold */
    int batch;                 /* B: sequences of N tokens held at once (default 1) */
    mx_kv_dtype kv_dtype;
    mx_weight_dtype attn_dtype, expert_dtype;
    uint64_t device_bytes;     /* memory of one device */
    int devices_per_pod;       /* devices of one stage (tensor parallel inside a pod) */
    int shard_devices;         /* devices of one expert shard; 0 = devices_per_pod */
    double reserve_fraction;   /* of each pod's memory, kept free */
    int max_step_tokens;       /* T: tokens one step carries (sizes the workspace) */
    mx_plan_split split;
} mx_plan_options;

/* Defaults above; the caller sets stages, expert_shards and context_tokens. */
mx_plan_options mx_plan_defaults(void);

typedef struct mx_plan_stage {
    int layer_begin, layer_end;     /* [begin, end) */
    int softmax_layers, lightning_layers;
    uint64_t weight_bytes;          /* attention + norms + router gates (+ embedding / final norm + lm_head) */
    uint64_t kv_bytes_per_token;    /* page format: softmax_layers x page_bytes / MX_KV_PAGE_TOKENS */
    uint64_t kv_bytes_per_seq;      /* whole pages for context_tokens */
    uint64_t state_bytes_per_seq;   /* fp32 heads x head_dim^2 per lightning layer, twice (current + undo) */
    uint64_t workspace_bytes;       /* T x (5 hidden + 5 attn_width + experts) x 4 (+ logits on the last) */
    uint64_t pod_bytes, reserve_bytes;
    int64_t free_bytes;             /* pod - reserve - weights - workspace (negative: short) */
    int64_t seqs_fit;               /* sequences of context_tokens that fit (INT64_MAX: no per-sequence state) */
    int64_t max_context_tokens;     /* longest context with `batch` sequences (multiple of the page; INT64_MAX: unbounded) */
    bool fits;                      /* seqs_fit >= batch */
} mx_plan_stage;

typedef struct mx_plan_shard {
    int expert_begin, expert_end;   /* [begin, end) over every layer */
    uint64_t weight_bytes;          /* its experts x layers x (w1 + w3 + w2) in expert_dtype */
    uint64_t workspace_bytes;       /* R x (4 hidden + 2 intermediate) x 4, R = T x min(top-k, experts) */
    uint64_t pod_bytes, reserve_bytes;
    int64_t free_bytes;             /* pod - reserve - weights - workspace */
    bool fits;
} mx_plan_shard;

typedef struct mx_plan {
    mx_plan_options opt;            /* with shard_devices resolved */
    int n_stages, n_shards;
    mx_plan_stage *stages;
    mx_plan_shard *shards;
    /* whole model */
    uint64_t kv_bytes_per_token;    /* over every softmax layer */
    uint64_t kv_bytes_per_seq;      /* at context_tokens, whole pages */
    uint64_t state_bytes_per_seq;
    uint64_t attn_weight_bytes;     /* sum of the stages' weights */
    uint64_t expert_weight_bytes;   /* every expert of every layer */
    int devices;                    /* S x devices_per_pod + E x shard_devices */
    int64_t seqs_fit;               /* min over stages */
    int64_t max_context_tokens;     /* min over stages, at `batch` */
    bool context_over_positions;    /* context_tokens > max_position_embeddings */
    bool stages_fit, shards_fit, fits;
    /* when a part does not fit: the smallest count that would (same other options), 0 if none */
    int min_stages, min_shards;
    int64_t stage_short_bytes;      /* most any stage lacks (0 when the stages fit) */
    int64_t shard_short_bytes;      /* most any shard lacks */
} mx_plan;

/* Computes the plan; MX_EINVAL naming the option when it cannot describe a layout of cfg.
 * Free with mx_plan_free. */
int mx_plan_make(const mx_config *cfg, const mx_plan_options *opt, mx_plan **out, mx_error *err);
void mx_plan_free(mx_plan *p);

/* Layer range of stage s of S with MX_SPLIT_LAYERS (same as `mx cluster`). */
void mx_plan_layer_split(int layers, int stages, int s, int *begin, int *end);

#endif
