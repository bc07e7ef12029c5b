/* kv_cache.c - KV element types, page sizes and budget arithmetic (see kv_cache.h). */
#include "kv_cache.h"

#include <string.h>

static const char *const names[MX_KV_DTYPE_COUNT] = {"bf16", "f32", "fp8_e4m3", "int8"};

const char *mx_kv_dtype_name(mx_kv_dtype t)
{
    return (unsigned)t < MX_KV_DTYPE_COUNT ? names[t] : "?";
}

int mx_kv_dtype_parse(const char *s, const char *what, mx_kv_dtype *out, mx_error *err)
{
    for (int i = 0; i < MX_KV_DTYPE_COUNT; i++)
        if (s && strcmp(s, names[i]) == 0) {
            *out = (mx_kv_dtype)i;
            return 0;
        }
    return mx_fail(err, MX_EINVAL, "%s: unknown KV cache dtype \"%s\" (expected bf16, f32, fp8_e4m3 or int8)", what,
                   s ? s : "");
}

int mx_kv_dtype_elem_bytes(mx_kv_dtype t)
{
    switch (t) {
    case MX_KV_F32: return 4;
    case MX_KV_BF16: return 2;
    default: return 1;
    }
}

uint64_t mx_kv_page_bytes(mx_kv_dtype t, int kv_heads, int head_dim)
{
    uint64_t b = 2ull * (uint64_t)kv_heads * MX_KV_PAGE_TOKENS * (uint64_t)head_dim * (uint64_t)mx_kv_dtype_elem_bytes(t);
    if (t == MX_KV_FP8_E4M3 || t == MX_KV_INT8)
        b += 2ull * (uint64_t)kv_heads * sizeof(float);
    return (b + 63) & ~63ull;
}

int64_t mx_kv_pages_for_tokens(int64_t tokens)
{
    return tokens <= 0 ? 0 : (tokens + MX_KV_PAGE_TOKENS - 1) / MX_KV_PAGE_TOKENS;
}

uint64_t mx_kv_bytes_for_tokens(mx_kv_dtype t, int kv_heads, int head_dim, int softmax_layers, int64_t tokens)
{
    return (uint64_t)mx_kv_pages_for_tokens(tokens) * (uint64_t)softmax_layers * mx_kv_page_bytes(t, kv_heads, head_dim);
}

int64_t mx_kv_tokens_fit(mx_kv_dtype t, int kv_heads, int head_dim, int softmax_layers, uint64_t budget_bytes)
{
    if (softmax_layers <= 0)
        return INT64_MAX;
    uint64_t per_page_all_layers = (uint64_t)softmax_layers * mx_kv_page_bytes(t, kv_heads, head_dim);
    return (int64_t)(budget_bytes / per_page_all_layers) * MX_KV_PAGE_TOKENS;
}
