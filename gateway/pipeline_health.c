/* pipeline_health.c - the watcher behind pipeline_health.h: one thread, one channel per stage,
 * a Check per stage per round (each bounded by the interval), the verdict written into the
 * gateway's health status every round. */
#include "pipeline_health.h"

#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <time.h>

#include "core/clock.h"
#include "core/protocol.h"
#include "core/rpc/client.h"
#include "core/rpc/health.h"
#include "core/rpc/pb.h"
#include "core/rpc/server_internal.h"
#include "grpc/health/v1/health.pb-c.h"

#define CHECK_METHOD "/grpc.health.v1.Health/Check"

/* Rounds in a row a stage may leave its Check unanswered (deadline passed) before it counts
 * as down: a stage busy with a long batch on a loaded machine misses one 500 ms check now and
 * then, and one miss used to turn the whole pipeline NOT_SERVING (and /health 503) for a
 * round. A stage that answers NOT_SERVING or refuses the connection is down at once. */
#define MISSED_ROUNDS_TO_DOWN 2

struct gw_pipeline_health {
    mx_rpc_server *srv;
    int n, interval_ms;
    mx_rpc_channel **ch;
    pthread_t thread;
    bool started, joined;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool stop;   /* under mu */
    int ok;      /* under mu: last round's verdict, -1 before the first */
    int *missed; /* per stage: rounds in a row without an answer; -1 before its first answer */
};

enum { STAGE_DOWN = 0, STAGE_SERVING = 1, STAGE_NO_ANSWER = 2 };

/* STAGE_SERVING when the stage answers SERVING for its service within timeout_ms,
 * STAGE_NO_ANSWER when the deadline passed first, STAGE_DOWN otherwise. */
static int stage_serving(mx_rpc_channel *ch, int64_t timeout_ms)
{
    Grpc__Health__V1__HealthCheckRequest rq = GRPC__HEALTH__V1__HEALTH_CHECK_REQUEST__INIT;
    rq.service = (char *)MX_STAGE_SERVICE;
    mx_rpc_payload pl;
    mx_rpc_result res = {0};
    mx_error err = {0};
    int verdict = STAGE_DOWN;
    int rc = mx_rpc_pb_pack(&rq.base, &pl, &err);
    if (!rc)
        rc = mx_rpc_unary(ch, CHECK_METHOD, pl, timeout_ms, &res);
    if (rc == MX_ETIMEOUT) {
        verdict = STAGE_NO_ANSWER;
    } else if (!rc) {
        ProtobufCMessage *m;
        if (!mx_rpc_pb_unpack(&grpc__health__v1__health_check_response__descriptor, res.response.data,
                              res.response.len, &m, &err)) {
            if (((Grpc__Health__V1__HealthCheckResponse *)m)->status ==
                GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING)
                verdict = STAGE_SERVING;
            protobuf_c_message_free_unpacked(m, NULL);
        }
    }
    mx_rpc_result_free(&res);
    return verdict;
}

/* Whether stage i counts as up after this round's verdict (updates its miss count): an
 * unanswered check is forgiven up to MISSED_ROUNDS_TO_DOWN - 1 rounds in a row, but only for
 * a stage that has answered before (one that never did is not up yet). */
static int stage_up(gw_pipeline_health *w, int i, int verdict)
{
    if (verdict == STAGE_SERVING) {
        w->missed[i] = 0;
        return 1;
    }
    if (verdict == STAGE_DOWN) {
        w->missed[i] = -1;
        return 0;
    }
    if (w->missed[i] < 0)
        return 0;
    return ++w->missed[i] < MISSED_ROUNDS_TO_DOWN;
}

