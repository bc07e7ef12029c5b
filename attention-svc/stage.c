/* stage.c - the AttentionStage methods: checks a micro-batch against the live sequences,
 * runs it through this stage's layers (MoE through the router when experts live elsewhere)
 * and answers hidden states, or on the last stage the sampled tokens: logits never leave
 * the stage. With a next stage configured and a request asking to be forwarded, the hidden
 * states go on to the next stage from here (outside the compute lock, so the next
 * micro-batch can run meanwhile) and its answer is ours. Must not keep request state beyond
 * the sequence table. */
#include "stage.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/model.h"
#include "core/clock.h"
#include "core/limits.h"
#include "core/protocol.h"
#include "core/rpc/callset.h"
#include "core/rpc/client.h"
#include "core/rpc/health.h"
#include "core/rpc/pb.h"
#include "core/sampling.h"
#include "core/weights.h"
#include "mx/internal/v1/attention_stage.pb-c.h"
#include "router/router.h"
#include "seq_table.h"
#include "stage_metrics.h"

typedef Mx__Internal__V1__RunBatchRequest RunBatchRequest;
typedef Mx__Internal__V1__SequenceInput SequenceInput;
typedef Mx__Internal__V1__RunBatchResponse RunBatchResponse;
typedef Mx__Internal__V1__StageTimings StageTimings;

#define RUN_BATCH MX_STAGE_RUN_BATCH_METHOD
#define INFO MX_STAGE_INFO_METHOD

typedef struct step_undo {
    size_t n;
    uint64_t *ids;
    int64_t *len, *len_after; /* before the step; after it (-1 until committed) */
    int *hist;
    float *floats;
} step_undo;

/* A packed message gRPC sends from: the call context holds one reference, gRPC one while it
 * has the bytes; reused when only the context's is left. */
typedef struct out_buf {
    atomic_int refs;
    size_t cap;
    uint8_t data[];
} out_buf;

static void out_buf_release(void *ctx)
{
    out_buf *b = ctx;
    if (atomic_fetch_sub(&b->refs, 1) == 1)
        free(b);
}

/* What one RunBatch call uses besides its slot, kept between calls so a call allocates
 * (almost) nothing: the undo record's arrays (the record lives until the next stage
 * answered), an arena the request and the next stage's answer are unpacked into, and the
 * call set (one completion queue) of the call to the next stage. One per RPC worker. */
typedef struct call_ctx {
    bool taken, temporary;      /* temporary: every pooled one was taken (freed after) */
    step_undo undo;
    size_t undo_cap, undo_floats_cap;
    uint8_t *arena;             /* 64-byte aligned */
    size_t arena_cap, arena_used, arena_need;
    ProtobufCAllocator pa;
    mx_rpc_callset *fwd;        /* NULL until the first forward */
    struct out_buf *out[2];     /* packed messages handed to gRPC, reused once it let go */
} call_ctx;

/* What one batch in the layers uses: workspaces (ws[1] for the second half of a batch run
 * in halves), the router's dispatchers, and the per-step arrays (grown, never shrunk). */
typedef struct step_slot {
    bool taken;
    mx_workspace *ws[2];
    mx_router_dispatcher *disp[2];
    seq_entry **entries;
    mx_sequence **seqs;
    mx_span *spans;
    size_t cap;                 /* sequences the arrays hold */
    int32_t *ids;               /* token ids of a first stage's step */
    size_t ids_cap;
    bool *flags;                /* [cap] kv_admit's left-out sequences */
    uint64_t *new_ids;          /* [cap] sequences resolve_sequences created */
    int32_t *rows;              /* [cap] rows sampled */
    Mx__Internal__V1__SampledToken **sampled, *toks; /* [cap] the answer's sampled tokens */
    float *logits;              /* [logits_cap] the head's logits of the sampled rows */
    size_t logits_cap;
} step_slot;

struct stage {
    pthread_mutex_t lock;       /* one batch / release / info at a time */
    int index, count, layer_begin, layer_end;
    bool first, last;
    mx_config cfg;
    mx_weights *w;
    mx_backend *be;
    mx_model *m;
    mx_router *router;          /* NULL: experts are local */
    /* One slot per micro-batch in the layers at once (two with overlap: a batch whose expert
     * calls are out lets the next one compute), its buffers made at start for
     * max_step_tokens so a step allocates nothing. Under lock. */
    step_slot slots[2];
    int n_slots;
    pthread_cond_t slot_cv;     /* a slot was given back */
    bool overlap;               /* the lock is let go while a batch's expert calls are out */
    bool overlap_halves;        /* a batch of 2+ sequences as two halves (slot.ws[1]) */
    uint64_t *busy;             /* [max_sequences] ids of the sequences of batches in a slot */
    int n_busy;
    uint64_t *deferred;         /* [max_sequences] Releases of busy sequences, done after */
    int n_deferred, max_sequences;
    pthread_mutex_t calls_mu;   /* guards taking and giving back calls[] (held alone) */
    call_ctx *calls;            /* [n_calls] */
    int n_calls;
    stage_metrics *metrics;     /* Prometheus (stage_metrics.h) */
    seq_table seqs;
    int softmax_layers;         /* KV-caching layers in [layer_begin, layer_end) */
    float *sample_work;         /* [2 * vocab] */
    char next_addr[256];        /* "" = no next stage */
    mx_rpc_channel *next;       /* NULL = no next stage */
    /* Under stats_mu (taken after lock when both are held, never the other way): */
    pthread_mutex_t stats_mu;
    bool next_checked;          /* the next stage answered Info with index + 1 */
    int in_flight, max_in_flight;
    uint64_t batches_run;
    /* Under lock: */
    int64_t lease_ms;           /* 0 = sequences never expire */
    bool draining;              /* stopping: live sequences finish, new ones are refused */
    bool fail_expert_once;      /* tests only: one MoE call of fail_expert_layer fails */
    int fail_expert_layer;
    /* health watcher (stage_watch_health); stop flag under watch_mu */
    pthread_mutex_t watch_mu;
    pthread_cond_t watch_cv;
    pthread_t watch_thread;
    bool watching, watch_stop;
    mx_rpc_server *watch_srv;
};

/* The router's executor, timed, so RunBatch can report expert time apart from attention. */
typedef struct timed_moe {
    mx_moe_executor inner;
    double ms;
    stage *s;
} timed_moe;

/* Local experts with the step's workspace. */
typedef struct local_moe_ctx {
    mx_model *m;
    mx_workspace *ws;
} local_moe_ctx;

static int local_moe(void *ctx, int layer, const mx_tensor *x2, const int32_t *ids, const float *weights, int k,
                     mx_tensor *out, mx_error *err)
{
    local_moe_ctx *lc = ctx;
    return mx_moe_local_ws(lc->m, lc->ws, layer, x2, ids, weights, k, out, err);
}

static int timed_moe_run(void *ctx, int layer, const mx_tensor *x2, const int32_t *ids, const float *weights,
                         int k, mx_tensor *out, mx_error *err)
{
    timed_moe *t = ctx;
    if (t->s->fail_expert_once && layer == t->s->fail_expert_layer) {
        t->s->fail_expert_once = false;
        return mx_fail(err, MX_EUNAVAILABLE, "layer %d: expert call failed by test_fail_expert_call_once_at_layer",
                       layer);
    }
    double t0 = mx_now_ms();
    int rc = t->inner.run(t->inner.ctx, layer, x2, ids, weights, k, out, err);
    t->ms += mx_now_ms() - t0;
    return rc;
}

static void step_undo_free(step_undo *u)
{
    free(u->ids);
    free(u->len);
    free(u->len_after);
    free(u->hist);
    free(u->floats);
    memset(u, 0, sizeof *u);
}

static void call_ctx_release(call_ctx *c)
{
    for (int i = 0; i < 2; i++)
        if (c->out[i])
            out_buf_release(c->out[i]);
    step_undo_free(&c->undo);
    free(c->arena);
    mx_rpc_callset_destroy(c->fwd);
    memset(c, 0, sizeof *c);
}

/* protobuf-c's allocator over a call's arena: 64-byte aligned pieces (the request's hidden
 * rows are used in place as the step's activations); past the arena, malloc, and the arena
 * grows for the next call. */
static void *arena_alloc(void *ctx, size_t n)
{
    call_ctx *c = ctx;
    size_t take = (n + 63) / 64 * 64;
    c->arena_need += take;
    if (c->arena && c->arena_used + take <= c->arena_cap) {
        void *p = c->arena + c->arena_used;
        c->arena_used += take;
        return p;
    }
    return aligned_alloc(64, take ? take : 64);
}

static void arena_free(void *ctx, void *p)
{
    call_ctx *c = ctx;
    if (p && !(c->arena && (uint8_t *)p >= c->arena && (uint8_t *)p < c->arena + c->arena_cap))
        free(p);
}

/* After a call: the arena starts over, grown first (to twice the call's need) when the
 * call overflowed it. */
static void arena_reset(call_ctx *c)
{
    if (c->arena_need > c->arena_cap) {
        size_t cap = (2 * c->arena_need + 4095) / 4096 * 4096;
        uint8_t *grown = aligned_alloc(64, cap);
        if (grown) {
            free(c->arena);
            c->arena = grown;
            c->arena_cap = cap;
        }
    }
    c->arena_used = c->arena_need = 0;
}

/* Packs msg into one of the call's buffers (a new one when both are still gRPC's or too
 * small): the payload's release gives gRPC's reference back. */
