/* cmd_tokenize.c - `mx tokenize` (UTF-8 text on stdin -> ids on one line) and `mx detokenize`
 * (ids on stdin -> text on stdout) over a tokenizer.json. Thin wrappers over the tokenizer
 * library; all the work and all the checks are there. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/tokenizer/tokenizer.h"

int mx_cmd_tokenize(int argc, char **argv);
int mx_cmd_detokenize(int argc, char **argv);

static int read_all(FILE *f, mx_text *out, mx_error *err)
{
    char buf[65536];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, f)) > 0)
        if (mx_text_append(out, buf, n, err) < 0)
            return err->code;
    if (ferror(f))
        return mx_fail(err, MX_EIO, "reading stdin: %s", strerror(errno));
    return mx_text_append(out, "", 0, err);
}

/* Parses --tokenizer FILE plus one boolean flag; returns 0 or prints usage and returns 2. */
static int parse_args(int argc, char **argv, const char *flag, const char **path, int *flag_set)
{
    *path = NULL;
    *flag_set = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--tokenizer") == 0 && i + 1 < argc)
            *path = argv[++i];
        else if (strcmp(argv[i], flag) == 0)
            *flag_set = 1;
        else {
            *path = NULL;
            break;
        }
    }
    if (*path)
        return 0;
    fprintf(stderr, "usage: mx %s --tokenizer tokenizer.json [%s] < input\n", argv[0], flag);
    return 2;
}

int mx_cmd_tokenize(int argc, char **argv)
{
    const char *path;
    int plain;
    if (parse_args(argc, argv, "--no-special", &path, &plain))
        return 2;
    mx_error err = { 0 };
    mx_tokenizer *t = NULL;
    mx_text in = { 0 };
    mx_tok_ids ids = { 0 };
    int rc = mx_tokenizer_load(path, &t, &err);
    if (rc == 0)
        rc = read_all(stdin, &in, &err);
    if (rc == 0)
        rc = mx_tokenizer_encode(t, in.data, in.len, !plain, &ids, &err);
    if (rc == 0) {
        for (size_t i = 0; i < ids.len; i++)
            printf(i ? " %d" : "%d", (int)ids.ids[i]);
        printf("\n");
        if (fflush(stdout) != 0)
            rc = mx_fail(&err, MX_EIO, "writing stdout: %s", strerror(errno));
    }
    if (rc < 0)
        fprintf(stderr, "mx tokenize: %s\n", err.msg);
    mx_tok_ids_free(&ids);
    mx_text_free(&in);
    mx_tokenizer_free(t);
    return rc < 0 ? 1 : 0;
}

/* Ids separated by whitespace; anything else is an error naming the bad word. */
static int parse_ids(const char *s, mx_tok_ids *ids, mx_error *err)
{
    while (*s) {
        while (*s == ' ' || *s == '\n' || *s == '\t' || *s == '\r')
            s++;
        if (!*s)
            break;
        char *end;
        errno = 0;
        long v = strtol(s, &end, 10);
        if (end == s || errno || v < 0 || v > INT32_MAX ||
            (*end && *end != ' ' && *end != '\n' && *end != '\t' && *end != '\r'))
            return mx_fail(err, MX_EINVAL, "'%.20s' is not a token id", s);
        if (mx_tok_ids_push(ids, (int32_t)v, err) < 0)
            return err->code;
        s = end;
    }
    return 0;
}

int mx_cmd_detokenize(int argc, char **argv)
{
    const char *path;
    int skip;
    if (parse_args(argc, argv, "--skip-special", &path, &skip))
        return 2;
    mx_error err = { 0 };
    mx_tokenizer *t = NULL;
    mx_text in = { 0 }, out = { 0 };
    mx_tok_ids ids = { 0 };
    int rc = mx_tokenizer_load(path, &t, &err);
    if (rc == 0)
        rc = read_all(stdin, &in, &err);
    if (rc == 0)
        rc = parse_ids(in.data, &ids, &err);
    if (rc == 0)
        rc = mx_tokenizer_decode(t, ids.ids, ids.len, skip, &out, &err);
    if (rc == 0 && (fwrite(out.data, 1, out.len, stdout) != out.len || fflush(stdout) != 0))
        rc = mx_fail(&err, MX_EIO, "writing stdout: %s", strerror(errno));
    if (rc < 0)
        fprintf(stderr, "mx detokenize: %s\n", err.msg);
    mx_tok_ids_free(&ids);
    mx_text_free(&in);
    mx_text_free(&out);
    mx_tokenizer_free(t);
    return rc < 0 ? 1 : 0;
}
