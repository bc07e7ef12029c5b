/* tok_load.c - reads tokenizer.json (jansson) into an mx_tokenizer: vocab and merges of a
 * byte-level BPE model, added tokens, normalizer, pre-tokenizer, decoder. Anything outside
 * the byte-level BPE family is refused with an error naming the component. */
#include "core/tokenizer/tok_internal.h"

#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_IDS (1 << 24)

/* A token written in the byte-level alphabet -> the raw bytes it stands for. Returns 1 if every
 * character is in the alphabet (out then holds *olen <= len bytes), else 0. */
static int byte_level_decode(const char *s, size_t len, unsigned char *out, size_t *olen)
{
    size_t o = 0;
    for (size_t i = 0; i < len;) {
        uint32_t cp;
        int k = utf8_char((const unsigned char *)s + i, len - i, &cp);
        if (k <= 0)
            return 0;
        int b = byte_level_byte(cp);
        if (b < 0)
            return 0;
        out[o++] = (unsigned char)b;
        i += (size_t)k;
    }
    *olen = o;
    return 1;
}

void mx_tokenizer_free(mx_tokenizer *t)
{
    if (!t)
        return;
    strmap_free(&t->vocab);
    strmap_free(&t->by_name);
    free(t->id_off);
    free(t->id_len);
    free(t->id_special);
    free(t->id_blob);
    pairmap_free(&t->merges);
    for (size_t i = 0; i < t->n_added; i++)
        free(t->added[i].content);
    free(t->added);
    added_set_free(&t->raw_set);
    added_set_free(&t->norm_set);
    if (t->normalizer) {
        normalizer_free(t->normalizer);
        free(t->normalizer);
    }
    if (t->pretok) {
        pretok_free(t->pretok);
        free(t->pretok);
    }
    pthread_mutex_destroy(&t->cache_lock);
    strmap_free(&t->cache);
    free(t->cache_ids);
    free(t);
}

static int check_model(const json_t *model, mx_error *err)
{
    const char *type = json_string_value(json_object_get(model, "type"));
    if (!json_is_object(model))
        return mx_fail(err, MX_EFORMAT, "tokenizer.json: \"model\" is missing or not an object");
    if (type ? strcmp(type, "BPE") != 0 : !json_object_get(model, "merges"))
        return mx_fail(err, MX_EUNSUPPORTED, "model type '%s' is not supported (only BPE)",
                       type ? type : "(none)");
    const json_t *d = json_object_get(model, "dropout");
    if (d && !json_is_null(d) && json_number_value(d) != 0.0)
        return mx_fail(err, MX_EUNSUPPORTED, "model BPE: dropout is not supported");
    static const char *const empty_only[] = { "continuing_subword_prefix", "end_of_word_suffix" };
    for (size_t i = 0; i < 2; i++) {
        const json_t *v = json_object_get(model, empty_only[i]);
        if (v && !json_is_null(v) && json_string_length(v) != 0)
            return mx_fail(err, MX_EUNSUPPORTED, "model BPE: %s is not supported", empty_only[i]);
    }
    if (!json_is_object(json_object_get(model, "vocab")))
        return mx_fail(err, MX_EFORMAT, "model BPE: \"vocab\" is missing or not an object");
    if (!json_is_array(json_object_get(model, "merges")))
        return mx_fail(err, MX_EFORMAT, "model BPE: \"merges\" is missing or not a list");
    return 0;
}

static int check_decoder(const json_t *d, mx_error *err)
{
    if (!d || json_is_null(d))
        return 0;
    const char *type = json_string_value(json_object_get(d, "type"));
    if (type && strcmp(type, "ByteLevel") == 0)
        return 0;
    if (type && strcmp(type, "Sequence") == 0) {
        const json_t *list = json_object_get(d, "decoders");
        for (size_t i = 0; i < json_array_size(list); i++)
            if (check_decoder(json_array_get(list, i), err) < 0)
                return err->code;
        return 0;
    }
    return mx_fail(err, MX_EUNSUPPORTED, "decoder type '%s' is not supported (only ByteLevel)",
                   type ? type : "(none)");
}

static int max_id_update(int32_t *n_ids, json_int_t id, const char *what, const char *name, mx_error *err)
{
    if (id < 0 || id >= MAX_IDS)
        return mx_fail(err, MX_EFORMAT, "%s '%s' has id %lld outside 0..%d", what, name,
                       (long long)id, MAX_IDS - 1);
    if (id + 1 > *n_ids)
        *n_ids = (int32_t)id + 1;
    return 0;
}

