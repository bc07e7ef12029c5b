/* openai_json.c - OpenAI request bodies to GenerateRequests and gw_requests to OpenAI
 * responses (see openai_json.h). The checks here exist to name the OpenAI field in errors;
 * gw_validate still checks everything again as it does for gRPC. */
#include "openai_json.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#define OA_MAX_TOP_LOGPROBS 20

void oa_error_set(oa_error *e, int status, const char *param, const char *code, const char *fmt, ...)
{
    e->status = status;
    const char *type = status == 429   ? "rate_limit_error"
                       : status == 503 ? "service_unavailable_error"
                       : status >= 500 ? "server_error"
                                       : "invalid_request_error";
    snprintf(e->type, sizeof e->type, "%s", type);
    snprintf(e->param, sizeof e->param, "%s", param ? param : "");
    snprintf(e->code, sizeof e->code, "%s", code ? code : "");
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->message, sizeof e->message, fmt, ap);
    va_end(ap);
}

void oa_error_from_mx(const mx_error *err, oa_error *e)
{
    int status;
    switch (err->code) {
    case MX_EINVAL:
    case MX_EFORMAT:
    case MX_ERANGE:
    case MX_EUNSUPPORTED:
        /* gw_validate's context check is the one INVALID_ARGUMENT that is about size */
        status = strstr(err->msg, "the context limit is") ? 413 : 400;
        break;
    case MX_ENOMEM:
        /* the scheduler refuses with RESOURCE_EXHAUSTED for two reasons: a full queue (retry
         * later) or a request whose KV cache could never fit a stage (too long) */
        status = strstr(err->msg, "max_queued") ? 429 : strstr(err->msg, "out of memory") ? 500 : 413;
        break;
    case MX_EUNAVAILABLE:
    case MX_EDEVICE:
        status = 503;
        break;
    case MX_ETIMEOUT:
        status = 504;
        break;
    default:
        status = 500;
    }
    oa_error_set(e, status, NULL, status == 413 ? "context_length_exceeded" : NULL, "%s", err->msg);
}

json_t *oa_error_json(const oa_error *e)
{
    return json_pack("{s:{s:s, s:s, s:o, s:o}}", "error", "message", e->message, "type", e->type, "param",
                     e->param[0] ? json_string(e->param) : json_null(), "code",
                     e->code[0] ? json_string(e->code) : json_null());
}

/* ---- request parsing ---- */

/* 400 "'param' what" */
static int bad(oa_error *e, const char *param, const char *what)
{
    oa_error_set(e, 400, param, NULL, "'%s' %s", param, what);
    return -1;
}

/* The member, or NULL when absent or JSON null (OpenAI clients send null for "not set"). */
static json_t *field(json_t *o, const char *key)
{
    json_t *v = json_object_get(o, key);
    return json_is_null(v) ? NULL : v;
}

static int get_bool(json_t *o, const char *key, bool *out, oa_error *e)
{
    json_t *v = field(o, key);
    if (!v)
        return 0;
    if (!json_is_boolean(v))
        return bad(e, key, "must be a boolean");
    *out = json_is_true(v);
    return 0;
}

/* A finite number in [lo, hi] (lo excluded when open_lo). */
static int get_num(json_t *o, const char *key, double lo, bool open_lo, double hi, float *out, oa_error *e)
{
    json_t *v = field(o, key);
    if (!v)
        return 0;
    if (!json_is_number(v))
        return bad(e, key, "must be a number");
    double d = json_number_value(v);
    if (!isfinite(d) || d < lo || (open_lo && d == lo) || d > hi) {
        oa_error_set(e, 400, key, NULL, "'%s' is %g; it must be in %c%g, %g]", key, d, open_lo ? '(' : '[', lo, hi);
        return -1;
    }
    *out = (float)d;
    return 0;
}

