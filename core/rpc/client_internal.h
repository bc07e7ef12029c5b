/* client_internal.h - internal to core/rpc: the channel structure and call functions shared
 * by client.c (channels, streams) and callset.c (unary calls, which fanout.c runs on a set). */
#ifndef MX_RPC_CLIENT_INTERNAL_H
#define MX_RPC_CLIENT_INTERNAL_H

#include <grpc/grpc.h>

#include "client.h"

struct mx_rpc_channel {
    grpc_channel *channel;
    char *address;
};

/* Absolute deadline timeout_ms from now (infinite when < 0). */
gpr_timespec mx_rpc_deadline(int64_t timeout_ms);

/* Creates a call of method on ch bound to cq; NULL never happens in practice. */
grpc_call *mx_rpc_call_create(mx_rpc_channel *ch, const char *method, grpc_completion_queue *cq,
                              int64_t timeout_ms);

/* Copies a received status into st (message from details, else from error_string). */
void mx_rpc_status_fill(mx_rpc_status *st, grpc_status_code code, grpc_slice details,
                        const char *error_string);

#endif
