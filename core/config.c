/* config.c - config.json <-> mx_config: typed reading of every key (jansson), the released
 * model's defaults, range/consistency validation and the derived sizes.
 * It only describes the model; it must not open weight files. */
#include "config.h"

#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- typed getters: absent or null -> default (or an error when required) ---- */

static int get_int64(json_t *root, const char *key, bool required, int64_t def, int64_t lo,
                     int64_t hi, int64_t *out, mx_error *err)
{
    json_t *v = json_object_get(root, key);
    if (!v || json_is_null(v)) {
        if (required)
            return mx_fail(err, MX_EFORMAT, "config.json: required key '%s' is missing", key);
        *out = def;
        return 0;
    }
    if (!json_is_integer(v))
        return mx_fail(err, MX_EFORMAT, "config.json: key '%s' must be an integer", key);
    json_int_t x = json_integer_value(v);
    if (x < lo || x > hi)
        return mx_fail(err, MX_ERANGE, "config.json: key '%s' = %lld is out of range [%lld, %lld]",
                       key, (long long)x, (long long)lo, (long long)hi);
    *out = x;
    return 0;
}

static int get_int(json_t *root, const char *key, bool required, int def, int *out, mx_error *err)
{
    int64_t x;
    int rc = get_int64(root, key, required, def, -2147483647LL, 2147483647LL, &x, err);
    if (rc == 0)
        *out = (int)x;
    return rc;
}

static int get_num(json_t *root, const char *key, double def, double *out, mx_error *err)
{
    json_t *v = json_object_get(root, key);
    if (!v || json_is_null(v)) {
        *out = def;
        return 0;
    }
    if (!json_is_number(v))
        return mx_fail(err, MX_EFORMAT, "config.json: key '%s' must be a number", key);
    *out = json_number_value(v);
    return 0;
}

static int get_bool(json_t *root, const char *key, bool def, bool *out, mx_error *err)
{
    json_t *v = json_object_get(root, key);
    if (!v || json_is_null(v)) {
        *out = def;
        return 0;
    }
    if (!json_is_boolean(v))
        return mx_fail(err, MX_EFORMAT, "config.json: key '%s' must be true or false", key);
    *out = json_is_true(v);
    return 0;
}

static int get_str(json_t *root, const char *key, const char *def, char *out, size_t cap,
                   mx_error *err)
{
    json_t *v = json_object_get(root, key);
    const char *s = def;
    if (v && !json_is_null(v)) {
        if (!json_is_string(v))
            return mx_fail(err, MX_EFORMAT, "config.json: key '%s' must be a string", key);
        s = json_string_value(v);
    }
    if (strlen(s) >= cap)
        return mx_fail(err, MX_ERANGE, "config.json: key '%s' is longer than %zu characters", key,
                       cap - 1);
    snprintf(out, cap, "%s", s);
    return 0;
}

static int get_architecture(json_t *root, mx_config *cfg, mx_error *err)
{
    json_t *v = json_object_get(root, "architectures");
    if (!v || json_is_null(v)) {
        snprintf(cfg->architecture, sizeof cfg->architecture, "MiniMaxText01ForCausalLM");
        return 0;
    }
    if (!json_is_array(v) || json_array_size(v) < 1 || !json_is_string(json_array_get(v, 0)))
        return mx_fail(err, MX_EFORMAT,
                       "config.json: key 'architectures' must be a non-empty list of strings");
    const char *s = json_string_value(json_array_get(v, 0));
    if (strlen(s) >= sizeof cfg->architecture)
        return mx_fail(err, MX_ERANGE, "config.json: key 'architectures' entry is too long");
    snprintf(cfg->architecture, sizeof cfg->architecture, "%s", s);
    return 0;
}

