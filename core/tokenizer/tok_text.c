/* tok_text.c - UTF-8 validation and decoding functions, the byte-level alphabet, and the
 * growable id list / text buffer of the public API. */
#include "core/tokenizer/tok_internal.h"

#include <stdlib.h>
#include <string.h>

void mx_tok_ids_free(mx_tok_ids *ids)
{
    free(ids->ids);
    memset(ids, 0, sizeof *ids);
}

int mx_tok_ids_push(mx_tok_ids *ids, int32_t id, mx_error *err)
{
    if (ids->len == ids->cap) {
        size_t cap = ids->cap ? ids->cap * 2 : 64;
        int32_t *p = realloc(ids->ids, cap * sizeof *p);
        if (!p)
            return mx_fail(err, MX_ENOMEM, "tokenizer: out of memory for ids");
        ids->ids = p;
        ids->cap = cap;
    }
    ids->ids[ids->len++] = id;
    return 0;
}

void mx_text_free(mx_text *t)
{
    free(t->data);
    memset(t, 0, sizeof *t);
}

int mx_text_append(mx_text *t, const void *bytes, size_t n, mx_error *err)
{
    if (t->len + n + 1 > t->cap) {
        size_t cap = t->cap ? t->cap * 2 : 256;
        while (cap < t->len + n + 1)
            cap *= 2;
        char *p = realloc(t->data, cap);
        if (!p)
            return mx_fail(err, MX_ENOMEM, "tokenizer: out of memory for text");
        t->data = p;
        t->cap = cap;
    }
    if (n)
        memcpy(t->data + t->len, bytes, n);
    t->len += n;
    t->data[t->len] = '\0';
    return 0;
}

int utf8_char(const unsigned char *s, size_t n, uint32_t *cp)
{
    unsigned char c = s[0];
    if (c < 0x80) {
        *cp = c;
        return 1;
    }
    int need;
    uint32_t v, lo = 0x80, hi = 0xBF; /* allowed range of the second byte */
    if (c >= 0xC2 && c <= 0xDF) { need = 1; v = c & 0x1F; }
    else if (c >= 0xE0 && c <= 0xEF) {
        need = 2; v = c & 0x0F;
        if (c == 0xE0) lo = 0xA0;
        if (c == 0xED) hi = 0x9F; /* no surrogates */
    } else if (c >= 0xF0 && c <= 0xF4) {
        need = 3; v = c & 0x07;
        if (c == 0xF0) lo = 0x90;
        if (c == 0xF4) hi = 0x8F;
    } else
        return -1;
    for (int i = 1; i <= need; i++) {
        if ((size_t)i >= n)
            return 0;
        unsigned char b = s[i];
        if (i == 1 ? (b < lo || b > hi) : (b & 0xC0) != 0x80)
            return -i;
        v = (v << 6) | (b & 0x3F);
    }
    *cp = v;
    return need + 1;
}

size_t utf8_valid_prefix(const unsigned char *s, size_t n)
{
    size_t i = 0;
    while (i < n) {
        if (s[i] < 0x80) {
            i++;
            continue;
        }
        uint32_t cp;
        int k = utf8_char(s + i, n - i, &cp);
        if (k <= 0)
            return i;
        i += (size_t)k;
    }
    return n;
}

int utf8_append_lossy(mx_text *out, const unsigned char *s, size_t n, mx_error *err)
{
    size_t i = 0, run = 0;
    if (n == 0)
        return mx_text_append(out, "", 0, err);
    while (i < n) {
        uint32_t cp;
        int k = s[i] < 0x80 ? 1 : utf8_char(s + i, n - i, &cp);
        if (k > 0) {
            i += (size_t)k;
            continue;
        }
        if (mx_text_append(out, s + run, i - run, err) < 0 ||
            mx_text_append(out, "\xEF\xBF\xBD", 3, err) < 0)
            return err ? err->code : MX_ENOMEM;
        i += k == 0 ? n - i : (size_t)-k; /* unfinished tail or maximal bad prefix: one U+FFFD */
        run = i;
    }
    return mx_text_append(out, s + run, n - run, err);
}

int js_is_space(uint32_t c)
{
    return (c >= 0x09 && c <= 0x0D) || c == 0x20 || c == 0xA0 || c == 0x1680 ||
           (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F ||
           c == 0x205F || c == 0x3000 || c == 0xFEFF;
}

/* GPT-2's bytes_to_unicode: printable Latin-1 bytes stand for themselves, the other 68 bytes
 * map in order onto U+0100.. so every byte has a visible character. */
static int byte_is_printable(unsigned b)
{
    return (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
}

uint32_t byte_level_char(unsigned char b)
{
    if (byte_is_printable(b))
        return b;
    uint32_t n = 0;
    for (unsigned x = 0; x < b; x++)
        n += !byte_is_printable(x);
    return 256 + n;
}

int byte_level_byte(uint32_t cp)
{
    if (cp < 256)
        return byte_is_printable(cp) ? (int)cp : -1;
    if (cp >= 256 + 68)
        return -1;
    uint32_t n = cp - 256;
    for (unsigned x = 0; x < 256; x++)
        if (!byte_is_printable(x) && n-- == 0)
            return (int)x;
    return -1;
}
