/* tokenize_rpc.c - Tokenize / Detokenize (see tokenize_rpc.h). Tokenize encodes `text` as
 * plain text (special-token text is not recognised, as for GenerateRequest.prompt) or renders
 * `messages` with the chat template (marker tokens recognised), exactly as Generate does. */
#include "tokenize_rpc.h"

#include <stdlib.h>
#include <string.h>

#include "core/clock.h"
#include "core/rpc/pb.h"
#include "core/rpc/status.h"

static int tokenize(const gw_tokenize_ctx *c, const Mx__V1__TokenizeRequest *rq, mx_tok_ids *ids, mx_error *err)
{
    bool has_text = rq->text[0] != '\0', has_tools = rq->tools_json[0] != '\0';
    if (has_text && rq->n_messages)
        return mx_fail(err, MX_EINVAL, "set only one of text and messages");
    if (has_tools && !rq->n_messages)
        return mx_fail(err, MX_EINVAL, "tools_json: only used with messages");
    if (rq->n_messages)
        return gw_text_encode_chat(c->text, rq->messages, rq->n_messages, rq->tools_json, rq->add_generation_prompt,
                                   ids, NULL, err);
    MX_TRY(gw_text_require(c->text, "Tokenize", false, err));
    if (rq->add_special_tokens && c->bos_id >= 0)
        MX_TRY(mx_tok_ids_push(ids, c->bos_id, err));
    return gw_text_encode_plain(c->text, "text", rq->text, ids, err);
}

/* The text of every id on its own (lossy for ids that hold part of a character). */
static int pieces_of(const mx_tokenizer *tok, const mx_tok_ids *ids, mx_text *texts, char **ptrs, mx_error *err)
{
    for (size_t i = 0; i < ids->len; i++) {
        MX_TRY(mx_tokenizer_decode(tok, &ids->ids[i], 1, 0, &texts[i], err));
        MX_TRY(mx_text_append(&texts[i], "", 0, err));
        ptrs[i] = texts[i].data;
    }
    return 0;
}

/* The access line of a Tokenize or Detokenize call: the count of ids it produced or was given
 * in prompt_tokens (-1 when it has none: a request that did not unpack, a failed Tokenize). */
static void log_access(const gw_tokenize_ctx *c, mx_rpc_call *call, const char *method, int64_t n_ids, double t0)
{
    mx_log_access(c->log, method, mx_rpc_status_name(mx_rpc_call_status(call)), n_ids, -1, mx_now_ms() - t0, NULL);
}

void gw_on_tokenize(mx_rpc_call *call, const uint8_t *req, size_t len, void *user)
{
    const gw_tokenize_ctx *c = user;
    double t0 = mx_now_ms();
    mx_error err = {0};
    ProtobufCMessage *msg;
    if (mx_rpc_pb_unpack(&mx__v1__tokenize_request__descriptor, req, len, &msg, &err)) {
        mx_rpc_call_set_error(call, &err);
        log_access(c, call, "Tokenize", -1, t0);
        return;
    }
    mx_tok_ids ids = {0};
    mx_text *texts = NULL;
    char **ptrs = NULL;
    int rc = tokenize(c, (const Mx__V1__TokenizeRequest *)msg, &ids, &err);
    protobuf_c_message_free_unpacked(msg, NULL);
    if (!rc) {
        texts = calloc(ids.len ? ids.len : 1, sizeof *texts);
        ptrs = calloc(ids.len ? ids.len : 1, sizeof *ptrs);
        rc = (!texts || !ptrs) ? mx_fail(&err, MX_ENOMEM, "out of memory") : 0;
    }
    if (!rc)
        rc = pieces_of(c->text->tok, &ids, texts, ptrs, &err);
    if (!rc) {
        Mx__V1__TokenizeResponse m = MX__V1__TOKENIZE_RESPONSE__INIT;
        m.token_ids = (uint32_t *)ids.ids; /* non-negative ids */
        m.n_token_ids = ids.len;
        m.pieces = ptrs;
        m.n_pieces = ids.len;
        rc = mx_rpc_pb_write(call, &m.base, &err);
    }
    if (rc)
        mx_rpc_call_set_error(call, &err);
    log_access(c, call, "Tokenize", rc ? -1 : (int64_t)ids.len, t0);
    for (size_t i = 0; texts && i < ids.len; i++)
        mx_text_free(&texts[i]);
    free(texts);
    free(ptrs);
    mx_tok_ids_free(&ids);
}

static int detokenize(const gw_tokenize_ctx *c, const Mx__V1__DetokenizeRequest *rq, mx_text *out, mx_error *err)
{
    MX_TRY(gw_text_require(c->text, "Detokenize", false, err));
    const mx_tokenizer *tok = c->text->tok;
    mx_text probe = {0};
    for (size_t i = 0; i < rq->n_token_ids; i++) {
        int32_t id = rq->token_ids[i] > INT32_MAX ? -1 : (int32_t)rq->token_ids[i];
        probe.len = 0;
        if (id < 0 || mx_tokenizer_decode(tok, &id, 1, 0, &probe, err) == MX_ERANGE) {
            mx_text_free(&probe);
            return mx_fail(err, MX_EINVAL, "token_ids[%zu] = %u is not defined by the tokenizer (ids 0..%d)", i,
                           rq->token_ids[i], (int)mx_tokenizer_n_ids(tok) - 1);
        }
    }
    mx_text_free(&probe);
    MX_TRY(mx_tokenizer_decode(tok, (const int32_t *)rq->token_ids, rq->n_token_ids, rq->skip_special_tokens, out,
                               err));
    return mx_text_append(out, "", 0, err);
}

void gw_on_detokenize(mx_rpc_call *call, const uint8_t *req, size_t len, void *user)
{
    const gw_tokenize_ctx *c = user;
    double t0 = mx_now_ms();
    mx_error err = {0};
    ProtobufCMessage *msg;
    if (mx_rpc_pb_unpack(&mx__v1__detokenize_request__descriptor, req, len, &msg, &err)) {
        mx_rpc_call_set_error(call, &err);
        log_access(c, call, "Detokenize", -1, t0);
        return;
    }
    mx_text text = {0};
    int64_t n_ids = (int64_t)((const Mx__V1__DetokenizeRequest *)msg)->n_token_ids;
    int rc = detokenize(c, (const Mx__V1__DetokenizeRequest *)msg, &text, &err);
    protobuf_c_message_free_unpacked(msg, NULL);
    if (!rc) {
        Mx__V1__DetokenizeResponse m = MX__V1__DETOKENIZE_RESPONSE__INIT;
        m.text = text.data;
        rc = mx_rpc_pb_write(call, &m.base, &err);
    }
    if (rc)
        mx_rpc_call_set_error(call, &err);
    log_access(c, call, "Detokenize", n_ids, t0);
    mx_text_free(&text);
}
