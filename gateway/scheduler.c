/* scheduler.c - the step loop behind scheduler.h. One step = one RunBatch per stage, in
 * order, with stage i's hidden states relayed to stage i+1; the last stage answers sampled
 * tokens. Prompt chunks share the per-step token budget (max_step_tokens) so that long
 * prompts do not stall the decoding requests; decode tokens always run. */
#include "scheduler.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "core/rpc/client.h"
#include "core/rpc/pb.h"
#include "mx/internal/v1/attention_stage.pb-c.h"

#define RUN_BATCH "/mx.internal.v1.AttentionStage/RunBatch"
#define RELEASE "/mx.internal.v1.AttentionStage/Release"

struct gw_scheduler {
    gw_config cfg;
    mx_rpc_channel *stages[GW_MAX_STAGES];
    pthread_t thread;
    bool thread_started;
    pthread_mutex_t mu;       /* guards queue, n_queued, stop, next_id */
    pthread_cond_t cv;
    gw_request **queue;       /* [max_queued], FIFO in [0, n_queued) */
    int n_queued;
    bool stop;
    uint64_t next_id, next_batch;
    gw_request **running;     /* [max_batch_sequences], thread only */
    int n_running;
};

typedef Mx__Internal__V1__SequenceInput SequenceInput;

/* Frees the state of n sequences on every stage. Failures are only logged: a stage that
 * cannot be reached has lost the state anyway, and the sequence id is never reused. */
static void release_on_stages(gw_scheduler *s, const uint64_t *ids, int n)
{
    if (n == 0)
        return;
    Mx__Internal__V1__ReleaseRequest rq = MX__INTERNAL__V1__RELEASE_REQUEST__INIT;
    rq.n_sequence_ids = (size_t)n;
    rq.sequence_ids = (uint64_t *)ids;
    for (int i = 0; i < s->cfg.n_stages; i++) {
        mx_error err = {0};
        mx_rpc_payload p;
        if (mx_rpc_pb_pack(&rq.base, &p, &err)) {
            fprintf(stderr, "gateway: release: %s\n", err.msg);
            return;
        }
        mx_rpc_result res = {0};
        if (mx_rpc_unary(s->stages[i], RELEASE, p, 5000, &res)) {
            mx_rpc_status_to_error(&res.status, "release", &err);
            fprintf(stderr, "gateway: stage %d (%s): %s\n", i, s->cfg.stages[i], err.msg);
        }
        mx_rpc_result_free(&res);
    }
}

/* Removes running requests that are done (or must end now) and releases their state. */
static void retire(gw_scheduler *s, double now)
{
    uint64_t *ids = malloc((size_t)(s->n_running ? s->n_running : 1) * sizeof *ids);
    int n_ids = 0, keep = 0;
    for (int i = 0; i < s->n_running; i++) {
        gw_request *r = s->running[i];
        pthread_mutex_lock(&r->mu);
        bool cancelled = r->cancelled, done = r->done;
        pthread_mutex_unlock(&r->mu);
        if (!done && (cancelled || (r->deadline_ms > 0 && now >= r->deadline_ms))) {
            gw_request_finish(r, MX__V1__FINISH_REASON__FINISH_REASON_CANCELLED, MX_ECANCELLED,
                              cancelled ? "cancelled by the client" : "deadline exceeded", now);
            done = true;
        }
        if (!done) {
            s->running[keep++] = r;
            continue;
        }
        if (r->on_stages && ids)
            ids[n_ids++] = r->seq_id;
        gw_request_unref(r);
    }
    s->n_running = keep;
    if (ids)
        release_on_stages(s, ids, n_ids);
    free(ids);
}

/* Moves queued requests into the running set while there is room. Returns false if the
 * scheduler is stopping. Blocks while there is nothing to do. */
static bool admit(gw_scheduler *s)
{
    pthread_mutex_lock(&s->mu);
    while (!s->stop && s->n_running == 0 && s->n_queued == 0)
        pthread_cond_wait(&s->cv, &s->mu);
    int take = s->cfg.max_batch_sequences - s->n_running;
    if (take > s->n_queued)
        take = s->n_queued;
    double now = gw_now_ms();
    for (int i = 0; i < take; i++) {
        s->running[s->n_running++] = s->queue[i];
        s->queue[i]->t_scheduled_ms = now;
    }
    memmove(s->queue, s->queue + take, (size_t)(s->n_queued - take) * sizeof *s->queue);
    s->n_queued -= take;
    bool go = !s->stop;
    pthread_mutex_unlock(&s->mu);
    return go;
}

