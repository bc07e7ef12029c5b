/* dispatch.c - one layer's MoE step over the network: group routed tokens by expert, one
 * RunExperts call per shard in parallel (retrying once on another replica when a replica is
 * unreachable or too slow), then combine the weighted outputs in slot order, so the result
 * does not depend on which shard answered first. Keeps nothing between calls. */
#include "router_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "protocol.h"
#include "mx/internal/v1/expert_shard.pb-c.h"
#include "rpc/status.h"

/* Fewest calls in flight wins; among equals, start from a rotating position so ties rotate.
 * avoid (-1 = none) excludes a replica that just failed. */
static int router_pick_replica(router_shard *sh, int avoid)
{
    unsigned start = atomic_fetch_add(&sh->next, 1u);
    int best = -1, best_load = 0;
    for (int i = 0; i < sh->n_replicas; i++) {
        int idx = (int)((start + (unsigned)i) % (unsigned)sh->n_replicas);
        if (idx == avoid)
            continue;
        int load = atomic_load(&sh->replicas[idx].in_flight);
        if (best < 0 || load < best_load) {
            best = idx;
            best_load = load;
        }
    }
    return best;
}

#if __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "tensors travel as little-endian f32: a big-endian host would need byte swaps here"
#endif

/* A packed request shared by the first try and the retry: released when both are done. */
typedef struct shared_bytes {
    atomic_int refs;
    size_t len;
    uint8_t data[];
} shared_bytes;

static void shared_release(void *ctx)
{
    shared_bytes *b = ctx;
    if (atomic_fetch_sub(&b->refs, 1) == 1)
        free(b);
}

static mx_rpc_payload shared_payload(shared_bytes *b)
{
    atomic_fetch_add(&b->refs, 1);
    mx_rpc_payload p = {b->data, b->len, shared_release, b};
    return p;
}

/* Per shard involved in this run. */
typedef struct shard_job {
    int shard;
    int n_rows;
    int n_groups;
    int replica;          /* chosen replica of the current try */
    shared_bytes *req;
    Mx__Internal__V1__RunExpertsResponse *resp;
    const uint8_t *y;     /* resp rows, [n_rows, hidden] f32 */
} shard_job;

/* Per-run scratch: grouping of the T*k slots. */
typedef struct plan {
    int T, k, E;
    int *count;           /* [E] slots routed to each expert */
    int *start;           /* [E] first row of expert e inside its shard's request */
    int *job_of;          /* [n_shards] job index or -1 */
    int *slot_row;        /* [T*k] row of the slot inside its shard's request */
    shard_job *jobs;
    int n_jobs;
} plan;

static void plan_free(plan *p)
{
    for (int j = 0; j < p->n_jobs; j++) {
        if (p->jobs[j].req)
            shared_release(p->jobs[j].req);
        if (p->jobs[j].resp)
            protobuf_c_message_free_unpacked(&p->jobs[j].resp->base, NULL);
    }
    free(p->count);
    free(p->start);
    free(p->job_of);
    free(p->slot_row);
    free(p->jobs);
}

/* Groups slots by expert (experts ascending, slots in flat order inside an expert) and
 * assigns each used expert's rows to its shard's request. */
static int plan_build(mx_router *r, int layer, const int32_t *ids, plan *p, mx_error *err)
{
    int S = p->T * p->k, E = p->E;
    p->count = calloc((size_t)E, sizeof *p->count);
    p->start = calloc((size_t)E, sizeof *p->start);
    p->job_of = malloc((size_t)r->n_shards * sizeof *p->job_of);
    p->slot_row = malloc((size_t)S * sizeof *p->slot_row);
    p->jobs = calloc((size_t)r->n_shards, sizeof *p->jobs);
    if (!p->count || !p->start || !p->job_of || !p->slot_row || !p->jobs)
        return mx_fail(err, MX_ENOMEM, "router: out of memory grouping %d tokens", p->T);
    for (int i = 0; i < S; i++) {
        if (ids[i] < 0 || ids[i] >= E)
            return mx_fail(err, MX_EINVAL, "router: layer %d token %d slot %d: expert id %d out of range [0, %d)",
                           layer, i / p->k, i % p->k, ids[i], E);
        p->count[ids[i]]++;
    }
    for (int s = 0; s < r->n_shards; s++)
        p->job_of[s] = -1;
    for (int e = 0; e < E; e++) {
        if (!p->count[e])
            continue;
        int s = r->owner[(size_t)layer * E + e];
        if (s < 0)
            return mx_fail(err, MX_ENOTFOUND, "router: no expert shard owns layer %d expert %d", layer, e);
        if (p->job_of[s] < 0) {
            p->job_of[s] = p->n_jobs;
            p->jobs[p->n_jobs++].shard = s;
        }
        shard_job *j = &p->jobs[p->job_of[s]];
        p->start[e] = j->n_rows;
        j->n_rows += p->count[e];
        j->n_groups++;
    }
    int *fill = calloc((size_t)E, sizeof *fill);
    if (!fill)
        return mx_fail(err, MX_ENOMEM, "router: out of memory grouping tokens");
    for (int i = 0; i < S; i++)
        p->slot_row[i] = p->start[ids[i]] + fill[ids[i]]++;
    free(fill);
    return 0;
}

