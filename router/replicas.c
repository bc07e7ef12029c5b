/* replicas.c - what the router knows about each replica of a shard: measured latency per
 * call size (p95 / p99 of the last successful calls), outlier ejection with a doubling
 * backoff, the health-probe schedule, Health/Watch news, the replica choice, shard liveness,
 * and the replica slots a shard's set changes through at run time (added, drained, closed).
 * Every function takes the shard's lock briefly (the pick holds it only to choose); none
 * does I/O. */
#include "router_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/clock.h"

void router_shard_init(router_shard *sh)
{
    pthread_mutex_init(&sh->mu, NULL);
    pthread_cond_init(&sh->watch_cv, NULL);
    atomic_init(&sh->next, 0);
    atomic_init(&sh->n_replicas, 0);
    atomic_init(&sh->resolve_asap, false);
    memset(sh->lat, 0, sizeof sh->lat);
}

void router_shard_destroy(router_shard *sh)
{
    pthread_cond_destroy(&sh->watch_cv);
    pthread_mutex_destroy(&sh->mu);
}

static int slot_state(const router_replica *rep) { return atomic_load(&rep->state); }

static int size_class(int rows)
{
    int c = 0;
    for (int lim = 2; rows > lim && c < ROUTER_SIZE_CLASSES - 1; lim *= 4)
        c++;
    return c;
}

