/* buffer.c - payload <-> grpc_byte_buffer conversion (zero-copy where gRPC allows) and the
 * shared channel/server arguments. No state; every buffer has one owner. */
#include "buffer.h"

#include <grpc/byte_buffer_reader.h>
#include <grpc/slice.h>
#include <stdlib.h>
#include <string.h>

static void release_free(void *p) { free(p); }

mx_rpc_payload mx_rpc_payload_take_malloced(void *data, size_t len)
{
    mx_rpc_payload p = {data, len, release_free, data};
    return p;
}

grpc_byte_buffer *mx_rpc_buffer_from_payload(mx_rpc_payload p)
{
    grpc_slice s;
    if (p.release && p.len > 0) {
        /* gRPC keeps the slice (and so our memory) until the transport has written it. */
        s = grpc_slice_new_with_user_data((void *)p.data, p.len, p.release, p.release_ctx);
    } else {
        s = p.len ? grpc_slice_from_copied_buffer(p.data, p.len) : grpc_empty_slice();
        if (p.release)
            p.release(p.release_ctx);
    }
    grpc_byte_buffer *bb = grpc_raw_byte_buffer_create(&s, 1);
    grpc_slice_unref(s);
    return bb;
}

int mx_rpc_bytes_from_buffer(grpc_byte_buffer *bb, mx_rpc_bytes *out)
{
    memset(out, 0, sizeof *out);
    grpc_slice *box = malloc(sizeof *box);
    if (!box)
        return -1;
    if (bb->type == GRPC_BB_RAW && bb->data.raw.compression == GRPC_COMPRESS_NONE &&
        bb->data.raw.slice_buffer.count == 1) {
        *box = grpc_slice_ref(bb->data.raw.slice_buffer.slices[0]);   /* no copy */
    } else {
        grpc_byte_buffer_reader reader;
        if (!grpc_byte_buffer_reader_init(&reader, bb)) {
            free(box);
            return -1;
        }
        *box = grpc_byte_buffer_reader_readall(&reader);
        grpc_byte_buffer_reader_destroy(&reader);
    }
    out->data = GRPC_SLICE_START_PTR(*box);
    out->len = GRPC_SLICE_LENGTH(*box);
    out->owner = box;
    return 0;
}

void mx_rpc_bytes_free(mx_rpc_bytes *b)
{
    if (b && b->owner) {
        grpc_slice_unref(*(grpc_slice *)b->owner);
        free(b->owner);
    }
    if (b)
        memset(b, 0, sizeof *b);
}

static grpc_arg int_arg(const char *key, int value)
{
    grpc_arg a;
    a.type = GRPC_ARG_INTEGER;
    a.key = (char *)key;
    a.value.integer = value;
    return a;
}

void mx_rpc_args_fill(mx_rpc_args *a, int max_message_bytes, int keepalive_time_ms,
                      int keepalive_timeout_ms, int min_ping_interval_ms)
{
    size_t n = 0;
    a->arg[n++] = int_arg(GRPC_ARG_MAX_RECEIVE_MESSAGE_LENGTH, max_message_bytes);
    a->arg[n++] = int_arg(GRPC_ARG_MAX_SEND_MESSAGE_LENGTH, max_message_bytes);
    a->arg[n++] = int_arg(GRPC_ARG_KEEPALIVE_TIME_MS, keepalive_time_ms);
    a->arg[n++] = int_arg(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, keepalive_timeout_ms);
    a->arg[n++] = int_arg(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
    /* Keepalive pings must not be limited by "no data sent" (idle internal links). */
    a->arg[n++] = int_arg(GRPC_ARG_HTTP2_MAX_PINGS_WITHOUT_DATA, 0);
    if (min_ping_interval_ms > 0)
        a->arg[n++] = int_arg(GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS,
                              min_ping_interval_ms);
    a->args.num_args = n;
    a->args.args = a->arg;
}
