/* stage_metrics.c - the attention stage's metric families (stage_metrics.h). Per-replica
 * series are found once per replica slot and kept (replica slots may appear at run time with
 * DNS discovery, so a slot's series is made on its first attempt), so the observer called on
 * every expert attempt then only does atomic adds. */
#include "stage_metrics.h"

#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>

#include "mx_version.h"

#define STAGE_METRICS_MAX_REPLICAS 64

struct stage_metrics {
    mx_metrics *reg;
    mx_router *router;
    int layer_begin, layer_end, n_layers, n_experts, n_shards;
    mx_series *live, *kv_used, *kv_budget, *step_ok, *step_failed, *tokens, *batches_ok, *batches_failed;
    mx_metric *lat_f, *calls_f, *retries_f;
    /* per (shard, replica slot): [shard * STAGE_METRICS_MAX_REPLICAS + replica], NULL until
     * first needed */
    _Atomic(mx_series *) *lat, *calls, *retries;
    mx_series **routed;          /* [(layer - layer_begin) * n_experts + expert] */
    uint64_t *tokens_scratch;    /* [num_layers * n_experts], render thread only */
};

/* The series of family f for (shard, replica), cached in *slot (two threads racing on a
 * first use get the same series from the registry; either store is fine). */
static mx_series *replica_series(mx_metric *f, _Atomic(mx_series *) *slot, int shard, int replica)
{
    mx_series *s = atomic_load_explicit(slot, memory_order_acquire);
    if (s)
        return s;
    char a[16], b[16];
    snprintf(a, sizeof a, "%d", shard);
    snprintf(b, sizeof b, "%d", replica);
    s = mx_metric_with(f, a, b);
    atomic_store_explicit(slot, s, memory_order_release);
    return s;
}

static void on_attempt(void *ctx, mx_router_attempt_event ev, int shard, int replica, bool retry, bool ok,
                       double seconds)
{
    stage_metrics *m = ctx;
    if (shard < 0 || shard >= m->n_shards || replica < 0 || replica >= STAGE_METRICS_MAX_REPLICAS)
        return;
    size_t at = (size_t)shard * STAGE_METRICS_MAX_REPLICAS + (size_t)replica;
    if (ev == MX_ROUTER_ATTEMPT_SENT && retry)
        mx_counter_add(replica_series(m->retries_f, &m->retries[at], shard, replica), 1);
    else if (ev == MX_ROUTER_ATTEMPT_DONE && ok)
        mx_histogram_observe(replica_series(m->lat_f, &m->lat[at], shard, replica), seconds);
}

/* The router's own counters, copied at render. */
static void collect(void *ctx)
{
    stage_metrics *m = ctx;
    for (int sh = 0; sh < m->n_shards; sh++)
        for (int i = 0; i < mx_router_num_replicas(m->router, sh) && i < STAGE_METRICS_MAX_REPLICAS; i++) {
            mx_router_replica_load x;
            mx_router_replica_load_get(m->router, sh, i, &x);
            size_t at = (size_t)sh * STAGE_METRICS_MAX_REPLICAS + i;
            /* the first render of a slot also shows its (zero) retries and latency */
            replica_series(m->retries_f, &m->retries[at], sh, i);
            replica_series(m->lat_f, &m->lat[at], sh, i);
            mx_counter_set(replica_series(m->calls_f, &m->calls[at], sh, i), (double)x.calls);
        }
    mx_router_expert_tokens(m->router, m->tokens_scratch);
    for (int l = m->layer_begin; l < m->layer_end; l++)
        for (int e = 0; e < m->n_experts; e++)
            mx_counter_set(m->routed[(size_t)(l - m->layer_begin) * m->n_experts + e],
                           (double)m->tokens_scratch[(size_t)l * m->n_experts + e]);
}

static const double step_tokens_buckets[] = {1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192};

static int add_router(stage_metrics *m, mx_error *err)
{
    static const char *const sr[] = {"shard", "replica"};
    static const char *const le[] = {"layer", "expert"};
    mx_metric *routed;
    MX_TRY(mx_metrics_histogram(m->reg, "mx_stage_expert_call_seconds",
                                "Answered RunExperts calls to an expert replica: time from sending to the answer.", sr,
                                2, mx_metrics_fast_buckets, mx_metrics_fast_n, &m->lat_f, err));
    MX_TRY(mx_metrics_counter(m->reg, "mx_stage_expert_calls_total",
                              "RunExperts calls sent to an expert replica (retries and hedges included).", sr, 2,
                              &m->calls_f, err));
    MX_TRY(mx_metrics_counter(m->reg, "mx_stage_expert_retries_total",
                              "RunExperts calls sent to a replica as a retry after another replica failed or was late.",
                              sr, 2, &m->retries_f, err));
    MX_TRY(mx_metrics_counter(m->reg, "mx_stage_routed_tokens_total",
                              "Token slots routed to an expert of a layer of this stage (a token counts once per top-k "
                              "expert).", le, 2, &routed, err));
    int L;
    mx_router_dims(m->router, &L, &m->n_experts);
    m->n_shards = mx_router_num_shards(m->router);
    size_t n = (size_t)(m->n_shards ? m->n_shards : 1) * STAGE_METRICS_MAX_REPLICAS;
    m->lat = calloc(n, sizeof *m->lat);
    m->calls = calloc(n, sizeof *m->calls);
    m->retries = calloc(n, sizeof *m->retries);
    m->routed = calloc((size_t)(m->n_layers ? m->n_layers : 1) * m->n_experts, sizeof *m->routed);
    m->tokens_scratch = calloc((size_t)L * m->n_experts + 1, sizeof *m->tokens_scratch);
    if (!m->lat || !m->calls || !m->retries || !m->routed || !m->tokens_scratch)
        return mx_fail(err, MX_ENOMEM, "out of memory creating the stage's metrics");
    for (int l = m->layer_begin; l < m->layer_end; l++)
        for (int e = 0; e < m->n_experts; e++) {
            char a[16], b[16];
            snprintf(a, sizeof a, "%d", l);
            snprintf(b, sizeof b, "%d", e);
            m->routed[(size_t)(l - m->layer_begin) * m->n_experts + e] = mx_metric_with(routed, a, b);
        }
    MX_TRY(mx_metrics_on_render(m->reg, collect, m, err));
    mx_router_set_attempt_observer(m->router, on_attempt, m);
    return 0;
}

