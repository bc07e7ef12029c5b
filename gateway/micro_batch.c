/* micro_batch.c - building, running and delivering one micro-batch (micro_batch.h). The
 * run is one call: stage 0 answers for the whole chain (each stage forwards to its `next`),
 * so hidden states only ever travel forward. */
#include "micro_batch.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/clock.h"
#include "core/protocol.h"
#include "core/rpc/pb.h"

#define RETRY_INTERVAL_MS 250


typedef Mx__Internal__V1__SequenceInput SequenceInput;

int gw_micro_batch_init(gw_micro_batch *b, int cap, mx_error *err)
{
    memset(b, 0, sizeof *b);
    b->cap = cap;
    b->members = calloc((size_t)cap, sizeof *b->members);
    b->inputs = calloc((size_t)cap, sizeof *b->inputs);
    b->inptrs = calloc((size_t)cap, sizeof *b->inptrs);
    b->samp = calloc((size_t)cap, sizeof *b->samp);
    b->refused = calloc((size_t)cap, sizeof *b->refused);
    if (!b->members || !b->inputs || !b->inptrs || !b->samp || !b->refused) {
        gw_micro_batch_free(b);
        return mx_fail(err, MX_ENOMEM, "out of memory for a micro-batch of %d sequences", cap);
    }
    return 0;
}

void gw_micro_batch_free(gw_micro_batch *b)
{
    for (int i = 0; i < b->n; i++)
        gw_request_unref(b->members[i]);
    if (b->resp)
        protobuf_c_message_free_unpacked(&b->resp->base, NULL);
    free(b->members);
    free(b->inputs);
    free(b->inptrs);
    free(b->samp);
    free(b->refused);
    memset(b, 0, sizeof *b);
}

