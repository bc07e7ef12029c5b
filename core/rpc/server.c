/* server.c - server lifecycle, the completion-queue poller and call dispatch.
 * One poller thread turns gRPC completions into tag callbacks; it never runs service code.
 * Handlers run on a fixed pool of worker threads fed by a FIFO of ready calls. */
#include "server_internal.h"

#include <grpc/grpc_security.h>
#include <grpc/support/alloc.h>
#include <grpc/support/time.h>
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "buffer.h"
#include "core/limits.h"

#define DEFAULT_WORKERS 8
#define CONTROL_WORKERS 2
#define RETRY_PUSHBACK_MS 1000
#define RETRY_PUSHBACK_STR "1000"

static void post_request_slot(mx_rpc_server *srv);

/* ---- call references and freeing ---- */

static void call_free(mx_rpc_call *c)
{
    mx_rpc_server *srv = c->srv;
    if (c->call)
        grpc_call_unref(c->call);
    grpc_call_details_destroy(&c->details);
    grpc_metadata_array_destroy(&c->request_md);
    if (c->request_buffer)
        grpc_byte_buffer_destroy(c->request_buffer);
    if (c->unary_reply)
        grpc_byte_buffer_destroy(c->unary_reply);
    mx_rpc_bytes_free(&c->request);
    if (c->peer)
        gpr_free(c->peer);
    pthread_mutex_destroy(&c->mu);
    pthread_cond_destroy(&c->cond);
    free(c);
    pthread_mutex_lock(&srv->mu);
    srv->live_calls--;
    pthread_cond_broadcast(&srv->cond);
    pthread_mutex_unlock(&srv->mu);
}

/* A burst of large requests leaves freed memory in the heap (the trim threshold is high,
 * tune.c, and gRPC frees a call's buffers after its handler returns): once a second, if calls
 * ran since the last trim and no service handler is running now, give it back. */
static void maybe_trim(mx_rpc_server *srv, double *next_ms)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    double now = ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
    if (now < *next_ms)
        return;
    *next_ms = now + 1000;
    pthread_mutex_lock(&srv->mu);
    int trim = srv->ran_since_trim && srv->pool.busy == 0 && !srv->pool.head;
    if (trim)
        srv->ran_since_trim = 0;
    pthread_mutex_unlock(&srv->mu);
    if (trim)
        malloc_trim(0);
}

void mx_rpc_call_unref(mx_rpc_call *c)
{
    pthread_mutex_lock(&c->mu);
    int left = --c->refs;
    pthread_mutex_unlock(&c->mu);
    if (left == 0)
        call_free(c);
}

/* ---- status sent from the poller (unknown method, missing request) ---- */

static void on_async_status(mx_rpc_tag *tag, int ok)
{
    (void)ok;
    mx_rpc_call *c = (mx_rpc_call *)((char *)tag - offsetof(mx_rpc_call, tag_async_status));
    mx_rpc_call_unref(c);
}

static void send_status_async(mx_rpc_call *c, grpc_status_code code, const char *msg)
{
    grpc_op ops[2];
    memset(ops, 0, sizeof ops);
    snprintf(c->status_message, sizeof c->status_message, "%s", msg);
    grpc_slice details = grpc_slice_from_copied_string(c->status_message);
    ops[0].op = GRPC_OP_SEND_INITIAL_METADATA;
    ops[1].op = GRPC_OP_SEND_STATUS_FROM_SERVER;
    ops[1].data.send_status_from_server.status = code;
    ops[1].data.send_status_from_server.status_details = &details;
    /* gRPC's retry policy waits this long before a retry (grpc-retry-pushback-ms) */
    grpc_metadata md;
    memset(&md, 0, sizeof md);
    md.key = grpc_slice_from_static_string("grpc-retry-pushback-ms");
    md.value = grpc_slice_from_static_string(RETRY_PUSHBACK_STR);
    if (code == GRPC_STATUS_RESOURCE_EXHAUSTED) {
        ops[1].data.send_status_from_server.trailing_metadata_count = 1;
        ops[1].data.send_status_from_server.trailing_metadata = &md;
    }
    if (grpc_call_start_batch(c->call, ops, 2, &c->tag_async_status, NULL) != GRPC_CALL_OK)
        mx_rpc_call_unref(c);
    grpc_slice_unref(details);
}

