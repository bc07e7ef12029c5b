/* config.h - the model configuration (config.json of a MiniMax-Text-01 checkpoint).
 * Parsing fills every field the spec lists, applies the released model's defaults for absent
 * optional keys, and validates that the numbers describe a model mx can run. */
#ifndef MX_CONFIG_H
#define MX_CONFIG_H

#include <stdbool.h>
#include <stdint.h>

#include "error.h"

#define MX_MAX_LAYERS 1024
#define MX_LIGHTNING_BLOCK 256      /* blocked lightning prefill block size (spec 3.5) */
#define MX_LIGHTNING_NORM_EPS 1e-6f /* eps of the RMSNorm inside lightning attention */

typedef enum { MX_ATTN_LIGHTNING = 0, MX_ATTN_SOFTMAX = 1 } mx_attn_kind;

typedef struct mx_config {
    char architecture[64];       /* architectures[0], e.g. "MiniMaxText01ForCausalLM" */
    char model_type[64];
    int hidden_size;
    int intermediate_size;       /* per-expert FFN width */
    int num_hidden_layers;
    int num_attention_heads;
    int num_key_value_heads;
    int head_dim;                /* default hidden_size / num_attention_heads */
    int rotary_dim;              /* default head_dim; even, <= head_dim */
    double rope_theta;
    unsigned char attn_type[MX_MAX_LAYERS]; /* attn_type_list: MX_ATTN_LIGHTNING or MX_ATTN_SOFTMAX */
    int num_local_experts;
    int num_experts_per_tok;
    double rms_norm_eps;
    int vocab_size;
    bool postnorm;
    double alpha_linear, beta_linear; /* layernorm_linear_attention_alpha/_beta (default 1) */
    double alpha_full, beta_full;     /* layernorm_full_attention_alpha/_beta */
    double alpha_mlp, beta_mlp;       /* layernorm_mlp_alpha/_beta */
    int shared_intermediate_size;     /* must be 0: Text-01 has no shared expert */
    bool tie_word_embeddings;
    int64_t max_position_embeddings;
    int bos_token_id, eos_token_id;   /* -1 when null/absent */
    char hidden_act[16];              /* "silu" */
} mx_config;

/* Parses config.json text. Errors name the offending key. */
int mx_config_parse(const char *json_text, mx_config *cfg, mx_error *err);
/* Reads and parses a config.json file; errors are prefixed with the path. */
int mx_config_load(const char *path, mx_config *cfg, mx_error *err);
/* Checks ranges and consistency (head grouping, rotary_dim, attn_type_list length, ...). */
int mx_config_validate(const mx_config *cfg, mx_error *err);
/* Serialises cfg as a config.json in the released key layout; returns malloc'd text. */
char *mx_config_to_json(const mx_config *cfg);

/* Derived numbers. */
int mx_config_attn_width(const mx_config *cfg);              /* heads * head_dim */
int mx_config_kv_width(const mx_config *cfg);                /* kv_heads * head_dim */
double mx_config_alpha(const mx_config *cfg, int layer);     /* attention residual alpha of a layer */
double mx_config_beta(const mx_config *cfg, int layer);
/* Total parameters and bytes if every weight is BF16 (router gate F32). */
int64_t mx_config_param_count(const mx_config *cfg);

#endif
