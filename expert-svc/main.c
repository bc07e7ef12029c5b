/* main.c - the expert-svc process: `expert-svc --config FILE` (or --check-config FILE). The
 * service skeleton (core/rpc/service.h) runs it; this file only says what to load and serve:
 * the shard's config (svc_config.h) and the shard itself (shard.h). */
#include <stdio.h>

#include "core/protocol.h"
#include "core/rpc/service.h"
#include "shard.h"
#include "svc_config.h"

static int load_config(const char *path, void *config, mx_error *err)
{
    return mx_expert_svc_config_load(path, config, err);
}

static void free_config(void *config) { mx_expert_svc_config_free(config); }

static int open_shard(const void *config, void **state, mx_error *err)
{
    const mx_expert_svc_config *c = config;
    mx_expert_shard_options so = {.model_dir = c->model_dir, .backend = c->backend, .threads = c->threads,
                                  .shard_index = c->shard_index, .owns = &c->owns,
                                  .expert_dtype = c->expert_dtype};
    return mx_expert_shard_load(&so, (mx_expert_shard **)state, err);
}

static void close_shard(void *state) { mx_expert_shard_free(state); }

static void listen_on(const void *config, const void *state, mx_service_listen *l)
{
    (void)state;
    const mx_expert_svc_config *c = config;
    l->server = (mx_rpc_server_options){.address = c->listen, .worker_threads = c->rpc_workers};
    l->health_service = MX_EXPERT_SERVICE;
    l->drain_ms = c->drain_ms;
}

static int add_methods(void *state, mx_rpc_server *srv, mx_error *err)
{
    return mx_expert_shard_serve(state, srv, err);
}

static void ready_line(const void *config, const void *state, int port, char *buf, size_t cap)
{
    const mx_expert_svc_config *c = config;
    snprintf(buf, cap, "shard %d serving %d experts (%.1f MiB of weights) on %s, port %d", c->shard_index,
             mx_expert_shard_count(state), (double)mx_expert_shard_weight_bytes(state) / (1 << 20), c->listen, port);
}

int main(int argc, char **argv)
{
    static const mx_service_def def = {
        .name = "expert-svc",
        .about = "Serves some experts of some MoE layers as mx.internal.v1.ExpertShard (config: svc_config.h).",
        .config_size = sizeof(mx_expert_svc_config),
        .config_load = load_config,
        .config_free = free_config,
        .open = open_shard,
        .close = close_shard,
        .listen = listen_on,
        .add_methods = add_methods,
        .ready_line = ready_line,
    };
    return mx_service_main(&def, argc, argv);
}
