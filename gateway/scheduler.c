/* scheduler.c - the loop behind scheduler.h. Up to pipeline_depth micro-batches are in the
 * pipeline at once, each carried by its own flight thread (a blocking RunBatch to stage 0,
 * which chains through the others); the scheduler thread alone builds batches, delivers
 * their tokens and changes the running set. A request is in at most one flight; when its
 * flight lands it becomes eligible again, oldest-eligible first. A batch takes about
 * 1/depth of the running requests so the stages have work to overlap. Within a batch decode
 * tokens go first (one each) and prompt chunks share what is left of the per-batch token
 * budget (max_step_tokens; while any request decodes, at most max_prefill_tokens_with_decodes
 * of it, fewer tokens the deeper into a long prompt they are), so a long prompt is prefilled
 * over many steps while short requests keep decoding at close to their own pace. Admission
 * reserves each request's whole KV footprint on every stage (kv_budget.h) and keeps requests
 * queued while it would not fit. */
#include "scheduler.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include "core/clock.h"
#include "core/limits.h"
#include "core/protocol.h"
#include "core/rpc/client.h"
#include "core/rpc/pb.h"
#include "kv_budget.h"
#include "micro_batch.h"

#define RELEASE MX_STAGE_RELEASE_METHOD

typedef enum { FLIGHT_IDLE, FLIGHT_SENT, FLIGHT_LANDED } flight_state;

typedef struct flight {
    gw_scheduler *s;
    pthread_t thread;
    bool started, quit;
    pthread_cond_t cv;        /* with s->mu: the flight thread waits for FLIGHT_SENT */
    flight_state state;       /* under s->mu */
    gw_micro_batch batch;     /* the scheduler's while IDLE/LANDED, the flight thread's while SENT */
} flight;

/* Sequence ids one stage has not acknowledged a Release of, each retried until the stage
 * answers or its lease would have freed the sequence anyway. */
typedef struct pending_release {
    uint64_t *ids;
    double *until_ms;         /* retry until then (the stage's lease from the failure) */
    int n, cap;
} pending_release;

#define RELEASE_RETRY_MS 500
/* without a lease (a stage that never expires sequences) a Release is retried this long */
#define RELEASE_RETRY_NO_LEASE_MS 600000.0

struct gw_scheduler {
    gw_config cfg;
    int64_t attn_tokens;      /* the model's gw_attn_context_tokens, for the prefill cap */
    gw_log log;               /* errors with no caller (scheduler.h) */
    mx_rpc_channel *stages[GW_MAX_STAGES];
    pthread_t thread;
    bool thread_started;
    pthread_mutex_t mu;       /* guards queue, n_queued, stop, next_id, flight states */
    pthread_cond_t cv;        /* scheduler waits: new request, flight landed, stop */
    gw_request **queue;       /* [max_queued], FIFO in [0, n_queued) */
    int n_queued;
    bool stop;
    uint64_t id_tag;          /* this gateway's tag in the top 16 bits of its sequence ids */
    uint64_t next_id, next_batch, next_ready;
    gw_request **running;     /* [max_batch_sequences], scheduler thread only */
    int n_running;
    gw_request **pick;        /* [max_batch_sequences], scratch for choosing a batch */
    bool *admit_take;         /* [max_queued], scratch for admission */
    int depth, n_flying;      /* n_flying: flights SENT or LANDED (scheduler thread only) */
    flight *flights;          /* [depth] */
    gw_request **woken;       /* [depth * max_batch_sequences]: got a token, handler not yet
                                 woken (scheduler thread only; see wake_delivered) */
    int n_woken;
    uint64_t *retired;        /* [max_batch_sequences]: ids retire ended, released on the stages
                                 after the next step is launched (scheduler thread only) */
    int n_retired;
    /* Under mu: the stages' KV numbers and the running requests' reservations. */
    gw_kv kv;
    bool kv_known;            /* a refresh succeeded: admission may start */
    bool admit_pending;       /* something changed that may let a queued request in */
    double last_admit_ms;
    /* Scheduler thread only. */
    pending_release pend[GW_MAX_STAGES];  /* Releases a stage did not acknowledge, retried */
    double next_release_retry_ms;
    bool refresh_wanted;      /* a stage refused or failed a batch: re-read its numbers */
    double last_refresh_ms;
};

