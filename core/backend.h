/* backend.h - the small set of operations the model is written in, behind a table of
 * function pointers, so one model file runs on the CPU backend (core/cpu) or the CUDA backend
 * (core/cuda). Activations are 2-D tensors [rows = tokens, cols] on the backend's device in
 * be->act_dtype; weights are tensors the backend accepted through upload_weight.
 * Every op returns 0 or a negative mx_code and fills err; ops never print. */
#ifndef MX_BACKEND_H
#define MX_BACKEND_H

#include <stdbool.h>
#include <stdint.h>

#include "error.h"
#include "kv_cache.h"
#include "tensor.h"

/* One sequence's tokens inside a packed batch: rows [start, start+len). */
typedef struct mx_span {
    int start;
    int len;
} mx_span;

/* Per-sequence state of one lightning layer: fp32 S [heads, head_dim, head_dim]. */
typedef struct mx_lightning_state {
    mx_tensor S;     /* on the backend's device, F32 */
    /* Undo mode (mx_sequence_keep_undo), else empty: a second buffer of S's shape. The
     * lightning op then writes the advanced state here and leaves S as it was, and the model
     * swaps the two, so the state from before a step stays in `spare` as the step's undo. */
    mx_tensor spare;
    bool started;    /* false until the first token; a zero state either way */
    bool spare_is_undo;  /* spare holds the state from before this layer's advance in the step
                          * since mx_sequence_save */
} mx_lightning_state;

/* Per-sequence KV cache of one softmax layer (post-RoPE K and V): a page table of
 * MX_KV_PAGE_TOKENS-token pages in the format of core/kv_cache.h, taken from the backend's KV
 * budget. len is tokens stored, capacity tokens the pages hold. Growing never copies. */
typedef struct mx_kv_cache {
    int kv_heads, head_dim;
    mx_kv_dtype dtype;
    int64_t len, capacity;
    void *impl;
} mx_kv_cache;

typedef struct mx_backend mx_backend;

struct mx_backend {
    const char *name;        /* "cpu", "cuda" */
    mx_device device;
    mx_dtype act_dtype;      /* dtype of activations this backend computes in */
    void *impl;

    void (*destroy)(mx_backend *be);

    /* ---- memory ---- */
    /* Allocates a zeroed tensor on the device. */
    int (*alloc)(mx_backend *be, mx_tensor *t, mx_dtype dtype, int ndim, const int64_t *shape,
                 mx_error *err);
    void (*free)(mx_backend *be, mx_tensor *t);
    /* Makes a device copy of a CPU weight (CPU backend: a view of the same memory, no copy).
     * Free with free_weight. */
    int (*upload_weight)(mx_backend *be, mx_tensor *dst, const mx_tensor *host, mx_error *err);
    void (*free_weight)(mx_backend *be, mx_tensor *t);
    /* Host f32 <-> device activation copies of a whole tensor. */
    int (*to_host_f32)(mx_backend *be, float *dst, const mx_tensor *src, mx_error *err);
    int (*from_host_f32)(mx_backend *be, mx_tensor *dst, const float *src, mx_error *err);
    /* Waits until queued work finished (no-op on CPU). */
    int (*sync)(mx_backend *be, mx_error *err);

    /* ---- dense ops ---- */
    /* out[T, hidden] = table[ids[t]] */
    int (*embed)(mx_backend *be, mx_tensor *out, const int32_t *ids, int n, const mx_tensor *table,
                 mx_error *err);
    /* y[M, N] = x[M, K] . w[N, K]^T, fp32 accumulation */
    int (*matmul)(mx_backend *be, mx_tensor *y, const mx_tensor *x, const mx_tensor *w, mx_error *err);
    /* y = x * rsqrt(mean(x^2) + eps) * w over each row (y may be x) */
    int (*rmsnorm)(mx_backend *be, mx_tensor *y, const mx_tensor *x, const mx_tensor *w, float eps,
                   mx_error *err);
    /* y = x * alpha + a * beta elementwise (y may alias x or a) */
    int (*residual)(mx_backend *be, mx_tensor *y, const mx_tensor *x, float alpha, const mx_tensor *a,
                    float beta, mx_error *err);
    /* x = silu(x) in place */
    int (*silu)(mx_backend *be, mx_tensor *x, mx_error *err);
    /* y = silu(g) * u elementwise (y may be g) */
    int (*swiglu)(mx_backend *be, mx_tensor *y, const mx_tensor *g, const mx_tensor *u, mx_error *err);
    /* y = sigmoid(g) * x elementwise (y may be x) */
    int (*sigmoid_mul)(mx_backend *be, mx_tensor *y, const mx_tensor *g, const mx_tensor *x,
                       mx_error *err);