static int get_int(json_t *o, const char *key, json_int_t lo, json_int_t hi, json_int_t *out, bool *present,
                   oa_error *e)
{
    json_t *v = field(o, key);
    if (present)
        *present = v != NULL;
    if (!v)
        return 0;
    if (!json_is_integer(v))
        return bad(e, key, "must be an integer");
    json_int_t i = json_integer_value(v);
    if (i < lo || i > hi) {
        oa_error_set(e, 400, key, NULL, "'%s' is %lld; it must be in [%lld, %lld]", key, (long long)i, (long long)lo,
                     (long long)hi);
        return -1;
    }
    *out = i;
    return 0;
}

/* Fields mx does not implement are accepted at their neutral value only. */
static int neutral_only(json_t *o, oa_error *e)
{
    static const char *const zero_num[] = {"presence_penalty", "frequency_penalty"};
    for (size_t i = 0; i < 2; i++) {
        json_t *v = field(o, zero_num[i]);
        if (v && (!json_is_number(v) || json_number_value(v) != 0))
            return bad(e, zero_num[i], "is not supported (only 0)");
    }
    json_t *v = field(o, "echo");
    if (v && !json_is_false(v))
        return bad(e, "echo", "is not supported (only false)");
    v = field(o, "suffix");
    if (v && !(json_is_string(v) && !json_string_value(v)[0]))
        return bad(e, "suffix", "is not supported");
    v = field(o, "logit_bias");
    if (v && !(json_is_object(v) && json_object_size(v) == 0))
        return bad(e, "logit_bias", "is not supported");
    json_int_t n = 1;
    if (get_int(o, "n", 1, 1, &n, NULL, e))
        return bad(e, "n", "must be 1 (one choice per request)");
    if (get_int(o, "best_of", 1, 1, &n, NULL, e))
        return bad(e, "best_of", "must be 1");
    v = field(o, "response_format");
    if (v && !(json_is_object(v) && json_is_string(json_object_get(v, "type")) &&
               strcmp(json_string_value(json_object_get(v, "type")), "text") == 0))
        return bad(e, "response_format", "is not supported (only {\"type\": \"text\"})");
    v = field(o, "tool_choice");
    if (v && !(json_is_string(v) && (!strcmp(json_string_value(v), "auto") || !strcmp(json_string_value(v), "none"))))
        return bad(e, "tool_choice", "is not supported (only \"auto\" or \"none\"; tool calls are not parsed)");
    return 0;
}

static int parse_stop(json_t *o, const gw_limits *lim, oa_request *r, oa_error *e)
{
    json_t *v = field(o, "stop");
    if (v) {
        size_t n = json_is_string(v) ? 1 : json_is_array(v) ? json_array_size(v) : (size_t)-1;
        if (n == (size_t)-1)
            return bad(e, "stop", "must be a string or a list of strings");
        if (n > GW_MAX_STOP_STRINGS) {
            oa_error_set(e, 400, "stop", NULL, "'stop' has %zu strings; at most %d", n, GW_MAX_STOP_STRINGS);
            return -1;
        }
        r->stops = calloc(n ? n : 1, sizeof *r->stops);
        if (!r->stops) {
            oa_error_set(e, 500, NULL, NULL, "out of memory");
            return -1;
        }
        for (size_t i = 0; i < n; i++) {
            json_t *s = json_is_string(v) ? v : json_array_get(v, i);
            if (!json_is_string(s))
                return bad(e, "stop", "must be a string or a list of strings");
            size_t len = strlen(json_string_value(s));
            if (len == 0 || len > GW_MAX_STOP_BYTES) {
                oa_error_set(e, 400, "stop", NULL, "'stop'[%zu] is %zu bytes long; it must be 1 to %d", i, len,
                             GW_MAX_STOP_BYTES);
                return -1;
            }
            r->stops[i] = (char *)json_string_value(s); /* protobuf-c fields are not const; only read */
        }
        r->sp.stop = r->stops;
        r->sp.n_stop = n;
    }
    v = field(o, "stop_token_ids");
    if (v) {
        if (!json_is_array(v) || json_array_size(v) > 1024)
            return bad(e, "stop_token_ids", "must be a list of at most 1024 token ids");
        size_t n = json_array_size(v);
        r->stop_ids = calloc(n ? n : 1, sizeof *r->stop_ids);
        if (!r->stop_ids) {
            oa_error_set(e, 500, NULL, NULL, "out of memory");
            return -1;
        }
        for (size_t i = 0; i < n; i++) {
            json_t *id = json_array_get(v, i);
            if (!json_is_integer(id) || json_integer_value(id) < 0 || json_integer_value(id) >= lim->vocab_size) {
                oa_error_set(e, 400, "stop_token_ids", NULL, "'stop_token_ids'[%zu] must be a token id in [0, %d)", i,
                             lim->vocab_size);
                return -1;
            }
            r->stop_ids[i] = (uint32_t)json_integer_value(id);
        }
        r->sp.stop_token_ids = r->stop_ids;
        r->sp.n_stop_token_ids = n;
    }
    return 0;
}