/* Hands one line to the log sink (scheduler.h); the scheduler itself never prints. */
__attribute__((format(printf, 2, 3))) static void report(const gw_scheduler *s, const char *fmt, ...)
{
    if (!s->log.fn)
        return;
    char line[MX_ERROR_MSG_MAX + 128];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    s->log.fn(s->log.ctx, line);
}

/* 1 when a Release's status means the stage may not have done it (then it is retried). */
static bool release_unanswered(grpc_status_code code)
{
    return code == GRPC_STATUS_UNAVAILABLE || code == GRPC_STATUS_DEADLINE_EXCEEDED || code == GRPC_STATUS_CANCELLED ||
           code == GRPC_STATUS_RESOURCE_EXHAUSTED || code == GRPC_STATUS_UNKNOWN;
}

static void pending_add(gw_scheduler *s, int stage, const uint64_t *ids, int n, double now)
{
    pending_release *p = &s->pend[stage];
    pthread_mutex_lock(&s->mu);
    int64_t lease = s->kv.st[stage].lease_ms;
    pthread_mutex_unlock(&s->mu);
    double until = now + (lease > 0 ? (double)lease : RELEASE_RETRY_NO_LEASE_MS);
    int dropped = 0;
    for (int i = 0; i < n; i++) {
        if (p->n == p->cap) { /* bounded: the stage's lease frees what does not fit */
            dropped++;
            continue;
        }
        p->ids[p->n] = ids[i];
        p->until_ms[p->n++] = until;
    }
    if (dropped)
        report(s, "gateway: stage %d: %d Releases not retried (%d already pending; its lease frees them)", stage,
               dropped, p->cap);
}

/* Sends a Release of ids to the given stages (all of them when only is -1) at once; on a
 * stage that did not answer, the ids join its pending list (now = the time of the first try). */
static void release_send(gw_scheduler *s, const uint64_t *ids, int n, int only, int64_t timeout_ms, double now,
                         bool *acked)
{
    Mx__Internal__V1__ReleaseRequest rq = MX__INTERNAL__V1__RELEASE_REQUEST__INIT;
    rq.n_sequence_ids = (size_t)n;
    rq.sequence_ids = (uint64_t *)ids;
    mx_rpc_fanout_call calls[GW_MAX_STAGES];
    int stage_of[GW_MAX_STAGES];
    memset(calls, 0, sizeof calls);
    mx_error err = {0};
    int k = 0;
    bool packed = true;
    for (int i = 0; i < s->cfg.n_stages; i++) {
        if (only >= 0 && i != only)
            continue;
        calls[k].channel = s->stages[i];
        calls[k].method = RELEASE;
        stage_of[k] = i;
        if (mx_rpc_pb_pack(&rq.base, &calls[k].request, &err)) {
            report(s, "gateway: release: %s", err.msg);
            packed = false;
            break;
        }
        k++;
    }
    if (packed)
        mx_rpc_fanout(calls, k, timeout_ms, &err); /* per-call outcomes below */
    for (int j = 0; j < k; j++) {
        if (!packed && calls[j].request.release)
            calls[j].request.release(calls[j].request.release_ctx);
        bool ok = packed && !release_unanswered(calls[j].result.status.code);
        if (acked)
            acked[j] = ok;
        if (!ok && only < 0) {
            report(s, "gateway: release of %d sequences on stage %d: %s (retrying)", n, stage_of[j],
                   packed ? calls[j].result.status.message : "not sent");
            pending_add(s, stage_of[j], ids, n, now);
        }
        mx_rpc_result_free(&calls[j].result);
    }
}

/* Frees the state of n sequences on every stage at once (control traffic goes to each stage
 * directly, not along the chain, so one unreachable stage does not keep the others from
 * freeing). A stage that does not answer gets the Release again every RELEASE_RETRY_MS until
 * it does or its lease has freed the sequences itself; the sequence id is never reused. */
static void release_on_stages(gw_scheduler *s, const uint64_t *ids, int n)
{
    if (n == 0)
        return;
    release_send(s, ids, n, -1, 5000, mx_now_ms(), NULL);
}