static int pack_out(call_ctx *c, const ProtobufCMessage *msg, mx_rpc_payload *out, mx_error *err)
{
    size_t len = protobuf_c_message_get_packed_size(msg);
    int k = 0;
    while (k < 2 && c->out[k] && (atomic_load(&c->out[k]->refs) != 1 || c->out[k]->cap < len))
        k++;
    if (k == 2)
        k = atomic_load(&c->out[0]->refs) == 1 ? 0 : 1; /* (replaced below either way) */
    out_buf *b = c->out[k];
    if (!b || atomic_load(&b->refs) != 1 || b->cap < len) {
        size_t cap = len + len / 4 + 64;
        out_buf *fresh = malloc(sizeof *fresh + cap);
        if (!fresh)
            return mx_fail(err, MX_ENOMEM, "cannot allocate %zu bytes for a %s message", len, msg->descriptor->name);
        atomic_init(&fresh->refs, 1);
        fresh->cap = cap;
        if (b)
            out_buf_release(b);
        c->out[k] = b = fresh;
    }
    size_t packed = protobuf_c_message_pack(msg, b->data);
    if (packed != len)
        return mx_fail(err, MX_EINTERNAL, "%s packed to %zu bytes, expected %zu", msg->descriptor->name, packed, len);
    atomic_fetch_add(&b->refs, 1);
    *out = (mx_rpc_payload){b->data, len, out_buf_release, b};
    return 0;
}

/* A free call context of the pool, or a temporary one (NULL: out of memory). */
static call_ctx *call_take(stage *s)
{
    call_ctx *c = NULL;
    pthread_mutex_lock(&s->calls_mu);
    for (int i = 0; i < s->n_calls && !c; i++)
        if (!s->calls[i].taken)
            c = &s->calls[i];
    if (c)
        c->taken = true;
    pthread_mutex_unlock(&s->calls_mu);
    if (!c && (c = calloc(1, sizeof *c)))
        c->temporary = true;
    if (c)
        c->pa = (ProtobufCAllocator){arena_alloc, arena_free, c};
    return c;
}

static void call_give(stage *s, call_ctx *c)
{
    arena_reset(c);
    c->undo.n = 0;
    if (c->temporary) {
        call_ctx_release(c);
        free(c);
        return;
    }
    pthread_mutex_lock(&s->calls_mu);
    c->taken = false;
    pthread_mutex_unlock(&s->calls_mu);
}

int stage_create(const stage_config *c, stage **out, mx_error *err)
{
    *out = NULL;
    stage *s = calloc(1, sizeof *s);
    if (!s)
        return mx_fail(err, MX_ENOMEM, "out of memory");
    pthread_mutex_init(&s->lock, NULL);
    pthread_cond_init(&s->slot_cv, NULL);
    pthread_mutex_init(&s->calls_mu, NULL);
    pthread_mutex_init(&s->stats_mu, NULL);
    pthread_mutex_init(&s->watch_mu, NULL);
    pthread_cond_init(&s->watch_cv, NULL);
    s->index = c->index;
    s->count = c->count;
    s->first = c->index == 0;
    s->last = c->index == c->count - 1;
    s->layer_begin = c->layer_begin;
    s->layer_end = c->layer_end;
    s->lease_ms = c->sequence_lease_ms;
    s->fail_expert_once = c->test_fail_expert_once;
    s->fail_expert_layer = c->test_fail_expert_layer;
    char path[MX_PATH_BUF];
    snprintf(path, sizeof path, "%s/config.json", c->model);
    int rc = mx_config_load(path, &s->cfg, err);
    if (!rc && c->layer_end > s->cfg.num_hidden_layers)
        rc = mx_fail(err, MX_EINVAL, "stage.layer_end %d is past the model's %d layers", c->layer_end,
                     s->cfg.num_hidden_layers);
    if (!rc) {
        mx_load_plan plan = {.layer_begin = c->layer_begin, .layer_end = c->layer_end, .attention = true,
                             .embed = s->first, .head = s->last, .all_experts = !c->remote_experts,
                             .attn_format = c->attn_dtype, .quantize_threads = c->threads};
        rc = mx_weights_load(c->model, &plan, &s->w, err);
    }
    if (!rc)
        rc = mx_backend_create(c->backend, c->threads, &s->be, err);
    if (!rc && c->pin_threads)
        rc = mx_backend_cpu_pin_threads(s->be, err);
    if (!rc) {
        /* before any sequence exists: the backend takes every KV page from this budget */
        mx_kv_options ko = {.dtype = c->kv_dtype, .budget_bytes = c->kv_cache_bytes};
        rc = s->be->kv_configure(s->be, &ko, err);
        if (rc)
            mx_error_prefix(err, "stage.kv_dtype / stage.kv_cache_bytes");
    }
    for (int l = c->layer_begin; !rc && l < c->layer_end; l++)
        s->softmax_layers += s->cfg.attn_type[l] == MX_ATTN_SOFTMAX;
    if (!rc)
        rc = mx_model_create(s->w, s->be, &s->m, err);
    if (!rc && c->remote_experts) {
        mx_router_config rcfg = c->router; /* shallow: mx_router_create copies what it keeps */
        mx_router_host_of(c->listen, rcfg.local_host, sizeof rcfg.local_host); /* the send order */
        rc = mx_router_create(&rcfg, s->cfg.num_hidden_layers, s->cfg.hidden_size, s->cfg.num_local_experts,
                              s->be, &s->router, err);
        if (!rc)
            rc = mx_router_check_coverage(s->router, c->layer_begin, c->layer_end, err);
    }
    if (!rc)
        rc = seq_table_init(&s->seqs, s->m, c->layer_begin, c->layer_end, c->max_sequences, err);
    if (!rc)
        rc = stage_metrics_create(c->index, s->router, c->layer_begin, c->layer_end, &s->metrics, err);
    if (!rc && c->next[0]) {
        snprintf(s->next_addr, sizeof s->next_addr, "%s", c->next);
        mx_rpc_channel_options co = {.max_message_bytes = c->max_message_bytes};
        rc = mx_rpc_channel_create(c->next, &co, &s->next, err);
    }
    if (!rc && s->last && !(s->sample_work = malloc((size_t)s->cfg.vocab_size * 2 * sizeof(float))))
        rc = mx_fail(err, MX_ENOMEM, "out of memory");
    int step_tokens = c->max_step_tokens > 0 ? c->max_step_tokens : 512;
    int step_seqs = c->max_sequences < step_tokens ? c->max_sequences : step_tokens;
    s->overlap = c->overlap && s->router;
    s->overlap_halves = c->overlap_halves && s->router;
    s->n_slots = s->overlap ? 2 : 1;
    s->max_sequences = c->max_sequences > 0 ? c->max_sequences : 1;
    if (!rc && (!(s->busy = malloc((size_t)s->max_sequences * sizeof *s->busy)) ||
                !(s->deferred = malloc((size_t)s->max_sequences * sizeof *s->deferred))))
        rc = mx_fail(err, MX_ENOMEM, "out of memory");
    s->n_calls = c->worker_threads > 0 ? c->worker_threads : 4;
    if (!rc && !(s->calls = calloc((size_t)s->n_calls, sizeof *s->calls)))
        rc = mx_fail(err, MX_ENOMEM, "out of memory");
    for (int k = 0; k < s->n_slots && !rc; k++)
        for (int i = 0; i < (s->overlap_halves ? 2 : 1) && !rc; i++) {
            rc = mx_workspace_create(s->m, step_tokens, step_seqs > 0 ? step_seqs : 1, &s->slots[k].ws[i], err);
            if (!rc && s->router)
                rc = mx_router_dispatcher_create(s->router, step_tokens, &s->slots[k].disp[i], err);
        }
    if (rc) {
        stage_destroy(s);
        return rc;
    }
    *out = s;
    return 0;
}

void stage_destroy(stage *s)
{
    if (!s)
        return;
    stage_stop_health(s);
    if (s->seqs.entries)
        seq_table_destroy(&s->seqs);
    stage_metrics_destroy(s->metrics); /* before the router: it unsets the router's observer */
    for (int k = 0; k < 2; k++) {
        step_slot *sl = &s->slots[k];
        for (int i = 0; i < 2; i++) {
            mx_router_dispatcher_free(sl->disp[i]);
            if (s->m)
                mx_workspace_free(s->m, sl->ws[i]);
        }
        free(sl->entries);
        free(sl->seqs);
        free(sl->spans);
        free(sl->ids);
        free(sl->flags);
        free(sl->new_ids);
        free(sl->rows);
        free(sl->sampled);
        free(sl->toks);
        free(sl->logits);
    }
    free(s->busy);
    free(s->deferred);
    for (int i = 0; s->calls && i < s->n_calls; i++)
        call_ctx_release(&s->calls[i]);
    free(s->calls);
    pthread_mutex_destroy(&s->calls_mu);
    pthread_cond_destroy(&s->slot_cv);
    mx_router_destroy(s->router);
    mx_model_free(s->m);
    if (s->be)
        s->be->destroy(s->be);
    mx_weights_free(s->w);
    free(s->sample_work);
    mx_rpc_channel_destroy(s->next);
    pthread_mutex_destroy(&s->stats_mu);
    pthread_cond_destroy(&s->watch_cv);
    pthread_mutex_destroy(&s->watch_mu);
    pthread_mutex_destroy(&s->lock);
    free(s);
}