/* ---- worker pools ---- */

static void enqueue(mx_rpc_pool *p, mx_rpc_call *c)
{
    mx_rpc_server *srv = p->srv;
    pthread_mutex_lock(&srv->mu);
    c->next = NULL;
    if (p->tail)
        p->tail->next = c;
    else
        p->head = c;
    p->tail = c;
    p->n_queued++;
    /* one call, one worker: waking the whole pool would make every idle worker take the core
     * only to find the queue empty again (several context switches per expert call) */
    pthread_cond_signal(&p->ready);
    pthread_mutex_unlock(&srv->mu);
}

static void *worker_main(void *arg)
{
    mx_rpc_pool *p = arg;
    mx_rpc_server *srv = p->srv;
    /* named so that top -H, perf and gdb tell a handler from gRPC's own threads */
    pthread_setname_np(pthread_self(), p == &srv->control ? "mx-rpc-control" : "mx-rpc-worker");
    for (;;) {
        pthread_mutex_lock(&srv->mu);
        while (!p->head && !srv->workers_stop)
            pthread_cond_wait(&p->ready, &srv->mu);
        mx_rpc_call *c = p->head;
        if (!c) {
            pthread_mutex_unlock(&srv->mu);
            return NULL;
        }
        p->head = c->next;
        if (!p->head)
            p->tail = NULL;
        p->n_queued--;
        p->busy++;
        pthread_mutex_unlock(&srv->mu);

        if (!mx_rpc_call_cancelled(c))
            c->method->handler(c, c->request.data, c->request.len, c->method->user);
        else
            mx_rpc_call_set_status(c, GRPC_STATUS_CANCELLED, "call cancelled before it ran");
        /* the handler's cancel callback may point into its frame, gone now */
        pthread_mutex_lock(&c->mu);
        c->on_cancel = NULL;
        pthread_mutex_unlock(&c->mu);
        mx_rpc_call_send_final(c);
        pthread_mutex_lock(&srv->mu);
        p->busy--;
        srv->ran_since_trim = 1;
        pthread_mutex_unlock(&srv->mu);
        mx_rpc_call_unref(c);
    }
}

static int pool_start(mx_rpc_server *srv, mx_rpc_pool *p, mx_error *err)
{
    p->threads = calloc((size_t)(p->n_threads > 0 ? p->n_threads : 1), sizeof *p->threads);
    if (!p->threads)
        return mx_fail(err, MX_ENOMEM, "rpc server: out of memory");
    int want = p->n_threads;
    p->n_threads = 0;
    for (int i = 0; i < want; i++) {
        if (pthread_create(&p->threads[i], NULL, worker_main, p) != 0)
            return mx_fail(err, MX_ENOMEM, "rpc server: cannot start worker thread %d", i);
        p->n_threads++;
    }
    (void)srv;
    return 0;
}

/* ---- tag callbacks run by the poller ---- */

static void on_close(mx_rpc_tag *tag, int ok)
{
    (void)ok;
    mx_rpc_call *c = (mx_rpc_call *)((char *)tag - offsetof(mx_rpc_call, tag_close));
    if (c->close_cancelled) {
        atomic_store(&c->cancelled, 1);
        /* wake a handler asleep on its own condition (mx_rpc_call_on_cancel); the store above
         * comes first, so a handler that looks once woken sees the call cancelled */
        pthread_mutex_lock(&c->mu);
        if (c->on_cancel)
            c->on_cancel(c->on_cancel_arg);
        c->on_cancel = NULL;
        pthread_mutex_unlock(&c->mu);
    }
    mx_rpc_call_unref(c);
}

