/* server.h - a gRPC server for mx services, over the gRPC C core, with no grpc_op in sight.
 * A service registers a handler per full method name ("/mx.v1.Generation/Generate"); each
 * call runs its handler on a worker thread, which reads the request bytes, writes zero or
 * more messages and sets a final status. Unknown methods get UNIMPLEMENTED at once. The
 * server knows nothing of health: grpc.health.v1.Health is an add-on (health.h), and service
 * processes get server, health, signals and drain from the skeleton (service.h).
 *
 * Typical use:
 *     mx_rpc_server_options o = {.address = "0.0.0.0:50051"};
 *     mx_rpc_server_create(&o, &srv, &err);
 *     mx_rpc_health_attach(srv, &err);           // optional (health.h)
 *     mx_rpc_server_add_stream(srv, "/mx.v1.Generation/Generate", on_generate, ctx, &err);
 *     mx_rpc_server_start(srv, &err);
 *     ...
 *     mx_rpc_server_shutdown(srv, 5000);         // let in-flight calls finish for 5 s
 *     mx_rpc_server_destroy(srv);
 */
#ifndef MX_RPC_SERVER_H
#define MX_RPC_SERVER_H

#include <stdint.h>

#include "../error.h"
#include "payload.h"
#include "status.h"

typedef struct mx_rpc_server mx_rpc_server;
typedef struct mx_rpc_call mx_rpc_call;

/* Zero fields take the default named in the comment. */
typedef struct mx_rpc_server_options {
    const char *address;          /* "host:port"; port 0 picks a free port (see _port) */
    int max_message_bytes;        /* largest request/response accepted; 0 = 256 MiB.
                                     Bigger requests fail with RESOURCE_EXHAUSTED. */
    int worker_threads;           /* handlers running at once; 0 = 8 (more calls queue) */
    int keepalive_time_ms;        /* ping idle connections this often; 0 = 30000 */
    int keepalive_timeout_ms;     /* drop a connection whose ping is unanswered; 0 = 10000 */
    int min_client_ping_ms;       /* accept client keepalive pings this often; 0 = 10000 */
    int max_queued_calls;         /* calls waiting for a worker; more are refused at once with
                                     RESOURCE_EXHAUSTED and a retry hint (message and
                                     grpc-retry-pushback-ms trailer); 0 = unbounded */
    int64_t write_timeout_ms;     /* a streaming write the client does not take within this
                                     (it stopped reading) cancels the call; 0 = wait forever */
} mx_rpc_server_options;

/* Called on a worker thread for each call of the method. request is valid until the
 * handler returns. The handler answers with mx_rpc_call_write* and, unless the result is
 * OK, mx_rpc_call_set_status / _set_error; the status goes out when it returns. */
typedef void (*mx_rpc_handler)(mx_rpc_call *call, const uint8_t *request, size_t request_len,
                               void *user);

/* Creates the server and binds the address (nothing is served before _start).
 * Returns 0, or MX_EINVAL / MX_EUNAVAILABLE (address cannot be bound). */
int mx_rpc_server_create(const mx_rpc_server_options *opts, mx_rpc_server **out,
                         mx_error *err);

/* The bound TCP port (useful after binding port 0). */
int mx_rpc_server_port(const mx_rpc_server *srv);

/* Registers a handler before _start. Unary methods must write exactly one message when
 * they succeed (it is sent together with the status); streaming methods write any number,
 * each sent before mx_rpc_call_write returns. method is copied. */
int mx_rpc_server_add_unary(mx_rpc_server *srv, const char *method, mx_rpc_handler handler,
                            void *user, mx_error *err);
int mx_rpc_server_add_stream(mx_rpc_server *srv, const char *method, mx_rpc_handler handler,
                             void *user, mx_error *err);

/* Registers a unary method served by the server's own small control pool (2 threads), not the
 * workers: short answers that must not wait behind load or count against max_queued_calls
 * (health Check, a model description). Its handler must not block. */
int mx_rpc_server_add_control(mx_rpc_server *srv, const char *method, mx_rpc_handler handler,
                              void *user, mx_error *err);

/* Starts serving: the poller and worker threads begin. */
int mx_rpc_server_start(mx_rpc_server *srv, mx_error *err);