/* Packs one shard's request: its experts ascending, each with its rows copied from x. */
static int pack_request(mx_router *r, int layer, const float *x, const int32_t *ids, plan *p, shard_job *job,
                        mx_error *err)
{
    size_t row_bytes = (size_t)r->hidden * sizeof(float);
    uint8_t *rows = malloc((size_t)(job->n_rows ? job->n_rows : 1) * row_bytes);
    Mx__Internal__V1__ExpertGroup *groups = calloc((size_t)job->n_groups, sizeof *groups);
    Mx__Internal__V1__ExpertGroup **gp = calloc((size_t)job->n_groups, sizeof *gp);
    int rc = 0;
    if (!rows || !groups || !gp) {
        rc = mx_fail(err, MX_ENOMEM, "router: out of memory packing a request for shard %d", job->shard);
        goto done;
    }
    int g = 0;
    for (int e = 0; e < p->E; e++) {
        if (!p->count[e] || r->owner[(size_t)layer * p->E + e] != job->shard)
            continue;
        Mx__Internal__V1__ExpertGroup init = MX__INTERNAL__V1__EXPERT_GROUP__INIT;
        groups[g] = init;
        groups[g].expert_id = (uint32_t)e;
        groups[g].num_rows = (uint32_t)p->count[e];
        gp[g] = &groups[g];
        g++;
    }
    for (int i = 0; i < p->T * p->k; i++)
        if (r->owner[(size_t)layer * p->E + ids[i]] == job->shard)
            memcpy(rows + (size_t)p->slot_row[i] * row_bytes, x + (size_t)(i / p->k) * r->hidden, row_bytes);

    Mx__Internal__V1__Tensor t = MX__INTERNAL__V1__TENSOR__INIT;
    t.dtype = MX__INTERNAL__V1__DTYPE__DTYPE_F32;
    t.rows = (uint32_t)job->n_rows;
    t.cols = (uint32_t)r->hidden;
    t.data.data = rows;
    t.data.len = (size_t)job->n_rows * row_bytes;
    Mx__Internal__V1__RunExpertsRequest req = MX__INTERNAL__V1__RUN_EXPERTS_REQUEST__INIT;
    req.layer = (uint32_t)layer;
    req.n_groups = (size_t)job->n_groups;
    req.groups = gp;
    req.hidden = &t;
    size_t len = protobuf_c_message_get_packed_size(&req.base);
    job->req = malloc(sizeof *job->req + len);
    if (!job->req) {
        rc = mx_fail(err, MX_ENOMEM, "router: out of memory packing a request for shard %d", job->shard);
        goto done;
    }
    atomic_init(&job->req->refs, 1);
    job->req->len = protobuf_c_message_pack(&req.base, job->req->data);
done:
    free(rows);
    free(groups);
    free(gp);
    return rc;
}

static const char *replica_address(mx_router *r, const shard_job *job)
{
    return mx_rpc_channel_address(r->shards[job->shard].replicas[job->replica].channel);
}