static int load_vocab(mx_tokenizer *t, const json_t *vocab, mx_error *err)
{
    const char *key;
    const json_t *v;
    size_t n = json_object_size(vocab);
    unsigned char *buf = NULL;
    size_t buf_cap = 0;
    json_object_foreach((json_t *)vocab, key, v) {
        if (!json_is_integer(v)) {
            free(buf);
            return mx_fail(err, MX_EFORMAT, "vocab entry '%s' is not an integer id", key);
        }
        json_int_t id = json_integer_value(v);
        size_t len = strlen(key), blen;
        if (max_id_update(&t->n_ids, id, "vocab entry", key, err) < 0 ||
            strmap_put(&t->by_name, key, len, (int32_t)id, err) < 0) {
            free(buf);
            return err->code;
        }
        if (len > buf_cap) {
            buf_cap = len * 2;
            unsigned char *p = realloc(buf, buf_cap);
            if (!p) {
                free(buf);
                return mx_fail(err, MX_ENOMEM, "tokenizer: out of memory");
            }
            buf = p;
        }
        if (byte_level_decode(key, len, buf, &blen) && blen > 0 &&
            strmap_put(&t->vocab, buf, blen, (int32_t)id, err) < 0) {
            free(buf);
            return err->code;
        }
    }
    free(buf);
    (void)n;
    return 0;
}

static int load_added(mx_tokenizer *t, const json_t *list, mx_error *err)
{
    if (list && !json_is_null(list) && !json_is_array(list))
        return mx_fail(err, MX_EFORMAT, "tokenizer.json: \"added_tokens\" is not a list");
    size_t n = json_array_size(list);
    t->added = calloc(n ? n : 1, sizeof *t->added);
    if (!t->added)
        return mx_fail(err, MX_ENOMEM, "tokenizer: out of memory");
    for (size_t i = 0; i < n; i++) {
        const json_t *a = json_array_get(list, i);
        const json_t *content = json_object_get(a, "content"), *id = json_object_get(a, "id");
        if (!json_is_string(content) || !json_is_integer(id))
            return mx_fail(err, MX_EFORMAT, "added_tokens[%zu]: needs a string \"content\" and an integer \"id\"", i);
        tok_added *x = &t->added[t->n_added];
        x->len = json_string_length(content);
        x->content = malloc(x->len + 1);
        if (!x->content)
            return mx_fail(err, MX_ENOMEM, "tokenizer: out of memory");
        memcpy(x->content, json_string_value(content), x->len + 1);
        t->n_added++;
        if (memchr(x->content, 0, x->len))
            return mx_fail(err, MX_EFORMAT, "added_tokens[%zu]: content contains a NUL byte", i);
        x->id = (int32_t)json_integer_value(id);
        if (max_id_update(&t->n_ids, json_integer_value(id), "added token", x->content, err) < 0)
            return err->code;
        x->special = json_is_true(json_object_get(a, "special"));
        x->lstrip = json_is_true(json_object_get(a, "lstrip"));
        x->rstrip = json_is_true(json_object_get(a, "rstrip"));
        const json_t *norm = json_object_get(a, "normalized");
        x->normalized = norm ? json_is_true(norm) : !x->special;
        x->single_word = json_is_true(json_object_get(a, "single_word"));
        if (strmap_put(&t->by_name, x->content, x->len, x->id, err) < 0)
            return err->code;
    }
    return 0;
}

/* Bytes each id decodes to: the raw bytes of byte-level vocab tokens, the content of added
 * tokens (which override vocab entries with the same id). */
static int build_id_table(mx_tokenizer *t, mx_error *err)
{
    size_t n = (size_t)t->n_ids;
    t->id_off = calloc(n ? n : 1, sizeof *t->id_off);
    t->id_len = malloc((n ? n : 1) * sizeof *t->id_len);
    t->id_special = calloc(n ? n : 1, 1);
    size_t blob_len = t->vocab.blob_len;
    for (size_t i = 0; i < t->n_added; i++)
        blob_len += t->added[i].len;
    t->id_blob = malloc(blob_len + 1);
    if (!t->id_off || !t->id_len || !t->id_special || !t->id_blob)
        return mx_fail(err, MX_ENOMEM, "tokenizer: out of memory for the id table");
    for (size_t i = 0; i < n; i++)
        t->id_len[i] = UINT32_MAX;
    memcpy(t->id_blob, t->vocab.blob, t->vocab.blob_len);
    for (size_t e = 0; e < t->vocab.n; e++) {
        const struct strmap_entry *en = &t->vocab.entries[e];
        t->id_off[en->val] = en->off;
        t->id_len[en->val] = en->len;
    }
    size_t at = t->vocab.blob_len;
    for (size_t i = 0; i < t->n_added; i++) {
        const tok_added *a = &t->added[i];
        memcpy(t->id_blob + at, a->content, a->len);
        t->id_off[a->id] = (uint32_t)at;
        t->id_len[a->id] = (uint32_t)a->len;
        t->id_special[a->id] = a->special;
        at += a->len;
    }
    return 0;
}

