/* stage_config.c - parses the attention-svc libconfig file (schema in stage_config.h) through
 * the shared config-file layer (cfg_file.h): errors name file, line and key; unknown keys are errors. */
#include "stage_config.h"

#include "core/cfg_file.h"
#include "core/log.h"
#include "core/limits.h"

#include <stdint.h>

#include <ctype.h>
#include <errno.h>
#include <libconfig.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* An int member of the stage group (absent: def, or an error when required); ranges are
 * checked by parse() against the other keys. */
static int get_int(const config_setting_t *g, const char *key, int def, bool required, int *out, mx_error *err)
{
    int64_t v;
    MX_TRY(mx_cfg_int(g, key, required, def, INT32_MIN, INT32_MAX, &v, err));
    *out = (int)v;
    return 0;
}

static const char *const known_root[] = {"stage", "experts"};
static const char *const known_keys[] = {
    "listen", "model", "port_file", "log_level", "backend", "next", "index", "count", "layer_begin", "layer_end",
    "max_sequences", "threads", "max_message_mb", "kv_dtype", "kv_cache_bytes", "worker_threads", "drain_ms",
    "attn_dtype", "test_fail_expert_call_once_at_layer", "sequence_lease_ms", "metrics_listen", "max_step_tokens",
    "overlap", "overlap_halves", "pin_threads"};

int stage_parse_bytes(const char *text, const char *what, uint64_t *out, mx_error *err)
{
    static const char *const units[] = {"", "K", "M", "G", "T"};
    const char *p = text;
    while (isspace((unsigned char)*p))
        p++;
    if (!isdigit((unsigned char)*p))
        return mx_fail(err, MX_EINVAL, "%s = \"%s\" is not a byte count (e.g. 1073741824, \"512MiB\", \"8G\")",
                       what, text);
    errno = 0;
    char *end;
    unsigned long long v = strtoull(p, &end, 10);
    if (errno)
        return mx_fail(err, MX_EINVAL, "%s = \"%s\" is too large", what, text);
    while (isspace((unsigned char)*end))
        end++;
    /* the unit: K, M, G or T, optionally followed by "iB"; binary either way */
    int shift = -1;
    char u[8] = "";
    size_t n = strlen(end);
    while (n > 0 && isspace((unsigned char)end[n - 1]))
        n--;
    if (n < sizeof u) {
        memcpy(u, end, n);
        u[n] = 0;
        for (int i = 0; i < 5 && shift < 0; i++) {
            char with_ib[8];
            snprintf(with_ib, sizeof with_ib, "%siB", units[i]);
            if (strcasecmp(u, units[i]) == 0 || (i > 0 && strcasecmp(u, with_ib) == 0))
                shift = 10 * i;
        }
    }
    if (shift < 0)
        return mx_fail(err, MX_EINVAL, "%s = \"%s\": unknown unit \"%.*s\" (use K, KiB, M, MiB, G, GiB, T or TiB; "
                       "all binary)", what, text, (int)n, end);
    if (shift && v > (UINT64_MAX >> shift))
        return mx_fail(err, MX_EINVAL, "%s = \"%s\" is too large", what, text);
    *out = (uint64_t)v << shift;
    return 0;
}

/* stage.kv_cache_bytes: an integer (int or int64) or a string with a unit. */
static int get_bytes(const config_setting_t *g, const char *path, const char *key, uint64_t *out, mx_error *err)
{
    const config_setting_t *s = config_setting_get_member(g, key);
    *out = 0;
    if (!s)
        return 0;
    char what[MX_PATH_BUF];
    snprintf(what, sizeof what, "%s:%d: stage.%s", path, config_setting_source_line(s), key);
    int t = config_setting_type(s);
    if (t == CONFIG_TYPE_INT || t == CONFIG_TYPE_INT64) {
        long long v = config_setting_get_int64(s);
        if (v < 0)
            return mx_fail(err, MX_EINVAL, "%s = %lld must not be negative", what, v);
        *out = (uint64_t)v;
        return 0;
    }
    if (t == CONFIG_TYPE_STRING)
        return stage_parse_bytes(config_setting_get_string(s), what, out, err);
    return mx_fail(err, MX_EINVAL, "%s must be an integer or a string such as \"8GiB\"", what);
}

