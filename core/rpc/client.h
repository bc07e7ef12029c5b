/* client.h - calling mx services: one channel per peer address, blocking unary calls,
 * server-streaming calls read message by message, and a parallel fan-out of unary calls
 * (the MoE router's one-call-per-expert-shard pattern). No grpc_op in sight.
 * Channels are thread-safe and meant to live as long as the peer is used; calls are not
 * shared between threads. */
#ifndef MX_RPC_CLIENT_H
#define MX_RPC_CLIENT_H

#include <stdint.h>

#include "../error.h"
#include "payload.h"
#include "status.h"

typedef struct mx_rpc_channel mx_rpc_channel;
typedef struct mx_rpc_stream mx_rpc_stream;

/* Zero fields take the default named in the comment. */
typedef struct mx_rpc_channel_options {
    int max_message_bytes;     /* largest message sent or received; 0 = 256 MiB */
    int keepalive_time_ms;     /* ping the peer this often; 0 = 30000 (must not be below
                                  the server's min_client_ping_ms) */
    int keepalive_timeout_ms;  /* declare the peer dead after this; 0 = 10000 */
} mx_rpc_channel_options;

/* Creates a channel to address ("host:port"); connects lazily on the first call.
 * opts may be NULL. */
int mx_rpc_channel_create(const char *address, const mx_rpc_channel_options *opts,
                          mx_rpc_channel **out, mx_error *err);
void mx_rpc_channel_destroy(mx_rpc_channel *ch);
const char *mx_rpc_channel_address(const mx_rpc_channel *ch);

/* The outcome of a unary call: final status and, when OK, the response bytes. */
typedef struct mx_rpc_result {
    mx_rpc_status status;
    mx_rpc_bytes response;
} mx_rpc_result;

/* Frees the response; the result may be reused afterwards. */
void mx_rpc_result_free(mx_rpc_result *res);

/* Calls method ("/pkg.Service/Method") with request, waiting at most timeout_ms (< 0 =
 * no deadline). Returns MX_OK when the status is OK, otherwise the mx_code mapped from the
 * status (res->status has code and message). res must be freed with mx_rpc_result_free in
 * every case. */
int mx_rpc_unary(mx_rpc_channel *ch, const char *method, mx_rpc_payload request,
                 int64_t timeout_ms, mx_rpc_result *res);

/* Starts a server-streaming call. Returns 0 or a negative mx_code (then *out is NULL). */
int mx_rpc_stream_open(mx_rpc_channel *ch, const char *method, mx_rpc_payload request,
                       int64_t timeout_ms, mx_rpc_stream **out, mx_error *err);

/* Reads the next message into msg (free it with mx_rpc_bytes_free). Returns 1 for a
 * message, 0 when the stream has ended (see mx_rpc_stream_status). */
int mx_rpc_stream_read(mx_rpc_stream *s, mx_rpc_bytes *msg);

/* The final status, valid once mx_rpc_stream_read returned 0. */
const mx_rpc_status *mx_rpc_stream_status(const mx_rpc_stream *s);

/* Cancels the call (the server handler sees mx_rpc_call_cancelled); reads then end with
 * CANCELLED. Thread-safe with respect to a concurrent mx_rpc_stream_read. */
void mx_rpc_stream_cancel(mx_rpc_stream *s);

/* Cancels the call if it has not ended, and frees the stream. NULL is fine. */
void mx_rpc_stream_close(mx_rpc_stream *s);

/* One call of a fan-out: inputs set by the caller, result filled by mx_rpc_fanout. */
typedef struct mx_rpc_fanout_call {
    mx_rpc_channel *channel;
    const char *method;
    mx_rpc_payload request;
    mx_rpc_result result;    /* free each with mx_rpc_result_free */
} mx_rpc_fanout_call;

/* Starts all n calls at once and returns when every one has finished or the shared
 * timeout_ms passed (< 0 = none). Returns MX_OK if all succeeded; otherwise the mapped code
 * of the first failed call, with err naming its index, peer and status. */
int mx_rpc_fanout(mx_rpc_fanout_call *calls, int n, int64_t timeout_ms, mx_error *err);

#endif
