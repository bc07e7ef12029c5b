/* attention_cpu.h - internals of the CPU softmax attention: the KV page pool and page tables
 * (kv_pages_cpu.c), the flash-attention driver (flash_attention_cpu.c) and the per-ISA tile
 * kernels it calls (flash_attention_avx512.c, flash_attention_avx2.c, scalar in the driver).
 * Not for the model code, which sees only core/backend.h. */
#ifndef MX_ATTENTION_CPU_H
#define MX_ATTENTION_CPU_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "../backend.h"
#include "cpu_features.h"

/* ---- KV pages (kv_pages_cpu.c) ---- */

/* One backend's page pool: the budget, byte accounting and free lists. Thread-safe. */
typedef struct mx_kv_pool mx_kv_pool;

int mx_kv_pool_create(mx_kv_pool **out, mx_error *err);
/* Frees every slab; caches must have been freed first. */
void mx_kv_pool_destroy(mx_kv_pool *p);
/* kv_configure / kv_usage of the backend (see core/backend.h). */
int mx_kv_pool_configure(mx_kv_pool *p, const mx_kv_options *opt, mx_error *err);
void mx_kv_pool_usage(mx_kv_pool *p, mx_kv_usage *out);
int mx_kv_pool_cache_init(mx_kv_pool *p, mx_kv_cache *kv, int kv_heads, int head_dim, mx_error *err);
void mx_kv_pool_cache_free(mx_kv_pool *p, mx_kv_cache *kv);

/* Makes caches[i] able to hold add[i] more tokens than kv->len, for every i, or changes
 * nothing: MX_ENOMEM "KV budget ..." when the pages do not fit in the budget. */
int mx_kv_reserve(mx_kv_pool *p, mx_kv_cache *const *caches, const int64_t *add, int n, mx_error *err);

/* Stores n tokens' K and V rows (post-RoPE, [kv_heads * head_dim] each, rows `stride` floats
 * apart) at positions [pos, pos + n) of one page; the positions must be reserved and lie in one
 * page. Does not change kv->len. */
void mx_kv_write_page(mx_kv_cache *kv, int64_t pos, int n, const float *k, const float *v, size_t stride);

/* Page `i` of a cache. */
void *mx_kv_page(const mx_kv_cache *kv, int64_t i);
/* Element pointers of head h's K block ([head_dim][MX_KV_PAGE_TOKENS]: transposed, slots not
 * yet written hold 0) or V block ([MX_KV_PAGE_TOKENS][head_dim]) in a page and its scale
 * (8-bit types; 1 otherwise). */
const void *mx_kv_page_k(const mx_kv_cache *kv, const void *page, int h);
const void *mx_kv_page_v(const mx_kv_cache *kv, const void *page, int h);
float mx_kv_page_k_scale(const mx_kv_cache *kv, const void *page, int h);
float mx_kv_page_v_scale(const mx_kv_cache *kv, const void *page, int h);

/* Scalar element conversions (exact formats; tests and the scalar path use them). */
uint16_t mx_kv_f32_to_bf16(float x);   /* round to nearest even */
float mx_kv_bf16_to_f32(uint16_t b);
uint8_t mx_kv_f32_to_fp8(float x);     /* e4m3fn, RNE, saturating at 448 */
float mx_kv_fp8_to_f32(uint8_t b);
/* The 256 fp8 e4m3 values, indexed by byte. */
extern const float *const mx_kv_fp8_table;
/* Largest magnitude an 8-bit element stores: 127 (int8), 448 (fp8). */
float mx_kv_dtype_max(mx_kv_dtype t);

/* ---- flash attention (flash_attention_cpu.c + kernels) ---- */

/* Tokens per key tile: one page. */
#define MX_FA_KEY_TILE MX_KV_PAGE_TOKENS

/* Tile kernels of one ISA family. Rows are query rows already scaled by log2(e)/sqrt(d), so
 * the softmax is computed with exp2. */
