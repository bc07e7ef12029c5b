/* svc_config.c - reading the expert-svc config file with libconfig. Unknown keys are errors
 * (a typo must not silently fall back to a default). Reads only; starts nothing. */
#include "svc_config.h"

#include <string.h>

#include "core/cfg_file.h"
#include "core/log.h"

static const char *const known_keys[] = {"model_dir", "listen", "log_level", "backend", "threads", "pin_threads", "shard_index",
                                         "rpc_workers", "drain_ms", "shutdown_grace_ms", "layers",
                                         "layer_begin", "layer_end", "experts", "expert_dtype",
                                         "metrics_listen"};

int mx_expert_svc_config_load(const char *path, mx_expert_svc_config *out, mx_error *err)
{
    memset(out, 0, sizeof *out);
    config_init(&out->file);
    MX_TRY(mx_cfg_read_file(&out->file, path, err));
    const config_setting_t *root = config_root_setting(&out->file);
    MX_TRY(mx_cfg_check_keys(root, known_keys, sizeof known_keys / sizeof *known_keys, err));
    int64_t v;
    MX_TRY(mx_cfg_string(root, "model_dir", 1, NULL, &out->model_dir, err));
    MX_TRY(mx_cfg_string(root, "listen", 1, NULL, &out->listen, err));
    if (!strchr(out->listen, ':'))
        return mx_cfg_fail(err, config_setting_get_member(root, "listen"), NULL,
                           "\"%s\" is not host:port", out->listen);
    MX_TRY(mx_cfg_string(root, "log_level", 0, "", &out->log_level, err));
    mx_log_level level;
    if (out->log_level[0] && mx_log_level_parse(out->log_level, &level, err))
        return mx_cfg_fail(err, config_setting_get_member(root, "log_level"), NULL,
                           "\"%s\" is not a log level (error, warn, info or debug)", out->log_level);
    MX_TRY(mx_cfg_string(root, "metrics_listen", 0, "", &out->metrics_listen, err));
    MX_TRY(mx_cfg_string(root, "backend", 0, "cpu", &out->backend, err));
    if (strcmp(out->backend, "cpu") && strcmp(out->backend, "cuda"))
        return mx_cfg_fail(err, config_setting_get_member(root, "backend"), NULL,
                           "\"%s\" is not a backend (\"cpu\" or \"cuda\")", out->backend);
    MX_TRY(mx_cfg_int(root, "threads", 0, 0, 0, 1024, &v, err));
    out->threads = (int)v;
    MX_TRY(mx_cfg_bool(root, "pin_threads", false, &out->pin_threads, err));
    if (out->pin_threads && strcmp(out->backend, "cpu"))
        return mx_cfg_fail(err, config_setting_get_member(root, "pin_threads"), NULL,
                           "pin_threads applies to the cpu backend only");
    MX_TRY(mx_cfg_int(root, "shard_index", 0, 0, 0, 1 << 20, &v, err));
    out->shard_index = (int)v;
    MX_TRY(mx_cfg_int(root, "rpc_workers", 0, 4, 1, 256, &v, err));
    out->rpc_workers = (int)v;
    if (config_setting_get_member(root, "drain_ms") && config_setting_get_member(root, "shutdown_grace_ms"))
        return mx_cfg_fail(err, config_setting_get_member(root, "shutdown_grace_ms"), NULL,
                           "is the older spelling of drain_ms: give one of them");
    MX_TRY(mx_cfg_int(root, config_setting_get_member(root, "drain_ms") ? "drain_ms" : "shutdown_grace_ms", 0,
                      5000, 0, 3600000, &v, err));
    out->drain_ms = v;
    const char *dt;
    MX_TRY(mx_cfg_string(root, "expert_dtype", 0, "bf16", &dt, err));
    if (mx_weight_format_from_name(dt, &out->expert_dtype))
        return mx_cfg_fail(err, config_setting_get_member(root, "expert_dtype"), NULL,
                           "\"%s\" is not an expert dtype (\"bf16\" or \"int8\")", dt);
    return mx_expert_set_from_setting(root, &out->owns, err);
}

void mx_expert_svc_config_free(mx_expert_svc_config *c)
{
    mx_expert_set_free(&c->owns);
    config_destroy(&c->file);
}
