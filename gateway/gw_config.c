/* gw_config.c - parses the gateway libconfig file (schema in gw_config.h) through the shared
 * config-file layer (cfg_file.h): errors name file, line and key; unknown keys are errors. */
#include "gw_config.h"

#include "core/cfg_file.h"
#include "core/log.h"

#include <libconfig.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

/* An int member of the gateway group in [min, max] (absent: def). */
static int get_int(const config_setting_t *g, const char *key, int def, int min, int max, int *out, mx_error *err)
{
    int64_t v;
    MX_TRY(mx_cfg_int(g, key, 0, def, min, max, &v, err));
    *out = (int)v;
    return 0;
}

static const char *const known_root[] = {"gateway"};
static const char *const known_keys[] = {
    "listen", "model", "model_name", "port_file", "log_level", "tokenizer", "chat_format", "stages", "num_expert_shards",
    "max_new_tokens_limit", "max_context_tokens", "max_batch_sequences", "max_step_tokens",
    "max_prefill_tokens_with_decodes", "pipeline_depth",
    "max_queued", "max_request_kb", "kv_max_overtakes", "stage_timeout_ms", "eos_token_ids", "drain_ms",
    "stream_write_timeout_ms", "http_listen", "http_port_file", "metrics_listen"};

static int parse(config_t *cf, gw_config *c, mx_error *err)
{
    const config_setting_t *root = config_root_setting(cf), *g;
    MX_TRY(mx_cfg_check_keys(root, known_root, sizeof known_root / sizeof *known_root, err));
    MX_TRY(mx_cfg_group(root, "gateway", 1, &g, err));
    MX_TRY(mx_cfg_check_keys(g, known_keys, sizeof known_keys / sizeof *known_keys, err));
    MX_TRY(mx_cfg_string_buf(g, "listen", NULL, c->listen, sizeof c->listen, err));
    MX_TRY(mx_cfg_string_buf(g, "model", NULL, c->model, sizeof c->model, err));
    MX_TRY(mx_cfg_string_buf(g, "model_name", "MiniMax-Text-01", c->model_name, sizeof c->model_name, err));
    MX_TRY(mx_cfg_string_buf(g, "port_file", "", c->port_file, sizeof c->port_file, err));
    MX_TRY(mx_cfg_string_buf(g, "log_level", "", c->log_level, sizeof c->log_level, err));
    mx_log_level level;
    if (c->log_level[0] && mx_log_level_parse(c->log_level, &level, err))
        return mx_cfg_fail(err, config_setting_get_member(g, "log_level"), NULL,
                           "\"%s\" is not a log level (error, warn, info or debug)", c->log_level);
    MX_TRY(mx_cfg_string_buf(g, "tokenizer", "", c->tokenizer, sizeof c->tokenizer, err));
    MX_TRY(mx_cfg_string_buf(g, "metrics_listen", "", c->metrics_listen, sizeof c->metrics_listen, err));
    MX_TRY(mx_cfg_string_buf(g, "chat_format", "auto", c->chat_format, sizeof c->chat_format, err));
    MX_TRY(mx_cfg_string_buf(g, "http_listen", "", c->http_listen, sizeof c->http_listen, err));
    MX_TRY(mx_cfg_string_buf(g, "http_port_file", "", c->http_port_file, sizeof c->http_port_file, err));
    if (strcmp(c->chat_format, "auto") && strcmp(c->chat_format, "none") && strcmp(c->chat_format, "minimax-text-01") &&
        strcmp(c->chat_format, "minimax-m1"))
        return mx_cfg_fail(err, config_setting_get_member(g, "chat_format"), NULL,
                           "\"%s\" is not one of auto, none, minimax-text-01, minimax-m1", c->chat_format);
    const config_setting_t *st = config_setting_get_member(g, "stages");
    if (!st)
        return mx_cfg_fail(err, g, "stages", "missing (a list of \"host:port\" strings is required)");
    if (!(config_setting_is_array(st) || config_setting_is_list(st)) || config_setting_length(st) < 1)
        return mx_cfg_fail(err, st, NULL, "must be a non-empty list of \"host:port\" strings");
    c->n_stages = config_setting_length(st);
    if (c->n_stages > GW_MAX_STAGES)
        return mx_cfg_fail(err, st, NULL, "has %d entries, at most %d", c->n_stages, GW_MAX_STAGES);
    for (int i = 0; i < c->n_stages; i++) {
        const char *a = config_setting_get_string_elem(st, i);
        if (!a || !*a || strlen(a) >= sizeof c->stages[i])
            return mx_cfg_fail(err, st, NULL, "element %d must be a \"host:port\" string", i);
        snprintf(c->stages[i], sizeof c->stages[i], "%s", a);
    }
    int kb, timeout;
    MX_TRY(get_int(g, "num_expert_shards", 0, 0, 1 << 20, &c->num_expert_shards, err));
    MX_TRY(get_int(g, "max_new_tokens_limit", 4096, 1, 1 << 24, &c->max_new_tokens_limit, err));
    MX_TRY(get_int(g, "max_context_tokens", 0, 0, 1 << 30, &c->max_context_tokens, err));
    MX_TRY(get_int(g, "max_batch_sequences", 64, 1, 1 << 16, &c->max_batch_sequences, err));
    MX_TRY(get_int(g, "max_step_tokens", 512, 1, 1 << 24, &c->max_step_tokens, err));
    MX_TRY(get_int(g, "max_prefill_tokens_with_decodes", GW_DEFAULT_PREFILL_WITH_DECODES, 0, 1 << 24,
                   &c->max_prefill_tokens_with_decodes, err));
    MX_TRY(get_int(g, "pipeline_depth", c->n_stages, 1, 64, &c->pipeline_depth, err));
    MX_TRY(get_int(g, "max_queued", 1024, 1, 1 << 24, &c->max_queued, err));
    MX_TRY(get_int(g, "max_request_kb", 32768, 1, (1 << 21) - 1, &kb, err));
    MX_TRY(get_int(g, "kv_max_overtakes", 64, 0, 1 << 20, &c->kv_max_overtakes, err));
    MX_TRY(get_int(g, "stage_timeout_ms", 60000, 1, 1 << 30, &timeout, err));
    int64_t drain;
    MX_TRY(mx_cfg_int(g, "drain_ms", 0, GW_DEFAULT_DRAIN_MS, 0, 3600000, &drain, err));
    c->drain_ms = drain;
    int64_t wt;
    MX_TRY(mx_cfg_int(g, "stream_write_timeout_ms", 0, 10000, 0, 3600000, &wt, err));
    c->stream_write_timeout_ms = wt;
    c->max_request_bytes = kb * 1024;
    c->stage_timeout_ms = timeout;
    c->n_eos = -1;
    const config_setting_t *eos = config_setting_get_member(g, "eos_token_ids");
    if (eos) {
        int n = config_setting_length(eos);
        if (!(config_setting_is_array(eos) || config_setting_is_list(eos)) || n > GW_MAX_EOS)
            return mx_cfg_fail(err, eos, NULL, "must be a list of at most %d ids", GW_MAX_EOS);
        for (int i = 0; i < n; i++) {
            const config_setting_t *e = config_setting_get_elem(eos, (unsigned)i);
            if (config_setting_type(e) != CONFIG_TYPE_INT || config_setting_get_int(e) < 0)
                return mx_cfg_fail(err, eos, NULL, "element %d must be a non-negative integer", i);
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
        rc = parse(&cf, c, err);
    config_destroy(&cf);
    return rc;
}