/* One step over the running requests. */
static void step(gw_scheduler *s)
{
    int n = s->n_running, budget = s->cfg.max_step_tokens, n_in = 0;
    SequenceInput *inputs = calloc((size_t)n, sizeof *inputs);
    SequenceInput **inptrs = calloc((size_t)n, sizeof *inptrs);
    Mx__Internal__V1__StageSampling *samp = calloc((size_t)n, sizeof *samp);
    gw_request **members = calloc((size_t)n, sizeof *members);
    uint64_t *ids = calloc((size_t)n, sizeof *ids);
    mx_error err = {0};
    int rc = 0;
    if (!inputs || !inptrs || !samp || !members || !ids)
        rc = mx_fail(&err, MX_ENOMEM, "out of memory building a step");
    for (int i = 0; i < n && !rc; i++) {
        gw_request *r = s->running[i];
        SequenceInput *q = &inputs[n_in];
        mx__internal__v1__sequence_input__init(q);
        Mx__Internal__V1__StageSampling *sp = &samp[n_in];
        mx__internal__v1__stage_sampling__init(sp);
        q->sequence_id = r->seq_id;
        if (r->prefilled < r->n_prompt) {
            if (budget <= 0)
                continue;
            int chunk = r->n_prompt - r->prefilled;
            if (chunk > budget)
                chunk = budget;
            budget -= chunk;
            q->start_position = (uint32_t)r->prefilled;
            q->token_ids = r->prompt + r->prefilled;
            q->n_token_ids = (size_t)chunk;
            q->num_tokens = (uint32_t)chunk;
            q->sample = r->prefilled + chunk == r->n_prompt;
        } else {
            q->start_position = (uint32_t)(r->n_prompt + r->n_out - 1);
            q->token_ids = &r->out_ids[r->n_out - 1];
            q->n_token_ids = 1;
            q->num_tokens = 1;
            q->sample = true;
            budget--;
        }
        sp->temperature = r->sampling.temperature;
        sp->top_k = r->sampling.top_k;
        sp->top_p = r->sampling.top_p;
        sp->min_p = r->sampling.min_p;
        sp->repetition_penalty = r->sampling.repetition_penalty;
        sp->seed = r->sampling.seed;
        sp->step = (uint32_t)r->n_out;
        sp->top_logprobs = r->sampling.top_n;
        sp->want_logprobs = r->sampling.want_logprobs;
        q->sampling = sp;
        inptrs[n_in] = q;
        members[n_in++] = r;
    }
    Mx__Internal__V1__RunBatchRequest rq = MX__INTERNAL__V1__RUN_BATCH_REQUEST__INIT;
    rq.batch_id = ++s->next_batch;
    rq.sequences = inptrs;
    rq.n_sequences = (size_t)n_in;
    Mx__Internal__V1__RunBatchResponse *resp = NULL;
    for (int i = 0; i < n_in; i++)
        members[i]->on_stages = true;
    for (int st = 0; st < s->cfg.n_stages && !rc && n_in > 0; st++) {
        rq.hidden = resp ? resp->hidden : NULL;
        mx_rpc_payload p;
        rc = mx_rpc_pb_pack(&rq.base, &p, &err);
        if (resp)
            protobuf_c_message_free_unpacked(&resp->base, NULL);
        resp = NULL;
        if (rc)
            break;
        mx_rpc_result res = {0};
        rc = mx_rpc_unary(s->stages[st], RUN_BATCH, p, s->cfg.stage_timeout_ms, &res);
        if (rc) {
            char what[300];
            snprintf(what, sizeof what, "stage %d (%s) RunBatch", st, s->cfg.stages[st]);
            mx_rpc_status_to_error(&res.status, what, &err);
        } else {
            rc = mx_rpc_pb_unpack(&mx__internal__v1__run_batch_response__descriptor, res.response.data,
                                  res.response.len, (ProtobufCMessage **)&resp, &err);
        }
        mx_rpc_result_free(&res);
        if (!rc && st < s->cfg.n_stages - 1 && !resp->hidden)
            rc = mx_fail(&err, MX_EINTERNAL, "stage %d (%s) answered no hidden states", st, s->cfg.stages[st]);
    }
    double now = gw_now_ms();
    for (int i = 0; i < n_in && !rc; i++) {
        gw_request *r = members[i];
        SequenceInput *q = inptrs[i];
        if (!q->sample) {
            r->prefilled += (int)q->num_tokens;
            continue;
        }
        const Mx__Internal__V1__SampledToken *t = NULL;
        for (size_t j = 0; j < resp->n_sampled && !t; j++)
            if (resp->sampled[j]->sequence_id == r->seq_id)
                t = resp->sampled[j];
        if (!t) {
            gw_request_finish(r, MX__V1__FINISH_REASON__FINISH_REASON_ERROR, MX_EINTERNAL,
                              "the last stage returned no token for this sequence", now);
            continue;
        }
        if (r->prefilled < r->n_prompt)
            r->prefilled = r->n_prompt;
        if (r->n_out == 0)
            r->t_first_ms = now;
        int n_top = (int)(t->n_top_token_ids < t->n_top_logprobs ? t->n_top_token_ids : t->n_top_logprobs);
        gw_request_push(r, t->token_id, t->logprob, t->top_token_ids, t->top_logprobs, n_top, now);
    }
    if (rc) {
        fprintf(stderr, "gateway: step %llu failed: %s\n", (unsigned long long)rq.batch_id, err.msg);
        for (int i = 0; i < n_in; i++)
            gw_request_finish(members[i], MX__V1__FINISH_REASON__FINISH_REASON_ERROR, err.code, err.msg, now);
    }
    if (resp)
        protobuf_c_message_free_unpacked(&resp->base, NULL);
    free(inputs);
    free(inptrs);
    free(samp);
    free(members);
    free(ids);
}