    /* ---- attention ---- */
    /* Lightning attention for a ragged batch. qkv [T, heads*3*head_dim] is already SiLU'd and
     * per-head interleaved q|k|v; o [T, heads*head_dim]. decay[h] = s_h (the layer's fp32 rate).
     * For each span i the tokens advance states[i] (blocked form for chunks, recurrence per
     * token; both equal the spec's math): in place, or, when states[i]->spare.data is set,
     * from S into spare with S left unchanged (the caller swaps them). */
    int (*lightning)(mx_backend *be, mx_tensor *o, const mx_tensor *qkv, const mx_span *spans,
                     int n_spans, mx_lightning_state *const *states, const float *decay, int heads,
                     int head_dim, mx_error *err);
    /* A zero state without a spare; free releases S (a spare is its allocator's to free). */
    int (*lightning_state_init)(mx_backend *be, mx_lightning_state *st, int heads, int head_dim,
                                mx_error *err);
    void (*lightning_state_free)(mx_backend *be, mx_lightning_state *st);

    /* Softmax GQA attention for a ragged batch: applies partial NeoX RoPE (positions continue
     * from caches[i]->len) to q and k, appends k/v to the caches, attends causally with scale
     * 1/sqrt(head_dim) and writes o [T, heads*head_dim]. q is modified (RoPE applied). */
    int (*softmax_attention)(mx_backend *be, mx_tensor *o, mx_tensor *q, const mx_tensor *k,
                             const mx_tensor *v, const mx_span *spans, int n_spans,
                             mx_kv_cache *const *caches, int heads, int kv_heads, int head_dim,
                             int rotary_dim, double rope_theta, mx_error *err);
    /* An empty cache in the backend's KV dtype; pages come from the KV budget as tokens are
     * appended. softmax_attention fails with MX_ENOMEM ("KV budget ...") when the budget is
     * spent, leaving the cache as it was. */
    int (*kv_cache_init)(mx_backend *be, mx_kv_cache *kv, int kv_heads, int head_dim, mx_error *err);
    /* Returns the cache's pages to the budget. */
    void (*kv_cache_free)(mx_backend *be, mx_kv_cache *kv);
    /* Drops the tokens at positions >= len (len <= kv->len): the undo of a failed step's
     * appends. Whole pages past the new tail go back to the budget; the tail page's dropped
     * slots read as never written. f32 and bf16 pages end bit-identical to before the
     * appends; 8-bit pages keep a scale a dropped token may have grown (the kept tokens were
     * re-encoded, within one 8-bit step). Waits for queued work reading the cache. */
    void (*kv_cache_truncate)(mx_backend *be, mx_kv_cache *kv, int64_t len);
    /* Sets the KV dtype and budget; only while no cache exists (MX_EINVAL otherwise). Until
     * called, a backend uses {MX_KV_BF16, default budget}. */
    int (*kv_configure)(mx_backend *be, const mx_kv_options *opt, mx_error *err);
    /* Current dtype, page size, budget and bytes in use. */
    void (*kv_usage)(mx_backend *be, mx_kv_usage *out);

    /* ---- MoE ---- */
    /* Router: p = softmax(x . gate^T) over experts in fp32, top-k (largest first, ties to the
     * lower id), renormalised. Writes host arrays ids[T*k], weights[T*k]. */
    int (*moe_route)(mx_backend *be, int32_t *ids, float *weights, const mx_tensor *x,
                     const mx_tensor *gate, int k, mx_error *err);
    /* out[i] = x[rows[i]] for i < n */
    int (*gather_rows)(mx_backend *be, mx_tensor *out, const mx_tensor *x, const int32_t *rows, int n,
                       mx_error *err);
    /* out[rows[i]] += scale[i] * y[i] for i < n (rows may repeat across calls, not within one) */
    int (*scatter_add_rows)(mx_backend *be, mx_tensor *out, const mx_tensor *y, const int32_t *rows,
                            const float *scale, int n, mx_error *err);
};

/* The CPU backend with n_threads worker threads (0 = one per CPU this process may use). */
int mx_backend_cpu_create(int n_threads, mx_backend **out, mx_error *err);
/* Pins the CPU backend's threads to distinct CPUs (mx_threadpool_pin: for a process whose
 * threads span every CPU it may use). MX_EINVAL on another backend. */
int mx_backend_cpu_pin_threads(mx_backend *be, mx_error *err);
/* The CUDA backend on device ordinal `device`; MX_EDEVICE with a clear message when the
 * build has no CUDA or no GPU is present. */
int mx_backend_cuda_create(int device, mx_backend **out, mx_error *err);
/* By name: "cpu" or "cuda". */
int mx_backend_create(const char *name, int n_threads, mx_backend **out, mx_error *err);

#endif
