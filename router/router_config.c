/* router_config.c - reads the "experts" group of an attention-svc config into an
 * mx_router_config (shard map, replicas, deadline). Parsing only: no channels, no I/O. */
#include "router.h"

#include <stdlib.h>
#include <string.h>

#include "core/cfg_file.h"
#include "resolver.h"
#include "core/limits.h"

static int parse_shard(const config_setting_t *s, mx_router_shard_config *sh, mx_error *err)
{
    static const char *const known[] = {"layers", "layer_begin", "layer_end", "experts", "replicas"};
    if (config_setting_is_group(s))
        MX_TRY(mx_cfg_check_keys(s, known, sizeof known / sizeof *known, err));
    MX_TRY(mx_expert_set_from_setting(s, &sh->owns, err));
    const config_setting_t *r = config_setting_get_member(s, "replicas");
    if (!r)
        return mx_cfg_fail(err, s, "replicas", "missing (a list of \"host:port\" endpoints is required)");
    if (!config_setting_is_array(r) && !config_setting_is_list(r))
        return mx_cfg_fail(err, r, NULL, "expected a list of \"host:port\" strings");
    int n = config_setting_length(r);
    if (n == 0)
        return mx_cfg_fail(err, r, NULL, "must not be empty");
    sh->replicas = calloc((size_t)n, sizeof *sh->replicas);
    if (!sh->replicas)
        return mx_fail(err, MX_ENOMEM, "out of memory reading replicas");
    for (int i = 0; i < n; i++) {
        const config_setting_t *e = config_setting_get_elem(r, (unsigned)i);
        const char *addr = config_setting_type(e) == CONFIG_TYPE_STRING ? config_setting_get_string(e) : NULL;
        if (!addr)
            return mx_cfg_fail(err, r, NULL, "element %d: expected a \"host:port\" or \"dns:///name:port\" string", i);
        mx_router_target t;
        mx_error terr = {0};
        if (mx_router_target_parse(addr, &t, &terr))
            return mx_cfg_fail(err, r, NULL, "element %d: %s", i, terr.msg);
        for (int j = 0; j < i; j++)
            if (!strcmp(sh->replicas[j], addr))
                return mx_cfg_fail(err, r, NULL, "\"%s\" is listed twice", addr);
        sh->replicas[i] = strdup(addr);
        if (!sh->replicas[i])
            return mx_fail(err, MX_ENOMEM, "out of memory reading replicas");
        sh->n_replicas = i + 1;
    }
    return 0;
}

/* A number (integer or float) in [lo, hi], def when absent. */
static int cfg_number(const config_setting_t *g, const char *name, double def, double lo, double hi, double *v,
                      mx_error *err)
{
    *v = def;
    const config_setting_t *m = config_setting_get_member(g, name);
    if (!m)
        return 0;
    int t = config_setting_type(m);
    if (t != CONFIG_TYPE_FLOAT && t != CONFIG_TYPE_INT && t != CONFIG_TYPE_INT64)
        return mx_cfg_fail(err, m, NULL, "expected a number");
    *v = t == CONFIG_TYPE_FLOAT ? config_setting_get_float(m) : (double)config_setting_get_int64(m);
    if (!(*v >= lo && *v <= hi))
        return mx_cfg_fail(err, m, NULL, "%g is outside [%g, %g]", *v, lo, hi);
    return 0;
}

