/* text.c - tokenizer loading, chat-format choice and prompt encoding for the gateway (see
 * text.h). The chat template is recognised by its fingerprint, never interpreted: only the two
 * MiniMax templates that core/tokenizer renders natively are served. */
#include "text.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/limits.h"

/* Which native renderer matches a Jinja chat template's text; -1 when none does. Both MiniMax
 * templates open turns with "<beginning_of_sentence>user name=user"; only M1 declares tools
 * with "tool_setting=tools". */
static int recognise_template(const char *tpl)
{
    if (!strstr(tpl, "<beginning_of_sentence>user name=user") || !strstr(tpl, "ai name=assistant"))
        return -1;
    return strstr(tpl, "tool_setting=tools") ? MX_CHAT_MINIMAX_M1 : MX_CHAT_MINIMAX_TEXT01;
}

/* chat_template of tokenizer_config.json next to the tokenizer: a string, or a list of
 * {name, template} whose "default" entry is used. Sets t->chat / t->fmt / t->no_chat. */
static void choose_auto(gw_text *t, const char *tok_path)
{
    char path[MX_PATH_BUF];
    const char *slash = strrchr(tok_path, '/');
    int dir_len = slash ? (int)(slash - tok_path) : 1;
    snprintf(path, sizeof path, "%.*s/tokenizer_config.json", dir_len, slash ? tok_path : ".");
    json_error_t je;
    json_t *cfg = json_load_file(path, 0, &je);
    json_t *tpl = cfg ? json_object_get(cfg, "chat_template") : NULL;
    if (json_is_array(tpl)) {
        json_t *pick = NULL, *e;
        size_t i;
        json_array_foreach(tpl, i, e) {
            const char *name = json_string_value(json_object_get(e, "name"));
            if (name && strcmp(name, "default") == 0)
                pick = json_object_get(e, "template");
        }
        tpl = pick;
    }
    t->chat = true;
    t->fmt = MX_CHAT_MINIMAX_TEXT01; /* the served model's template when nothing says otherwise */
    if (json_is_string(tpl)) {
        int f = recognise_template(json_string_value(tpl));
        if (f < 0) {
            t->chat = false;
            snprintf(t->no_chat, sizeof t->no_chat,
                     "the chat_template in %.500s is not one this gateway renders (minimax-text-01, minimax-m1); "
                     "set gateway.chat_format",
                     path);
        } else {
            t->fmt = (mx_chat_format)f;
        }
    }
    json_decref(cfg);
}

int gw_text_load(const gw_config *cfg, int vocab_size, gw_text *t, mx_error *err)
{
    memset(t, 0, sizeof *t);
    t->vocab_size = vocab_size;
    char path[MX_PATH_BUF];
    bool explicit_path = cfg->tokenizer[0] != '\0';
    if (explicit_path)
        snprintf(path, sizeof path, "%s", cfg->tokenizer);
    else
        snprintf(path, sizeof path, "%s/tokenizer.json", cfg->model);
    if (!explicit_path && access(path, F_OK) != 0) {
        snprintf(t->no_tok, sizeof t->no_tok, "the gateway has no tokenizer (%.500s does not exist; set gateway.tokenizer)",
                 path);
        snprintf(t->no_chat, sizeof t->no_chat, "%s", t->no_tok);
        return 0;
    }
    if (mx_tokenizer_load(path, &t->tok, err))
        return mx_error_prefix(err, "gateway.tokenizer %s", path);
    if (strcmp(cfg->chat_format, "none") == 0) {
        snprintf(t->no_chat, sizeof t->no_chat, "chat templates are off (gateway.chat_format = \"none\")");
    } else if (strcmp(cfg->chat_format, "auto") == 0) {
        choose_auto(t, path);
    } else {
        if (mx_chat_format_from_name(cfg->chat_format, &t->fmt, err)) {
            gw_text_free(t);
            return mx_error_prefix(err, "gateway.chat_format");
        }
        t->chat = true;
    }
    return 0;
}

void gw_text_free(gw_text *t)
{
    mx_tokenizer_free(t->tok);
    t->tok = NULL;
    t->chat = false;
}

int gw_text_require(const gw_text *t, const char *field, bool chat, mx_error *err)
{
    if (!t->tok)
        return mx_fail(err, MX_EUNSUPPORTED, "%s needs the tokenizer: %s; send prompt_ids", field, t->no_tok);
    if (chat && !t->chat)
        return mx_fail(err, MX_EUNSUPPORTED, "%s needs a chat template: %s", field, t->no_chat);
    return 0;
}