static void on_request(mx_rpc_tag *tag, int ok)
{
    mx_rpc_call *c = (mx_rpc_call *)((char *)tag - offsetof(mx_rpc_call, tag_recv));
    if (!ok || !c->request_buffer) {
        send_status_async(c, ok ? GRPC_STATUS_INVALID_ARGUMENT : GRPC_STATUS_CANCELLED,
                          ok ? "the call carried no request message" : "call failed");
        return;
    }
    if (mx_rpc_bytes_from_buffer(c->request_buffer, &c->request) != 0) {
        send_status_async(c, GRPC_STATUS_INVALID_ARGUMENT,
                          "request message could not be read (unsupported compression?)");
        return;
    }
    mx_rpc_server *srv = c->srv;
    if (c->method->control) {
        enqueue(&srv->control, c);
        return;
    }
    /* Bounded admission: a call that would wait behind max_queued_calls others is refused at
     * once with a retry hint, so any number of clients costs at most (workers + bound) x
     * max_message_bytes of requests. */
    pthread_mutex_lock(&srv->mu);
    int queued = srv->pool.n_queued, full = srv->max_queued_calls > 0 && queued >= srv->max_queued_calls;
    pthread_mutex_unlock(&srv->mu);
    if (full) {
        char msg[MX_ERROR_MSG_MAX];
        snprintf(msg, sizeof msg, "server busy: %d calls are waiting for a worker; retry after %d ms", queued,
                 RETRY_PUSHBACK_MS);
        send_status_async(c, GRPC_STATUS_RESOURCE_EXHAUSTED, msg);
        return;
    }
    enqueue(&srv->pool, c);
}

static const mx_rpc_method *find_method(const mx_rpc_server *srv, const grpc_slice name)
{
    size_t len = GRPC_SLICE_LENGTH(name);
    for (int i = 0; i < srv->n_methods; i++) {
        const char *m = srv->methods[i].name;
        if (strlen(m) == len && memcmp(m, GRPC_SLICE_START_PTR(name), len) == 0)
            return &srv->methods[i];
    }
    return NULL;
}

static void on_new_call(mx_rpc_tag *tag, int ok)
{
    mx_rpc_call *c = (mx_rpc_call *)((char *)tag - offsetof(mx_rpc_call, tag_new));
    mx_rpc_server *srv = c->srv;
    if (!ok) {              /* server shutting down: the slot is returned unused */
        call_free(c);
        return;
    }
    post_request_slot(srv); /* keep one slot posted while this call is handled */

    size_t n = GRPC_SLICE_LENGTH(c->details.method);
    if (n >= sizeof c->method_name)
        n = sizeof c->method_name - 1;
    memcpy(c->method_name, GRPC_SLICE_START_PTR(c->details.method), n);
    c->method_name[n] = '\0';
    c->peer = grpc_call_get_peer(c->call);
    c->method = find_method(srv, c->details.method);
    c->refs = 2;

    grpc_op op;
    memset(&op, 0, sizeof op);
    op.op = GRPC_OP_RECV_CLOSE_ON_SERVER;
    op.data.recv_close_on_server.cancelled = &c->close_cancelled;
    if (grpc_call_start_batch(c->call, &op, 1, &c->tag_close, NULL) != GRPC_CALL_OK)
        c->refs--;

    if (!c->method) {
        char msg[MX_ERROR_MSG_MAX];
        snprintf(msg, sizeof msg, "unknown method %s", c->method_name);
        send_status_async(c, GRPC_STATUS_UNIMPLEMENTED, msg);
        return;
    }
    memset(&op, 0, sizeof op);
    op.op = GRPC_OP_RECV_MESSAGE;
    op.data.recv_message.recv_message = &c->request_buffer;
    if (grpc_call_start_batch(c->call, &op, 1, &c->tag_recv, NULL) != GRPC_CALL_OK)
        send_status_async(c, GRPC_STATUS_INTERNAL, "could not start reading the request");
}

