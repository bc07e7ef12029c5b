/* server_call.c - what a handler can do with its call: write messages, set the status,
 * check cancellation and deadline. Runs on worker threads; blocks on the call's own
 * condition variable until the poller reports the batch done. */
#include "server_internal.h"

#include <errno.h>
#include <grpc/support/time.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

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

/* Starts ops and waits for their completion. Returns 1 if the batch succeeded. With
 * timeout_ms > 0 a batch still pending then cancels the call (a client that stopped reading
 * must not hold a worker): the cancelled batch completes at once, unsuccessfully. */
static int run_batch(mx_rpc_call *c, grpc_op *ops, size_t n, int64_t timeout_ms)
{
    c->tag_sync.done = on_sync_done;
    c->sync_done = 0;
    if (grpc_call_start_batch(c->call, ops, n, &c->tag_sync, NULL) != GRPC_CALL_OK)
        return 0;
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    long long ns = until.tv_nsec + (timeout_ms > 0 ? timeout_ms : 0) * 1000000LL;
    until.tv_sec += (time_t)(ns / 1000000000LL);
    until.tv_nsec = (long)(ns % 1000000000LL);
    int timed_out = 0;
    pthread_mutex_lock(&c->mu);
    while (!c->sync_done) {
        if (timeout_ms <= 0 || timed_out) {
            pthread_cond_wait(&c->cond, &c->mu);
        } else if (pthread_cond_timedwait(&c->cond, &c->mu, &until) == ETIMEDOUT && !c->sync_done) {
            timed_out = 1;
            pthread_mutex_unlock(&c->mu);
            grpc_call_cancel_with_status(c->call, GRPC_STATUS_RESOURCE_EXHAUSTED,
                                         "the client did not read its stream in time", NULL);
            atomic_store(&c->cancelled, 1);
            pthread_mutex_lock(&c->mu);
        }
    }
    int ok = c->sync_ok && !timed_out;
    pthread_mutex_unlock(&c->mu);
    return ok;
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
    int ok = run_batch(c, ops, n, c->srv->write_timeout_ms);
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
    run_batch(c, ops, n, c->srv->write_timeout_ms);   /* fails only if the client is gone: nothing left to tell it */
    c->sent_initial_metadata = 1;
    grpc_slice_unref(details);
}

int mx_rpc_call_cancelled(const mx_rpc_call *c)
{
    return atomic_load(&((mx_rpc_call *)c)->cancelled);
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
