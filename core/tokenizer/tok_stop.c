/* tok_stop.c - stop strings over streamed text. A stop string can arrive split across many
 * tokens, so the tail of the text that could still grow into one is held back; only text
 * that can no longer be part of a stop string is released. */
#include "core/tokenizer/tok_internal.h"

#include <stdlib.h>
#include <string.h>

struct mx_stop_matcher {
    char **stop;
    size_t *len;
    size_t n;
    mx_text held;
    int stopped;
};

void mx_stop_matcher_free(mx_stop_matcher *m)
{
    if (!m)
        return;
    for (size_t i = 0; i < m->n; i++)
        free(m->stop[i]);
    free(m->stop);
    free(m->len);
    mx_text_free(&m->held);
    free(m);
}

int mx_stop_matcher_new(const char *const *stops, size_t n_stops, mx_stop_matcher **out, mx_error *err)
{
    *out = NULL;
    mx_stop_matcher *m = calloc(1, sizeof *m);
    if (!m || !(m->stop = calloc(n_stops ? n_stops : 1, sizeof *m->stop)) ||
        !(m->len = calloc(n_stops ? n_stops : 1, sizeof *m->len))) {
        mx_stop_matcher_free(m);
        return mx_fail(err, MX_ENOMEM, "stop strings: out of memory");
    }
    for (size_t i = 0; i < n_stops; i++) {
        size_t len = strlen(stops[i]);
        if (len == 0) {
            mx_stop_matcher_free(m);
            return mx_fail(err, MX_EINVAL, "stop string %zu is empty", i);
        }
        if (utf8_valid_prefix((const unsigned char *)stops[i], len) != len) {
            mx_stop_matcher_free(m);
            return mx_fail(err, MX_EINVAL, "stop string %zu is not valid UTF-8", i);
        }
        m->stop[i] = strdup(stops[i]);
        m->len[i] = len;
        m->n = i + 1;
        if (!m->stop[i]) {
            mx_stop_matcher_free(m);
            return mx_fail(err, MX_ENOMEM, "stop strings: out of memory");
        }
    }
    *out = m;
    return 0;
}

int mx_stop_matcher_push(mx_stop_matcher *m, const char *text, size_t len, mx_text *out,
                         size_t *which, mx_error *err)
{
    if (m->stopped)
        return 1;
    if (mx_text_append(&m->held, text, len, err) < 0)
        return err->code;
    const char *h = m->held.data;
    size_t n = m->held.len;
    /* the earliest complete stop string wins; on a tie, the one listed first */
    size_t best = SIZE_MAX, best_i = 0;
    for (size_t i = 0; i < m->n; i++) {
        const char *p = memmem(h, n, m->stop[i], m->len[i]);
        if (p && (size_t)(p - h) < best) {
            best = (size_t)(p - h);
            best_i = i;
        }
    }
    if (best != SIZE_MAX) {
        m->stopped = 1;
        if (which)
            *which = best_i;
        if (mx_text_append(out, h, best, err) < 0)
            return err->code;
        m->held.len = 0;
        return 1;
    }
    /* hold back the longest tail that is a proper prefix of some stop string */
    size_t keep = 0;
    for (size_t i = 0; i < m->n; i++)
        for (size_t k = m->len[i] - 1 < n ? m->len[i] - 1 : n; k > keep; k--)
            if (memcmp(h + n - k, m->stop[i], k) == 0) {
                keep = k;
                break;
            }
    if (mx_text_append(out, h, n - keep, err) < 0)
        return err->code;
    memmove(m->held.data, h + n - keep, keep);
    m->held.len = keep;
    return 0;
}

int mx_stop_matcher_finish(mx_stop_matcher *m, mx_text *out, mx_error *err)
{
    if (m->stopped || m->held.len == 0)
        return 0;
    int rc = mx_text_append(out, m->held.data, m->held.len, err);
    m->held.len = 0;
    return rc;
}
