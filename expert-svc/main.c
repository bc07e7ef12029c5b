/* main.c - the expert-svc process: `expert-svc --config FILE` (or --check-config FILE). The
 * service skeleton (core/rpc/service.h) runs it; this file only says what to load and serve:
 * the shard's config (svc_config.h) and the shard itself (shard.h), and how it drains: on
 * SIGTERM health turns NOT_SERVING, routers holding a Health/Watch are told at once and stop
 * sending, calls in flight finish, and the process exits 0 (within drain_ms). */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "core/protocol.h"
#include "core/clock.h"
#include "core/rpc/health.h"
#include "core/rpc/service.h"
#include "shard.h"
#include "svc_config.h"

static int load_config(const char *path, void *config, mx_error *err)
{
    return mx_expert_svc_config_load(path, config, err);
}

static void free_config(void *config) { mx_expert_svc_config_free(config); }

/* A call a router sent just before it heard NOT_SERVING is still on its way: it is
 * accepted for this long after every watcher was told. */
#define DRAIN_SETTLE_MS 100

/* The process's state: the shard and the server it is served on (for the drain). */
typedef struct svc {
    mx_expert_shard *shard;
    mx_rpc_server *srv;
} svc;

static const char *log_level(const void *config) { return ((const mx_expert_svc_config *)config)->log_level; }

static int open_shard(const void *config, const mx_log *log, void **state, mx_error *err)
{
    (void)log; /* the shard reports through its RPC answers; the skeleton logs its life */
    const mx_expert_svc_config *c = config;
    mx_expert_shard_options so = {.model_dir = c->model_dir, .backend = c->backend, .threads = c->threads,
                                  .pin_threads = c->pin_threads, .shard_index = c->shard_index, .owns = &c->owns,
                                  .expert_dtype = c->expert_dtype};
    svc *v = calloc(1, sizeof *v);
    if (!v)
        return mx_fail(err, MX_ENOMEM, "out of memory");
    int rc = mx_expert_shard_load(&so, &v->shard, err);
    if (rc) {
        free(v);
        return rc;
    }
    *state = v;
    return 0;
}

static void close_shard(void *state)
{
    svc *v = state;
    mx_expert_shard_free(v->shard);
    free(v);
}

/* Health already says NOT_SERVING: waits until every router watching it was told, then a
 * little more for calls already on their way; the server then stops accepting and lets the
 * calls in flight finish (service.c). Routers that only Check get UNAVAILABLE for a new
 * call from then on, and send it to another replica. */
static void drain_wait(void *state, double deadline_ms)
{
    svc *v = state;
    mx_rpc_health_wait_told(v->srv, deadline_ms);
    double until = mx_now_ms() + DRAIN_SETTLE_MS;
    if (until > deadline_ms)
        until = deadline_ms;
    double left = until - mx_now_ms();
    if (left > 0) {
        struct timespec ts = {(time_t)(left / 1000), (long)(((long long)left % 1000) * 1000000LL)};
        nanosleep(&ts, NULL);
    }
}

static void listen_on(const void *config, const void *state, mx_service_listen *l)
{
    const mx_expert_svc_config *c = config;
    l->server = (mx_rpc_server_options){.address = c->listen, .worker_threads = c->rpc_workers};
    l->health_service = MX_EXPERT_SERVICE;
    l->drain_ms = c->drain_ms;
    l->metrics_listen = c->metrics_listen;
    l->metrics = mx_expert_shard_metrics(((const svc *)state)->shard);
}

static int add_methods(void *state, mx_rpc_server *srv, mx_error *err)
{
    svc *v = state;
    v->srv = srv;
    return mx_expert_shard_serve(v->shard, srv, err);
}

static void ready_line(const void *config, const void *state, int port, char *buf, size_t cap)
{
    const mx_expert_svc_config *c = config;
    const svc *v = state;
    snprintf(buf, cap, "shard %d serving %d experts (%.1f MiB of weights) on %s, port %d", c->shard_index,
             mx_expert_shard_count(v->shard), (double)mx_expert_shard_weight_bytes(v->shard) / (1 << 20), c->listen,
             port);
}

int main(int argc, char **argv)
{
    static const mx_service_def def = {
        .name = "expert-svc",
        .about = "Serves some experts of some MoE layers as mx.internal.v1.ExpertShard (config: svc_config.h).",
        .config_size = sizeof(mx_expert_svc_config),
        .config_load = load_config,
        .config_free = free_config,
        .log_level = log_level,
        .open = open_shard,
        .close = close_shard,
        .listen = listen_on,
        .add_methods = add_methods,
        .drain_wait = drain_wait,
        .ready_line = ready_line,
    };
    return mx_service_main(&def, argc, argv);
}
