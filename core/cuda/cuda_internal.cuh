/* cuda_internal.cuh - what the CUDA backend's .cu files share: the backend's private state,
 * error-checking macros, argument checks and the op functions wired into the table in
 * backend_cuda.cu. Not for use outside core/cuda. */
#ifndef MX_CUDA_INTERNAL_CUH
#define MX_CUDA_INTERNAL_CUH

extern "C" {
#include "core/backend.h"
#include "core/cuda/mx_cuda.h"
}

#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

struct kv_pool;

/* The backend's private state. One stream: every op is queued on it in call order, so buffers
 * reused from one op to the next (scratch, params) are never read and written at once. */
struct cuda_impl {
    int device;
    mx_cuda_options opt;
    cudaStream_t stream;
    cublasHandle_t cublas;
    void *scratch;          /* intermediates of one op (grown on demand) */
    size_t scratch_bytes;
    void *params;           /* device copies of an op's host arrays (ids, spans, scales) */
    size_t params_bytes, params_used;
    mx_kv_options kv;       /* KV dtype and budget (0 until resolved at configure or first use) */
    uint64_t kv_used_bytes; /* pages held by live caches */
    int kv_caches;          /* live caches (kv_configure only while 0) */
    struct kv_pool *kv_pool; /* device page blocks and free lists (softmax_attention.cu) */
};

static inline cuda_impl *impl_of(mx_backend *be)
{
    return (cuda_impl *)be->impl;
}

/* Every CUDA runtime call that can fail goes through CU_TRY, which returns MX_EDEVICE naming the
 * call and CUDA's own message. `err` must be in scope. */
