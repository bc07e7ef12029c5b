/* main.c - the expert-svc process: `expert-svc --config FILE`. Reads the config, loads the
 * owned experts, serves ExpertShard + health until SIGTERM/SIGINT, then shuts down
 * gracefully. All logic lives in shard*.c / svc_config.c; this file only wires them. */
#include <stdio.h>
#include <string.h>

#include "rpc/server.h"
#include "rpc/signals.h"
#include "rpc/tune.h"
#include "shard.h"
#include "svc_config.h"

static int usage(FILE *f)
{
    fprintf(f, "usage: expert-svc --config FILE | --check-config FILE\n"
               "Serves some experts of some MoE layers as mx.internal.v1.ExpertShard (see svc_config.h).\n");
    return f == stdout ? 0 : 2;
}

static int serve(const mx_expert_svc_config *c, mx_error *err)
{
    mx_expert_shard_options so = {.model_dir = c->model_dir, .backend = c->backend, .threads = c->threads,
                                  .shard_index = c->shard_index, .owns = &c->owns,
                                  .expert_dtype = c->expert_dtype};
    mx_expert_shard *shard = NULL;
    MX_TRY(mx_expert_shard_load(&so, &shard, err));
    mx_rpc_server_options o = {.address = c->listen, .worker_threads = c->rpc_workers};
    mx_rpc_server *srv = NULL;
    int rc = mx_rpc_server_create(&o, &srv, err);
    if (!rc)
        rc = mx_expert_shard_serve(shard, srv, err);
    if (!rc)
        rc = mx_rpc_server_start(srv, err);
    if (!rc) {
        fprintf(stderr, "expert-svc: shard %d serving %d experts (%.1f MiB of weights) on %s, port %d\n",
                c->shard_index, mx_expert_shard_count(shard), (double)mx_expert_shard_weight_bytes(shard) / (1 << 20),
                c->listen, mx_rpc_server_port(srv));
        int sig = mx_rpc_wait_stop_signal(-1, err);
        rc = sig < 0 ? sig : 0;
        fprintf(stderr, "expert-svc: signal %d, shutting down\n", sig);
        mx_rpc_server_shutdown(srv, c->shutdown_grace_ms);
    }
    mx_rpc_server_destroy(srv);
    mx_expert_shard_free(shard);
    return rc;
}

int main(int argc, char **argv)
{
    mx_error err = {0};
    const char *path = NULL;
    /* --check-config FILE: reads and checks the file, loads and starts nothing (deployment tests) */
    if (argc == 3 && !strcmp(argv[1], "--check-config")) {
        mx_expert_svc_config cc;
        int crc = mx_expert_svc_config_load(argv[2], &cc, &err);
        mx_expert_svc_config_free(&cc);
        if (crc) {
            fprintf(stderr, "expert-svc: %s\n", err.msg);
            return 1;
        }
        printf("expert-svc: %s: config OK\n", argv[2]);
        return 0;
    }
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--config") && i + 1 < argc)
            path = argv[++i];
        else if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h"))
            return usage(stdout);
        else
            return usage(stderr);
    }
    if (!path)
        return usage(stderr);
    mx_rpc_tune_malloc();
    if (mx_rpc_block_stop_signals(&err)) {
        fprintf(stderr, "expert-svc: %s\n", err.msg);
        return 1;
    }
    mx_expert_svc_config c;
    int rc = mx_expert_svc_config_load(path, &c, &err);
    if (!rc && serve(&c, &err))
        rc = mx_error_prefix(&err, "%s", path);
    mx_expert_svc_config_free(&c);
    if (rc) {
        fprintf(stderr, "expert-svc: %s\n", err.msg);
        return 1;
    }
    return 0;
}
