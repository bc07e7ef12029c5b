/* prober.c - the router's health-check thread: every 50 ms it sends
 * grpc.health.v1.Health/Check (service mx.internal.v1.ExpertShard) to each replica that is
 * due (ejected and past its backoff, never heard from, or idle for health_interval_ms), all
 * at once on one call set, and hands the answers to replicas.c. Never blocks a RunExperts. */
#include "router_internal.h"

#include <stdlib.h>
#include <time.h>

#include "core/clock.h"
#include "grpc/health/v1/health.pb-c.h"
#include "core/protocol.h"
#include "core/rpc/callset.h"

#define HEALTH_CHECK_METHOD "/grpc.health.v1.Health/Check"
#define PROBE_PERIOD_MS 50

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
    int total = 0;
    for (int s = 0; s < r->n_shards; s++)
        total += r->shards[s].n_replicas;
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
                struct timespec ts;
                clock_gettime(CLOCK_REALTIME, &ts);
                ts.tv_nsec += PROBE_PERIOD_MS * 1000000L;
                if (ts.tv_nsec >= 1000000000L) {
                    ts.tv_sec++;
                    ts.tv_nsec -= 1000000000L;
                }
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