/* Retries the pending Releases, one call per stage (scheduler thread). */
static void retry_releases(gw_scheduler *s, double now)
{
    if (now < s->next_release_retry_ms)
        return;
    s->next_release_retry_ms = now + RELEASE_RETRY_MS;
    for (int i = 0; i < s->cfg.n_stages; i++) {
        pending_release *p = &s->pend[i];
        int keep = 0;
        for (int j = 0; j < p->n; j++)
            if (p->until_ms[j] > now) {
                p->ids[keep] = p->ids[j];
                p->until_ms[keep++] = p->until_ms[j];
            }
        p->n = keep;
        if (p->n == 0)
            continue;
        bool acked = false;
        release_send(s, p->ids, p->n, i, 1000, now, &acked);
        if (acked) {
            report(s, "gateway: stage %d acknowledged %d pending Releases", i, p->n);
            p->n = 0;
        }
    }
}

static bool any_pending_release(const gw_scheduler *s)
{
    for (int i = 0; i < s->cfg.n_stages; i++)
        if (s->pend[i].n)
            return true;
    return false;
}

/* Removes running requests that are done (or must end now) and notes their ids for
 * release_retired. Requests in flight stay: their batch may still reach a stage, so they are
 * dealt with after it lands. */
static void retire(gw_scheduler *s, double now)
{
    int keep = 0;
    for (int i = 0; i < s->n_running; i++) {
        gw_request *r = s->running[i];
        if (r->in_flight) {
            s->running[keep++] = r;
            continue;
        }
        pthread_mutex_lock(&r->mu);
        bool cancelled = r->cancelled, done = r->done;
        pthread_mutex_unlock(&r->mu);
        if (!done && (cancelled || (r->deadline_ms > 0 && now >= r->deadline_ms))) {
            gw_request_finish(r, MX__V1__FINISH_REASON__FINISH_REASON_CANCELLED,
                              cancelled ? MX_ECANCELLED : MX_ETIMEOUT,
                              cancelled ? "cancelled by the client" : "deadline exceeded", now);
            done = true;
        }
        if (!done) {
            s->running[keep++] = r;
            continue;
        }
        if (r->on_stages)
            s->retired[s->n_retired++] = r->seq_id;
        if (r->kv_tokens) {
            pthread_mutex_lock(&s->mu);
            gw_kv_reserve(&s->kv, r->kv_tokens, -1);
            s->admit_pending = true;
            pthread_mutex_unlock(&s->mu);
            r->kv_tokens = 0;
        }
        gw_request_unref(r);
    }
    if (keep != s->n_running) {
        pthread_mutex_lock(&s->mu);
        s->admit_pending = true; /* room in the running set */
        s->n_running = keep;     /* under mu: gw_scheduler_counts reads it from other threads */
        pthread_mutex_unlock(&s->mu);
    }
}

/* Frees the retired requests' state on the stages. After the next step is launched: a Release
 * waits for the stage's lock, which a step in progress there holds. */
static void release_retired(gw_scheduler *s)
{
    release_on_stages(s, s->retired, s->n_retired);
    s->n_retired = 0;
}

/* Moves queued requests into the running set (s->mu held) while it has room, in the order
 * of gw_kv_admit: first come, first served, except that a request waiting for KV room lets
 * smaller ones pass it, up to gateway.kv_max_overtakes of them. Queued requests whose
 * client left or whose deadline passed end here. */
static void admit_locked(gw_scheduler *s)
{
    double now = mx_now_ms();
    /* nothing changed: the queue is looked at again for cancellations every 100 ms */
    if (!s->admit_pending && now - s->last_admit_ms < 100)
        return;
    s->last_admit_ms = now;
    int keep = 0;
    for (int i = 0; i < s->n_queued; i++) {
        gw_request *r = s->queue[i];
        pthread_mutex_lock(&r->mu);
        bool cancelled = r->cancelled;
        pthread_mutex_unlock(&r->mu);
        if (cancelled || (r->deadline_ms > 0 && now >= r->deadline_ms)) {
            gw_request_finish(r, MX__V1__FINISH_REASON__FINISH_REASON_CANCELLED,
                              cancelled ? MX_ECANCELLED : MX_ETIMEOUT,
                              cancelled ? "cancelled by the client" : "deadline exceeded", now);
            gw_request_unref(r);
            continue;
        }
        s->queue[keep++] = r;
    }
    s->n_queued = keep;
    s->admit_pending = false;
    if (!s->kv_known || keep == 0)
        return;
    gw_kv_admit(&s->kv, s->queue, s->n_queued, s->cfg.max_batch_sequences - s->n_running,
                s->cfg.kv_max_overtakes, s->admit_take);
    keep = 0;
    for (int i = 0; i < s->n_queued; i++) {
        gw_request *r = s->queue[i];
        if (!s->admit_take[i]) {
            s->queue[keep++] = r;
            continue;
        }
        r->t_scheduled_ms = now;
        r->ready_seq = ++s->next_ready;
        s->running[s->n_running++] = r;
    }
    s->n_queued = keep;
}

