/* kv_budget.c - the stages' KV numbers and the reservation arithmetic (kv_budget.h). The
 * bytes of a sequence are those a stage's backend takes for it: whole MX_KV_PAGE_TOKENS pages
 * per softmax layer in the stage's dtype (core/kv_cache.h), so a reservation that fits here
 * fits there as long as no one else uses the stage. */
#include "kv_budget.h"

#include <stdio.h>
#include <string.h>

#include "core/protocol.h"
#include "core/rpc/pb.h"
#include "mx/internal/v1/attention_stage.pb-c.h"

#define INFO MX_STAGE_INFO_METHOD

int gw_kv_fetch(gw_kv *kv, mx_rpc_channel *const *stages, const gw_config *cfg, int64_t timeout_ms, mx_error *err)
{
    int n = cfg->n_stages;
    mx_rpc_fanout_call calls[GW_MAX_STAGES];
    memset(calls, 0, sizeof calls);
    Mx__Internal__V1__StageInfoRequest rq = MX__INTERNAL__V1__STAGE_INFO_REQUEST__INIT;
    int rc = 0, k = 0;
    for (; k < n && !rc; k++) {
        calls[k].channel = stages[k];
        calls[k].method = INFO;
        rc = mx_rpc_pb_pack(&rq.base, &calls[k].request, err);
    }
    if (!rc)
        rc = mx_rpc_fanout(calls, n, timeout_ms, err);
    else /* not sent: the packed requests are still ours */
        for (int i = 0; i < k - 1; i++)
            calls[i].request.release(calls[i].request.release_ctx);
    gw_kv got = *kv;
    got.n_stages = n;
    for (int i = 0; i < n && !rc; i++) {
        ProtobufCMessage *m = NULL;
        rc = mx_rpc_pb_unpack(&mx__internal__v1__stage_info_response__descriptor, calls[i].result.response.data,
                              calls[i].result.response.len, &m, err);
        if (rc) {
            mx_error_prefix(err, "stage %d (%s) Info", i, cfg->stages[i]);
            break;
        }
        const Mx__Internal__V1__StageInfoResponse *r = (const Mx__Internal__V1__StageInfoResponse *)m;
        gw_stage_kv *st = &got.st[i];
        st->softmax_layers = (int)r->softmax_layers;
        st->budget_bytes = r->kv_budget_bytes;
        st->tokens_fit = r->kv_tokens_fit > (uint64_t)INT64_MAX ? INT64_MAX : (int64_t)r->kv_tokens_fit;
        if (r->stage_index != (uint32_t)i)
            rc = mx_fail(err, MX_EINVAL, "gateway.stages[%d] = %s is stage %u of its pipeline (check the order)", i,
                         cfg->stages[i], r->stage_index);
        else if (!r->kv_dtype[0]) /* an older stage: no KV numbers */
            *st = (gw_stage_kv){.dtype = MX_KV_BF16, .tokens_fit = INT64_MAX};
        else if ((rc = mx_kv_dtype_parse(r->kv_dtype, "kv_dtype", &st->dtype, err)))
            mx_error_prefix(err, "stage %d (%s) Info", i, cfg->stages[i]);
        st->reserved_bytes = kv->st[i].reserved_bytes;
        st->atomic_steps = r->atomic_steps;
        st->lease_ms = r->sequence_lease_ms > (uint64_t)INT64_MAX ? INT64_MAX : (int64_t)r->sequence_lease_ms;
        protobuf_c_message_free_unpacked(m, NULL);
    }
    for (int i = 0; i < k; i++)
        mx_rpc_result_free(&calls[i].result);
    if (!rc)
        *kv = got;
    return rc;
}

uint64_t gw_kv_bytes(const gw_kv *kv, int i, int64_t tokens)
{
    const gw_stage_kv *st = &kv->st[i];
    return mx_kv_bytes_for_tokens(st->dtype, kv->kv_heads, kv->head_dim, st->softmax_layers, tokens);
}

int64_t gw_kv_tokens_fit(const gw_kv *kv, int *stage)
{
    int64_t fit = INT64_MAX;
    int at = -1;
    for (int i = 0; i < kv->n_stages; i++)
        if (kv->st[i].budget_bytes && kv->st[i].softmax_layers && kv->st[i].tokens_fit < fit) {
            fit = kv->st[i].tokens_fit;
            at = i;
        }
    if (stage)
        *stage = at;
    return fit;
}

bool gw_kv_fits_now(const gw_kv *kv, int64_t tokens)
{
    for (int i = 0; i < kv->n_stages; i++) {
        const gw_stage_kv *st = &kv->st[i];
        if (st->budget_bytes && st->reserved_bytes + gw_kv_bytes(kv, i, tokens) > st->budget_bytes)
            return false;
    }
    return true;
}

int gw_kv_check_ever(const gw_kv *kv, int64_t tokens, mx_error *err)
{
    for (int i = 0; i < kv->n_stages; i++) {
        const gw_stage_kv *st = &kv->st[i];
        uint64_t need = gw_kv_bytes(kv, i, tokens);
        if (!st->budget_bytes || need <= st->budget_bytes)
            continue;
        int at;
        int64_t fit = gw_kv_tokens_fit(kv, &at);
        const gw_stage_kv *lim = &kv->st[at];
        return mx_fail(err, MX_ENOMEM,
                       "prompt + max_new_tokens = %lld tokens do not fit the KV cache: at most %lld tokens fit "
                       "(stage %d: KV budget %llu bytes, %s, %d softmax layers, %llu bytes per %d-token page)",
                       (long long)tokens, (long long)fit, at, (unsigned long long)lim->budget_bytes,
                       mx_kv_dtype_name(lim->dtype), lim->softmax_layers,
                       (unsigned long long)gw_kv_bytes(kv, at, MX_KV_PAGE_TOKENS), MX_KV_PAGE_TOKENS);
    }
    return 0;
}

void gw_kv_reserve(gw_kv *kv, int64_t tokens, int sign)
{
    for (int i = 0; i < kv->n_stages; i++) {
        uint64_t b = gw_kv_bytes(kv, i, tokens);
        gw_stage_kv *st = &kv->st[i];
        if (sign > 0)
            st->reserved_bytes += b;
        else
            st->reserved_bytes = st->reserved_bytes > b ? st->reserved_bytes - b : 0;
    }
}

int gw_kv_admit(gw_kv *kv, gw_request *const *queue, int n, int room, int max_overtakes, bool *take)
{
    int admitted = 0;
    bool blocked = false;
    for (int i = 0; i < n; i++) {
        gw_request *r = queue[i];
        int64_t tokens = (int64_t)r->n_prompt + r->max_new;
        take[i] = !blocked && admitted < room && gw_kv_fits_now(kv, tokens);
        if (!take[i]) {
            if (r->kv_overtaken >= max_overtakes)
                blocked = true;
            continue;
        }
        gw_kv_reserve(kv, tokens, +1);
        r->kv_tokens = tokens;
        admitted++;
        for (int j = 0; j < i; j++)
            if (!take[j] && ++queue[j]->kv_overtaken >= max_overtakes)
                blocked = true;
    }
    return admitted;
}
