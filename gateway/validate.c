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

int gw_validate(const gw_limits *lim, const Mx__V1__GenerateRequest *rq, gw_request **out, mx_error *err)
{
    *out = NULL;
    bool has_text = rq->prompt && rq->prompt[0];
    int kinds = (rq->n_prompt_ids > 0) + has_text + (rq->n_messages > 0);
    if (kinds == 0)
        return mx_fail(err, MX_EINVAL, "the prompt is empty: set prompt_ids (or prompt / messages)");
    if (kinds > 1)
        return mx_fail(err, MX_EINVAL, "set only one of prompt_ids, prompt and messages");
    if (kinds && rq->n_prompt_ids == 0)
        return mx_fail(err, MX_EUNSUPPORTED, "%s needs the tokenizer, which this gateway does not load; send prompt_ids",
                       has_text ? "prompt" : "messages");
    if (strlen(rq->request_id) > 128)
        return mx_fail(err, MX_EINVAL, "request_id is %zu bytes long; at most 128", strlen(rq->request_id));
    for (size_t i = 0; i < rq->n_prompt_ids; i++)
        if (rq->prompt_ids[i] >= (uint32_t)lim->vocab_size)
            return mx_fail(err, MX_EINVAL, "prompt_ids[%zu] = %u is outside the vocabulary (vocab_size %d)", i,
                           rq->prompt_ids[i], lim->vocab_size);
    if (rq->n_prompt_ids >= (size_t)lim->max_context_tokens)
        return mx_fail(err, MX_EINVAL, "prompt_ids has %zu tokens; the context limit is %d (prompt + output)",
                       rq->n_prompt_ids, lim->max_context_tokens);
    gw_sampling sp;
    MX_TRY(check_sampling(rq->sampling, &sp, err));
    const Mx__V1__SamplingParams *p = rq->sampling;
    uint32_t max_new = p ? p->max_new_tokens : 0;
    if (max_new > (uint32_t)lim->max_new_tokens_limit)
        return mx_fail(err, MX_EINVAL, "sampling.max_new_tokens = %u is over the limit of %d", max_new,
                       lim->max_new_tokens_limit);
    if (max_new == 0)
        max_new = (uint32_t)lim->max_new_tokens_limit;
    if (max_new > (uint32_t)(lim->max_context_tokens - (int)rq->n_prompt_ids))
        max_new = (uint32_t)(lim->max_context_tokens - (int)rq->n_prompt_ids);
    if (p && p->n_stop > 0)
        return mx_fail(err, MX_EUNSUPPORTED, "sampling.stop (stop strings) needs the tokenizer, which this gateway "
                                             "does not load; use sampling.stop_token_ids");
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
    uint32_t *prompt = malloc(rq->n_prompt_ids * sizeof *prompt);
    size_t n_stop = p ? p->n_stop_token_ids : 0;
    uint32_t *stop = malloc((n_stop ? n_stop : 1) * sizeof *stop);
    if (!prompt || !stop) {
        free(prompt);
        free(stop);
        return mx_fail(err, MX_ENOMEM, "out of memory");
    }
    memcpy(prompt, rq->prompt_ids, rq->n_prompt_ids * sizeof *prompt);
    if (n_stop)
        memcpy(stop, p->stop_token_ids, n_stop * sizeof *stop);
    gw_request *r;
    MX_TRY(gw_request_new(prompt, (int)rq->n_prompt_ids, stop, (int)n_stop, (int)max_new, &sp, &r, err));
    if (!(p && p->ignore_eos)) {
        r->n_eos = lim->n_eos;
        memcpy(r->eos, lim->eos, sizeof r->eos);
    }
    snprintf(r->request_id, sizeof r->request_id, "%s", rq->request_id);
    *out = r;
    return 0;
}