static int n_eligible(const gw_scheduler *s)
{
    int n = 0;
    for (int i = 0; i < s->n_running; i++)
        n += !s->running[i]->in_flight;
    return n;
}

static int by_ready(const void *a, const void *b)
{
    uint64_t x = (*(gw_request *const *)a)->ready_seq, y = (*(gw_request *const *)b)->ready_seq;
    return x < y ? -1 : x > y;
}

static flight *idle_flight(gw_scheduler *s)
{
    flight *f = NULL;
    pthread_mutex_lock(&s->mu);  /* flight threads change the state of the others */
    for (int i = 0; i < s->depth && !f; i++)
        if (s->flights[i].state == FLIGHT_IDLE)
            f = &s->flights[i];
    pthread_mutex_unlock(&s->mu);
    return f;
}

/* Fills f with the longest-waiting eligible requests, about 1/depth of the running set (see
 * gw_micro_batch_fill for how decodes and prompt chunks share the step), and sends it.
 * Returns false when no request could go. */
static bool launch(gw_scheduler *s, flight *f)
{
    int n = 0;
    for (int i = 0; i < s->n_running; i++)
        if (!s->running[i]->in_flight)
            s->pick[n++] = s->running[i];
    qsort(s->pick, (size_t)n, sizeof *s->pick, by_ready);
    int target = (s->n_running + s->depth - 1) / s->depth;
    /* Prompt tokens are capped while any running request decodes, not only in batches that
     * carry decodes: a stage works through the pipeline's batches in turn, so a full
     * prefill chunk in a batch of its own still holds up the decodes in the batch beside it. */
    gw_step_limits lim = {.max_step_tokens = s->cfg.max_step_tokens, .attn_tokens = s->attn_tokens};
    for (int i = 0; i < s->n_running && !lim.prefill_cap; i++)
        if (s->running[i]->prefilled >= s->running[i]->n_prompt)
            lim.prefill_cap = s->cfg.max_prefill_tokens_with_decodes;
    gw_micro_batch *b = &f->batch;
    gw_micro_batch_fill(b, s->pick, n, target, &lim);
    if (b->n == 0)
        return false;
    b->batch_id = ++s->next_batch;
    pthread_mutex_lock(&s->mu);
    b->retry_atomic = s->kv_known;
    for (int i = 0; i < s->cfg.n_stages; i++)
        b->retry_atomic &= s->kv.st[i].atomic_steps;
    b->retry_ms = s->cfg.stage_timeout_ms < 10000 ? s->cfg.stage_timeout_ms : 10000;
    f->state = FLIGHT_SENT;
    pthread_cond_signal(&f->cv);
    pthread_mutex_unlock(&s->mu);
    s->n_flying++;
    return true;
}

static void *flight_main(void *arg)
{
    flight *f = arg;
    gw_scheduler *s = f->s;
    pthread_mutex_lock(&s->mu);
    for (;;) {
        while (f->state != FLIGHT_SENT && !f->quit)
            pthread_cond_wait(&f->cv, &s->mu);
        if (f->state != FLIGHT_SENT)
            break;
        pthread_mutex_unlock(&s->mu);
        gw_micro_batch_run(&f->batch, &s->cfg, s->stages);
        pthread_mutex_lock(&s->mu);
        f->state = FLIGHT_LANDED;
        pthread_cond_signal(&s->cv);
    }
    pthread_mutex_unlock(&s->mu);
    return NULL;
}

/* Whether the scheduler has something to do now (s->mu held). */
static bool has_work_locked(gw_scheduler *s)
{
    for (int i = 0; i < s->depth; i++)
        if (s->flights[i].state == FLIGHT_LANDED)
            return true;
    if (s->n_queued > 0 && s->admit_pending)
        return true;
    if (s->n_flying >= s->depth)
        return false;
    return n_eligible(s) > 0;
}

