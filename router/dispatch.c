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

static mx_rpc_payload shared_payload(shared_bytes *b, size_t len)
{
    atomic_fetch_add(&b->refs, 1);
    mx_rpc_payload p = {b->data, len, shared_release, b};
    return p;
}

/* Per shard involved in this run. */
typedef struct shard_job {
    int shard;
    int n_rows;
    int n_groups;
    int replica;          /* replica of the latest attempt (of the answer, once done) */
    shared_bytes *req;    /* the dispatcher's buffer for this shard */
    size_t req_len;       /* packed bytes in it */
    /* attempts */
    uint64_t tried;       /* bit i: replica i got a copy */
    int active;           /* copies in flight */
    int attempts;
    bool done;
    bool local;           /* its shard has a replica at the stage's host: sent last */
    double soft_at;       /* the latest attempt's own deadline (absolute ms), or INFINITY */
    double hedge_at;      /* when to hedge, or INFINITY */
    int last_code;        /* status of the last failed attempt, for the error */
    char last_msg[MX_ERROR_MSG_MAX];
    int last_replica;
    Mx__Internal__V1__RunExpertsResponse *resp;
    const uint8_t *y;     /* resp rows, [n_rows, hidden] f32 */
} shard_job;

/* Per-run grouping of the T*k slots; the arrays belong to the dispatcher and are reused. */
typedef struct plan {
    int T, k, E;
    int *count;           /* [E] slots routed to each expert */
    int *start;           /* [E] first row of expert e inside its shard's request */
    int *job_of;          /* [n_shards] job index or -1 */
    int *shard_of;        /* [E] the holder expert e's group goes to in this run, or -1 */
    int *fill;            /* [E] */
    int *slot_row;        /* [T*k] row of the slot inside its shard's request */
    shard_job *jobs;
    int n_jobs;
} plan;

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
    ProtobufCAllocator *pa; /* the dispatcher's arena, for the answers */
} fanout;

/* A bump allocator for unpacked responses: reset per run, grown after a run that
 * overflowed it (then the overflow came from malloc and goes back with free). */
typedef struct arena {
    uint8_t *base;
    size_t cap, used, need;
} arena;

static void *arena_alloc(void *ctx, size_t n)
{
    arena *a = ctx;
    size_t take = (n + 15) / 16 * 16;
    a->need += take;
    if (a->base && a->used + take <= a->cap) {
        void *p = a->base + a->used;
        a->used += take;
        return p;
    }
    return malloc(n);
}

static void arena_free(void *ctx, void *p)
{
    arena *a = ctx;
    if (p && !(a->base && (uint8_t *)p >= a->base && (uint8_t *)p < a->base + a->cap))
        free(p);
}

#define REQ_BUFS 4

/* Everything one MoE step over the network needs, kept between steps so that a step in
 * steady state allocates nothing of its own: one call set (one completion queue) reused,
 * the grouping arrays, one request buffer per shard (the rows are gathered straight into
 * it), an arena for the responses. One step at a time; started by mx_router_dispatch_start,
 * ended by mx_router_dispatch_finish. */
struct mx_router_dispatcher {
    mx_router *r;
    int max_tokens;       /* buffers are sized for steps of this many tokens */
    mx_rpc_callset *cs;
    int cs_cap;
    struct attempt *att;
    int att_cap;
    int *count, *start, *job_of, *shard_of, *fill, *slot_row;
    int slot_cap;
    shard_job *jobs;
    Mx__Internal__V1__ExpertGroup *groups;
    Mx__Internal__V1__ExpertGroup **gp;
    shared_bytes **req;   /* [REQ_BUFS * n_shards]: the dispatcher holds one reference to each */
    arena ar;
    ProtobufCAllocator pa;
    /* the step in flight */
    bool pending;
    plan p;
    fanout f;
    int layer, k, left;
    const int32_t *ids;
    const float *weights;
    mx_tensor *out;
};

static void plan_reset(mx_router_dispatcher *d, plan *p)
{
    for (int j = 0; j < p->n_jobs; j++) {
        if (p->jobs[j].resp)
            protobuf_c_message_free_unpacked(&p->jobs[j].resp->base, &d->pa);
        p->jobs[j].resp = NULL;
    }
    p->n_jobs = 0;
    if (d->ar.need > d->ar.cap) { /* an overflowing run: room for twice it next time */
        uint8_t *grown = malloc(2 * d->ar.need);
        if (grown) {
            free(d->ar.base);
            d->ar.base = grown;
            d->ar.cap = 2 * d->ar.need;
        }
    }
    d->ar.used = d->ar.need = 0;
}

