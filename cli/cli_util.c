/* cli_util.c - argument parsing and model loading shared by the CLI commands. */
#include "cli_util.h"

#include <errno.h>
#include <math.h>
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

int cli_load(const char *dir, const char *backend, int threads, cli_model *cm)
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
