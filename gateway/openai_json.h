/* openai_json.h - the OpenAI wire format of the gateway's HTTP API (openai_http.h): a
 * /v1/completions or /v1/chat/completions body turned into the GenerateRequest the gRPC API
 * takes (so gw_validate and the scheduler see one kind of request), and the response objects,
 * stream chunks and error bodies built from a gw_request. JSON only: no I/O, no threads. */
#ifndef MX_GW_OPENAI_JSON_H
#define MX_GW_OPENAI_JSON_H

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

#include "core/error.h"
#include "mx/v1/generation.pb-c.h"
#include "request.h"
#include "validate.h"

typedef enum { OA_COMPLETIONS, OA_CHAT } oa_kind;

/* An error as the API reports it: HTTP status, OpenAI error type, the offending field (param,
 * "" = null) and a machine-readable code ("" = null). */
typedef struct oa_error {
    int status;
    char type[40];
    char param[64];
    char code[40];
    char message[600];
} oa_error;

/* A parsed body. rq (and what it points to) borrows strings from root: valid until
 * oa_request_free. */
typedef struct oa_request {
    oa_kind kind;
    bool stream, include_usage;
    bool tokens_as_ids;          /* vLLM's return_tokens_as_token_ids: "token_id:N" strings */
    bool logprobs;
    int top_logprobs;
    Mx__V1__GenerateRequest rq;
    Mx__V1__SamplingParams sp;
    Mx__V1__LogprobsParams lp;
    json_t *root;
    uint32_t *prompt_ids, *stop_ids;
    char **stops;
    Mx__V1__ChatMessage *msgs, **msg_ptrs;
    Mx__V1__ContentParts *part_sets;
    Mx__V1__ContentPart *parts, **part_ptrs;
    char *tools_json;
} oa_request;

/* Parses and checks body (len bytes) against the limits: types and ranges of every field it
 * knows, naming the field; fields it does not know are ignored, as vLLM does. A model other
 * than model_name is 404 model_not_found. 0, or -1 with *e filled. */
int oa_parse(oa_kind kind, const char *body, size_t len, const gw_limits *lim, const char *model_name,
             oa_request *out, oa_error *e);
void oa_request_free(oa_request *r);

void oa_error_set(oa_error *e, int status, const char *param, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
/* The status of an error from gw_validate / gw_scheduler_submit / a request that ended in
 * FINISH_REASON_ERROR: bad input 400, a prompt over the context or the KV budgets 413, a full
 * queue 429, shutting down or no stage 503, other failures 500. */
void oa_error_from_mx(const mx_error *err, oa_error *e);
/* {"error": {"message", "type", "param", "code"}} (new reference). */
json_t *oa_error_json(const oa_error *e);

/* What a response needs besides the request. */
typedef struct oa_meta {
    oa_kind kind;
    const char *id;              /* "cmpl-..." / "chatcmpl-..." */
    int64_t created;             /* unix seconds */
    const char *model;
    const mx_tokenizer *tok;     /* NULL: logprob tokens are "token_id:N" */
    bool tokens_as_ids;
} oa_meta;

/* "stop" / "length" (eos, a stop id or string is "stop"). */
const char *oa_finish_reason(Mx__V1__FinishReason f);

/* The non-streaming response of a finished request. */
json_t *oa_response(const oa_meta *m, const gw_request *r);

/* One stream chunk: text and the logprobs of tokens [from, to); finish (NULL = not the last)
 * ends the choice. Chat: role_delta opens the assistant turn. include_usage adds "usage": null. */
json_t *oa_chunk(const oa_meta *m, const gw_request *r, const char *text, int from, int to, const char *finish,
                 bool role_delta, bool include_usage);
/* The usage chunk sent after the last choice chunk when stream_options.include_usage. */
json_t *oa_usage_chunk(const oa_meta *m, const gw_request *r);

#endif
