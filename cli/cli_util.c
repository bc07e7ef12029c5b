/* cli_util.c - argument parsing and model loading shared by the CLI commands. */
#include "cli_util.h"

#include <errno.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int cli_parse_ids(const char *flag, const char *text, int32_t **out)
{
    int cap = 16, n = 0;
    int32_t *ids = malloc((size_t)cap * sizeof *ids);
    const char *p = text;
    while (ids && *p) {
        char *end;
        errno = 0;
        long v = strtol(p, &end, 10);
        if (end == p || errno || v < 0 || v > INT32_MAX || (*end && *end != ',')) {
            fprintf(stderr, "mx: %s: \"%s\" is not a comma-separated list of token ids\n", flag, text);
            free(ids);
            return -1;
        }
        if (n == cap) {
            int32_t *grown = realloc(ids, (size_t)(cap *= 2) * sizeof *ids);
            if (!grown)
                break;
            ids = grown;
        }
        ids[n++] = (int32_t)v;
        p = *end ? end + 1 : end;
    }
    if (!ids) {
        fprintf(stderr, "mx: out of memory\n");
        return -1;
    }
    *out = ids;
    return n;
}

int cli_read_file(const char *flag, const char *path, char **out, size_t *len)
{
    bool is_stdin = strcmp(path, "-") == 0;
    FILE *f = is_stdin ? stdin : fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "mx: %s %s: %s\n", flag, path, strerror(errno));
        return -1;
    }
    size_t cap = 1 << 16, n = 0, got;
    char *buf = malloc(cap);
    while (buf) {
        if (cap - n < 2) {
            char *grown = cap > SIZE_MAX / 2 ? NULL : realloc(buf, cap * 2);
            if (!grown) {
                free(buf);
                buf = NULL;
                break;
            }
            buf = grown;
            cap *= 2;
        }
        got = fread(buf + n, 1, cap - n - 1, f);
        n += got;
        if (got == 0)
            break;
    }
    int read_error = ferror(f);
    if (!is_stdin)
        fclose(f);
    if (!buf || read_error) {
        fprintf(stderr, "mx: %s %s: %s\n", flag, is_stdin ? "(stdin)" : path, buf ? "read error" : "out of memory");
        free(buf);
        return -1;
    }
    buf[n] = '\0';
    *out = buf;
    *len = n;
    return 0;
}

/* Where byte `at` of text is, for error messages: 1-based line and column. */
static void text_position(const char *text, size_t at, size_t *line, size_t *col)
{
    *line = 1;
    size_t line_start = 0;
    for (size_t i = 0; i < at; i++)
        if (text[i] == '\n') {
            (*line)++;
            line_start = i + 1;
        }
    *col = at - line_start + 1;
}

static bool id_space(char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f';
}