/* attn_type_list is required: guessing the layer pattern would silently build another model. */
static int get_attn_types(json_t *root, mx_config *cfg, mx_error *err)
{
    json_t *v = json_object_get(root, "attn_type_list");
    if (!v || json_is_null(v))
        return mx_fail(err, MX_EFORMAT, "config.json: required key 'attn_type_list' is missing");
    if (!json_is_array(v))
        return mx_fail(err, MX_EFORMAT, "config.json: key 'attn_type_list' must be a list");
    size_t n = json_array_size(v);
    if (n != (size_t)cfg->num_hidden_layers)
        return mx_fail(err, MX_EINVAL,
                       "config.json: key 'attn_type_list' has %zu entries but num_hidden_layers is %d",
                       n, cfg->num_hidden_layers);
    for (size_t i = 0; i < n; i++) {
        json_t *e = json_array_get(v, i);
        if (!json_is_integer(e) || (json_integer_value(e) != 0 && json_integer_value(e) != 1))
            return mx_fail(err, MX_EINVAL,
                           "config.json: key 'attn_type_list' entry %zu must be 0 (lightning) or 1 (softmax)",
                           i);
        cfg->attn_type[i] = (unsigned char)json_integer_value(e);
    }
    return 0;
}

static int parse_object(json_t *root, mx_config *cfg, mx_error *err)
{
    int rc;
    memset(cfg, 0, sizeof *cfg);
#define TRY(call)            \
    do {                     \
        if ((rc = (call)))   \
            return rc;       \
    } while (0)
    TRY(get_architecture(root, cfg, err));
    TRY(get_str(root, "model_type", "minimax_text_01", cfg->model_type, sizeof cfg->model_type, err));
    TRY(get_int(root, "hidden_size", true, 0, &cfg->hidden_size, err));
    TRY(get_int(root, "intermediate_size", true, 0, &cfg->intermediate_size, err));
    TRY(get_int(root, "num_hidden_layers", true, 0, &cfg->num_hidden_layers, err));
    TRY(get_int(root, "num_attention_heads", true, 0, &cfg->num_attention_heads, err));
    TRY(get_int(root, "num_key_value_heads", false, cfg->num_attention_heads,
                &cfg->num_key_value_heads, err));
    int head_dim_def = cfg->num_attention_heads > 0 ? cfg->hidden_size / cfg->num_attention_heads : 0;
    TRY(get_int(root, "head_dim", false, head_dim_def, &cfg->head_dim, err));
    TRY(get_int(root, "rotary_dim", false, cfg->head_dim, &cfg->rotary_dim, err));
    TRY(get_num(root, "rope_theta", 10000000.0, &cfg->rope_theta, err));
    if (cfg->num_hidden_layers < 1 || cfg->num_hidden_layers > MX_MAX_LAYERS)
        return mx_fail(err, MX_ERANGE, "config.json: key 'num_hidden_layers' = %d must be in [1, %d]",
                       cfg->num_hidden_layers, MX_MAX_LAYERS);
    TRY(get_attn_types(root, cfg, err));
    TRY(get_int(root, "num_local_experts", true, 0, &cfg->num_local_experts, err));
    TRY(get_int(root, "num_experts_per_tok", false, 2, &cfg->num_experts_per_tok, err));
    TRY(get_num(root, "rms_norm_eps", 1e-5, &cfg->rms_norm_eps, err));
    TRY(get_int(root, "vocab_size", true, 0, &cfg->vocab_size, err));
    TRY(get_bool(root, "postnorm", false, &cfg->postnorm, err));
    TRY(get_num(root, "layernorm_linear_attention_alpha", 1.0, &cfg->alpha_linear, err));
    TRY(get_num(root, "layernorm_linear_attention_beta", 1.0, &cfg->beta_linear, err));
    TRY(get_num(root, "layernorm_full_attention_alpha", 1.0, &cfg->alpha_full, err));
    TRY(get_num(root, "layernorm_full_attention_beta", 1.0, &cfg->beta_full, err));
    TRY(get_num(root, "layernorm_mlp_alpha", 1.0, &cfg->alpha_mlp, err));
    TRY(get_num(root, "layernorm_mlp_beta", 1.0, &cfg->beta_mlp, err));
    TRY(get_int(root, "shared_intermediate_size", false, 0, &cfg->shared_intermediate_size, err));
    TRY(get_bool(root, "tie_word_embeddings", false, &cfg->tie_word_embeddings, err));
    TRY(get_int64(root, "max_position_embeddings", false, 10240000, 1, INT64_MAX,
                  &cfg->max_position_embeddings, err));
    TRY(get_int(root, "bos_token_id", false, -1, &cfg->bos_token_id, err));
    TRY(get_int(root, "eos_token_id", false, -1, &cfg->eos_token_id, err));
    TRY(get_str(root, "hidden_act", "silu", cfg->hidden_act, sizeof cfg->hidden_act, err));
#undef TRY
    return 0;
}

