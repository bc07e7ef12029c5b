/* block_cache.c - every block carries a 64-byte header with its usable size, so put() needs
 * no size from the caller; get() takes the smallest cached block that fits and wastes at most
 * half of it, otherwise allocates. */
#include "block_cache.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define HEADER 64

static size_t block_size(const void *block)
{
    size_t bytes;
    memcpy(&bytes, (const char *)block - HEADER, sizeof bytes);
    return bytes;
}

void mx_block_cache_init(mx_block_cache *c, size_t max_cached_bytes)
{
    memset(c, 0, sizeof *c);
    pthread_mutex_init(&c->lock, NULL);
    c->max_cached_bytes = max_cached_bytes;
}

void mx_block_cache_destroy(mx_block_cache *c)
{
    for (int i = 0; i < c->n_blocks; i++)
        free((char *)c->blocks[i] - HEADER);
    c->n_blocks = 0;
    c->cached_bytes = 0;
    pthread_mutex_destroy(&c->lock);
}

void *mx_block_cache_get(mx_block_cache *c, size_t bytes)
{
    size_t need = (bytes + 63) / 64 * 64;
    if (need == 0)
        need = 64;
    void *found = NULL;
    pthread_mutex_lock(&c->lock);
    int best = -1;
    for (int i = 0; i < c->n_blocks; i++) {
        size_t have = block_size(c->blocks[i]);
        if (have >= need && have / 2 <= need && (best < 0 || have < block_size(c->blocks[best])))
            best = i;
    }
    if (best >= 0) {
        found = c->blocks[best];
        c->cached_bytes -= block_size(found);
        c->blocks[best] = c->blocks[--c->n_blocks];
    }
    pthread_mutex_unlock(&c->lock);
    if (!found) {
        if (need > SIZE_MAX - HEADER)
            return NULL;
        char *base = aligned_alloc(64, need + HEADER);
        if (!base)
            return NULL;
        memcpy(base, &need, sizeof need);
        found = base + HEADER;
    }
    memset(found, 0, need);
    return found;
}

void mx_block_cache_put(mx_block_cache *c, void *block)
{
    if (!block)
        return;
    size_t bytes = block_size(block);
    pthread_mutex_lock(&c->lock);
    if (c->n_blocks < MX_BLOCK_CACHE_SLOTS && c->cached_bytes + bytes <= c->max_cached_bytes) {
        c->blocks[c->n_blocks++] = block;
        c->cached_bytes += bytes;
        block = NULL;
    }
    pthread_mutex_unlock(&c->lock);
    if (block)
        free((char *)block - HEADER);
}
