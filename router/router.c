/* router.c - the router object: channels to every replica of every shard, the
 * (layer, expert) -> shard map, the timing defaults, the prober thread's life and the
 * counters. The per-layer dispatch is in dispatch.c, replica health in replicas.c, the
 * health checks in prober.c (none of them calls back here). Holds no per-request state. */
#include "router_internal.h"

#include <stdlib.h>
#include <string.h>

#include "core/limits.h"

/* The (layer, expert) -> holders map. A pair may be held by several shards (a hot expert
 * placed twice); the dispatch then sends each token group to the least-loaded holder. */
static int build_owner_map(mx_router *r, mx_error *err)
{
    size_t n = (size_t)r->num_layers * (size_t)r->num_experts;
    r->owner = malloc(n * sizeof *r->owner);
    r->hold_off = calloc(n + 1, sizeof *r->hold_off);
    r->expert_tokens = calloc(n, sizeof *r->expert_tokens);
    if (!r->owner || !r->hold_off || !r->expert_tokens)
        return mx_fail(err, MX_ENOMEM, "out of memory building the shard map");
    for (size_t i = 0; i < n; i++)
        r->owner[i] = -1;
    for (int s = 0; s < r->n_shards; s++) {
        const mx_expert_set *set = &r->shards[s].owns;
        int rc = mx_expert_set_check(set, r->num_layers, r->num_experts, err);
        if (rc)
            return mx_error_prefix(err, "expert shard %d", s);
        for (int l = 0; l < r->num_layers; l++) {
            if (!mx_expert_set_has_layer(set, l))
                continue;
            for (int i = 0; i < set->n_experts; i++) {
                size_t at = (size_t)l * r->num_experts + set->experts[i];
                if (r->owner[at] < 0)
                    r->owner[at] = s;
                r->hold_off[at + 1]++;
            }
        }
    }
    for (size_t i = 0; i < n; i++)
        r->hold_off[i + 1] += r->hold_off[i];
    r->hold = malloc((size_t)(r->hold_off[n] ? r->hold_off[n] : 1) * sizeof *r->hold);
    int *fill = calloc(n ? n : 1, sizeof *fill);
    if (!r->hold || !fill) {
        free(fill);
        return mx_fail(err, MX_ENOMEM, "out of memory building the shard map");
    }
    for (int s = 0; s < r->n_shards; s++) {
        const mx_expert_set *set = &r->shards[s].owns;
        for (int l = 0; l < r->num_layers; l++)
            if (mx_expert_set_has_layer(set, l))
                for (int i = 0; i < set->n_experts; i++) {
                    size_t at = (size_t)l * r->num_experts + set->experts[i];
                    r->hold[r->hold_off[at] + fill[at]++] = s;
                }
    }
    free(fill);
    return 0;
}

static int copy_set(const mx_expert_set *src, mx_expert_set *dst, mx_error *err)
{
    *dst = *src;
    dst->layers = NULL;
    dst->experts = NULL;
    if (src->n_layers > 0) {
        dst->layers = malloc((size_t)src->n_layers * sizeof *dst->layers);
        if (!dst->layers)
            return mx_fail(err, MX_ENOMEM, "out of memory copying the shard map");
        memcpy(dst->layers, src->layers, (size_t)src->n_layers * sizeof *dst->layers);
    }
    dst->experts = malloc((size_t)(src->n_experts ? src->n_experts : 1) * sizeof *dst->experts);
    if (!dst->experts)
        return mx_fail(err, MX_ENOMEM, "out of memory copying the shard map");
    memcpy(dst->experts, src->experts, (size_t)src->n_experts * sizeof *dst->experts);
    return 0;
}

