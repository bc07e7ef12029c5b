/* request.c - life cycle of a gateway request: creation, token delivery, finishing,
 * cancellation and reference counting. No RPC and no scheduling policy here. */
#include "request.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/clock.h"

int gw_request_new(uint32_t *prompt, int n_prompt, uint32_t *stop_ids, int n_stop, int max_new,
                   const gw_sampling *sp, gw_request **out, mx_error *err)
{
    *out = NULL;
    gw_request *r = calloc(1, sizeof *r);
    size_t n = (size_t)(max_new > 0 ? max_new : 1);
    if (r) {
        r->out_ids = malloc(n * sizeof *r->out_ids);
        if (sp->want_logprobs)
            r->out_logprob = malloc(n * sizeof *r->out_logprob);
        if (sp->top_n) {
            r->top_ids = malloc(n * sp->top_n * sizeof *r->top_ids);
            r->top_lp = malloc(n * sp->top_n * sizeof *r->top_lp);
        }
    }
    if (!r || !r->out_ids || (sp->want_logprobs && !r->out_logprob) || (sp->top_n && (!r->top_ids || !r->top_lp))) {
        if (r) {
            free(r->out_ids);
            free(r->out_logprob);
            free(r->top_ids);
            free(r->top_lp);
        }
        free(r);
        free(prompt);
        free(stop_ids);
        return mx_fail(err, MX_ENOMEM, "out of memory for a request of %d new tokens", max_new);
    }
    r->prompt = prompt;
    r->n_prompt = n_prompt;
    r->stop_ids = stop_ids;
    r->n_stop = n_stop;
    r->max_new = max_new;
    r->sampling = *sp;
    r->refs = 1;
    r->matched_stop_str = -1;
    r->t_arrival_ms = mx_now_ms();
    pthread_mutex_init(&r->mu, NULL);
    pthread_cond_init(&r->cv, NULL);
    *out = r;
    return 0;
}

void gw_request_ref(gw_request *r)
{
    pthread_mutex_lock(&r->mu);
    r->refs++;
    pthread_mutex_unlock(&r->mu);
}

void gw_request_unref(gw_request *r)
{
    pthread_mutex_lock(&r->mu);
    int left = --r->refs;
    pthread_mutex_unlock(&r->mu);
    if (left > 0)
        return;
    pthread_mutex_destroy(&r->mu);
    pthread_cond_destroy(&r->cv);
    free(r->prompt);
    free(r->stop_ids);
    free(r->out_ids);
    free(r->out_logprob);
    free(r->top_ids);
    free(r->top_lp);
    for (int i = 0; i < r->n_stop_strs; i++)
        free(r->stop_strs[i]);
    free(r->stop_strs);
    mx_stop_matcher_free(r->stops);
    mx_text_free(&r->text);
    mx_text_free(&r->piece);
    free(r);
}

int gw_request_set_text(gw_request *r, const mx_tokenizer *tok, char **stops, int n, mx_error *err)
{
    r->tok = tok;
    r->stop_strs = stops;
    r->n_stop_strs = n;
    mx_detok_stream_init(&r->detok, tok, 1);
    if (n > 0 && mx_stop_matcher_new((const char *const *)stops, (size_t)n, &r->stops, err))
        return mx_error_prefix(err, "sampling.stop");
    /* the text is never NULL once text is on, so handlers can always send it */
    return mx_text_append(&r->text, "", 0, err);
}

/* Adds one token's text; returns 1 when a stop string completed, < 0 on error. An id the
 * tokenizer does not define adds no text (as Hugging Face decoding skips it); the model may
 * sample such ids when its vocabulary is padded past the tokenizer's. Called with mu held. */
static int add_text(gw_request *r, uint32_t token, mx_error *err)
{
    r->piece.len = 0;
    int rc = mx_detok_stream_push(&r->detok, (int32_t)token, &r->piece, err);
    if (rc == MX_ERANGE)
        return 0;
    if (rc || r->piece.len == 0)
        return rc;
    if (!r->stops)
        return mx_text_append(&r->text, r->piece.data, r->piece.len, err);
    size_t which = 0;
    rc = mx_stop_matcher_push(r->stops, r->piece.data, r->piece.len, &r->text, &which, err);
    if (rc == 1)
        r->matched_stop_str = (int)which;
    return rc;
}

/* End of the stream: bytes of an unfinished character and text held back by the stop
 * matcher are released (unless a stop string matched). Called with mu held. */
