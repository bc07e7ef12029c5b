/* dispatch.c - one layer's MoE step over the network: group routed tokens by expert, one
 * RunExperts call per shard in parallel on one call set (sent again to another replica when
 * a replica fails, misses its attempt deadline or, with hedging, is slower than the p95),
 * then combine the weighted outputs in slot order, so the result does not depend on which
 * shard or replica answered first. Keeps nothing between calls; replica health is
 * replicas.c's. */
#include "router_internal.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/protocol.h"
#include "mx/internal/v1/expert_shard.pb-c.h"
#include "core/clock.h"
#include "core/rpc/callset.h"
#include "core/rpc/status.h"

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
    int replica;          /* replica of the latest attempt (of the answer, once done) */
    shared_bytes *req;
    /* attempts */
    uint64_t tried;       /* bit i: replica i got a copy */
    int active;           /* copies in flight */
    int attempts;
    bool done;
    double soft_at;       /* the latest attempt's own deadline (absolute ms), or INFINITY */
    double hedge_at;      /* when to hedge, or INFINITY */
    int last_code;        /* status of the last failed attempt, for the error */
    char last_msg[MX_ERROR_MSG_MAX];
    int last_replica;
    Mx__Internal__V1__RunExpertsResponse *resp;
    const uint8_t *y;     /* resp rows, [n_rows, hidden] f32 */
} shard_job;

/* Per-run scratch: grouping of the T*k slots. */
typedef struct plan {
    int T, k, E;
    int *count;           /* [E] slots routed to each expert */
    int *start;           /* [E] first row of expert e inside its shard's request */
    int *job_of;          /* [n_shards] job index or -1 */
    int *shard_of;        /* [E] the holder expert e's group goes to in this run, or -1 */
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
    free(p->shard_of);
    free(p->slot_row);
    free(p->jobs);
}

/* The holder of pair `at` for this run: one holder is the common case; among several, the
 * fewest rows per replica, counting rows in flight (other threads' calls) and rows this run
 * already gave the shard; ties go to the lower shard index. */
static int pick_holder(mx_router *r, const plan *p, size_t at)
{
    int b = r->hold_off[at], n = r->hold_off[at + 1] - b;
    if (n <= 1)
        return n ? r->hold[b] : -1;
    int best = -1;
    long long best_rows = 0, best_reps = 1;
    for (int i = 0; i < n; i++) {
        int s = r->hold[b + i];
        long long rows = atomic_load_explicit(&r->shards[s].rows_in_flight, memory_order_relaxed);
        if (p->job_of[s] >= 0)
            rows += p->jobs[p->job_of[s]].n_rows;
        long long reps = r->shards[s].n_replicas;
        if (best < 0 || rows * best_reps < best_rows * reps) {
            best = s;
            best_rows = rows;
            best_reps = reps;
        }
    }
    return best;
}

/* Groups slots by expert (experts ascending, slots in flat order inside an expert) and
 * assigns each used expert's rows to its shard's request. */
static int plan_build(mx_router *r, int layer, const int32_t *ids, plan *p, mx_error *err)
{
    int S = p->T * p->k, E = p->E;
    p->count = calloc((size_t)E, sizeof *p->count);
    p->start = calloc((size_t)E, sizeof *p->start);
    p->job_of = malloc((size_t)r->n_shards * sizeof *p->job_of);
    p->shard_of = malloc((size_t)E * sizeof *p->shard_of);
    p->slot_row = malloc((size_t)S * sizeof *p->slot_row);
    p->jobs = calloc((size_t)r->n_shards, sizeof *p->jobs);
    if (!p->count || !p->start || !p->job_of || !p->shard_of || !p->slot_row || !p->jobs)
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
        p->shard_of[e] = -1;
        if (!p->count[e])
            continue;
        /* load accounting: relaxed atomics, no lock (readers only want a snapshot) */
        atomic_fetch_add_explicit(&r->expert_tokens[(size_t)layer * E + e], (unsigned long long)p->count[e],
                                  memory_order_relaxed);
        int s = pick_holder(r, p, (size_t)layer * E + e);
        if (s < 0)
            return mx_fail(err, MX_ENOTFOUND, "router: no expert shard owns layer %d expert %d", layer, e);
        p->shard_of[e] = s;
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
        if (!p->count[e] || p->shard_of[e] != job->shard)
            continue;
        Mx__Internal__V1__ExpertGroup init = MX__INTERNAL__V1__EXPERT_GROUP__INIT;
        groups[g] = init;
        groups[g].expert_id = (uint32_t)e;
        groups[g].num_rows = (uint32_t)p->count[e];
        gp[g] = &groups[g];
        g++;
    }
    for (int i = 0; i < p->T * p->k; i++)
        if (p->shard_of[ids[i]] == job->shard)
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

