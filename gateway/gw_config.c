/* gw_config.c - parses the gateway libconfig file (schema in gw_config.h). */
#include "gw_config.h"

#include "router/cfg.h"

#include <libconfig.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

static int get_int(const config_setting_t *g, const char *path, const char *key, int def, int min, int max,
                   int *out, mx_error *err)
{
    const config_setting_t *s = config_setting_get_member(g, key);
    if (!s) {
        *out = def;
        return 0;
    }
    if (config_setting_type(s) != CONFIG_TYPE_INT)
        return mx_fail(err, MX_EINVAL, "%s:%d: gateway.%s must be an integer", path, config_setting_source_line(s),
                       key);
    int v = config_setting_get_int(s);
    if (v < min || v > max)
        return mx_fail(err, MX_EINVAL, "%s:%d: gateway.%s = %d is not in [%d, %d]", path,
                       config_setting_source_line(s), key, v, min, max);
    *out = v;
    return 0;
}

static int get_string(const config_setting_t *g, const char *path, const char *key, const char *def, char *out,
                      size_t cap, mx_error *err)
{
    const config_setting_t *s = config_setting_get_member(g, key);
    if (!s) {
        if (!def)
            return mx_fail(err, MX_EINVAL, "%s: gateway.%s is required", path, key);
        snprintf(out, cap, "%s", def);
        return 0;
    }
    const char *v = config_setting_get_string(s);
    if (!v || strlen(v) >= cap)
        return mx_fail(err, MX_EINVAL, "%s:%d: gateway.%s must be a string shorter than %zu bytes", path,
                       config_setting_source_line(s), key, cap);
    snprintf(out, cap, "%s", v);
    return 0;
}

static int parse(config_t *cf, const char *path, gw_config *c, mx_error *err)
{
    const config_setting_t *g = config_lookup(cf, "gateway");
    if (!g || !config_setting_is_group(g))
        return mx_fail(err, MX_EINVAL, "%s: a `gateway = { ... };` group is required", path);
    MX_TRY(get_string(g, path, "listen", NULL, c->listen, sizeof c->listen, err));
    MX_TRY(get_string(g, path, "model", NULL, c->model, sizeof c->model, err));
    MX_TRY(get_string(g, path, "model_name", "MiniMax-Text-01", c->model_name, sizeof c->model_name, err));
    MX_TRY(get_string(g, path, "port_file", "", c->port_file, sizeof c->port_file, err));
    MX_TRY(get_string(g, path, "tokenizer", "", c->tokenizer, sizeof c->tokenizer, err));
    MX_TRY(get_string(g, path, "chat_format", "auto", c->chat_format, sizeof c->chat_format, err));
    if (strcmp(c->chat_format, "auto") && strcmp(c->chat_format, "none") && strcmp(c->chat_format, "minimax-text-01") &&
        strcmp(c->chat_format, "minimax-m1"))
        return mx_fail(err, MX_EINVAL, "%s: gateway.chat_format = \"%s\" is not one of auto, none, minimax-text-01, "
                       "minimax-m1", path, c->chat_format);
    const config_setting_t *st = config_setting_get_member(g, "stages");
    if (!st || !(config_setting_is_array(st) || config_setting_is_list(st)) || config_setting_length(st) < 1)
        return mx_fail(err, MX_EINVAL, "%s: gateway.stages must be a non-empty list of \"host:port\" strings", path);
    c->n_stages = config_setting_length(st);
    if (c->n_stages > GW_MAX_STAGES)
        return mx_fail(err, MX_EINVAL, "%s: gateway.stages has %d entries, at most %d", path, c->n_stages,
                       GW_MAX_STAGES);
    for (int i = 0; i < c->n_stages; i++) {
        const char *a = config_setting_get_string_elem(st, i);
        if (!a || !*a || strlen(a) >= sizeof c->stages[i])
            return mx_fail(err, MX_EINVAL, "%s:%d: gateway.stages[%d] must be a \"host:port\" string", path,
                           config_setting_source_line(st), i);
        snprintf(c->stages[i], sizeof c->stages[i], "%s", a);
    }
    int kb, timeout;
    MX_TRY(get_int(g, path, "num_expert_shards", 0, 0, 1 << 20, &c->num_expert_shards, err));
    MX_TRY(get_int(g, path, "max_new_tokens_limit", 4096, 1, 1 << 24, &c->max_new_tokens_limit, err));
    MX_TRY(get_int(g, path, "max_context_tokens", 0, 0, 1 << 30, &c->max_context_tokens, err));
    MX_TRY(get_int(g, path, "max_batch_sequences", 64, 1, 1 << 16, &c->max_batch_sequences, err));
    MX_TRY(get_int(g, path, "max_step_tokens", 512, 1, 1 << 24, &c->max_step_tokens, err));
    MX_TRY(get_int(g, path, "pipeline_depth", c->n_stages, 1, 64, &c->pipeline_depth, err));
    MX_TRY(get_int(g, path, "max_queued", 1024, 1, 1 << 24, &c->max_queued, err));
    MX_TRY(get_int(g, path, "max_request_kb", 32768, 1, (1 << 21) - 1, &kb, err));
    MX_TRY(get_int(g, path, "kv_max_overtakes", 64, 0, 1 << 20, &c->kv_max_overtakes, err));
    MX_TRY(get_int(g, path, "stage_timeout_ms", 60000, 1, 1 << 30, &timeout, err));
    c->max_request_bytes = kb * 1024;
    c->stage_timeout_ms = timeout;
    c->n_eos = -1;
    const config_setting_t *eos = config_setting_get_member(g, "eos_token_ids");
    if (eos) {
        int n = config_setting_length(eos);
        if (!(config_setting_is_array(eos) || config_setting_is_list(eos)) || n > GW_MAX_EOS)
            return mx_fail(err, MX_EINVAL, "%s:%d: gateway.eos_token_ids must be a list of at most %d ids", path,
                           config_setting_source_line(eos), GW_MAX_EOS);
        for (int i = 0; i < n; i++) {
            const config_setting_t *e = config_setting_get_elem(eos, (unsigned)i);
            if (config_setting_type(e) != CONFIG_TYPE_INT || config_setting_get_int(e) < 0)
                return mx_fail(err, MX_EINVAL, "%s:%d: gateway.eos_token_ids[%d] must be a non-negative integer",
                               path, config_setting_source_line(eos), i);
            c->eos[i] = config_setting_get_int(e);
        }
        c->n_eos = n;
    }
    return 0;
}

int gw_config_load(const char *path, gw_config *c, mx_error *err)
{
    memset(c, 0, sizeof *c);
    config_t cf;
    config_init(&cf);
    int rc = mx_cfg_read_file(&cf, path, err);
    if (!rc)
        rc = parse(&cf, path, c, err);
    config_destroy(&cf);
    return rc;
}
