/* cli_util.h - small helpers shared by the CLI commands: parsing id lists and numbers with
 * errors that name the flag, load-progress printing, and loading a whole model. */
#ifndef MX_CLI_UTIL_H
#define MX_CLI_UTIL_H

#include <stddef.h>
#include <stdint.h>

#include "core/backend.h"
#include "core/model.h"
#include "core/weights.h"

/* "1,2,3" -> malloc'd ids; returns count or -1 with a message on stderr. */
int cli_parse_ids(const char *flag, const char *text, int32_t **out);
/* Token ids from FILE ("-" = stdin): decimal ids separated by whitespace and/or single
 * commas, any length (no fixed buffers). Returns the count and malloc'd ids, or -1 with a
 * message on stderr naming the flag, the file and the bad id's line, column, byte offset
 * and index. */
int cli_parse_ids_file(const char *flag, const char *path, int32_t **out);
/* The whole of FILE ("-" = stdin), NUL-terminated, in *out (malloc'd) with its length; -1
 * with a message naming the flag and the file on failure. */
int cli_read_file(const char *flag, const char *path, char **out, size_t *len);
int cli_parse_int(const char *flag, const char *text, long min, long max, long *out);
int cli_parse_float(const char *flag, const char *text, double *out);

/* Progress callback for mx_load_plan: a line on stderr every 10% and at the end. */
void cli_progress(void *ctx, const char *what, uint64_t done, uint64_t total);

/* Loads the whole model from dir onto a backend by name; prints the error and returns
 * non-zero on failure. Free with cli_unload. */
typedef struct cli_model {
    mx_backend *be;
    mx_weights *w;
    mx_model *m;
} cli_model;
/* What the whole-model load plan may change: expert weights and attention projections as
 * stored or quantized to int8 at load (router, norms, embedding and head stay as stored). */
typedef struct cli_load_options {
    mx_weight_format expert_format;
    mx_weight_format attn_format;
} cli_load_options;
/* opts NULL: everything as stored. */
int cli_load(const char *dir, const char *backend, int threads, const cli_load_options *opts, cli_model *out);
void cli_unload(cli_model *cm);

#endif
