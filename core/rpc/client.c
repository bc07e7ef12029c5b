/* client.c - channels and server-streaming calls. Each stream has its own pluck queue, so
 * reading blocks only its caller and needs no poller thread. */
#include "client_internal.h"

#include <grpc/grpc_security.h>
#include <grpc/support/alloc.h>
#include <grpc/support/time.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "buffer.h"
#include "core/limits.h"

int mx_rpc_channel_create(const char *address, const mx_rpc_channel_options *opts,
                          mx_rpc_channel **out, mx_error *err)
{
    *out = NULL;
    mx_rpc_channel_options o = {0};
    if (opts)
        o = *opts;
    if (!address || !address[0])
        return mx_fail(err, MX_EINVAL, "rpc channel: no address given");
    if (o.max_message_bytes < 0 || o.keepalive_time_ms < 0 || o.keepalive_timeout_ms < 0)
        return mx_fail(err, MX_EINVAL, "rpc channel to %s: negative option value", address);
    mx_rpc_channel *ch = calloc(1, sizeof *ch);
    if (!ch || !(ch->address = strdup(address))) {
        free(ch);
        return mx_fail(err, MX_ENOMEM, "rpc channel to %s: out of memory", address);
    }
    grpc_init();
    mx_rpc_args a;
    mx_rpc_args_fill(&a, o.max_message_bytes ? o.max_message_bytes : MX_DEFAULT_MAX_MESSAGE_BYTES,
                     o.keepalive_time_ms ? o.keepalive_time_ms : MX_KEEPALIVE_TIME_MS,
                     o.keepalive_timeout_ms ? o.keepalive_timeout_ms : MX_KEEPALIVE_TIMEOUT_MS, 0);
    grpc_channel_credentials *creds = grpc_insecure_credentials_create();
    ch->channel = grpc_channel_create(address, creds, &a.args);
    grpc_channel_credentials_release(creds);
    *out = ch;
    return 0;
}

void mx_rpc_channel_destroy(mx_rpc_channel *ch)
{
    if (!ch)
        return;
    grpc_channel_destroy(ch->channel);
    free(ch->address);
    free(ch);
    grpc_shutdown();
}

const char *mx_rpc_channel_address(const mx_rpc_channel *ch) { return ch->address; }

gpr_timespec mx_rpc_deadline(int64_t timeout_ms)
{
    if (timeout_ms < 0)
        return gpr_inf_future(GPR_CLOCK_MONOTONIC);
    return gpr_time_add(gpr_now(GPR_CLOCK_MONOTONIC),
                        gpr_time_from_millis(timeout_ms, GPR_TIMESPAN));
}

grpc_call *mx_rpc_call_create(mx_rpc_channel *ch, const char *method, grpc_completion_queue *cq,
                              int64_t timeout_ms)
{
    grpc_slice m = grpc_slice_from_copied_string(method);
    grpc_call *call = grpc_channel_create_call(ch->channel, NULL, GRPC_PROPAGATE_DEFAULTS, cq, m,
                                               NULL, mx_rpc_deadline(timeout_ms), NULL);
    grpc_slice_unref(m);
    return call;
}

void mx_rpc_status_fill(mx_rpc_status *st, grpc_status_code code, grpc_slice details,
                        const char *error_string)
{
    st->code = code;
    size_t n = GRPC_SLICE_LENGTH(details);
    if (n == 0 && error_string && code != GRPC_STATUS_OK) {
        snprintf(st->message, sizeof st->message, "%s", error_string);
        return;
    }
    if (n >= sizeof st->message)
        n = sizeof st->message - 1;
    memcpy(st->message, GRPC_SLICE_START_PTR(details), n);
    st->message[n] = '\0';
}

void mx_rpc_result_free(mx_rpc_result *res)
{
    if (res)
        mx_rpc_bytes_free(&res->response);
}

/* ---- server-streaming calls ---- */

struct mx_rpc_stream {
    grpc_call *call;
    grpc_completion_queue *cq;
    grpc_metadata_array initial_md, trailing_md;
    int ended;
    mx_rpc_status status;
};