static int create_shards(mx_router *r, const mx_router_config *cfg, mx_error *err)
{
    r->shards = calloc((size_t)cfg->n_shards, sizeof *r->shards);
    if (!r->shards)
        return mx_fail(err, MX_ENOMEM, "out of memory creating the router");
    r->n_shards = cfg->n_shards;
    for (int s = 0; s < cfg->n_shards; s++)
        router_shard_init(&r->shards[s]);
    for (int s = 0; s < cfg->n_shards; s++) {
        const mx_router_shard_config *c = &cfg->shards[s];
        router_shard *sh = &r->shards[s];
        if (c->n_replicas <= 0)
            return mx_fail(err, MX_EINVAL, "expert shard %d has no replicas", s);
        if (c->n_replicas > ROUTER_MAX_REPLICAS)
            return mx_fail(err, MX_EINVAL, "expert shard %d has %d replicas (at most %d)", s, c->n_replicas,
                           ROUTER_MAX_REPLICAS);
        MX_TRY(copy_set(&c->owns, &sh->owns, err));
        /* static replicas now, DNS targets by the resolver thread (resolver.c) */
        MX_TRY(router_targets_init(r, s, c, err));
    }
    return 0;
}

/* The timing knobs of src with defaults for zero fields, and its local host (shards are not
 * copied). */
static void set_timing(mx_router_config *dst, const mx_router_config *src)
{
    memset(dst, 0, sizeof *dst);
    dst->expert_timeout_ms = src->expert_timeout_ms > 0 ? src->expert_timeout_ms : 10000;
    dst->max_message_bytes = src->max_message_bytes > 0 ? src->max_message_bytes : MX_DEFAULT_MAX_MESSAGE_BYTES;
    dst->attempt_floor_ms = src->attempt_floor_ms > 0 ? src->attempt_floor_ms : 200;
    dst->attempt_cap_ms = src->attempt_cap_ms > 0 ? src->attempt_cap_ms : 2000;
    if (dst->attempt_cap_ms > dst->expert_timeout_ms)
        dst->attempt_cap_ms = dst->expert_timeout_ms;
    if (dst->attempt_floor_ms > dst->attempt_cap_ms)
        dst->attempt_floor_ms = dst->attempt_cap_ms;
    dst->attempt_factor = src->attempt_factor > 0 ? src->attempt_factor : 4.0;
    dst->hedge = src->hedge;
    dst->hedge_percent = src->hedge_percent > 0 ? src->hedge_percent : 10;
    dst->eject_ms = src->eject_ms > 0 ? src->eject_ms : 500;
    dst->eject_max_ms = src->eject_max_ms > 0 ? src->eject_max_ms : 5000;
    if (dst->eject_max_ms < dst->eject_ms)
        dst->eject_max_ms = dst->eject_ms;
    dst->health_interval_ms = src->health_interval_ms > 0 ? src->health_interval_ms : 1000;
    dst->probe_timeout_ms = src->probe_timeout_ms > 0 ? src->probe_timeout_ms : 500;
    dst->resolve_interval_ms = src->resolve_interval_ms > 0 ? src->resolve_interval_ms : 5000;
    /* a wildcard listen address says nothing of the address this host's shards are reached at */
    if (strcmp(src->local_host, "0.0.0.0") && strcmp(src->local_host, "::"))
        snprintf(dst->local_host, sizeof dst->local_host, "%s", src->local_host);
}

int mx_router_create(const mx_router_config *cfg, int num_layers, int hidden_size, int num_experts,
                     mx_backend *be, mx_router **out, mx_error *err)
{
    *out = NULL;
    if (!cfg || cfg->n_shards <= 0)
        return mx_fail(err, MX_EINVAL, "router: the shard map is empty");
    if (num_layers <= 0 || hidden_size <= 0 || num_experts <= 0)
        return mx_fail(err, MX_EINVAL, "router: bad model sizes (layers %d, hidden %d, experts %d)", num_layers,
                       hidden_size, num_experts);
    mx_router *r = calloc(1, sizeof *r);
    if (!r)
        return mx_fail(err, MX_ENOMEM, "out of memory creating the router");
    r->num_layers = num_layers;
    r->hidden = hidden_size;
    r->num_experts = num_experts;
    r->be = be;
    set_timing(&r->cfg, cfg);
    atomic_init(&r->calls, 0);
    atomic_init(&r->retries, 0);
    atomic_init(&r->failures, 0);
    atomic_init(&r->hedges, 0);
    atomic_init(&r->ejections, 0);
    atomic_init(&r->deadline_misses, 0);
    atomic_init(&r->probes, 0);
    int rc = create_shards(r, cfg, err);
    if (!rc)
        rc = build_owner_map(r, err);
    if (!rc)
        rc = router_prober_start(r, err);
    if (!rc)
        rc = router_resolver_start(r, err);
    if (rc) {
        mx_router_destroy(r);
        return rc;
    }
    *out = r;
    return 0;
}

