/* svc_config.h - the expert-svc config file (libconfig syntax). Reads and checks it; every
 * error names the file, the line and the key; unknown keys are errors. Example:
 *     model_dir = "/models/minimax-text-01";   # checkpoint directory (required)
 *     listen = "0.0.0.0:5001";                  # host:port, port 0 = any (required)
 *     log_level = "info";                       # error | warn | info (default) | debug;
 *                                               #   MX_LOG_LEVEL overrides it (core/log.h)
 *     metrics_listen = "0.0.0.0:9090";          # optional: Prometheus GET /metrics here
 *     backend = "cpu";                          # "cpu" | "cuda" (default "cpu")
 *     threads = 0;                              # backend threads, 0 = one per core
 *     pin_threads = false;                      # thread i on the i-th allowed CPU (cpu
 *                                               #   backend; for threads = every allowed CPU,
 *                                               #   as `mx cluster` sets when processes share
 *                                               #   the machine's cores; default false)
 *     shard_index = 0;                          # reported by Info (default 0)
 *     rpc_workers = 4;                          # RPC handlers at once (default 4)
 *     drain_ms = 5000;                          # on SIGTERM: health NOT_SERVING, no new calls,
 *                                               #   calls in flight may finish for this long
 *                                               #   (default 5000; shutdown_grace_ms is the
 *                                               #   older spelling of the same key)
 *     layers = [0, 1, 2];                       # or layer_begin = 0; layer_end = 80;
 *                                               #   (neither = every layer)
 *     experts = [0, 2];                         # expert ids held in each of those layers
 *     expert_dtype = "bf16";                    # "bf16" (as stored, default) | "int8"
 *                                               #   (quantized at load, per-row scales; cpu)
 */
#ifndef MX_EXPERT_SVC_CONFIG_H
#define MX_EXPERT_SVC_CONFIG_H

#include <libconfig.h>
#include <stdbool.h>
#include <stdint.h>

#include "core/error.h"
#include "core/quantize.h"
#include "core/expert_set.h"

typedef struct mx_expert_svc_config {
    config_t file;               /* owns the strings below */
    const char *model_dir;
    const char *listen;
    const char *log_level;       /* "" = info */
    const char *metrics_listen;  /* "" = no /metrics endpoint */
    const char *backend;
    int threads;
    bool pin_threads;
    int shard_index;
    int rpc_workers;
    int64_t drain_ms;
    mx_weight_format expert_dtype;
    mx_expert_set owns;
} mx_expert_svc_config;

/* Reads path. *out must be freed with mx_expert_svc_config_free, also after a failure. */
int mx_expert_svc_config_load(const char *path, mx_expert_svc_config *out, mx_error *err);
void mx_expert_svc_config_free(mx_expert_svc_config *c);

#endif