int mx_config_parse(const char *json_text, mx_config *cfg, mx_error *err)
{
    json_error_t jerr;
    json_t *root = json_loads(json_text, JSON_REJECT_DUPLICATES, &jerr);
    if (!root)
        return mx_fail(err, MX_EFORMAT, "config.json: invalid JSON at line %d column %d: %s",
                       jerr.line, jerr.column, jerr.text);
    int rc = json_is_object(root)
                 ? parse_object(root, cfg, err)
                 : mx_fail(err, MX_EFORMAT, "config.json: the top level must be a JSON object");
    json_decref(root);
    return rc;
}

int mx_config_load(const char *path, mx_config *cfg, mx_error *err)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return mx_fail(err, MX_ENOTFOUND, "%s: cannot open: %s", path, strerror(errno));
    /* A config.json is a few KB; refuse anything absurd before reading it whole. */
    enum { LIMIT = 16 << 20 };
    char *text = malloc(LIMIT + 1);
    if (!text) {
        fclose(f);
        return mx_fail(err, MX_ENOMEM, "%s: out of memory", path);
    }
    size_t n = fread(text, 1, LIMIT + 1, f);
    int bad_read = ferror(f);
    fclose(f);
    int rc;
    if (bad_read)
        rc = mx_fail(err, MX_EIO, "%s: read error", path);
    else if (n > LIMIT)
        rc = mx_fail(err, MX_EFORMAT, "%s: larger than %d bytes, not a config.json", path, LIMIT);
    else {
        text[n] = '\0';
        if (strlen(text) != n)
            rc = mx_fail(err, MX_EFORMAT, "%s: contains a NUL byte", path);
        else if ((rc = mx_config_parse(text, cfg, err)))
            mx_error_prefix(err, "%s", path);
    }
    free(text);
    return rc;
}

static int positive(int v, const char *key, mx_error *err)
{
    return v > 0 ? 0 : mx_fail(err, MX_ERANGE, "config.json: key '%s' = %d must be positive", key, v);
}