#define CU_TRY(call)                                                                              \
    do {                                                                                          \
        cudaError_t cu_e_ = (call);                                                               \
        if (cu_e_ != cudaSuccess)                                                                 \
            return mx_fail(err, MX_EDEVICE, "%s failed: %s", #call, cudaGetErrorString(cu_e_));   \
    } while (0)
#define CUBLAS_TRY(call)                                                                          \
    do {                                                                                          \
        cublasStatus_t cb_s_ = (call);                                                            \
        if (cb_s_ != CUBLAS_STATUS_SUCCESS)                                                       \
            return mx_fail(err, MX_EDEVICE, "%s failed: %s", #call, cublasGetStatusString(cb_s_)); \
    } while (0)
#define LAUNCH_CHECK() CU_TRY(cudaGetLastError())
#define TRY(call)                                                                                 \
    do {                                                                                          \
        int try_rc_ = (call);                                                                     \
        if (try_rc_ != 0)                                                                         \
            return try_rc_;                                                                       \
    } while (0)

/* cudaMalloc for long-lived buffers (scratch, params, KV pages); when the device is full it
 * returns the stream-ordered pool's cached free blocks to the driver and tries once more. */
cudaError_t cuda_malloc(void **p, size_t bytes);

/* Makes the backend's device current for the calling thread (TP drives several devices). */
int cuda_enter(mx_backend *be, mx_error *err);
/* Device scratch of at least `bytes` (contents undefined, valid until the next op). */
int cuda_scratch(mx_backend *be, size_t bytes, void **out, mx_error *err);
/* Params arena: cuda_params_reset(be, total) makes room for `total` bytes of host arrays (plus
 * alignment), then each cuda_params_push copies one array and returns its device address. */
int cuda_params_reset(mx_backend *be, size_t total, mx_error *err);
int cuda_params_push(mx_backend *be, const void *src, size_t bytes, void **dev, mx_error *err);

/* Argument checks; they name the tensor in the message. */
int cuda_check_act(const mx_tensor *t, const char *name, mx_error *err);      /* F32 2-D on device */
int cuda_check_weight(const mx_tensor *t, const char *name, mx_error *err);   /* BF16/F32 on device */
int cuda_check_same(const mx_tensor *a, const mx_tensor *b, const char *an, const char *bn,
                    mx_error *err);

/* A 1-D weight row as fp32 (BF16 or F32). */
__device__ __forceinline__ float load_w(const void *w, int is_bf16, int64_t i)
{
    return is_bf16 ? __bfloat162float(((const __nv_bfloat16 *)w)[i]) : ((const float *)w)[i];
}

/* ---- ops (elementwise.cu, matmul.cu, lightning.cu, softmax_attention.cu, moe.cu) ---- */
int cuda_embed(mx_backend *be, mx_tensor *out, const int32_t *ids, int n, const mx_tensor *table,
               mx_error *err);
int cuda_matmul(mx_backend *be, mx_tensor *y, const mx_tensor *x, const mx_tensor *w, mx_error *err);
int cuda_rmsnorm(mx_backend *be, mx_tensor *y, const mx_tensor *x, const mx_tensor *w, float eps,
                 mx_error *err);
int cuda_residual(mx_backend *be, mx_tensor *y, const mx_tensor *x, float alpha, const mx_tensor *a,
                  float beta, mx_error *err);
int cuda_silu(mx_backend *be, mx_tensor *x, mx_error *err);
int cuda_swiglu(mx_backend *be, mx_tensor *y, const mx_tensor *g, const mx_tensor *u, mx_error *err);
int cuda_sigmoid_mul(mx_backend *be, mx_tensor *y, const mx_tensor *g, const mx_tensor *x,
                     mx_error *err);
int cuda_lightning(mx_backend *be, mx_tensor *o, const mx_tensor *qkv, const mx_span *spans,
                   int n_spans, mx_lightning_state *const *states, const float *decay, int heads,
                   int head_dim, mx_error *err);
int cuda_lightning_state_init(mx_backend *be, mx_lightning_state *st, int heads, int head_dim,
                              mx_error *err);
void cuda_lightning_state_free(mx_backend *be, mx_lightning_state *st);
int cuda_softmax_attention(mx_backend *be, mx_tensor *o, mx_tensor *q, const mx_tensor *k,
                           const mx_tensor *v, const mx_span *spans, int n_spans,
                           mx_kv_cache *const *caches, int heads, int kv_heads, int head_dim,
                           int rotary_dim, double rope_theta, mx_error *err);
int cuda_kv_cache_init(mx_backend *be, mx_kv_cache *kv, int kv_heads, int head_dim, mx_error *err);
void cuda_kv_cache_free(mx_backend *be, mx_kv_cache *kv);
void cuda_kv_cache_truncate(mx_backend *be, mx_kv_cache *kv, int64_t len);
int cuda_kv_configure(mx_backend *be, const mx_kv_options *opt, mx_error *err);
void cuda_kv_usage(mx_backend *be, mx_kv_usage *out);
/* Frees the KV page pool's device blocks (backend destruction; no cache may be in use). */
void cuda_kv_pool_destroy(cuda_impl *im);
int cuda_moe_route(mx_backend *be, int32_t *ids, float *weights, const mx_tensor *x,
                   const mx_tensor *gate, int k, mx_error *err);
int cuda_gather_rows(mx_backend *be, mx_tensor *out, const mx_tensor *x, const int32_t *rows, int n,
                     mx_error *err);
int cuda_scatter_add_rows(mx_backend *be, mx_tensor *out, const mx_tensor *y, const int32_t *rows,
                          const float *scale, int n, mx_error *err);

/* Tensor-core lightning prefill (lightning_tc.cu) for one span; decay on the device. */
bool lightning_tc_supported(int head_dim);
int lightning_prefill_tc(mx_backend *be, float *o, const float *qkv, float *S, const float *ddecay,
                         int heads, int D, int64_t start, int len, mx_error *err);

/* Span checks shared by both attention ops: spans inside [0, T), not overlapping, len >= 1. */
int cuda_check_spans(const mx_span *spans, int n_spans, int64_t T, mx_error *err);

/* Launch helper: blocks of `threads` covering n items, capped (kernels use grid-stride loops). */
static inline unsigned grid_for(int64_t n, int threads)
{
    int64_t b = (n + threads - 1) / threads;
    if (b < 1)
        b = 1;
    return (unsigned)(b > 65535 * 16 ? 65535 * 16 : b);
}

#endif
