/* bench_expert_rtt.c - per-layer MoE round trip through the router: expert shards served
 * in-process on loopback (experts 0-7 and 8-15 of a generated "medium" model cut to one
 * layer), one mx_router_run per iteration at batch 1 and batch 32, next to the same layer's
 * experts computed locally (mx_moe_local). Prints a table; writes the model to a temp dir. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bench_util.h"
#include "expert-svc/shard.h"
#include "core/model_writer.h"
#include "router/router.h"

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static int die(const char *what, const mx_error *err)
{
    fprintf(stderr, "bench_expert_rtt: %s: %s\n", what, err->msg);
    return 1;
}

int main(void)
{
    mx_error err = {0};
    char dir[] = "/tmp/mx_bench_rtt_XXXXXX";
    if (!mkdtemp(dir))
        return 1;
    mx_config cfg;
    if (mx_model_preset_config("medium", &cfg, &err))
        return die("preset", &err);
    cfg.num_hidden_layers = 1;
    if (mx_make_model_config(&cfg, dir, 7, &err))
        return die("make model", &err);
    int H = cfg.hidden_size, E = cfg.num_local_experts, k = cfg.num_experts_per_tok;

    /* two shards of half the experts each */
    mx_expert_shard *shards[2];
    mx_rpc_server *srv[2];
    int ports[2];
    for (int s = 0; s < 2; s++) {
        int ids[64];
        for (int i = 0; i < E / 2; i++)
            ids[i] = s * (E / 2) + i;
        mx_expert_set set = {.all_layers = true, .n_experts = E / 2, .experts = ids};
        mx_expert_shard_options o = {.model_dir = dir, .backend = "cpu", .shard_index = s, .owns = &set};
        mx_rpc_server_options so = {.address = "127.0.0.1:0"};
        if (mx_expert_shard_load(&o, &shards[s], &err) || mx_rpc_server_create(&so, &srv[s], &err) ||
            mx_expert_shard_serve(shards[s], srv[s], &err) || mx_rpc_server_start(srv[s], &err))
            return die("shard", &err);
        ports[s] = mx_rpc_server_port(srv[s]);
    }
    char a0[32], a1[32];
    snprintf(a0, sizeof a0, "127.0.0.1:%d", ports[0]);
    snprintf(a1, sizeof a1, "127.0.0.1:%d", ports[1]);
    char *r0[] = {a0}, *r1[] = {a1};
    int lo[64], hi[64];
    for (int i = 0; i < E / 2; i++) {
        lo[i] = i;
        hi[i] = E / 2 + i;
    }
    mx_router_shard_config sc[2] = {
        {.owns = {.all_layers = true, .n_experts = E / 2, .experts = lo}, .n_replicas = 1, .replicas = r0},
        {.owns = {.all_layers = true, .n_experts = E / 2, .experts = hi}, .n_replicas = 1, .replicas = r1},
    };
    mx_router_config rc = {.n_shards = 2, .shards = sc, .expert_timeout_ms = 10000};
    mx_router *r = NULL;
    if (mx_router_create(&rc, 1, H, E, NULL, &r, &err))
        return die("router", &err);

    /* the same experts locally, for the compute-only column */
    mx_weights *w = NULL;
    mx_backend *be = NULL;
    mx_model *m = NULL;
    mx_load_plan plan = {.layer_begin = 0, .layer_end = 1, .all_experts = true};
    if (mx_weights_load(dir, &plan, &w, &err) || mx_backend_cpu_create(0, &be, &err) || mx_model_create(w, be, &m, &err))
        return die("local model", &err);

    printf("model: medium preset, 1 layer: hidden %d, intermediate %d, %d experts, top-%d; 2 shards on loopback\n", H,
           cfg.intermediate_size, E, k);
    printf("%-6s %-8s %12s %12s %12s %14s\n", "batch", "iters", "rtt_p50_ms", "rtt_mean_ms", "local_ms", "overhead_ms");
    int batches[2] = {1, 32};
    for (int bi = 0; bi < 2; bi++) {
        int T = batches[bi], iters = T == 1 ? 200 : 40;
        float *x = malloc((size_t)T * H * sizeof *x), *out = malloc((size_t)T * H * sizeof *out);
        int32_t *ids = malloc((size_t)T * k * sizeof *ids);
        float *wt = malloc((size_t)T * k * sizeof *wt);
        for (int i = 0; i < T * H; i++)
            x[i] = (float)((i * 2654435761u) % 1000) / 1000.0f - 0.5f;
        for (int t = 0; t < T; t++)
            for (int j = 0; j < k; j++) {
                ids[t * k + j] = (t * 5 + j * 3) % E; /* spreads tokens over both shards */
                wt[t * k + j] = 1.0f / k;
            }
        mx_tensor xt = mx_tensor_2d(x, MX_DTYPE_F32, MX_DEVICE_CPU, T, H);
        mx_tensor ot = mx_tensor_2d(out, MX_DTYPE_F32, MX_DEVICE_CPU, T, H);
        double *rtt = malloc((size_t)iters * sizeof *rtt), local = 0;
        for (int it = -3; it < iters; it++) {
            memset(out, 0, (size_t)T * H * sizeof *out);
            double t0 = bench_now();
            if (mx_router_run(r, 0, &xt, ids, wt, k, &ot, &err))
                return die("router run", &err);
            if (it >= 0)
                rtt[it] = (bench_now() - t0) * 1e3;
        }
        for (int it = -3; it < iters; it++) {
            memset(out, 0, (size_t)T * H * sizeof *out);
            double t0 = bench_now();
            if (mx_moe_local(m, 0, &xt, ids, wt, k, &ot, &err))
                return die("local run", &err);
            if (it >= 0)
                local += (bench_now() - t0) * 1e3 / iters;
        }
        double mean = 0;
        for (int it = 0; it < iters; it++)
            mean += rtt[it] / iters;
        qsort(rtt, (size_t)iters, sizeof *rtt, cmp_double);
        printf("%-6d %-8d %12.3f %12.3f %12.3f %14.3f\n", T, iters, rtt[iters / 2], mean, local, rtt[iters / 2] - local);
        free(x);
        free(out);
        free(ids);
        free(wt);
        free(rtt);
    }
    mx_router_destroy(r);
    for (int s = 0; s < 2; s++) {
        mx_rpc_server_shutdown(srv[s], 0);
        mx_rpc_server_destroy(srv[s]);
        mx_expert_shard_free(shards[s]);
    }
    mx_model_free(m);
    be->destroy(be);
    mx_weights_free(w);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    return system(cmd) == 0 ? 0 : 1;
}
