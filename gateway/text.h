/* text.h - the gateway's text side: the tokenizer and chat template it serves with, and the
 * conversions of a request's text inputs (prompt, messages + tools) into token ids. The
 * tokenizer is optional: without one, every text feature fails with MX_EUNSUPPORTED naming the
 * missing file, and id-only requests still work. Loaded once at start, read-only afterwards. */
#ifndef MX_GW_TEXT_H
#define MX_GW_TEXT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/tokenizer/tokenizer.h"
#include "gw_config.h"
#include "mx/v1/generation.pb-c.h"

typedef struct gw_text {
    mx_tokenizer *tok;        /* owned; NULL = no tokenizer (why in no_tok) */
    bool chat;                /* messages can be rendered (why not in no_chat) */
    mx_chat_format fmt;
    int vocab_size;           /* the model's: encoded ids must stay below it */
    char no_tok[700];
    char no_chat[700];
} gw_text;

/* Loads cfg->tokenizer (or <model>/tokenizer.json when that exists) and picks the chat format.
 * An explicitly configured file that cannot be loaded is an error; a missing default is not. */
int gw_text_load(const gw_config *cfg, int vocab_size, gw_text *out, mx_error *err);
void gw_text_free(gw_text *t);

/* MX_EUNSUPPORTED naming `field` and the reason when the tokenizer (or, for chat, the
 * template) is missing; 0 otherwise. */
int gw_text_require(const gw_text *t, const char *field, bool chat, mx_error *err);

/* Plain text -> ids (special-token text is NOT recognised: it is user content). */
int gw_text_encode_plain(const gw_text *t, const char *field, const char *text, mx_tok_ids *out, mx_error *err);

/* Chat -> rendered prompt -> ids (the template's marker tokens recognised). tools_json may be
 * NULL or "" (no tools); it must be a JSON array otherwise. rendered (may be NULL) receives the
 * prompt text. Errors name messages[i] / tools_json. */
int gw_text_encode_chat(const gw_text *t, Mx__V1__ChatMessage *const *msgs, size_t n_msgs, const char *tools_json,
                        bool add_generation_prompt, mx_tok_ids *out, mx_text *rendered, mx_error *err);

#endif