/* One merge, "left right" or ["left", "right"], as ids. */
static int merge_ids(const mx_tokenizer *t, const json_t *m, size_t rank, int32_t *a, int32_t *b,
                     int32_t *merged, mx_error *err)
{
    const char *l, *r;
    size_t ll, rl;
    unsigned char *tmp = NULL;
    if (json_is_string(m)) {
        const char *s = json_string_value(m);
        const char *sp = strchr(s, ' ');
        if (!sp || strchr(sp + 1, ' '))
            return mx_fail(err, MX_EFORMAT, "merges[%zu] '%s' is not two tokens separated by one space", rank, s);
        l = s;
        ll = (size_t)(sp - s);
        r = sp + 1;
        rl = strlen(r);
    } else if (json_is_array(m) && json_array_size(m) == 2 && json_is_string(json_array_get(m, 0)) &&
               json_is_string(json_array_get(m, 1))) {
        l = json_string_value(json_array_get(m, 0));
        ll = json_string_length(json_array_get(m, 0));
        r = json_string_value(json_array_get(m, 1));
        rl = json_string_length(json_array_get(m, 1));
    } else
        return mx_fail(err, MX_EFORMAT, "merges[%zu] is neither \"a b\" nor [\"a\", \"b\"]", rank);
    unsigned char stack[256];
    unsigned char *buf = stack;
    if (ll + rl > sizeof stack)
        buf = tmp = malloc(ll + rl);
    if (!buf)
        return mx_fail(err, MX_ENOMEM, "tokenizer: out of memory");
    size_t lb, rb;
    int ok = byte_level_decode(l, ll, buf, &lb) && byte_level_decode(r, rl, buf + lb, &rb) &&
             lb > 0 && rb > 0 && strmap_get(&t->vocab, buf, lb, a) &&
             strmap_get(&t->vocab, buf + lb, rb, b) && strmap_get(&t->vocab, buf, lb + rb, merged);
    free(tmp);
    if (!ok)
        return mx_fail(err, MX_EFORMAT, "merges[%zu] ('%.*s' + '%.*s'): a part or the merged token is not in the vocab",
                       rank, (int)(ll > 60 ? 60 : ll), l, (int)(rl > 60 ? 60 : rl), r);
    return 0;
}

static int load_merges(mx_tokenizer *t, const json_t *merges, mx_error *err)
{
    size_t n = json_array_size(merges);
    for (size_t i = 0; i < n; i++) {
        int32_t a, b, m;
        if (merge_ids(t, json_array_get(merges, i), i, &a, &b, &m, err) < 0)
            return err->code;
        /* a repeated merge takes its last rank, as in both reference implementations */
        if (pairmap_put(&t->merges, a, b, (uint32_t)i, m, err) < 0)
            return err->code;
    }
    return 0;
}

static int load_components(mx_tokenizer *t, const json_t *root, mx_error *err)
{
    const json_t *norm = json_object_get(root, "normalizer");
    if (norm && !json_is_null(norm)) {
        t->normalizer = calloc(1, sizeof *t->normalizer);
        if (!t->normalizer)
            return mx_fail(err, MX_ENOMEM, "tokenizer: out of memory");
        if (normalizer_parse(t->normalizer, norm, err) < 0)
            return err->code;
    }
    const json_t *pre = json_object_get(root, "pre_tokenizer");
    int has_byte_level = 0;
    if (pre && !json_is_null(pre)) {
        t->pretok = calloc(1, sizeof *t->pretok);
        if (!t->pretok)
            return mx_fail(err, MX_ENOMEM, "tokenizer: out of memory");
        if (pretok_parse(t->pretok, pre, &has_byte_level, err) < 0)
            return err->code;
    }
    if (!has_byte_level)
        return mx_fail(err, MX_EUNSUPPORTED,
                       "pre_tokenizer has no ByteLevel step: only byte-level BPE is supported");
    return check_decoder(json_object_get(root, "decoder"), err);
}

