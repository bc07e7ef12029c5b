/* callset.c - a set of unary calls on one completion queue (callset.h): each call is one
 * batch of the six unary operations; slots are reused once a call has been reaped. */
#include "callset.h"

#include <grpc/support/alloc.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "buffer.h"
#include "client_internal.h"

typedef struct slot {
    int busy;
    void *user;
    grpc_call *call;
    grpc_byte_buffer *send, *recv;
    grpc_metadata_array initial_md, trailing_md;
    grpc_status_code code;
    grpc_slice details;
    const char *error_string;
    grpc_op ops[6];
    grpc_slice kept;    /* borrowed responses: the answer's bytes, until the slot is reused */
    bool has_kept;
    uint8_t *copy;      /* borrowed responses in several slices: joined here (kept, grown) */
    size_t copy_cap;
} slot;

struct mx_rpc_callset {
    grpc_completion_queue *cq;
    int n_slots, in_flight;
    bool borrowed;      /* mx_rpc_callset_borrow_responses */
    slot *slots;
};

void mx_rpc_callset_borrow_responses(mx_rpc_callset *cs) { cs->borrowed = true; }

static void drop_kept(slot *p)
{
    if (p->has_kept)
        grpc_slice_unref(p->kept);
    p->has_kept = false;
}

/* A single uncompressed slice is handed out in place, kept by the slot (no allocation). */
static bool borrow_response(slot *p, mx_rpc_bytes *out)
{
    grpc_byte_buffer *bb = p->recv;
    if (bb->type != GRPC_BB_RAW || bb->data.raw.compression != GRPC_COMPRESS_NONE)
        return false;
    const grpc_slice_buffer *sb = &bb->data.raw.slice_buffer;
    if (sb->count != 1) {
        if (sb->length > p->copy_cap) { /* doubling: a few growths, then none */
            size_t cap = p->copy_cap ? 2 * p->copy_cap : 65536;
            while (cap < sb->length)
                cap *= 2;
            uint8_t *grown = realloc(p->copy, cap);
            if (!grown)
                return false;
            p->copy = grown;
            p->copy_cap = cap;
        }
        size_t at = 0;
        for (size_t i = 0; i < sb->count; i++) {
            memcpy(p->copy + at, GRPC_SLICE_START_PTR(sb->slices[i]), GRPC_SLICE_LENGTH(sb->slices[i]));
            at += GRPC_SLICE_LENGTH(sb->slices[i]);
        }
        out->data = p->copy;
        out->len = at;
        out->owner = NULL;
        return true;
    }
    p->kept = grpc_slice_ref(bb->data.raw.slice_buffer.slices[0]);
    p->has_kept = true;
    out->data = GRPC_SLICE_START_PTR(p->kept);
    out->len = GRPC_SLICE_LENGTH(p->kept);
    out->owner = NULL;
    return true;
}

int mx_rpc_callset_create(int max_calls, mx_rpc_callset **out, mx_error *err)
{
    *out = NULL;
    if (max_calls <= 0)
        return mx_fail(err, MX_EINVAL, "rpc call set: %d calls", max_calls);
    mx_rpc_callset *cs = calloc(1, sizeof *cs);
    if (cs)
        cs->slots = calloc((size_t)max_calls, sizeof *cs->slots);
    if (!cs || !cs->slots) {
        free(cs);
        return mx_fail(err, MX_ENOMEM, "rpc call set: out of memory");
    }
    grpc_init();
    cs->n_slots = max_calls;
    cs->cq = grpc_completion_queue_create_for_next(NULL);
    *out = cs;
    return 0;
}

