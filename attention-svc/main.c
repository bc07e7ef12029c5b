/* main.c - the attention-svc process: reads its config file, loads its stage, serves
 * mx.internal.v1.AttentionStage (plus grpc.health.v1.Health) until SIGTERM/SIGINT.
 * usage: attention-svc --config FILE.cfg   (schema in stage_config.h) */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/rpc/health.h"
#include "core/rpc/server.h"
#include "core/rpc/signals.h"
#include "core/rpc/tune.h"
#include "stage.h"

typedef int (*stage_method)(stage *s, const uint8_t *req, size_t len, mx_rpc_payload *resp, mx_error *err);

typedef struct method_binding {
    stage *s;
    stage_method fn;
} method_binding;

static void on_call(mx_rpc_call *call, const uint8_t *request, size_t request_len, void *user)
{
    const method_binding *b = user;
    mx_error err = {0};
    mx_rpc_payload resp;
    if (b->fn(b->s, request, request_len, &resp, &err) || mx_rpc_call_write(call, resp, &err))
        mx_rpc_call_set_error(call, &err);
}

/* RunBatch: a forwarded batch gets what is left of our caller's deadline for the next stage. */
static void on_run_batch(mx_rpc_call *call, const uint8_t *request, size_t request_len, void *user)
{
    stage *s = user;
    mx_error err = {0};
    mx_rpc_payload resp;
    int64_t left = mx_rpc_call_ms_left(call);
    int64_t timeout_ms = left == INT64_MAX ? -1 : left > 0 ? left : 1;
    if (stage_run_batch(s, request, request_len, timeout_ms, &resp, &err) || mx_rpc_call_write(call, resp, &err))
        mx_rpc_call_set_error(call, &err);
}

int main(int argc, char **argv)
{
    if (argc == 2 && strcmp(argv[1], "--help") == 0) {
        printf("usage: attention-svc --config FILE.cfg\n");
        return 0;
    }
    /* --check-config FILE: reads and checks the file, loads and starts nothing (deployment tests) */
    if (argc == 3 && strcmp(argv[1], "--check-config") == 0) {
        mx_error cerr = {0};
        stage_config cc;
        int crc = stage_config_load(argv[2], &cc, &cerr);
        stage_config_free(&cc);
        if (crc) {
            fprintf(stderr, "attention-svc: %s\n", cerr.msg);
            return 1;
        }
        printf("attention-svc: %s: config OK\n", argv[2]);
        return 0;
    }
    if (argc != 3 || strcmp(argv[1], "--config") != 0) {
        fprintf(stderr, "usage: attention-svc --config FILE.cfg | --check-config FILE.cfg\n");
        return 2;
    }
    mx_error err = {0};
    mx_rpc_tune_malloc();
    if (mx_rpc_block_stop_signals(&err)) {
        fprintf(stderr, "attention-svc: %s\n", err.msg);
        return 1;
    }
    stage_config cfg;
    stage *s = NULL;
    mx_rpc_server *srv = NULL;
    int rc = stage_config_load(argv[2], &cfg, &err);
    if (!rc)
        rc = stage_create(&cfg, &s, &err);
    method_binding release = {s, stage_release}, info = {s, stage_info};
    if (!rc) {
        mx_rpc_server_options o = {.address = cfg.listen, .max_message_bytes = cfg.max_message_bytes,
                                   .worker_threads = cfg.worker_threads};
        rc = mx_rpc_server_create(&o, &srv, &err);
    }
    if (!rc)
        rc = mx_rpc_server_add_unary(srv, "/mx.internal.v1.AttentionStage/RunBatch", on_run_batch, s, &err);
    if (!rc)
        rc = mx_rpc_server_add_unary(srv, "/mx.internal.v1.AttentionStage/Release", on_call, &release, &err);
    if (!rc)
        rc = mx_rpc_server_add_unary(srv, "/mx.internal.v1.AttentionStage/Info", on_call, &info, &err);
    if (!rc)
        rc = mx_rpc_health_set(srv, "mx.internal.v1.AttentionStage", MX_RPC_SERVING, &err);
    if (!rc)
        rc = mx_rpc_server_start(srv, &err);
    if (!rc && cfg.port_file[0])
        rc = mx_rpc_server_write_port_file(srv, cfg.port_file, &err);
    if (!rc) {
        fprintf(stderr, "attention-svc: stage %d/%d layers [%d, %d) serving on port %d%s%s\n", cfg.index, cfg.count,
                cfg.layer_begin, cfg.layer_end, mx_rpc_server_port(srv), cfg.next[0] ? ", next stage " : "",
                cfg.next);
        int sig = mx_rpc_wait_stop_signal(-1, &err);
        if (sig < 0)
            rc = sig;
        mx_rpc_server_shutdown(srv, 2000);
    }
    if (rc)
        fprintf(stderr, "attention-svc: %s\n", err.msg);
    mx_rpc_server_destroy(srv);
    stage_destroy(s);
    stage_config_free(&cfg);
    return rc ? 1 : 0;
}