static int parse_sampling(json_t *o, const gw_limits *lim, oa_request *r, oa_error *e)
{
    Mx__V1__SamplingParams *sp = &r->sp;
    sp->temperature = 1; /* OpenAI's default: sampling, not greedy */
    sp->top_p = 1;
    sp->repetition_penalty = 1;
    if (get_num(o, "temperature", 0, false, 100, &sp->temperature, e) || get_num(o, "top_p", 0, true, 1, &sp->top_p, e) ||
        get_num(o, "min_p", 0, false, 1, &sp->min_p, e) ||
        get_num(o, "repetition_penalty", 0, true, 100, &sp->repetition_penalty, e))
        return -1;
    json_int_t k = 0, seed = 0, max = 0;
    bool has_max = false, has_mct = false, has_seed = false;
    if (get_int(o, "top_k", -1, INT32_MAX, &k, NULL, e) || get_int(o, "seed", INT64_MIN, INT64_MAX, &seed, &has_seed, e))
        return -1;
    sp->top_k = k > 0 ? (uint32_t)k : 0; /* vLLM: -1 (and 0) turn top-k off */
    sp->seed = (uint64_t)seed;
    /* no seed: every request samples differently, as OpenAI's do (mx's seed 0 is a seed) */
    if (!has_seed && getrandom(&sp->seed, sizeof sp->seed, 0) != (ssize_t)sizeof sp->seed)
        sp->seed = (uint64_t)time(NULL) ^ (uint64_t)(uintptr_t)r;
    const char *max_key = "max_tokens";
    if (r->kind == OA_CHAT) {
        if (get_int(o, "max_completion_tokens", 1, INT32_MAX, &max, &has_mct, e))
            return -1;
        if (has_mct)
            max_key = "max_completion_tokens";
    }
    if (!has_mct && get_int(o, "max_tokens", 1, INT32_MAX, &max, &has_max, e))
        return -1;
    if (!has_mct && !has_max && r->kind == OA_COMPLETIONS) {
        max = 16; /* the OpenAI (and vLLM) default for completions; chat defaults to the context */
        has_max = true;
    }
    if ((has_max || has_mct) && max > lim->max_new_tokens_limit) {
        oa_error_set(e, 400, max_key, NULL, "'%s' is %lld; this server's limit is %d", max_key, (long long)max,
                     lim->max_new_tokens_limit);
        return -1;
    }
    sp->max_new_tokens = (uint32_t)max;
    bool ignore_eos = false;
    if (get_bool(o, "ignore_eos", &ignore_eos, e))
        return -1;
    sp->ignore_eos = ignore_eos;
    return parse_stop(o, lim, r, e);
}

static int parse_logprobs(json_t *o, oa_request *r, oa_error *e)
{
    json_int_t top = 0;
    bool present = false;
    if (r->kind == OA_COMPLETIONS) {
        if (get_int(o, "logprobs", 0, OA_MAX_TOP_LOGPROBS, &top, &present, e))
            return -1;
        r->logprobs = present;
    } else {
        if (get_bool(o, "logprobs", &r->logprobs, e) ||
            get_int(o, "top_logprobs", 0, OA_MAX_TOP_LOGPROBS, &top, &present, e))
            return -1;
        if (present && top > 0 && !r->logprobs)
            return bad(e, "top_logprobs", "needs \"logprobs\": true");
    }
    r->top_logprobs = (int)top;
    if (r->logprobs) {
        r->lp.enabled = true;
        r->lp.top_n = (uint32_t)top;
        r->rq.logprobs = &r->lp;
    }
    return get_bool(o, "return_tokens_as_token_ids", &r->tokens_as_ids, e);
}

