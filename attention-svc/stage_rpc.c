/* stage_rpc.c - AttentionStage handlers over stage.h (stage_rpc.h): unpacking is the stage's,
 * writing the answer and mapping errors to a gRPC status is done here. */
#include "stage_rpc.h"

#include <stdint.h>

#include "core/protocol.h"

static void on_release(mx_rpc_call *call, const uint8_t *request, size_t request_len, void *user)
{
    mx_error err = {0};
    mx_rpc_payload resp;
    if (stage_release(user, request, request_len, &resp, &err) || mx_rpc_call_write(call, resp, &err))
        mx_rpc_call_set_error(call, &err);
}

static void on_info(mx_rpc_call *call, const uint8_t *request, size_t request_len, void *user)
{
    mx_error err = {0};
    mx_rpc_payload resp;
    if (stage_info(user, request, request_len, &resp, &err) || mx_rpc_call_write(call, resp, &err))
        mx_rpc_call_set_error(call, &err);
}

/* RunBatch: a forwarded batch gets what is left of our caller's deadline for the next stage. */
static void on_run_batch(mx_rpc_call *call, const uint8_t *request, size_t request_len, void *user)
{
    stage *s = user;
    mx_error err = {0};
    mx_rpc_payload resp;
    int64_t left = mx_rpc_call_ms_left(call);
    int64_t timeout_ms = left == INT64_MAX ? -1 : left > 0 ? left : 1;
    if (stage_run_batch(s, request, request_len, timeout_ms, &resp, &err) || mx_rpc_call_write(call, resp, &err))
        mx_rpc_call_set_error(call, &err);
}

int stage_add_methods(stage *s, mx_rpc_server *srv, mx_error *err)
{
    MX_TRY(mx_rpc_server_add_unary(srv, MX_STAGE_RUN_BATCH_METHOD, on_run_batch, s, err));
    MX_TRY(mx_rpc_server_add_unary(srv, MX_STAGE_RELEASE_METHOD, on_release, s, err));
    MX_TRY(mx_rpc_server_add_unary(srv, MX_STAGE_INFO_METHOD, on_info, s, err));
    return stage_watch_health(s, srv, err);
}
