/* tok_tool.c - test and benchmark driver for the tokenizer library over JSON Lines files:
 *   tok_tool encode TOKENIZER.json CORPUS.jsonl      ids of each document, one line each
 *   tok_tool roundtrip TOKENIZER.json CORPUS.jsonl   checks decode(encode(x)) == x (plain and streamed)
 *   tok_tool chat FORMAT CASES.jsonl                  renders each {messages, tools, add_generation_prompt}
 *   tok_tool bench TOKENIZER.json CORPUS.jsonl ROUNDS encode MB/s, single thread
 *   tok_tool small DIR VOCAB_SIZE                    writes the make-model tokenizer into DIR
 * The reference side of every comparison is JavaScript (tests/tokenizer/ref_*.mjs). */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/tokenizer/tokenizer.h"

typedef struct {
    char **doc;
    size_t *len;
    size_t n;
} corpus;

static int load_corpus(const char *path, corpus *c)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        perror(path);
        return -1;
    }
    char *line = NULL;
    size_t cap = 0;
    ssize_t got;
    memset(c, 0, sizeof *c);
    while ((got = getline(&line, &cap, f)) > 0) {
        if (got <= 1)
            continue;
        json_error_t je;
        json_t *s = json_loadb(line, (size_t)got, JSON_DECODE_ANY | JSON_ALLOW_NUL, &je);
        if (!json_is_string(s)) {
            fprintf(stderr, "%s: line %zu is not a JSON string\n", path, c->n + 1);
            return -1;
        }
        c->doc = realloc(c->doc, (c->n + 1) * sizeof *c->doc);
        c->len = realloc(c->len, (c->n + 1) * sizeof *c->len);
        c->len[c->n] = json_string_length(s);
        c->doc[c->n] = malloc(c->len[c->n] + 1);
        memcpy(c->doc[c->n], json_string_value(s), c->len[c->n] + 1);
        c->n++;
        json_decref(s);
    }
    free(line);
    fclose(f);
    return 0;
}

static int cmd_encode(mx_tokenizer *t, corpus *c)
{
    mx_error err;
    for (size_t d = 0; d < c->n; d++) {
        mx_tok_ids ids = { 0 };
        if (mx_tokenizer_encode(t, c->doc[d], c->len[d], 1, &ids, &err) < 0) {
            fprintf(stderr, "document %zu: %s\n", d + 1, err.msg);
            return 1;
        }
        for (size_t i = 0; i < ids.len; i++)
            printf(i ? " %d" : "%d", (int)ids.ids[i]);
        printf("\n");
        mx_tok_ids_free(&ids);
    }
    return 0;
}

static int cmd_roundtrip(mx_tokenizer *t, corpus *c)
{
    mx_error err;
    size_t ok = 0, bad = 0;
    for (size_t d = 0; d < c->n; d++) {
        mx_tok_ids ids = { 0 };
        mx_text whole = { 0 }, streamed = { 0 };
        mx_detok_stream s;
        int rc = mx_tokenizer_encode(t, c->doc[d], c->len[d], 1, &ids, &err);
        if (rc == 0)
            rc = mx_tokenizer_decode(t, ids.ids, ids.len, 0, &whole, &err);
        mx_detok_stream_init(&s, t, 0);
        for (size_t i = 0; rc == 0 && i < ids.len; i++) {
            size_t before = streamed.len;
            rc = mx_detok_stream_push(&s, ids.ids[i], &streamed, &err);
            /* every chunk the stream hands out must be whole characters */
            for (size_t k = before; rc == 0 && k < streamed.len; k++)
                if (k == before && ((unsigned char)streamed.data[k] & 0xC0) == 0x80)
                    rc = -1, snprintf(err.msg, sizeof err.msg, "stream chunk starts mid-character");
        }
        if (rc == 0)
            rc = mx_detok_stream_finish(&s, &streamed, &err);
        int same = rc == 0 && whole.len == c->len[d] && memcmp(whole.data, c->doc[d], whole.len) == 0 &&
                   streamed.len == c->len[d] && (c->len[d] == 0 || memcmp(streamed.data, c->doc[d], c->len[d]) == 0);
        if (same)
            ok++;
        else {
            bad++;
            if (bad <= 5)
                fprintf(stderr, "roundtrip mismatch in document %zu%s%s\n", d + 1, rc ? ": " : "", rc ? err.msg : "");
        }
        mx_tok_ids_free(&ids);
        mx_text_free(&whole);
        mx_text_free(&streamed);
    }
    printf("%zu passed, %zu failed\n", ok, bad);
    return bad != 0;
}

