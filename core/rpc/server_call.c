/* server_call.c - what a handler can do with its call: write messages, read a stream's further
 * messages, set the status, check cancellation and deadline. Runs on worker threads; blocks on the call's own
 * condition variable until the poller reports the batch done. */
#include "server_internal.h"

#include <errno.h>
#include <grpc/support/time.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "../clock.h"
#include "buffer.h"

static void on_sync_done(mx_rpc_tag *tag, int ok)
{
    mx_rpc_call *c = (mx_rpc_call *)((char *)tag - offsetof(mx_rpc_call, tag_sync));
    pthread_mutex_lock(&c->mu);
    c->sync_done = 1;
    c->sync_ok = ok;
    pthread_cond_broadcast(&c->cond);
    pthread_mutex_unlock(&c->mu);
}

/* How a worker waits for the batch it started. */
typedef struct batch_wait {
    int64_t timeout_ms;             /* > 0: a batch still pending then cancels the call */
    grpc_status_code timeout_code;  /* with this status and message */
    const char *timeout_msg;
    bool end_on_shutdown;           /* a graceful shutdown of the server cancels it too */
} batch_wait;

#define SHUTDOWN_POLL_MS 200        /* how often such a wait looks whether a shutdown began */

static bool server_stopping(mx_rpc_server *srv)
{
    pthread_mutex_lock(&srv->mu);
    bool stopping = srv->stopping != 0;
    pthread_mutex_unlock(&srv->mu);
    return stopping;
}

/* Starts ops and waits for their completion. Returns 1 if the batch succeeded. A batch
 * still pending at w's timeout, or (end_on_shutdown) when a shutdown begins, cancels the
 * call (a client that stopped reading or writing must not hold a worker): the cancelled batch
 * then completes at once, unsuccessfully. */
static int run_batch(mx_rpc_call *c, grpc_op *ops, size_t n, const batch_wait *w)
{
    c->tag_sync.done = on_sync_done;
    c->sync_done = 0;
    if (grpc_call_start_batch(c->call, ops, n, &c->tag_sync, NULL) != GRPC_CALL_OK)
        return 0;
    bool timed = w->timeout_ms > 0 || w->end_on_shutdown;
    double until_ms = mx_now_ms() + (double)w->timeout_ms;
    int ended = 0;
    pthread_mutex_lock(&c->mu);
    while (!c->sync_done) {
        if (!timed || ended) {
            pthread_cond_wait(&c->cond, &c->mu);
            continue;
        }
        double wait = w->timeout_ms > 0 ? until_ms - mx_now_ms() : SHUTDOWN_POLL_MS;
        if (w->end_on_shutdown && wait > SHUTDOWN_POLL_MS)
            wait = SHUTDOWN_POLL_MS;
        struct timespec ts = mx_wall_after_ms(wait);
        if (pthread_cond_timedwait(&c->cond, &c->mu, &ts) != ETIMEDOUT || c->sync_done)
            continue;
        pthread_mutex_unlock(&c->mu);   /* not held across the server's lock or gRPC */
        const char *why = NULL;
        grpc_status_code code = GRPC_STATUS_OK;
        if (w->end_on_shutdown && server_stopping(c->srv)) {
            code = GRPC_STATUS_UNAVAILABLE;
            why = "server shutting down";
        } else if (w->timeout_ms > 0 && mx_now_ms() >= until_ms) {
            code = w->timeout_code;
            why = w->timeout_msg;
        }
        if (why) {
            grpc_call_cancel_with_status(c->call, code, why, NULL);
            atomic_store(&c->cancelled, 1);
            ended = 1;
        }
        pthread_mutex_lock(&c->mu);
    }
    int ok = c->sync_ok && !ended;
    pthread_mutex_unlock(&c->mu);
    return ok;
}

/* Writes wait for the client to take them (write_timeout_ms), whatever the server does. */
static batch_wait write_wait(const mx_rpc_call *c)
{
    return (batch_wait){c->srv->write_timeout_ms, GRPC_STATUS_RESOURCE_EXHAUSTED,
                        "the client did not read its stream in time", false};
}

int mx_rpc_call_read(mx_rpc_call *c, int64_t idle_ms, mx_rpc_bytes *out)
{
    *out = (mx_rpc_bytes){0};
    if (c->method->kind != MX_RPC_KIND_STREAM)
        return -1;
    grpc_byte_buffer *bb = NULL;
    grpc_op op;
    memset(&op, 0, sizeof op);
    op.op = GRPC_OP_RECV_MESSAGE;
    op.data.recv_message.recv_message = &bb;
    char msg[96];
    snprintf(msg, sizeof msg, "no message from the client for %lld ms", (long long)idle_ms);
    batch_wait w = {idle_ms, GRPC_STATUS_DEADLINE_EXCEEDED, msg, true};
    int ok = run_batch(c, &op, 1, &w);
    if (!ok) {
        if (bb)
            grpc_byte_buffer_destroy(bb);
        return -1;
    }
    if (!bb)
        return 0;
    int rc = mx_rpc_bytes_from_buffer(bb, out);
    grpc_byte_buffer_destroy(bb);
    return rc ? -1 : 1;
}