static mx_sampling_params to_params(const Mx__Internal__V1__StageSampling *p)
{
    mx_sampling_params sp = mx_sampling_defaults();
    if (!p)
        return sp;
    sp.temperature = p->temperature;
    sp.top_k = p->top_k > (uint32_t)INT32_MAX ? INT32_MAX : (int)p->top_k;
    sp.top_p = p->top_p == 0.0f ? 1.0f : p->top_p;
    sp.min_p = p->min_p;
    sp.repetition_penalty = p->repetition_penalty == 0.0f ? 1.0f : p->repetition_penalty;
    sp.seed = p->seed;
    sp.top_logprobs = p->top_logprobs > MX_MAX_TOP_LOGPROBS ? MX_MAX_TOP_LOGPROBS : (int)p->top_logprobs;
    return sp;
}

/* Checks the request's shape before any state is touched. */
static int check_batch(const stage *s, const RunBatchRequest *rq, size_t *n_tokens, mx_error *err)
{
    if (rq->n_sequences == 0)
        return mx_fail(err, MX_EINVAL, "RunBatchRequest.sequences is empty");
    size_t total = 0;
    for (size_t i = 0; i < rq->n_sequences; i++) {
        const SequenceInput *q = rq->sequences[i];
        if (q->num_tokens == 0 || q->num_tokens > (1u << 24))
            return mx_fail(err, MX_EINVAL, "sequences[%zu].num_tokens %u is not in [1, 2^24]", i, q->num_tokens);
        if (s->first && q->n_token_ids != q->num_tokens)
            return mx_fail(err, MX_EINVAL, "sequences[%zu].token_ids has %zu ids but num_tokens is %u", i,
                           q->n_token_ids, q->num_tokens);
        for (size_t j = 0; j < q->n_token_ids; j++)
            if (q->token_ids[j] >= (uint32_t)s->cfg.vocab_size)
                return mx_fail(err, MX_EINVAL, "sequences[%zu].token_ids[%zu] = %u is outside the vocabulary of %d",
                               i, j, q->token_ids[j], s->cfg.vocab_size);
        for (size_t j = 0; j < i; j++)
            if (rq->sequences[j]->sequence_id == q->sequence_id)
                return mx_fail(err, MX_EINVAL, "sequences[%zu].sequence_id %llu appears twice in the batch", i,
                               (unsigned long long)q->sequence_id);
        if ((uint64_t)q->start_position + q->num_tokens > (uint64_t)INT32_MAX)
            return mx_fail(err, MX_EINVAL, "sequences[%zu]: start_position + num_tokens overflows", i);
        if (s->last && q->sample) { /* before any state changes, not after the layers ran */
            mx_sampling_params sp = to_params(q->sampling);
            if (mx_sampling_validate(&sp, err)) {
                mx_error_prefix(err, "sequences[%zu].sampling", i);
                return err->code;
            }
        }
        total += q->num_tokens;
    }
    if (total > (1u << 24))
        return mx_fail(err, MX_EINVAL, "the batch has %zu tokens, more than 2^24", total);
    if (!s->first) {
        const Mx__Internal__V1__Tensor *h = rq->hidden;
        if (!h)
            return mx_fail(err, MX_EINVAL, "RunBatchRequest.hidden is required on stage %d (not the first)", s->index);
        if (h->dtype != MX__INTERNAL__V1__DTYPE__DTYPE_F32)
            return mx_fail(err, MX_EINVAL, "RunBatchRequest.hidden.dtype must be DTYPE_F32");
        if (h->rows != total || h->cols != (uint32_t)s->cfg.hidden_size)
            return mx_fail(err, MX_EINVAL, "RunBatchRequest.hidden is %u x %u but the batch needs %zu x %d", h->rows,
                           h->cols, total, s->cfg.hidden_size);
        if (h->data.len != total * (size_t)s->cfg.hidden_size * 4)
            return mx_fail(err, MX_EINVAL, "RunBatchRequest.hidden.data has %zu bytes, expected %zu", h->data.len,
                           total * (size_t)s->cfg.hidden_size * 4);
    }
    *n_tokens = total;
    return 0;
}

/* Samples every sequence with sample=true from the head's logits; fills resp->sampled. */
static int sample_batch(stage *s, step_slot *sl, const RunBatchRequest *rq, seq_entry **entries,
                        const mx_span *spans, const mx_tensor *h, Mx__Internal__V1__RunBatchResponse *resp,
                        mx_error *err)
{
    int vocab = s->cfg.vocab_size, n = 0;
    for (size_t i = 0; i < rq->n_sequences; i++)
        n += rq->sequences[i]->sample;
    if (n == 0)
        return 0;
    /* the slot's arrays (n <= its sequences); the logits grow to the largest step seen */
    if ((size_t)n * vocab > sl->logits_cap) {
        float *grown = realloc(sl->logits, (size_t)n * vocab * sizeof *grown);
        if (!grown)
            return mx_fail(err, MX_ENOMEM, "out of memory for %d logits rows", n);
        sl->logits = grown;
        sl->logits_cap = (size_t)n * vocab;
    }
    int32_t *rows = sl->rows;
    float *logits = sl->logits;
    resp->sampled = sl->sampled;
    Mx__Internal__V1__SampledToken *toks = sl->toks;
    memset(toks, 0, (size_t)n * sizeof *toks);
    int k = 0;
    for (size_t i = 0; i < rq->n_sequences; i++)
        if (rq->sequences[i]->sample)
            rows[k++] = spans[i].start + spans[i].len - 1;
    int rc = mx_model_head_ws(s->m, sl->ws[0], h, rows, n, logits, err);
    k = 0;
    for (size_t i = 0; i < rq->n_sequences && !rc; i++) {
        const SequenceInput *q = rq->sequences[i];
        if (!q->sample)
            continue;
        mx_sampling_params sp = to_params(q->sampling);
        if ((rc = mx_sampling_validate(&sp, err))) {
            mx_error_prefix(err, "sequences[%zu].sampling", i);
            break;
        }
        seq_entry *e = entries[i];
        /* counter-based: the draw depends on (seed, step) only, so a retried step samples
         * the same token */
        mx_rng rng;
        mx_rng_seed_at(&rng, sp.seed, q->sampling ? q->sampling->step : 0);
        if (q->sampling && (rc = seq_entry_append_history(e, q->sampling->extra_seen_token_ids,
                                                          q->sampling->n_extra_seen_token_ids, err)))
            break;
        mx_sample smp;
        rc = mx_sample_token(logits + (size_t)k * vocab, vocab, &sp, e->history, e->n_history, &rng,
                             s->sample_work, &smp, err);
        if (rc)
            break;
        Mx__Internal__V1__SampledToken *t = &toks[k];
        mx__internal__v1__sampled_token__init(t);
        t->sequence_id = q->sequence_id;
        t->token_id = (uint32_t)smp.token;
        t->logprob = smp.logprob;
        t->n_top_token_ids = t->n_top_logprobs = (size_t)smp.n_top;
        if (smp.n_top > 0) {
            t->top_token_ids = malloc((size_t)smp.n_top * sizeof *t->top_token_ids);
            t->top_logprobs = malloc((size_t)smp.n_top * sizeof *t->top_logprobs);
            if (!t->top_token_ids || !t->top_logprobs) {
                rc = mx_fail(err, MX_ENOMEM, "out of memory");
                break;
            }
            for (int j = 0; j < smp.n_top; j++) {
                t->top_token_ids[j] = (uint32_t)smp.top_ids[j];
                t->top_logprobs[j] = smp.top_logprobs[j];
            }
        }
        resp->sampled[k++] = t;
        resp->n_sampled = (size_t)k;
    }
    if (rc) {
        for (int i = 0; i < n; i++) {
            free(toks[i].top_token_ids);
            free(toks[i].top_logprobs);
        }
        resp->sampled = NULL;
        resp->n_sampled = 0;
    }
    return rc;
}

/* The top-logprob arrays of the sampled tokens (the token arrays are the slot's). */
static void free_sampled(Mx__Internal__V1__RunBatchResponse *resp)
{
    if (!resp->sampled)
        return;
    for (size_t i = 0; i < resp->n_sampled; i++) {
        free(resp->sampled[i]->top_token_ids);
        free(resp->sampled[i]->top_logprobs);
    }
    resp->sampled = NULL;
}

/* Looks up (or, at position 0, creates) every sequence of the batch. On failure the
 * sequences created here are removed again, so a rejected batch leaves no state. */
static int resolve_sequences(stage *s, step_slot *sl, const RunBatchRequest *rq, seq_entry **entries,
                             mx_error *err)
{
    size_t n = rq->n_sequences, created = 0;
    uint64_t *new_ids = sl->new_ids;
    int rc = 0;
    for (size_t i = 0; i < n && !rc; i++) {
        const SequenceInput *q = rq->sequences[i];
        seq_entry *e = seq_table_find(&s->seqs, q->sequence_id);
        if (!e && q->start_position != 0)
            rc = mx_fail(err, MX_ENOTFOUND,
                         "sequence %llu is not live on stage %d (released, or never started at position 0)",
                         (unsigned long long)q->sequence_id, s->index);
        else if (!e && !(rc = seq_table_add(&s->seqs, q->sequence_id, &e, err)))
            new_ids[created++] = q->sequence_id;
        else if (e && e->seq->length != (int64_t)q->start_position)
            rc = mx_fail(err, MX_EINVAL, "sequences[%zu].start_position is %u but sequence %llu holds %lld tokens", i,
                         q->start_position, (unsigned long long)q->sequence_id, (long long)e->seq->length);
    }
    /* seq_table_add may move entries, so pointers are taken once everything exists. */
    for (size_t i = 0; i < n && !rc; i++)
        entries[i] = seq_table_find(&s->seqs, rq->sequences[i]->sequence_id);
    if (rc)
        for (size_t i = 0; i < created; i++)
            seq_table_remove(&s->seqs, new_ids[i]);
    return rc;
}