int mx_config_validate(const mx_config *c, mx_error *err)
{
    int rc;
    if ((rc = positive(c->hidden_size, "hidden_size", err)) ||
        (rc = positive(c->intermediate_size, "intermediate_size", err)) ||
        (rc = positive(c->num_hidden_layers, "num_hidden_layers", err)) ||
        (rc = positive(c->num_attention_heads, "num_attention_heads", err)) ||
        (rc = positive(c->num_key_value_heads, "num_key_value_heads", err)) ||
        (rc = positive(c->head_dim, "head_dim", err)) ||
        (rc = positive(c->rotary_dim, "rotary_dim", err)) ||
        (rc = positive(c->num_local_experts, "num_local_experts", err)) ||
        (rc = positive(c->vocab_size, "vocab_size", err)))
        return rc;
    if (c->num_hidden_layers > MX_MAX_LAYERS)
        return mx_fail(err, MX_ERANGE, "config.json: key 'num_hidden_layers' = %d exceeds the limit %d",
                       c->num_hidden_layers, MX_MAX_LAYERS);
    if (c->num_attention_heads % c->num_key_value_heads != 0)
        return mx_fail(err, MX_EINVAL,
                       "config.json: key 'num_attention_heads' = %d is not a multiple of 'num_key_value_heads' = %d",
                       c->num_attention_heads, c->num_key_value_heads);
    if (c->rotary_dim % 2 != 0 || c->rotary_dim > c->head_dim)
        return mx_fail(err, MX_EINVAL, "config.json: key 'rotary_dim' = %d must be even and <= head_dim (%d)",
                       c->rotary_dim, c->head_dim);
    for (int i = 0; i < c->num_hidden_layers; i++)
        if (c->attn_type[i] != MX_ATTN_LIGHTNING && c->attn_type[i] != MX_ATTN_SOFTMAX)
            return mx_fail(err, MX_EINVAL, "config.json: key 'attn_type_list' entry %d must be 0 or 1", i);
    if (c->num_experts_per_tok < 1 || c->num_experts_per_tok > c->num_local_experts)
        return mx_fail(err, MX_ERANGE,
                       "config.json: key 'num_experts_per_tok' = %d must be in [1, num_local_experts = %d]",
                       c->num_experts_per_tok, c->num_local_experts);
    if (!(c->rms_norm_eps > 0) || !isfinite(c->rms_norm_eps))
        return mx_fail(err, MX_ERANGE, "config.json: key 'rms_norm_eps' = %g must be positive", c->rms_norm_eps);
    if (!(c->rope_theta > 0) || !isfinite(c->rope_theta))
        return mx_fail(err, MX_ERANGE, "config.json: key 'rope_theta' = %g must be positive", c->rope_theta);
    const double ab[6] = {c->alpha_linear, c->beta_linear, c->alpha_full, c->beta_full, c->alpha_mlp, c->beta_mlp};
    static const char *const ab_keys[6] = {
        "layernorm_linear_attention_alpha", "layernorm_linear_attention_beta",
        "layernorm_full_attention_alpha",   "layernorm_full_attention_beta",
        "layernorm_mlp_alpha",              "layernorm_mlp_beta"};
    for (int i = 0; i < 6; i++)
        if (!isfinite(ab[i]))
            return mx_fail(err, MX_ERANGE, "config.json: key '%s' must be finite", ab_keys[i]);
    if (c->shared_intermediate_size != 0)
        return mx_fail(err, MX_EUNSUPPORTED,
                       "config.json: key 'shared_intermediate_size' = %d: a shared expert is not supported (must be 0)",
                       c->shared_intermediate_size);
    if (strcmp(c->hidden_act, "silu") != 0)
        return mx_fail(err, MX_EUNSUPPORTED, "config.json: key 'hidden_act' = \"%s\" is not supported (only \"silu\")",
                       c->hidden_act);
    if (c->max_position_embeddings < 1)
        return mx_fail(err, MX_ERANGE, "config.json: key 'max_position_embeddings' must be positive");
    if (c->bos_token_id >= c->vocab_size || c->eos_token_id >= c->vocab_size)
        return mx_fail(err, MX_ERANGE, "config.json: key '%s' is not below vocab_size (%d)",
                       c->bos_token_id >= c->vocab_size ? "bos_token_id" : "eos_token_id", c->vocab_size);
    return 0;
}

/* Integral values (rope_theta = 10000000) are written as JSON integers, as in the release. */
static json_t *number(double x)
{
    if (x == floor(x) && fabs(x) < 9007199254740992.0 && fabs(x) >= 1.0)
        return json_integer((json_int_t)x);
    return json_real(x);
}

static json_t *token_id(int id)
{
    return id < 0 ? json_null() : json_integer(id);
}

