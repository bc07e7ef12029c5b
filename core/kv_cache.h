/* kv_cache.h - the vocabulary every part of mx uses for the softmax layers' KV cache: element
 * types, the page format, and the arithmetic of bytes per token and tokens per budget. The
 * backends store pages in this format, the stages and the gateway budget with it and `mx plan`
 * sizes deployments with it. Pure functions: no allocation, no backend calls. */
#ifndef MX_KV_CACHE_H
#define MX_KV_CACHE_H

#include <stdint.h>

#include "error.h"

/* Element type of cached K and V (post-RoPE). bf16 halves f32's bytes for an error far below
 * the model's own bf16 noise; the 8-bit types keep one fp32 scale per (page, kv head) for K
 * and one for V. */
typedef enum mx_kv_dtype {
    MX_KV_BF16 = 0, /* default */
    MX_KV_F32,
    MX_KV_FP8_E4M3,
    MX_KV_INT8,
    MX_KV_DTYPE_COUNT
} mx_kv_dtype;

/* Tokens per page on every backend. A sequence wastes at most one partly filled page per
 * softmax layer; 64 keeps that under 2 % from 4K tokens on while a page of the real model
 * (8 kv heads x 128, bf16) is 256 KiB: large enough to stream. */
#define MX_KV_PAGE_TOKENS 64

/* "bf16", "f32", "fp8_e4m3", "int8". */
const char *mx_kv_dtype_name(mx_kv_dtype t);
/* Parses a name above; MX_EINVAL naming `what` and the accepted names otherwise. */
int mx_kv_dtype_parse(const char *s, const char *what, mx_kv_dtype *out, mx_error *err);
/* Bytes of one element (1, 2 or 4). */
int mx_kv_dtype_elem_bytes(mx_kv_dtype t);

/* One page of one softmax layer:
 *   K[kv_heads][MX_KV_PAGE_TOKENS][head_dim], then V[kv_heads][MX_KV_PAGE_TOKENS][head_dim]
 *   in the element type, then for 8-bit types float k_scale[kv_heads], v_scale[kv_heads]
 *   (value = element * scale), padded to 64 bytes. The CPU backend stores each head's K block
 *   transposed within the page, K[kv_heads][head_dim][MX_KV_PAGE_TOKENS] (same bytes), so its
 *   attention reads keys along a row; backends never exchange pages. */
uint64_t mx_kv_page_bytes(mx_kv_dtype t, int kv_heads, int head_dim);
/* Pages that hold `tokens` tokens (ceil). */
int64_t mx_kv_pages_for_tokens(int64_t tokens);
/* Bytes one sequence of `tokens` tokens needs over `softmax_layers` layers (whole pages). */
uint64_t mx_kv_bytes_for_tokens(mx_kv_dtype t, int kv_heads, int head_dim, int softmax_layers, int64_t tokens);
/* The longest sequence (a multiple of MX_KV_PAGE_TOKENS) that fits in budget_bytes over
 * `softmax_layers` layers; INT64_MAX when softmax_layers is 0 (nothing to cache). */
int64_t mx_kv_tokens_fit(mx_kv_dtype t, int kv_heads, int head_dim, int softmax_layers, uint64_t budget_bytes);

/* A backend's KV memory: one budget for the pages of every sequence it holds. */
typedef struct mx_kv_options {
    mx_kv_dtype dtype;
    uint64_t budget_bytes; /* 0 = the backend's default: MX_KV_DEFAULT_RAM_FRACTION of
                              MemAvailable (CPU), MX_KV_DEFAULT_GPU_FRACTION of free device
                              memory (CUDA), measured when configured */
} mx_kv_options;

#define MX_KV_DEFAULT_RAM_FRACTION 0.5
#define MX_KV_DEFAULT_GPU_FRACTION 0.9

typedef struct mx_kv_usage {
    mx_kv_dtype dtype;
    int page_tokens;       /* MX_KV_PAGE_TOKENS */
    uint64_t budget_bytes; /* resolved budget (never 0 once configured) */
    uint64_t used_bytes;   /* pages held by live caches */
} mx_kv_usage;

#endif
