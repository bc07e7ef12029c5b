/* tok_pretok.c - pre-tokenizers of tokenizer.json (Sequence, Split, ByteLevel, Digits,
 * Punctuation, Whitespace, WhitespaceSplit): they cut a text into the pieces BPE runs on.
 * All of them are expressed as a regex split; pieces are spans of one buffer. */
#include "core/tokenizer/tok_internal.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* GPT-2's pattern as ByteLevel(use_regex) applies it in @huggingface/tokenizers; \s there is
 * JavaScript's \s, spelled out because it differs from Unicode White_Space. */
#define JS_WS "\\t\\n\\x0B\\f\\r \\x{A0}\\x{1680}\\x{2000}-\\x{200A}\\x{2028}\\x{2029}\\x{202F}\\x{205F}\\x{3000}\\x{FEFF}"
static const char gpt2_pattern[] =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^" JS_WS "\\p{L}\\p{N}]+|[" JS_WS
    "]+(?![^" JS_WS "])|[" JS_WS "]+";

void pretok_free(tok_pretok *p)
{
    for (size_t i = 0; i < p->n_children; i++)
        pretok_free(&p->children[i]);
    free(p->children);
    tok_regex_free(&p->re);
    memset(p, 0, sizeof *p);
}

static int parse_behavior(const json_t *j, split_behavior dflt, split_behavior *out, mx_error *err)
{
    const json_t *b = json_object_get(j, "behavior");
    *out = dflt;
    if (!b || json_is_null(b))
        return 0;
    const char *s = json_string_value(b);
    static const struct { const char *name; split_behavior b; } names[] = {
        { "Removed", SPLIT_REMOVED }, { "Isolated", SPLIT_ISOLATED },
        { "MergedWithPrevious", SPLIT_MERGED_PREV }, { "MergedWithNext", SPLIT_MERGED_NEXT },
        { "Contiguous", SPLIT_CONTIGUOUS },
    };
    for (size_t i = 0; s && i < sizeof names / sizeof names[0]; i++)
        if (strcasecmp(s, names[i].name) == 0) {
            *out = names[i].b;
            return 0;
        }
    return mx_fail(err, MX_EUNSUPPORTED, "pre_tokenizer Split: behavior '%s' is not supported",
                   s ? s : "(not a string)");
}

static int set_split(tok_pretok *p, const char *pattern, split_behavior b, int invert,
                     const char *what, mx_error *err)
{
    p->type = PRE_SPLIT;
    p->behavior = b;
    p->invert = invert;
    return tok_regex_compile(&p->re, pattern, strlen(pattern), 0, what, err);
}

int pretok_parse(tok_pretok *p, const void *json, int *has_byte_level, mx_error *err)
{
    const json_t *j = json;
    memset(p, 0, sizeof *p);
    const char *type = json_string_value(json_object_get(j, "type"));
    if (!json_is_object(j) || !type)
        return mx_fail(err, MX_EFORMAT, "pre_tokenizer: expected an object with a \"type\"");
    if (strcmp(type, "Sequence") == 0) {
        const json_t *list = json_object_get(j, "pretokenizers");
        if (!json_is_array(list))
            return mx_fail(err, MX_EFORMAT, "pre_tokenizer Sequence: \"pretokenizers\" is not a list");
        p->type = PRE_SEQUENCE;
        size_t n = json_array_size(list);
        p->children = calloc(n ? n : 1, sizeof *p->children);
        if (!p->children)
            return mx_fail(err, MX_ENOMEM, "tokenizer: out of memory");
        for (size_t i = 0; i < n; i++) {
            p->n_children = i + 1;
            if (pretok_parse(&p->children[i], json_array_get(list, i), has_byte_level, err) < 0)
                return err ? err->code : MX_EFORMAT;
        }
        return 0;
    }
    if (strcmp(type, "Split") == 0) {
        const json_t *pat = json_object_get(j, "pattern");
        const char *re = json_string_value(json_object_get(pat, "Regex"));
        const char *lit = json_string_value(json_object_get(pat, "String"));
        split_behavior b;
        if (parse_behavior(j, SPLIT_ISOLATED, &b, err) < 0)
            return err->code;
        if (!re && !lit)
            return mx_fail(err, MX_EFORMAT, "pre_tokenizer Split: pattern needs \"Regex\" or \"String\"");
        p->type = PRE_SPLIT;
        p->behavior = b;
        p->invert = json_is_true(json_object_get(j, "invert"));
        const char *s = re ? re : lit;
        size_t len = json_string_length(json_object_get(pat, re ? "Regex" : "String"));
        return tok_regex_compile(&p->re, s, len, re == NULL, "pre_tokenizer Split pattern", err);
    }
    if (strcmp(type, "ByteLevel") == 0) {
        const json_t *ur = json_object_get(j, "use_regex");
        p->type = PRE_BYTE_LEVEL;
        p->add_prefix_space = json_is_true(json_object_get(j, "add_prefix_space"));
        p->use_regex = ur ? json_is_true(ur) : 1;
        *has_byte_level = 1;
        return p->use_regex ? tok_regex_compile(&p->re, gpt2_pattern, strlen(gpt2_pattern), 0,
                                                "ByteLevel regex", err) : 0;
    }
    if (strcmp(type, "Digits") == 0)
        return set_split(p, json_is_true(json_object_get(j, "individual_digits")) ? "[0-9]" : "[0-9]+",
                         SPLIT_ISOLATED, 0, "Digits", err);
    if (strcmp(type, "Punctuation") == 0) {
        split_behavior b;
        if (parse_behavior(j, SPLIT_ISOLATED, &b, err) < 0)
            return err->code;
        return set_split(p, "[\\p{P}!-/:-@\\[-`{-~]", b, 0, "Punctuation", err);
    }
    if (strcmp(type, "Whitespace") == 0)
        return set_split(p, "\\w+|[^\\w\\s]+", SPLIT_REMOVED, 1, "Whitespace", err);
    if (strcmp(type, "WhitespaceSplit") == 0)
        return set_split(p, "\\S+", SPLIT_REMOVED, 1, "WhitespaceSplit", err);
    return mx_fail(err, MX_EUNSUPPORTED, "pre_tokenizer type '%s' is not supported", type);
}

/* One piece through a Split: segments alternate between text and delimiters (a delimiter is
 * a regex match, or a gap when invert is set), then the behavior decides what is kept and
 * what is glued together, as in the Rust tokenizers crate. */
static int split_piece(const tok_pretok *p, const char *buf, tok_span in, tok_spans *out,
                       tok_spans *scratch, pcre2_match_data *md, mx_error *err)
{
    scratch->n = 0;
    if (regex_find_all(&p->re, buf + in.off, in.len, scratch, md, err) < 0)
        return err->code;
    size_t pos = 0, n_match = scratch->n;
    int prev_delim = 0;
    for (size_t m = 0; m <= n_match; m++) {
        /* the gap before match m, then match m itself */
        for (int part = 0; part < 2; part++) {
            size_t b, e;
            int is_match = part == 1;
            if (part == 0) {
                b = pos;
                e = m < n_match ? scratch->s[m].off : in.len;
            } else {
                if (m == n_match)
                    break;
                b = scratch->s[m].off;
                e = b + scratch->s[m].len;
                pos = e;
            }
            if (e <= b)
                continue;
            int delim = is_match != p->invert;
            size_t off = in.off + b, len = e - b;
            int glue = 0;
            switch (p->behavior) {
            case SPLIT_REMOVED:
                if (delim)
                    continue;
                break;
            case SPLIT_ISOLATED:
                break;
            case SPLIT_MERGED_PREV:
                glue = delim && !prev_delim && out->n > 0;
                break;
            case SPLIT_MERGED_NEXT:
                glue = !delim && prev_delim && out->n > 0;
                break;
            case SPLIT_CONTIGUOUS:
                glue = delim && prev_delim && out->n > 0;
                break;
            }
            prev_delim = delim;
            if (glue)
                out->s[out->n - 1].len = (uint32_t)(off + len - out->s[out->n - 1].off);
            else if (spans_push(out, off, len, err) < 0)
                return err->code;
        }
    }
    return 0;
}

static int byte_level_piece(const tok_pretok *p, mx_text *buf, tok_span in, tok_spans *out,
                            tok_spans *scratch, pcre2_match_data *md, mx_error *err)
{
    if (p->add_prefix_space && (in.len == 0 || buf->data[in.off] != ' ')) {
        size_t off = buf->len;
        char *copy = malloc(in.len + 1); /* appending may move buf->data */
        if (!copy)
            return mx_fail(err, MX_ENOMEM, "tokenizer: out of memory");
        copy[0] = ' ';
        memcpy(copy + 1, buf->data + in.off, in.len);
        int rc = mx_text_append(buf, copy, in.len + 1, err);
        free(copy);
        if (rc < 0)
            return rc;
        in = (tok_span){ (uint32_t)off, in.len + 1 };
    }
    if (!p->use_regex)
        return spans_push(out, in.off, in.len, err);
    scratch->n = 0;
    if (regex_find_all(&p->re, buf->data + in.off, in.len, scratch, md, err) < 0)
        return err->code;
    for (size_t i = 0; i < scratch->n; i++)
        if (scratch->s[i].len && spans_push(out, in.off + scratch->s[i].off, scratch->s[i].len, err) < 0)
            return err->code;
    return 0;
}

int pretok_apply(const tok_pretok *p, mx_text *buf, tok_spans *pieces, pcre2_match_data *md,
                 mx_error *err)
{
    if (p->type == PRE_SEQUENCE) {
        for (size_t i = 0; i < p->n_children; i++)
            if (pretok_apply(&p->children[i], buf, pieces, md, err) < 0)
                return err->code;
        return 0;
    }
    tok_spans out = { 0 }, scratch = { 0 };
    int rc = 0;
    for (size_t i = 0; i < pieces->n && rc == 0; i++) {
        if (p->type == PRE_SPLIT)
            rc = split_piece(p, buf->data, pieces->s[i], &out, &scratch, md, err);
        else
            rc = byte_level_piece(p, buf, pieces->s[i], &out, &scratch, md, err);
    }
    free(scratch.s);
    if (rc < 0) {
        free(out.s);
        return rc;
    }
    free(pieces->s);
    *pieces = out;
    return 0;
}