int mx_router_config_from_setting(const config_setting_t *s, mx_router_config *out, mx_error *err)
{
    memset(out, 0, sizeof *out);
    if (!s)
        return mx_fail(err, MX_EINVAL, "missing `experts` group (the expert shard map)");
    if (!config_setting_is_group(s))
        return mx_cfg_fail(err, s, NULL, "expected a group { shards = (...); }");
    static const char *const known[] = {"expert_timeout_ms", "max_message_mb", "shards", "attempt_timeout_floor_ms",
                                        "attempt_timeout_factor", "attempt_timeout_cap_ms", "hedge", "hedge_percent",
                                        "eject_ms", "eject_max_ms", "health_interval_ms", "probe_timeout_ms",
                                        "resolve_interval_ms"};
    MX_TRY(mx_cfg_check_keys(s, known, sizeof known / sizeof *known, err));
    int64_t v;
    MX_TRY(mx_cfg_int(s, "expert_timeout_ms", 0, 10000, 1, 3600000, &v, err));
    out->expert_timeout_ms = v;
    MX_TRY(mx_cfg_int(s, "max_message_mb", 0, MX_DEFAULT_MAX_MESSAGE_MB, 1, MX_MAX_MESSAGE_MB, &v, err));
    out->max_message_bytes = (int)(v << 20);
    MX_TRY(mx_cfg_int(s, "attempt_timeout_floor_ms", 0, 200, 1, 3600000, &out->attempt_floor_ms, err));
    MX_TRY(mx_cfg_int(s, "attempt_timeout_cap_ms", 0, 2000, 1, 3600000, &out->attempt_cap_ms, err));
    MX_TRY(cfg_number(s, "attempt_timeout_factor", 4.0, 1.0, 1000.0, &out->attempt_factor, err));
    MX_TRY(mx_cfg_bool(s, "hedge", false, &out->hedge, err));
    MX_TRY(mx_cfg_int(s, "hedge_percent", 0, 10, 1, 100, &v, err));
    out->hedge_percent = (int)v;
    MX_TRY(mx_cfg_int(s, "eject_ms", 0, 500, 1, 3600000, &out->eject_ms, err));
    MX_TRY(mx_cfg_int(s, "eject_max_ms", 0, 5000, 1, 3600000, &out->eject_max_ms, err));
    MX_TRY(mx_cfg_int(s, "health_interval_ms", 0, 1000, 10, 3600000, &out->health_interval_ms, err));
    MX_TRY(mx_cfg_int(s, "probe_timeout_ms", 0, 500, 1, 3600000, &out->probe_timeout_ms, err));
    MX_TRY(mx_cfg_int(s, "resolve_interval_ms", 0, 5000, 100, 3600000, &out->resolve_interval_ms, err));
    if (out->attempt_floor_ms > out->attempt_cap_ms)
        return mx_cfg_fail(err, s, "attempt_timeout_floor_ms", "%lld is above attempt_timeout_cap_ms (%lld)",
                           (long long)out->attempt_floor_ms, (long long)out->attempt_cap_ms);
    if (out->eject_ms > out->eject_max_ms)
        return mx_cfg_fail(err, s, "eject_ms", "%lld is above eject_max_ms (%lld)", (long long)out->eject_ms,
                           (long long)out->eject_max_ms);
    const config_setting_t *shards = config_setting_get_member(s, "shards");
    if (!shards)
        return mx_cfg_fail(err, s, "shards", "missing (a list of shard groups is required)");
    if (!config_setting_is_list(shards))
        return mx_cfg_fail(err, shards, NULL, "expected a list of groups: ( { experts = [...]; replicas = [...]; }, ... )");
    int n = config_setting_length(shards);
    if (n == 0)
        return mx_cfg_fail(err, shards, NULL, "must not be empty");
    out->shards = calloc((size_t)n, sizeof *out->shards);
    if (!out->shards)
        return mx_fail(err, MX_ENOMEM, "out of memory reading shards");
    out->n_shards = n;
    for (int i = 0; i < n; i++)
        MX_TRY(parse_shard(config_setting_get_elem(shards, (unsigned)i), &out->shards[i], err));
    return 0;
}

void mx_router_config_free(mx_router_config *cfg)
{
    for (int i = 0; i < cfg->n_shards; i++) {
        mx_router_shard_config *sh = &cfg->shards[i];
        mx_expert_set_free(&sh->owns);
        for (int j = 0; j < sh->n_replicas; j++)
            free(sh->replicas[j]);
        free(sh->replicas);
    }
    free(cfg->shards);
    memset(cfg, 0, sizeof *cfg);
}