typedef struct mx_fa_kernels {
    mx_cpu_isa isa;
    /* s[m][MX_FA_KEY_TILE] = q[m][d] . kt[d][MX_FA_KEY_TILE] (kt: the key tile transposed, as
     * a K block of a page stores it). */
    void (*qk)(const float *q, int m, int d, const float *kt, float *s);
    /* Online softmax update of each row i over its first nvalid[i] scores: new running max
     * mx[i], corr[i] = exp2(old max - new max) (0 if there was none, 1 if the row sees no key
     * here), l[i] = l[i] * corr[i] + sum p; s[i][] becomes p (0 beyond nvalid[i]). */
    void (*softmax)(float *s, int m, const int *nvalid, float *mx, float *l, float *corr);
    /* acc[i][] = acc[i][] * corr[i] + sum_{j < nk} p[i][j] v[j][] (v rows d floats apart). */
    void (*pv)(float *acc, const float *corr, const float *p, int m, int nk, const float *v, int d);
    /* dst[t][a] = element (t, a) of a [n][d] block of a page in dtype t, times scale. */
    void (*decode)(mx_kv_dtype t, const void *src, float scale, int n, int d, float *dst);
    /* Decode kernels (NULL where the ISA has none), for m <= MX_FA_DECODE_ROWS rows: they read
     * the page's blocks in their stored dtype and widen elements in registers, so no f32 copy or
     * transpose of the tile is made. qk_page: s[m][MX_FA_KEY_TILE] = q[m][d] . kt * scale
     * (kt: a K block [d][MX_FA_KEY_TILE]); next, when not NULL, is the next K block to prefetch.
     * pv_page: pv with v a V block [MX_FA_KEY_TILE][d] in dtype t times scale; next as above. */
    void (*qk_page)(mx_kv_dtype t, const void *kt, float scale, const void *next, const float *q, int m, int d,
                    float *s);
    void (*pv_page)(mx_kv_dtype t, const void *v, float scale, const void *next, float *acc, const float *corr,
                    const float *p, int m, int nk, int d);
} mx_fa_kernels;

/* Most query rows (tokens x heads of a GQA group) per work item that take the decode kernels. */
#define MX_FA_DECODE_ROWS 16

extern const mx_fa_kernels mx_fa_kernels_scalar;
extern const mx_fa_kernels mx_fa_kernels_avx2;
extern const mx_fa_kernels mx_fa_kernels_avx512;
/* The AVX-512 kernels with P.V of decode rows on bf16 pages by VDPBF16PS (p rounded to bf16):
 * only where the CPU has AVX512-BF16 (path flag MX_FA_PATH_BF16DOT, which the default
 * attention does not set: see mx_cpu_softmax_attention). */
extern const mx_fa_kernels mx_fa_kernels_avx512bf16;

/* exp2(x) for x <= 0 by a degree-6 polynomial (relative error ~2e-7); 0 below -125. */
static inline float mx_fa_exp2(float x)
{
    if (!(x >= -125.f))
        return 0.f;
    float n = __builtin_floorf(x + 0.5f), f = x - n;
    float p = 1.535336188319500e-4f;
    p = p * f + 1.339887440266574e-3f;
    p = p * f + 9.618437357674640e-3f;
    p = p * f + 5.550332471162809e-2f;
    p = p * f + 2.402264791363012e-1f;
    p = p * f + 6.931472028550421e-1f;
    p = p * f + 1.0f;
    union { float f; int32_t i; } u = {p};
    u.i += (int32_t)((uint32_t)(int32_t)n << 23); /* unsigned: n < 0 */
    return u.f;
}

/* The online-softmax bookkeeping of one row, the same in every ISA's softmax kernel (only the
 * max, exp2 and sum over the row are vectorised per ISA).
 * mx_fa_row_skip: a row that sees no key here (n <= 0) keeps its state: corr = 1, p = 0; 1 if
 * so. mx_fa_row_max: the new running max for a tile max rmax, and corr = exp2(old - new) (0
 * when there was no old max). mx_fa_row_done: l = l * corr + the tile's sum of p, and the new
 * max kept. */
