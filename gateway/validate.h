/* validate.h - turns a public GenerateRequest into a gateway request, rejecting anything the
 * cluster must not see: every error is MX_EINVAL (INVALID_ARGUMENT) with a message that
 * names the offending field, or MX_EUNSUPPORTED for features this gateway does not serve
 * (text without a tokenizer). Checking, tokenizing and copying: no I/O. */
#ifndef MX_GW_VALIDATE_H
#define MX_GW_VALIDATE_H

#include "mx/v1/generation.pb-c.h"
#include "request.h"
#include "text.h"

#define GW_MAX_STOP_STRINGS 16
#define GW_MAX_STOP_BYTES 256

typedef struct gw_limits {
    int vocab_size;
    int max_new_tokens_limit;
    int model_context_tokens;  /* gateway.max_context_tokens or the model's positions */
    int max_context_tokens;    /* the above capped by the stages' KV budgets (ModelInfo) */
    int n_eos;
    uint32_t eos[8];
} gw_limits;

/* A new request (one reference) for rq. A prompt of model_context_tokens or more is
 * INVALID_ARGUMENT; an unset max_new_tokens becomes min(max_new_tokens_limit,
 * max_context_tokens - prompt) (at least 1), a set one is capped to model_context_tokens -
 * prompt: whether prompt + max_new fits the KV budgets is the scheduler's check, which
 * answers RESOURCE_EXHAUSTED with the tokens that fit. Exactly one of
 * prompt_ids, prompt (plain text: special-token text is not recognised) and messages (rendered
 * with the chat template) gives the prompt; text needs tx's tokenizer. */
int gw_validate(const gw_limits *lim, const gw_text *tx, const Mx__V1__GenerateRequest *rq, gw_request **out,
                mx_error *err);

#endif
