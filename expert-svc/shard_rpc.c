/* shard_rpc.c - the ExpertShard handlers: RunExperts (validate every field, run each
 * expert group as one batched mx_expert_forward, answer the outputs in request order) and
 * Info. Bad requests get INVALID_ARGUMENT / NOT_FOUND naming the field; the shard keeps
 * serving. Handlers keep no state between calls. */
#include "shard_internal.h"

#include <ctype.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "core/clock.h"
#include "mx/internal/v1/expert_shard.pb-c.h"
#include "core/protocol.h"
#include "core/rpc/health.h"
#include "core/rpc/pb.h"

#if __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "tensors travel as little-endian f32: a big-endian host would need byte swaps here"
#endif

typedef Mx__Internal__V1__RunExpertsRequest run_request;

/* Checks the request against the shard; fills err with the offending field. */
static int validate(const mx_expert_shard *s, const run_request *rq, mx_error *err)
{
    int L = s->cfg.num_hidden_layers, E = s->cfg.num_local_experts, H = s->cfg.hidden_size;
    if (rq->layer >= (uint32_t)L)
        return mx_fail(err, MX_EINVAL, "layer: %u out of range (the model has %d layers)", rq->layer, L);
    const Mx__Internal__V1__Tensor *t = rq->hidden;
    if (!t)
        return mx_fail(err, MX_EINVAL, "hidden: missing");
    if (t->dtype != MX__INTERNAL__V1__DTYPE__DTYPE_F32)
        return mx_fail(err, MX_EINVAL, "hidden.dtype: %d is not supported (only DTYPE_F32)", (int)t->dtype);
    if (t->cols != (uint32_t)H)
        return mx_fail(err, MX_EINVAL, "hidden.cols: %u, expected the hidden size %d", t->cols, H);
    uint64_t rows = 0;
    for (size_t g = 0; g < rq->n_groups; g++) {
        uint32_t e = rq->groups[g]->expert_id;
        if (e >= (uint32_t)E)
            return mx_fail(err, MX_EINVAL, "groups[%zu].expert_id: %u out of range (the model has %d experts)", g,
                           e, E);
        if (!s->mask[(size_t)rq->layer * E + e])
            return mx_fail(err, MX_ENOTFOUND, "groups[%zu].expert_id: layer %u expert %u is not held by shard %d", g,
                           rq->layer, e, s->shard_index);
        rows += rq->groups[g]->num_rows;
    }
    if (rows != t->rows)
        return mx_fail(err, MX_EINVAL, "hidden.rows: %u, but the groups' num_rows add up to %llu", t->rows,
                       (unsigned long long)rows);
    uint64_t want = (uint64_t)t->rows * (uint64_t)t->cols * 4u;
    if ((uint64_t)t->data.len != want)
        return mx_fail(err, MX_EINVAL, "hidden.data: %zu bytes, expected rows*cols*4 = %llu", t->data.len,
                       (unsigned long long)want);
    return 0;
}

/* y rows = expert(x rows) for one group, on the backend's device when it is not the CPU. */
static int run_group(mx_expert_shard *s, const mx_expert_weights *ew, const float *x, float *y, int n,
                     mx_error *err)
{
    mx_backend *be = s->be;
    int H = s->cfg.hidden_size;
    if (be->device == MX_DEVICE_CPU && be->act_dtype == MX_DTYPE_F32) {
        mx_tensor xt = mx_tensor_2d((void *)x, MX_DTYPE_F32, MX_DEVICE_CPU, n, H);
        mx_tensor yt = mx_tensor_2d(y, MX_DTYPE_F32, MX_DEVICE_CPU, n, H);
        return mx_expert_forward(be, ew, &xt, &yt, err);
    }
    int64_t shape[2] = {n, H};
    mx_tensor xt = {0}, yt = {0};
    int rc = be->alloc(be, &xt, be->act_dtype, 2, shape, err);
    if (!rc) rc = be->alloc(be, &yt, be->act_dtype, 2, shape, err);
    if (!rc) rc = be->from_host_f32(be, &xt, x, err);
    if (!rc) rc = mx_expert_forward(be, ew, &xt, &yt, err);
    if (!rc) rc = be->to_host_f32(be, y, &yt, err);
    if (xt.data) be->free(be, &xt);
    if (yt.data) be->free(be, &yt);
    return rc;
}