/* The holder of pair `at` (held by several shards) for this run: the fewest rows per replica,
 * counting rows in flight (other threads' calls) and planned[s], the rows this run already
 * gave shard s; ties go to the lower shard index. */
static int pick_holder(mx_router *r, const int *planned, size_t at)
{
    int b = r->hold_off[at], n = r->hold_off[at + 1] - b;
    int best = -1;
    long long best_rows = 0, best_reps = 1;
    for (int i = 0; i < n; i++) {
        int s = r->hold[b + i];
        long long rows = atomic_load_explicit(&r->shards[s].rows_in_flight, memory_order_relaxed) + planned[s];
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
static int plan_build(mx_router_dispatcher *d, int layer, const int32_t *ids, plan *p, mx_error *err)
{
    mx_router *r = d->r;
    int S = p->T * p->k, E = p->E;
    if (S > d->slot_cap) {
        int cap = d->slot_cap ? d->slot_cap : 64;
        while (cap < S)
            cap *= 2;
        int *grown = realloc(d->slot_row, (size_t)cap * sizeof *grown);
        if (!grown)
            return mx_fail(err, MX_ENOMEM, "router: out of memory grouping %d tokens", p->T);
        d->slot_row = grown;
        d->slot_cap = cap;
    }
    p->count = d->count;
    p->start = d->start;
    p->job_of = d->job_of;
    p->shard_of = d->shard_of;
    p->fill = d->fill;
    p->slot_row = d->slot_row;
    p->jobs = d->jobs;
    p->n_jobs = 0;
    memset(p->count, 0, (size_t)E * sizeof *p->count);
    memset(p->start, 0, (size_t)E * sizeof *p->start);
    memset(p->fill, 0, (size_t)E * sizeof *p->fill);
    memset(p->jobs, 0, (size_t)r->n_shards * sizeof *p->jobs);
    for (int i = 0; i < S; i++) {
        if (ids[i] < 0 || ids[i] >= E)
            return mx_fail(err, MX_EINVAL, "router: layer %d token %d slot %d: expert id %d out of range [0, %d)",
                           layer, i / p->k, i % p->k, ids[i], E);
        p->count[ids[i]]++;
    }
    /* Holders first, job_of counting each shard's planned rows meanwhile: experts with one
     * holder, then those held by several shards, most rows first, each to its least-loaded
     * holder (pick_holder). Requests list experts ascending, so rows are laid out after. */
    for (int s = 0; s < r->n_shards; s++)
        p->job_of[s] = 0;
    for (int e = 0; e < E; e++) {
        p->shard_of[e] = -1;
        if (!p->count[e])
            continue;
        /* load accounting: relaxed atomics, no lock (readers only want a snapshot) */
        size_t at = (size_t)layer * E + e;
        atomic_fetch_add_explicit(&r->expert_tokens[at], (unsigned long long)p->count[e], memory_order_relaxed);
        if (r->hold_off[at + 1] == r->hold_off[at])
            return mx_fail(err, MX_ENOTFOUND, "router: no expert shard owns layer %d expert %d", layer, e);
        if (r->hold_off[at + 1] - r->hold_off[at] == 1) {
            p->shard_of[e] = r->hold[r->hold_off[at]];
            p->job_of[p->shard_of[e]] += p->count[e];
        }
    }
    for (;;) {
        int best = -1;
        for (int e = 0; e < E; e++)
            if (p->count[e] && p->shard_of[e] < 0 && (best < 0 || p->count[e] > p->count[best]))
                best = e;
        if (best < 0)
            break;
        p->shard_of[best] = pick_holder(r, p->job_of, (size_t)layer * E + best);
        p->job_of[p->shard_of[best]] += p->count[best];
    }
    for (int s = 0; s < r->n_shards; s++)
        p->job_of[s] = -1;
    for (int e = 0; e < E; e++) {
        if (!p->count[e])
            continue;
        int s = p->shard_of[e];
        if (p->job_of[s] < 0) {
            p->job_of[s] = p->n_jobs;
            p->jobs[p->n_jobs++].shard = s;
        }
        shard_job *j = &p->jobs[p->job_of[s]];
        p->start[e] = j->n_rows;
        j->n_rows += p->count[e];
        j->n_groups++;
    }
    for (int i = 0; i < S; i++)
        p->slot_row[i] = p->start[ids[i]] + p->fill[ids[i]]++;
    return 0;
}

/* Packs into a request buffer whose tail already holds the rows: protobuf-c hands the
 * hidden tensor's bytes to append() as a pointer to that tail, which is then skipped. */
typedef struct tail_packer {
    ProtobufCBuffer base;
    uint8_t *dst;
    size_t pos;
    const uint8_t *rows;
} tail_packer;

static void tail_append(ProtobufCBuffer *b, size_t len, const uint8_t *data)
{
    tail_packer *t = (tail_packer *)b;
    if (data != t->dst + t->pos)
        memmove(t->dst + t->pos, data, len); /* (the rows, when not already in place) */
    t->pos += len;
}

/* Packs one shard's request: its experts ascending, each with its rows gathered from x
 * straight into the request buffer (no intermediate copy). The buffer is the dispatcher's,
 * reused when gRPC has let go of the previous request's bytes. */
static int pack_request(mx_router_dispatcher *d, int layer, const float *x, const int32_t *ids, plan *p,
                        shard_job *job, mx_error *err)
{
    mx_router *r = d->r;
    size_t row_bytes = (size_t)r->hidden * sizeof(float), data_len = (size_t)job->n_rows * row_bytes;
    int g = 0;
    for (int e = 0; e < p->E; e++) {
        if (!p->count[e] || p->shard_of[e] != job->shard)
            continue;
        Mx__Internal__V1__ExpertGroup init = MX__INTERNAL__V1__EXPERT_GROUP__INIT;
        d->groups[g] = init;
        d->groups[g].expert_id = (uint32_t)e;
        d->groups[g].num_rows = (uint32_t)p->count[e];
        d->gp[g] = &d->groups[g];
        g++;
    }
    Mx__Internal__V1__Tensor t = MX__INTERNAL__V1__TENSOR__INIT;
    t.dtype = MX__INTERNAL__V1__DTYPE__DTYPE_F32;
    t.rows = (uint32_t)job->n_rows;
    t.cols = (uint32_t)r->hidden;
    t.data.len = data_len;
    Mx__Internal__V1__RunExpertsRequest req = MX__INTERNAL__V1__RUN_EXPERTS_REQUEST__INIT;
    req.layer = (uint32_t)layer;
    req.n_groups = (size_t)job->n_groups;
    req.groups = d->gp;
    req.hidden = &t;
    size_t len = protobuf_c_message_get_packed_size(&req.base);
    /* a few per shard: gRPC lets go of a request's slice a little after the answer came */
    shared_bytes **slot = &d->req[REQ_BUFS * job->shard];
    for (int i = 0; i < REQ_BUFS; i++)
        if (!slot[i] || (atomic_load(&slot[i]->refs) == 1 && slot[i]->len >= len)) {
            slot += i;
            break;
        }
    shared_bytes *b = *slot;
    /* still referenced by a slice gRPC has not released, or too small: a new one */
    if (!b || atomic_load(&b->refs) != 1 || b->len < len) {
        /* twice this request: the next steps' share of rows varies with the routing; a
         * prefill sizes it before decode steps come (max_tokens bounds it from above) */
        size_t cap = 2 * len > 4096 ? 2 * len : 4096,
               most = (size_t)d->max_tokens * (size_t)p->k * row_bytes + 4096 + 16 * (size_t)p->E;
        cap = cap < most ? cap : (most > len ? most : len);
        shared_bytes *fresh = malloc(sizeof *fresh + cap);
        if (!fresh)
            return mx_fail(err, MX_ENOMEM, "router: out of memory packing a request for shard %d", job->shard);
        atomic_init(&fresh->refs, 1);
        fresh->len = cap;
        if (b)
            shared_release(b);
        *slot = b = fresh;
    }
    /* the hidden tensor's bytes are the last field of the last field: the buffer's tail */
    uint8_t *rows = b->data + len - data_len;
    for (int i = 0; i < p->T * p->k; i++)
        if (p->shard_of[ids[i]] == job->shard)
            memcpy(rows + (size_t)p->slot_row[i] * row_bytes, x + (size_t)(i / p->k) * r->hidden, row_bytes);
    t.data.data = rows;
    tail_packer tp = {{tail_append}, b->data, 0, rows};
    protobuf_c_message_pack_to_buffer(&req.base, &tp.base);
    if (tp.pos != len)
        return mx_fail(err, MX_EINTERNAL, "router: packed %zu bytes of a %zu-byte request", tp.pos, len);
    job->req = b;
    job->req_len = len;
    return 0;
}

/* From the replica's slot, not its channel: a slot may have none (a DNS target that has not
 * resolved yet) or a closed one (drained); its address is kept for messages. */
static const char *replica_address_of(mx_router *r, int shard, int replica)
{
    const char *a = r->shards[shard].replicas[replica].address;
    return a[0] ? a : r->shards[shard].none_yet;
}

static const char *replica_address(mx_router *r, const shard_job *job)
{
    return replica_address_of(r, job->shard, job->replica);
}

/* Checks a response's shape and keeps a pointer to its rows. */
static int take_response(mx_router *r, ProtobufCAllocator *pa, shard_job *job, const mx_rpc_bytes *bytes,
                         mx_error *err)
{
    job->resp = mx__internal__v1__run_experts_response__unpack(pa, bytes->len, bytes->data);
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
    int id = mx_rpc_callset_start(f->cs, sh->replicas[rep].channel, MX_EXPERT_RUN_METHOD, shared_payload(job->req, job->req_len),
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
        MX_TRY(take_response(r, f->pa, job, &res->response, err));
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

/* Cancels the copies still in flight and waits for them to come back. */
static void drain_calls(fanout *f)
{
    mx_router *r = f->r;
    plan *p = f->p;
    if (!f->cs) /* no call set yet: the shards had no replica (a DNS target not resolved yet) */
        return;
    for (int i = 0; i < f->n_att; i++)
        if (f->att[i].live)
            mx_rpc_callset_cancel(f->cs, f->att[i].id);
    int id;
    void *user;
    mx_rpc_result res;
    while (mx_rpc_callset_next(f->cs, -1, &id, &user, &res)) {
        attempt *a = user;
        a->live = false;
        atomic_fetch_sub(&r->shards[p->jobs[a->job].shard].replicas[a->replica].in_flight, 1);
        atomic_fetch_sub(&r->shards[p->jobs[a->job].shard].rows_in_flight, p->jobs[a->job].n_rows);
        mx_rpc_result_free(&res);
    }
}

/* Sends every job's first copy: first the jobs of shards with no replica at the stage's own
 * host, then the others. A call to a shard on this host can wake it on the core this thread
 * runs on; when that core has no other, the shard preempts the sender before the rest of the
 * calls are out, and the shards run one after the other (measured with a stage and a shard
 * sharing each of two cores: sending the other host's call first took decode from 753-838 to
 * 934-988 tokens/s at pipeline depth 1). Where every replica is local (a one-machine cluster)
 * or none is, the order is the shards'. The call set and the attempt slots are the
 * dispatcher's, grown (between steps, nothing in flight) when replicas were added. */
static int calls_start(mx_router_dispatcher *d, fanout *f, mx_error *err)
{
    mx_router *r = d->r;
    plan *p = &d->p;
    *f = (fanout){.r = r, .p = p, .end_ms = mx_now_ms() + (double)r->cfg.expert_timeout_ms, .pa = &d->pa};
    for (int j = 0; j < p->n_jobs; j++)
        f->cap += r->shards[p->jobs[j].shard].n_replicas;
    if (f->cap > d->att_cap) {
        attempt *grown = realloc(d->att, (size_t)f->cap * sizeof *grown);
        if (!grown)
            return mx_fail(err, MX_ENOMEM, "router: out of memory starting %d calls", p->n_jobs);
        d->att = grown;
        d->att_cap = f->cap;
    }
    if (f->cap > d->cs_cap) {
        mx_rpc_callset_destroy(d->cs);
        d->cs = NULL;
        d->cs_cap = 0;
        MX_TRY(mx_rpc_callset_create(f->cap, &d->cs, err));
        mx_rpc_callset_borrow_responses(d->cs); /* each answer is unpacked at once */
        d->cs_cap = f->cap;
    }
    f->att = d->att;
    f->cs = d->cs;
    d->left = p->n_jobs;
    int rc = 0;
    for (int j = 0; j < p->n_jobs; j++) /* once: replicas may come and go meanwhile */
        p->jobs[j].local = router_shard_has_local(&r->shards[p->jobs[j].shard]);
    for (int pass = 0; pass < 2 && !rc; pass++)
        for (int j = 0; j < p->n_jobs && !rc; j++) {
            if (p->jobs[j].local != (pass == 1))
                continue;
            p->jobs[j].soft_at = p->jobs[j].hedge_at = INFINITY;
            p->jobs[j].last_code = GRPC_STATUS_UNAVAILABLE;
            snprintf(p->jobs[j].last_msg, sizeof p->jobs[j].last_msg, "no replica could be tried");
            int st = start_attempt(f, j, false, err);
            if (st == 0)
                rc = job_failed(f, &p->jobs[j], err);
            else if (st < 0)
                rc = st;
        }
    if (rc)
        drain_calls(f);
    return rc;
}

/* Reaps answers (retrying, hedging, cancelling twins) until every job is done or failed. */
static int calls_finish(mx_router_dispatcher *d, fanout *f, mx_error *err)
{
    plan *p = f->p;
    int rc = 0;
    while (!rc && d->left > 0) {
        double next;
        rc = on_timers(f, &next, err);
        if (rc)
            break;
        double wait = next - mx_now_ms();
        int id;
        void *user;
        mx_rpc_result res;
        /* past the budget every copy has its gRPC deadline, so the next wait ends it */
        if (!mx_rpc_callset_next(f->cs, wait > 0 ? (int64_t)wait + 1 : (mx_rpc_callset_in_flight(f->cs) ? 1 : 0), &id,
                                 &user, &res)) {
            if (!mx_rpc_callset_in_flight(f->cs)) { /* nothing in flight and nothing to start */
                for (int j = 0; j < p->n_jobs && !rc; j++)
                    if (!p->jobs[j].done)
                        rc = job_failed(f, &p->jobs[j], err);
            }
            continue;
        }
        rc = on_result(f, user, &res, &d->left, err);
        mx_rpc_result_free(&res);
    }
    /* a failed step leaves copies in flight: cancel them and wait for them to come back */
    drain_calls(f);
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

static int check_args(mx_router *r, int layer, const mx_tensor *x2, int k, const mx_tensor *out, mx_error *err)
{
    if (layer < 0 || layer >= r->num_layers)
        return mx_fail(err, MX_EINVAL, "router: layer %d out of range [0, %d)", layer, r->num_layers);
    if (x2->ndim != 2 || x2->shape[1] != r->hidden || out->ndim != 2 || out->shape[0] != x2->shape[0] ||
        out->shape[1] != r->hidden)
        return mx_fail(err, MX_EINVAL, "router: layer %d: x2/out must be [T, %d]", layer, r->hidden);
    if (k <= 0 || k > r->num_experts)
        return mx_fail(err, MX_EINVAL, "router: layer %d: top-k %d out of range [1, %d]", layer, k, r->num_experts);
    if (x2->shape[0] > (1 << 24))
        return mx_fail(err, MX_ERANGE, "router: layer %d: %lld tokens is too many for one call", layer,
                       (long long)x2->shape[0]);
    return 0;
}

int mx_router_dispatcher_create(mx_router *r, int max_tokens, mx_router_dispatcher **out, mx_error *err)
{
    *out = NULL;
    mx_router_dispatcher *d = calloc(1, sizeof *d);
    if (!d)
        return mx_fail(err, MX_ENOMEM, "router: out of memory for a dispatcher");
    d->r = r;
    d->max_tokens = max_tokens > 0 ? max_tokens : 1;
    int E = r->num_experts, S = r->n_shards;
    d->count = calloc((size_t)E, sizeof *d->count);
    d->start = calloc((size_t)E, sizeof *d->start);
    d->shard_of = calloc((size_t)E, sizeof *d->shard_of);
    d->fill = calloc((size_t)E, sizeof *d->fill);
    d->job_of = calloc((size_t)S, sizeof *d->job_of);
    d->jobs = calloc((size_t)S, sizeof *d->jobs);
    d->groups = calloc((size_t)E, sizeof *d->groups);
    d->gp = calloc((size_t)E, sizeof *d->gp);
    d->req = calloc((size_t)S * REQ_BUFS, sizeof *d->req);
    d->pa = (ProtobufCAllocator){arena_alloc, arena_free, &d->ar};
    if (!d->count || !d->start || !d->shard_of || !d->fill || !d->job_of || !d->jobs || !d->groups || !d->gp ||
        !d->req) {
        mx_router_dispatcher_free(d);
        return mx_fail(err, MX_ENOMEM, "router: out of memory for a dispatcher");
    }
    *out = d;
    return 0;
}

void mx_router_dispatcher_free(mx_router_dispatcher *d)
{
    if (!d)
        return;
    if (d->pending) { /* a started step nobody finished: its calls are waited for */
        drain_calls(&d->f);
        plan_reset(d, &d->p);
    }
    mx_rpc_callset_destroy(d->cs);
    for (int s = 0; d->req && s < REQ_BUFS * d->r->n_shards; s++)
        if (d->req[s])
            shared_release(d->req[s]);
    free(d->req);
    free(d->count);
    free(d->start);
    free(d->shard_of);
    free(d->fill);
    free(d->job_of);
    free(d->jobs);
    free(d->groups);
    free(d->gp);
    free(d->slot_row);
    free(d->att);
    free(d->ar.base);
    free(d);
}

int mx_router_dispatch_start(mx_router_dispatcher *d, int layer, const mx_tensor *x2, const int32_t *ids,
                             const float *weights, int k, mx_tensor *out, mx_error *err)
{
    mx_router *r = d->r;
    if (d->pending)
        return mx_fail(err, MX_EINVAL, "router: a dispatcher runs one step at a time");
    int rc = check_args(r, layer, x2, k, out, err);
    if (rc) {
        atomic_fetch_add(&r->failures, 1);
        return rc;
    }
    d->p = (plan){.T = (int)x2->shape[0], .k = k, .E = r->num_experts};
    d->layer = layer;
    d->k = k;
    d->ids = ids;
    d->weights = weights;
    d->out = out;
    if (d->p.T == 0) {
        d->pending = true; /* nothing to send; finish has nothing to combine */
        return 0;
    }
    float *x = NULL;
    bool x_owned = false;
    rc = plan_build(d, layer, ids, &d->p, err);
    if (!rc)
        rc = host_rows(r, x2, &x, &x_owned, err);
    for (int j = 0; j < d->p.n_jobs && !rc; j++)
        rc = pack_request(d, layer, x, ids, &d->p, &d->p.jobs[j], err);
    if (x_owned)
        free(x);
    if (!rc)
        rc = calls_start(d, &d->f, err);
    if (rc) {
        plan_reset(d, &d->p);
        atomic_fetch_add(&r->failures, 1);
        return rc;
    }
    d->pending = true;
    return 0;
}

int mx_router_dispatch_finish(mx_router_dispatcher *d, mx_error *err)
{
    mx_router *r = d->r;
    if (!d->pending)
        return mx_fail(err, MX_EINVAL, "router: no step was started");
    d->pending = false;
    if (d->p.T == 0)
        return 0;
    float *o = NULL;
    bool o_owned = false;
    int rc = calls_finish(d, &d->f, err);
    if (!rc)
        rc = host_rows(r, d->out, &o, &o_owned, err);
    if (!rc) {
        combine(r, &d->p, d->ids, d->weights, o);
        if (o_owned)
            rc = r->be->from_host_f32(r->be, d->out, o, err);
    }
    if (o_owned)
        free(o);
    plan_reset(d, &d->p);
    if (rc)
        atomic_fetch_add(&r->failures, 1);
    return rc;
}

static int dispatcher_run(void *ctx, int layer, const mx_tensor *x2, const int32_t *ids, const float *weights, int k,
                          mx_tensor *out, mx_error *err)
{
    MX_TRY(mx_router_dispatch_start(ctx, layer, x2, ids, weights, k, out, err));
    return mx_router_dispatch_finish(ctx, err);
}

mx_moe_executor mx_router_dispatcher_executor(mx_router_dispatcher *d)
{
    mx_moe_executor ex = {dispatcher_run, d};
    return ex;
}

int mx_router_run(mx_router *r, int layer, const mx_tensor *x2, const int32_t *ids, const float *weights, int k,
                  mx_tensor *out, mx_error *err)
{
    mx_router_dispatcher *d;
    int rc = mx_router_dispatcher_create(r, x2->shape[0] > 0 ? (int)x2->shape[0] : 1, &d, err);
    if (rc) {
        atomic_fetch_add(&r->failures, 1);
        return rc;
    }
    rc = dispatcher_run(d, layer, x2, ids, weights, k, out, err);
    mx_router_dispatcher_free(d);
    return rc;
}
