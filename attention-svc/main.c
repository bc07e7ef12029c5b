/* main.c - the attention-svc process: `attention-svc --config FILE.cfg` (or --check-config;
 * schema in stage_config.h). The service skeleton (core/rpc/service.h) runs it; this file
 * only says what to load (stage.h) and serve (stage_rpc.h). */
#include <stdio.h>

#include "core/protocol.h"
#include "core/rpc/service.h"
#include "stage.h"
#include "stage_config.h"
#include "stage_rpc.h"

static int load_config(const char *path, void *config, mx_error *err) { return stage_config_load(path, config, err); }
static void free_config(void *config) { stage_config_free(config); }

static const char *log_level(const void *config) { return ((const stage_config *)config)->log_level; }

static int open_stage(const void *config, const mx_log *log, void **state, mx_error *err)
{
    (void)log; /* the stage reports through its RPC answers; the skeleton logs its life */
    return stage_create(config, (stage **)state, err);
}

static void close_stage(void *state) { stage_destroy(state); }

static void listen_on(const void *config, const void *state, mx_service_listen *l)
{
    const stage_config *c = config;
    l->server = (mx_rpc_server_options){.address = c->listen, .max_message_bytes = c->max_message_bytes,
                                        .worker_threads = c->worker_threads};
    l->health_service = MX_STAGE_SERVICE;
    l->port_file = c->port_file;
    l->drain_ms = c->drain_ms;
    l->metrics_listen = c->metrics_listen;
    l->metrics = stage_metrics_reg((stage *)state);
}

static int add_methods(void *state, mx_rpc_server *srv, mx_error *err) { return stage_add_methods(state, srv, err); }
static void stop_watchers(void *state) { stage_stop_health(state); }
static void drain_wait(void *state, double deadline_ms) { stage_drain_wait(state, deadline_ms); }

static void ready_line(const void *config, const void *state, int port, char *buf, size_t cap)
{
    (void)state;
    const stage_config *c = config;
    snprintf(buf, cap, "stage %d/%d layers [%d, %d) serving on port %d%s%s", c->index, c->count, c->layer_begin,
             c->layer_end, port, c->next[0] ? ", next stage " : "", c->next);
}

int main(int argc, char **argv)
{
    static const mx_service_def def = {
        .name = "attention-svc",
        .about = "Serves a layer range of the model as mx.internal.v1.AttentionStage (config: stage_config.h).",
        .config_size = sizeof(stage_config),
        .config_load = load_config,
        .config_free = free_config,
        .log_level = log_level,
        .open = open_stage,
        .close = close_stage,
        .listen = listen_on,
        .add_methods = add_methods,
        .stop_watchers = stop_watchers,
        .drain_wait = drain_wait,
        .ready_line = ready_line,
    };
    return mx_service_main(&def, argc, argv);
}