static int cmd_chat(const char *format, const char *path)
{
    mx_chat_format fmt;
    mx_error err;
    if (mx_chat_format_from_name(format, &fmt, &err) < 0) {
        fprintf(stderr, "%s\n", err.msg);
        return 1;
    }
    FILE *f = fopen(path, "rb");
    if (!f) {
        perror(path);
        return 1;
    }
    char *line = NULL;
    size_t cap = 0;
    while (getline(&line, &cap, f) > 1) {
        json_error_t je;
        json_t *c = json_loads(line, 0, &je);
        char *msgs = json_dumps(json_object_get(c, "messages"), JSON_COMPACT);
        json_t *tj = json_object_get(c, "tools");
        char *tools = tj && !json_is_null(tj) ? json_dumps(tj, JSON_COMPACT) : NULL;
        mx_text out = { 0 };
        int rc = msgs ? mx_chat_render_json(fmt, msgs, tools,
                                            json_is_true(json_object_get(c, "add_generation_prompt")), &out, &err)
                      : -1;
        json_t *s = rc == 0 ? json_stringn(out.data ? out.data : "", out.len) : json_pack("{s:s}", "error", err.msg);
        char *enc = json_dumps(s, JSON_ENCODE_ANY | JSON_COMPACT);
        printf("%s\n", enc);
        free(enc);
        json_decref(s);
        mx_text_free(&out);
        free(msgs);
        free(tools);
        json_decref(c);
    }
    free(line);
    fclose(f);
    return 0;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int cmd_bench(mx_tokenizer *t, corpus *c, int rounds)
{
    mx_error err;
    size_t bytes = 0, tokens = 0;
    double best = 1e30;
    for (size_t d = 0; d < c->n; d++)
        bytes += c->len[d];
    for (int r = 0; r < rounds; r++) {
        double t0 = now_s();
        tokens = 0;
        for (size_t d = 0; d < c->n; d++) {
            mx_tok_ids ids = { 0 };
            if (mx_tokenizer_encode(t, c->doc[d], c->len[d], 1, &ids, &err) < 0) {
                fprintf(stderr, "%s\n", err.msg);
                return 1;
            }
            tokens += ids.len;
            mx_tok_ids_free(&ids);
        }
        double dt = now_s() - t0;
        if (dt < best)
            best = dt;
    }
    printf("%.3f MB/s %zu bytes %zu tokens %.4f s\n", bytes / best / 1e6, bytes, tokens, best);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc >= 4 && strcmp(argv[1], "chat") == 0)
        return cmd_chat(argv[2], argv[3]);
    if (argc >= 4 && strcmp(argv[1], "small") == 0) {
        mx_error err;
        if (mx_tokenizer_write_small(argv[2], atoi(argv[3]), &err) < 0) {
            fprintf(stderr, "%s\n", err.msg);
            return 1;
        }
        return 0;
    }
    if (argc < 4) {
        fprintf(stderr, "usage: tok_tool encode|roundtrip|bench TOKENIZER.json CORPUS.jsonl [ROUNDS]\n"
                        "       tok_tool chat minimax-text-01|minimax-m1 CASES.jsonl\n");
        return 2;
    }
    mx_error err;
    mx_tokenizer *t;
    double t0 = now_s();
    if (mx_tokenizer_load(argv[2], &t, &err) < 0) {
        fprintf(stderr, "%s\n", err.msg);
        return 1;
    }
    double load_s = now_s() - t0;
    corpus c;
    if (load_corpus(argv[3], &c) < 0)
        return 1;
    int rc = 2;
    if (strcmp(argv[1], "encode") == 0)
        rc = cmd_encode(t, &c);
    else if (strcmp(argv[1], "roundtrip") == 0)
        rc = cmd_roundtrip(t, &c);
    else if (strcmp(argv[1], "bench") == 0) {
        fprintf(stderr, "load %.3f s\n", load_s);
        rc = cmd_bench(t, &c, argc > 4 ? atoi(argv[4]) : 3);
    }
    for (size_t d = 0; d < c.n; d++)
        free(c.doc[d]);
    free(c.doc);
    free(c.len);
    mx_tokenizer_free(t);
    return rc;
}