static int parse(config_t *cf, const char *path, stage_config *c, mx_error *err)
{
    const config_setting_t *root = config_root_setting(cf), *g;
    MX_TRY(mx_cfg_check_keys(root, known_root, sizeof known_root / sizeof *known_root, err));
    MX_TRY(mx_cfg_group(root, "stage", 1, &g, err));
    MX_TRY(mx_cfg_check_keys(g, known_keys, sizeof known_keys / sizeof *known_keys, err));
    int mb;
    MX_TRY(mx_cfg_string_buf(g, "listen", NULL, c->listen, sizeof c->listen, err));
    MX_TRY(mx_cfg_string_buf(g, "model", NULL, c->model, sizeof c->model, err));
    MX_TRY(mx_cfg_string_buf(g, "port_file", "", c->port_file, sizeof c->port_file, err));
    MX_TRY(mx_cfg_string_buf(g, "log_level", "", c->log_level, sizeof c->log_level, err));
    mx_log_level level;
    if (c->log_level[0] && mx_log_level_parse(c->log_level, &level, err))
        return mx_cfg_fail(err, config_setting_get_member(g, "log_level"), NULL,
                           "\"%s\" is not a log level (error, warn, info or debug)", c->log_level);
    MX_TRY(mx_cfg_string_buf(g, "metrics_listen", "", c->metrics_listen, sizeof c->metrics_listen, err));
    MX_TRY(mx_cfg_string_buf(g, "backend", "cpu", c->backend, sizeof c->backend, err));
    MX_TRY(mx_cfg_string_buf(g, "next", "", c->next, sizeof c->next, err));
    MX_TRY(get_int(g, "index", 0, true, &c->index, err));
    MX_TRY(get_int(g, "count", 0, true, &c->count, err));
    MX_TRY(get_int(g, "layer_begin", 0, true, &c->layer_begin, err));
    MX_TRY(get_int(g, "layer_end", 0, true, &c->layer_end, err));
    MX_TRY(get_int(g, "max_sequences", 256, false, &c->max_sequences, err));
    MX_TRY(get_int(g, "threads", 0, false, &c->threads, err));
    MX_TRY(mx_cfg_bool(g, "pin_threads", false, &c->pin_threads, err));
    if (c->pin_threads && strcmp(c->backend, "cpu"))
        return mx_cfg_fail(err, config_setting_get_member(g, "pin_threads"), NULL,
                           "pin_threads applies to the cpu backend only");
    MX_TRY(get_int(g, "max_message_mb", MX_DEFAULT_MAX_MESSAGE_MB, false, &mb, err));
    int64_t drain;
    MX_TRY(mx_cfg_int(g, "drain_ms", 0, STAGE_DEFAULT_DRAIN_MS, 0, 3600000, &drain, err));
    c->drain_ms = drain;
    int64_t fail_at;
    MX_TRY(mx_cfg_int(g, "test_fail_expert_call_once_at_layer", 0, -1, -1, INT32_MAX, &fail_at, err));
    c->test_fail_expert_once = fail_at >= 0;
    c->test_fail_expert_layer = (int)fail_at;
    MX_TRY(mx_cfg_int(g, "sequence_lease_ms", 0, STAGE_DEFAULT_LEASE_MS, 0, INT64_MAX / 2, &c->sequence_lease_ms,
                      err));
    int64_t step_tokens;
    MX_TRY(mx_cfg_int(g, "max_step_tokens", 0, 512, 1, 1 << 24, &step_tokens, err));
    c->max_step_tokens = (int)step_tokens;
    /* off by default: on a machine whose cores are all busy anyway it measured slower
     * (bench/bench_overlap.sh); it pays where a stage waits on experts on other machines */
    MX_TRY(mx_cfg_bool(g, "overlap", false, &c->overlap, err));
    MX_TRY(mx_cfg_bool(g, "overlap_halves", false, &c->overlap_halves, err));
    char kv_dtype[32];
    MX_TRY(mx_cfg_string_buf(g, "kv_dtype", "bf16", kv_dtype, sizeof kv_dtype, err));
    if (mx_kv_dtype_parse(kv_dtype, "stage.kv_dtype", &c->kv_dtype, err))
        return mx_error_prefix(err, "%s", path);
    MX_TRY(get_bytes(g, path, "kv_cache_bytes", &c->kv_cache_bytes, err));
    const char *adt;
    MX_TRY(mx_cfg_string(g, "attn_dtype", 0, "bf16", &adt, err));
    if (mx_weight_format_from_name(adt, &c->attn_dtype))
        return mx_cfg_fail(err, config_setting_get_member(g, "attn_dtype"), NULL,
                           "\"%s\" is not an attention weight dtype (\"bf16\" or \"int8\")", adt);
    if (c->count < 1 || c->index < 0 || c->index >= c->count)
        return mx_fail(err, MX_EINVAL, "%s: stage.index %d is not in [0, count=%d)", path, c->index, c->count);
    MX_TRY(get_int(g, "worker_threads", c->count + 4, false, &c->worker_threads, err));
    if (c->worker_threads < 2 || c->worker_threads > 1024)
        return mx_fail(err, MX_EINVAL, "%s: stage.worker_threads %d is not in [2, 1024]", path, c->worker_threads);
    if (c->next[0] && c->index == c->count - 1)
        return mx_fail(err, MX_EINVAL, "%s: stage.next is set but stage %d is the last of %d (it has no next stage)",
                       path, c->index, c->count);
    /* hidden states flow forward only: every stage but the last hands its batch to the next */
    if (!c->next[0] && c->index < c->count - 1)
        return mx_fail(err, MX_EINVAL, "%s: stage.next is required: stage %d of %d is not the last", path, c->index,
                       c->count);
    if (c->next[0] && !strchr(c->next, ':'))
        return mx_fail(err, MX_EINVAL, "%s: stage.next = \"%s\" is not a \"host:port\" address", path, c->next);
    if (c->layer_begin < 0 || c->layer_end <= c->layer_begin)
        return mx_fail(err, MX_EINVAL, "%s: stage.layer_begin/layer_end [%d, %d) is not a non-empty layer range", path,
                       c->layer_begin, c->layer_end);
    if (c->max_sequences < 1 || c->max_sequences > 1000000)
        return mx_fail(err, MX_EINVAL, "%s: stage.max_sequences %d is not in [1, 1000000]", path, c->max_sequences);
    if (c->threads < 0 || c->threads > 1024)
        return mx_fail(err, MX_EINVAL, "%s: stage.threads %d is not in [0, 1024]", path, c->threads);
    if (mb < 1 || mb > MX_MAX_MESSAGE_MB)
        return mx_fail(err, MX_EINVAL, "%s: stage.max_message_mb %d is not in [1, %d]", path, mb, MX_MAX_MESSAGE_MB);
    c->max_message_bytes = mb * 1024 * 1024;
    const config_setting_t *ex = config_lookup(cf, "experts");
    if (ex) {
        c->remote_experts = true;
        MX_TRY(mx_router_config_from_setting(ex, &c->router, err));
    }
    return 0;
}

int stage_config_load(const char *path, stage_config *c, mx_error *err)
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

void stage_config_free(stage_config *c)
{
    if (c->remote_experts)
        mx_router_config_free(&c->router);
    memset(c, 0, sizeof *c);
}