static int load_root(mx_tokenizer *t, const json_t *root, mx_error *err)
{
    if (!json_is_object(root))
        return mx_fail(err, MX_EFORMAT, "tokenizer.json: top level is not an object");
    const json_t *model = json_object_get(root, "model");
    if (check_model(model, err) < 0 || load_vocab(t, json_object_get(model, "vocab"), err) < 0 ||
        load_added(t, json_object_get(root, "added_tokens"), err) < 0 ||
        load_components(t, root, err) < 0)
        return err->code;
    for (int b = 0; b < 256; b++) {
        unsigned char c = (unsigned char)b;
        if (!strmap_get(&t->vocab, &c, 1, &t->byte_id[b]))
            return mx_fail(err, MX_EFORMAT, "vocab has no token for byte 0x%02X (not a byte-level vocab)", b);
    }
    if (build_id_table(t, err) < 0 || load_merges(t, json_object_get(model, "merges"), err) < 0)
        return err->code;
    t->ignore_merges = json_is_true(json_object_get(model, "ignore_merges"));
    t->unk_id = -1;
    const char *unk = json_string_value(json_object_get(model, "unk_token"));
    if (unk && !strmap_get(&t->by_name, unk, strlen(unk), &t->unk_id))
        return mx_fail(err, MX_EFORMAT, "model BPE: unk_token '%s' is not in the vocab", unk);
    if (added_set_build(&t->raw_set, t->added, t->n_added, 0, t->normalizer, err) < 0 ||
        added_set_build(&t->norm_set, t->added, t->n_added, 1, t->normalizer, err) < 0)
        return err->code;
    return 0;
}

int mx_tokenizer_load_json(const char *json, size_t len, mx_tokenizer **out, mx_error *err)
{
    mx_error local;
    if (!err)
        err = &local;
    *out = NULL;
    json_error_t jerr;
    json_t *root = json_loadb(json, len, JSON_REJECT_DUPLICATES, &jerr);
    if (!root)
        return mx_fail(err, MX_EFORMAT, "tokenizer.json: invalid JSON at line %d column %d: %s",
                       jerr.line, jerr.column, jerr.text);
    mx_tokenizer *t = calloc(1, sizeof *t);
    if (!t) {
        json_decref(root);
        return mx_fail(err, MX_ENOMEM, "tokenizer: out of memory");
    }
    pthread_mutex_init(&t->cache_lock, NULL);
    int rc = load_root(t, root, err);
    json_decref(root);
    if (rc < 0) {
        mx_tokenizer_free(t);
        return rc;
    }
    *out = t;
    return 0;
}

int mx_tokenizer_load(const char *path, mx_tokenizer **out, mx_error *err)
{
    mx_error local;
    if (!err)
        err = &local;
    *out = NULL;
    FILE *f = fopen(path, "rb");
    if (!f)
        return mx_fail(err, MX_EIO, "%s: %s", path, strerror(errno));
    char *buf = NULL;
    size_t len = 0, cap = 0, got;
    do {
        if (len + 65536 > cap) {
            cap = cap ? cap * 2 : 1 << 20;
            char *p = realloc(buf, cap);
            if (!p) {
                free(buf);
                fclose(f);
                return mx_fail(err, MX_ENOMEM, "%s: out of memory reading the file", path);
            }
            buf = p;
        }
        got = fread(buf + len, 1, cap - len, f);
        len += got;
    } while (got > 0);
    int bad = ferror(f);
    fclose(f);
    if (bad) {
        free(buf);
        return mx_fail(err, MX_EIO, "%s: read error", path);
    }
    int rc = mx_tokenizer_load_json(buf ? buf : "", len, out, err);
    free(buf);
    if (rc < 0)
        mx_error_prefix(err, "%s", path);
    return rc;
}

int32_t mx_tokenizer_n_ids(const mx_tokenizer *t)
{
    return t->n_ids;
}

int32_t mx_tokenizer_token_id(const mx_tokenizer *t, const char *token)
{
    int32_t id;
    return strmap_get(&t->by_name, token, strlen(token), &id) ? id : -1;
}

int mx_tokenizer_is_special(const mx_tokenizer *t, int32_t id)
{
    return id >= 0 && id < t->n_ids && t->id_special[id];
}
