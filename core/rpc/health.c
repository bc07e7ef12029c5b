/* health.c - grpc.health.v1.Health (Check, Watch) on top of server.h, with a per-service
 * status table, attached to a server as an add-on (server.c does not know it). Watch handlers
 * wait on a condition variable and wake up on changes, on cancellation (polled every 100 ms)
 * and on server shutdown. A Watch holds a worker for its whole life, so at most half of the
 * workers serve Watches (the rest are refused with RESOURCE_EXHAUSTED: use Check); each
 * Watch records what it last sent, so a drain can wait until every watcher was told. */
#include "health.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../clock.h"
#include "grpc/health/v1/health.pb-c.h"
#include "pb.h"
#include "server_internal.h"

#define CHECK_METHOD "/grpc.health.v1.Health/Check"
#define WATCH_METHOD "/grpc.health.v1.Health/Watch"

typedef struct entry {
    char *service;
    int status;
} entry;

/* One Watch in progress (on its handler's stack), linked while it runs. */
typedef struct watcher {
    const char *service;
    int last_sent;                   /* -1 before the first message */
    struct watcher *next;
} watcher;

struct mx_rpc_health {
    pthread_mutex_t mu;
    pthread_cond_t changed;          /* a status changed, or a watcher sent or left */
    entry *entries;
    int n_entries;
    int shutting_down;
    watcher *watchers;
    int n_watchers, max_watchers;
};

/* The status of service, or SERVICE_UNKNOWN. Caller holds h->mu. */
static int lookup(const mx_rpc_health *h, const char *service)
{
    for (int i = 0; i < h->n_entries; i++)
        if (strcmp(h->entries[i].service, service) == 0)
            return h->entries[i].status;
    return GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVICE_UNKNOWN;
}

static int set_locked(mx_rpc_health *h, const char *service, int status, mx_error *err)
{
    for (int i = 0; i < h->n_entries; i++) {
        if (strcmp(h->entries[i].service, service) == 0) {
            h->entries[i].status = status;
            return 0;
        }
    }
    entry *e = realloc(h->entries, (size_t)(h->n_entries + 1) * sizeof *e);
    if (!e)
        return mx_fail(err, MX_ENOMEM, "health: out of memory");
    h->entries = e;
    char *name = strdup(service);
    if (!name)
        return mx_fail(err, MX_ENOMEM, "health: out of memory");
    e[h->n_entries++] = (entry){name, status};
    return 0;
}

int mx_rpc_health_set(mx_rpc_server *srv, const char *service, mx_rpc_serving status,
                      mx_error *err)
{
    if (!service || (status != MX_RPC_SERVING && status != MX_RPC_NOT_SERVING))
        return mx_fail(err, MX_EINVAL, "health: bad service name or status %d", (int)status);
    mx_rpc_health *h = srv->health;
    if (!h)
        return mx_fail(err, MX_EINVAL, "health: not attached to this server (mx_rpc_health_attach)");
    pthread_mutex_lock(&h->mu);
    int rc = h->shutting_down ? 0 : set_locked(h, service, (int)status, err);
    pthread_cond_broadcast(&h->changed);
    pthread_mutex_unlock(&h->mu);
    return rc;
}

/* Parses the request; on failure sets INVALID_ARGUMENT on the call and returns NULL. */
static Grpc__Health__V1__HealthCheckRequest *parse(mx_rpc_call *call, const uint8_t *req,
                                                   size_t len)
{
    ProtobufCMessage *m;
    mx_error err;
    if (mx_rpc_pb_unpack(&grpc__health__v1__health_check_request__descriptor, req, len, &m,
                         &err) != 0) {
        mx_rpc_call_set_error(call, &err);
        return NULL;
    }
    return (Grpc__Health__V1__HealthCheckRequest *)m;
}

static int send_status(mx_rpc_call *call, int status)
{
    Grpc__Health__V1__HealthCheckResponse resp = GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__INIT;
    resp.status = status;
    mx_error err;
    int rc = mx_rpc_pb_write(call, &resp.base, &err);
    if (rc != 0 && rc != MX_ECANCELLED)
        mx_rpc_call_set_error(call, &err);
    return rc;
}

static void on_check(mx_rpc_call *call, const uint8_t *req, size_t len, void *user)
{
    mx_rpc_health *h = user;
    Grpc__Health__V1__HealthCheckRequest *r = parse(call, req, len);
    if (!r)
        return;
    pthread_mutex_lock(&h->mu);
    int status = lookup(h, r->service);
    pthread_mutex_unlock(&h->mu);
    if (status == GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVICE_UNKNOWN)
        mx_rpc_call_set_status(call, GRPC_STATUS_NOT_FOUND, "unknown service \"%s\"",
                               r->service);
    else
        send_status(call, status);
    protobuf_c_message_free_unpacked(&r->base, NULL);
}