static int parse_prompt(json_t *o, const gw_limits *lim, oa_request *r, oa_error *e)
{
    json_t *p = field(o, "prompt");
    if (!p)
        return bad(e, "prompt", "is required");
    /* a list of one prompt is the same as that prompt; batches are not served */
    if (json_is_array(p) && json_array_size(p) == 1 &&
        (json_is_string(json_array_get(p, 0)) || json_is_array(json_array_get(p, 0))))
        p = json_array_get(p, 0);
    if (json_is_string(p)) {
        r->rq.prompt = (char *)json_string_value(p);
        if (!r->rq.prompt[0])
            return bad(e, "prompt", "is empty");
        return 0;
    }
    if (!json_is_array(p) || json_array_size(p) == 0)
        return bad(e, "prompt", "must be a non-empty string or list of token ids (one prompt: n = 1)");
    size_t n = json_array_size(p);
    r->prompt_ids = malloc(n * sizeof *r->prompt_ids);
    if (!r->prompt_ids) {
        oa_error_set(e, 500, NULL, NULL, "out of memory");
        return -1;
    }
    for (size_t i = 0; i < n; i++) {
        json_t *id = json_array_get(p, i);
        if (!json_is_integer(id)) {
            oa_error_set(e, 400, "prompt", NULL, "'prompt'[%zu] must be a token id (only one prompt is served)", i);
            return -1;
        }
        if (json_integer_value(id) < 0 || json_integer_value(id) >= lim->vocab_size) {
            oa_error_set(e, 400, "prompt", NULL, "'prompt'[%zu] = %lld is outside the vocabulary (%d)", i,
                         (long long)json_integer_value(id), lim->vocab_size);
            return -1;
        }
        r->prompt_ids[i] = (uint32_t)json_integer_value(id);
    }
    r->rq.prompt_ids = r->prompt_ids;
    r->rq.n_prompt_ids = n;
    return 0;
}

/* One message's content: a string, null, or a list of {"type": "text", "text": ...} parts. */
static int parse_content(json_t *c, size_t i, oa_request *r, size_t *next_part, oa_error *e)
{
    Mx__V1__ChatMessage *m = &r->msgs[i];
    char param[64];
    snprintf(param, sizeof param, "messages[%zu].content", i);
    if (!c)
        return 0;
    if (json_is_string(c)) {
        m->content_case = MX__V1__CHAT_MESSAGE__CONTENT_TEXT;
        m->text = (char *)json_string_value(c);
        return 0;
    }
    if (!json_is_array(c))
        return bad(e, param, "must be a string or a list of content parts");
    Mx__V1__ContentParts *set = &r->part_sets[i];
    mx__v1__content_parts__init(set);
    set->parts = &r->part_ptrs[*next_part];
    for (size_t k = 0; k < json_array_size(c); k++) {
        json_t *part = json_array_get(c, k);
        const char *type = json_string_value(json_object_get(part, "type"));
        const char *text = json_string_value(json_object_get(part, "text"));
        if (!type || strcmp(type, "text") != 0 || !text) {
            oa_error_set(e, 400, param, NULL, "'%s'[%zu] must be {\"type\": \"text\", \"text\": string}; other "
                         "content types are not supported", param, k);
            return -1;
        }
        Mx__V1__ContentPart *cp = &r->parts[*next_part];
        mx__v1__content_part__init(cp);
        cp->type = "text";
        cp->text = (char *)text;
        r->part_ptrs[(*next_part)++] = cp;
        set->n_parts++;
    }
    m->content_case = MX__V1__CHAT_MESSAGE__CONTENT_PARTS;
    m->parts = set;
    return 0;
}