/* The slot's outcome as a result; releases the slot's gRPC objects. */
static void finish(slot *p, int ok, bool borrowed, mx_rpc_result *res)
{
    memset(res, 0, sizeof *res);
    mx_rpc_status_fill(&res->status, ok ? p->code : GRPC_STATUS_INTERNAL, p->details, p->error_string);
    if (res->status.code == GRPC_STATUS_OK) {
        if (!p->recv) {
            res->status.code = GRPC_STATUS_INTERNAL;
            snprintf(res->status.message, sizeof res->status.message, "server returned OK without a response message");
        } else if (!(borrowed && borrow_response(p, &res->response)) &&
                   mx_rpc_bytes_from_buffer(p->recv, &res->response) != 0) {
            res->status.code = GRPC_STATUS_INTERNAL;
            snprintf(res->status.message, sizeof res->status.message, "response message could not be read");
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
    p->busy = 0;
    p->call = NULL;
}

int mx_rpc_callset_start(mx_rpc_callset *cs, mx_rpc_channel *ch, const char *method, mx_rpc_payload request,
                         int64_t timeout_ms, void *user, mx_error *err)
{
    int id = -1;
    for (int i = 0; i < cs->n_slots && id < 0; i++)
        if (!cs->slots[i].busy)
            id = i;
    if (id < 0) {
        if (request.release)
            request.release(request.release_ctx);
        return mx_fail(err, MX_ERANGE, "rpc call set: all %d calls are in flight", cs->n_slots);
    }
    slot *p = &cs->slots[id];
    drop_kept(p);
    uint8_t *copy = p->copy;
    size_t copy_cap = p->copy_cap;
    memset(p, 0, sizeof *p);
    p->copy = copy;
    p->copy_cap = copy_cap;
    p->busy = 1;
    p->user = user;
    p->call = mx_rpc_call_create(ch, method, cs->cq, timeout_ms);
    p->send = mx_rpc_buffer_from_payload(request);
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
    if (grpc_call_start_batch(p->call, ops, 6, p, NULL) != GRPC_CALL_OK) {
        mx_rpc_result res;
        finish(p, 0, false, &res);
        mx_rpc_result_free(&res);
        return mx_fail(err, MX_EINTERNAL, "rpc call set: %s on %s could not start", method,
                       mx_rpc_channel_address(ch));
    }
    cs->in_flight++;
    return id;
}

int mx_rpc_callset_next(mx_rpc_callset *cs, int64_t wait_ms, int *id, void **user, mx_rpc_result *res)
{
    if (cs->in_flight == 0)
        return 0;
    gpr_timespec until = wait_ms < 0 ? gpr_inf_future(GPR_CLOCK_MONOTONIC)
                                     : gpr_time_add(gpr_now(GPR_CLOCK_MONOTONIC),
                                                    gpr_time_from_millis(wait_ms, GPR_TIMESPAN));
    for (;;) {
        grpc_event ev = grpc_completion_queue_next(cs->cq, until, NULL);
        if (ev.type == GRPC_QUEUE_TIMEOUT)
            return 0;
        if (ev.type != GRPC_OP_COMPLETE)
            continue;
        slot *p = ev.tag;
        *id = (int)(p - cs->slots);
        *user = p->user;
        cs->in_flight--;
        finish(p, ev.success, cs->borrowed, res);
        return 1;
    }
}

void mx_rpc_callset_cancel(mx_rpc_callset *cs, int id)
{
    if (id >= 0 && id < cs->n_slots && cs->slots[id].busy)
        grpc_call_cancel(cs->slots[id].call, NULL);
}

void mx_rpc_channel_reset_backoff(mx_rpc_channel *ch) { grpc_channel_reset_connect_backoff(ch->channel); }

int mx_rpc_callset_in_flight(const mx_rpc_callset *cs) { return cs->in_flight; }

void mx_rpc_callset_destroy(mx_rpc_callset *cs)
{
    if (!cs)
        return;
    for (int i = 0; i < cs->n_slots; i++)
        mx_rpc_callset_cancel(cs, i);
    int id;
    void *user;
    mx_rpc_result res;
    while (mx_rpc_callset_next(cs, -1, &id, &user, &res))
        mx_rpc_result_free(&res);
    grpc_completion_queue_shutdown(cs->cq);
    while (grpc_completion_queue_next(cs->cq, gpr_inf_future(GPR_CLOCK_REALTIME), NULL).type != GRPC_QUEUE_SHUTDOWN) {
    }
    grpc_completion_queue_destroy(cs->cq);
    for (int i = 0; i < cs->n_slots; i++) {
        drop_kept(&cs->slots[i]);
        free(cs->slots[i].copy);
    }
    free(cs->slots);
    free(cs);
    grpc_shutdown();
}