static int compute(mx_expert_shard *s, mx_rpc_call *call, const run_request *rq, float *y, mx_error *err)
{
    int H = s->cfg.hidden_size;
    const uint8_t *xb = rq->hidden->data.data;
    float *xcopy = NULL;
    /* protobuf-c gives bytes fields their own malloc'd buffer; copy only if that ever changes */
    if ((uintptr_t)xb % sizeof(float)) {
        xcopy = malloc(rq->hidden->data.len ? rq->hidden->data.len : 1);
        if (!xcopy)
            return mx_fail(err, MX_ENOMEM, "out of memory copying %zu input bytes", rq->hidden->data.len);
        memcpy(xcopy, xb, rq->hidden->data.len);
        xb = (const uint8_t *)xcopy;
    }
    const float *x = (const float *)xb;
    int rc = 0;
    size_t row = 0;
    double t_wait = mx_now_ms();
    pthread_mutex_lock(&s->compute_lock);
    double t_run = mx_now_ms();
    for (size_t g = 0; g < rq->n_groups && !rc; g++) {
        int n = (int)rq->groups[g]->num_rows;
        if (n == 0)
            continue;
        if (mx_rpc_call_cancelled(call)) {
            rc = mx_fail(err, MX_ECANCELLED, "cancelled by the client or the deadline");
            break;
        }
        const mx_expert_weights *ew = mx_model_expert(s->model, (int)rq->layer, (int)rq->groups[g]->expert_id);
        rc = run_group(s, ew, x + row * H, y + row * H, n, err);
        row += (size_t)n;
    }
    pthread_mutex_unlock(&s->compute_lock);
    shard_metrics_timing(s->metrics, (t_run - t_wait) / 1e3, (mx_now_ms() - t_run) / 1e3);
    free(xcopy);
    return rc;
}

/* Load accounting of an answered call (relaxed atomics: Info reads a snapshot). */
static void count_served(mx_expert_shard *s, const run_request *rq)
{
    int E = s->cfg.num_local_experts;
    atomic_fetch_add_explicit(&s->calls_total, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&s->rows_total, rq->hidden->rows, memory_order_relaxed);
    for (size_t g = 0; g < rq->n_groups; g++)
        atomic_fetch_add_explicit(&s->expert_rows[(size_t)rq->layer * E + rq->groups[g]->expert_id],
                                  rq->groups[g]->num_rows, memory_order_relaxed);
}

static void on_run_experts(mx_rpc_call *call, const uint8_t *request, size_t len, void *user)
{
    mx_expert_shard *s = user;
    mx_error err = {0};
    ProtobufCMessage *msg = NULL;
    float *y = NULL;
    double t0 = mx_now_ms();
    atomic_fetch_add_explicit(&s->in_flight, 1, memory_order_relaxed);
    shard_metrics_enter(s->metrics);
    int rc = mx_rpc_pb_unpack(&mx__internal__v1__run_experts_request__descriptor, request, len, &msg, &err);
    const run_request *rq = (const run_request *)msg;
    if (!rc)
        rc = validate(s, rq, &err);
    uint64_t rows = !rc ? rq->hidden->rows : 0;
    shard_metrics_rows(s->metrics, rows);
    if (!rc) {
        y = malloc(rq->hidden->data.len ? rq->hidden->data.len : 1);
        if (!y)
            rc = mx_fail(&err, MX_ENOMEM, "out of memory for %u output rows", rq->hidden->rows);
    }
    if (!rc)
        rc = compute(s, call, rq, y, &err);
    if (!rc) {
        Mx__Internal__V1__Tensor t = MX__INTERNAL__V1__TENSOR__INIT;
        t.dtype = MX__INTERNAL__V1__DTYPE__DTYPE_F32;
        t.rows = rq->hidden->rows;
        t.cols = rq->hidden->cols;
        t.data.data = (uint8_t *)y;
        t.data.len = rq->hidden->data.len;
        Mx__Internal__V1__RunExpertsResponse resp = MX__INTERNAL__V1__RUN_EXPERTS_RESPONSE__INIT;
        resp.hidden = &t;
        resp.compute_ms = mx_now_ms() - t0;
        /* packed once into a buffer the RPC layer sends without another copy */
        rc = mx_rpc_pb_write(call, &resp.base, &err);
    }
    if (!rc)
        count_served(s, rq);
    atomic_fetch_sub_explicit(&s->in_flight, 1, memory_order_relaxed);
    shard_metrics_leave(s->metrics, rows, rc == 0);
    if (rc)
        mx_rpc_call_set_error(call, &err);
    free(y);
    if (msg)
        protobuf_c_message_free_unpacked(msg, NULL);
}