static int parse_messages(json_t *o, oa_request *r, oa_error *e)
{
    json_t *ms = field(o, "messages");
    if (!json_is_array(ms) || json_array_size(ms) == 0)
        return bad(e, "messages", "must be a non-empty list of messages");
    size_t n = json_array_size(ms), n_parts = 0;
    for (size_t i = 0; i < n; i++) {
        json_t *c = json_object_get(json_array_get(ms, i), "content");
        n_parts += json_is_array(c) ? json_array_size(c) : 0;
    }
    r->msgs = calloc(n, sizeof *r->msgs);
    r->msg_ptrs = calloc(n, sizeof *r->msg_ptrs);
    r->part_sets = calloc(n, sizeof *r->part_sets);
    r->parts = calloc(n_parts + 1, sizeof *r->parts);
    r->part_ptrs = calloc(n_parts + 1, sizeof *r->part_ptrs);
    if (!r->msgs || !r->msg_ptrs || !r->part_sets || !r->parts || !r->part_ptrs) {
        oa_error_set(e, 500, NULL, NULL, "out of memory");
        return -1;
    }
    size_t next_part = 0;
    for (size_t i = 0; i < n; i++) {
        json_t *m = json_array_get(ms, i);
        char param[64];
        snprintf(param, sizeof param, "messages[%zu]", i);
        if (!json_is_object(m))
            return bad(e, param, "must be an object");
        const char *role = json_string_value(json_object_get(m, "role"));
        if (!role) {
            snprintf(param, sizeof param, "messages[%zu].role", i);
            return bad(e, param, "must be a string");
        }
        mx__v1__chat_message__init(&r->msgs[i]);
        r->msgs[i].role = (char *)role;
        json_t *name = field(m, "name");
        if (name && !json_is_string(name)) {
            snprintf(param, sizeof param, "messages[%zu].name", i);
            return bad(e, param, "must be a string");
        }
        if (name)
            r->msgs[i].name = (char *)json_string_value(name);
        if (parse_content(field(m, "content"), i, r, &next_part, e))
            return -1;
        r->msg_ptrs[i] = &r->msgs[i];
    }
    r->rq.messages = r->msg_ptrs;
    r->rq.n_messages = n;
    bool agp = true;
    if (get_bool(o, "add_generation_prompt", &agp, e))
        return -1;
    r->rq.add_generation_prompt = agp;
    json_t *tools = field(o, "tools");
    if (tools) {
        if (!json_is_array(tools))
            return bad(e, "tools", "must be a list of tool definitions");
        if (json_array_size(tools) > 0) {
            r->tools_json = json_dumps(tools, JSON_COMPACT);
            if (!r->tools_json) {
                oa_error_set(e, 500, NULL, NULL, "out of memory");
                return -1;
            }
            r->rq.tools_json = r->tools_json;
        }
    }
    return 0;
}

int oa_parse(oa_kind kind, const char *body, size_t len, const gw_limits *lim, const char *model_name,
             oa_request *r, oa_error *e)
{
    memset(r, 0, sizeof *r);
    r->kind = kind;
    mx__v1__generate_request__init(&r->rq);
    mx__v1__sampling_params__init(&r->sp);
    mx__v1__logprobs_params__init(&r->lp);
    r->rq.sampling = &r->sp;
    json_error_t je;
    r->root = json_loadb(body, len, JSON_REJECT_DUPLICATES, &je);
    if (!r->root) {
        oa_error_set(e, 400, NULL, NULL, "the body is not valid JSON (line %d, column %d): %s", je.line, je.column,
                     je.text);
        return -1;
    }
    json_t *o = r->root;
    if (!json_is_object(o)) {
        oa_error_set(e, 400, NULL, NULL, "the body must be a JSON object");
        return -1;
    }
    json_t *model = field(o, "model");
    if (model && !json_is_string(model))
        return bad(e, "model", "must be a string");
    if (model && strcmp(json_string_value(model), model_name) != 0) {
        oa_error_set(e, 404, "model", "model_not_found", "The model '%.200s' does not exist; this server serves '%.100s'",
                     json_string_value(model), model_name);
        return -1;
    }
    if (get_bool(o, "stream", &r->stream, e))
        return -1;
    json_t *so = field(o, "stream_options");
    if (so) {
        if (!json_is_object(so))
            return bad(e, "stream_options", "must be an object");
        if (!r->stream)
            return bad(e, "stream_options", "is only allowed with \"stream\": true");
        if (get_bool(so, "include_usage", &r->include_usage, e))
            return -1;
    }
    json_t *user = field(o, "user");
    if (user && !json_is_string(user))
        return bad(e, "user", "must be a string");
    if (neutral_only(o, e) || parse_sampling(o, lim, r, e) || parse_logprobs(o, r, e))
        return -1;
    return kind == OA_CHAT ? parse_messages(o, r, e) : parse_prompt(o, lim, r, e);
}