int mx_router_check_coverage(const mx_router *r, int layer_begin, int layer_end, mx_error *err)
{
    if (layer_begin < 0 || layer_end > r->num_layers || layer_begin > layer_end)
        return mx_fail(err, MX_ERANGE, "router: layer range [%d, %d) is outside the model's %d layers", layer_begin,
                       layer_end, r->num_layers);
    for (int l = layer_begin; l < layer_end; l++)
        for (int e = 0; e < r->num_experts; e++)
            if (r->owner[(size_t)l * r->num_experts + e] < 0)
                return mx_fail(err, MX_ENOTFOUND, "router: no expert shard owns layer %d expert %d", l, e);
    return 0;
}

static int executor_run(void *ctx, int layer, const mx_tensor *x2, const int32_t *ids, const float *weights, int k,
                        mx_tensor *out, mx_error *err)
{
    return mx_router_run(ctx, layer, x2, ids, weights, k, out, err);
}

mx_moe_executor mx_router_executor(mx_router *r)
{
    mx_moe_executor ex = {executor_run, r};
    return ex;
}

void mx_router_get_stats(const mx_router *r, mx_router_stats *out)
{
    out->calls = atomic_load(&r->calls);
    out->retries = atomic_load(&r->retries);
    out->failures = atomic_load(&r->failures);
    out->hedges = atomic_load(&r->hedges);
    out->ejections = atomic_load(&r->ejections);
    out->deadline_misses = atomic_load(&r->deadline_misses);
    out->probes = atomic_load(&r->probes);
    out->resolves = atomic_load(&r->resolves);
    out->resolve_errors = atomic_load(&r->resolve_errors);
    out->replicas_added = atomic_load(&r->replicas_added);
    out->replicas_closed = atomic_load(&r->replicas_closed);
}

void mx_router_expert_tokens(const mx_router *r, uint64_t *tokens)
{
    size_t n = (size_t)r->num_layers * (size_t)r->num_experts;
    for (size_t i = 0; i < n; i++)
        tokens[i] = atomic_load_explicit(&r->expert_tokens[i], memory_order_relaxed);
}

void mx_router_dims(const mx_router *r, int *num_layers, int *num_experts)
{
    *num_layers = r->num_layers;
    *num_experts = r->num_experts;
}

int mx_router_num_shards(const mx_router *r)
{
    return r->n_shards;
}

int mx_router_num_replicas(const mx_router *r, int shard)
{
    return shard >= 0 && shard < r->n_shards ? r->shards[shard].n_replicas : 0;
}

void mx_router_replica_load_get(const mx_router *r, int shard, int replica, mx_router_replica_load *out)
{
    router_replica *rep = &r->shards[shard].replicas[replica];
    out->address = rep->address; /* kept after a drained replica's channel is closed */
    out->calls = atomic_load_explicit(&rep->calls_sent, memory_order_relaxed);
    out->rows = atomic_load_explicit(&rep->rows_sent, memory_order_relaxed);
    out->in_flight = atomic_load_explicit(&rep->in_flight, memory_order_relaxed);
}

void mx_router_set_attempt_observer(mx_router *r, mx_router_attempt_fn fn, void *ctx)
{
    r->observe_ctx = ctx;
    r->observe = fn;
}

void mx_router_destroy(mx_router *r)
{
    if (!r)
        return;
    router_prober_stop(r);
    router_targets_close(r); /* resolver and watch threads: nothing uses a channel after this */
    for (int s = 0; s < r->n_shards; s++) {
        router_shard *sh = &r->shards[s];
        for (int i = 0; i < sh->n_replicas; i++)
            mx_rpc_channel_destroy(sh->replicas[i].channel);
        free(sh->replicas);
        mx_expert_set_free(&sh->owns);
        router_shard_destroy(sh);
    }
    free(r->shards);
    free(r->owner);
    free(r->hold_off);
    free(r->hold);
    free(r->expert_tokens);
    free(r);
}