static bool any_landed_locked(const gw_scheduler *s)
{
    for (int i = 0; i < s->depth; i++)
        if (s->flights[i].state == FLIGHT_LANDED)
            return true;
    return false;
}

/* Delivers every landed flight; its requests become eligible again, after those that were
 * already waiting (s->mu held; dropped while delivering). */
static void land_locked(gw_scheduler *s)
{
    for (int i = 0; i < s->depth; i++) {
        flight *f = &s->flights[i];
        if (f->state != FLIGHT_LANDED)
            continue;
        pthread_mutex_unlock(&s->mu);
        for (int j = 0; j < f->batch.n; j++)
            f->batch.members[j]->ready_seq = ++s->next_ready;
        if (f->batch.rc || f->batch.n_refused)
            s->refresh_wanted = true;
        if (f->batch.rc)
            report(s, "gateway: micro-batch %llu failed: %s", (unsigned long long)f->batch.batch_id,
                   f->batch.err.msg);
        else if (f->batch.n_refused)
            report(s, "gateway: micro-batch %llu: %d of %d sequences refused: %s",
                   (unsigned long long)f->batch.batch_id, f->batch.n_refused, f->batch.n, f->batch.refused_msg);
        gw_micro_batch_deliver(&f->batch, mx_now_ms(), s->woken, &s->n_woken);
        pthread_mutex_lock(&s->mu);
        f->state = FLIGHT_IDLE;
        s->n_flying--;
    }
}

/* Wakes the handlers of the requests that got a token and drops the delivered batches'
 * references to them. The scheduler calls it after launching the next step: 32 handlers woken
 * before it used to hold that step back by 0.8 ms (measured on 2 vCPUs, each woken handler
 * taking a core to write its token while the step waited to be sent). */
static void wake_delivered(gw_scheduler *s)
{
    for (int i = 0; i < s->n_woken; i++) {
        gw_request_wake(s->woken[i]);
        gw_request_unref(s->woken[i]);
    }
    s->n_woken = 0;
}

static void *loop(void *arg)
{
    gw_scheduler *s = arg;
    for (;;) {
        pthread_mutex_lock(&s->mu);
        while (!s->stop && !has_work_locked(s)) {
            if (s->n_queued == 0 && !any_pending_release(s)) {
                pthread_cond_wait(&s->cv, &s->mu);
                continue;
            }
            if (s->n_queued == 0 && mx_now_ms() >= s->next_release_retry_ms)
                break; /* a pending Release is due */
            /* requests wait in the queue: look at them now and then for cancellations and
             * deadlines, which nothing signals */
            struct timespec ts;
            clock_gettime(CLOCK_REALTIME, &ts);
            ts.tv_nsec += 100 * 1000000L;
            if (ts.tv_nsec >= 1000000000L) {
                ts.tv_sec++;
                ts.tv_nsec -= 1000000000L;
            }
            if (pthread_cond_timedwait(&s->cv, &s->mu, &ts))
                s->admit_pending = true;
        }
        /* stopping: nothing new goes out, but the flights in the air are waited for */
        while (s->stop && s->n_flying > 0 && !any_landed_locked(s))
            pthread_cond_wait(&s->cv, &s->mu);
        bool stopping = s->stop;
        if (!stopping)
            admit_locked(s);
        land_locked(s);
        pthread_mutex_unlock(&s->mu);
        if (stopping) {
            wake_delivered(s);
            if (s->n_flying == 0)
                break;
            continue;
        }
        retire(s, mx_now_ms());
        double now = mx_now_ms();
        if (any_pending_release(s))
            retry_releases(s, now);
        if (s->refresh_wanted && now - s->last_refresh_ms >= 1000) {
            mx_error err = {0};
            s->refresh_wanted = false;
            s->last_refresh_ms = now;
            if (gw_scheduler_refresh_kv(s, 2000, &err))
                report(s, "gateway: refreshing the stages' KV numbers: %s", err.msg);
        }
        flight *f;
        while ((f = idle_flight(s)) && launch(s, f))
            ;
        wake_delivered(s);
        release_retired(s); /* before the next admission: the room it frees is counted already */
    }
    return NULL;
}

