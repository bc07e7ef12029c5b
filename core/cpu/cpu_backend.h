/* cpu_backend.h - internals shared by the CPU backend's files (not for the model code,
 * which only sees core/backend.h). */
#ifndef MX_CPU_BACKEND_H
#define MX_CPU_BACKEND_H

#include <pthread.h>

#include "../backend.h"
#include "block_cache.h"
#include "threadpool.h"

typedef struct mx_cpu_impl {
    mx_threadpool *pool;
    mx_block_cache buffers; /* activation buffers, reused across layers and calls */
    struct mx_kv_pool *kv_pool; /* KV pages, budget and dtype (kv_pages_cpu.c) */
    /* the router's [T, experts] logits: kept and grown, so a decode step allocates nothing
     * (under AddressSanitizer the block cache above keeps nothing) */
    pthread_mutex_t route_mu;
    float *route_logits;
    size_t route_cap;           /* floats */
} mx_cpu_impl;

static inline mx_threadpool *mx_cpu_pool(mx_backend *be)
{
    return ((mx_cpu_impl *)be->impl)->pool;
}

/* Checks that t is a CPU F32 2-D tensor with the given columns (cols < 0: any); act_check.c. */
int mx_cpu_check_act(const mx_tensor *t, const char *what, int64_t cols, mx_error *err);

int mx_cpu_lightning(mx_backend *be, mx_tensor *o, const mx_tensor *qkv, const mx_span *spans,
                     int n_spans, mx_lightning_state *const *states, const float *decay, int heads,
                     int head_dim, mx_error *err);
int mx_cpu_lightning_state_init(mx_backend *be, mx_lightning_state *st, int heads, int head_dim,
                                mx_error *err);
void mx_cpu_lightning_state_free(mx_backend *be, mx_lightning_state *st);

int mx_cpu_softmax_attention(mx_backend *be, mx_tensor *o, mx_tensor *q, const mx_tensor *k,
                             const mx_tensor *v, const mx_span *spans, int n_spans,
                             mx_kv_cache *const *caches, int heads, int kv_heads, int head_dim,
                             int rotary_dim, double rope_theta, mx_error *err);
int mx_cpu_kv_cache_init(mx_backend *be, mx_kv_cache *kv, int kv_heads, int head_dim, mx_error *err);
void mx_cpu_kv_cache_free(mx_backend *be, mx_kv_cache *kv);
void mx_cpu_kv_cache_truncate(mx_backend *be, mx_kv_cache *kv, int64_t len);
int mx_cpu_kv_configure(mx_backend *be, const mx_kv_options *opt, mx_error *err);
void mx_cpu_kv_usage(mx_backend *be, mx_kv_usage *out);

#endif
