/* buffer.h - internal to core/rpc: converting payloads to and from grpc_byte_buffer, and the
 * channel/server arguments both sides share. Services use payload.h, never this. */
#ifndef MX_RPC_BUFFER_H
#define MX_RPC_BUFFER_H

#include <grpc/byte_buffer.h>
#include <grpc/grpc.h>

#include "payload.h"

/* A byte buffer holding p's bytes: references them (release != NULL) or copies them.
 * Never NULL: gRPC aborts on allocation failure. The caller destroys it. */
grpc_byte_buffer *mx_rpc_buffer_from_payload(mx_rpc_payload p);

/* Contiguous bytes of bb in out (a reference when bb is one slice, a copy otherwise).
 * bb is left for the caller to destroy. Returns 0, or -1 if bb cannot be read
 * (e.g. compressed with an unknown algorithm). */
int mx_rpc_bytes_from_buffer(grpc_byte_buffer *bb, mx_rpc_bytes *out);

/* Arguments common to channels and servers. */
#define MX_RPC_MAX_ARGS 8
typedef struct mx_rpc_args {
    grpc_arg arg[MX_RPC_MAX_ARGS];
    grpc_channel_args args;
} mx_rpc_args;

/* Fills a with max send/receive message size, keepalive time/timeout and, for servers, the
 * shortest client ping interval accepted. Values must already be defaulted (> 0). */
void mx_rpc_args_fill(mx_rpc_args *a, int max_message_bytes, int keepalive_time_ms,
                      int keepalive_timeout_ms, int min_ping_interval_ms);

#endif
