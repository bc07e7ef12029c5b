/* router.h - the MoE dispatch of an attention stage: sends each layer's routed tokens to the
 * expert shards (expert-svc) that own the chosen experts and combines the answers.
 * Plugs into mx_model_run_layers as an mx_moe_executor. Owns its gRPC channels; holds no
 * model weights and no per-request state between calls.
 *
 * Config: the "experts" group of the attention-svc config (libconfig):
 *     experts = {
 *       expert_timeout_ms = 10000;          # per RunExperts call (optional, default 10000)
 *       max_message_mb = 256;               # largest request/response (optional, default 256)
 *       shards = (
 *         { experts = [0, 1];               # same keys as expert-svc: experts + layers or
 *           layer_begin = 0; layer_end = 8; #   layer_begin/layer_end (or none = all layers)
 *           replicas = ["127.0.0.1:5001", "127.0.0.1:5002"]; },
 *         { experts = [2, 3];
 *           replicas = ["127.0.0.1:5003"]; }
 *       );
 *     };
 *
 * One run of a layer: tokens are grouped by expert (experts in ascending id, tokens in
 * ascending row), experts are mapped to shards, ONE ExpertShard.RunExperts call per shard
 * involved goes out in parallel, and out[t] = sum over t's top-k slots, in slot order, of
 * w * y: the result does not depend on which shard answers first.
 * Replica choice: fewest calls in flight (atomic counters), ties rotate round-robin. A call
 * that fails with UNAVAILABLE or DEADLINE_EXCEEDED is retried once on another replica of the
 * shard (expert calls are idempotent). Errors name the shard index and the endpoint.
 * Thread-safe: any number of threads may run the executor at once. */
#ifndef MX_ROUTER_H
#define MX_ROUTER_H

#include <libconfig.h>
#include <stdint.h>

#include "error.h"
#include "model.h"
#include "expert_set.h"

/* One shard: the experts it owns and the endpoints serving it (each a full replica). */
typedef struct mx_router_shard_config {
    mx_expert_set owns;
    int n_replicas;
    char **replicas;      /* "host:port" strings, owned */
} mx_router_shard_config;

typedef struct mx_router_config {
    int n_shards;
    mx_router_shard_config *shards;  /* owned */
    int64_t expert_timeout_ms;       /* per call deadline; default 10000 */
    int max_message_bytes;           /* default 256 MiB */
} mx_router_config;

/* Parses the "experts" group s (see above). Errors name the key, the file and the line.
 * *out is owned by the caller: free with mx_router_config_free (also after a failure). */
int mx_router_config_from_setting(const config_setting_t *s, mx_router_config *out, mx_error *err);
void mx_router_config_free(mx_router_config *cfg);

typedef struct mx_router mx_router;

/* Creates channels to every replica (connecting lazily) and checks the shard map against
 * the model: layers < num_layers, experts < num_experts, no (layer, expert) owned by two
 * shards. cfg is copied; the caller may free it afterwards. be (borrowed, may be NULL) is the
 * stage's backend: x2 and out tensors not on the CPU are copied through it. */
int mx_router_create(const mx_router_config *cfg, int num_layers, int hidden_size, int num_experts,
                     mx_backend *be, mx_router **out, mx_error *err);

/* Checks every expert of every layer in [layer_begin, layer_end) has a shard (call at stage
 * start-up so a gap in the map is a start-up error, not a first-request error). */
int mx_router_check_coverage(const mx_router *r, int layer_begin, int layer_end, mx_error *err);

/* The executor to pass to mx_model_run_layers (ctx = r; valid while r lives). */
mx_moe_executor mx_router_executor(mx_router *r);

/* The executor's run function, callable directly: x2 [T, hidden], ids/weights [T*k] on the
 * host, out [T, hidden] zeroed by the caller (out += sum of weighted expert outputs). */
int mx_router_run(mx_router *r, int layer, const mx_tensor *x2, const int32_t *ids,
                  const float *weights, int k, mx_tensor *out, mx_error *err);

/* Counters since creation, for logs and metrics. */
typedef struct mx_router_stats {
    uint64_t calls;        /* RunExperts calls sent (including retries) */
    uint64_t retries;      /* calls retried on another replica */
    uint64_t failures;     /* executor runs that returned an error */
} mx_router_stats;
void mx_router_get_stats(const mx_router *r, mx_router_stats *out);

void mx_router_destroy(mx_router *r);

#endif
