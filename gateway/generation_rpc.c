/* generation_rpc.c - the gateway's Generate (streaming), Complete and ModelInfo handlers
 * (generation_rpc.h): unpack and validate, submit to the scheduler, stream the tokens back as
 * the scheduler appends them. No start-up and no printing here. */
#include "generation_rpc.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/clock.h"
#include "core/protocol.h"
#include "core/rpc/status.h"
#include "core/rpc/pb.h"
#include "gw_metrics.h"
#include "validate.h"

/* Packs the tokens [from, to) of r into the repeated fields of a response. The arrays are
 * views into r or into `lp`, which the caller frees. */
typedef struct token_slice {
    Mx__V1__PositionLogprobs *pos;
    Mx__V1__PositionLogprobs **pos_ptrs;
    Mx__V1__TokenLogprob *lps;
    Mx__V1__TokenLogprob **top_ptrs;
} token_slice;

static void slice_free(token_slice *s)
{
    free(s->pos);
    free(s->pos_ptrs);
    free(s->lps);
    free(s->top_ptrs);
}

static int slice_logprobs(const gw_request *r, int from, int to, token_slice *s, size_t *n_out,
                          Mx__V1__PositionLogprobs ***out, mx_error *err)
{
    memset(s, 0, sizeof *s);
    *n_out = 0;
    *out = NULL;
    if (!r->out_logprob || to <= from)
        return 0;
    size_t n = (size_t)(to - from), tn = r->sampling.top_n;
    s->pos = calloc(n, sizeof *s->pos);
    s->pos_ptrs = calloc(n, sizeof *s->pos_ptrs);
    s->lps = calloc(n * (1 + tn), sizeof *s->lps);
    s->top_ptrs = calloc(n * (tn ? tn : 1), sizeof *s->top_ptrs);
    if (!s->pos || !s->pos_ptrs || !s->lps || !s->top_ptrs) {
        slice_free(s);
        return mx_fail(err, MX_ENOMEM, "out of memory");
    }
    for (size_t i = 0; i < n; i++) {
        size_t t = (size_t)from + i;
        Mx__V1__TokenLogprob *chosen = &s->lps[i * (1 + tn)];
        mx__v1__token_logprob__init(chosen);
        chosen->token_id = r->out_ids[t];
        chosen->logprob = r->out_logprob[t];
        mx__v1__position_logprobs__init(&s->pos[i]);
        s->pos[i].chosen = chosen;
        for (size_t j = 0; j < tn; j++) {
            Mx__V1__TokenLogprob *alt = &s->lps[i * (1 + tn) + 1 + j];
            mx__v1__token_logprob__init(alt);
            alt->token_id = r->top_ids[t * tn + j];
            alt->logprob = r->top_lp[t * tn + j];
            s->top_ptrs[i * tn + j] = alt;
        }
        s->pos[i].n_top = tn;
        s->pos[i].top = tn ? &s->top_ptrs[i * tn] : NULL;
        s->pos_ptrs[i] = &s->pos[i];
    }
    *n_out = n;
    *out = s->pos_ptrs;
    return 0;
}

static void fill_final(const gw_request *r, Mx__V1__Usage *u, Mx__V1__Timings *t)
{
    u->prompt_tokens = (uint32_t)r->n_prompt;
    u->completion_tokens = (uint32_t)r->n_out;
    double sched = r->t_scheduled_ms > 0 ? r->t_scheduled_ms : r->t_done_ms;
    double first = r->t_first_ms > 0 ? r->t_first_ms : r->t_done_ms;
    t->queue_ms = sched - r->t_arrival_ms;
    t->prefill_ms = first - sched;
    t->decode_ms = r->t_done_ms - first;
    t->time_to_first_token_ms = first - r->t_arrival_ms;
    t->total_ms = r->t_done_ms - r->t_arrival_ms;
}

/* Whether the client of the call went away (gw_request_wait_progress asks before each sleep). */
static bool call_gone(void *call)
{
    return mx_rpc_call_cancelled(call);
}