/* The sequences of a batch whose new tokens' KV pages do not fit this stage's budget are
 * left out before any state is touched (the backend would fail the whole batch half-way
 * through the layers otherwise, with every sequence's lightning state already advanced);
 * the rest run as a sub-batch and the refused ids go back in the response. */
typedef struct kv_filter {
    RunBatchRequest sub;           /* the batch without the refused sequences */
    SequenceInput **kept;
    Mx__Internal__V1__Tensor hidden;
    uint8_t *rows;                 /* the kept rows of the hidden states (not the first stage) */
    uint64_t *refused;             /* ids, in batch order */
    size_t n_refused;
    char msg[MX_ERROR_MSG_MAX];
} kv_filter;

static void kv_filter_free(kv_filter *f)
{
    free(f->kept);
    free(f->rows);
    free(f->refused);
    memset(f, 0, sizeof *f);
}

static uint64_t kv_bytes(const stage *s, mx_kv_dtype t, int64_t tokens)
{
    return mx_kv_bytes_for_tokens(t, s->cfg.num_key_value_heads, s->cfg.head_dim, s->softmax_layers, tokens);
}

/* The numbers a KV refusal names: budget, use, per-token bytes and what fits one sequence. */
static void kv_describe(const stage *s, const mx_kv_usage *u, char *buf, size_t cap)
{
    uint64_t page = mx_kv_page_bytes(u->dtype, s->cfg.num_key_value_heads, s->cfg.head_dim);
    snprintf(buf, cap, "%llu of %llu bytes in use, %s, %d softmax layers, %llu bytes per token: at most %lld "
             "tokens fit one sequence on this stage", (unsigned long long)u->used_bytes,
             (unsigned long long)u->budget_bytes, mx_kv_dtype_name(u->dtype), s->softmax_layers,
             (unsigned long long)(page * (uint64_t)s->softmax_layers / MX_KV_PAGE_TOKENS),
             (long long)mx_kv_tokens_fit(u->dtype, s->cfg.num_key_value_heads, s->cfg.head_dim, s->softmax_layers,
                                         u->budget_bytes));
}

/* Decides which sequences fit (in batch order, first come first served) and builds f->sub
 * when some do not. While draining, a sequence that would be created here is refused the same
 * way (the sequences already live finish; the gateway ends just the refused requests).
 * Returns MX_ENOMEM (RESOURCE_EXHAUSTED) when none is admitted. */
static int kv_admit(stage *s, step_slot *sl, const RunBatchRequest *rq, kv_filter *f, mx_error *err)
{
    mx_kv_usage u;
    s->be->kv_usage(s->be, &u);
    bool budget = u.budget_bytes != 0 && s->softmax_layers != 0;
    if (!budget && !s->draining)
        return 0;
    size_t n = rq->n_sequences, n_drained = 0;
    uint64_t left = u.used_bytes < u.budget_bytes ? u.budget_bytes - u.used_bytes : 0;
    bool *out = sl->flags; /* (the slot holds n: run_slot made room) */
    memset(out, 0, n * sizeof *out);
    size_t first = n;
    uint64_t first_need = 0;
    int64_t first_len = 0;
    for (size_t i = 0; i < n; i++) {
        const SequenceInput *q = rq->sequences[i];
        seq_entry *e = seq_table_find(&s->seqs, q->sequence_id);
        if (s->draining && !e) {
            out[i] = true;
            f->n_refused++;
            n_drained++;
            continue;
        }
        if (!budget)
            continue;
        int64_t len = e ? e->seq->length : 0;
        uint64_t need = kv_bytes(s, u.dtype, len + q->num_tokens) - kv_bytes(s, u.dtype, len);
        if (need <= left) {
            left -= need;
            continue;
        }
        out[i] = true;
        f->n_refused++;
        if (first == n) {
            first = i;
            first_need = need;
            first_len = len;
        }
    }
    int rc = 0;
    if (n_drained) {
        snprintf(f->msg, sizeof f->msg, "stage %d (layers [%d, %d)) is draining (stopping): %zu new of %zu "
                 "sequences refused, the sequences it holds finish; retry on another replica", s->index,
                 s->layer_begin, s->layer_end, n_drained, n);
        if (f->n_refused == n)
            rc = mx_fail(err, MX_ENOMEM, "%s", f->msg);
    } else if (f->n_refused) {
        char nums[300];
        kv_describe(s, &u, nums, sizeof nums);
        const SequenceInput *q = rq->sequences[first];
        snprintf(f->msg, sizeof f->msg, "stage %d (layers [%d, %d)): KV budget: %zu of %zu sequences do not fit; "
                 "sequence %llu needs %llu more bytes for tokens [%lld, %lld) (%s)", s->index, s->layer_begin,
                 s->layer_end, f->n_refused, n, (unsigned long long)q->sequence_id, (unsigned long long)first_need,
                 (long long)first_len, (long long)first_len + q->num_tokens, nums);
        if (f->n_refused == n)
            rc = mx_fail(err, MX_ENOMEM, "%s", f->msg);
    }
    if (rc || !f->n_refused)
        return rc;
    size_t kept = n - f->n_refused, hidden_row = (size_t)s->cfg.hidden_size * 4;
    f->kept = malloc(kept * sizeof *f->kept);
    f->refused = malloc(f->n_refused * sizeof *f->refused);
    size_t rows = 0;
    for (size_t i = 0; i < n; i++)
        rows += out[i] ? 0 : rq->sequences[i]->num_tokens;
    if (!s->first)
        f->rows = malloc(rows * hidden_row + 1);
    if (!f->kept || !f->refused || (!s->first && !f->rows))
        return mx_fail(err, MX_ENOMEM, "out of memory");
    size_t k = 0, r = 0, row = 0, at = 0;
    for (size_t i = 0; i < n; i++) {
        const SequenceInput *q = rq->sequences[i];
        if (out[i]) {
            f->refused[r++] = q->sequence_id;
        } else {
            f->kept[k++] = rq->sequences[i];
            if (f->rows)
                memcpy(f->rows + at * hidden_row, rq->hidden->data.data + row * hidden_row,
                       q->num_tokens * hidden_row);
            at += q->num_tokens;
        }
        row += q->num_tokens;
    }
    f->sub = *rq;
    f->sub.sequences = f->kept;
    f->sub.n_sequences = kept;
    if (f->rows) {
        f->hidden = *rq->hidden;
        f->hidden.rows = (uint32_t)rows;
        f->hidden.data.data = f->rows;
        f->hidden.data.len = rows * hidden_row;
        f->sub.hidden = &f->hidden;
    }
    return 0;
}

/* A KV failure inside the layers (the pre-check above should have prevented it): the stage
 * and its numbers named, still RESOURCE_EXHAUSTED. */
static void kv_name_failure(stage *s, mx_error *err)
{
    if (err->code != MX_ENOMEM || strncmp(err->msg, "KV budget", 9) != 0)
        return;
    mx_kv_usage u;
    s->be->kv_usage(s->be, &u);
    char nums[300], msg[MX_ERROR_MSG_MAX + 400];
    kv_describe(s, &u, nums, sizeof nums);
    snprintf(msg, sizeof msg, "stage %d (layers [%d, %d)): %s (%s)", s->index, s->layer_begin, s->layer_end,
             err->msg, nums);
    snprintf(err->msg, sizeof err->msg, "%.*s", (int)sizeof err->msg - 1, msg);
}

/* Atomic steps: before a step touches any state, each sequence's length and history length
 * are saved, and its lightning states keep the state from before the step (every sequence of
 * this stage is in undo mode: a lightning layer advances into its second buffer, so the
 * buffer it advanced from is the undo; KV needs none, a step only appends); after a failure
 * anywhere in the step they are put back and the KV caches truncated, so a retry of the same
 * RunBatch sees the state of before and computes exactly what a fault-free run would. A
 * forwarded step keeps its undo until the next stage answered: a failure down the chain
 * (which left the stages after us unchanged, being atomic too) undoes our part as well.
 * Memory: a second lightning state per sequence (it used to be a host copy of the batch's
 * states per batch in flight, made on one thread before every step: 24 MiB per step at batch
 * 32 on the medium bench model, 3-10 ms). */
/* Grows the array p to n elements of size bytes. On failure the old block stays where it
 * was (still owned, still freed by its owner) and *ok turns false: a caller grows several
 * arrays in a row, checks once, and a later retry finds the ones that did grow. */
static void *regrow(void *p, size_t n, size_t size, bool *ok)
{
    void *grown = realloc(p, n * size);
    if (!grown) {
        *ok = false;
        return p;
    }
    return grown;
}

