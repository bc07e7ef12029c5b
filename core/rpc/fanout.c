/* fanout.c - unary calls: one at a time (mx_rpc_unary) or many in parallel on one
 * completion queue (mx_rpc_fanout), each a single batch of all six operations. */
#include "client_internal.h"

#include <grpc/support/alloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "buffer.h"

typedef struct pending {
    grpc_call *call;
    grpc_byte_buffer *send, *recv;
    grpc_metadata_array initial_md, trailing_md;
    grpc_status_code code;
    grpc_slice details;
    const char *error_string;
    grpc_op ops[6];
} pending;

static void start(pending *p, mx_rpc_channel *ch, const char *method, mx_rpc_payload req,
                  grpc_completion_queue *cq, int64_t timeout_ms)
{
    memset(p, 0, sizeof *p);
    p->call = mx_rpc_call_create(ch, method, cq, timeout_ms);
    p->send = mx_rpc_buffer_from_payload(req);
    p->details = grpc_empty_slice();
    p->code = GRPC_STATUS_UNKNOWN;
    grpc_metadata_array_init(&p->initial_md);
    grpc_metadata_array_init(&p->trailing_md);
    grpc_op *ops = p->ops;
    ops[0].op = GRPC_OP_SEND_INITIAL_METADATA;
    ops[1].op = GRPC_OP_SEND_MESSAGE;
    ops[1].data.send_message.send_message = p->send;
    ops[2].op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
    ops[3].op = GRPC_OP_RECV_INITIAL_METADATA;
    ops[3].data.recv_initial_metadata.recv_initial_metadata = &p->initial_md;
    ops[4].op = GRPC_OP_RECV_MESSAGE;
    ops[4].data.recv_message.recv_message = &p->recv;
    ops[5].op = GRPC_OP_RECV_STATUS_ON_CLIENT;
    ops[5].data.recv_status_on_client.trailing_metadata = &p->trailing_md;
    ops[5].data.recv_status_on_client.status = &p->code;
    ops[5].data.recv_status_on_client.status_details = &p->details;
    ops[5].data.recv_status_on_client.error_string = &p->error_string;
}

/* Turns a completed call into its result and releases the gRPC objects. */
static void finish(pending *p, int ok, mx_rpc_result *res)
{
    memset(res, 0, sizeof *res);
    mx_rpc_status_fill(&res->status, ok ? p->code : GRPC_STATUS_INTERNAL, p->details,
                       p->error_string);
    if (res->status.code == GRPC_STATUS_OK) {
        if (!p->recv) {
            res->status.code = GRPC_STATUS_INTERNAL;
            snprintf(res->status.message, sizeof res->status.message,
                     "server returned OK without a response message");
        } else if (mx_rpc_bytes_from_buffer(p->recv, &res->response) != 0) {
            res->status.code = GRPC_STATUS_INTERNAL;
            snprintf(res->status.message, sizeof res->status.message,
                     "response message could not be read");
        }
    }
    if (p->recv)
        grpc_byte_buffer_destroy(p->recv);
    grpc_byte_buffer_destroy(p->send);
    grpc_slice_unref(p->details);
    gpr_free((void *)p->error_string);
    grpc_metadata_array_destroy(&p->initial_md);
    grpc_metadata_array_destroy(&p->trailing_md);
    grpc_call_unref(p->call);
}

int mx_rpc_fanout(mx_rpc_fanout_call *calls, int n, int64_t timeout_ms, mx_error *err)
{
    if (n <= 0)
        return 0;
    pending *ps = calloc((size_t)n, sizeof *ps);
    if (!ps) {
        for (int i = 0; i < n; i++)
            if (calls[i].request.release)
                calls[i].request.release(calls[i].request.release_ctx);
        return mx_fail(err, MX_ENOMEM, "rpc fan-out of %d calls: out of memory", n);
    }
    grpc_completion_queue *cq = grpc_completion_queue_create_for_next(NULL);
    int outstanding = 0;
    for (int i = 0; i < n; i++) {
        start(&ps[i], calls[i].channel, calls[i].method, calls[i].request, cq, timeout_ms);
        if (grpc_call_start_batch(ps[i].call, ps[i].ops, 6, &ps[i], NULL) == GRPC_CALL_OK)
            outstanding++;
        else
            finish(&ps[i], 0, &calls[i].result);
    }
    /* Every call has a deadline (or the caller chose none), so each completes. */
    while (outstanding > 0) {
        grpc_event ev = grpc_completion_queue_next(cq, gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
        if (ev.type != GRPC_OP_COMPLETE)
            continue;
        pending *p = ev.tag;
        finish(p, ev.success, &calls[p - ps].result);
        outstanding--;
    }
    grpc_completion_queue_shutdown(cq);
    while (grpc_completion_queue_next(cq, gpr_inf_future(GPR_CLOCK_REALTIME), NULL).type
           != GRPC_QUEUE_SHUTDOWN) {
    }
    grpc_completion_queue_destroy(cq);
    free(ps);

    for (int i = 0; i < n; i++) {
        const mx_rpc_status *st = &calls[i].result.status;
        if (st->code != GRPC_STATUS_OK)
            return mx_fail(err, mx_rpc_code_from_status(st->code), "call %d (%s %s): %s: %s", i,
                           mx_rpc_channel_address(calls[i].channel), calls[i].method,
                           mx_rpc_status_name(st->code), st->message);
    }
    return 0;
}

int mx_rpc_unary(mx_rpc_channel *ch, const char *method, mx_rpc_payload request,
                 int64_t timeout_ms, mx_rpc_result *res)
{
    mx_rpc_fanout_call c = {ch, method, request, {{0}, {0}}};
    int rc = mx_rpc_fanout(&c, 1, timeout_ms, NULL);
    *res = c.result;
    return rc;
}
