/* tok_normalize.c - normalizers of tokenizer.json (NFC, NFD, NFKC, NFKD, Lowercase, Replace,
 * Prepend, Sequence), applied to text before pre-tokenization. Unicode work is utf8proc's. */
#include "core/tokenizer/tok_internal.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

void normalizer_free(tok_normalizer *n)
{
    for (size_t i = 0; i < n->n_children; i++)
        normalizer_free(&n->children[i]);
    free(n->children);
    tok_regex_free(&n->pattern);
    free(n->content);
    memset(n, 0, sizeof *n);
}

int normalizer_parse(tok_normalizer *n, const void *json, mx_error *err)
{
    const json_t *j = json;
    memset(n, 0, sizeof *n);
    const char *type = json_string_value(json_object_get(j, "type"));
    if (!json_is_object(j) || !type)
        return mx_fail(err, MX_EFORMAT, "normalizer: expected an object with a \"type\"");
    static const struct { const char *name; norm_type t; } simple[] = {
        { "NFC", NORM_NFC }, { "NFD", NORM_NFD }, { "NFKC", NORM_NFKC }, { "NFKD", NORM_NFKD },
        { "Lowercase", NORM_LOWERCASE },
    };
    for (size_t i = 0; i < sizeof simple / sizeof simple[0]; i++)
        if (strcmp(type, simple[i].name) == 0) {
            n->type = simple[i].t;
            return 0;
        }
    if (strcmp(type, "Sequence") == 0) {
        const json_t *list = json_object_get(j, "normalizers");
        if (!json_is_array(list))
            return mx_fail(err, MX_EFORMAT, "normalizer Sequence: \"normalizers\" is not a list");
        n->type = NORM_SEQUENCE;
        size_t k = json_array_size(list);
        n->children = calloc(k ? k : 1, sizeof *n->children);
        if (!n->children)
            return mx_fail(err, MX_ENOMEM, "tokenizer: out of memory");
        for (size_t i = 0; i < k; i++) {
            n->n_children = i + 1;
            if (normalizer_parse(&n->children[i], json_array_get(list, i), err) < 0)
                return err->code;
        }
        return 0;
    }
    if (strcmp(type, "Prepend") == 0 || strcmp(type, "Replace") == 0) {
        int prepend = type[0] == 'P';
        const char *c = json_string_value(json_object_get(j, prepend ? "prepend" : "content"));
        if (!c)
            return mx_fail(err, MX_EFORMAT, "normalizer %s: missing \"%s\"", type,
                           prepend ? "prepend" : "content");
        n->type = prepend ? NORM_PREPEND : NORM_REPLACE;
        n->content = strdup(c);
        if (!n->content)
            return mx_fail(err, MX_ENOMEM, "tokenizer: out of memory");
        if (prepend)
            return 0;
        const json_t *pat = json_object_get(j, "pattern");
        const json_t *re = json_object_get(pat, "Regex"), *lit = json_object_get(pat, "String");
        const json_t *s = re ? re : lit;
        if (!json_is_string(s))
            return mx_fail(err, MX_EFORMAT, "normalizer Replace: pattern needs \"Regex\" or \"String\"");
        return tok_regex_compile(&n->pattern, json_string_value(s), json_string_length(s), re == NULL,
                                 "normalizer Replace pattern", err);
    }
    return mx_fail(err, MX_EUNSUPPORTED, "normalizer type '%s' is not supported", type);
}

static int unicode_form(norm_type t, const char *s, size_t len, mx_text *out, mx_error *err)
{
    size_t i = 0;
    while (i < len && (unsigned char)s[i] < 0x80)
        i++;
    if (i == len) /* ASCII is unchanged by every normalization form */
        return mx_text_append(out, s, len, err);
    int opts = UTF8PROC_STABLE;
    if (t == NORM_NFC || t == NORM_NFKC)
        opts |= UTF8PROC_COMPOSE;
    else
        opts |= UTF8PROC_DECOMPOSE;
    if (t == NORM_NFKC || t == NORM_NFKD)
        opts |= UTF8PROC_COMPAT;
    utf8proc_uint8_t *dst = NULL;
    utf8proc_ssize_t n = utf8proc_map((const utf8proc_uint8_t *)s, (utf8proc_ssize_t)len, &dst, opts);
    if (n < 0)
        return mx_fail(err, MX_EINVAL, "normalizer: %s", utf8proc_errmsg(n));
    int rc = mx_text_append(out, dst, (size_t)n, err);
    free(dst);
    return rc;
}

static int lowercase(const char *s, size_t len, mx_text *out, mx_error *err)
{
    for (size_t i = 0; i < len;) {
        utf8proc_int32_t cp;
        utf8proc_ssize_t k = utf8proc_iterate((const utf8proc_uint8_t *)s + i, (utf8proc_ssize_t)(len - i), &cp);
        if (k <= 0)
            return mx_fail(err, MX_EINVAL, "normalizer Lowercase: invalid UTF-8");
        utf8proc_uint8_t enc[4];
        utf8proc_ssize_t m = utf8proc_encode_char(utf8proc_tolower(cp), enc);
        if (mx_text_append(out, enc, (size_t)m, err) < 0)
            return err->code;
        i += (size_t)k;
    }
    return 0;
}

static int replace(const tok_normalizer *n, const char *s, size_t len, mx_text *out, mx_error *err)
{
    pcre2_match_data *md = pcre2_match_data_create_from_pattern(n->pattern.code, NULL);
    tok_spans m = { 0 };
    int rc = md ? regex_find_all(&n->pattern, s, len, &m, md, err)
                : mx_fail(err, MX_ENOMEM, "tokenizer: out of memory");
    size_t pos = 0;
    for (size_t i = 0; rc == 0 && i < m.n; i++) {
        if (m.s[i].len == 0 && m.s[i].off < pos)
            continue;
        rc = mx_text_append(out, s + pos, m.s[i].off - pos, err);
        if (rc == 0)
            rc = mx_text_append(out, n->content, strlen(n->content), err);
        pos = m.s[i].off + m.s[i].len;
    }
    if (rc == 0)
        rc = mx_text_append(out, s + pos, len - pos, err);
    free(m.s);
    pcre2_match_data_free(md);
    return rc;
}

int normalizer_apply(const tok_normalizer *n, const char *s, size_t len, mx_text *out, mx_error *err)
{
    switch (n->type) {
    case NORM_NFC: case NORM_NFD: case NORM_NFKC: case NORM_NFKD:
        return unicode_form(n->type, s, len, out, err);
    case NORM_LOWERCASE:
        return lowercase(s, len, out, err);
    case NORM_REPLACE:
        return replace(n, s, len, out, err);
    case NORM_PREPEND:
        if (mx_text_append(out, n->content, strlen(n->content), err) < 0)
            return err->code;
        return mx_text_append(out, s, len, err);
    case NORM_SEQUENCE:
        break;
    }
    mx_text cur = { 0 };
    if (mx_text_append(&cur, s, len, err) < 0)
        return err->code;
    for (size_t i = 0; i < n->n_children; i++) {
        mx_text next = { 0 };
        if (normalizer_apply(&n->children[i], cur.data, cur.len, &next, err) < 0) {
            mx_text_free(&cur);
            mx_text_free(&next);
            return err->code;
        }
        mx_text_free(&cur);
        cur = next;
        if (!cur.data && mx_text_append(&cur, "", 0, err) < 0)
            return err->code;
    }
    int rc = mx_text_append(out, cur.data, cur.len, err);
    mx_text_free(&cur);
    return rc;
}