/* Saves the batch's undo record into the call's (its arrays grown, never shrunk). */
static int save_step(stage *s, seq_entry **entries, size_t n, call_ctx *c, mx_error *err)
{
    step_undo *u = &c->undo;
    size_t need = 0;
    for (size_t i = 0; i < n; i++)
        need += mx_sequence_undo_floats(s->m, entries[i]->seq);
    u->n = 0;
    if (n > c->undo_cap) {
        bool ok = true;
        u->ids = regrow(u->ids, n, sizeof *u->ids, &ok);
        u->len = regrow(u->len, n, sizeof *u->len, &ok);
        u->len_after = regrow(u->len_after, n, sizeof *u->len_after, &ok);
        u->hist = regrow(u->hist, n, sizeof *u->hist, &ok);
        if (!ok)
            return mx_fail(err, MX_ENOMEM, "out of memory for the undo record of %zu sequences", n);
        c->undo_cap = n;
    }
    if (need > c->undo_floats_cap || !u->floats) {
        float *f = realloc(u->floats, (need ? need : 1) * sizeof *f);
        if (!f)
            return mx_fail(err, MX_ENOMEM, "out of memory for %zu floats of step undo state", need);
        u->floats = f;
        c->undo_floats_cap = need ? need : 1;
    }
    u->n = n;
    float *f = u->floats;
    for (size_t i = 0; i < n; i++) {
        u->ids[i] = entries[i]->id;
        u->len[i] = entries[i]->seq->length;
        u->len_after[i] = -1;
        u->hist[i] = entries[i]->n_history;
        MX_TRY(mx_sequence_save(s->m, entries[i]->seq, f, err));
        f += mx_sequence_undo_floats(s->m, entries[i]->seq);
    }
    return 0;
}

/* Under lock. A committed step is undone only for sequences nothing touched since (length
 * still len_after; a released one is gone). A sequence that cannot be put back (the device
 * failed) is dropped: a retry then gets NOT_FOUND instead of a half-applied state. */
static void rollback_step(stage *s, const step_undo *u)
{
    const float *f = u->floats;
    for (size_t i = 0; i < u->n; i++) {
        seq_entry *e = seq_table_find(&s->seqs, u->ids[i]);
        size_t floats = e ? mx_sequence_undo_floats(s->m, e->seq) : 0;
        if (e && (u->len_after[i] < 0 || e->seq->length == u->len_after[i])) {
            mx_error ignored = {0};
            e->n_history = u->hist[i];
            if (mx_sequence_rollback(s->m, e->seq, u->len[i], f, &ignored))
                seq_table_remove(&s->seqs, u->ids[i]);
        }
        f += floats;
    }
}

/* Whether a batch in a slot holds sequence id (under lock). */
static bool is_busy(const stage *s, uint64_t id)
{
    for (int i = 0; i < s->n_busy; i++)
        if (s->busy[i] == id)
            return true;
    return false;
}

/* Leases: a sequence no RunBatch touched for lease_ms is released (its gateway is gone or
 * lost its Release). Under lock. */
static void expire_leases(stage *s)
{
    if (!s->lease_ms)
        return;
    double now = mx_now_ms();
    for (int i = 0; i < s->seqs.count;) {
        seq_entry *e = &s->seqs.entries[i];
        if (now - e->last_used_ms > (double)s->lease_ms && !is_busy(s, e->id))
            seq_table_remove(&s->seqs, e->id); /* moves the last entry to i */
        else
            i++;
    }
}

/* The slot's per-step arrays for n sequences and n_ids token ids (grown, kept). */
static int step_arrays(step_slot *sl, size_t n, size_t n_ids, mx_error *err)
{
    if (n > sl->cap) {
        size_t cap = sl->cap ? sl->cap : 64;
        while (cap < n)
            cap *= 2;
        bool ok = true;
        sl->entries = regrow(sl->entries, cap, sizeof *sl->entries, &ok);
        sl->seqs = regrow(sl->seqs, cap, sizeof *sl->seqs, &ok);
        sl->spans = regrow(sl->spans, cap, sizeof *sl->spans, &ok);
        sl->flags = regrow(sl->flags, cap, sizeof *sl->flags, &ok);
        sl->new_ids = regrow(sl->new_ids, cap, sizeof *sl->new_ids, &ok);
        sl->rows = regrow(sl->rows, cap, sizeof *sl->rows, &ok);
        sl->sampled = regrow(sl->sampled, cap, sizeof *sl->sampled, &ok);
        sl->toks = regrow(sl->toks, cap, sizeof *sl->toks, &ok);
        if (!ok)
            return mx_fail(err, MX_ENOMEM, "out of memory for a batch of %zu sequences", n);
        sl->cap = cap;
    }
    if (n_ids > sl->ids_cap) {
        size_t cap = sl->ids_cap ? sl->ids_cap : 512;
        while (cap < n_ids)
            cap *= 2;
        int32_t *ids = realloc(sl->ids, cap * sizeof *ids);
        if (!ids)
            return mx_fail(err, MX_ENOMEM, "out of memory for %zu token ids", n_ids);
        sl->ids = ids;
        sl->ids_cap = cap;
    }
    return 0;
}

/* Marks the batch's sequences as in a slot: while its lock is let go (overlap), a Release or
 * a lease must not free them, and another batch must not run them. */
static int mark_busy(stage *s, const RunBatchRequest *rq, mx_error *err)
{
    for (size_t i = 0; i < rq->n_sequences; i++)
        if (is_busy(s, rq->sequences[i]->sequence_id))
            return mx_fail(err, MX_EUNAVAILABLE, "sequence %llu is in another micro-batch this stage is computing",
                           (unsigned long long)rq->sequences[i]->sequence_id);
    for (size_t i = 0; i < rq->n_sequences && s->n_busy < s->max_sequences; i++)
        s->busy[s->n_busy++] = rq->sequences[i]->sequence_id;
    return 0;
}

/* The batch left its slot: its sequences are free again, and Releases that came meanwhile
 * are done now. */
static void unmark_busy(stage *s, const RunBatchRequest *rq)
{
    for (size_t i = 0; i < rq->n_sequences; i++)
        for (int j = 0; j < s->n_busy; j++)
            if (s->busy[j] == rq->sequences[i]->sequence_id) {
                s->busy[j] = s->busy[--s->n_busy];
                break;
            }
    for (int j = 0; j < s->n_deferred;)
        if (!is_busy(s, s->deferred[j])) {
            seq_table_remove(&s->seqs, s->deferred[j]);
            s->deferred[j] = s->deferred[--s->n_deferred];
        } else {
            j++;
        }
}

/* One half of an overlapped batch: its sequences, its rows of h, its buffers. */
typedef struct half {
    mx_batch b;
    mx_tensor h;
    mx_workspace *ws;
    mx_router_dispatcher *d;
    mx_moe_input in;
    bool pending;           /* its expert calls are out */
} half;

/* Attention and routing of layer l, then the expert calls go out. */
static int half_begin(stage *s, half *x, int l, timed_moe *t, mx_error *err)
{
    MX_TRY(mx_model_layer_begin(s->m, x->ws, l, &x->b, &x->h, &x->in, err));
    if (s->fail_expert_once && l == s->fail_expert_layer) {
        s->fail_expert_once = false;
        return mx_fail(err, MX_EUNAVAILABLE, "expert call failed by test_fail_expert_call_once_at_layer");
    }
    double t0 = mx_now_ms();
    int rc = mx_router_dispatch_start(x->d, l, &x->in.x2, x->in.ids, x->in.weights, x->in.k, &x->in.out, err);
    t->ms += mx_now_ms() - t0;
    x->pending = rc == 0;
    return rc;
}

/* Waits for layer l's experts and adds the MoE residual. */
static int half_end(stage *s, half *x, int l, timed_moe *t, mx_error *err)
{
    double t0 = mx_now_ms();
    x->pending = false;
    int rc = mx_router_dispatch_finish(x->d, err);
    t->ms += mx_now_ms() - t0;
    return rc ? rc : mx_model_layer_end(s->m, l, &x->h, &x->in, err);
}

/* Ping-pong over the layers (MegaScale-Infer style): the batch in two halves A and B at a
 * sequence boundary; A's expert calls are out while B's attention runs, and B's while A's
 * next layer's attention runs, so neither this stage nor the expert tier waits for the other
 * more than the imbalance. Each sequence sees the same math as in one batch. */
static int run_overlapped(stage *s, step_slot *sl, const mx_batch *b, mx_tensor *h, timed_moe *t, mx_error *err)
{
    int na = 1, ta = b->spans[0].len;
    while (na < b->n_seqs - 1 && 2 * (ta + b->spans[na].len) <= b->n_tokens)
        ta += b->spans[na++].len;
    half x[2];
    memset(x, 0, sizeof x);
    mx_span *spans_b = mx_workspace_spans(sl->ws[1]);
    for (int i = na; i < b->n_seqs; i++)
        spans_b[i - na] = (mx_span){b->spans[i].start - ta, b->spans[i].len};
    x[0].b = (mx_batch){na, b->seqs, b->spans, ta};
    x[1].b = (mx_batch){b->n_seqs - na, b->seqs + na, spans_b, b->n_tokens - ta};
    x[0].h = mx_tensor_rows(h, 0, ta);
    x[1].h = mx_tensor_rows(h, ta, b->n_tokens - ta);
    for (int i = 0; i < 2; i++) {
        x[i].ws = sl->ws[i];
        x[i].d = sl->disp[i];
    }
    int at = s->layer_begin, rc = half_begin(s, &x[0], at, t, err);
    if (!rc)
        rc = half_begin(s, &x[1], at, t, err);
    for (int l = s->layer_begin; l < s->layer_end && !rc; l++)
        for (int i = 0; i < 2 && !rc; i++) {
            at = l;
            rc = half_end(s, &x[i], l, t, err);
            if (!rc && l + 1 < s->layer_end) {
                at = l + 1;
                rc = half_begin(s, &x[i], l + 1, t, err);
            }
        }
    for (int i = 0; i < 2; i++)
        if (x[i].pending) { /* a failed step: the other half's calls are waited for */
            mx_error ignored = {0};
            mx_router_dispatch_finish(x[i].d, &ignored);
        }
    if (rc)
        mx_error_prefix(err, "layer %d", at);
    return rc;
}