/* Checks a response's shape and keeps a pointer to its rows. */
static int take_response(mx_router *r, shard_job *job, const mx_rpc_bytes *bytes, mx_error *err)
{
    job->resp = mx__internal__v1__run_experts_response__unpack(NULL, bytes->len, bytes->data);
    const char *who = replica_address(r, job);
    if (!job->resp)
        return mx_fail(err, MX_EINTERNAL, "expert shard %d (%s): malformed RunExpertsResponse (%zu bytes)",
                       job->shard, who, bytes->len);
    const Mx__Internal__V1__Tensor *t = job->resp->hidden;
    if (!t || t->dtype != MX__INTERNAL__V1__DTYPE__DTYPE_F32 || t->rows != (uint32_t)job->n_rows ||
        t->cols != (uint32_t)r->hidden || t->data.len != (size_t)job->n_rows * r->hidden * sizeof(float))
        return mx_fail(err, MX_EINTERNAL,
                       "expert shard %d (%s): response hidden is %s %ux%u (%zu bytes), expected f32 %dx%d",
                       job->shard, who, t ? (t->dtype == MX__INTERNAL__V1__DTYPE__DTYPE_F32 ? "f32" : "non-f32") : "missing",
                       t ? t->rows : 0, t ? t->cols : 0, t ? t->data.len : 0, job->n_rows, r->hidden);
    job->y = t->data.data;
    return 0;
}

static int retryable(grpc_status_code c)
{
    return c == GRPC_STATUS_UNAVAILABLE || c == GRPC_STATUS_DEADLINE_EXCEEDED;
}

/* Sends the jobs listed in idx[0..n) as one parallel fan-out on their chosen replicas. */
static void send_jobs(mx_router *r, plan *p, const int *idx, int n, mx_rpc_fanout_call *calls)
{
    for (int i = 0; i < n; i++) {
        shard_job *job = &p->jobs[idx[i]];
        router_replica *rep = &r->shards[job->shard].replicas[job->replica];
        memset(&calls[i], 0, sizeof calls[i]);
        calls[i].channel = rep->channel;
        calls[i].method = MX_EXPERT_RUN_METHOD;
        calls[i].request = shared_payload(job->req);
        atomic_fetch_add(&rep->in_flight, 1);
    }
    atomic_fetch_add(&r->calls, (unsigned long long)n);
    mx_rpc_fanout(calls, n, r->timeout_ms, NULL);
    for (int i = 0; i < n; i++) {
        shard_job *job = &p->jobs[idx[i]];
        atomic_fetch_sub(&r->shards[job->shard].replicas[job->replica].in_flight, 1);
    }
}

static int call_shards(mx_router *r, plan *p, mx_error *err)
{
    int n = p->n_jobs, n_retry = 0, rc = 0;
    int *idx = malloc((size_t)n * sizeof *idx);
    mx_rpc_fanout_call *calls = calloc((size_t)n, sizeof *calls);
    if (!idx || !calls) {
        free(idx);
        free(calls);
        return mx_fail(err, MX_ENOMEM, "router: out of memory starting %d calls", n);
    }
    for (int i = 0; i < n; i++) {
        idx[i] = i;
        p->jobs[i].replica = router_pick_replica(&r->shards[p->jobs[i].shard], -1);
    }
    send_jobs(r, p, idx, n, calls);
    for (int i = 0; i < n; i++) {
        shard_job *job = &p->jobs[i];
        const mx_rpc_status *st = &calls[i].result.status;
        int other = retryable(st->code) ? router_pick_replica(&r->shards[job->shard], job->replica) : -1;
        if (st->code == GRPC_STATUS_OK) {
            if (!rc)
                rc = take_response(r, job, &calls[i].result.response, err);
        } else if (other >= 0) {
            job->replica = other;
            idx[n_retry++] = i;
        } else if (!rc) {
            rc = mx_fail(err, mx_rpc_code_from_status(st->code), "expert shard %d (%s): RunExperts: %s: %s",
                         job->shard, replica_address(r, job), mx_rpc_status_name(st->code), st->message);
        }
        mx_rpc_result_free(&calls[i].result);
    }
    if (!rc && n_retry) {
        atomic_fetch_add(&r->retries, (unsigned long long)n_retry);
        send_jobs(r, p, idx, n_retry, calls);
        for (int i = 0; i < n_retry; i++) {
            shard_job *job = &p->jobs[idx[i]];
            const mx_rpc_status *st = &calls[i].result.status;
            if (rc)
                ;
            else if (st->code == GRPC_STATUS_OK)
                rc = take_response(r, job, &calls[i].result.response, err);
            else
                rc = mx_fail(err, mx_rpc_code_from_status(st->code),
                             "expert shard %d (%s, after a retry): RunExperts: %s: %s", job->shard,
                             replica_address(r, job), mx_rpc_status_name(st->code), st->message);
            mx_rpc_result_free(&calls[i].result);
        }
    }
    free(idx);
    free(calls);
    return rc;
}

