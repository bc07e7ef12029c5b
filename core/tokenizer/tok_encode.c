/* tok_encode.c - text -> ids: find added tokens in the raw text, normalize the rest, find
 * added tokens again in the normalized text, pre-tokenize, run BPE on every piece. The order
 * of these steps is the reference implementations'; changing it changes ids. */
#include "core/tokenizer/tok_internal.h"

#include <stdlib.h>
#include <string.h>

typedef struct {
    size_t off, len;
    int32_t id; /* -1: text */
    int lstrip, rstrip;
} section;

typedef struct {
    section *s;
    size_t n, cap;
} sections;

static int sections_push(sections *v, section x, mx_error *err)
{
    if (v->n == v->cap) {
        size_t cap = v->cap ? v->cap * 2 : 16;
        section *p = realloc(v->s, cap * sizeof *p);
        if (!p)
            return mx_fail(err, MX_ENOMEM, "tokenizer: out of memory");
        v->s = p;
        v->cap = cap;
    }
    v->s[v->n++] = x;
    return 0;
}

static size_t trim_end(const char *s, size_t len)
{
    while (len > 0) {
        size_t b = len - 1;
        while (b > 0 && ((unsigned char)s[b] & 0xC0) == 0x80)
            b--;
        uint32_t cp;
        if (utf8_char((const unsigned char *)s + b, len - b, &cp) <= 0 || !js_is_space(cp))
            break;
        len = b;
    }
    return len;
}

static size_t trim_start(const char *s, size_t len)
{
    size_t i = 0;
    while (i < len) {
        uint32_t cp;
        int k = utf8_char((const unsigned char *)s + i, len - i, &cp);
        if (k <= 0 || !js_is_space(cp))
            break;
        i += (size_t)k;
    }
    return i;
}

/* Cuts s into text and added-token sections (leftmost, longest match), then applies the
 * tokens' lstrip/rstrip to the neighbouring text. */
static int split_added(const tok_added_set *set, const char *s, size_t n, int allow_special,
                       sections *out, mx_error *err)
{
    out->n = 0;
    size_t i = 0, start = 0;
    while (i < n && set->n) {
        unsigned char b = (unsigned char)s[i];
        const struct added_cand *hit = NULL;
        for (uint32_t c = set->first[b]; c < set->first[b + 1]; c++) {
            const struct added_cand *a = &set->c[c];
            if ((allow_special || !a->special) && a->len <= n - i && memcmp(s + i, a->s, a->len) == 0) {
                hit = a;
                break;
            }
        }
        if (!hit) {
            i++;
            continue;
        }
        if (i > start && sections_push(out, (section){ start, i - start, -1, 0, 0 }, err) < 0)
            return err->code;
        if (sections_push(out, (section){ i, hit->len, hit->id, hit->lstrip, hit->rstrip }, err) < 0)
            return err->code;
        i += hit->len;
        start = i;
    }
    if (start < n && sections_push(out, (section){ start, n - start, -1, 0, 0 }, err) < 0)
        return err->code;
    for (size_t k = 0; k < out->n; k++) {
        if (out->s[k].id < 0)
            continue;
        section *prev = k > 0 ? &out->s[k - 1] : NULL, *next = k + 1 < out->n ? &out->s[k + 1] : NULL;
        if (out->s[k].lstrip && prev && prev->id < 0)
            prev->len = trim_end(s + prev->off, prev->len);
        if (out->s[k].rstrip && next && next->id < 0) {
            size_t cut = trim_start(s + next->off, next->len);
            next->off += cut;
            next->len -= cut;
        }
    }
    return 0;
}

typedef struct {
    mx_text buf;
    tok_spans pieces;
    sections inner;
    pcre2_match_data *md;
} encode_state;

static int encode_plain(const mx_tokenizer *t, encode_state *st, const char *s, size_t n,
                        mx_tok_ids *out, mx_error *err)
{
    st->buf.len = 0;
    st->pieces.n = 0;
    if (mx_text_append(&st->buf, s, n, err) < 0 || spans_push(&st->pieces, 0, n, err) < 0)
        return err->code;
    if (t->pretok && pretok_apply(t->pretok, &st->buf, &st->pieces, st->md, err) < 0)
        return err->code;
    for (size_t i = 0; i < st->pieces.n; i++) {
        tok_span p = st->pieces.s[i];
        if (bpe_encode_word(t, (const unsigned char *)st->buf.data + p.off, p.len, out, err) < 0)
            return err->code;
    }
    return 0;
}

static int encode_section(const mx_tokenizer *t, encode_state *st, const char *s, size_t n,
                          int allow_special, mx_tok_ids *out, mx_error *err)
{
    mx_text norm = { 0 };
    if (t->normalizer) {
        if (normalizer_apply(t->normalizer, s, n, &norm, err) < 0) {
            mx_text_free(&norm);
            return err->code;
        }
        s = norm.data;
        n = norm.len;
    }
    int rc = 0;
    if (n > 0 && t->norm_set.n == 0) {
        rc = encode_plain(t, st, s, n, out, err);
    } else if (n > 0) {
        rc = split_added(&t->norm_set, s, n, allow_special, &st->inner, err);
        sections inner = st->inner; /* encode_plain does not touch st->inner */
        for (size_t k = 0; rc == 0 && k < inner.n; k++) {
            if (inner.s[k].id >= 0)
                rc = mx_tok_ids_push(out, inner.s[k].id, err);
            else if (inner.s[k].len)
                rc = encode_plain(t, st, s + inner.s[k].off, inner.s[k].len, out, err);
        }
    }
    mx_text_free(&norm);
    return rc;
}

int mx_tokenizer_encode(const mx_tokenizer *t, const char *text, size_t len, int allow_special,
                        mx_tok_ids *out, mx_error *err)
{
    mx_error local;
    if (!err)
        err = &local;
    size_t bad = utf8_valid_prefix((const unsigned char *)text, len);
    if (bad != len)
        return mx_fail(err, MX_EINVAL, "input text is not valid UTF-8 (bad byte 0x%02X at offset %zu)",
                       (unsigned char)text[bad], bad);
    encode_state st = { 0 };
    sections outer = { 0 };
    st.md = pcre2_match_data_create(16, NULL);
    int rc = st.md ? split_added(&t->raw_set, text, len, allow_special, &outer, err)
                   : mx_fail(err, MX_ENOMEM, "tokenizer: out of memory");
    for (size_t k = 0; rc == 0 && k < outer.n; k++) {
        if (outer.s[k].id >= 0)
            rc = mx_tok_ids_push(out, outer.s[k].id, err);
        else if (outer.s[k].len)
            rc = encode_section(t, &st, text + outer.s[k].off, outer.s[k].len, allow_special, out, err);
    }
    free(outer.s);
    free(st.inner.s);
    free(st.pieces.s);
    mx_text_free(&st.buf);
    if (st.md)
        pcre2_match_data_free(st.md);
    return rc;
}
