/* tok_maps.c - the two hash tables the tokenizer needs: byte string -> id (vocab, cache,
 * token names) and id pair -> merge rank (BPE merges). Open addressing, linear probing;
 * tables only grow, so lookups never see a tombstone. */
#include "core/tokenizer/tok_internal.h"

#include <stdlib.h>
#include <string.h>

uint64_t tok_hash_bytes(const void *key, size_t len)
{
    /* FNV-1a, then a multiply so short keys spread over the high bits we index with */
    const unsigned char *p = key;
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < len; i++)
        h = (h ^ p[i]) * 0x100000001b3ull;
    return h * 0x9E3779B97F4A7C15ull;
}

void strmap_free(mx_strmap *m)
{
    free(m->slots);
    free(m->entries);
    free(m->blob);
    memset(m, 0, sizeof *m);
}

static size_t strmap_find(const mx_strmap *m, const void *key, size_t len, uint64_t h)
{
    size_t mask = m->n_slots - 1, i = (size_t)(h >> 24) & mask;
    for (;;) {
        uint32_t s = m->slots[i];
        if (s == 0)
            return i;
        const struct strmap_entry *e = &m->entries[s - 1];
        if (e->len == len && memcmp(m->blob + e->off, key, len) == 0)
            return i;
        i = (i + 1) & mask;
    }
}

int strmap_get(const mx_strmap *m, const void *key, size_t len, int32_t *val)
{
    if (m->n_slots == 0)
        return 0;
    size_t i = strmap_find(m, key, len, tok_hash_bytes(key, len));
    if (m->slots[i] == 0)
        return 0;
    *val = m->entries[m->slots[i] - 1].val;
    return 1;
}

static int strmap_grow(mx_strmap *m, mx_error *err)
{
    size_t n_slots = m->n_slots ? m->n_slots * 2 : 64;
    uint32_t *slots = calloc(n_slots, sizeof *slots);
    if (!slots)
        return mx_fail(err, MX_ENOMEM, "tokenizer: out of memory growing a hash table");
    free(m->slots);
    m->slots = slots;
    m->n_slots = n_slots;
    for (size_t e = 0; e < m->n; e++) {
        const struct strmap_entry *en = &m->entries[e];
        size_t i = strmap_find(m, m->blob + en->off, en->len, tok_hash_bytes(m->blob + en->off, en->len));
        m->slots[i] = (uint32_t)(e + 1);
    }
    return 0;
}

int strmap_put(mx_strmap *m, const void *key, size_t len, int32_t val, mx_error *err)
{
    if ((m->n + 1) * 4 > m->n_slots * 3 && strmap_grow(m, err) < 0)
        return err ? err->code : MX_ENOMEM;
    size_t i = strmap_find(m, key, len, tok_hash_bytes(key, len));
    if (m->slots[i]) {
        m->entries[m->slots[i] - 1].val = val;
        return 0;
    }
    if (len > UINT32_MAX || m->blob_len + len > UINT32_MAX)
        return mx_fail(err, MX_ENOMEM, "tokenizer: hash table keys exceed 4 GiB");
    if (m->n == m->cap) {
        size_t cap = m->cap ? m->cap * 2 : 64;
        void *p = realloc(m->entries, cap * sizeof *m->entries);
        if (!p)
            return mx_fail(err, MX_ENOMEM, "tokenizer: out of memory");
        m->entries = p;
        m->cap = cap;
    }
    if (m->blob_len + len + 1 > m->blob_cap) {
        size_t cap = m->blob_cap ? m->blob_cap * 2 : 1024;
        while (cap < m->blob_len + len + 1)
            cap *= 2;
        void *p = realloc(m->blob, cap);
        if (!p)
            return mx_fail(err, MX_ENOMEM, "tokenizer: out of memory");
        m->blob = p;
        m->blob_cap = cap;
    }
    if (len)
        memcpy(m->blob + m->blob_len, key, len);
    m->entries[m->n] = (struct strmap_entry){ (uint32_t)m->blob_len, (uint32_t)len, val };
    m->blob_len += len;
    m->slots[i] = (uint32_t)(++m->n);
    return 0;
}

void pairmap_free(mx_pairmap *m)
{
    free(m->keys);
    free(m->rank);
    free(m->merged);
    memset(m, 0, sizeof *m);
}

static void pairmap_insert(mx_pairmap *m, uint64_t key, uint32_t rank, int32_t merged)
{
    uint64_t h = key * 0x9E3779B97F4A7C15ull;
    size_t mask = m->n_slots - 1, i = (size_t)(h >> 20) & mask;
    while (m->keys[i] != 0 && m->keys[i] != key)
        i = (i + 1) & mask;
    if (m->keys[i] == 0)
        m->n++;
    m->keys[i] = key;
    m->rank[i] = rank;
    m->merged[i] = merged;
}

int pairmap_put(mx_pairmap *m, int32_t a, int32_t b, uint32_t rank, int32_t merged, mx_error *err)
{
    if ((m->n + 1) * 2 > m->n_slots) {
        mx_pairmap g = { 0 };
        g.n_slots = m->n_slots ? m->n_slots * 2 : 1024;
        g.keys = calloc(g.n_slots, sizeof *g.keys);
        g.rank = malloc(g.n_slots * sizeof *g.rank);
        g.merged = malloc(g.n_slots * sizeof *g.merged);
        if (!g.keys || !g.rank || !g.merged) {
            pairmap_free(&g);
            return mx_fail(err, MX_ENOMEM, "tokenizer: out of memory for merges");
        }
        for (size_t i = 0; i < m->n_slots; i++)
            if (m->keys[i])
                pairmap_insert(&g, m->keys[i], m->rank[i], m->merged[i]);
        pairmap_free(m);
        *m = g;
    }
    uint64_t key = (((uint64_t)(uint32_t)a << 32) | (uint32_t)b) + 1;
    pairmap_insert(m, key, rank, merged);
    return 0;
}