static int cmp_float(const void *a, const void *b)
{
    float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

/* Recomputes a class's percentiles when enough new samples came in. Caller holds sh->mu. */
static void refresh(router_latency *l)
{
    if (l->fresh < 16 && l->p99 > 0)
        return;
    float tmp[ROUTER_LAT_SAMPLES];
    memcpy(tmp, l->ms, (size_t)l->n * sizeof *tmp);
    qsort(tmp, (size_t)l->n, sizeof *tmp, cmp_float);
    l->p95 = tmp[(l->n * 95) / 100 < l->n ? (l->n * 95) / 100 : l->n - 1];
    l->p99 = tmp[(l->n * 99) / 100 < l->n ? (l->n * 99) / 100 : l->n - 1];
    l->fresh = 0;
}

/* The smallest class >= rows' class with enough samples (bigger calls take at least as
 * long, so their percentiles are a safe stand-in), or NULL. Caller holds sh->mu. */
static router_latency *class_for(router_shard *sh, int rows)
{
    for (int c = size_class(rows); c < ROUTER_SIZE_CLASSES; c++)
        if (sh->lat[c].n >= ROUTER_LAT_MIN) {
            refresh(&sh->lat[c]);
            return &sh->lat[c];
        }
    return NULL;
}

double router_attempt_ms(const mx_router *r, router_shard *sh, int rows)
{
    const mx_router_config *c = &r->cfg;
    pthread_mutex_lock(&sh->mu);
    router_latency *l = class_for(sh, rows);
    double ms = l ? l->p99 * c->attempt_factor : (double)c->attempt_cap_ms;
    pthread_mutex_unlock(&sh->mu);
    if (ms < (double)c->attempt_floor_ms)
        ms = (double)c->attempt_floor_ms;
    if (ms > (double)c->attempt_cap_ms)
        ms = (double)c->attempt_cap_ms;
    return ms;
}

double router_hedge_ms(router_shard *sh, int rows)
{
    pthread_mutex_lock(&sh->mu);
    router_latency *l = class_for(sh, rows);
    double ms = l ? l->p95 : -1;
    pthread_mutex_unlock(&sh->mu);
    return ms;
}

int router_pick_replica(router_shard *sh, uint64_t tried)
{
    /* only a call's first copy moves the rotation: retries and hedges would otherwise move it
     * in step with the first copies and tie every first copy to the same replica */
    unsigned start = tried ? atomic_load(&sh->next) : atomic_fetch_add(&sh->next, 1u);
    int best = -1, best_load = 0, fallback = -1;
    double fallback_ok = -1;
    pthread_mutex_lock(&sh->mu);
    int n = sh->n_replicas;
    for (int i = 0; i < n; i++) {
        int idx = (int)((start + (unsigned)i) % (unsigned)n);
        if (tried >> idx & 1)
            continue;
        const router_replica *rep = &sh->replicas[idx];
        if (slot_state(rep) != ROUTER_SLOT_ACTIVE)
            continue;
        if (rep->ejected) {
            if (fallback < 0 || rep->last_ok_ms > fallback_ok) {
                fallback = idx;
                fallback_ok = rep->last_ok_ms;
            }
            continue;
        }
        int load = atomic_load(&rep->in_flight);
        if (best < 0 || load < best_load) {
            best = idx;
            best_load = load;
        }
    }
    pthread_mutex_unlock(&sh->mu);
    return best >= 0 ? best : fallback;
}

bool router_has_untried(const router_shard *sh, uint64_t tried)
{
    int n = sh->n_replicas;
    for (int i = 0; i < n; i++)
        if (!(tried >> i & 1) && slot_state(&sh->replicas[i]) == ROUTER_SLOT_ACTIVE)
            return true;
    return false;
}

bool router_shard_has_local(const router_shard *sh)
{
    int n = sh->n_replicas;
    for (int i = 0; i < n; i++)
        if (sh->replicas[i].local && slot_state(&sh->replicas[i]) == ROUTER_SLOT_ACTIVE)
            return true;
    return false;
}

void router_record_ok(mx_router *r, router_shard *sh, int replica, int rows, double latency_ms)
{
    (void)r;
    pthread_mutex_lock(&sh->mu);
    router_replica *rep = &sh->replicas[replica];
    rep->confirmed = true;
    rep->last_ok_ms = mx_now_ms();
    /* an answer from an ejected replica (the slow twin of a hedge, a late call) does not
     * take it back: only a probe does, so one lucky call cannot undo an ejection */
    if (!rep->ejected) {
        rep->n_ejections = 0;
        router_latency *l = &sh->lat[size_class(rows)];
        l->ms[l->pos] = (float)latency_ms;
        l->pos = (l->pos + 1) % ROUTER_LAT_SAMPLES;
        if (l->n < ROUTER_LAT_SAMPLES)
            l->n++;
        l->fresh++;
    }
    pthread_mutex_unlock(&sh->mu);
}

/* Ejects rep (again): the next probe after the doubled backoff. Caller holds sh->mu. */
static void eject_locked(mx_router *r, router_replica *rep, double now)
{
    const mx_router_config *c = &r->cfg;
    if (rep->n_ejections < 20)
        rep->n_ejections++;
    double wait = (double)c->eject_ms * (double)(1u << (rep->n_ejections - 1));
    if (wait > (double)c->eject_max_ms)
        wait = (double)c->eject_max_ms;
    if (!rep->ejected)
        atomic_fetch_add(&r->ejections, 1);
    rep->ejected = true;
    rep->eject_until_ms = now + wait;
}

void router_record_fault(mx_router *r, router_shard *sh, int replica, router_fault why)
{
    if (why == ROUTER_MISSED_DEADLINE)
        atomic_fetch_add(&r->deadline_misses, 1);
    pthread_mutex_lock(&sh->mu);
    router_replica *rep = &sh->replicas[replica];
    /* already ejected: a second fault of calls sent before the ejection changes nothing */
    if (!rep->ejected)
        eject_locked(r, rep, mx_now_ms());
    /* the replica may be gone for good: see whether DNS already says so */
    if (rep->discovered)
        atomic_store(&sh->resolve_asap, true);
    pthread_mutex_unlock(&sh->mu);
}

bool router_probe_due(mx_router *r, router_shard *sh, int replica, double now)
{
    const mx_router_config *c = &r->cfg;
    pthread_mutex_lock(&sh->mu);
    router_replica *rep = &sh->replicas[replica];
    int st = slot_state(rep);
    bool due = false;
    if (!rep->probing && (st == ROUTER_SLOT_ACTIVE || st == ROUTER_SLOT_PENDING)) {
        if (rep->ejected)
            due = now >= rep->eject_until_ms;
        else if (!rep->confirmed)
            due = true;
        else
            due = now - rep->last_ok_ms >= (double)c->health_interval_ms &&
                  now - rep->last_probe_ms >= (double)c->health_interval_ms;
    }
    if (due) {
        rep->probing = true;
        rep->last_probe_ms = now;
    }
    pthread_mutex_unlock(&sh->mu);
    return due;
}

void router_probe_result(mx_router *r, router_shard *sh, int replica, bool serving)
{
    double now = mx_now_ms();
    pthread_mutex_lock(&sh->mu);
    router_replica *rep = &sh->replicas[replica];
    rep->probing = false;
    if (serving) {
        rep->ejected = false;
        rep->confirmed = true;
        rep->last_ok_ms = now;
        if (slot_state(rep) == ROUTER_SLOT_PENDING)
            atomic_store(&rep->state, ROUTER_SLOT_ACTIVE);
    } else {
        eject_locked(r, rep, now);
        if (rep->discovered)
            atomic_store(&sh->resolve_asap, true);
    }
    pthread_mutex_unlock(&sh->mu);
}

void router_watch_result(mx_router *r, router_shard *sh, int replica, router_watch_news news)
{
    double now = mx_now_ms();
    pthread_mutex_lock(&sh->mu);
    router_replica *rep = &sh->replicas[replica];
    int st = slot_state(rep);
    if (st == ROUTER_SLOT_ACTIVE || st == ROUTER_SLOT_PENDING) {
        if (news == ROUTER_WATCH_SERVING) {
            /* as good as a SERVING probe (the stream's first message is the current status) */
            rep->ejected = false;
            rep->n_ejections = 0;
            rep->confirmed = true;
            rep->last_ok_ms = now;
            if (st == ROUTER_SLOT_PENDING)
                atomic_store(&rep->state, ROUTER_SLOT_ACTIVE);
        } else if (!rep->ejected) {
            /* NOT_SERVING (draining) or the stream broke (the peer died): no new calls from
             * now on; the prober's Check takes it back after the backoff */
            eject_locked(r, rep, now);
            if (rep->discovered)
                atomic_store(&sh->resolve_asap, true);
        }
    }
    pthread_mutex_unlock(&sh->mu);
}

int router_slot_add(router_shard *sh, int target, const char *address, mx_rpc_channel *ch, bool pending,
                    bool local)
{
    pthread_mutex_lock(&sh->mu);
    int n = sh->n_replicas, at = -1, any_free = -1;
    /* the FREE slot that last held this address (its counters read on), else a new slot, and
     * only when all are used a FREE slot of another address: a slot index keeps standing for
     * one address (per-replica metrics are keyed by it) as long as there is room */
    for (int i = 0; i < n && at < 0; i++)
        if (slot_state(&sh->replicas[i]) == ROUTER_SLOT_FREE) {
            if (!strcmp(sh->replicas[i].address, address))
                at = i;
            else if (any_free < 0)
                any_free = i;
        }
    if (at < 0)
        at = n < ROUTER_MAX_REPLICAS ? n : any_free;
    if (at >= 0) {
        router_replica *rep = &sh->replicas[at];
        rep->channel = ch;
        rep->target = target;
        snprintf(rep->address, sizeof rep->address, "%s", address);
        rep->discovered = pending;
        rep->local = local; /* before the state below publishes the slot */
        rep->confirmed = rep->ejected = rep->probing = false;
        rep->n_ejections = 0;
        rep->eject_until_ms = rep->last_ok_ms = rep->last_probe_ms = rep->drain_since_ms = 0;
        rep->watching = rep->watch_stop = false;
        rep->watch_stream = NULL;
        atomic_store(&rep->in_flight, 0);
        atomic_store(&rep->state, pending ? ROUTER_SLOT_PENDING : ROUTER_SLOT_ACTIVE);
        if (at == n)
            atomic_store(&sh->n_replicas, n + 1);
    }
    pthread_mutex_unlock(&sh->mu);
    return at;
}

void router_slot_sync(router_shard *sh, int target, const char (*addrs)[ROUTER_ADDR_MAX], int n, bool *found,
                      double now)
{
    for (int k = 0; k < n; k++)
        found[k] = false;
    pthread_mutex_lock(&sh->mu);
    int nr = sh->n_replicas;
    for (int i = 0; i < nr; i++) {
        router_replica *rep = &sh->replicas[i];
        int st = slot_state(rep);
        if (st == ROUTER_SLOT_FREE || st == ROUTER_SLOT_CLOSING)
            continue;
        /* another entry's replica at the same address is that replica: no second one */
        int k = 0;
        while (k < n && strcmp(addrs[k], rep->address) != 0)
            k++;
        if (rep->target != target) {
            if (k < n)
                found[k] = true;
            continue;
        }
        if (k < n) {
            found[k] = true;
            if (st == ROUTER_SLOT_DRAINING) { /* back before it was closed: check it again */
                rep->confirmed = rep->ejected = false;
                atomic_store(&rep->state, ROUTER_SLOT_PENDING);
            }
        } else if (st != ROUTER_SLOT_DRAINING) {
            rep->drain_since_ms = now;
            atomic_store(&rep->state, ROUTER_SLOT_DRAINING);
        }
    }
    pthread_mutex_unlock(&sh->mu);
}

int router_slot_reap(const mx_router *r, router_shard *sh, double now)
{
    /* a dispatch step names a replica (and may read its channel) only within its budget of
     * expert_timeout_ms: past that and the grace, nothing refers to the slot any more */
    double grace = (double)r->cfg.expert_timeout_ms + ROUTER_CLOSE_GRACE_MS;
    int found = -1;
    pthread_mutex_lock(&sh->mu);
    int n = sh->n_replicas;
    for (int i = 0; i < n && found < 0; i++) {
        router_replica *rep = &sh->replicas[i];
        if (slot_state(rep) == ROUTER_SLOT_DRAINING && !rep->probing && atomic_load(&rep->in_flight) == 0 &&
            now - rep->drain_since_ms >= grace) {
            atomic_store(&rep->state, ROUTER_SLOT_CLOSING);
            found = i;
        }
    }
    pthread_mutex_unlock(&sh->mu);
    return found;
}

void router_slot_release(router_shard *sh, int replica)
{
    pthread_mutex_lock(&sh->mu);
    router_replica *rep = &sh->replicas[replica];
    rep->channel = NULL;
    atomic_store(&rep->state, ROUTER_SLOT_FREE);
    pthread_mutex_unlock(&sh->mu);
}

int mx_router_shards_live(mx_router *r, int layer_begin, int layer_end, int *dead_shard)
{
    if (layer_begin < 0)
        layer_begin = 0;
    if (layer_end > r->num_layers)
        layer_end = r->num_layers;
    for (int s = 0; s < r->n_shards; s++) {
        router_shard *sh = &r->shards[s];
        bool used = false;
        for (int l = layer_begin; l < layer_end && !used; l++)
            used = mx_expert_set_has_layer(&sh->owns, l);
        if (!used)
            continue;
        bool live = false;
        pthread_mutex_lock(&sh->mu);
        for (int i = 0; i < sh->n_replicas && !live; i++)
            live = slot_state(&sh->replicas[i]) == ROUTER_SLOT_ACTIVE && sh->replicas[i].confirmed &&
                   !sh->replicas[i].ejected;
        pthread_mutex_unlock(&sh->mu);
        if (!live) {
            if (dead_shard)
                *dead_shard = s;
            return 0;
        }
    }
    return 1;
}
