/* tok_regex.c - split patterns of tokenizer.json on PCRE2. The files are written for
 * Oniguruma (the Rust tokenizers crate); the few constructs whose meaning differs in PCRE2 are
 * rewritten the way @huggingface/tokenizers rewrites them for JavaScript, so all three agree:
 * \s and \S mean Unicode White_Space, (?i:...) folds ASCII letters only. */
#include "core/tokenizer/tok_internal.h"

#include <ctype.h>
#include <stdlib.h>
#include <string.h>

void tok_regex_free(tok_regex *re)
{
    if (re->code)
        pcre2_code_free(re->code);
    re->code = NULL;
}

static int emit(mx_text *o, const char *s, mx_error *err)
{
    return mx_text_append(o, s, strlen(s), err);
}

/* Rewrites pattern p into o (see the file comment). */
static int translate(const char *p, size_t n, mx_text *o, mx_error *err)
{
    unsigned char fold_stack[256];
    int depth = 0, fold = 0, in_class = 0;
    size_t class_start = 0;
    int rc = 0;
    for (size_t i = 0; i < n && rc == 0;) {
        char c = p[i];
        if (c == '\\' && i + 1 < n) {
            char e = p[i + 1];
            if (e == 's') {
                rc = emit(o, "\\p{White_Space}", err);
                i += 2;
            } else if (e == 'S') {
                rc = emit(o, "\\P{White_Space}", err);
                i += 2;
            } else if ((e == 'p' || e == 'P' || e == 'x') && i + 2 < n && p[i + 2] == '{') {
                const char *close = memchr(p + i, '}', n - i);
                size_t end = close ? (size_t)(close - p) + 1 : n;
                rc = mx_text_append(o, p + i, end - i, err);
                i = end;
            } else {
                size_t k = 2;
                while (i + k < n && ((unsigned char)p[i + k] & 0xC0) == 0x80)
                    k++; /* an escaped multi-byte character */
                rc = mx_text_append(o, p + i, k, err);
                i += k;
            }
            continue;
        }
        if (in_class) {
            if (c == ']' && i > class_start) {
                in_class = 0;
            } else if (fold && isalpha((unsigned char)c)) {
                char other = islower((unsigned char)c) ? (char)toupper(c) : (char)tolower(c);
                if (i + 2 < n && p[i + 1] == '-' && isalpha((unsigned char)p[i + 2])) {
                    char hi = p[i + 2];
                    char ohi = islower((unsigned char)hi) ? (char)toupper(hi) : (char)tolower(hi);
                    char buf[7] = { c, '-', hi, other, '-', ohi, 0 };
                    rc = emit(o, buf, err);
                    i += 3;
                } else {
                    char buf[3] = { c, other, 0 };
                    rc = emit(o, buf, err);
                    i++;
                }
                continue;
            }
            rc = mx_text_append(o, &c, 1, err);
            i++;
            continue;
        }
        if (c == '[') {
            in_class = 1;
            class_start = i + 1;
            if (class_start < n && p[class_start] == '^')
                class_start++;
            rc = mx_text_append(o, &c, 1, err);
            i++;
        } else if (c == '(') {
            if (depth >= (int)sizeof fold_stack)
                return mx_fail(err, MX_EUNSUPPORTED, "groups nested deeper than %zu",
                               sizeof fold_stack);
            fold_stack[depth++] = (unsigned char)fold;
            if (n - i >= 4 && memcmp(p + i, "(?i:", 4) == 0) {
                fold = 1;
                rc = emit(o, "(?:", err);
                i += 4;
            } else {
                rc = mx_text_append(o, &c, 1, err);
                i++;
            }
        } else if (c == ')') {
            if (depth > 0)
                fold = fold_stack[--depth];
            rc = mx_text_append(o, &c, 1, err);
            i++;
        } else if (fold && isalpha((unsigned char)c)) {
            char other = islower((unsigned char)c) ? (char)toupper(c) : (char)tolower(c);
            char buf[5] = { '[', c, other, ']', 0 };
            rc = emit(o, buf, err);
            i++;
        } else {
            rc = mx_text_append(o, &c, 1, err);
            i++;
        }
    }
    return rc;
}

int tok_regex_compile(tok_regex *re, const char *pattern, size_t len, int literal,
                      const char *what, mx_error *err)
{
    mx_text t = { 0 };
    const char *src = pattern;
    size_t src_len = len;
    if (!literal) {
        if (translate(pattern, len, &t, err) < 0) {
            mx_text_free(&t);
            return mx_error_prefix(err, "%s", what);
        }
        src = t.data ? t.data : "";
        src_len = t.len;
    }
    int code;
    PCRE2_SIZE at;
    uint32_t opts = PCRE2_UTF | (literal ? PCRE2_LITERAL : PCRE2_UCP | PCRE2_MULTILINE);
    re->code = pcre2_compile((PCRE2_SPTR)src, src_len, opts, &code, &at, NULL);
    mx_text_free(&t);
    if (!re->code) {
        PCRE2_UCHAR msg[160];
        pcre2_get_error_message(code, msg, sizeof msg);
        return mx_fail(err, MX_EUNSUPPORTED, "%s: regex not supported (%s at offset %zu)", what,
                       (const char *)msg, (size_t)at);
    }
    (void)pcre2_jit_compile(re->code, PCRE2_JIT_COMPLETE); /* the interpreter is the fallback */
    return 0;
}

int spans_push(tok_spans *v, size_t off, size_t len, mx_error *err)
{
    if (v->n == v->cap) {
        size_t cap = v->cap ? v->cap * 2 : 64;
        tok_span *p = realloc(v->s, cap * sizeof *p);
        if (!p)
            return mx_fail(err, MX_ENOMEM, "tokenizer: out of memory for pieces");
        v->s = p;
        v->cap = cap;
    }
    v->s[v->n++] = (tok_span){ (uint32_t)off, (uint32_t)len };
    return 0;
}

/* All matches of re in s, like JavaScript's matchAll: after an empty match the search goes on
 * one character later. */
int regex_find_all(const tok_regex *re, const char *s, size_t len, tok_spans *out,
                   pcre2_match_data *md, mx_error *err)
{
    size_t pos = 0;
    while (pos <= len) {
        int rc = pcre2_match(re->code, (PCRE2_SPTR)s, len, pos, PCRE2_NO_UTF_CHECK, md, NULL);
        if (rc == PCRE2_ERROR_JIT_STACKLIMIT)
            rc = pcre2_match(re->code, (PCRE2_SPTR)s, len, pos, PCRE2_NO_UTF_CHECK | PCRE2_NO_JIT,
                             md, NULL);
        if (rc == PCRE2_ERROR_NOMATCH)
            break;
        if (rc < 0) {
            PCRE2_UCHAR msg[160];
            pcre2_get_error_message(rc, msg, sizeof msg);
            return mx_fail(err, MX_EINVAL, "split regex failed on the input: %s",
                           (const char *)msg);
        }
        PCRE2_SIZE *ov = pcre2_get_ovector_pointer(md);
        size_t b = ov[0], e = ov[1];
        if (spans_push(out, b, e - b, err) < 0)
            return err ? err->code : MX_ENOMEM;
        if (e == b) {
            if (e >= len)
                break;
            e++;
            while (e < len && ((unsigned char)s[e] & 0xC0) == 0x80)
                e++;
        }
        pos = e;
    }
    return 0;
}