static void *watch(void *arg)
{
    gw_pipeline_health *w = arg;
    for (;;) {
        double t0 = mx_now_ms();
        int ok = 1;
        /* the first stage that is down decides: the pipeline is incomplete */
        for (int i = 0; i < w->n && ok; i++)
            ok = stage_up(w, i, stage_serving(w->ch[i], w->interval_ms));
        pthread_mutex_lock(&w->mu);
        w->ok = ok;
        pthread_mutex_unlock(&w->mu);
        /* every round, not on change only: the skeleton sets SERVING once the server starts,
         * which may come after a first round that found a stage down */
        mx_error err = {0};
        (void)mx_rpc_health_set(w->srv, MX_GENERATION_SERVICE, ok ? MX_RPC_SERVING : MX_RPC_NOT_SERVING, &err);
        double wait = w->interval_ms - (mx_now_ms() - t0);
        pthread_mutex_lock(&w->mu);
        if (!w->stop && wait > 0) {
            struct timespec ts;
            clock_gettime(CLOCK_REALTIME, &ts);
            long long ns = ts.tv_nsec + (long long)(wait * 1e6);
            ts.tv_sec += (time_t)(ns / 1000000000LL);
            ts.tv_nsec = (long)(ns % 1000000000LL);
            pthread_cond_timedwait(&w->cv, &w->mu, &ts);
        }
        bool stop = w->stop;
        pthread_mutex_unlock(&w->mu);
        if (stop)
            return NULL;
    }
}

/* Stops the thread (idempotent): on the server's shutdown, before the drain, and at destroy. */
static void halt(void *ctx)
{
    gw_pipeline_health *w = ctx;
    if (!w->started || w->joined)
        return;
    pthread_mutex_lock(&w->mu);
    w->stop = true;
    pthread_cond_signal(&w->cv);
    pthread_mutex_unlock(&w->mu);
    pthread_join(w->thread, NULL);
    w->joined = true;
}

static void destroy(void *ctx)
{
    gw_pipeline_health *w = ctx;
    halt(w);
    for (int i = 0; i < w->n; i++)
        mx_rpc_channel_destroy(w->ch[i]);
    free(w->ch);
    free(w->missed);
    pthread_mutex_destroy(&w->mu);
    pthread_cond_destroy(&w->cv);
    free(w);
}

int gw_pipeline_health_attach(const char (*stages)[256], int n, mx_rpc_server *srv, int interval_ms,
                              gw_pipeline_health **out, mx_error *err)
{
    if (out)
        *out = NULL;
    gw_pipeline_health *w = calloc(1, sizeof *w);
    if (!w || !(w->ch = calloc((size_t)(n > 0 ? n : 1), sizeof *w->ch)) ||
        !(w->missed = malloc((size_t)(n > 0 ? n : 1) * sizeof *w->missed))) {
        if (w)
            free(w->ch);
        free(w);
        return mx_fail(err, MX_ENOMEM, "out of memory");
    }
    for (int i = 0; i < n; i++)
        w->missed[i] = -1;
    w->srv = srv;
    w->n = n;
    w->interval_ms = interval_ms > 0 ? interval_ms : 500;
    w->ok = -1;
    pthread_mutex_init(&w->mu, NULL);
    pthread_cond_init(&w->cv, NULL);
    int rc = 0;
    for (int i = 0; i < n && !rc; i++)
        rc = mx_rpc_channel_create(stages[i], NULL, &w->ch[i], err);
    if (!rc)
        rc = mx_rpc_server_add_hook(srv, (mx_rpc_server_hook){halt, destroy, w}, err);
    if (rc) {
        destroy(w);
        return rc;
    }
    /* the hook owns w from here: a failed start is freed with the server */
    if (pthread_create(&w->thread, NULL, watch, w))
        return mx_fail(err, MX_ENOMEM, "cannot start the stage health watcher");
    w->started = true;
    if (out)
        *out = w;
    return 0;
}

int gw_pipeline_health_ok(gw_pipeline_health *w)
{
    pthread_mutex_lock(&w->mu);
    int ok = w->ok;
    pthread_mutex_unlock(&w->mu);
    return ok;
}