static inline int mx_fa_row_skip(float *row, int n, float *corr)
{
    if (n > 0)
        return 0;
    *corr = 1.f;
    memset(row, 0, MX_FA_KEY_TILE * sizeof *row);
    return 1;
}

static inline float mx_fa_row_max(float rmax, const float *mx, float *corr)
{
    float mnew = rmax > *mx ? rmax : *mx;
    *corr = *mx == -INFINITY ? 0.f : mx_fa_exp2(*mx - mnew);
    return mnew;
}

static inline void mx_fa_row_done(float sum, float mnew, float corr, float *mx, float *l)
{
    *l = *l * corr + sum;
    *mx = mnew;
}

/* AMX tile kernels (flash_attention_amx.c; only after mx_cpu_amx_usable()) for bf16 pages and
 * head_dim % 32 == 0. A thread calls begin before and end after using them. Rows are padded
 * to mp (a multiple of 16): q's padding is zeroed by mx_fa_amx_q, acc must have mp rows.
 * mx_fa_amx_q: qb[2][mp][d] = q[m][d] as two bf16 parts (hi, lo: 16 significand bits), rows
 * past m zero. mx_fa_amx_qk: s[mp][T] = qb . kt (kt a bf16 K block [d][T], repacked into
 * kpack[d * T]). mx_fa_amx_pv: pv of the kernel table with p in bf16 (one or two parts, into
 * pb[2][mp][T]) and v a bf16 V block (repacked into vpack[T * d]). */
void mx_fa_amx_begin(void);
void mx_fa_amx_end(void);
void mx_fa_amx_q(const float *q, int m, int mp, int d, uint16_t *qb);
void mx_fa_amx_qk(const uint16_t *qb, int mp, int d, const uint16_t *kt, uint16_t *kpack, float *s);
void mx_fa_amx_pv(float *acc, const float *corr, const float *p, int m, int mp, int nk, const uint16_t *v, int d,
                  uint16_t *pb, uint16_t *vpack);

/* Kernel paths beyond the ISA's fp32 kernels (flags of mx_cpu_softmax_attention_path):
 * MX_FA_PATH_AMX: bf16 pages of prefill rows (more than MX_FA_DECODE_ROWS per kv head,
 * head_dim % 32 == 0) take the AMX tile kernels. MX_FA_PATH_BF16DOT: decode rows on bf16 pages
 * (head_dim % 32 == 0) take VDPBF16PS for P.V (mx_fa_kernels_avx512bf16). Each is
 * MX_EUNSUPPORTED where the CPU lacks it; f32 and 8-bit pages keep the kernels of `isa`. */
#define MX_FA_PATH_AMX 1
#define MX_FA_PATH_BF16DOT 2

/* Whether this CPU runs MX_FA_PATH_BF16DOT (AVX-512 with AVX512-BF16). */
int mx_fa_bf16dot_usable(void);

/* softmax_attention with the kernels of `isa` (MX_EUNSUPPORTED if the CPU lacks it). */
int mx_cpu_softmax_attention_isa(mx_backend *be, mx_cpu_isa isa, mx_tensor *o, mx_tensor *q,
                                 const mx_tensor *k, const mx_tensor *v, const mx_span *spans, int n_spans,
                                 mx_kv_cache *const *caches, int heads, int kv_heads, int head_dim,
                                 int rotary_dim, double rope_theta, mx_error *err);
/* The same with the paths of `flags` (MX_FA_PATH_*; 0: the same as the call above). */
int mx_cpu_softmax_attention_path(mx_backend *be, mx_cpu_isa isa, int flags, mx_tensor *o, mx_tensor *q,
                                  const mx_tensor *k, const mx_tensor *v, const mx_span *spans, int n_spans,
                                  mx_kv_cache *const *caches, int heads, int kv_heads, int head_dim,
                                  int rotary_dim, double rope_theta, mx_error *err);
/* "amx" when the default attention (mx_cpu_softmax_attention) takes the AMX kernels for bf16
 * prefill here, else the ISA's name (bf16 decode: see mx_fa_bf16dot_usable). */
const char *mx_cpu_attention_path(void);

#endif
