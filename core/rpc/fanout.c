/* fanout.c - unary calls: one at a time (mx_rpc_unary) or many in parallel (mx_rpc_fanout),
 * all started at once on a call set (callset.c holds the one unary call setup) and waited for
 * together. */
#include "callset.h"

#include <stdio.h>
#include <string.h>

int mx_rpc_fanout(mx_rpc_fanout_call *calls, int n, int64_t timeout_ms, mx_error *err)
{
    if (n <= 0)
        return 0;
    mx_rpc_callset *cs;
    if (mx_rpc_callset_create(n, &cs, NULL)) {
        for (int i = 0; i < n; i++)
            if (calls[i].request.release)
                calls[i].request.release(calls[i].request.release_ctx);
        return mx_fail(err, MX_ENOMEM, "rpc fan-out of %d calls: out of memory", n);
    }
    for (int i = 0; i < n; i++) {
        memset(&calls[i].result, 0, sizeof calls[i].result);
        mx_error serr = {0};
        if (mx_rpc_callset_start(cs, calls[i].channel, calls[i].method, calls[i].request, timeout_ms, &calls[i],
                                 &serr) < 0) {
            calls[i].result.status.code = GRPC_STATUS_INTERNAL;
            snprintf(calls[i].result.status.message, sizeof calls[i].result.status.message, "%s", serr.msg);
        }
    }
    /* Every call has a deadline (or the caller chose none), so each comes back. */
    int id;
    void *user;
    mx_rpc_result res;
    while (mx_rpc_callset_next(cs, -1, &id, &user, &res))
        ((mx_rpc_fanout_call *)user)->result = res;
    mx_rpc_callset_destroy(cs);

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