static void flush_text(gw_request *r)
{
    if (!r->tok || r->matched_stop_str >= 0)
        return;
    mx_error err = {0};
    r->piece.len = 0;
    if (mx_detok_stream_finish(&r->detok, &r->piece, &err) == 0 && r->piece.len) {
        if (r->stops)
            mx_stop_matcher_push(r->stops, r->piece.data, r->piece.len, &r->text, NULL, &err);
        else
            mx_text_append(&r->text, r->piece.data, r->piece.len, &err);
    }
    if (r->stops)
        mx_stop_matcher_finish(r->stops, &r->text, &err);
}

static bool in_list(const uint32_t *list, int n, uint32_t v)
{
    for (int i = 0; i < n; i++)
        if (list[i] == v)
            return true;
    return false;
}

bool gw_request_push(gw_request *r, uint32_t token, float logprob, const uint32_t *top_ids, const float *top_lp,
                     int n_top, double now_ms)
{
    pthread_mutex_lock(&r->mu);
    if (r->done || r->n_out >= r->max_new) {
        pthread_mutex_unlock(&r->mu);
        return true;
    }
    int i = r->n_out;
    r->out_ids[i] = token;
    if (r->out_logprob)
        r->out_logprob[i] = logprob;
    if (r->top_ids) {
        uint32_t tn = r->sampling.top_n;
        for (uint32_t j = 0; j < tn; j++) {
            r->top_ids[(size_t)i * tn + j] = (int)j < n_top ? top_ids[j] : 0;
            r->top_lp[(size_t)i * tn + j] = (int)j < n_top ? top_lp[j] : 0;
        }
    }
    r->n_out++;
    mx_error err = {0};
    int matched = r->tok ? add_text(r, token, &err) : 0;
    if (matched < 0) {
        r->done = true;
        r->finish = MX__V1__FINISH_REASON__FINISH_REASON_ERROR;
        r->error_code = err.code;
        snprintf(r->error, sizeof r->error, "decoding the output: %.480s", err.msg);
    } else if (in_list(r->eos, r->n_eos, token)) {
        r->done = true;
        r->finish = MX__V1__FINISH_REASON__FINISH_REASON_EOS;
    } else if (matched) {
        r->done = true;
        r->finish = MX__V1__FINISH_REASON__FINISH_REASON_STOP;
    } else if (in_list(r->stop_ids, r->n_stop, token)) {
        r->done = true;
        r->finish = MX__V1__FINISH_REASON__FINISH_REASON_STOP;
        r->matched_stop = token;
        r->has_matched_stop = true;
    } else if (r->n_out >= r->max_new) {
        r->done = true;
        r->finish = MX__V1__FINISH_REASON__FINISH_REASON_LENGTH;
    }
    if (r->done) {
        r->t_done_ms = now_ms;
        flush_text(r);
    }
    bool done = r->done;
    pthread_mutex_unlock(&r->mu);
    return done;
}

void gw_request_finish(gw_request *r, Mx__V1__FinishReason why, mx_code code, const char *error, double now_ms)
{
    pthread_mutex_lock(&r->mu);
    if (!r->done) {
        r->done = true;
        r->finish = why;
        r->error_code = code;
        snprintf(r->error, sizeof r->error, "%s", error ? error : "");
        r->t_done_ms = now_ms;
        flush_text(r);
    }
    pthread_cond_broadcast(&r->cv);
    pthread_mutex_unlock(&r->mu);
}

void gw_request_cancel(gw_request *r)
{
    pthread_mutex_lock(&r->mu);
    r->cancelled = true;
    pthread_mutex_unlock(&r->mu);
}

void gw_request_wake(gw_request *r)
{
    pthread_mutex_lock(&r->mu);
    pthread_cond_broadcast(&r->cv);
    pthread_mutex_unlock(&r->mu);
}

bool gw_request_wait_progress(gw_request *r, int sent, bool (*gone)(void *ctx), void *ctx)
{
    /* gone() is asked under r->mu before every sleep: a canceller sets what gone() reads, then
     * wakes through r->mu, so its wake-up cannot fall between the question and the sleep. */
    while (!r->done && r->n_out == sent) {
        if (gone(ctx)) {
            r->cancelled = true;
            return false;
        }
        struct timespec ts = mx_wall_after_ms(GW_WAIT_SAFETY_MS);
        pthread_cond_timedwait(&r->cv, &r->mu, &ts);
    }
    return true;
}