static void *loop(void *arg)
{
    gw_scheduler *s = arg;
    while (admit(s)) {
        retire(s, gw_now_ms());
        if (s->n_running > 0)
            step(s);
        retire(s, gw_now_ms());
    }
    return NULL;
}

int gw_scheduler_create(const gw_config *cfg, gw_scheduler **out, mx_error *err)
{
    *out = NULL;
    gw_scheduler *s = calloc(1, sizeof *s);
    if (!s)
        return mx_fail(err, MX_ENOMEM, "out of memory");
    s->cfg = *cfg;
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->cv, NULL);
    s->next_id = ((uint64_t)time(NULL) << 24) ^ ((uint64_t)getpid() << 8);
    s->queue = calloc((size_t)cfg->max_queued, sizeof *s->queue);
    s->running = calloc((size_t)cfg->max_batch_sequences, sizeof *s->running);
    int rc = (!s->queue || !s->running) ? mx_fail(err, MX_ENOMEM, "out of memory") : 0;
    mx_rpc_channel_options co = {.max_message_bytes = 1 << 30};
    for (int i = 0; i < cfg->n_stages && !rc; i++)
        rc = mx_rpc_channel_create(cfg->stages[i], &co, &s->stages[i], err);
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
    double now = gw_now_ms();
    for (int i = 0; i < s->n_queued; i++) {
        gw_request_finish(s->queue[i], MX__V1__FINISH_REASON__FINISH_REASON_ERROR, MX_EUNAVAILABLE,
                          "the gateway is shutting down", now);
        gw_request_unref(s->queue[i]);
    }
    for (int i = 0; i < s->n_running; i++)
        gw_request_finish(s->running[i], MX__V1__FINISH_REASON__FINISH_REASON_ERROR, MX_EUNAVAILABLE,
                          "the gateway is shutting down", now);
    if (s->thread_started)
        retire(s, now);
    for (int i = 0; i < s->cfg.n_stages; i++)
        mx_rpc_channel_destroy(s->stages[i]);
    pthread_mutex_destroy(&s->mu);
    pthread_cond_destroy(&s->cv);
    free(s->queue);
    free(s->running);
    free(s);
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
    r->seq_id = ++s->next_id;
    gw_request_ref(r);
    s->queue[s->n_queued++] = r;
    pthread_cond_signal(&s->cv);
    pthread_mutex_unlock(&s->mu);
    return 0;
}