/* Graceful shutdown: add-ons are told first (health turns NOT_SERVING), no new calls are accepted, in-flight calls
 * may finish for grace_ms, then the rest are cancelled (their handlers see
 * mx_rpc_call_cancelled) and this returns once every handler has returned. Idempotent. */
void mx_rpc_server_shutdown(mx_rpc_server *srv, int64_t grace_ms);

/* Shuts down (grace 0) if still running, and frees everything. NULL is fine. */
void mx_rpc_server_destroy(mx_rpc_server *srv);

/* Writes the server's bound port (a line with the number) to path, through a temporary file
 * and a rename so a reader polling for it never sees half a number. For launchers that bind
 * port 0 and need to learn the port. */
int mx_rpc_server_write_port_file(const mx_rpc_server *srv, const char *path, mx_error *err);

/* ---- inside a handler ---- */

/* Sends a message. Streaming: blocks until gRPC has taken it, returns MX_ECANCELLED when
 * the client is gone or did not take it within write_timeout_ms (it stopped reading: the
 * call is then cancelled) (the handler should then return). Unary: stores the single response
 * (a second write is MX_EINVAL). A payload with release is always released, even on error. */
int mx_rpc_call_write(mx_rpc_call *call, mx_rpc_payload msg, mx_error *err);

/* Same, copying len bytes of data. */
int mx_rpc_call_write_copy(mx_rpc_call *call, const void *data, size_t len, mx_error *err);

/* Streaming calls: the server reads a call's first message and hands it to the handler; this
 * reads the next one the client sends. Returns 1 with it in *out (free with
 * mx_rpc_bytes_free), 0 when the client closed its side (*out empty), -1 when the call is over:
 * cancelled, a unary call, or ended here because nothing came within idle_ms (> 0; the call is
 * cancelled with DEADLINE_EXCEEDED) or the server began a graceful shutdown (UNAVAILABLE: a
 * stream that waits on its client must not hold the drain). The handler should then return. */
int mx_rpc_call_read(mx_rpc_call *call, int64_t idle_ms, mx_rpc_bytes *out);

/* Final status sent when the handler returns (default OK). Last call wins. */
void mx_rpc_call_set_status(mx_rpc_call *call, grpc_status_code code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Final status from an mx error (mapped by mx_rpc_status_from_code, message kept). */
void mx_rpc_call_set_error(mx_rpc_call *call, const mx_error *err);

/* Non-zero once the client cancelled, the deadline passed or the server cancelled the call.
 * Long handlers should look at it between steps and return early (a handler that sleeps
 * between steps can be woken with mx_rpc_call_on_cancel). */
int mx_rpc_call_cancelled(const mx_rpc_call *call);

/* Has fn(arg) called once when the call is cancelled (the client cancelled or went away, its
 * deadline passed, the server cancelled it), so a handler asleep on something of its own (a
 * condition variable) is woken rather than polling mx_rpc_call_cancelled. fn runs on the
 * server's poller thread with the call's lock held: it must be short and must not use the call
 * (signalling a condition variable is the idea). On a call already cancelled fn runs here, at
 * once. Replaces an earlier registration; fn NULL clears it, and once that returns fn is not
 * running and will not run: clear it before arg goes away (the server clears it anyway when
 * the handler returns). Must not be called while holding a lock fn takes. */
void mx_rpc_call_on_cancel(mx_rpc_call *call, void (*fn)(void *arg), void *arg);

/* Milliseconds until the client's deadline (INT64_MAX if none, <= 0 when passed). */
int64_t mx_rpc_call_ms_left(const mx_rpc_call *call);

/* The client's address ("ipv4:127.0.0.1:53412") and the called method; valid during the
 * handler. */
const char *mx_rpc_call_peer(const mx_rpc_call *call);
const char *mx_rpc_call_method(const mx_rpc_call *call);
/* The status the handler set so far (GRPC_STATUS_OK until it sets one): for access logs. */
grpc_status_code mx_rpc_call_status(const mx_rpc_call *call);

/* The server the call arrived on (e.g. to set health from a handler). */
mx_rpc_server *mx_rpc_call_server(const mx_rpc_call *call);

#endif
