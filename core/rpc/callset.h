/* callset.h - unary calls in flight together on one completion queue, each with its own
 * deadline, started at any time and reaped one by one as they finish, with a bounded wait.
 * For callers that react to each finished call (the router: retry elsewhere, hedge after a
 * delay, cancel the slower twin); mx_rpc_fanout is the simpler all-at-once form.
 * A call set belongs to one thread at a time. */
#ifndef MX_RPC_CALLSET_H
#define MX_RPC_CALLSET_H

#include <stdint.h>

#include "../error.h"
#include "client.h"

typedef struct mx_rpc_callset mx_rpc_callset;

/* A set that holds up to max_calls calls at once. */
int mx_rpc_callset_create(int max_calls, mx_rpc_callset **out, mx_error *err);

/* Starts method on ch with request (ownership as in payload.h: released in every case),
 * deadline timeout_ms from now (< 0 = none). user comes back with the result. Returns the
 * call's id (>= 0), or a negative mx_code (the set is full: MX_ERANGE). */
int mx_rpc_callset_start(mx_rpc_callset *cs, mx_rpc_channel *ch, const char *method, mx_rpc_payload request,
                         int64_t timeout_ms, void *user, mx_error *err);

/* Waits up to wait_ms (< 0 = until one finishes) for a call to finish. Returns 1 with
 * *id, *user and *res filled (free res with mx_rpc_result_free), 0 when the wait ended first
 * or no call is in flight. */
int mx_rpc_callset_next(mx_rpc_callset *cs, int64_t wait_ms, int *id, void **user, mx_rpc_result *res);

/* From now on a response comes back in place, without a copy or an allocation when gRPC
 * holds it in one slice: its bytes then stay valid only until that call's slot takes a new
 * call (a later _start) or the set is destroyed, and mx_rpc_result_free does nothing for
 * them. For callers that read each answer before starting more calls (the router). */
void mx_rpc_callset_borrow_responses(mx_rpc_callset *cs);

/* Cancels call id if it is still in flight; it still comes back from _next (CANCELLED). */
void mx_rpc_callset_cancel(mx_rpc_callset *cs, int id);

/* Calls started and not yet returned by _next. */
int mx_rpc_callset_in_flight(const mx_rpc_callset *cs);

/* Makes ch try to connect at once on its next call, instead of after gRPC's reconnect
 * backoff (which grows to 2 minutes while a peer stays down). For health probes that run on
 * their own schedule: a peer that came back is seen on the next probe. */
void mx_rpc_channel_reset_backoff(mx_rpc_channel *ch);

/* Cancels what is in flight, waits for it and frees everything. NULL is fine. */
void mx_rpc_callset_destroy(mx_rpc_callset *cs);

#endif