static int build(stage_metrics *m, int index, mx_error *err)
{
    char service[32];
    snprintf(service, sizeof service, "stage-%d", index);
    MX_TRY(mx_metrics_create(service, MX_VERSION, &m->reg, err));
    static const char *const outcome[] = {"outcome"};
    mx_metric *live, *kv_used, *kv_budget, *step, *tokens, *batches;
    MX_TRY(mx_metrics_gauge(m->reg, "mx_stage_live_sequences", "Sequences whose state this stage holds.", NULL, 0,
                            &live, err));
    MX_TRY(mx_metrics_gauge(m->reg, "mx_stage_kv_used_bytes", "KV cache bytes held by live sequences.", NULL, 0,
                            &kv_used, err));
    MX_TRY(mx_metrics_gauge(m->reg, "mx_stage_kv_budget_bytes", "KV cache budget of this stage (0 = none).", NULL, 0,
                            &kv_budget, err));
    MX_TRY(mx_metrics_counter(m->reg, "mx_stage_batches_total", "RunBatch calls computed here, by outcome.", outcome,
                              1, &batches, err));
    MX_TRY(mx_metrics_histogram(m->reg, "mx_stage_step_seconds",
                                "Time of this stage's own part of a RunBatch (its layers, experts included; not the "
                                "next stage), by outcome.",
                                outcome, 1, mx_metrics_fast_buckets, mx_metrics_fast_n, &step, err));
    MX_TRY(mx_metrics_histogram(m->reg, "mx_stage_step_tokens", "Tokens (rows) per RunBatch computed here.", NULL, 0,
                                step_tokens_buckets, sizeof step_tokens_buckets / sizeof *step_tokens_buckets,
                                &tokens, err));
    m->live = mx_metric_with(live);
    m->kv_used = mx_metric_with(kv_used);
    m->kv_budget = mx_metric_with(kv_budget);
    m->batches_ok = mx_metric_with(batches, "ok");
    m->batches_failed = mx_metric_with(batches, "error");
    m->step_ok = mx_metric_with(step, "ok");
    m->step_failed = mx_metric_with(step, "error");
    m->tokens = mx_metric_with(tokens);
    if (!m->live || !m->kv_used || !m->kv_budget || !m->batches_ok || !m->batches_failed || !m->step_ok ||
        !m->step_failed || !m->tokens)
        return mx_fail(err, MX_ENOMEM, "out of memory creating the stage's metrics");
    return m->router ? add_router(m, err) : 0;
}

int stage_metrics_create(int index, mx_router *router, int layer_begin, int layer_end, stage_metrics **out,
                         mx_error *err)
{
    stage_metrics *m = calloc(1, sizeof *m);
    if (!m)
        return mx_fail(err, MX_ENOMEM, "out of memory creating the stage's metrics");
    m->router = router;
    m->layer_begin = layer_begin;
    m->layer_end = layer_end;
    m->n_layers = layer_end - layer_begin;
    int rc = build(m, index, err);
    if (rc) {
        stage_metrics_destroy(m);
        return rc;
    }
    *out = m;
    return 0;
}

void stage_metrics_destroy(stage_metrics *m)
{
    if (!m)
        return;
    if (m->router)
        mx_router_set_attempt_observer(m->router, NULL, NULL);
    mx_metrics_destroy(m->reg);
    free(m->lat);
    free(m->calls);
    free(m->retries);
    free(m->routed);
    free(m->tokens_scratch);
    free(m);
}

mx_metrics *stage_metrics_registry(stage_metrics *m)
{
    return m ? m->reg : NULL;
}

void stage_metrics_step(stage_metrics *m, bool ok, double seconds, uint64_t tokens, int live, uint64_t kv_used,
                        uint64_t kv_budget)
{
    if (!m)
        return;
    mx_counter_add(ok ? m->batches_ok : m->batches_failed, 1);
    mx_histogram_observe(ok ? m->step_ok : m->step_failed, seconds);
    if (ok)
        mx_histogram_observe(m->tokens, (double)tokens);
    mx_gauge_set(m->live, live);
    mx_gauge_set(m->kv_used, (double)kv_used);
    mx_gauge_set(m->kv_budget, (double)kv_budget);
}

void stage_metrics_live(stage_metrics *m, int live, uint64_t kv_used)
{
    if (!m)
        return;
    mx_gauge_set(m->live, live);
    mx_gauge_set(m->kv_used, (double)kv_used);
}
