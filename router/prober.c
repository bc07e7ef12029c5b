/* prober.c - the router's health checks: a thread that every 50 ms sends
 * grpc.health.v1.Health/Check (service mx.internal.v1.ExpertShard) to each replica that is
 * due (ejected and past its backoff, never heard from, or idle for health_interval_ms), all
 * at once on one call set; and a thread per replica holding a Health/Watch stream, so a
 * replica that turns NOT_SERVING (draining) or whose connection breaks (killed) gets no new
 * call from the moment the news arrives. Both hand what they learn to replicas.c. Never
 * blocks a RunExperts. */
#include "router_internal.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/clock.h"
#include "grpc/health/v1/health.pb-c.h"
#include "core/protocol.h"
#include "core/rpc/callset.h"

#define HEALTH_CHECK_METHOD "/grpc.health.v1.Health/Check"
#define HEALTH_WATCH_METHOD "/grpc.health.v1.Health/Watch"
#define PROBE_PERIOD_MS 50
#define WATCH_RETRY_MIN_MS 100      /* first wait before reopening a broken Watch; doubles */
#define WATCH_REFUSED_MS 10000      /* a server without Watch (or with no room for one) */

typedef struct probe_ref {
    int shard, replica;
} probe_ref;

/* SERVING, or a server without the health service at all (it answered, so it is up). */
static bool serving(const mx_rpc_result *res)
{
    if (res->status.code == GRPC_STATUS_UNIMPLEMENTED)
        return true;
    if (res->status.code != GRPC_STATUS_OK)
        return false;
    Grpc__Health__V1__HealthCheckResponse *m =
        grpc__health__v1__health_check_response__unpack(NULL, res->response.len, res->response.data);
    bool ok = m && m->status == GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING;
    if (m)
        protobuf_c_message_free_unpacked(&m->base, NULL);
    return ok;
}

/* One round: checks every due replica in parallel and waits for the answers (each bounded
 * by probe_timeout_ms). */
static void probe_round(mx_router *r, mx_rpc_callset *cs, probe_ref *refs, const uint8_t *req, size_t req_len)
{
    double now = mx_now_ms();
    int n = 0;
    for (int s = 0; s < r->n_shards; s++) {
        router_shard *sh = &r->shards[s];
        for (int i = 0; i < sh->n_replicas; i++) {
            if (!router_probe_due(r, sh, i, now))
                continue;
            refs[n] = (probe_ref){s, i};
            mx_error err = {0};
            /* our own backoff decides when to look again, not the channel's (up to 2 min) */
            mx_rpc_channel_reset_backoff(sh->replicas[i].channel);
            if (mx_rpc_callset_start(cs, sh->replicas[i].channel, HEALTH_CHECK_METHOD,
                                     mx_rpc_payload_copy(req, req_len), r->cfg.probe_timeout_ms, &refs[n], &err) < 0)
                router_probe_result(r, sh, i, false);
            else
                n++;
        }
    }
    atomic_fetch_add(&r->probes, (unsigned long long)n);
    int id;
    void *user;
    mx_rpc_result res;
    while (mx_rpc_callset_next(cs, -1, &id, &user, &res)) {
        probe_ref *ref = user;
        router_probe_result(r, &r->shards[ref->shard], ref->replica, serving(&res));
        mx_rpc_result_free(&res);
    }
}

static void *prober_main(void *arg)
{
    mx_router *r = arg;
    /* replica sets change at run time: room for every slot */
    int total = r->n_shards * ROUTER_MAX_REPLICAS;
    probe_ref *refs = calloc((size_t)total, sizeof *refs);
    mx_rpc_callset *cs = NULL;
    mx_error err = {0};
    Grpc__Health__V1__HealthCheckRequest hreq = GRPC__HEALTH__V1__HEALTH_CHECK_REQUEST__INIT;
    hreq.service = (char *)MX_EXPERT_SERVICE;
    size_t req_len = protobuf_c_message_get_packed_size(&hreq.base);
    uint8_t *req = malloc(req_len ? req_len : 1);
    if (refs && req && !mx_rpc_callset_create(total, &cs, &err)) {
        protobuf_c_message_pack(&hreq.base, req);
        for (;;) {
            pthread_mutex_lock(&r->stop_mu);
            bool stop = r->stop;
            if (!stop) {
                struct timespec ts = mx_wall_after_ms(PROBE_PERIOD_MS);
                pthread_cond_timedwait(&r->stop_cond, &r->stop_mu, &ts);
                stop = r->stop;
            }
            pthread_mutex_unlock(&r->stop_mu);
            if (stop)
                break;
            probe_round(r, cs, refs, req, req_len);
        }
    }
    /* without memory the router still routes; it only stops learning replicas' health */
    mx_rpc_callset_destroy(cs);
    free(req);
    free(refs);
    return NULL;
}

int router_prober_start(mx_router *r, mx_error *err)
{
    pthread_mutex_init(&r->stop_mu, NULL);
    pthread_cond_init(&r->stop_cond, NULL);
    r->stop = false;
    if (pthread_create(&r->prober, NULL, prober_main, r) != 0)
        return mx_fail(err, MX_ENOMEM, "router: cannot start the health-check thread");
    r->prober_started = true;
    return 0;
}

void router_prober_stop(mx_router *r)
{
    if (!r->prober_started)
        return;
    pthread_mutex_lock(&r->stop_mu);
    r->stop = true;
    pthread_cond_broadcast(&r->stop_cond);
    pthread_mutex_unlock(&r->stop_mu);
    pthread_join(r->prober, NULL);
    r->prober_started = false;
    pthread_mutex_destroy(&r->stop_mu);
    pthread_cond_destroy(&r->stop_cond);
}