static void post_request_slot(mx_rpc_server *srv)
{
    pthread_mutex_lock(&srv->mu);
    int stopping = srv->stopping;
    if (!stopping)
        srv->live_calls++;
    pthread_mutex_unlock(&srv->mu);
    if (stopping)
        return;
    mx_rpc_call *c = calloc(1, sizeof *c);
    if (!c) {   /* out of memory: no new calls until memory returns; nothing else to do */
        pthread_mutex_lock(&srv->mu);
        srv->live_calls--;
        pthread_mutex_unlock(&srv->mu);
        return;
    }
    c->srv = srv;
    c->tag_new.done = on_new_call;
    c->tag_recv.done = on_request;
    c->tag_close.done = on_close;
    c->tag_async_status.done = on_async_status;
    c->status = GRPC_STATUS_OK;
    pthread_mutex_init(&c->mu, NULL);
    pthread_cond_init(&c->cond, NULL);
    grpc_call_details_init(&c->details);
    grpc_metadata_array_init(&c->request_md);
    /* A generic slot receives every method, so unknown ones are answered instead of hanging
     * until their deadline; dispatch happens in on_new_call. */
    if (grpc_server_request_call(srv->server, &c->call, &c->details, &c->request_md, srv->cq,
                                 srv->cq, &c->tag_new) != GRPC_CALL_OK)
        call_free(c);
}

static void on_shutdown(mx_rpc_tag *tag, int ok)
{
    (void)ok;
    mx_rpc_server *srv = (mx_rpc_server *)((char *)tag - offsetof(mx_rpc_server, tag_shutdown));
    pthread_mutex_lock(&srv->mu);
    srv->shutdown_done = 1;
    pthread_cond_broadcast(&srv->cond);
    pthread_mutex_unlock(&srv->mu);
}

static void *poller_main(void *arg)
{
    mx_rpc_server *srv = arg;
    double next_trim_ms = 0;
    pthread_setname_np(pthread_self(), "mx-rpc-poller");
    for (;;) {
        grpc_event ev = grpc_completion_queue_next(
            srv->cq, gpr_time_add(gpr_now(GPR_CLOCK_MONOTONIC), gpr_time_from_millis(1000, GPR_TIMESPAN)), NULL);
        if (ev.type == GRPC_QUEUE_SHUTDOWN)
            return NULL;
        maybe_trim(srv, &next_trim_ms);
        if (ev.type == GRPC_OP_COMPLETE) {
            mx_rpc_tag *tag = ev.tag;
            tag->done(tag, ev.success);
        }
    }
}

/* ---- public API ---- */

int mx_rpc_server_create(const mx_rpc_server_options *opts, mx_rpc_server **out,
                         mx_error *err)
{
    *out = NULL;
    if (!opts || !opts->address || !opts->address[0])
        return mx_fail(err, MX_EINVAL, "rpc server: no address given");
    if (opts->max_message_bytes < 0 || opts->worker_threads < 0 || opts->keepalive_time_ms < 0
        || opts->keepalive_timeout_ms < 0 || opts->min_client_ping_ms < 0 || opts->max_queued_calls < 0
        || opts->write_timeout_ms < 0)
        return mx_fail(err, MX_EINVAL, "rpc server: negative option value");
    mx_rpc_server *srv = calloc(1, sizeof *srv);
    if (!srv)
        return mx_fail(err, MX_ENOMEM, "rpc server: out of memory");
    grpc_init();
    pthread_mutex_init(&srv->mu, NULL);
    pthread_cond_init(&srv->cond, NULL);
    srv->tag_shutdown.done = on_shutdown;
    srv->pool = (mx_rpc_pool){.srv = srv, .n_threads = opts->worker_threads ? opts->worker_threads : DEFAULT_WORKERS};
    srv->control = (mx_rpc_pool){.srv = srv, .n_threads = CONTROL_WORKERS};
    pthread_cond_init(&srv->pool.ready, NULL);
    pthread_cond_init(&srv->control.ready, NULL);
    srv->max_queued_calls = opts->max_queued_calls;
    srv->write_timeout_ms = opts->write_timeout_ms;

    mx_rpc_args a;
    mx_rpc_args_fill(&a, opts->max_message_bytes ? opts->max_message_bytes
                                                 : MX_DEFAULT_MAX_MESSAGE_BYTES,
                     opts->keepalive_time_ms ? opts->keepalive_time_ms : MX_KEEPALIVE_TIME_MS,
                     opts->keepalive_timeout_ms ? opts->keepalive_timeout_ms : MX_KEEPALIVE_TIMEOUT_MS,
                     opts->min_client_ping_ms ? opts->min_client_ping_ms : MX_MIN_CLIENT_PING_MS);
    srv->server = grpc_server_create(&a.args, NULL);
    srv->cq = grpc_completion_queue_create_for_next(NULL);
    grpc_server_register_completion_queue(srv->server, srv->cq, NULL);
    grpc_server_credentials *creds = grpc_insecure_server_credentials_create();
    srv->port = grpc_server_add_http2_port(srv->server, opts->address, creds);
    grpc_server_credentials_release(creds);
    if (srv->port <= 0) {
        mx_rpc_server_destroy(srv);
        return mx_fail(err, MX_EUNAVAILABLE, "rpc server: cannot listen on %s", opts->address);
    }
    *out = srv;
    return 0;
}

