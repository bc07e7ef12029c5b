/* tok_bpe.c - byte-pair encoding of one pre-tokenized piece: start from one symbol per byte
 * and repeatedly apply the lowest-ranked merge (leftmost first on ties) using a binary heap
 * over a linked list of symbols; results for short pieces are cached. */
#include "core/tokenizer/tok_internal.h"

#include <stdlib.h>
#include <string.h>

typedef struct {
    uint32_t rank, pos;
} heap_item;

static int heap_less(heap_item a, heap_item b)
{
    return a.rank < b.rank || (a.rank == b.rank && a.pos < b.pos);
}

static void heap_push(heap_item *h, size_t *n, heap_item x)
{
    size_t i = (*n)++;
    while (i > 0) {
        size_t parent = (i - 1) / 2;
        if (!heap_less(x, h[parent]))
            break;
        h[i] = h[parent];
        i = parent;
    }
    h[i] = x;
}

static heap_item heap_pop(heap_item *h, size_t *n)
{
    heap_item top = h[0], x = h[--(*n)];
    size_t i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= *n)
            break;
        if (c + 1 < *n && heap_less(h[c + 1], h[c]))
            c++;
        if (!heap_less(h[c], x))
            break;
        h[i] = h[c];
        i = c;
    }
    if (*n)
        h[i] = x;
    return top;
}

#define CACHE_MAX_WORD 256
#define CACHE_MAX_ENTRIES 200000

/* The merge loop proper. Symbols are indexed by the byte they start at. */
static int bpe_merge(const mx_tokenizer *t, const unsigned char *w, size_t n, mx_tok_ids *out,
                     mx_error *err)
{
    int32_t stack_ids[64];
    int32_t stack_next[64], stack_prev[64];
    heap_item stack_heap[3 * 64]; /* each merge pushes at most two entries */
    int big = n > 64;
    int32_t *id = big ? malloc(n * sizeof *id) : stack_ids;
    int32_t *next = big ? malloc(n * sizeof *next) : stack_next;
    int32_t *prev = big ? malloc(n * sizeof *prev) : stack_prev;
    heap_item *heap = big ? malloc(3 * n * sizeof *heap) : stack_heap;
    int rc = 0;
    if (!id || !next || !prev || !heap) {
        rc = mx_fail(err, MX_ENOMEM, "tokenizer: out of memory in BPE");
        goto done;
    }
    size_t hn = 0;
    for (size_t i = 0; i < n; i++) {
        id[i] = t->byte_id[w[i]];
        next[i] = i + 1 < n ? (int32_t)(i + 1) : -1;
        prev[i] = (int32_t)i - 1;
    }
    for (size_t i = 0; i + 1 < n; i++) {
        uint32_t rank;
        int32_t merged;
        if (pairmap_get(&t->merges, id[i], id[i + 1], &rank, &merged))
            heap_push(heap, &hn, (heap_item){ rank, (uint32_t)i });
    }
    while (hn) {
        heap_item top = heap_pop(heap, &hn);
        int32_t p = (int32_t)top.pos, q = next[p];
        if (id[p] < 0 || q < 0)
            continue;
        uint32_t rank;
        int32_t merged;
        if (!pairmap_get(&t->merges, id[p], id[q], &rank, &merged) || rank != top.rank)
            continue; /* stale: one side has merged since this entry was pushed */
        id[p] = merged;
        id[q] = -1;
        next[p] = next[q];
        if (next[q] >= 0)
            prev[next[q]] = p;
        if (prev[p] >= 0 && pairmap_get(&t->merges, id[prev[p]], id[p], &rank, &merged))
            heap_push(heap, &hn, (heap_item){ rank, (uint32_t)prev[p] });
        if (next[p] >= 0 && pairmap_get(&t->merges, id[p], id[next[p]], &rank, &merged))
            heap_push(heap, &hn, (heap_item){ rank, (uint32_t)p });
    }
    for (int32_t i = 0; i >= 0 && rc == 0; i = next[i])
        rc = mx_tok_ids_push(out, id[i], err);
done:
    if (big) {
        free(id);
        free(next);
        free(prev);
        free(heap);
    }
    return rc;
}

/* The cache is the tokenizer's only mutable state; a const tokenizer shared by threads
 * takes the lock around it (the lock is uncontended in the single-thread case). */
static int cache_get(const mx_tokenizer *t, const unsigned char *w, size_t n, mx_tok_ids *out,
                     int *hit, mx_error *err)
{
    mx_tokenizer *mt = (mx_tokenizer *)t;
    int32_t at;
    int rc = 0;
    *hit = 0;
    pthread_mutex_lock(&mt->cache_lock);
    if (strmap_get(&mt->cache, w, n, &at)) {
        *hit = 1;
        int32_t count = mt->cache_ids[at];
        for (int32_t i = 0; i < count && rc == 0; i++)
            rc = mx_tok_ids_push(out, mt->cache_ids[at + 1 + i], err);
    }
    pthread_mutex_unlock(&mt->cache_lock);
    return rc;
}

static void cache_put(const mx_tokenizer *t, const unsigned char *w, size_t n, const int32_t *ids,
                      size_t count)
{
    mx_tokenizer *mt = (mx_tokenizer *)t;
    pthread_mutex_lock(&mt->cache_lock);
    if (mt->cache.n >= CACHE_MAX_ENTRIES) { /* bound memory: start over */
        strmap_free(&mt->cache);
        mt->cache_ids_len = 0;
    }
    if (mt->cache_ids_len + count + 1 > mt->cache_ids_cap) {
        size_t cap = mt->cache_ids_cap ? mt->cache_ids_cap * 2 : 4096;
        while (cap < mt->cache_ids_len + count + 1)
            cap *= 2;
        int32_t *p = realloc(mt->cache_ids, cap * sizeof *p);
        if (!p)
            goto out; /* caching is optional */
        mt->cache_ids = p;
        mt->cache_ids_cap = cap;
    }
    size_t at = mt->cache_ids_len;
    mt->cache_ids[at] = (int32_t)count;
    memcpy(mt->cache_ids + at + 1, ids, count * sizeof *ids);
    if (strmap_put(&mt->cache, w, n, (int32_t)at, NULL) == 0)
        mt->cache_ids_len += count + 1;
out:
    pthread_mutex_unlock(&mt->cache_lock);
}

int bpe_encode_word(const mx_tokenizer *t, const unsigned char *w, size_t n, mx_tok_ids *out,
                    mx_error *err)
{
    if (n == 0)
        return 0;
    if (n == 1)
        return mx_tok_ids_push(out, t->byte_id[w[0]], err);
    int32_t whole;
    if (t->ignore_merges && strmap_get(&t->vocab, w, n, &whole))
        return mx_tok_ids_push(out, whole, err);
    int cacheable = n < CACHE_MAX_WORD, hit = 0;
    if (cacheable && (cache_get(t, w, n, out, &hit, err) < 0 || hit))
        return hit ? 0 : err->code;
    size_t start = out->len;
    if (bpe_merge(t, w, n, out, err) < 0)
        return err->code;
    if (cacheable)
        cache_put(t, w, n, out->ids + start, out->len - start);
    return 0;
}
