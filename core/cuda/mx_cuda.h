/* mx_cuda.h - what the CUDA backend offers beyond the mx_backend op table: creation options,
 * the grouped expert SwiGLU used by expert-svc, sliced weight upload and NCCL tensor
 * parallelism inside one pod. Plain C; every function also exists (failing with MX_EDEVICE)
 * in builds without CUDA, so callers need no #ifdef. */
#ifndef MX_CUDA_H
#define MX_CUDA_H

#include <stdint.h>

#include "core/backend.h"

typedef struct mx_cuda_options {
    int device;            /* CUDA device ordinal */
    /* 0 (default): exact path, fp32 arithmetic everywhere (activations F32, BF16 weights widened
     * to fp32, fp32 accumulation, no TF32): meets the golden fp32 tier.
     * 1: matmul and lightning prefill round activations to bf16 and use tensor cores with fp32
     * accumulation (fast; golden bf16 tier only). Activations stay F32 in memory either way. */
    int bf16_tensor_cores;
    int kv_page_tokens;    /* 0 or MX_KV_PAGE_TOKENS (kept for callers that set it; pages have
                              one size everywhere, see core/kv_cache.h) */
} mx_cuda_options;

/* Like mx_backend_cuda_create with explicit options (opt NULL = defaults on device 0). */
int mx_backend_cuda_create_ex(const mx_cuda_options *opt, mx_backend **out, mx_error *err);

/* Copies part of a CPU weight to the device: dim 0 takes rows [begin, begin+count) (layers whose
 * outputs are split: qkv_proj, output_gate, q/k/v_proj, norm weights, w1, w3), dim 1 takes columns
 * (layers whose inputs are split: out_proj, o_proj, w2). Free with be->free_weight. */
int mx_cuda_upload_weight_slice(mx_backend *be, mx_tensor *dst, const mx_tensor *host, int dim,
                                int64_t begin, int64_t count, mx_error *err);

/* ---- grouped expert SwiGLU (expert-svc) ---- */

/* One expert's share of a token batch: rows [row0, row0+n_rows) of x and out. */
typedef struct mx_cuda_expert_group {
    int row0, n_rows;
    const mx_tensor *w1;   /* gate proj [inter, hidden], uploaded BF16 */
    const mx_tensor *w3;   /* up proj   [inter, hidden] */
    const mx_tensor *w2;   /* down proj [hidden, inter] */
} mx_cuda_expert_group;

/* out[r] = w2 . (silu(w1 . x[r]) * (w3 . x[r])) for every row of every group, in two kernel
 * launches for all experts together (fp32 accumulation, exact fp32 arithmetic). All groups
 * share one inter width; rows of different groups must not overlap. x, out: [T, hidden] F32. */
int mx_cuda_grouped_swiglu(mx_backend *be, mx_tensor *out, const mx_tensor *x,
                           const mx_cuda_expert_group *groups, int n_groups, mx_error *err);

/* ---- tensor parallelism over the GPUs of one pod (NCCL) ----
 * One process drives n ranks; rank r owns backend mx_cuda_tp_backend(tp, r) on devices[r].
 * The caller shards weights with mx_cuda_upload_weight_slice on each rank's backend:
 *   attention: heads and kv heads split evenly (rank r: heads [r*H/n, (r+1)*H/n)); lightning
 *     qkv_proj rows are per-head interleaved, so the rank's rows are one contiguous block;
 *     output_gate / q_proj / k_proj / v_proj / self_attn.norm rows and out_proj / o_proj
 *     columns follow the head split; decay rates are the rank's heads' slice.
 *   MoE: the router gate is replicated (every rank routes identically); each expert's w1/w3
 *     rows and w2 columns are split by intermediate width.
 *   Hidden-size tensors (residual stream, layer norms, embeddings, lm_head) are replicated.
 * Partial results are summed with mx_cuda_tp_allreduce after out_proj, o_proj and w2; the
 * lightning output RMSNorm spans all heads, so it runs as mx_cuda_tp_rmsnorm. */
typedef struct mx_cuda_tp mx_cuda_tp;

/* devices NULL = ordinals 0..n_gpus-1; opt->device is ignored. n_gpus 1 needs no NCCL peer. */
int mx_cuda_tp_create(int n_gpus, const int *devices, const mx_cuda_options *opt, mx_cuda_tp **out,
                      mx_error *err);
void mx_cuda_tp_destroy(mx_cuda_tp *tp);
int mx_cuda_tp_size(const mx_cuda_tp *tp);
mx_backend *mx_cuda_tp_backend(mx_cuda_tp *tp, int rank);
/* bufs[r] (F32, same shape on every rank, on rank r's device) <- sum over ranks, in place. */
int mx_cuda_tp_allreduce(mx_cuda_tp *tp, mx_tensor *const *bufs, mx_error *err);
/* RMSNorm of rows split by columns across ranks: ys[r] = xs[r] * rsqrt(mean over ALL ranks'
 * columns of x^2 + eps) * ws[r] (ys[r] may be xs[r]). */
int mx_cuda_tp_rmsnorm(mx_cuda_tp *tp, mx_tensor *const *ys, const mx_tensor *const *xs,
                       const mx_tensor *const *ws, float eps, mx_error *err);

#endif