/* Runs ops on the stream's call and waits for them. Returns 1 if they succeeded. */
static int stream_batch(mx_rpc_stream *s, grpc_op *ops, size_t n)
{
    if (grpc_call_start_batch(s->call, ops, n, ops, NULL) != GRPC_CALL_OK)
        return 0;
    grpc_event ev = grpc_completion_queue_pluck(s->cq, ops,
                                                gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
    return ev.type == GRPC_OP_COMPLETE && ev.success;
}

/* Receives the final status and marks the stream ended. */
static void stream_end(mx_rpc_stream *s)
{
    grpc_status_code code = GRPC_STATUS_UNKNOWN;
    grpc_slice details = grpc_empty_slice();
    const char *error_string = NULL;
    grpc_op op;
    memset(&op, 0, sizeof op);
    op.op = GRPC_OP_RECV_STATUS_ON_CLIENT;
    op.data.recv_status_on_client.trailing_metadata = &s->trailing_md;
    op.data.recv_status_on_client.status = &code;
    op.data.recv_status_on_client.status_details = &details;
    op.data.recv_status_on_client.error_string = &error_string;
    if (!stream_batch(s, &op, 1))
        code = GRPC_STATUS_INTERNAL;
    mx_rpc_status_fill(&s->status, code, details, error_string);
    grpc_slice_unref(details);
    gpr_free((void *)error_string);
    s->ended = 1;
}

int mx_rpc_stream_open(mx_rpc_channel *ch, const char *method, mx_rpc_payload request,
                       int64_t timeout_ms, mx_rpc_stream **out, mx_error *err)
{
    *out = NULL;
    mx_rpc_stream *s = calloc(1, sizeof *s);
    if (!s) {
        if (request.release)
            request.release(request.release_ctx);
        return mx_fail(err, MX_ENOMEM, "rpc stream %s: out of memory", method);
    }
    s->cq = grpc_completion_queue_create_for_pluck(NULL);
    s->call = mx_rpc_call_create(ch, method, s->cq, timeout_ms);
    grpc_metadata_array_init(&s->initial_md);
    grpc_metadata_array_init(&s->trailing_md);
    grpc_byte_buffer *bb = mx_rpc_buffer_from_payload(request);
    grpc_op ops[4];
    memset(ops, 0, sizeof ops);
    ops[0].op = GRPC_OP_SEND_INITIAL_METADATA;
    ops[1].op = GRPC_OP_SEND_MESSAGE;
    ops[1].data.send_message.send_message = bb;
    ops[2].op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
    ops[3].op = GRPC_OP_RECV_INITIAL_METADATA;
    ops[3].data.recv_initial_metadata.recv_initial_metadata = &s->initial_md;
    /* A failure here (peer down, deadline) shows up as the status of the first read. */
    if (!stream_batch(s, ops, 4))
        stream_end(s);
    grpc_byte_buffer_destroy(bb);
    *out = s;
    return 0;
}

int mx_rpc_stream_read(mx_rpc_stream *s, mx_rpc_bytes *msg)
{
    memset(msg, 0, sizeof *msg);
    if (s->ended)
        return 0;
    grpc_byte_buffer *bb = NULL;
    grpc_op op;
    memset(&op, 0, sizeof op);
    op.op = GRPC_OP_RECV_MESSAGE;
    op.data.recv_message.recv_message = &bb;
    int ok = stream_batch(s, &op, 1);
    if (ok && bb) {
        int rc = mx_rpc_bytes_from_buffer(bb, msg);
        grpc_byte_buffer_destroy(bb);
        if (rc == 0)
            return 1;
        grpc_call_cancel_with_status(s->call, GRPC_STATUS_INTERNAL,
                                     "response message could not be read", NULL);
    } else if (bb) {
        grpc_byte_buffer_destroy(bb);
    }
    stream_end(s);
    return 0;
}

const mx_rpc_status *mx_rpc_stream_status(const mx_rpc_stream *s) { return &s->status; }

void mx_rpc_stream_cancel(mx_rpc_stream *s) { grpc_call_cancel(s->call, NULL); }

void mx_rpc_stream_close(mx_rpc_stream *s)
{
    if (!s)
        return;
    if (!s->ended) {
        grpc_call_cancel(s->call, NULL);
        stream_end(s);
    }
    grpc_call_unref(s->call);
    grpc_metadata_array_destroy(&s->initial_md);
    grpc_metadata_array_destroy(&s->trailing_md);
    grpc_completion_queue_shutdown(s->cq);
    while (grpc_completion_queue_pluck(s->cq, NULL, gpr_inf_future(GPR_CLOCK_REALTIME), NULL)
               .type != GRPC_QUEUE_SHUTDOWN) {
    }
    grpc_completion_queue_destroy(s->cq);
    free(s);
}