static const char *replica_address_of(mx_router *r, int shard, int replica)
{
    return mx_rpc_channel_address(r->shards[shard].replicas[replica].channel);
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

/* Failures another replica may not share: the peer is gone, draining (its server cancels or
 * refuses new streams), overloaded, or too slow. Any other status is the request's own fault
 * and would fail everywhere. */
static bool retryable(grpc_status_code c)
{
    return c == GRPC_STATUS_UNAVAILABLE || c == GRPC_STATUS_CANCELLED || c == GRPC_STATUS_RESOURCE_EXHAUSTED ||
           c == GRPC_STATUS_DEADLINE_EXCEEDED;
}

/* One copy of a job's request in flight. */
typedef struct attempt {
    int job, replica, id;
    double t0;
    bool hedge;
    bool live;            /* in flight: its call-set id is its own (ids are reused after) */
} attempt;

typedef struct fanout {
    mx_router *r;
    plan *p;
    mx_rpc_callset *cs;
    attempt *att;         /* [cap] */
    int n_att, cap;
    double end_ms;        /* the whole step's budget on every shard: expert_timeout_ms */
} fanout;

/* Sends job j to another replica (not yet tried). Returns 1 when a copy went out, 0 when no
 * replica is left or the budget is spent, or a negative mx_code. */
static int start_attempt(fanout *f, int j, bool hedge, mx_error *err)
{
    mx_router *r = f->r;
    shard_job *job = &f->p->jobs[j];
    router_shard *sh = &r->shards[job->shard];
    double now = mx_now_ms(), left = f->end_ms - now;
    if (left < 1 || f->n_att >= f->cap)
        return 0;
    int rep = router_pick_replica(sh, job->tried);
    if (rep < 0)
        return 0;
    attempt *a = &f->att[f->n_att];
    *a = (attempt){.job = j, .replica = rep, .t0 = now, .hedge = hedge, .live = true};
    atomic_fetch_add(&sh->replicas[rep].in_flight, 1);
    atomic_fetch_add(&sh->rows_in_flight, job->n_rows);
    /* the hard deadline is the step's budget: a slow copy is not thrown away at its own
     * deadline, it races the next copy */
    int id = mx_rpc_callset_start(f->cs, sh->replicas[rep].channel, MX_EXPERT_RUN_METHOD, shared_payload(job->req),
                                  (int64_t)left, a, err);
    if (id < 0) {
        atomic_fetch_sub(&sh->replicas[rep].in_flight, 1);
        atomic_fetch_sub(&sh->rows_in_flight, job->n_rows);
        return id;
    }
    atomic_fetch_add_explicit(&sh->replicas[rep].calls_sent, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&sh->replicas[rep].rows_sent, (unsigned long long)job->n_rows, memory_order_relaxed);
    a->id = id;
    f->n_att++;
    job->tried |= 1ull << rep;
    job->replica = rep;
    job->active++;
    job->attempts++;
    atomic_fetch_add(&r->calls, 1);
    if (hedge)
        atomic_fetch_add(&r->hedges, 1);
    else if (job->attempts > 1)
        atomic_fetch_add(&r->retries, 1);
    if (r->observe)
        r->observe(r->observe_ctx, MX_ROUTER_ATTEMPT_SENT, job->shard, rep, !hedge && job->attempts > 1, false, 0);
    /* an attempt's own deadline matters only while another replica could take over */
    bool others = router_has_untried(sh, job->tried);
    job->soft_at = others ? now + router_attempt_ms(r, sh, job->n_rows) : INFINITY;
    job->hedge_at = INFINITY;
    if (r->cfg.hedge && others && job->attempts == 1) {
        double h = router_hedge_ms(sh, job->n_rows);
        if (h >= 0)
            job->hedge_at = now + h;
    }
    return 1;
}

/* Hedges are a small share of all calls, so a slow tier is not doubled in load. */
static bool hedge_allowed(mx_router *r)
{
    unsigned long long calls = atomic_load(&r->calls), hedges = atomic_load(&r->hedges);
    return hedges * 100 < calls * (unsigned long long)r->cfg.hedge_percent + 100;
}

/* Acts on timers that passed (attempt deadlines, hedges); returns the next timer. */
static int on_timers(fanout *f, double *next, mx_error *err)
{
    double now = mx_now_ms();
    *next = f->end_ms;
    for (int j = 0; j < f->p->n_jobs; j++) {
        shard_job *job = &f->p->jobs[j];
        if (job->done)
            continue;
        if (job->soft_at <= now) {
            job->soft_at = INFINITY;
            router_record_fault(f->r, &f->r->shards[job->shard], job->replica, ROUTER_MISSED_DEADLINE);
            int rc = start_attempt(f, j, false, err);
            if (rc < 0)
                return rc;
        } else if (job->hedge_at <= now) {
            job->hedge_at = INFINITY;
            if (hedge_allowed(f->r)) {
                int rc = start_attempt(f, j, true, err);
                if (rc < 0)
                    return rc;
            }
        }
        if (job->soft_at < *next)
            *next = job->soft_at;
        if (job->hedge_at < *next)
            *next = job->hedge_at;
    }
    return 0;
}

static int job_failed(fanout *f, shard_job *job, mx_error *err)
{
    const char *who = replica_address_of(f->r, job->shard, job->last_replica);
    return mx_fail(err, mx_rpc_code_from_status((grpc_status_code)job->last_code),
                   "expert shard %d (%s%s): RunExperts: %s: %s", job->shard, who,
                   job->attempts > 1 ? ", the last of several replicas tried" : "",
                   mx_rpc_status_name((grpc_status_code)job->last_code), job->last_msg);
}

/* One finished copy. Returns 0 or an error that ends the step. */
static int on_result(fanout *f, attempt *a, mx_rpc_result *res, int *left, mx_error *err)
{
    mx_router *r = f->r;
    shard_job *job = &f->p->jobs[a->job];
    router_shard *sh = &r->shards[job->shard];
    const mx_rpc_status *st = &res->status;
    atomic_fetch_sub(&sh->replicas[a->replica].in_flight, 1);
    atomic_fetch_sub(&sh->rows_in_flight, job->n_rows);
    a->live = false;
    job->active--;
    if (r->observe)
        r->observe(r->observe_ctx, MX_ROUTER_ATTEMPT_DONE, job->shard, a->replica, false, st->code == GRPC_STATUS_OK,
                   (mx_now_ms() - a->t0) / 1e3);
    if (job->done) /* the slower twin, cancelled by us: says nothing about its replica */
        return 0;
    if (st->code == GRPC_STATUS_OK) {
        job->replica = a->replica;
        MX_TRY(take_response(r, job, &res->response, err));
        /* keep the response's bytes: job->resp points into its own unpacked copy */
        router_record_ok(r, sh, a->replica, job->n_rows, mx_now_ms() - a->t0);
        job->done = true;
        (*left)--;
        for (int i = 0; i < f->n_att; i++)
            if (f->att[i].job == a->job && f->att[i].live)
                mx_rpc_callset_cancel(f->cs, f->att[i].id);
        return 0;
    }
    job->last_code = st->code;
    job->last_replica = a->replica;
    snprintf(job->last_msg, sizeof job->last_msg, "%s", st->message);
    if (!retryable(st->code))
        return job_failed(f, job, err);
    router_record_fault(r, sh, a->replica, ROUTER_FAILED);
    if (job->active > 0) /* a twin is still running: it may answer */
        return 0;
    int rc = start_attempt(f, a->job, false, err);
    if (rc < 0)
        return rc;
    return rc == 1 ? 0 : job_failed(f, job, err);
}

static int call_shards(mx_router *r, plan *p, mx_error *err)
{
    fanout f = {.r = r, .p = p, .end_ms = mx_now_ms() + (double)r->cfg.expert_timeout_ms};
    for (int j = 0; j < p->n_jobs; j++)
        f.cap += r->shards[p->jobs[j].shard].n_replicas;
    f.att = calloc((size_t)f.cap, sizeof *f.att);
    int rc = f.att ? mx_rpc_callset_create(f.cap, &f.cs, err)
                   : mx_fail(err, MX_ENOMEM, "router: out of memory starting %d calls", p->n_jobs);
    int left = p->n_jobs;
    for (int j = 0; j < p->n_jobs && !rc; j++) {
        p->jobs[j].soft_at = p->jobs[j].hedge_at = INFINITY;
        p->jobs[j].last_code = GRPC_STATUS_UNAVAILABLE;
        snprintf(p->jobs[j].last_msg, sizeof p->jobs[j].last_msg, "no replica could be tried");
        int s = start_attempt(&f, j, false, err);
        if (s == 0)
            rc = job_failed(&f, &p->jobs[j], err);
        else if (s < 0)
            rc = s;
    }
    while (!rc && left > 0) {
        double next;
        rc = on_timers(&f, &next, err);
        if (rc)
            break;
        double wait = next - mx_now_ms();
        int id;
        void *user;
        mx_rpc_result res;
        /* past the budget every copy has its gRPC deadline, so the next wait ends it */
        if (!mx_rpc_callset_next(f.cs, wait > 0 ? (int64_t)wait + 1 : (mx_rpc_callset_in_flight(f.cs) ? 1 : 0), &id,
                                 &user, &res)) {
            if (!mx_rpc_callset_in_flight(f.cs)) { /* nothing in flight and nothing to start */
                for (int j = 0; j < p->n_jobs && !rc; j++)
                    if (!p->jobs[j].done)
                        rc = job_failed(&f, &p->jobs[j], err);
            }
            continue;
        }
        rc = on_result(&f, user, &res, &left, err);
        mx_rpc_result_free(&res);
    }
    /* a failed step leaves copies in flight: cancel them and wait for them to come back */
    if (f.cs) {
        for (int i = 0; i < f.n_att; i++)
            if (f.att[i].live)
                mx_rpc_callset_cancel(f.cs, f.att[i].id);
        int id;
        void *user;
        mx_rpc_result res;
        while (mx_rpc_callset_next(f.cs, -1, &id, &user, &res)) {
            attempt *a = user;
            a->live = false;
            atomic_fetch_sub(&r->shards[p->jobs[a->job].shard].replicas[a->replica].in_flight, 1);
            atomic_fetch_sub(&r->shards[p->jobs[a->job].shard].rows_in_flight, p->jobs[a->job].n_rows);
            mx_rpc_result_free(&res);
        }
    }
    mx_rpc_callset_destroy(f.cs);
    free(f.att);
    return rc;
}

/* out[t] += w * y for t's slots in slot order: the sum's order never depends on timing. */
static void combine(mx_router *r, const plan *p, const int32_t *ids, const float *weights, float *out)
{
    int H = r->hidden;
    for (int t = 0; t < p->T; t++) {
        float *o = out + (size_t)t * H;
        for (int j = 0; j < p->k; j++) {
            int i = t * p->k + j;
            const shard_job *job = &p->jobs[p->job_of[p->shard_of[ids[i]]]];
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
        combine(r, &p, ids, weights, o);
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