static void on_info(mx_rpc_call *call, const uint8_t *request, size_t len, void *user)
{
    mx_expert_shard *s = user;
    mx_error err = {0};
    ProtobufCMessage *msg = NULL;
    int rc = mx_rpc_pb_unpack(&mx__internal__v1__shard_info_request__descriptor, request, len, &msg, &err);
    if (rc) {
        mx_rpc_call_set_error(call, &err);
        return;
    }
    protobuf_c_message_free_unpacked(msg, NULL);
    int L = s->cfg.num_hidden_layers, E = s->cfg.num_local_experts;
    Mx__Internal__V1__LayerExperts *layers = calloc((size_t)L, sizeof *layers);
    Mx__Internal__V1__LayerExperts **lp = calloc((size_t)L, sizeof *lp);
    uint32_t *ids = malloc((size_t)L * E * sizeof *ids);
    Mx__Internal__V1__ExpertRows *rows = calloc((size_t)L * E, sizeof *rows);
    Mx__Internal__V1__ExpertRows **rp = calloc((size_t)L * E, sizeof *rp);
    if (!layers || !lp || !ids || !rows || !rp) {
        mx_fail(&err, MX_ENOMEM, "out of memory describing the shard");
        mx_rpc_call_set_error(call, &err);
    } else {
        size_t n = 0;
        for (int l = 0; l < L; l++) {
            Mx__Internal__V1__LayerExperts init = MX__INTERNAL__V1__LAYER_EXPERTS__INIT;
            layers[n] = init;
            layers[n].layer = (uint32_t)l;
            layers[n].expert_ids = ids + (size_t)l * E;
            for (int e = 0; e < E; e++)
                if (s->mask[(size_t)l * E + e])
                    layers[n].expert_ids[layers[n].n_expert_ids++] = (uint32_t)e;
            if (layers[n].n_expert_ids) {
                lp[n] = &layers[n];
                n++;
            }
        }
        char dtype[16];
        snprintf(dtype, sizeof dtype, "%s", mx_dtype_name(s->weight_dtype));
        for (char *c = dtype; *c; c++)
            *c = (char)tolower((unsigned char)*c);
        Mx__Internal__V1__ShardInfoResponse resp = MX__INTERNAL__V1__SHARD_INFO_RESPONSE__INIT;
        resp.shard_index = (uint32_t)s->shard_index;
        resp.n_layers = n;
        resp.layers = lp;
        resp.hidden_size = (uint32_t)s->cfg.hidden_size;
        resp.intermediate_size = (uint32_t)s->cfg.intermediate_size;
        resp.weight_bytes = s->weight_bytes;
        resp.weight_dtype = dtype;
        resp.backend = (char *)s->be->name;
        resp.calls_total = atomic_load_explicit(&s->calls_total, memory_order_relaxed);
        resp.rows_total = atomic_load_explicit(&s->rows_total, memory_order_relaxed);
        resp.in_flight = (uint32_t)atomic_load_explicit(&s->in_flight, memory_order_relaxed);
        for (int l = 0; l < L; l++)
            for (int e = 0; e < E; e++) {
                uint64_t v = atomic_load_explicit(&s->expert_rows[(size_t)l * E + e], memory_order_relaxed);
                if (!v)
                    continue;
                Mx__Internal__V1__ExpertRows init = MX__INTERNAL__V1__EXPERT_ROWS__INIT;
                Mx__Internal__V1__ExpertRows *x = &rows[resp.n_expert_rows];
                *x = init;
                x->layer = (uint32_t)l;
                x->expert_id = (uint32_t)e;
                x->rows = v;
                rp[resp.n_expert_rows++] = x;
            }
        resp.expert_rows = rp;
        if (mx_rpc_pb_write(call, &resp.base, &err))
            mx_rpc_call_set_error(call, &err);
    }
    free(layers);
    free(lp);
    free(ids);
    free(rows);
    free(rp);
}

int mx_expert_shard_serve(mx_expert_shard *s, mx_rpc_server *srv, mx_error *err)
{
    MX_TRY(mx_rpc_health_attach(srv, err));
    MX_TRY(mx_rpc_server_add_unary(srv, MX_EXPERT_RUN_METHOD, on_run_experts, s, err));
    MX_TRY(mx_rpc_server_add_unary(srv, MX_EXPERT_INFO_METHOD, on_info, s, err));
    return mx_rpc_health_set(srv, MX_EXPERT_SERVICE, MX_RPC_SERVING, err);
}
