/* stage_rpc.c - AttentionStage handlers over stage.h (stage_rpc.h): unpacking is the stage's,
 * writing the answer and mapping errors to a gRPC status is done here. */
#include "stage_rpc.h"

#include <stdint.h>
#include <stdlib.h>

#include "core/protocol.h"
#include "core/rpc/pb.h"
#include "mx/internal/v1/attention_stage.pb-c.h"
#include "router/router.h"

static void on_release(mx_rpc_call *call, const uint8_t *request, size_t request_len, void *user)
{
    mx_error err = {0};
    mx_rpc_payload resp;
    if (stage_release(user, request, request_len, &resp, &err) || mx_rpc_call_write(call, resp, &err))
        mx_rpc_call_set_error(call, &err);
}

/* Info's answer with the router's expert load added (counters read without a lock, so the
 * snapshot never waits for a batch). The stage packs its own fields; this repacks once more,
 * which is fine for a monitoring call. */
static int add_expert_load(mx_router *r, mx_rpc_payload *resp, mx_error *err)
{
    ProtobufCMessage *m = NULL;
    int rc = mx_rpc_pb_unpack(&mx__internal__v1__stage_info_response__descriptor, resp->data, resp->len, &m, err);
    if (resp->release)
        resp->release(resp->release_ctx);
    resp->release = NULL;
    if (rc)
        return rc;
    Mx__Internal__V1__StageInfoResponse *info = (Mx__Internal__V1__StageInfoResponse *)m;
    int L, E, S = mx_router_num_shards(r), n_rep = 0;
    mx_router_dims(r, &L, &E);
    /* replica counts read once: DNS discovery may add slots meanwhile */
    int *reps = malloc((size_t)S * sizeof *reps);
    if (!reps) {
        protobuf_c_message_free_unpacked(m, NULL);
        return mx_fail(err, MX_ENOMEM, "out of memory describing the expert load");
    }
    for (int sh = 0; sh < S; sh++)
        n_rep += reps[sh] = mx_router_num_replicas(r, sh);
    int l0 = (int)info->first_layer, nl = (int)info->end_layer - l0;
    if (l0 < 0 || nl < 0 || l0 + nl > L)
        nl = 0;
    uint64_t *tokens = malloc((size_t)L * E * sizeof *tokens);
    Mx__Internal__V1__LayerTokens *lt = calloc((size_t)(nl ? nl : 1), sizeof *lt);
    Mx__Internal__V1__LayerTokens **ltp = calloc((size_t)(nl ? nl : 1), sizeof *ltp);
    Mx__Internal__V1__ShardLoad *sl = calloc((size_t)S, sizeof *sl);
    Mx__Internal__V1__ShardLoad **slp = calloc((size_t)S, sizeof *slp);
    Mx__Internal__V1__ReplicaLoad *rl = calloc((size_t)(n_rep ? n_rep : 1), sizeof *rl);
    Mx__Internal__V1__ReplicaLoad **rlp = calloc((size_t)(n_rep ? n_rep : 1), sizeof *rlp);
    if (!tokens || !lt || !ltp || !sl || !slp || !rl || !rlp) {
        rc = mx_fail(err, MX_ENOMEM, "out of memory describing the expert load");
        goto done;
    }
    mx_router_expert_tokens(r, tokens);
    Mx__Internal__V1__ExpertLoad load = MX__INTERNAL__V1__EXPERT_LOAD__INIT;
    load.num_experts = (uint32_t)E;
    for (int i = 0; i < nl; i++) {
        Mx__Internal__V1__LayerTokens init = MX__INTERNAL__V1__LAYER_TOKENS__INIT;
        lt[i] = init;
        lt[i].layer = (uint32_t)(l0 + i);
        lt[i].n_tokens = (size_t)E;
        lt[i].tokens = tokens + (size_t)(l0 + i) * E;
        ltp[i] = &lt[i];
    }
    load.n_layers = (size_t)nl;
    load.layers = ltp;
    int k = 0;
    for (int sh = 0; sh < S; sh++) {
        Mx__Internal__V1__ShardLoad init = MX__INTERNAL__V1__SHARD_LOAD__INIT;
        sl[sh] = init;
        sl[sh].shard = (uint32_t)sh;
        sl[sh].replicas = rlp + k;
        for (int i = 0; i < reps[sh]; i++, k++) {
            mx_router_replica_load x;
            mx_router_replica_load_get(r, sh, i, &x);
            Mx__Internal__V1__ReplicaLoad rinit = MX__INTERNAL__V1__REPLICA_LOAD__INIT;
            rl[k] = rinit;
            rl[k].address = (char *)x.address;
            rl[k].calls = x.calls;
            rl[k].rows = x.rows;
            rl[k].in_flight = (uint32_t)(x.in_flight > 0 ? x.in_flight : 0);
            rlp[k] = &rl[k];
            sl[sh].calls += x.calls;
            sl[sh].rows += x.rows;
            sl[sh].n_replicas++;
        }
        slp[sh] = &sl[sh];
    }
    load.n_shards = (size_t)S;
    load.shards = slp;
    info->expert_load = &load;
    rc = mx_rpc_pb_pack(&info->base, resp, err);
    info->expert_load = NULL; /* ours, not the unpacked message's: not freed with it */
done:
    protobuf_c_message_free_unpacked(m, NULL);
    free(tokens);
    free(lt);
    free(ltp);
    free(sl);
    free(slp);
    free(rl);
    free(rlp);
    free(reps);
    return rc;
}

static void on_info(mx_rpc_call *call, const uint8_t *request, size_t request_len, void *user)
{
    mx_error err = {0};
    mx_rpc_payload resp;
    mx_router *r = stage_router(user);
    if (stage_info(user, request, request_len, &resp, &err) || (r && add_expert_load(r, &resp, &err)) ||
        mx_rpc_call_write(call, resp, &err))
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