int mx_rpc_server_port(const mx_rpc_server *srv) { return srv->port; }

int mx_rpc_server_add_hook(mx_rpc_server *srv, mx_rpc_server_hook hook, mx_error *err)
{
    if (srv->started || srv->n_hooks == MX_RPC_MAX_HOOKS)
        return mx_fail(err, MX_EINVAL, "rpc server: hook added after start or too many hooks");
    srv->hooks[srv->n_hooks++] = hook;
    return 0;
}

static int add_method(mx_rpc_server *srv, const char *method, mx_rpc_kind kind,
                      mx_rpc_handler handler, void *user, mx_error *err)
{
    if (!method || method[0] != '/' || !strchr(method + 1, '/') || !handler)
        return mx_fail(err, MX_EINVAL, "rpc server: method must look like /package.Service/"
                       "Method and have a handler (got %s)", method ? method : "NULL");
    if (srv->started)
        return mx_fail(err, MX_EINVAL, "rpc server: %s registered after start", method);
    for (int i = 0; i < srv->n_methods; i++)
        if (strcmp(srv->methods[i].name, method) == 0)
            return mx_fail(err, MX_EINVAL, "rpc server: %s registered twice", method);
    mx_rpc_method *m = realloc(srv->methods, (size_t)(srv->n_methods + 1) * sizeof *m);
    if (!m)
        return mx_fail(err, MX_ENOMEM, "rpc server: out of memory");
    srv->methods = m;
    char *name = strdup(method);
    if (!name)
        return mx_fail(err, MX_ENOMEM, "rpc server: out of memory");
    m[srv->n_methods++] = (mx_rpc_method){name, kind, handler, user, 0};
    return 0;
}

int mx_rpc_server_add_unary(mx_rpc_server *srv, const char *method, mx_rpc_handler handler,
                            void *user, mx_error *err)
{
    return add_method(srv, method, MX_RPC_KIND_UNARY, handler, user, err);
}

int mx_rpc_server_add_stream(mx_rpc_server *srv, const char *method, mx_rpc_handler handler,
                             void *user, mx_error *err)
{
    return add_method(srv, method, MX_RPC_KIND_STREAM, handler, user, err);
}

int mx_rpc_server_add_control(mx_rpc_server *srv, const char *method, mx_rpc_handler handler,
                              void *user, mx_error *err)
{
    MX_TRY(add_method(srv, method, MX_RPC_KIND_UNARY, handler, user, err));
    srv->methods[srv->n_methods - 1].control = 1;
    return 0;
}

int mx_rpc_server_start(mx_rpc_server *srv, mx_error *err)
{
    if (srv->started)
        return mx_fail(err, MX_EINVAL, "rpc server: started twice");
    grpc_server_start(srv->server);
    srv->grpc_started = 1;
    post_request_slot(srv);
    if (pthread_create(&srv->poller, NULL, poller_main, srv) != 0)
        return mx_fail(err, MX_ENOMEM, "rpc server: cannot start the poller thread");
    srv->started = 1;
    int rc = pool_start(srv, &srv->pool, err);
    if (!rc)
        rc = pool_start(srv, &srv->control, err);
    if (rc)
        mx_rpc_server_shutdown(srv, 0);
    return rc;
}