/* The packed HealthCheckRequest for the expert service (NULL without memory). */
static uint8_t *health_request(size_t *len)
{
    Grpc__Health__V1__HealthCheckRequest hreq = GRPC__HEALTH__V1__HEALTH_CHECK_REQUEST__INIT;
    hreq.service = (char *)MX_EXPERT_SERVICE;
    *len = protobuf_c_message_get_packed_size(&hreq.base);
    uint8_t *req = malloc(*len ? *len : 1);
    if (req)
        protobuf_c_message_pack(&hreq.base, req);
    return req;
}

typedef struct watch_arg {
    mx_router *r;
    int shard, replica;
} watch_arg;

/* Waits up to ms on the shard's watch_cv; returns whether the watch is to stop. Caller holds
 * sh->mu. */
static bool watch_wait(router_shard *sh, router_replica *rep, double ms)
{
    struct timespec ts = mx_wall_after_ms(ms);
    while (!rep->watch_stop)
        if (pthread_cond_timedwait(&sh->watch_cv, &sh->mu, &ts) != 0)
            break;
    return rep->watch_stop;
}

/* One replica's Health/Watch: opened again after a break (backoff doubling from
 * WATCH_RETRY_MIN_MS to eject_max_ms) until router_watch_stop. */
static void *watch_main(void *arg)
{
    watch_arg a = *(watch_arg *)arg;
    free(arg);
    router_shard *sh = &a.r->shards[a.shard];
    router_replica *rep = &sh->replicas[a.replica];
    size_t req_len;
    uint8_t *req = health_request(&req_len);
    double backoff = WATCH_RETRY_MIN_MS;
    pthread_mutex_lock(&sh->mu);
    while (req && !rep->watch_stop) {
        mx_rpc_channel *ch = rep->channel; /* valid until this thread is joined */
        pthread_mutex_unlock(&sh->mu);
        mx_rpc_stream *st = NULL;
        mx_error err = {0};
        int got = 0, code = GRPC_STATUS_UNAVAILABLE;
        if (mx_rpc_stream_open(ch, HEALTH_WATCH_METHOD, mx_rpc_payload_copy(req, req_len), -1, &st, &err) == 0) {
            pthread_mutex_lock(&sh->mu);
            bool stop = rep->watch_stop;
            if (!stop)
                rep->watch_stream = st;
            pthread_mutex_unlock(&sh->mu);
            mx_rpc_bytes msg;
            while (!stop && mx_rpc_stream_read(st, &msg) == 1) {
                Grpc__Health__V1__HealthCheckResponse *m =
                    grpc__health__v1__health_check_response__unpack(NULL, msg.len, msg.data);
                if (m) {
                    got++;
                    router_watch_result(a.r, sh, a.replica,
                                        m->status == GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING
                                            ? ROUTER_WATCH_SERVING
                                            : ROUTER_WATCH_NOT_SERVING);
                    protobuf_c_message_free_unpacked(&m->base, NULL);
                }
                mx_rpc_bytes_free(&msg);
            }
            if (!stop)
                code = mx_rpc_stream_status(st)->code;
            pthread_mutex_lock(&sh->mu);
            rep->watch_stream = NULL;
            pthread_mutex_unlock(&sh->mu);
            mx_rpc_stream_close(st);
        }
        pthread_mutex_lock(&sh->mu);
        if (rep->watch_stop)
            break;
        pthread_mutex_unlock(&sh->mu);
        double wait;
        if (code == GRPC_STATUS_UNIMPLEMENTED || code == GRPC_STATUS_RESOURCE_EXHAUSTED) {
            wait = WATCH_REFUSED_MS; /* the prober's Check covers it meanwhile */
        } else {
            /* the peer went away (killed, shut down, unreachable) */
            router_watch_result(a.r, sh, a.replica, ROUTER_WATCH_LOST);
            if (got)
                backoff = WATCH_RETRY_MIN_MS;
            wait = backoff;
            backoff = backoff * 2 < (double)a.r->cfg.eject_max_ms ? backoff * 2 : (double)a.r->cfg.eject_max_ms;
        }
        pthread_mutex_lock(&sh->mu);
        if (watch_wait(sh, rep, wait))
            break;
    }
    pthread_mutex_unlock(&sh->mu);
    free(req);
    return NULL;
}

int router_watch_start(mx_router *r, int shard, int replica, mx_error *err)
{
    router_shard *sh = &r->shards[shard];
    router_replica *rep = &sh->replicas[replica];
    watch_arg *a = malloc(sizeof *a);
    if (!a)
        return mx_fail(err, MX_ENOMEM, "router: out of memory watching %s", rep->address);
    *a = (watch_arg){r, shard, replica};
    pthread_mutex_lock(&sh->mu);
    rep->watch_stop = false;
    pthread_mutex_unlock(&sh->mu);
    if (pthread_create(&rep->watch_thread, NULL, watch_main, a) != 0) {
        free(a);
        return mx_fail(err, MX_ENOMEM, "router: cannot start the health watch of %s", rep->address);
    }
    rep->watching = true;
    return 0;
}

void router_watch_stop(mx_router *r, int shard, int replica)
{
    router_shard *sh = &r->shards[shard];
    router_replica *rep = &sh->replicas[replica];
    if (!rep->watching)
        return;
    pthread_mutex_lock(&sh->mu);
    rep->watch_stop = true;
    if (rep->watch_stream)
        mx_rpc_stream_cancel(rep->watch_stream);
    pthread_cond_broadcast(&sh->watch_cv);
    pthread_mutex_unlock(&sh->mu);
    pthread_join(rep->watch_thread, NULL);
    rep->watching = false;
}