static void on_watch(mx_rpc_call *call, const uint8_t *req, size_t len, void *user)
{
    mx_rpc_health *h = user;
    Grpc__Health__V1__HealthCheckRequest *r = parse(call, req, len);
    if (!r)
        return;
    watcher w = {r->service, -1, NULL};
    pthread_mutex_lock(&h->mu);
    if (h->n_watchers >= h->max_watchers) {
        int n = h->n_watchers;
        pthread_mutex_unlock(&h->mu);
        mx_rpc_call_set_status(call, GRPC_STATUS_RESOURCE_EXHAUSTED,
                               "health: %d Watch streams already hold half of the workers; use Check", n);
        protobuf_c_message_free_unpacked(&r->base, NULL);
        return;
    }
    w.next = h->watchers;
    h->watchers = &w;
    h->n_watchers++;
    for (;;) {
        int status = lookup(h, r->service);
        int ending = h->shutting_down;
        if (status != w.last_sent) {
            pthread_mutex_unlock(&h->mu);
            int rc = send_status(call, status);
            pthread_mutex_lock(&h->mu);
            if (rc != 0)
                break;
            w.last_sent = status;
            pthread_cond_broadcast(&h->changed); /* for mx_rpc_health_wait_told */
            continue;   /* re-read: it may have changed while we were sending */
        }
        if (ending) {
            mx_rpc_call_set_status(call, GRPC_STATUS_UNAVAILABLE, "server shutting down");
            break;
        }
        if (mx_rpc_call_cancelled(call))
            break;
        struct timespec ts = mx_wall_after_ms(100);
        pthread_cond_timedwait(&h->changed, &h->mu, &ts);
    }
    for (watcher **p = &h->watchers; *p; p = &(*p)->next)
        if (*p == &w) {
            *p = w.next;
            break;
        }
    h->n_watchers--;
    pthread_cond_broadcast(&h->changed);
    pthread_mutex_unlock(&h->mu);
    protobuf_c_message_free_unpacked(&r->base, NULL);
}

int mx_rpc_health_wait_told(mx_rpc_server *srv, double deadline_ms)
{
    mx_rpc_health *h = srv->health;
    if (!h)
        return 1;
    pthread_mutex_lock(&h->mu);
    int told = 0;
    for (;;) {
        told = 1;
        for (const watcher *w = h->watchers; w && told; w = w->next)
            told = w->last_sent == lookup(h, w->service);
        double left = deadline_ms - mx_now_ms();
        if (told || left <= 0)
            break;
        struct timespec ts = mx_wall_after_ms(left < 20 ? left : 20);
        pthread_cond_timedwait(&h->changed, &h->mu, &ts);
    }
    pthread_mutex_unlock(&h->mu);
    return told;
}

static void health_enter_shutdown(void *ctx)
{
    mx_rpc_health *h = ctx;
    pthread_mutex_lock(&h->mu);
    for (int i = 0; i < h->n_entries; i++)
        h->entries[i].status = MX_RPC_NOT_SERVING;
    h->shutting_down = 1;
    pthread_cond_broadcast(&h->changed);
    pthread_mutex_unlock(&h->mu);
}

static void health_destroy(void *ctx)
{
    mx_rpc_health *h = ctx;
    for (int i = 0; i < h->n_entries; i++)
        free(h->entries[i].service);
    free(h->entries);
    pthread_mutex_destroy(&h->mu);
    pthread_cond_destroy(&h->changed);
    free(h);
}

int mx_rpc_health_attach(mx_rpc_server *srv, mx_error *err)
{
    if (srv->health)
        return 0;
    mx_rpc_health *h = calloc(1, sizeof *h);
    if (!h)
        return mx_fail(err, MX_ENOMEM, "health: out of memory");
    pthread_mutex_init(&h->mu, NULL);
    pthread_cond_init(&h->changed, NULL);
    h->max_watchers = srv->pool.n_threads / 2;
    int rc = set_locked(h, "", MX_RPC_SERVING, err);
    /* the hook owns h from here: the server frees it even if a later step fails */
    if (rc == 0)
        rc = mx_rpc_server_add_hook(srv, (mx_rpc_server_hook){health_enter_shutdown, health_destroy, h}, err);
    else
        health_destroy(h);
    if (rc == 0) {
        srv->health = h;
        rc = mx_rpc_server_add_control(srv, CHECK_METHOD, on_check, h, err);
    }
    if (rc == 0)
        rc = mx_rpc_server_add_stream(srv, WATCH_METHOD, on_watch, h, err);
    return rc;
}