void oa_request_free(oa_request *r)
{
    json_decref(r->root);
    free(r->prompt_ids);
    free(r->stop_ids);
    free(r->stops);
    free(r->msgs);
    free(r->msg_ptrs);
    free(r->part_sets);
    free(r->parts);
    free(r->part_ptrs);
    free(r->tools_json);
    memset(r, 0, sizeof *r);
}

/* ---- responses ---- */

const char *oa_finish_reason(Mx__V1__FinishReason f)
{
    return f == MX__V1__FINISH_REASON__FINISH_REASON_LENGTH ? "length" : "stop";
}

/* The text of one token as logprobs show it. */
static json_t *token_string(const oa_meta *m, uint32_t id)
{
    if (m->tokens_as_ids || !m->tok) {
        char buf[32];
        snprintf(buf, sizeof buf, "token_id:%u", id);
        return json_string(buf);
    }
    mx_text t = {0};
    int32_t i = (int32_t)id;
    mx_error err = {0};
    json_t *s = mx_tokenizer_decode(m->tok, &i, 1, 0, &t, &err) ? json_string("")
                                                                 : json_stringn(t.data ? t.data : "", t.len);
    mx_text_free(&t);
    return s ? s : json_string("");
}

static json_t *bytes_of(json_t *s)
{
    json_t *a = json_array();
    const unsigned char *p = (const unsigned char *)json_string_value(s);
    for (size_t i = 0; a && p && i < json_string_length(s); i++)
        json_array_append_new(a, json_integer(p[i]));
    return a;
}

/* The logprobs object of tokens [from, to), or null when the request did not ask for them. */
static json_t *logprobs_json(const oa_meta *m, const gw_request *r, int from, int to)
{
    if (!r->out_logprob)
        return json_null();
    int tn = (int)r->sampling.top_n;
    if (m->kind == OA_CHAT) {
        json_t *content = json_array();
        for (int t = from; t < to; t++) {
            json_t *tok = token_string(m, r->out_ids[t]), *top = json_array();
            for (int j = 0; j < tn; j++) {
                json_t *alt = token_string(m, r->top_ids[(size_t)t * tn + j]);
                json_array_append_new(top, json_pack("{s:o, s:f, s:o}", "token", alt, "logprob",
                                                     (double)r->top_lp[(size_t)t * tn + j], "bytes", bytes_of(alt)));
            }
            json_array_append_new(content, json_pack("{s:o, s:f, s:o, s:o}", "token", tok, "logprob",
                                                     (double)r->out_logprob[t], "bytes", bytes_of(tok), "top_logprobs",
                                                     top));
        }
        return json_pack("{s:o}", "content", content);
    }
    json_t *tokens = json_array(), *lps = json_array(), *tops = json_array(), *offs = json_array();
    size_t off = 0;
    for (int t = from; t < to; t++) {
        json_t *tok = token_string(m, r->out_ids[t]);
        json_array_append_new(offs, json_integer((json_int_t)off));
        off += json_string_length(tok);
        json_array_append_new(tokens, tok);
        json_array_append_new(lps, json_real(r->out_logprob[t]));
        json_t *top = json_object();
        for (int j = 0; j < tn; j++) {
            json_t *alt = token_string(m, r->top_ids[(size_t)t * tn + j]);
            json_object_set_new(top, json_string_value(alt), json_real(r->top_lp[(size_t)t * tn + j]));
            json_decref(alt);
        }
        json_array_append_new(tops, top);
    }
    return json_pack("{s:o, s:o, s:o, s:o}", "tokens", tokens, "token_logprobs", lps, "top_logprobs", tops,
                     "text_offset", offs);
}

