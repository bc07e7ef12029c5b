/* shard.h - an expert shard: some experts of some MoE layers loaded on a backend, served as
 * the ExpertShard gRPC service (RunExperts, Info). Stateless between calls. Compiled into
 * libexpert-svc.a (see module.mk) so tests can serve shards in-process; main.c only adds the
 * process around it (the service skeleton, core/rpc/service.h). */
#ifndef MX_EXPERT_SHARD_H
#define MX_EXPERT_SHARD_H

#include <stdbool.h>
#include <stdint.h>

#include "core/error.h"
#include "core/quantize.h"
#include "core/expert_set.h"
#include "core/rpc/server.h"

typedef struct mx_expert_shard mx_expert_shard;

typedef struct mx_expert_shard_options {
    const char *model_dir;       /* checkpoint directory (config.json + safetensors) */
    const char *backend;         /* "cpu" (default) or "cuda" */
    int threads;                 /* backend threads; 0 = one per core */
    bool pin_threads;            /* those threads on distinct CPUs (mx_backend_cpu_pin_threads) */
    int shard_index;             /* reported by Info */
    const mx_expert_set *owns;   /* borrowed during load only */
    mx_weight_format expert_dtype; /* as stored (default) or int8, quantized at load */
} mx_expert_shard_options;

/* Loads only the owned experts (no attention, embedding or head) and binds them to a new
 * backend. Fails naming the layer/expert when the set does not fit the model. */
int mx_expert_shard_load(const mx_expert_shard_options *opts, mx_expert_shard **out, mx_error *err);

/* Registers ExpertShard.RunExperts and .Info on srv (before mx_rpc_server_start), attaching
 * grpc.health if it is not yet, and marks the service SERVING there. The shard must outlive the server. */
int mx_expert_shard_serve(mx_expert_shard *s, mx_rpc_server *srv, mx_error *err);

/* Bytes of expert weights held; number of (layer, expert) pairs held. */
uint64_t mx_expert_shard_weight_bytes(const mx_expert_shard *s);
int mx_expert_shard_count(const mx_expert_shard *s);

/* The shard's Prometheus registry (shard_metrics.h), for the skeleton's /metrics. */
struct mx_metrics *mx_expert_shard_metrics(mx_expert_shard *s);

void mx_expert_shard_free(mx_expert_shard *s);

#endif
