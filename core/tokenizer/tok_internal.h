/* tok_internal.h - data structures shared by the tokenizer's source files (hash maps, the
 * normalizer / pre-tokenizer trees, the tokenizer struct). Not part of the public API:
 * only the tokenizer sources and their tests include it. */
#ifndef MX_TOK_INTERNAL_H
#define MX_TOK_INTERNAL_H

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <pthread.h>
#include <stdint.h>

#include "core/tokenizer/tokenizer.h"

/* ---- byte string -> int32 hash map (owns copies of its keys) ---- */
typedef struct {
    uint32_t *slots;  /* 0 = empty, else entry index + 1 */
    size_t n_slots;   /* power of two */
    struct strmap_entry { uint32_t off, len; int32_t val; } *entries;
    size_t n, cap;
    char *blob;
    size_t blob_len, blob_cap;
} mx_strmap;

void strmap_free(mx_strmap *m);
/* Returns 1 and *val if key is present, else 0. */
int strmap_get(const mx_strmap *m, const void *key, size_t len, int32_t *val);
/* Inserts or overwrites. */
int strmap_put(mx_strmap *m, const void *key, size_t len, int32_t val, mx_error *err);
uint64_t tok_hash_bytes(const void *key, size_t len);

/* ---- (left id, right id) -> merge rank + merged id ---- */
typedef struct {
    uint64_t *keys;  /* (left << 32 | right) + 1; 0 = empty */
    uint32_t *rank;
    int32_t *merged;
    size_t n_slots, n;
} mx_pairmap;

void pairmap_free(mx_pairmap *m);
int pairmap_put(mx_pairmap *m, int32_t a, int32_t b, uint32_t rank, int32_t merged, mx_error *err);
/* Returns 1 with rank/merged if the pair merges. */
static inline int pairmap_get(const mx_pairmap *m, int32_t a, int32_t b, uint32_t *rank,
                              int32_t *merged)
{
    if (m->n_slots == 0)
        return 0;
    uint64_t key = (((uint64_t)(uint32_t)a << 32) | (uint32_t)b) + 1;
    uint64_t h = key * 0x9E3779B97F4A7C15ull;
    size_t mask = m->n_slots - 1, i = (size_t)(h >> 20) & mask;
    for (;;) {
        uint64_t k = m->keys[i];
        if (k == key) {
            *rank = m->rank[i];
            *merged = m->merged[i];
            return 1;
        }
        if (k == 0)
            return 0;
        i = (i + 1) & mask;
    }
}

/* ---- UTF-8 utilities ---- */
/* Length of the valid UTF-8 character at s (n bytes available): > 0 valid length; 0 if the
 * bytes are a valid but unfinished prefix; < 0 invalid, -k = length of the maximal bad prefix. */
int utf8_char(const unsigned char *s, size_t n, uint32_t *cp);
/* Offset of the first invalid byte, or n if all of s is valid UTF-8. */
size_t utf8_valid_prefix(const unsigned char *s, size_t n);
/* Appends bytes with every invalid sequence replaced by U+FFFD. */
int utf8_append_lossy(mx_text *out, const unsigned char *s, size_t n, mx_error *err);
/* 1 if cp is JavaScript's \s (String.prototype.trim's whitespace). */
int js_is_space(uint32_t cp);

/* ---- byte-level alphabet (GPT-2's bytes_to_unicode) ---- */
uint32_t byte_level_char(unsigned char b);
/* The byte a byte-level character stands for, or -1. */
int byte_level_byte(uint32_t cp);

/* ---- regex ---- */
typedef struct {
    pcre2_code *code;
} tok_regex;
/* Compiles an Oniguruma-flavoured pattern from tokenizer.json for PCRE2 (UTF, UCP, JIT),
 * rewriting the constructs whose meaning differs (\s, (?i:...)) as @huggingface/tokenizers
 * does. what names the pattern's place in the file for error messages. */
int tok_regex_compile(tok_regex *re, const char *pattern, size_t len, int literal,
                      const char *what, mx_error *err);
void tok_regex_free(tok_regex *re);