int cli_parse_ids_file(const char *flag, const char *path, int32_t **out)
{
    char *text = NULL;
    size_t len = 0;
    if (cli_read_file(flag, path, &text, &len))
        return -1;
    const char *name = strcmp(path, "-") == 0 ? "(stdin)" : path;
    size_t cap = 1024, n = 0, i = 0, bad_at = 0;
    int32_t *ids = malloc(cap * sizeof *ids);
    const char *why = ids ? NULL : "out of memory";
    bool no_position = !ids;
    bool comma = false; /* a comma since the last id: the next thing must be an id */
    while (!why) {
        while (i < len && id_space(text[i]))
            i++;
        if (i == len) {
            if (comma) {
                why = "the list ends with a comma";
                bad_at = i;
            }
            break;
        }
        if (text[i] == ',') {
            if (comma || n == 0) {
                why = n == 0 ? "a comma before the first id" : "two commas with no id between them";
                bad_at = i;
                break;
            }
            comma = true;
            i++;
            continue;
        }
        /* one id: decimal digits up to a separator, at most INT32_MAX */
        size_t start = i;
        int64_t v = 0;
        while (i < len && text[i] >= '0' && text[i] <= '9' && v <= INT32_MAX)
            v = v * 10 + (text[i++] - '0');
        if (i == start || v > INT32_MAX || (i < len && !id_space(text[i]) && text[i] != ',')) {
            why = v > INT32_MAX ? "larger than the largest id 2147483647" : "not a token id (a non-negative decimal integer)";
            bad_at = start;
            break;
        }
        if (n == cap) {
            int32_t *grown = cap >= (size_t)INT32_MAX ? NULL : realloc(ids, cap * 2 * sizeof *ids);
            if (!grown) {
                why = n >= (size_t)INT32_MAX ? "more than 2147483647 ids" : "out of memory";
                no_position = true;
                break;
            }
            ids = grown;
            cap *= 2;
        }
        ids[n++] = (int32_t)v;
        comma = false;
    }
    if (why) {
        size_t line, col, end = bad_at;
        while (end < len && end - bad_at < 24 && !id_space(text[end]) && text[end] != ',') /* the bad word */
            end++;
        text_position(text, bad_at, &line, &col);
        if (no_position)
            fprintf(stderr, "mx: %s %s: %s\n", flag, name, why);
        else
            fprintf(stderr, "mx: %s %s: line %zu, column %zu (byte %zu, id #%zu): %s%s%.*s%s\n", flag, name, line, col,
                    bad_at, n + 1, why, end > bad_at ? ": \"" : "", (int)(end - bad_at), text + bad_at,
                    end > bad_at ? "\"" : "");
        free(ids);
        free(text);
        return -1;
    }
    free(text);
    *out = ids;
    return (int)n;
}

int cli_parse_int(const char *flag, const char *text, long min, long max, long *out)
{
    char *end;
    errno = 0;
    long v = strtol(text, &end, 10);
    if (end == text || *end || errno || v < min || v > max) {
        fprintf(stderr, "mx: %s: \"%s\" is not an integer in [%ld, %ld]\n", flag, text, min, max);
        return -1;
    }
    *out = v;
    return 0;
}

int cli_parse_float(const char *flag, const char *text, double *out)
{
    char *end;
    double v = strtod(text, &end);
    if (end == text || *end || !isfinite(v)) {
        fprintf(stderr, "mx: %s: \"%s\" is not a finite number\n", flag, text);
        return -1;
    }
    *out = v;
    return 0;
}

void cli_progress(void *ctx, const char *what, uint64_t done, uint64_t total)
{
    int *last_decile = ctx;
    int decile = total ? (int)(done * 10 / total) : 10;
    if (decile != *last_decile || done == total) {
        *last_decile = decile;
        fprintf(stderr, "loading %s: %.1f / %.1f MiB (%d%%)\n", what ? what : "weights", done / 1048576.0,
                total / 1048576.0, total ? (int)(done * 100 / total) : 100);
    }
}

int cli_load(const char *dir, const char *backend, int threads, const cli_load_options *opts, cli_model *cm)
{
    memset(cm, 0, sizeof *cm);
    mx_error err = {0};
    int decile = -1;
    mx_config cfg;
    char path[4096];
    snprintf(path, sizeof path, "%s/config.json", dir);
    int rc = mx_config_load(path, &cfg, &err);
    if (!rc) {
        mx_load_plan plan = mx_load_plan_full(&cfg);
        plan.progress = cli_progress;
        plan.progress_ctx = &decile;
        if (opts) {
            plan.expert_format = opts->expert_format;
            plan.attn_format = opts->attn_format;
            plan.quantize_threads = threads;
        }
        rc = mx_weights_load(dir, &plan, &cm->w, &err);
    }
    if (!rc)
        rc = mx_backend_create(backend, threads, &cm->be, &err);
    if (!rc)
        rc = mx_model_create(cm->w, cm->be, &cm->m, &err);
    if (rc) {
        fprintf(stderr, "mx: %s\n", err.msg);
        cli_unload(cm);
    }
    return rc;
}

void cli_unload(cli_model *cm)
{
    mx_model_free(cm->m);
    if (cm->be)
        cm->be->destroy(cm->be);
    mx_weights_free(cm->w);
    memset(cm, 0, sizeof *cm);
}