void mx_rpc_server_shutdown(mx_rpc_server *srv, int64_t grace_ms)
{
    if (!srv->started || srv->shut_down)
        return;
    srv->shut_down = 1;
    for (int i = 0; i < srv->n_hooks; i++)
        if (srv->hooks[i].on_shutdown)
            srv->hooks[i].on_shutdown(srv->hooks[i].ctx);
    pthread_mutex_lock(&srv->mu);
    srv->stopping = 1;
    pthread_mutex_unlock(&srv->mu);
    grpc_server_shutdown_and_notify(srv->server, srv->cq, &srv->tag_shutdown);

    gpr_timespec until = gpr_time_add(gpr_now(GPR_CLOCK_REALTIME),
                                      gpr_time_from_millis(grace_ms > 0 ? grace_ms : 0,
                                                           GPR_TIMESPAN));
    struct timespec ts = {until.tv_sec, until.tv_nsec};
    pthread_mutex_lock(&srv->mu);
    while (!srv->shutdown_done && grace_ms > 0) {
        if (pthread_cond_timedwait(&srv->cond, &srv->mu, &ts) != 0)
            break;
    }
    int done = srv->shutdown_done;
    pthread_mutex_unlock(&srv->mu);
    if (!done)
        grpc_server_cancel_all_calls(srv->server);

    pthread_mutex_lock(&srv->mu);
    while (!srv->shutdown_done || srv->live_calls > 0)
        pthread_cond_wait(&srv->cond, &srv->mu);
    srv->workers_stop = 1;
    pthread_cond_broadcast(&srv->pool.ready);
    pthread_cond_broadcast(&srv->control.ready);
    pthread_mutex_unlock(&srv->mu);
    for (int i = 0; i < srv->pool.n_threads; i++)
        pthread_join(srv->pool.threads[i], NULL);
    for (int i = 0; i < srv->control.n_threads; i++)
        pthread_join(srv->control.threads[i], NULL);
    grpc_completion_queue_shutdown(srv->cq);
    pthread_join(srv->poller, NULL);
}

void mx_rpc_server_destroy(mx_rpc_server *srv)
{
    if (!srv)
        return;
    mx_rpc_server_shutdown(srv, 0);
    if (!srv->started && srv->server) {
        /* Never served: shut down synchronously on our own queue. */
        grpc_server_shutdown_and_notify(srv->server, srv->cq, &srv->tag_shutdown);
        grpc_completion_queue_shutdown(srv->cq);
        for (;;) {
            grpc_event ev = grpc_completion_queue_next(
                srv->cq, gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
            if (ev.type == GRPC_QUEUE_SHUTDOWN)
                break;
            if (ev.type == GRPC_OP_COMPLETE && ev.tag != &srv->tag_shutdown) {
                mx_rpc_tag *tag = ev.tag;
                tag->done(tag, 0);
            }
        }
    }
    if (srv->server)
        grpc_server_destroy(srv->server);
    if (srv->cq)
        grpc_completion_queue_destroy(srv->cq);
    for (int i = 0; i < srv->n_hooks; i++)
        if (srv->hooks[i].on_destroy)
            srv->hooks[i].on_destroy(srv->hooks[i].ctx);
    for (int i = 0; i < srv->n_methods; i++)
        free(srv->methods[i].name);
    free(srv->methods);
    free(srv->pool.threads);
    free(srv->control.threads);
    pthread_mutex_destroy(&srv->mu);
    pthread_cond_destroy(&srv->cond);
    pthread_cond_destroy(&srv->pool.ready);
    pthread_cond_destroy(&srv->control.ready);
    free(srv);
    grpc_shutdown();
}

int mx_rpc_server_write_port_file(const mx_rpc_server *srv, const char *path, mx_error *err)
{
    char tmp[MX_PATH_BUF];
    if (snprintf(tmp, sizeof tmp, "%s.tmp", path) >= (int)sizeof tmp)
        return mx_fail(err, MX_EINVAL, "port file path is too long: %s", path);
    FILE *f = fopen(tmp, "w");
    if (!f)
        return mx_fail(err, MX_EIO, "cannot write the port file %s", path);
    int bad = fprintf(f, "%d\n", mx_rpc_server_port(srv)) < 0;
    bad |= fclose(f) != 0;
    if (bad || rename(tmp, path) != 0)
        return mx_fail(err, MX_EIO, "cannot write the port file %s", path);
    return 0;
}