/* Overlap across micro-batches: per layer, attention and routing under the lock, then the
 * expert calls go out and the lock is let go while they run, so the next micro-batch (the
 * gateway's pipeline_depth >= 2 sends it) computes its attention meanwhile. The batch's
 * sequences are marked busy, so nothing frees them in between. */
static int run_interleaved(stage *s, step_slot *sl, const mx_batch *b, mx_tensor *h, timed_moe *t, mx_error *err)
{
    int rc = 0, l = s->layer_begin;
    for (; l < s->layer_end && !rc; l++) {
        mx_moe_input in;
        rc = mx_model_layer_begin(s->m, sl->ws[0], l, b, h, &in, err);
        if (!rc && s->fail_expert_once && l == s->fail_expert_layer) {
            s->fail_expert_once = false;
            rc = mx_fail(err, MX_EUNAVAILABLE, "expert call failed by test_fail_expert_call_once_at_layer");
        }
        double t0 = mx_now_ms();
        if (!rc)
            rc = mx_router_dispatch_start(sl->disp[0], l, &in.x2, in.ids, in.weights, in.k, &in.out, err);
        if (!rc) {
            pthread_mutex_unlock(&s->lock);
            rc = mx_router_dispatch_finish(sl->disp[0], err);
            pthread_mutex_lock(&s->lock);
        }
        t->ms += mx_now_ms() - t0;
        if (!rc)
            rc = mx_model_layer_end(s->m, l, h, &in, err);
        if (rc)
            mx_error_prefix(err, "layer %d", l);
    }
    return rc;
}

/* The stage's layers over the batch: in halves when configured and there are two sequences
 * or more; else with overlap across micro-batches; else one batch through the executor. */
static int run_layers(stage *s, step_slot *sl, const mx_batch *b, mx_tensor *h, const mx_moe_executor *moe,
                      timed_moe *t, mx_error *err)
{
    if (s->overlap_halves && b->n_seqs >= 2) {
        MX_TRY(mx_batch_check(s->m, s->layer_begin, s->layer_end, b, h, err));
        return run_overlapped(s, sl, b, h, t, err);
    }
    if (s->overlap) {
        MX_TRY(mx_batch_check(s->m, s->layer_begin, s->layer_end, b, h, err));
        return run_interleaved(s, sl, b, h, t, err);
    }
    return mx_model_run_layers_ws(s->m, sl->ws[0], s->layer_begin, s->layer_end, b, h, moe, err);
}

/* Runs the batch through this stage's layers. Packs into *out either the response, or
 * (fwd) the request for the next stage carrying our hidden states; *mine gets our timings. */
static int run_slot(stage *s, step_slot *sl, const RunBatchRequest *rq, bool fwd, mx_rpc_payload *out,
                    StageTimings *mine, kv_filter *kvf, call_ctx *call, mx_error *err)
{
    step_undo *undo = &call->undo;
    double t_start = mx_now_ms();
    size_t n_tokens = 0;
    MX_TRY(check_batch(s, rq, &n_tokens, err));
    MX_TRY(step_arrays(sl, rq->n_sequences, 0, err));
    MX_TRY(kv_admit(s, sl, rq, kvf, err));
    if (kvf->n_refused) {
        rq = &kvf->sub;
        MX_TRY(check_batch(s, rq, &n_tokens, err));
    }
    size_t n = rq->n_sequences;
    int hidden = s->cfg.hidden_size, rc = step_arrays(sl, n, s->first ? n_tokens : 0, err);
    seq_entry **entries = sl->entries;
    mx_sequence **seqs = sl->seqs;
    mx_span *spans = sl->spans;
    int32_t *ids = sl->ids;
    float *host = NULL;
    mx_tensor h = {0};
    Mx__Internal__V1__RunBatchResponse resp = MX__INTERNAL__V1__RUN_BATCH_RESPONSE__INIT;
    Mx__Internal__V1__StageTimings tm = MX__INTERNAL__V1__STAGE_TIMINGS__INIT;
    Mx__Internal__V1__Tensor ht = MX__INTERNAL__V1__TENSOR__INIT;
    if (!rc) {
        memset(entries, 0, n * sizeof *entries);
        rc = resolve_sequences(s, sl, rq, entries, err);
    }
    bool marked = !rc && !(rc = mark_busy(s, rq, err));
    bool saved = false;
    if (!rc) {
        double now = mx_now_ms();
        for (size_t i = 0; i < n; i++)
            entries[i]->last_used_ms = now;
        saved = !(rc = save_step(s, entries, n, call, err));
    }
    int start = 0;
    for (size_t i = 0; i < n && !rc; i++) {
        const SequenceInput *q = rq->sequences[i];
        seqs[i] = entries[i]->seq;
        spans[i] = (mx_span){start, (int)q->num_tokens};
        if (s->first)
            for (uint32_t j = 0; j < q->num_tokens; j++)
                ids[start + (int)j] = (int32_t)q->token_ids[j];
        start += (int)q->num_tokens;
    }
    for (int i = 0; i < (s->overlap_halves ? 2 : 1) && !rc; i++) /* (grows only past max_step_tokens) */
        rc = mx_workspace_reserve(s->m, sl->ws[i], (int)n_tokens, (int)n, err);
    /* On the CPU the request's own rows (our unpacked copy) are the hidden states: no copy in */
    bool in_place = !rc && !s->first && s->be->device == MX_DEVICE_CPU && s->be->act_dtype == MX_DTYPE_F32 &&
                    ((uintptr_t)rq->hidden->data.data & 63) == 0;
    if (in_place)
        h = mx_tensor_2d(rq->hidden->data.data, MX_DTYPE_F32, MX_DEVICE_CPU, (int64_t)n_tokens, hidden);
    else if (!rc)
        h = mx_workspace_hidden(sl->ws[0], (int)n_tokens);
    if (!rc && !in_place) {
        if (s->first) {
            rc = mx_model_embed(s->m, ids, (int)n_tokens, &h, err);
        } else if (((uintptr_t)rq->hidden->data.data & 3) == 0) {
            rc = s->be->from_host_f32(s->be, &h, (const float *)rq->hidden->data.data, err);
        } else if (!(host = malloc(rq->hidden->data.len))) {
            rc = mx_fail(err, MX_ENOMEM, "out of memory");
        } else {
            memcpy(host, rq->hidden->data.data, rq->hidden->data.len);
            rc = s->be->from_host_f32(s->be, &h, host, err);
        }
    }
    timed_moe tmoe = {{0}, 0, s};
    local_moe_ctx lc = {s->m, sl->ws[0]};
    if (s->router)
        tmoe.inner = mx_router_dispatcher_executor(sl->disp[0]);
    else
        tmoe.inner = (mx_moe_executor){local_moe, &lc};
    mx_moe_executor moe = {timed_moe_run, &tmoe};
    mx_batch b = {(int)n, seqs, spans, (int)n_tokens};
    double t_layers = mx_now_ms();
    if (!rc && (rc = run_layers(s, sl, &b, &h, &moe, &tmoe, err))) {
        kv_name_failure(s, err);
        /* the batch was checked above: a complaint about input from inside the layers is
         * ours (INTERNAL), not the caller's (INVALID_ARGUMENT / NOT_FOUND) */
        if (err->code == MX_EINVAL || err->code == MX_EFORMAT || err->code == MX_ENOTFOUND ||
            err->code == MX_ERANGE)
            rc = err->code = MX_EINTERNAL;
        else if (err->code == MX_ECANCELLED) /* a peer gave up on the call: worth a retry */
            rc = err->code = MX_EUNAVAILABLE;
    }
    if (!rc)
        rc = s->be->sync(s->be, err);
    /* with overlap the lock was let go: another batch may have added sequences (the table
     * moves its entries), so they are looked up again */
    for (size_t i = 0; i < n && !rc && s->overlap; i++)
        if (!(entries[i] = seq_table_find(&s->seqs, rq->sequences[i]->sequence_id)))
            rc = mx_fail(err, MX_EINTERNAL, "sequence %llu vanished during the step",
                         (unsigned long long)rq->sequences[i]->sequence_id);
    double t_head = mx_now_ms();
    if (!rc) {
        mx_batch_advance(&b);
        if (s->last) {
            /* The tokens fed are the "seen" tokens of the repetition penalty. */
            for (size_t i = 0; i < n && !rc; i++)
                rc = seq_entry_append_history(entries[i], rq->sequences[i]->token_ids,
                                              rq->sequences[i]->n_token_ids, err);
            if (!rc)
                rc = sample_batch(s, sl, rq, entries, spans, &h, &resp, err);
        } else {
            free(host);
            host = NULL;
            /* host f32 already (the CPU): packed from where it is, no copy out */
            if (s->be->device != MX_DEVICE_CPU || s->be->act_dtype != MX_DTYPE_F32) {
                if (!(host = malloc(n_tokens * (size_t)hidden * sizeof *host)))
                    rc = mx_fail(err, MX_ENOMEM, "out of memory for %zu hidden rows", n_tokens);
                if (!rc)
                    rc = s->be->to_host_f32(s->be, host, &h, err);
            }
            ht.dtype = MX__INTERNAL__V1__DTYPE__DTYPE_F32;
            ht.rows = (uint32_t)n_tokens;
            ht.cols = (uint32_t)hidden;
            ht.data.data = host ? (uint8_t *)host : (uint8_t *)h.data;
            ht.data.len = n_tokens * (size_t)hidden * sizeof *host;
            resp.hidden = &ht;
        }
    }
    if (!rc) {
        double t_end = mx_now_ms();
        tm.experts_ms = tmoe.ms;
        tm.attention_ms = (t_head - t_layers) - tmoe.ms;
        tm.sampling_ms = s->last ? t_end - t_head : 0;
        tm.total_ms = t_end - t_start;
        *mine = tm;
        resp.timings = &tm;
        resp.batch_id = rq->batch_id;
        resp.stages_run = 1;
        resp.n_kv_refused_sequence_ids = kvf->n_refused;
        resp.kv_refused_sequence_ids = kvf->refused;
        resp.kv_refused_message = kvf->msg;
        if (fwd) {
            RunBatchRequest next = *rq;  /* shallow: same sequences, our hidden states */
            next.hidden = &ht;
            next.forward = true;
            rc = pack_out(call, &next.base, out, err);
        } else {
            rc = pack_out(call, &resp.base, out, err);
        }
    }
    if (rc && saved)
        rollback_step(s, undo);
    if (!rc && saved)
        for (size_t i = 0; i < n; i++)
            undo->len_after[i] = entries[i]->seq->length;
    free_sampled(&resp);
    free(host);
    if (marked)
        unmark_busy(s, rq);
    return rc;
}

