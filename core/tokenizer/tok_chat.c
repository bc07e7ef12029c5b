/* tok_chat.c - the MiniMax-Text-01 and MiniMax-M1 chat templates written out in C, one
 * function per template, following the Jinja source (kept in tests/tokenizer/templates/ and
 * checked against @huggingface/jinja) line by line. No template engine, no other formats. */
#include "core/tokenizer/tok_internal.h"
#include "core/tokenizer/tok_json_out.h"

#include <jansson.h>
#include <string.h>

#define BOS "<beginning_of_sentence>"
#define EOS "<end_of_sentence>\n"

int mx_chat_format_from_name(const char *name, mx_chat_format *out, mx_error *err)
{
    if (strcmp(name, "minimax-text-01") == 0)
        *out = MX_CHAT_MINIMAX_TEXT01;
    else if (strcmp(name, "minimax-m1") == 0)
        *out = MX_CHAT_MINIMAX_M1;
    else
        return mx_fail(err, MX_EINVAL, "unknown chat template '%s' (minimax-text-01, minimax-m1)", name);
    return 0;
}

static int put(mx_text *o, const char *s, mx_error *err)
{
    return mx_text_append(o, s, strlen(s), err);
}

static int put_json_str(mx_text *o, const json_t *s, mx_error *err)
{
    return mx_text_append(o, json_string_value(s), json_string_length(s), err);
}

/* A text part's "text": parts are {"type": "text", "text": "..."}. */
static const json_t *part_text(const json_t *part, size_t msg, mx_error *err)
{
    const json_t *t = json_object_get(part, "text");
    if (!json_is_string(t))
        mx_fail(err, MX_EINVAL, "messages[%zu]: content part without a string \"text\"", msg);
    return json_is_string(t) ? t : NULL;
}

/* message['content'][0]['text']; a string content counts as one text part. */
static int first_text(mx_text *o, const json_t *m, size_t i, mx_error *err)
{
    const json_t *c = json_object_get(m, "content");
    if (json_is_string(c))
        return put_json_str(o, c, err);
    if (!json_is_array(c) || json_array_size(c) == 0)
        return mx_fail(err, MX_EINVAL, "messages[%zu]: content must be a string or a non-empty list of parts", i);
    const json_t *t = part_text(json_array_get(c, 0), i, err);
    return t ? put_json_str(o, t, err) : err->code;
}

/* All parts with type == "text", concatenated (the assistant turn). */
static int all_text(mx_text *o, const json_t *m, size_t i, mx_error *err)
{
    const json_t *c = json_object_get(m, "content");
    if (json_is_string(c))
        return put_json_str(o, c, err);
    if (!json_is_array(c))
        return mx_fail(err, MX_EINVAL, "messages[%zu]: content must be a string or a list of parts", i);
    for (size_t k = 0; k < json_array_size(c); k++) {
        const json_t *p = json_array_get(c, k);
        const char *type = json_string_value(json_object_get(p, "type"));
        if (!type || strcmp(type, "text") != 0)
            continue;
        const json_t *t = part_text(p, i, err);
        if (!t || put_json_str(o, t, err) < 0)
            return err->code;
    }
    return 0;
}

static const char *role_of(const json_t *m, size_t i, mx_error *err)
{
    const char *r = json_string_value(json_object_get(m, "role"));
    if (!json_is_object(m) || !r)
        mx_fail(err, MX_EINVAL, "messages[%zu]: needs a string \"role\"", i);
    return r;
}

static int render_text01(const json_t *msgs, const json_t *tools, int gen, mx_text *o, mx_error *err)
{
    for (size_t i = 0; i < json_array_size(msgs); i++) {
        const json_t *m = json_array_get(msgs, i);
        const char *role = role_of(m, i, err);
        int rc;
        if (!role)
            return err->code;
        if (strcmp(role, "system") == 0)
            rc = put(o, BOS "system ai_setting=assistant\n", err) || first_text(o, m, i, err) || put(o, EOS, err);
        else if (strcmp(role, "user") == 0)
            rc = put(o, BOS "user name=user\n", err) || first_text(o, m, i, err) || put(o, EOS, err);
        else if (strcmp(role, "assistant") == 0)
            rc = put(o, BOS "ai name=assistant\n", err) || all_text(o, m, i, err) || put(o, EOS, err);
        else if (strcmp(role, "function") == 0) {
            const json_t *name = json_object_get(m, "name");
            if (!json_is_string(name))
                return mx_fail(err, MX_EINVAL, "messages[%zu]: a function message needs a string \"name\"", i);
            rc = put(o, BOS "system function_response=functions\n{\"name\": \"", err) ||
                 put_json_str(o, name, err) || put(o, "\", \"response\": ", err) ||
                 first_text(o, m, i, err) || put(o, "}" EOS, err);
        } else
            return mx_fail(err, MX_EINVAL, "messages[%zu]: role '%s' is not one of system, user, assistant, function", i, role);
        if (rc)
            return err->code;
    }
    for (size_t k = 0; k < json_array_size(tools); k++)
        if (put(o, BOS "system function_setting=functions\n", err) ||
            tojson_value(o, json_array_get(tools, k), err) || put(o, EOS, err))
            return err->code;
    return gen ? put(o, BOS "ai name=assistant\n", err) : 0;
}