char *mx_config_to_json(const mx_config *c)
{
    json_t *r = json_object();
    json_t *arch = json_array();
    json_array_append_new(arch, json_string(c->architecture));
    json_object_set_new(r, "architectures", arch);
    json_t *am = json_object();
    json_object_set_new(am, "AutoConfig", json_string("configuration_minimax_text_01.MiniMaxText01Config"));
    json_object_set_new(am, "AutoModelForCausalLM",
                        json_string("modeling_minimax_text_01.MiniMaxText01ForCausalLM"));
    json_object_set_new(r, "auto_map", am);
    json_object_set_new(r, "model_type", json_string(c->model_type));
    json_object_set_new(r, "attention_dropout", json_real(0.0));
    json_t *types = json_array();
    for (int i = 0; i < c->num_hidden_layers; i++)
        json_array_append_new(types, json_integer(c->attn_type[i]));
    json_object_set_new(r, "attn_type_list", types);
    json_object_set_new(r, "bos_token_id", token_id(c->bos_token_id));
    json_object_set_new(r, "eos_token_id", token_id(c->eos_token_id));
    json_object_set_new(r, "head_dim", json_integer(c->head_dim));
    json_object_set_new(r, "hidden_act", json_string(c->hidden_act));
    json_object_set_new(r, "hidden_size", json_integer(c->hidden_size));
    json_object_set_new(r, "initializer_range", json_real(0.02));
    json_object_set_new(r, "intermediate_size", json_integer(c->intermediate_size));
    json_object_set_new(r, "layernorm_full_attention_alpha", json_real(c->alpha_full));
    json_object_set_new(r, "layernorm_full_attention_beta", json_real(c->beta_full));
    json_object_set_new(r, "layernorm_linear_attention_alpha", json_real(c->alpha_linear));
    json_object_set_new(r, "layernorm_linear_attention_beta", json_real(c->beta_linear));
    json_object_set_new(r, "layernorm_mlp_alpha", json_real(c->alpha_mlp));
    json_object_set_new(r, "layernorm_mlp_beta", json_real(c->beta_mlp));
    json_object_set_new(r, "max_position_embeddings", json_integer(c->max_position_embeddings));
    json_object_set_new(r, "num_attention_heads", json_integer(c->num_attention_heads));
    json_object_set_new(r, "num_experts_per_tok", json_integer(c->num_experts_per_tok));
    json_object_set_new(r, "num_hidden_layers", json_integer(c->num_hidden_layers));
    json_object_set_new(r, "num_key_value_heads", json_integer(c->num_key_value_heads));
    json_object_set_new(r, "num_local_experts", json_integer(c->num_local_experts));
    json_object_set_new(r, "output_router_logits", json_false());
    json_object_set_new(r, "postnorm", json_boolean(c->postnorm));
    json_object_set_new(r, "rms_norm_eps", json_real(c->rms_norm_eps));
    json_object_set_new(r, "rope_theta", number(c->rope_theta));
    json_object_set_new(r, "rotary_dim", json_integer(c->rotary_dim));
    json_object_set_new(r, "router_aux_loss_coef", json_real(0.001));
    json_object_set_new(r, "router_jitter_noise", json_real(0.0));
    json_object_set_new(r, "shared_intermediate_size", json_integer(c->shared_intermediate_size));
    json_object_set_new(r, "shared_moe_mode", json_string("sigmoid"));
    json_object_set_new(r, "sliding_window", json_null());
    json_object_set_new(r, "tie_word_embeddings", json_boolean(c->tie_word_embeddings));
    json_object_set_new(r, "transformers_version", json_string("4.45.2"));
    json_object_set_new(r, "use_cache", json_true());
    json_object_set_new(r, "vocab_size", json_integer(c->vocab_size));
    char *text = json_dumps(r, JSON_INDENT(2) | JSON_SORT_KEYS | JSON_REAL_PRECISION(17));
    json_decref(r);
    return text;
}

int mx_config_attn_width(const mx_config *c)
{
    return c->num_attention_heads * c->head_dim;
}

int mx_config_kv_width(const mx_config *c)
{
    return c->num_key_value_heads * c->head_dim;
}

double mx_config_alpha(const mx_config *c, int layer)
{
    return c->attn_type[layer] == MX_ATTN_SOFTMAX ? c->alpha_full : c->alpha_linear;
}

double mx_config_beta(const mx_config *c, int layer)
{
    return c->attn_type[layer] == MX_ATTN_SOFTMAX ? c->beta_full : c->beta_linear;
}

int64_t mx_config_param_count(const mx_config *c)
{
    const int64_t h = c->hidden_size, inner = mx_config_attn_width(c), kv = mx_config_kv_width(c);
    const int64_t e = c->num_local_experts, ff = c->intermediate_size, v = c->vocab_size;
    int64_t n = v * h + h + (c->tie_word_embeddings ? 0 : v * h); /* embed, final norm, lm_head */
    for (int l = 0; l < c->num_hidden_layers; l++) {
        n += 2 * h;                     /* input + post-attention norms */
        if (c->attn_type[l] == MX_ATTN_LIGHTNING)
            n += 3 * inner * h + inner * h + inner + h * inner; /* qkv, gate, norm, out */
        else
            n += inner * h + 2 * kv * h + h * inner;            /* q, k, v, o */
        n += e * h + e * 3 * ff * h;    /* router gate + experts */
    }
    return n;
}