/* The RPC server's cancel callback: the handler waiting on r looks at call_gone again. */
static void wake_request(void *r)
{
    gw_request_wake(r);
}

/* While the handler waits on r, a cancelled call wakes it (mx_rpc_call_on_cancel) instead of
 * the handler polling for it. Not called with r->mu held: the callback takes it. */
static void watch_cancel(mx_rpc_call *call, gw_request *r)
{
    mx_rpc_call_on_cancel(call, wake_request, r);
}

/* Before the handler drops its reference to r: the callback will not run after this. */
static void unwatch_cancel(mx_rpc_call *call)
{
    mx_rpc_call_on_cancel(call, NULL, NULL);
}

/* Waits until r has tokens beyond `sent` or is done; false (r marked cancelled) if the client
 * went away. Called with r->mu held. */
static bool wait_progress(mx_rpc_call *call, gw_request *r, int sent)
{
    return gw_request_wait_progress(r, sent, call_gone, call);
}

static void set_request_id(gw_request *r)
{
    if (!r->request_id[0])
        snprintf(r->request_id, sizeof r->request_id, "req-%016" PRIx64, r->seq_id);
}

/* Unpacks, validates and submits; on failure the call's status is set and NULL returned. */
static gw_request *start(gw_generation_ctx *g, mx_rpc_call *call, const uint8_t *req, size_t len)
{
    mx_error err = {0};
    ProtobufCMessage *msg;
    gw_request *r = NULL;
    int rc = mx_rpc_pb_unpack(&mx__v1__generate_request__descriptor, req, len, &msg, &err);
    if (!rc) {
        gw_limits lim = *g->lim;
        lim.max_context_tokens = (int)gw_scheduler_max_context(g->sched, lim.model_context_tokens);
        rc = gw_validate(&lim, g->text, (const Mx__V1__GenerateRequest *)msg, &r, &err);
        protobuf_c_message_free_unpacked(msg, NULL);
    }
    if (!rc) {
        int64_t left = mx_rpc_call_ms_left(call);
        if (left != INT64_MAX)
            r->deadline_ms = r->t_arrival_ms + (double)left;
        rc = gw_scheduler_submit(g->sched, r, &err);
    }
    if (rc) {
        if (r)
            gw_request_unref(r);
        gw_metrics_rejected(g->metrics, GW_API_GRPC, mx_rpc_status_name(mx_rpc_status_from_code(err.code)));
        mx_rpc_call_set_error(call, &err);
        return NULL;
    }
    set_request_id(r);
    return r;
}

/* matched_stop: the stop string, or the stop token id in decimal. */
static const char *matched_stop(const gw_request *r, char buf[16])
{
    if (r->matched_stop_str >= 0)
        return r->stop_strs[r->matched_stop_str];
    if (r->has_matched_stop)
        snprintf(buf, 16, "%u", r->matched_stop);
    else
        buf[0] = '\0';
    return buf;
}

static void end_status(mx_rpc_call *call, const gw_request *r)
{
    /* A request the gateway ends at its deadline must fail as DEADLINE_EXCEEDED even when the
     * gateway notices first: the client's own timer may fire a moment later than ours. */
    if (r->finish == MX__V1__FINISH_REASON__FINISH_REASON_ERROR || r->error_code == MX_ETIMEOUT) {
        mx_error e = {r->error_code ? r->error_code : MX_EINTERNAL, ""};
        snprintf(e.msg, sizeof e.msg, "%s", r->error);
        mx_rpc_call_set_error(call, &e);
    }
}

/* The access line of one call (core/log.h), with the status the client gets. */
static void log_access(const gw_generation_ctx *g, mx_rpc_call *call, const char *method, gw_request *r, double t0)
{
    if (!mx_log_enabled(g->log, MX_LOG_INFO))
        return;
    const char *status = mx_rpc_call_cancelled(call) ? "CANCELLED" : mx_rpc_status_name(mx_rpc_call_status(call));
    int64_t prompt = -1, generated = -1;
    if (r) {
        pthread_mutex_lock(&r->mu);
        prompt = r->n_prompt;
        generated = r->n_out;
        pthread_mutex_unlock(&r->mu);
    }
    mx_log_access(g->log, method, status, prompt, generated, mx_now_ms() - t0, r ? r->request_id : NULL);
}