/* Under lock: takes a free slot (waits while every slot holds a batch), runs the batch in it. */
static int run_locked(stage *s, const RunBatchRequest *rq, bool fwd, mx_rpc_payload *out, StageTimings *mine,
                      kv_filter *kvf, call_ctx *call, mx_error *err)
{
    int k = -1;
    for (;;) {
        for (int i = 0; i < s->n_slots && k < 0; i++)
            if (!s->slots[i].taken)
                k = i;
        if (k >= 0)
            break;
        pthread_cond_wait(&s->slot_cv, &s->lock);
    }
    s->slots[k].taken = true;
    int rc = run_slot(s, &s->slots[k], rq, fwd, out, mine, kvf, call, err);
    s->slots[k].taken = false;
    pthread_cond_signal(&s->slot_cv);
    return rc;
}

/* Once per process: the next stage must be stage index + 1 of the same pipeline, with the same
 * hidden size; a miswired `next` is reported instead of computing garbage. */
static int check_next(stage *s, int64_t timeout_ms, mx_error *err)
{
    pthread_mutex_lock(&s->stats_mu);
    bool done = s->next_checked;
    pthread_mutex_unlock(&s->stats_mu);
    if (done)
        return 0;
    Mx__Internal__V1__StageInfoRequest rq = MX__INTERNAL__V1__STAGE_INFO_REQUEST__INIT;
    mx_rpc_payload p;
    MX_TRY(mx_rpc_pb_pack(&rq.base, &p, err));
    mx_rpc_result res = {0};
    char what[400];
    snprintf(what, sizeof what, "stage %d: next stage %s Info", s->index, s->next_addr);
    int rc = mx_rpc_unary(s->next, INFO, p, timeout_ms, &res);
    ProtobufCMessage *m = NULL;
    if (rc)
        mx_rpc_status_to_error(&res.status, what, err);
    else
        rc = mx_rpc_pb_unpack(&mx__internal__v1__stage_info_response__descriptor, res.response.data,
                              res.response.len, &m, err);
    mx_rpc_result_free(&res);
    if (rc)
        return rc;
    const Mx__Internal__V1__StageInfoResponse *info = (const Mx__Internal__V1__StageInfoResponse *)m;
    if (info->stage_index != (uint32_t)s->index + 1 || info->num_stages != (uint32_t)s->count ||
        info->hidden_size != (uint32_t)s->cfg.hidden_size)
        rc = mx_fail(err, MX_EINVAL,
                     "stage %d: stage.next %s is stage %u of %u with hidden size %u, expected stage %d of %d with %d",
                     s->index, s->next_addr, info->stage_index, info->num_stages, info->hidden_size, s->index + 1,
                     s->count, s->cfg.hidden_size);
    protobuf_c_message_free_unpacked(m, NULL);
    if (!rc) {
        pthread_mutex_lock(&s->stats_mu);
        s->next_checked = true;
        pthread_mutex_unlock(&s->stats_mu);
    }
    return rc;
}

/* Sends the packed request to the next stage and turns its answer into ours: stages_run one
 * more, our attention/expert time added. Errors name this stage and the next. */
static int forward(stage *s, call_ctx *call, mx_rpc_payload next_rq, int64_t timeout_ms, const StageTimings *mine,
                   double t_start, const kv_filter *kvf, mx_rpc_payload *out, mx_error *err)
{
    int rc = check_next(s, timeout_ms, err);
    if (rc) {
        if (next_rq.release)
            next_rq.release(next_rq.release_ctx);
        return rc;
    }
    /* the call's own call set: one completion queue, kept; the answer is read in place and
     * unpacked into the call's arena */
    if (!call->fwd) {
        if ((rc = mx_rpc_callset_create(1, &call->fwd, err))) {
            if (next_rq.release)
                next_rq.release(next_rq.release_ctx);
            return rc;
        }
        mx_rpc_callset_borrow_responses(call->fwd);
    }
    mx_rpc_result res = {0};
    ProtobufCMessage *m = NULL;
    char what[400];
    snprintf(what, sizeof what, "stage %d: next stage %s RunBatch", s->index, s->next_addr);
    rc = mx_rpc_callset_start(call->fwd, s->next, RUN_BATCH, next_rq, timeout_ms, NULL, err);
    if (rc < 0)
        return rc;
    int id;
    void *user;
    if (!mx_rpc_callset_next(call->fwd, -1, &id, &user, &res))
        return mx_fail(err, MX_EINTERNAL, "%s: no answer came back", what);
    if ((rc = mx_rpc_status_to_error(&res.status, what, err)) == 0) {
        m = protobuf_c_message_unpack(&mx__internal__v1__run_batch_response__descriptor, &call->pa, res.response.len,
                                      res.response.data);
        if (!m)
            rc = mx_fail(err, MX_EINVAL, "stage %d: next stage %s answered: malformed %s message (%zu bytes)", s->index,
                         s->next_addr, mx__internal__v1__run_batch_response__descriptor.name, res.response.len);
    }
    mx_rpc_result_free(&res);
    if (rc)
        return rc;
    RunBatchResponse *resp = (RunBatchResponse *)m;
    resp->stages_run = (resp->stages_run ? resp->stages_run : 1) + 1;
    StageTimings tm = MX__INTERNAL__V1__STAGE_TIMINGS__INIT;
    if (resp->timings)
        tm = *resp->timings;
    tm.attention_ms += mine->attention_ms;
    tm.experts_ms += mine->experts_ms;
    tm.total_ms = mx_now_ms() - t_start;
    StageTimings *theirs = resp->timings;
    resp->timings = &tm;
    /* sequences we refused go back with those refused further down */
    uint64_t *their_ids = resp->kv_refused_sequence_ids, *ids = NULL;
    size_t their_n = resp->n_kv_refused_sequence_ids;
    char *their_msg = resp->kv_refused_message, msg[2 * MX_ERROR_MSG_MAX + 2];
    if (kvf->n_refused) {
        if (!(ids = malloc((kvf->n_refused + their_n) * sizeof *ids))) {
            protobuf_c_message_free_unpacked(m, &call->pa);
            return mx_fail(err, MX_ENOMEM, "out of memory");
        }
        memcpy(ids, kvf->refused, kvf->n_refused * sizeof *ids);
        if (their_n)
            memcpy(ids + kvf->n_refused, their_ids, their_n * sizeof *ids);
        snprintf(msg, sizeof msg, "%s%s%s", kvf->msg, their_n ? "; " : "", their_n ? their_msg : "");
        resp->kv_refused_sequence_ids = ids;
        resp->n_kv_refused_sequence_ids = kvf->n_refused + their_n;
        resp->kv_refused_message = msg;
    }
    rc = pack_out(call, &resp->base, out, err);
    resp->timings = theirs;
    resp->kv_refused_sequence_ids = their_ids;
    resp->n_kv_refused_sequence_ids = their_n;
    resp->kv_refused_message = their_msg;
    free(ids);
    protobuf_c_message_free_unpacked(m, &call->pa);
    return rc;
}

static void count_in_flight(stage *s, int delta, bool ok)
{
    pthread_mutex_lock(&s->stats_mu);
    s->in_flight += delta;
    if (s->in_flight > s->max_in_flight)
        s->max_in_flight = s->in_flight;
    if (ok)
        s->batches_run++;
    pthread_mutex_unlock(&s->stats_mu);
}

/* Metrics of a step just computed (s->lock held): its time and tokens, the live set and KV. */
static void note_step(stage *s, const RunBatchRequest *rq, bool ok, double seconds)
{
    uint64_t tokens = 0;
    for (size_t i = 0; i < rq->n_sequences; i++)
        tokens += rq->sequences[i]->num_tokens;
    mx_kv_usage u = {0};
    s->be->kv_usage(s->be, &u);
    stage_metrics_step(s->metrics, ok, seconds, tokens, s->seqs.count, u.used_bytes, u.budget_bytes);
}