/* ---- pieces of text produced by the pre-tokenizer: (offset, length) into a buffer ---- */
typedef struct {
    uint32_t off, len;
} tok_span;
typedef struct {
    tok_span *s;
    size_t n, cap;
} tok_spans;
int spans_push(tok_spans *v, size_t off, size_t len, mx_error *err);

/* ---- normalizers ---- */
typedef enum { NORM_SEQUENCE, NORM_NFC, NORM_NFD, NORM_NFKC, NORM_NFKD, NORM_LOWERCASE,
               NORM_REPLACE, NORM_PREPEND } norm_type;
typedef struct tok_normalizer {
    norm_type type;
    struct tok_normalizer *children;
    size_t n_children;
    tok_regex pattern;   /* REPLACE */
    char *content;       /* REPLACE replacement, PREPEND prefix */
} tok_normalizer;
int normalizer_parse(tok_normalizer *n, const void *json, mx_error *err);
void normalizer_free(tok_normalizer *n);
int normalizer_apply(const tok_normalizer *n, const char *s, size_t len, mx_text *out,
                     mx_error *err);

/* ---- pre-tokenizers ---- */
typedef enum { SPLIT_REMOVED, SPLIT_ISOLATED, SPLIT_MERGED_PREV, SPLIT_MERGED_NEXT,
               SPLIT_CONTIGUOUS } split_behavior;
typedef enum { PRE_SEQUENCE, PRE_SPLIT, PRE_BYTE_LEVEL } pre_type;
typedef struct tok_pretok {
    pre_type type;
    struct tok_pretok *children;
    size_t n_children;
    tok_regex re;            /* SPLIT (also Digits, Punctuation, Whitespace...), BYTE_LEVEL regex */
    split_behavior behavior;
    int invert;
    int add_prefix_space;    /* BYTE_LEVEL */
    int use_regex;           /* BYTE_LEVEL */
} tok_pretok;
int pretok_parse(tok_pretok *p, const void *json, int *has_byte_level, mx_error *err);
void pretok_free(tok_pretok *p);
/* Splits buf[pieces] further; buf may grow (ByteLevel's prefix space). */
int pretok_apply(const tok_pretok *p, mx_text *buf, tok_spans *pieces, pcre2_match_data *md,
                 mx_error *err);
int regex_find_all(const tok_regex *re, const char *s, size_t len, tok_spans *out,
                   pcre2_match_data *md, mx_error *err);

/* ---- added tokens ---- */
typedef struct {
    char *content;
    size_t len;
    int32_t id;
    unsigned special : 1, lstrip : 1, rstrip : 1, normalized : 1, single_word : 1;
} tok_added;

/* Added tokens to look for in one stage of encoding, indexed by first byte, longest first. */
typedef struct {
    struct added_cand { const char *s; size_t len; int32_t id; int special; int lstrip, rstrip; } *c;
    size_t n;
    uint32_t first[257]; /* candidates starting with byte b are c[first[b] .. first[b+1]) */
} tok_added_set;

/* ---- the tokenizer ---- */
struct mx_tokenizer {
    mx_strmap vocab;        /* raw bytes -> id, byte-level tokens only */
    mx_strmap by_name;      /* token as written in the file -> id (vocab and added) */
    int32_t n_ids;
    uint32_t *id_off, *id_len; /* bytes each id decodes to, in id_blob; id_len = UINT32_MAX: none */
    uint8_t *id_special;
    char *id_blob;
    int32_t byte_id[256];
    mx_pairmap merges;
    int ignore_merges;
    int32_t unk_id;
    tok_added *added;
    size_t n_added;
    tok_added_set raw_set, norm_set;
    tok_normalizer *normalizer; /* NULL = none */
    tok_pretok *pretok;         /* NULL = none */
    /* word -> ids cache; the only mutable state, guarded by cache_lock */
    pthread_mutex_t cache_lock;
    mx_strmap cache;
    int32_t *cache_ids;
    size_t cache_ids_len, cache_ids_cap;
};

int bpe_encode_word(const mx_tokenizer *t, const unsigned char *w, size_t n, mx_tok_ids *out,
                    mx_error *err);
int added_set_build(tok_added_set *set, const tok_added *tokens, size_t n, int normalized_stage,
                    const tok_normalizer *norm, mx_error *err);
void added_set_free(tok_added_set *set);

#endif