void gw_on_generate(mx_rpc_call *call, const uint8_t *req, size_t len, void *user)
{
    gw_generation_ctx *g = user;
    double t0 = mx_now_ms();
    gw_request *r = start(user, call, req, len);
    if (!r) {
        log_access(user, call, "Generate", NULL, t0);
        return;
    }
    watch_cancel(call, r);
    int sent = 0;
    size_t text_sent = 0;
    double last_ms = 0;        /* when the previous tokens were written (inter-token metric) */
    bool finished = false;
    for (;;) {
        pthread_mutex_lock(&r->mu);
        bool alive = wait_progress(call, r, sent);
        int upto = r->n_out;
        bool done = r->done;
        double first_ms = r->t_first_ms;
        /* the text buffer may move when the scheduler appends, so the new part is copied */
        size_t text_upto = r->text.len;
        char *piece = alive && r->tok ? strndup(r->text.data + text_sent, text_upto - text_sent) : NULL;
        pthread_mutex_unlock(&r->mu);
        if (!alive)
            break;
        /* Tokens below upto are written once and never change, so they are read unlocked. */
        Mx__V1__GenerateResponse m = MX__V1__GENERATE_RESPONSE__INIT;
        Mx__V1__Usage u = MX__V1__USAGE__INIT;
        Mx__V1__Timings t = MX__V1__TIMINGS__INIT;
        char stop_text[16] = "";
        token_slice ts;
        mx_error err = {0};
        int rc = r->tok && !piece ? mx_fail(&err, MX_ENOMEM, "out of memory") : 0;
        m.text = piece ? piece : "";
        m.token_ids = r->out_ids + sent;
        m.n_token_ids = (size_t)(upto - sent);
        m.request_id = r->request_id;
        if (!rc)
            rc = slice_logprobs(r, sent, upto, &ts, &m.n_logprobs, &m.logprobs, &err);
        else
            memset(&ts, 0, sizeof ts);
        if (done) {
            m.finish_reason = r->finish;
            fill_final(r, &u, &t);
            m.usage = &u;
            m.timings = &t;
            m.matched_stop = (char *)matched_stop(r, stop_text);
            m.error_message = r->error;
        }
        if (!rc)
            rc = mx_rpc_pb_write(call, &m.base, &err);
        slice_free(&ts);
        free(piece);
        if (rc) {
            gw_request_cancel(r);
            if (rc != MX_ECANCELLED)
                mx_rpc_call_set_error(call, &err);
            break;
        }
        gw_metrics_streamed(g->metrics, GW_API_GRPC, &last_ms, sent, upto, first_ms, mx_now_ms());
        sent = upto;
        text_sent = text_upto;
        if (done) {
            end_status(call, r);
            gw_metrics_finished(g->metrics, GW_API_GRPC, r, false);
            finished = true;
            break;
        }
    }
    unwatch_cancel(call);
    if (!finished)
        gw_metrics_finished(g->metrics, GW_API_GRPC, r, true);
    log_access(user, call, "Generate", r, t0);
    gw_request_unref(r);
}