mx_metrics *stage_metrics_reg(stage *s)
{
    return stage_metrics_registry(s->metrics);
}

int stage_run_batch(stage *s, const uint8_t *req, size_t len, int64_t timeout_ms, mx_rpc_payload *out,
                    mx_error *err)
{
    double t_start = mx_now_ms();
    call_ctx *call = call_take(s);
    if (!call)
        return mx_fail(err, MX_ENOMEM, "out of memory");
    /* into the call's arena: no allocation once it has grown to the largest request */
    ProtobufCMessage *msg = protobuf_c_message_unpack(&mx__internal__v1__run_batch_request__descriptor, &call->pa,
                                                      len, req);
    if (!msg) {
        call_give(s, call);
        return mx_fail(err, MX_EINVAL, "malformed %s message (%zu bytes)",
                       mx__internal__v1__run_batch_request__descriptor.name, len);
    }
    const RunBatchRequest *rq = (const RunBatchRequest *)msg;
    bool fwd = rq->forward && s->next;
    StageTimings mine = MX__INTERNAL__V1__STAGE_TIMINGS__INIT;
    mx_rpc_payload mid;
    kv_filter kvf;
    memset(&kvf, 0, sizeof kvf);
    pthread_mutex_lock(&s->lock);
    /* counted from the start of our compute: two at once means one was past it (downstream) */
    count_in_flight(s, 1, false);
    expire_leases(s);
    double t_compute = mx_now_ms();
    int rc = run_locked(s, rq, fwd, fwd ? &mid : out, &mine, &kvf, call, err);
    note_step(s, rq, rc == 0, (mx_now_ms() - t_compute) / 1e3);
    pthread_mutex_unlock(&s->lock);
    protobuf_c_message_free_unpacked(msg, &call->pa);
    if (!rc && fwd && (rc = forward(s, call, mid, timeout_ms, &mine, t_start, &kvf, out, err))) {
        pthread_mutex_lock(&s->lock);
        rollback_step(s, &call->undo);
        pthread_mutex_unlock(&s->lock);
    }
    call_give(s, call);
    kv_filter_free(&kvf);
    count_in_flight(s, -1, rc == 0);
    return rc;
}

void stage_drain_wait(stage *s, double deadline_ms)
{
    pthread_mutex_lock(&s->lock);
    s->draining = true;
    pthread_mutex_unlock(&s->lock);
    /* A bounded poll: sequences end by Release, by a failed step, or by their lease (so a
     * gateway that vanished holds the drain up to the lease at most); 20 ms is far below a
     * decode step's round trip and costs nothing while the process is stopping. */
    for (;;) {
        pthread_mutex_lock(&s->lock);
        expire_leases(s);
        int live = s->seqs.count;
        pthread_mutex_unlock(&s->lock);
        double now = mx_now_ms();
        if (live == 0 || now >= deadline_ms)
            return;
        double wait = deadline_ms - now < 20 ? deadline_ms - now : 20;
        struct timespec ts = {0, (long)(wait * 1e6)};
        nanosleep(&ts, NULL);
    }
}

int stage_release(stage *s, const uint8_t *req, size_t len, mx_rpc_payload *out, mx_error *err)
{
    ProtobufCMessage *msg;
    MX_TRY(mx_rpc_pb_unpack(&mx__internal__v1__release_request__descriptor, req, len, &msg, err));
    const Mx__Internal__V1__ReleaseRequest *rq = (const Mx__Internal__V1__ReleaseRequest *)msg;
    Mx__Internal__V1__ReleaseResponse resp = MX__INTERNAL__V1__RELEASE_RESPONSE__INIT;
    pthread_mutex_lock(&s->lock);
    for (size_t i = 0; i < rq->n_sequence_ids; i++) {
        uint64_t id = rq->sequence_ids[i];
        if (!is_busy(s, id)) {
            resp.released_sequences += (uint32_t)seq_table_remove(&s->seqs, id);
            continue;
        }
        /* in a batch that is waiting for its experts (overlap): freed when it leaves */
        bool known = false;
        for (int j = 0; j < s->n_deferred; j++)
            known |= s->deferred[j] == id;
        if (!known && s->n_deferred < s->max_sequences)
            s->deferred[s->n_deferred++] = id;
        resp.released_sequences++;
    }
    mx_kv_usage u = {0};
    s->be->kv_usage(s->be, &u);
    stage_metrics_live(s->metrics, s->seqs.count, u.used_bytes);
    pthread_mutex_unlock(&s->lock);
    protobuf_c_message_free_unpacked(msg, NULL);
    return mx_rpc_pb_pack(&resp.base, out, err);
}

static void *watch_main(void *arg)
{
    stage *s = arg;
    pthread_mutex_lock(&s->watch_mu);
    while (!s->watch_stop) {
        pthread_mutex_unlock(&s->watch_mu);
        int live = mx_router_shards_live(s->router, s->layer_begin, s->layer_end, NULL);
        mx_error ignored = {0};
        /* set on every round, not on change only: the service skeleton sets SERVING once at
         * start, after this thread may have said NOT_SERVING */
        mx_rpc_health_set(s->watch_srv, MX_STAGE_SERVICE, live ? MX_RPC_SERVING : MX_RPC_NOT_SERVING, &ignored);
        pthread_mutex_lock(&s->watch_mu);
        if (s->watch_stop)
            break;
        struct timespec until = mx_wall_after_ms(250);
        pthread_cond_timedwait(&s->watch_cv, &s->watch_mu, &until);
    }
    pthread_mutex_unlock(&s->watch_mu);
    return NULL;
}

int stage_watch_health(stage *s, mx_rpc_server *srv, mx_error *err)
{
    if (!s->router || s->watching)
        return 0;
    s->watch_srv = srv;
    s->watch_stop = false;
    if (pthread_create(&s->watch_thread, NULL, watch_main, s))
        return mx_fail(err, MX_ENOMEM, "stage: cannot start the health watcher thread");
    s->watching = true;
    return 0;
}

void stage_stop_health(stage *s)
{
    if (!s->watching)
        return;
    pthread_mutex_lock(&s->watch_mu);
    s->watch_stop = true;
    pthread_cond_signal(&s->watch_cv);
    pthread_mutex_unlock(&s->watch_mu);
    pthread_join(s->watch_thread, NULL);
    s->watching = false;
}

void stage_test_fail_expert_once(stage *s, int layer)
{
    pthread_mutex_lock(&s->lock);
    s->fail_expert_once = true;
    s->fail_expert_layer = layer;
    pthread_mutex_unlock(&s->lock);
}

mx_router *stage_router(stage *s)
{
    return s->router;
}

int stage_info(stage *s, const uint8_t *req, size_t len, mx_rpc_payload *out, mx_error *err)
{
    ProtobufCMessage *msg;
    MX_TRY(mx_rpc_pb_unpack(&mx__internal__v1__stage_info_request__descriptor, req, len, &msg, err));
    protobuf_c_message_free_unpacked(msg, NULL);
    Mx__Internal__V1__StageInfoResponse r = MX__INTERNAL__V1__STAGE_INFO_RESPONSE__INIT;
    pthread_mutex_lock(&s->lock);
    expire_leases(s);
    r.stage_index = (uint32_t)s->index;
    r.num_stages = (uint32_t)s->count;
    r.first_layer = (uint32_t)s->layer_begin;
    r.end_layer = (uint32_t)s->layer_end;
    r.is_first = s->first;
    r.is_last = s->last;
    r.hidden_size = (uint32_t)s->cfg.hidden_size;
    r.live_sequences = (uint32_t)s->seqs.count;
    r.max_sequences = (uint32_t)s->seqs.capacity;
    r.weight_bytes = s->w->bytes_mapped;
    r.state_bytes = seq_table_state_bytes(&s->seqs);
    r.backend = (char *)s->be->name;
    mx_kv_usage u;
    s->be->kv_usage(s->be, &u);
    r.kv_dtype = (char *)mx_kv_dtype_name(u.dtype);
    r.kv_budget_bytes = u.budget_bytes;
    r.kv_used_bytes = u.used_bytes;
    r.softmax_layers = (uint32_t)s->softmax_layers;
    r.kv_page_tokens = MX_KV_PAGE_TOKENS;
    r.atomic_steps = true;
    r.sequence_lease_ms = (uint64_t)s->lease_ms;
    r.kv_bytes_per_token = mx_kv_page_bytes(u.dtype, s->cfg.num_key_value_heads, s->cfg.head_dim) *
                           (uint64_t)s->softmax_layers / MX_KV_PAGE_TOKENS;
    /* no budget or no softmax layer: no limit (INT64_MAX, as mx_kv_tokens_fit says) */
    r.kv_tokens_fit = u.budget_bytes == 0 ? (uint64_t)INT64_MAX
                      : (uint64_t)mx_kv_tokens_fit(u.dtype, s->cfg.num_key_value_heads, s->cfg.head_dim,
                                                   s->softmax_layers, u.budget_bytes);
    pthread_mutex_unlock(&s->lock);
    r.next = s->next_addr;
    pthread_mutex_lock(&s->stats_mu);
    r.batches_in_flight = (uint32_t)s->in_flight;
    r.max_batches_in_flight = (uint32_t)s->max_in_flight;
    r.batches_run = s->batches_run;
    pthread_mutex_unlock(&s->stats_mu);
    return mx_rpc_pb_pack(&r.base, out, err);
}