static json_t *usage_json(const gw_request *r)
{
    return json_pack("{s:i, s:i, s:i}", "prompt_tokens", r->n_prompt, "completion_tokens", r->n_out, "total_tokens",
                     r->n_prompt + r->n_out);
}

/* vLLM's stop_reason: the stop string or stop token id that ended the request; null otherwise. */
static json_t *stop_reason(const gw_request *r)
{
    if (r->matched_stop_str >= 0)
        return json_string(r->stop_strs[r->matched_stop_str]);
    if (r->has_matched_stop)
        return json_integer(r->matched_stop);
    return json_null();
}

static json_t *envelope(const oa_meta *m, bool chunk, json_t *choices)
{
    const char *object = m->kind == OA_CHAT ? (chunk ? "chat.completion.chunk" : "chat.completion") : "text_completion";
    return json_pack("{s:s, s:s, s:I, s:s, s:o}", "id", m->id, "object", object, "created", (json_int_t)m->created,
                     "model", m->model, "choices", choices);
}

json_t *oa_response(const oa_meta *m, const gw_request *r)
{
    const char *text = r->text.data ? r->text.data : "";
    json_t *choice;
    if (m->kind == OA_CHAT)
        choice = json_pack("{s:i, s:{s:s, s:s}, s:o, s:s, s:o}", "index", 0, "message", "role", "assistant", "content",
                           text, "logprobs", logprobs_json(m, r, 0, r->n_out), "finish_reason",
                           oa_finish_reason(r->finish), "stop_reason", stop_reason(r));
    else
        choice = json_pack("{s:i, s:s, s:o, s:s, s:o}", "index", 0, "text", text, "logprobs",
                           logprobs_json(m, r, 0, r->n_out), "finish_reason", oa_finish_reason(r->finish),
                           "stop_reason", stop_reason(r));
    json_t *o = envelope(m, false, json_pack("[o]", choice));
    if (o)
        json_object_set_new(o, "usage", usage_json(r));
    return o;
}

json_t *oa_chunk(const oa_meta *m, const gw_request *r, const char *text, int from, int to, const char *finish,
                 bool role_delta, bool include_usage)
{
    json_t *choice;
    if (m->kind == OA_CHAT) {
        json_t *delta = json_object();
        if (role_delta)
            json_object_set_new(delta, "role", json_string("assistant"));
        if (role_delta || text[0])
            json_object_set_new(delta, "content", json_string(text));
        choice = json_pack("{s:i, s:o, s:o, s:o}", "index", 0, "delta", delta, "logprobs",
                           to > from ? logprobs_json(m, r, from, to) : json_null(), "finish_reason",
                           finish ? json_string(finish) : json_null());
    } else {
        choice = json_pack("{s:i, s:s, s:o, s:o}", "index", 0, "text", text, "logprobs",
                           to > from ? logprobs_json(m, r, from, to) : json_null(), "finish_reason",
                           finish ? json_string(finish) : json_null());
    }
    if (choice && finish)
        json_object_set_new(choice, "stop_reason", stop_reason(r));
    json_t *o = envelope(m, true, json_pack("[o]", choice));
    if (o && include_usage)
        json_object_set_new(o, "usage", json_null());
    return o;
}

json_t *oa_usage_chunk(const oa_meta *m, const gw_request *r)
{
    json_t *o = envelope(m, true, json_array());
    if (o)
        json_object_set_new(o, "usage", usage_json(r));
    return o;
}
