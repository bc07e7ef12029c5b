/* validate.c - GenerateRequest checks (see validate.h). The proto's "0 means default"
 * conventions are applied here, so the scheduler only ever sees explicit values. */
#include "validate.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int check_unit(const char *field, float v, bool allow_above_one, mx_error *err)
{
    if (isnan(v) || isinf(v))
        return mx_fail(err, MX_EINVAL, "%s is %s; it must be a finite number", field, isnan(v) ? "NaN" : "infinite");
    if (v < 0)
        return mx_fail(err, MX_EINVAL, "%s is %g; it must not be negative", field, v);
    if (!allow_above_one && v > 1)
        return mx_fail(err, MX_EINVAL, "%s is %g; it must be in [0, 1]", field, v);
    return 0;
}

static int check_sampling(const Mx__V1__SamplingParams *p, gw_sampling *sp, mx_error *err)
{
    memset(sp, 0, sizeof *sp);
    sp->top_p = 1;
    sp->repetition_penalty = 1;
    if (!p)
        return 0;
    MX_TRY(check_unit("sampling.temperature", p->temperature, true, err));
    MX_TRY(check_unit("sampling.top_p", p->top_p, false, err));
    MX_TRY(check_unit("sampling.min_p", p->min_p, false, err));
    MX_TRY(check_unit("sampling.repetition_penalty", p->repetition_penalty, true, err));
    sp->temperature = p->temperature;
    sp->top_k = p->top_k;
    sp->top_p = p->top_p == 0 ? 1 : p->top_p;
    sp->min_p = p->min_p;
    sp->repetition_penalty = p->repetition_penalty == 0 ? 1 : p->repetition_penalty;
    sp->seed = p->seed;
    return 0;
}

/* The prompt as ids, from whichever of prompt_ids / prompt / messages is set. */
static int build_prompt(const gw_limits *lim, const gw_text *tx, const Mx__V1__GenerateRequest *rq, uint32_t **out,
                        int *n_out, mx_error *err)
{
    bool has_text = rq->prompt && rq->prompt[0], has_tools = rq->tools_json && rq->tools_json[0];
    int kinds = (rq->n_prompt_ids > 0) + has_text + (rq->n_messages > 0);
    if (kinds == 0)
        return mx_fail(err, MX_EINVAL, "the prompt is empty: set one of prompt_ids, prompt and messages");
    if (kinds > 1)
        return mx_fail(err, MX_EINVAL, "set exactly one of prompt_ids, prompt and messages (got %s%s%s)",
                       rq->n_prompt_ids ? "prompt_ids " : "", has_text ? "prompt " : "",
                       rq->n_messages ? "messages" : "");
    if (has_tools && rq->n_messages == 0)
        return mx_fail(err, MX_EINVAL, "tools_json: only used with messages");
    mx_tok_ids ids = {0};
    const char *field = rq->n_prompt_ids ? "prompt_ids" : has_text ? "prompt" : "messages";
    if (rq->n_prompt_ids) {
        for (size_t i = 0; i < rq->n_prompt_ids; i++)
            if (rq->prompt_ids[i] >= (uint32_t)lim->vocab_size)
                return mx_fail(err, MX_EINVAL, "prompt_ids[%zu] = %u is outside the vocabulary (vocab_size %d)", i,
                               rq->prompt_ids[i], lim->vocab_size);
        for (size_t i = 0; i < rq->n_prompt_ids; i++)
            if (mx_tok_ids_push(&ids, (int32_t)rq->prompt_ids[i], err)) {
                mx_tok_ids_free(&ids);
                return err->code;
            }
    } else {
        int rc = has_text ? gw_text_encode_plain(tx, "prompt", rq->prompt, &ids, err)
                          : gw_text_encode_chat(tx, rq->messages, rq->n_messages, rq->tools_json,
                                                rq->add_generation_prompt, &ids, NULL, err);
        if (rc) {
            mx_tok_ids_free(&ids);
            return rc;
        }
        if (ids.len == 0) {
            mx_tok_ids_free(&ids);
            return mx_fail(err, MX_EINVAL, "%s encodes to no tokens", field);
        }
    }
    if (ids.len >= (size_t)lim->model_context_tokens) {
        size_t n = ids.len; /* freeing clears it */
        mx_tok_ids_free(&ids);
        return mx_fail(err, MX_EINVAL, "%s has %zu tokens; the context limit is %d (prompt + output)", field, n,
                       lim->model_context_tokens);
    }
    /* int32 and uint32 share a representation for these non-negative ids */
    *out = (uint32_t *)ids.ids;
    *n_out = (int)ids.len;
    return 0;
}