int mx_rpc_call_write(mx_rpc_call *c, mx_rpc_payload msg, mx_error *err)
{
    if (c->method->kind == MX_RPC_KIND_UNARY) {
        if (c->unary_reply) {
            if (msg.release)
                msg.release(msg.release_ctx);
            return mx_fail(err, MX_EINVAL, "%s is unary: only one response may be written",
                           c->method_name);
        }
        c->unary_reply = mx_rpc_buffer_from_payload(msg);
        c->messages_written = 1;
        return 0;
    }
    if (mx_rpc_call_cancelled(c)) {
        if (msg.release)
            msg.release(msg.release_ctx);
        return mx_fail(err, MX_ECANCELLED, "%s: call cancelled", c->method_name);
    }
    grpc_byte_buffer *bb = mx_rpc_buffer_from_payload(msg);
    grpc_op ops[2];
    memset(ops, 0, sizeof ops);
    size_t n = 0;
    if (!c->sent_initial_metadata)
        ops[n++].op = GRPC_OP_SEND_INITIAL_METADATA;
    ops[n].op = GRPC_OP_SEND_MESSAGE;
    ops[n++].data.send_message.send_message = bb;
    batch_wait w = write_wait(c);
    int ok = run_batch(c, ops, n, &w);
    grpc_byte_buffer_destroy(bb);
    c->sent_initial_metadata = 1;
    if (!ok)
        return mx_fail(err, MX_ECANCELLED, "%s: the client is gone", c->method_name);
    c->messages_written++;
    return 0;
}

int mx_rpc_call_write_copy(mx_rpc_call *c, const void *data, size_t len, mx_error *err)
{
    return mx_rpc_call_write(c, mx_rpc_payload_copy(data, len), err);
}

void mx_rpc_call_set_status(mx_rpc_call *c, grpc_status_code code, const char *fmt, ...)
{
    c->status = code;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->status_message, sizeof c->status_message, fmt, ap);
    va_end(ap);
}

void mx_rpc_call_set_error(mx_rpc_call *c, const mx_error *err)
{
    if (!err || err->code == MX_OK) {
        mx_rpc_call_set_status(c, GRPC_STATUS_INTERNAL, "handler failed without an error");
        return;
    }
    mx_rpc_call_set_status(c, mx_rpc_status_from_code(err->code), "%s", err->msg);
}

void mx_rpc_call_send_final(mx_rpc_call *c)
{
    if (c->status == GRPC_STATUS_OK && c->method->kind == MX_RPC_KIND_UNARY && !c->unary_reply)
        mx_rpc_call_set_status(c, GRPC_STATUS_INTERNAL, "%s: handler wrote no response",
                               c->method_name);
    grpc_slice details = grpc_slice_from_copied_string(c->status_message);
    grpc_op ops[3];
    memset(ops, 0, sizeof ops);
    size_t n = 0;
    if (!c->sent_initial_metadata)
        ops[n++].op = GRPC_OP_SEND_INITIAL_METADATA;
    if (c->unary_reply && c->status == GRPC_STATUS_OK) {
        ops[n].op = GRPC_OP_SEND_MESSAGE;
        ops[n++].data.send_message.send_message = c->unary_reply;
    }
    ops[n].op = GRPC_OP_SEND_STATUS_FROM_SERVER;
    ops[n].data.send_status_from_server.status = c->status;
    ops[n++].data.send_status_from_server.status_details = &details;
    batch_wait w = write_wait(c);
    run_batch(c, ops, n, &w);   /* fails only if the client is gone: nothing left to tell it */
    c->sent_initial_metadata = 1;
    grpc_slice_unref(details);
}

int mx_rpc_call_cancelled(const mx_rpc_call *c)
{
    return atomic_load(&((mx_rpc_call *)c)->cancelled);
}

void mx_rpc_call_on_cancel(mx_rpc_call *c, void (*fn)(void *arg), void *arg)
{
    /* Under mu, as on_close (server.c) runs it: a clear waits for a callback in progress, and
     * a registration either sees the cancellation here or is seen by on_close. */
    pthread_mutex_lock(&c->mu);
    bool now = fn && atomic_load(&c->cancelled);
    c->on_cancel = now ? NULL : fn;
    c->on_cancel_arg = now ? NULL : arg;
    pthread_mutex_unlock(&c->mu);
    if (now)
        fn(arg);
}

int64_t mx_rpc_call_ms_left(const mx_rpc_call *c)
{
    gpr_timespec deadline = c->details.deadline;
    if (gpr_time_cmp(deadline, gpr_inf_future(deadline.clock_type)) == 0)
        return INT64_MAX;
    gpr_timespec now = gpr_now(deadline.clock_type);
    gpr_timespec left = gpr_time_sub(deadline, now);
    return (int64_t)left.tv_sec * 1000 + left.tv_nsec / 1000000;
}

const char *mx_rpc_call_peer(const mx_rpc_call *c) { return c->peer ? c->peer : ""; }
const char *mx_rpc_call_method(const mx_rpc_call *c) { return c->method_name; }
grpc_status_code mx_rpc_call_status(const mx_rpc_call *c) { return c->status; }
mx_rpc_server *mx_rpc_call_server(const mx_rpc_call *c) { return c->srv; }