/* Ids the tokenizer defines but the model has no logits for cannot be fed to the model. */
static int check_ids(const gw_text *t, const char *field, const mx_tok_ids *ids, mx_error *err)
{
    for (size_t i = 0; i < ids->len; i++)
        if (ids->ids[i] < 0 || ids->ids[i] >= t->vocab_size)
            return mx_fail(err, MX_EINVAL, "%s encodes to token id %d, outside the model's vocabulary (%d)", field,
                           (int)ids->ids[i], t->vocab_size);
    return 0;
}

int gw_text_encode_plain(const gw_text *t, const char *field, const char *text, mx_tok_ids *out, mx_error *err)
{
    MX_TRY(gw_text_require(t, field, false, err));
    if (mx_tokenizer_encode(t->tok, text, strlen(text), 0, out, err))
        return mx_error_prefix(err, "%s", field);
    return check_ids(t, field, out, err);
}

/* One ChatMessage as the renderer's JSON object: role, content (string or text parts), name. */
static json_t *message_json(const Mx__V1__ChatMessage *m, size_t i, mx_error *err)
{
    json_t *o = json_object(), *content = NULL;
    if (m->content_case == MX__V1__CHAT_MESSAGE__CONTENT_PARTS) {
        content = json_array();
        const Mx__V1__ContentParts *ps = m->parts;
        for (size_t k = 0; content && ps && k < ps->n_parts; k++) {
            const Mx__V1__ContentPart *p = ps->parts[k];
            if (strcmp(p->type, "text") != 0) {
                json_decref(o);
                json_decref(content);
                mx_fail(err, MX_EINVAL, "messages[%zu].parts[%zu].type is \"%s\"; only \"text\" is supported", i, k,
                        p->type);
                return NULL;
            }
            json_array_append_new(content, json_pack("{s:s, s:s}", "type", "text", "text", p->text));
        }
    } else {
        /* an unset content counts as the empty string */
        content = json_string(m->content_case == MX__V1__CHAT_MESSAGE__CONTENT_TEXT ? m->text : "");
    }
    if (!o || !content || json_object_set_new(o, "role", json_string(m->role)) ||
        json_object_set_new(o, "content", content) ||
        (m->name[0] && json_object_set_new(o, "name", json_string(m->name)))) {
        json_decref(o);
        mx_fail(err, MX_EINVAL, "messages[%zu]: role, name and content must be valid UTF-8", i);
        return NULL;
    }
    return o;
}

static int check_tools(const char *tools_json, mx_error *err)
{
    json_error_t je;
    json_t *tools = json_loads(tools_json, JSON_DECODE_ANY, &je);
    int ok = json_is_array(tools);
    json_decref(tools);
    if (!tools)
        return mx_fail(err, MX_EINVAL, "tools_json: not valid JSON (line %d, column %d: %s)", je.line, je.column,
                       je.text);
    if (!ok)
        return mx_fail(err, MX_EINVAL, "tools_json: must be a JSON array of tool definitions");
    return 0;
}

int gw_text_encode_chat(const gw_text *t, Mx__V1__ChatMessage *const *msgs, size_t n_msgs, const char *tools_json,
                        bool add_generation_prompt, mx_tok_ids *out, mx_text *rendered, mx_error *err)
{
    MX_TRY(gw_text_require(t, "messages", true, err));
    bool has_tools = tools_json && tools_json[0];
    if (has_tools)
        MX_TRY(check_tools(tools_json, err));
    json_t *arr = json_array();
    if (!arr)
        return mx_fail(err, MX_ENOMEM, "out of memory");
    for (size_t i = 0; i < n_msgs; i++) {
        json_t *m = message_json(msgs[i], i, err);
        if (!m) {
            json_decref(arr);
            return err->code;
        }
        json_array_append_new(arr, m);
    }
    char *mj = json_dumps(arr, JSON_COMPACT);
    json_decref(arr);
    if (!mj)
        return mx_fail(err, MX_ENOMEM, "out of memory");
    mx_text prompt = {0};
    int rc = mx_chat_render_json(t->fmt, mj, has_tools ? tools_json : NULL, add_generation_prompt, &prompt, err);
    free(mj);
    if (!rc && mx_tokenizer_encode(t->tok, prompt.data ? prompt.data : "", prompt.len, 1, out, err))
        rc = mx_error_prefix(err, "messages");
    if (!rc)
        rc = check_ids(t, "messages", out, err);
    if (!rc && rendered)
        rc = mx_text_append(rendered, prompt.data, prompt.len, err);
    mx_text_free(&prompt);
    return rc;
}