int gw_scheduler_refresh_kv(gw_scheduler *s, int64_t timeout_ms, mx_error *err)
{
    pthread_mutex_lock(&s->mu);
    gw_kv kv = s->kv;
    pthread_mutex_unlock(&s->mu);
    MX_TRY(gw_kv_fetch(&kv, s->stages, &s->cfg, timeout_ms, err));
    pthread_mutex_lock(&s->mu);
    /* The numbers may have changed (a stage restarted with another budget): the running
     * requests' reservations are counted again with them. Only the scheduler thread changes
     * the running set, and it is either this caller or not started on requests yet. */
    for (int i = 0; i < kv.n_stages; i++)
        kv.st[i].reserved_bytes = 0;
    s->kv = kv;
    for (int i = 0; i < s->n_running; i++)
        if (s->running[i]->kv_tokens)
            gw_kv_reserve(&s->kv, s->running[i]->kv_tokens, +1);
    s->kv_known = true;
    s->admit_pending = true;
    pthread_cond_signal(&s->cv);
    pthread_mutex_unlock(&s->mu);
    return 0;
}

int64_t gw_scheduler_max_context(gw_scheduler *s, int64_t context_limit)
{
    pthread_mutex_lock(&s->mu);
    int64_t fit = gw_kv_tokens_fit(&s->kv, NULL);
    pthread_mutex_unlock(&s->mu);
    return fit < context_limit ? fit : context_limit;
}

int gw_scheduler_create(const gw_config *cfg, const mx_config *model, gw_log log, gw_scheduler **out,
                        mx_error *err)
{
    *out = NULL;
    gw_scheduler *s = calloc(1, sizeof *s);
    if (!s)
        return mx_fail(err, MX_ENOMEM, "out of memory");
    s->cfg = *cfg;
    s->attn_tokens = gw_attn_context_tokens(model);
    s->log = log;
    s->kv.n_stages = cfg->n_stages;
    s->kv.kv_heads = model->num_key_value_heads;
    s->kv.head_dim = model->head_dim;
    s->depth = cfg->pipeline_depth > 0 ? cfg->pipeline_depth : cfg->n_stages;
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->cv, NULL);
    /* Sequence ids: the top 16 bits a random tag of this gateway, the low 48 a counter from
     * a random start, both from the OS, so gateways sharing the stages never collide on a
     * live id (time and pid put two gateways 256 ids apart). */
    uint64_t rnd[2] = {0, 0};
    if (getrandom(rnd, sizeof rnd, 0) != (ssize_t)sizeof rnd)
        rnd[0] = ((uint64_t)time(NULL) << 24) ^ ((uint64_t)getpid() << 8), rnd[1] = rnd[0] * 0x9E3779B97F4A7C15ull;
    s->id_tag = rnd[0] & 0xFFFF000000000000ull;
    s->next_id = rnd[1] & 0x00007FFFFFFFFFFFull; /* half the counter space: never wraps into the tag */
    s->queue = calloc((size_t)cfg->max_queued, sizeof *s->queue);
    s->running = calloc((size_t)cfg->max_batch_sequences, sizeof *s->running);
    s->pick = calloc((size_t)cfg->max_batch_sequences, sizeof *s->pick);
    s->admit_take = calloc((size_t)cfg->max_queued, sizeof *s->admit_take);
    s->flights = calloc((size_t)s->depth, sizeof *s->flights);
    s->woken = calloc((size_t)s->depth * (size_t)cfg->max_batch_sequences, sizeof *s->woken);
    s->retired = calloc((size_t)cfg->max_batch_sequences, sizeof *s->retired);
    int rc = (!s->queue || !s->running || !s->pick || !s->admit_take || !s->flights || !s->woken || !s->retired)
                 ? mx_fail(err, MX_ENOMEM, "out of memory") : 0;
    for (int i = 0; i < cfg->n_stages && !rc; i++) {
        pending_release *p = &s->pend[i];
        p->cap = 4 * cfg->max_batch_sequences + cfg->max_queued;
        p->ids = calloc((size_t)p->cap, sizeof *p->ids);
        p->until_ms = calloc((size_t)p->cap, sizeof *p->until_ms);
        if (!p->ids || !p->until_ms)
            rc = mx_fail(err, MX_ENOMEM, "out of memory");
    }
    /* as large as a stage accepts by default: a larger cap here would only move the failure */
    mx_rpc_channel_options co = {.max_message_bytes = MX_DEFAULT_MAX_MESSAGE_BYTES};
    for (int i = 0; i < cfg->n_stages && !rc; i++)
        rc = mx_rpc_channel_create(cfg->stages[i], &co, &s->stages[i], err);
    for (int i = 0; s->flights && i < s->depth; i++) {
        s->flights[i].s = s;
        pthread_cond_init(&s->flights[i].cv, NULL);
    }
    for (int i = 0; s->flights && i < s->depth && !rc; i++) {
        flight *f = &s->flights[i];
        rc = gw_micro_batch_init(&f->batch, cfg->max_batch_sequences, err);
        if (!rc && pthread_create(&f->thread, NULL, flight_main, f))
            rc = mx_fail(err, MX_ENOMEM, "cannot start flight thread %d", i);
        f->started = !rc;
    }
    if (!rc) {
        if (pthread_create(&s->thread, NULL, loop, s))
            rc = mx_fail(err, MX_ENOMEM, "cannot start the scheduler thread");
        else
            s->thread_started = true;
    }
    if (rc) {
        gw_scheduler_destroy(s);
        return rc;
    }
    *out = s;
    return 0;
}