/* sampling.stop: checked, then copied (the request owns the copies). */
static int copy_stops(const gw_text *tx, const Mx__V1__SamplingParams *p, char ***out, mx_error *err)
{
    *out = NULL;
    if (!p || p->n_stop == 0)
        return 0;
    MX_TRY(gw_text_require(tx, "sampling.stop (stop strings)", false, err));
    if (p->n_stop > GW_MAX_STOP_STRINGS)
        return mx_fail(err, MX_EINVAL, "sampling.stop has %zu strings; at most %d", p->n_stop, GW_MAX_STOP_STRINGS);
    for (size_t i = 0; i < p->n_stop; i++) {
        size_t len = strlen(p->stop[i]);
        if (len == 0)
            return mx_fail(err, MX_EINVAL, "sampling.stop[%zu] is empty", i);
        if (len > GW_MAX_STOP_BYTES)
            return mx_fail(err, MX_EINVAL, "sampling.stop[%zu] is %zu bytes long; at most %d", i, len,
                           GW_MAX_STOP_BYTES);
    }
    char **s = calloc(p->n_stop, sizeof *s);
    for (size_t i = 0; s && i < p->n_stop; i++)
        if (!(s[i] = strdup(p->stop[i]))) {
            for (size_t j = 0; j < i; j++)
                free(s[j]);
            free(s);
            s = NULL;
        }
    if (!s)
        return mx_fail(err, MX_ENOMEM, "out of memory");
    *out = s;
    return 0;
}

static void free_stops(char **s, size_t n)
{
    for (size_t i = 0; s && i < n; i++)
        free(s[i]);
    free(s);
}

int gw_validate(const gw_limits *lim, const gw_text *tx, const Mx__V1__GenerateRequest *rq, gw_request **out,
                mx_error *err)
{
    *out = NULL;
    if (strlen(rq->request_id) > 128)
        return mx_fail(err, MX_EINVAL, "request_id is %zu bytes long; at most 128", strlen(rq->request_id));
    gw_sampling sp;
    MX_TRY(check_sampling(rq->sampling, &sp, err));
    const Mx__V1__SamplingParams *p = rq->sampling;
    uint32_t max_new = p ? p->max_new_tokens : 0;
    if (max_new > (uint32_t)lim->max_new_tokens_limit)
        return mx_fail(err, MX_EINVAL, "sampling.max_new_tokens = %u is over the limit of %d", max_new,
                       lim->max_new_tokens_limit);
    if (p)
        for (size_t i = 0; i < p->n_stop_token_ids; i++)
            if (p->stop_token_ids[i] >= (uint32_t)lim->vocab_size)
                return mx_fail(err, MX_EINVAL, "sampling.stop_token_ids[%zu] = %u is outside the vocabulary (%d)", i,
                               p->stop_token_ids[i], lim->vocab_size);
    if (p && p->n_stop_token_ids > 1024)
        return mx_fail(err, MX_EINVAL, "sampling.stop_token_ids has %zu ids; at most 1024", p->n_stop_token_ids);
    if (rq->logprobs) {
        sp.want_logprobs = rq->logprobs->enabled || rq->logprobs->top_n > 0;
        sp.top_n = rq->logprobs->top_n > GW_MAX_TOP ? GW_MAX_TOP : rq->logprobs->top_n;
    }
    char **stops;
    MX_TRY(copy_stops(tx, p, &stops, err));
    size_t n_stops = stops ? p->n_stop : 0;
    uint32_t *prompt = NULL;
    int n_prompt = 0;
    int rc = build_prompt(lim, tx, rq, &prompt, &n_prompt, err);
    if (rc) {
        free_stops(stops, n_stops);
        return rc;
    }
    if (max_new == 0) {
        int64_t room = (int64_t)lim->max_context_tokens - n_prompt;
        max_new = (uint32_t)lim->max_new_tokens_limit;
        if (max_new > room)
            max_new = room > 1 ? (uint32_t)room : 1;
    }
    if (max_new > (uint32_t)(lim->model_context_tokens - n_prompt))
        max_new = (uint32_t)(lim->model_context_tokens - n_prompt);
    size_t n_stop = p ? p->n_stop_token_ids : 0;
    uint32_t *stop = malloc((n_stop ? n_stop : 1) * sizeof *stop);
    if (!stop) {
        free(prompt);
        free_stops(stops, n_stops);
        return mx_fail(err, MX_ENOMEM, "out of memory");
    }
    if (n_stop)
        memcpy(stop, p->stop_token_ids, n_stop * sizeof *stop);
    gw_request *r;
    rc = gw_request_new(prompt, n_prompt, stop, (int)n_stop, (int)max_new, &sp, &r, err);
    if (rc) {
        free_stops(stops, n_stops);
        return rc;
    }
    if (tx->tok && gw_request_set_text(r, tx->tok, stops, (int)n_stops, err)) {
        gw_request_unref(r); /* it owns stops now */
        return err->code;
    }
    if (!tx->tok)
        free_stops(stops, n_stops); /* always NULL: stop strings need the tokenizer */
    if (!(p && p->ignore_eos)) {
        r->n_eos = lim->n_eos;
        memcpy(r->eos, lim->eos, sizeof r->eos);
    }
    snprintf(r->request_id, sizeof r->request_id, "%s", rq->request_id);
    *out = r;
    return 0;
}