static const char m1_tools_head[] =
    BOS "system tool_setting=tools\nYou are provided with these tools:\n<tools>\n";
static const char m1_tools_tail[] =
    "</tools>\n\nIf you need to call tools, please respond with <tool_calls></tool_calls> XML tags, "
    "and provide tool-name and json-object of arguments, following the format below:\n<tool_calls>\n"
    "{\"name\": <tool-name-1>, \"arguments\": <args-json-object-1>}\n...\n</tool_calls>" EOS;

static int render_m1(const json_t *msgs, const json_t *tools, int gen, mx_text *o, mx_error *err)
{
    mx_text sys = { 0 };
    int rc = put(o, "<begin_of_document>", err);
    for (size_t i = 0; rc == 0 && i < json_array_size(msgs); i++) {
        const json_t *m = json_array_get(msgs, i);
        const char *role = role_of(m, i, err);
        if (!role)
            rc = err->code;
        else if (strcmp(role, "system") == 0)
            rc = first_text(&sys, m, i, err);
    }
    if (rc == 0 && sys.len)
        rc = put(o, BOS "system ai_setting=assistant\n", err) || mx_text_append(o, sys.data, sys.len, err) ||
             put(o, EOS, err);
    mx_text_free(&sys);
    if (rc)
        return err->code;
    if (json_array_size(tools)) {
        if (put(o, m1_tools_head, err))
            return err->code;
        for (size_t k = 0; k < json_array_size(tools); k++)
            if (tojson_value(o, json_array_get(tools, k), err) || put(o, "\n", err))
                return err->code;
        if (put(o, m1_tools_tail, err))
            return err->code;
    }
    for (size_t i = 0; i < json_array_size(msgs); i++) {
        const json_t *m = json_array_get(msgs, i);
        const char *role = role_of(m, i, err);
        if (strcmp(role, "system") == 0)
            continue;
        if (strcmp(role, "user") == 0)
            rc = put(o, BOS "user name=user\n", err) || first_text(o, m, i, err) || put(o, EOS, err);
        else if (strcmp(role, "assistant") == 0)
            rc = put(o, BOS "ai name=assistant\n", err) || all_text(o, m, i, err) || put(o, EOS, err);
        else if (strcmp(role, "tool") == 0) {
            const json_t *c = json_object_get(m, "content");
            if (!json_is_array(c))
                return mx_fail(err, MX_EINVAL, "messages[%zu]: tool content must be a list of {name, text}", i);
            rc = put(o, BOS "tool name=tools\n", err);
            for (size_t k = 0; rc == 0 && k < json_array_size(c); k++) {
                const json_t *p = json_array_get(c, k), *name = json_object_get(p, "name");
                const json_t *text = json_object_get(p, "text");
                if (!json_is_string(name) || !json_is_string(text))
                    return mx_fail(err, MX_EINVAL, "messages[%zu]: tool result needs string \"name\" and \"text\"", i);
                rc = put(o, "tool name: ", err) || put_json_str(o, name, err) || put(o, "\ntool result: ", err) ||
                     put_json_str(o, text, err) || put(o, "\n\n", err);
            }
            rc = rc || put(o, EOS, err);
        } else
            return mx_fail(err, MX_EINVAL, "messages[%zu]: role '%s' is not one of system, user, assistant, tool", i, role);
        if (rc)
            return err->code;
    }
    return gen ? put(o, BOS "ai name=assistant\n", err) : 0;
}

int mx_chat_render_json(mx_chat_format fmt, const char *messages_json, const char *tools_json,
                        int add_generation_prompt, mx_text *out, mx_error *err)
{
    mx_error local;
    if (!err)
        err = &local;
    json_error_t je;
    json_t *msgs = json_loads(messages_json, 0, &je), *tools = NULL;
    if (!json_is_array(msgs)) {
        json_decref(msgs);
        return mx_fail(err, MX_EINVAL, "messages: %s", msgs ? "not a JSON array" : je.text);
    }
    if (tools_json) {
        tools = json_loads(tools_json, JSON_DECODE_ANY, &je);
        if (!tools || !(json_is_array(tools) || json_is_null(tools))) {
            json_decref(msgs);
            json_decref(tools);
            return mx_fail(err, MX_EINVAL, "tools: %s", tools ? "not a JSON array" : je.text);
        }
    }
    size_t start = out->len;
    int rc = fmt == MX_CHAT_MINIMAX_M1 ? render_m1(msgs, tools, add_generation_prompt, out, err)
                                       : render_text01(msgs, tools, add_generation_prompt, out, err);
    if (rc != 0) {
        rc = err->code ? err->code : MX_EINTERNAL;
        out->len = start; /* no half-rendered prompt */
        if (out->data)
            out->data[start] = '\0';
    }
    json_decref(msgs);
    json_decref(tools);
    return rc;
}