void gw_scheduler_destroy(gw_scheduler *s)
{
    if (!s)
        return;
    pthread_mutex_lock(&s->mu);
    s->stop = true;
    pthread_cond_broadcast(&s->cv);
    pthread_mutex_unlock(&s->mu);
    if (s->thread_started)
        pthread_join(s->thread, NULL);
    /* every flight has landed and been delivered: stop the flight threads */
    for (int i = 0; s->flights && i < s->depth; i++) {
        flight *f = &s->flights[i];
        pthread_mutex_lock(&s->mu);
        f->quit = true;
        pthread_cond_signal(&f->cv);
        pthread_mutex_unlock(&s->mu);
        if (f->started)
            pthread_join(f->thread, NULL);
        gw_micro_batch_free(&f->batch);
        pthread_cond_destroy(&f->cv);
    }
    double now = mx_now_ms();
    for (int i = 0; i < s->n_queued; i++) {
        gw_request_finish(s->queue[i], MX__V1__FINISH_REASON__FINISH_REASON_ERROR, MX_EUNAVAILABLE,
                          "the gateway is shutting down", now);
        gw_request_unref(s->queue[i]);
    }
    for (int i = 0; i < s->n_running; i++)
        gw_request_finish(s->running[i], MX__V1__FINISH_REASON__FINISH_REASON_ERROR, MX_EUNAVAILABLE,
                          "the gateway is shutting down", now);
    if (s->thread_started) {
        retire(s, now);
        release_retired(s);
    }
    for (int i = 0; i < s->cfg.n_stages; i++) {
        mx_rpc_channel_destroy(s->stages[i]);
        free(s->pend[i].ids);
        free(s->pend[i].until_ms);
    }
    pthread_mutex_destroy(&s->mu);
    pthread_cond_destroy(&s->cv);
    free(s->queue);
    free(s->running);
    free(s->pick);
    free(s->admit_take);
    free(s->flights);
    free(s->woken);
    free(s->retired);
    free(s);
}

void gw_scheduler_counts(gw_scheduler *s, int *queued, int *running)
{
    pthread_mutex_lock(&s->mu);
    *queued = s->n_queued;
    *running = s->n_running;
    pthread_mutex_unlock(&s->mu);
}

int gw_scheduler_submit(gw_scheduler *s, gw_request *r, mx_error *err)
{
    pthread_mutex_lock(&s->mu);
    if (s->stop || s->n_queued >= s->cfg.max_queued) {
        int queued = s->n_queued;
        bool stopping = s->stop;
        pthread_mutex_unlock(&s->mu);
        return stopping ? mx_fail(err, MX_EUNAVAILABLE, "the gateway is shutting down")
                        : mx_fail(err, MX_ENOMEM, "%d requests are already waiting (gateway.max_queued)", queued);
    }
    int rc = gw_kv_check_ever(&s->kv, (int64_t)r->n_prompt + r->max_new, err);
    if (rc) {
        pthread_mutex_unlock(&s->mu);
        return rc;
    }
    r->seq_id = s->id_tag | (++s->next_id & 0x0000FFFFFFFFFFFFull);
    gw_request_ref(r);
    s->queue[s->n_queued++] = r;
    s->admit_pending = true;
    pthread_cond_signal(&s->cv);
    pthread_mutex_unlock(&s->mu);
    return 0;
}
