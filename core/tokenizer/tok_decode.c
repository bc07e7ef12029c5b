/* tok_decode.c - ids -> text, whole or streamed. The streaming decoder never emits part of
 * a UTF-8 character: a token may end in the middle of one (byte-level BPE splits characters
 * freely), so its bytes wait for the tokens that complete it. */
#include "core/tokenizer/tok_internal.h"

#include <string.h>

static int id_bytes(const mx_tokenizer *t, int32_t id, const unsigned char **s, size_t *n,
                    mx_error *err)
{
    if (id < 0 || id >= t->n_ids || t->id_len[id] == UINT32_MAX)
        return mx_fail(err, MX_ERANGE, "token id %d is not defined by this tokenizer (ids 0..%d)",
                       (int)id, (int)t->n_ids - 1);
    *s = (const unsigned char *)t->id_blob + t->id_off[id];
    *n = t->id_len[id];
    return 0;
}

int mx_tokenizer_decode(const mx_tokenizer *t, const int32_t *ids, size_t n, int skip_special,
                        mx_text *out, mx_error *err)
{
    mx_error local;
    if (!err)
        err = &local;
    mx_text raw = { 0 };
    int rc = 0;
    for (size_t i = 0; i < n && rc == 0; i++) {
        const unsigned char *s = NULL;
        size_t len = 0;
        rc = id_bytes(t, ids[i], &s, &len, err);
        if (rc == 0 && !(skip_special && t->id_special[ids[i]]))
            rc = mx_text_append(&raw, s, len, err);
    }
    if (rc == 0)
        rc = utf8_append_lossy(out, (const unsigned char *)raw.data, raw.len, err);
    if (rc == 0 && !out->data)
        rc = mx_text_append(out, "", 0, err);
    mx_text_free(&raw);
    return rc;
}

void mx_detok_stream_init(mx_detok_stream *s, const mx_tokenizer *t, int skip_special)
{
    memset(s, 0, sizeof *s);
    s->tok = t;
    s->skip_special = skip_special;
}

/* Adds one byte to the held bytes and emits whatever is now decided: a finished character,
 * or U+FFFD for a prefix that can no longer become one. */
static int feed_byte(mx_detok_stream *s, unsigned char b, mx_text *out, mx_error *err)
{
    s->held[s->n_held++] = b;
    while (s->n_held) {
        uint32_t cp;
        int k = utf8_char(s->held, s->n_held, &cp);
        if (k == 0)
            return 0;
        size_t used = k > 0 ? (size_t)k : (size_t)-k;
        int rc = k > 0 ? mx_text_append(out, s->held, used, err)
                       : mx_text_append(out, "\xEF\xBF\xBD", 3, err);
        if (rc < 0)
            return rc;
        memmove(s->held, s->held + used, s->n_held - used);
        s->n_held -= used;
    }
    return 0;
}

int mx_detok_stream_push(mx_detok_stream *s, int32_t id, mx_text *out, mx_error *err)
{
    mx_error local;
    if (!err)
        err = &local;
    const unsigned char *p = NULL;
    size_t n = 0;
    if (id_bytes(s->tok, id, &p, &n, err) < 0)
        return err->code;
    if (s->skip_special && s->tok->id_special[id])
        return 0;
    for (size_t i = 0; i < n; i++)
        if (feed_byte(s, p[i], out, err) < 0)
            return err->code;
    return 0;
}

int mx_detok_stream_finish(mx_detok_stream *s, mx_text *out, mx_error *err)
{
    if (s->n_held == 0)
        return 0;
    s->n_held = 0;
    return mx_text_append(out, "\xEF\xBF\xBD", 3, err);
}