void gw_on_complete(mx_rpc_call *call, const uint8_t *req, size_t len, void *user)
{
    double t0 = mx_now_ms();
    gw_request *r = start(user, call, req, len);
    if (!r) {
        log_access(user, call, "Complete", NULL, t0);
        return;
    }
    watch_cancel(call, r);
    pthread_mutex_lock(&r->mu);
    bool alive = true;
    while (alive && !r->done)
        alive = wait_progress(call, r, r->n_out);
    pthread_mutex_unlock(&r->mu);
    unwatch_cancel(call);
    gw_generation_ctx *g = user;
    gw_metrics_finished(g->metrics, GW_API_GRPC, r, !alive);
    if (alive) {
        gw_metrics_answered(g->metrics, GW_API_GRPC, r); /* one answer: the mean gap for every gap */
        Mx__V1__CompleteResponse m = MX__V1__COMPLETE_RESPONSE__INIT;
        Mx__V1__Usage u = MX__V1__USAGE__INIT;
        Mx__V1__Timings t = MX__V1__TIMINGS__INIT;
        char stop_text[16] = "";
        token_slice ts;
        mx_error err = {0};
        m.token_ids = r->out_ids;
        m.n_token_ids = (size_t)r->n_out;
        m.text = r->text.data ? r->text.data : "";
        m.request_id = r->request_id;
        m.finish_reason = r->finish;
        fill_final(r, &u, &t);
        m.usage = &u;
        m.timings = &t;
        m.matched_stop = (char *)matched_stop(r, stop_text);
        m.error_message = r->error;
        int rc = slice_logprobs(r, 0, r->n_out, &ts, &m.n_logprobs, &m.logprobs, &err);
        if (r->finish == MX__V1__FINISH_REASON__FINISH_REASON_ERROR)
            end_status(call, r);
        else if (rc || mx_rpc_pb_write(call, &m.base, &err))
            mx_rpc_call_set_error(call, &err);
        slice_free(&ts);
    }
    log_access(user, call, "Complete", r, t0);
    gw_request_unref(r);
}

void gw_on_model_info(mx_rpc_call *call, const uint8_t *req, size_t len, void *user)
{
    gw_generation_ctx *g = user;
    double t0 = mx_now_ms();
    mx_error err = {0};
    ProtobufCMessage *msg;
    if (mx_rpc_pb_unpack(&mx__v1__model_info_request__descriptor, req, len, &msg, &err)) {
        mx_rpc_call_set_error(call, &err);
        log_access(g, call, "ModelInfo", NULL, t0);
        return;
    }
    protobuf_c_message_free_unpacked(msg, NULL);
    Mx__V1__ModelInfoResponse m = MX__V1__MODEL_INFO_RESPONSE__INIT;
    m.model_name = (char *)g->cfg->model_name; /* protobuf-c fields are not const; only read */
    m.vocab_size = (uint32_t)g->model->vocab_size;
    m.max_context_tokens = (uint32_t)gw_scheduler_max_context(g->sched, g->lim->model_context_tokens);
    m.max_new_tokens_limit = (uint32_t)g->lim->max_new_tokens_limit;
    m.eos_token_ids = (uint32_t *)g->lim->eos;
    m.n_eos_token_ids = (size_t)g->lim->n_eos;
    m.bos_token_id = g->model->bos_token_id >= 0 ? (uint32_t)g->model->bos_token_id : 0;
    m.num_layers = (uint32_t)g->model->num_hidden_layers;
    m.num_experts = (uint32_t)g->model->num_local_experts;
    m.experts_per_token = (uint32_t)g->model->num_experts_per_tok;
    m.num_stages = (uint32_t)g->cfg->n_stages;
    m.num_expert_shards = (uint32_t)g->cfg->num_expert_shards;
    m.chat_template_available = g->text->chat;
    if (mx_rpc_pb_write(call, &m.base, &err))
        mx_rpc_call_set_error(call, &err);
    log_access(g, call, "ModelInfo", NULL, t0);
}

int gw_add_methods(gw_generation_ctx *g, gw_tokenize_ctx *tok, mx_rpc_server *srv, mx_error *err)
{
    MX_TRY(mx_rpc_server_add_stream(srv, MX_GENERATION_GENERATE_METHOD, gw_on_generate, g, err));
    MX_TRY(mx_rpc_server_add_unary(srv, MX_GENERATION_COMPLETE_METHOD, gw_on_complete, g, err));
    /* on the control pool: answered however busy the workers are */
    MX_TRY(mx_rpc_server_add_control(srv, MX_GENERATION_MODEL_INFO_METHOD, gw_on_model_info, g, err));
    MX_TRY(mx_rpc_server_add_unary(srv, MX_GENERATION_TOKENIZE_METHOD, gw_on_tokenize, tok, err));
    return mx_rpc_server_add_unary(srv, MX_GENERATION_DETOKENIZE_METHOD, gw_on_detokenize, tok, err);
}