bool gw_micro_batch_add(gw_micro_batch *b, gw_request *r, int *budget)
{
    if (b->n >= b->cap)
        return false;
    SequenceInput *q = &b->inputs[b->n];
    mx__internal__v1__sequence_input__init(q);
    Mx__Internal__V1__StageSampling *sp = &b->samp[b->n];
    mx__internal__v1__stage_sampling__init(sp);
    q->sequence_id = r->seq_id;
    if (r->prefilled < r->n_prompt) {
        if (*budget <= 0)
            return false;
        int chunk = r->n_prompt - r->prefilled;
        if (chunk > *budget)
            chunk = *budget;
        *budget -= chunk;
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
        (*budget)--;
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
    b->inptrs[b->n] = q;
    b->members[b->n++] = r;
    gw_request_ref(r);
    r->in_flight = true;
    r->on_stages = true;
    return true;
}

static int by_prompt_left(const void *a, const void *b)
{
    const gw_request *x = *(gw_request *const *)a, *y = *(gw_request *const *)b;
    int lx = x->n_prompt - x->prefilled, ly = y->n_prompt - y->prefilled;
    return lx < ly ? -1 : lx > ly ? 1 : (x->ready_seq > y->ready_seq) - (x->ready_seq < y->ready_seq);
}

int64_t gw_attn_context_tokens(const mx_config *c)
{
    const double h = c->hidden_size, inner = mx_config_attn_width(c), kv = mx_config_kv_width(c);
    const double d = c->head_dim, heads = c->num_attention_heads;
    double per_token = 0;
    int softmax = 0;
    for (int l = 0; l < c->num_hidden_layers; l++) {
        if (c->attn_type[l] == MX_ATTN_LIGHTNING) {
            /* q, k, v, gate and out projections; the state update and read, d x d per head */
            per_token += 2 * 5 * inner * h + 4 * heads * d * d;
        } else {
            per_token += 2 * (2 * inner * h + 2 * kv * h);
            softmax++;
        }
        per_token += 2 * (double)c->num_local_experts * h +
                     2 * 3 * (double)c->num_experts_per_tok * c->intermediate_size * h;
    }
    /* one more key: q.k and p.v over every head of every softmax layer */
    double per_key = 4 * inner * softmax;
    return per_key > 0 ? (int64_t)(per_token / per_key + 0.5) : 0;
}

/* What one prompt token at position pos counts against prefill_cap (gw_step_limits). */
static double token_weight(const gw_step_limits *lim, int pos)
{
    if (lim->prefill_cap <= 0 || lim->attn_tokens <= 0)
        return 1.0;
    return 1.0 + (double)pos / (double)lim->attn_tokens;
}

void gw_micro_batch_fill(gw_micro_batch *b, gw_request **pick, int n, int target, const gw_step_limits *lim)
{
    const int max_step_tokens = lim->max_step_tokens, prefill_cap = lim->prefill_cap;
    int budget = max_step_tokens, n_prefill = 0;
    for (int i = 0; i < n; i++)
        n_prefill += pick[i]->prefilled < pick[i]->n_prompt;
    int decode_seats = n_prefill ? target - 1 : target, k = 0;
    for (int i = 0; i < n; i++) {
        gw_request *r = pick[i];
        if (r->prefilled < r->n_prompt)
            pick[k++] = r; /* prompts, still oldest first */
        else if (b->n < decode_seats)
            gw_micro_batch_add(b, r, &budget);
    }
    n_prefill = k < target - b->n ? k : target - b->n;
    if (n_prefill < 0)
        n_prefill = 0;
    int left = budget, floor = max_step_tokens / 8 > 0 ? max_step_tokens / 8 : 1;
    /* A step's time grows with its prompt work, and every decode in it (and, with stages
     * working through the pipeline's batches in turn, in the batches beside it) waits for
     * it: the cap bounds what a long prefill adds to the decodes' inter-token latency. The
     * work of a prompt token grows with its position (softmax attention reads every key
     * before it), hence the weights. */
    if (prefill_cap > 0 && left > prefill_cap)
        left = prefill_cap;
    if (prefill_cap > 0 && floor > prefill_cap)
        floor = prefill_cap;
    if (n_prefill > 0 && left < floor) {
        left = floor;
        n_prefill = 1;
    }
    qsort(pick, (size_t)n_prefill, sizeof *pick, by_prompt_left);
    for (int i = 0; i < n_prefill && left > 0; i++) {
        double w = token_weight(lim, pick[i]->prefilled);
        int share = left / (n_prefill - i), give = share > 0 ? share : 1;
        int tokens = (int)((double)give / w), part = tokens > 0 ? tokens : 1;
        int asked = part;
        if (gw_micro_batch_add(b, pick[i], &part)) {
            double used = (double)(asked - part) * w;
            left -= used >= (double)left ? left : (int)(used + 0.999);
        }
    }
}

static bool is_refused(const gw_micro_batch *b, uint64_t id)
{
    for (int i = 0; i < b->n_refused; i++)
        if (b->refused[i] == id)
            return true;
    return false;
}

/* Notes the sequences a stage's KV budget refused (the stages after it already left them out). */
static void take_refusals(gw_micro_batch *b, const Mx__Internal__V1__RunBatchResponse *resp)
{
    if (resp->n_kv_refused_sequence_ids == 0)
        return;
    for (size_t i = 0; i < resp->n_kv_refused_sequence_ids && b->n_refused < b->cap; i++)
        b->refused[b->n_refused++] = resp->kv_refused_sequence_ids[i];
    size_t used = strlen(b->refused_msg);
    snprintf(b->refused_msg + used, sizeof b->refused_msg - used, "%s%s", used ? "; " : "",
             resp->kv_refused_message);
}

void gw_micro_batch_run(gw_micro_batch *b, const gw_config *cfg, mx_rpc_channel *const *stages)
{
    Mx__Internal__V1__RunBatchRequest rq = MX__INTERNAL__V1__RUN_BATCH_REQUEST__INIT;
    rq.batch_id = b->batch_id;
    rq.sequences = b->inptrs;
    rq.n_sequences = (size_t)b->n;
    rq.forward = true;
    Mx__Internal__V1__RunBatchResponse *resp = NULL;
    mx_error *err = &b->err;
    mx_rpc_payload p;
    double t0 = mx_now_ms();
    int rc;
    b->retries = 0;
    for (;;) {
        rc = mx_rpc_pb_pack(&rq.base, &p, err);
        if (rc)
            break;
        mx_rpc_result res = {0};
        rc = mx_rpc_unary(stages[0], MX_STAGE_RUN_BATCH_METHOD, p, cfg->stage_timeout_ms, &res);
        if (rc) {
            char what[300];
            snprintf(what, sizeof what, "stage 0 (%s) RunBatch", cfg->stages[0]);
            mx_rpc_status_to_error(&res.status, what, err);
        } else {
            rc = mx_rpc_pb_unpack(&mx__internal__v1__run_batch_response__descriptor, res.response.data,
                                  res.response.len, (ProtobufCMessage **)&resp, err);
        }
        grpc_status_code code = res.status.code;
        mx_rpc_result_free(&res);
        /* Only UNAVAILABLE: the stage (or one behind it) could not do the step and, steps being
         * atomic, undid it. A DEADLINE_EXCEEDED step may still be running there. */
        if (!rc || code != GRPC_STATUS_UNAVAILABLE || !b->retry_atomic ||
            mx_now_ms() + RETRY_INTERVAL_MS - t0 > (double)b->retry_ms)
            break;
        struct timespec ts = {0, RETRY_INTERVAL_MS * 1000000L};
        nanosleep(&ts, NULL);
        b->retries++;
    }
    /* Every stage but the last has a `next` (stage_config.h), so stage 0 answers for the whole
     * chain; fewer stages means a stage was started without its `next`. */
    int ran = !rc && resp->stages_run ? (int)resp->stages_run : 1;
    if (!rc && ran != cfg->n_stages)
        rc = mx_fail(err, MX_EINTERNAL, "stage 0 (%s) ran the batch through %d of %d stages (check stage.next "
                     "against gateway.stages)", cfg->stages[0], ran, cfg->n_stages);
    if (!rc)
        take_refusals(b, resp);
    if (rc && resp) {
        protobuf_c_message_free_unpacked(&resp->base, NULL);
        resp = NULL;
    }
    b->rc = rc;
    b->resp = resp;
}

void gw_micro_batch_deliver(gw_micro_batch *b, double now, gw_request **woken, int *n_woken)
{
    const Mx__Internal__V1__RunBatchResponse *resp = b->resp;
    for (int i = 0; i < b->n; i++) {
        gw_request *r = b->members[i];
        const SequenceInput *q = b->inptrs[i];
        r->in_flight = false;
        if (b->rc) {
            gw_request_finish(r, MX__V1__FINISH_REASON__FINISH_REASON_ERROR, b->err.code, b->err.msg, now);
            continue;
        }
        if (is_refused(b, r->seq_id)) {
            char msg[MX_ERROR_MSG_MAX];
            /* the stage says why (its KV budget is spent, or it is draining) */
            snprintf(msg, sizeof msg, "a stage refused the sequence: %.460s", b->refused_msg);
            gw_request_finish(r, MX__V1__FINISH_REASON__FINISH_REASON_ERROR, MX_ENOMEM, msg, now);
            continue;
        }
        if (!q->sample) {
            r->prefilled += (int)q->num_tokens;
            continue;
        }
        const Mx__Internal__V1__SampledToken *t = NULL;
        for (size_t j = 0; resp && j < resp->n_sampled && !t; j++)
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
        woken[(*n_woken)++] = r;
        b->members[i] = NULL; /* its reference goes with it */
    }
    for (int i = 0; i < b->n; i++)
        if (b->members[i])
            gw_request_unref(b->members[i]);
    if (b->resp)
        protobuf_c_message_free_unpacked(&b->resp->base, NULL);
    b->resp = NULL;
    b->n = 0;
    b->rc = 0;
    b->n_refused = 0;
    b->refused_msg[0] = '\0';
    memset(&b->err, 0, sizeof b->err);
}