/* out[t] += w * y for t's slots in slot order: the sum's order never depends on timing. */
static void combine(mx_router *r, int layer, const plan *p, const int32_t *ids, const float *weights, float *out)
{
    int H = r->hidden;
    for (int t = 0; t < p->T; t++) {
        float *o = out + (size_t)t * H;
        for (int j = 0; j < p->k; j++) {
            int i = t * p->k + j;
            const shard_job *job = &p->jobs[p->job_of[r->owner[(size_t)layer * p->E + ids[i]]]];
            const uint8_t *yb = job->y + (size_t)p->slot_row[i] * H * sizeof(float);
            float w = weights[i];
            for (int c = 0; c < H; c++) {
                float y;
                memcpy(&y, yb + (size_t)c * sizeof y, sizeof y);
                o[c] += w * y;
            }
        }
    }
}

/* x2 as host f32 rows: the tensor itself on the CPU, else a copy through the backend. */
static int host_rows(mx_router *r, const mx_tensor *t, float **host, bool *owned, mx_error *err)
{
    *owned = false;
    if (t->device == MX_DEVICE_CPU && t->dtype == MX_DTYPE_F32) {
        *host = t->data;
        return 0;
    }
    if (!r->be)
        return mx_fail(err, MX_EINVAL, "router: tensor is not host f32 and the router has no backend to copy it");
    *host = malloc((size_t)mx_tensor_numel(t) * sizeof(float));
    if (!*host)
        return mx_fail(err, MX_ENOMEM, "router: out of memory copying activations to the host");
    *owned = true;
    return r->be->to_host_f32(r->be, *host, t, err);
}

static int run(mx_router *r, int layer, const mx_tensor *x2, const int32_t *ids, const float *weights, int k,
               mx_tensor *out, mx_error *err)
{
    if (layer < 0 || layer >= r->num_layers)
        return mx_fail(err, MX_EINVAL, "router: layer %d out of range [0, %d)", layer, r->num_layers);
    if (x2->ndim != 2 || x2->shape[1] != r->hidden || out->ndim != 2 || out->shape[0] != x2->shape[0] ||
        out->shape[1] != r->hidden)
        return mx_fail(err, MX_EINVAL, "router: layer %d: x2/out must be [T, %d]", layer, r->hidden);
    if (k <= 0 || k > r->num_experts)
        return mx_fail(err, MX_EINVAL, "router: layer %d: top-k %d out of range [1, %d]", layer, k, r->num_experts);
    if (x2->shape[0] == 0)
        return 0;
    if (x2->shape[0] > (1 << 24))
        return mx_fail(err, MX_ERANGE, "router: layer %d: %lld tokens is too many for one call", layer,
                       (long long)x2->shape[0]);
    plan p = {.T = (int)x2->shape[0], .k = k, .E = r->num_experts};
    float *x = NULL, *o = NULL;
    bool x_owned = false, o_owned = false;
    int rc = plan_build(r, layer, ids, &p, err);
    if (!rc)
        rc = host_rows(r, x2, &x, &x_owned, err);
    for (int j = 0; j < p.n_jobs && !rc; j++)
        rc = pack_request(r, layer, x, ids, &p, &p.jobs[j], err);
    if (x_owned)
        free(x);
    if (!rc)
        rc = call_shards(r, &p, err);
    if (!rc)
        rc = host_rows(r, out, &o, &o_owned, err);
    if (!rc) {
        combine(r, layer, &p, ids, weights, o);
        if (o_owned)
            rc = r->be->from_host_f32(r->be, out, o, err);
    }
    if (o_owned)
        free(o);
    plan_free(&p);
    return rc;
}

int mx_router_run(mx_router *r, int layer, const mx_tensor *x2, const int32_t *ids, const float *weights, int k,
                  mx_tensor *out, mx_error *err)
{
    int rc = run(r, layer, x2, ids, weights, k, out, err);
    if (rc)
        atomic_fetch_add(&r->failures, 1);
    return rc;
}
