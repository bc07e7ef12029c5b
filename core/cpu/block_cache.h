/* block_cache.h - a small caching allocator for the CPU backend's activation buffers.
 * A forward pass allocates and frees the same few sizes at every layer; going to malloc each
 * time means mmap/munmap and page faults for every buffer above glibc's mmap threshold
 * (measured: several ms per decode step of a full-width layer). Freed blocks are kept (up to
 * a byte and count limit) and handed out again. Thread-safe; owned by one backend. */
#ifndef MX_BLOCK_CACHE_H
#define MX_BLOCK_CACHE_H

#include <pthread.h>
#include <stddef.h>

#define MX_BLOCK_CACHE_SLOTS 64

typedef struct mx_block_cache {
    pthread_mutex_t lock;
    void *blocks[MX_BLOCK_CACHE_SLOTS]; /* free blocks (pointers as returned to callers) */
    int n_blocks;
    size_t cached_bytes, max_cached_bytes;
} mx_block_cache;

void mx_block_cache_init(mx_block_cache *c, size_t max_cached_bytes);
/* Frees every cached block. Blocks still handed out must be released first. */
void mx_block_cache_destroy(mx_block_cache *c);
/* A 64-byte aligned block of at least `bytes`, zero-filled; NULL when out of memory. */
void *mx_block_cache_get(mx_block_cache *c, size_t bytes);
/* Returns a block from mx_block_cache_get (NULL is ignored). */
void mx_block_cache_put(mx_block_cache *c, void *block);

#endif
