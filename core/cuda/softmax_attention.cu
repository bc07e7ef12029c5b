/* softmax_attention.cu - softmax GQA attention over a paged, budgeted KV cache in any mx_kv_dtype
 * (f32, bf16, fp8 e4m3 or int8 with per-page per-head scales; page format of core/kv_cache.h).
 * Pages come from one pool per backend that counts bytes against the KV budget; a sequence's
 * cache (mx_kv_cache.impl) is a page table on the host and the device. One op: partial NeoX
 * RoPE on q (in place) and k, append k/v to the pages (requantizing a page-head whose 8-bit scale
 * grows), then causal attention where every query token reads keys [0, its position] of its own
 * sequence. Spans of 16+ tokens (prefill) run a flash-style kernel: 64 queries of one head per
 * block, 64-key tiles of K/V converted to fp32 in shared memory, online softmax in fp32. Shorter
 * spans (decode) run one block per (token, head) whose key range is split across blocks
 * (flash-decoding) when there are too few blocks to fill the GPU; a second kernel merges the
 * partial softmax sums. With f32 KV every step is the exact fp32 arithmetic of before. */
#include "cuda_internal.cuh"

#include <cuda_fp16.h>
#include <cuda_fp8.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#define ATT_WARPS 4
#define ATT_MAX_DIM 128
#define ATT_MIN_KEYS_PER_SPLIT 256
#define ATT_MAX_SPLITS 64
#define PT MX_KV_PAGE_TOKENS

/* ---------------------------------------------------------------------------------------------
 * Page pool. Pages are carved from large cudaMalloc'd blocks allocated on demand rather than one
 * block of the whole budget at configure time: the default budget is 90 % of free device memory,
 * and one process often holds several backends on one device (kernel checks, a tensor-parallel
 * rank next to a bf16 backend), so a preallocating backend would starve the others. Blocks grow
 * with the pool (half of what it holds, 64 MiB .. 1 GiB) and never exceed the budget while it has
 * room, so a long prompt costs a few cudaMallocs and decode none once warm: freed pages go to a
 * free list and are reused. Blocks serve one page size ("class"); a class whose pages are all free
 * is released when another class needs room under the budget.
 * ------------------------------------------------------------------------------------------- */

#define KV_MAX_CLASSES 8
#define KV_BLOCK_MIN (64ull << 20)
#define KV_BLOCK_MAX (1ull << 30)

struct kv_class {
    uint64_t page_bytes;  /* 0 = unused slot */
    int64_t live;         /* pages held by caches */
    int64_t carved;       /* pages carved from blocks so far (free list capacity) */
    char **free_pages;
    int64_t n_free;
    char *bump;           /* uncarved rest of the newest block */
    uint64_t bump_left;
    void **blocks;
    int n_blocks, blocks_cap;
    uint64_t block_bytes; /* total of blocks */
};

struct kv_pool {
    kv_class cls[KV_MAX_CLASSES];
    uint64_t reserved; /* device bytes in blocks of every class */
};

struct kv_paged {
    uint64_t page_bytes;
    int64_t n_pages, table_cap;
    int64_t dev_n;       /* leading entries of dev_table that match host_table */
    char **host_table;   /* page addresses */
    char **dev_table;    /* the same on the device (table_cap entries) */
};

static void class_release(kv_pool *pool, kv_class *c)
{
    for (int i = 0; i < c->n_blocks; i++)
        cudaFree(c->blocks[i]); /* synchronises: no queued kernel still reads these pages */
    pool->reserved -= c->block_bytes;
    free(c->blocks);
    free(c->free_pages);
    memset(c, 0, sizeof *c);
}

void cuda_kv_pool_destroy(cuda_impl *im)
{
    kv_pool *pool = im->kv_pool;
    if (!pool)
        return;
    for (int i = 0; i < KV_MAX_CLASSES; i++)
        if (pool->cls[i].page_bytes)
            class_release(pool, &pool->cls[i]);
    free(pool);
    im->kv_pool = NULL;
}

static int pool_get(cuda_impl *im, kv_pool **out, mx_error *err)
{
    if (!im->kv_pool && !(im->kv_pool = (kv_pool *)calloc(1, sizeof(kv_pool))))
        return mx_fail(err, MX_ENOMEM, "KV pool: out of host memory");
    *out = im->kv_pool;
    return 0;
}

/* The class of `page_bytes` pages, created when `create` (slots of classes without live pages
 * are reused). NULL when none (create false) or every slot holds live pages (err set). */
static kv_class *class_find(kv_pool *pool, uint64_t page_bytes, bool create, mx_error *err)
{
    for (int i = 0; i < KV_MAX_CLASSES; i++)
        if (pool->cls[i].page_bytes == page_bytes)
            return &pool->cls[i];
    if (!create)
        return NULL;
    for (int pass = 0; pass < 2; pass++)
        for (int i = 0; i < KV_MAX_CLASSES; i++) {
            kv_class *c = &pool->cls[i];
            if (pass == 1 && c->page_bytes && c->live == 0)
                class_release(pool, c);
            if (!c->page_bytes) {
                c->page_bytes = page_bytes;
                return c;
            }
        }
    mx_fail(err, MX_EUNSUPPORTED, "KV pool: more than %d page sizes in use at once", KV_MAX_CLASSES);
    return NULL;
}

/* Adds a block to class c: at least one page, `hint` pages when the pool may grow that much. */
static int class_grow(cuda_impl *im, kv_pool *pool, kv_class *c, int64_t hint, mx_error *err)
{
    uint64_t pb = c->page_bytes, budget = im->kv.budget_bytes;
    uint64_t target = pool->reserved / 2;
    target = target < KV_BLOCK_MIN ? KV_BLOCK_MIN : target > KV_BLOCK_MAX ? KV_BLOCK_MAX : target;
    int64_t pages = (int64_t)(target / pb);
    if (pages < hint)
        pages = hint;
    if (pages < 1)
        pages = 1;
    uint64_t room = budget > pool->reserved ? budget - pool->reserved : 0;
    if (room < (uint64_t)pages * pb) { /* free pages of idle classes go back to the device first */
        for (int i = 0; i < KV_MAX_CLASSES; i++)
            if (&pool->cls[i] != c && pool->cls[i].page_bytes && pool->cls[i].live == 0)
                class_release(pool, &pool->cls[i]);
        room = budget > pool->reserved ? budget - pool->reserved : 0;
        if (room < (uint64_t)pages * pb)
            pages = room / pb > 0 ? (int64_t)(room / pb) : 1;
    }
    if (c->n_blocks == c->blocks_cap) {
        int cap = c->blocks_cap ? 2 * c->blocks_cap : 8;
        void **b = (void **)realloc(c->blocks, (size_t)cap * sizeof *b);
        if (!b)
            return mx_fail(err, MX_ENOMEM, "KV pool: out of host memory");
        c->blocks = b;
        c->blocks_cap = cap;
    }
    /* the free list can then hold every page of the class: returning pages never allocates */
    char **fl = (char **)realloc(c->free_pages, (size_t)(c->carved + pages) * sizeof *fl);
    if (!fl)
        return mx_fail(err, MX_ENOMEM, "KV pool: out of host memory");
    c->free_pages = fl;
    void *blk = NULL;
    cudaError_t e = cuda_malloc(&blk, (size_t)pages * pb);
    if (e != cudaSuccess && pages > hint && hint >= 1) { /* smaller: what this call needs */
        pages = hint;
        e = cuda_malloc(&blk, (size_t)pages * pb);
    }
    if (e != cudaSuccess) {
        cudaGetLastError();
        return mx_fail(err, MX_ENOMEM, "KV budget: device memory exhausted (%lld pages of %llu bytes: %s; "
                       "%llu bytes held for KV, budget %llu)", (long long)pages, (unsigned long long)pb,
                       cudaGetErrorString(e), (unsigned long long)pool->reserved,
                       (unsigned long long)budget);
    }
    c->blocks[c->n_blocks++] = blk;
    c->block_bytes += (uint64_t)pages * pb;
    pool->reserved += (uint64_t)pages * pb;
    c->bump = (char *)blk;
    c->bump_left = (uint64_t)pages * pb;
    return 0;
}

/* One page of class c (the budget was checked by the caller). */
static int pool_take(cuda_impl *im, kv_pool *pool, kv_class *c, int64_t hint, char **out, mx_error *err)
{
    if (c->n_free > 0) {
        *out = c->free_pages[--c->n_free];
    } else {
        if (c->bump_left < c->page_bytes)
            TRY(class_grow(im, pool, c, hint, err));
        *out = c->bump;
        c->bump += c->page_bytes;
        c->bump_left -= c->page_bytes;
        c->carved++;
    }
    c->live++;
    im->kv_used_bytes += c->page_bytes;
    return 0;
}

static void pool_give(cuda_impl *im, kv_class *c, char *page)
{
    c->free_pages[c->n_free++] = page; /* capacity >= carved, see class_grow */
    c->live--;
    im->kv_used_bytes -= c->page_bytes;
}

/* The default budget (MX_KV_DEFAULT_GPU_FRACTION of free device memory), measured once. */
static int kv_resolve_budget(cuda_impl *im, mx_error *err)
{
    if (im->kv.budget_bytes)
        return 0;
    size_t free_b = 0, total_b = 0;
    CU_TRY(cudaSetDevice(im->device));
    CU_TRY(cudaMemGetInfo(&free_b, &total_b));
    uint64_t b = (uint64_t)((double)free_b * MX_KV_DEFAULT_GPU_FRACTION);
    im->kv.budget_bytes = b ? b : 1;
    return 0;
}

int cuda_kv_configure(mx_backend *be, const mx_kv_options *opt, mx_error *err)
{
    cuda_impl *im = impl_of(be);
    if (!opt)
        return mx_fail(err, MX_EINVAL, "kv_configure: missing options");
    if (im->kv_caches)
        return mx_fail(err, MX_EINVAL, "kv_configure: %d KV caches exist (configure before creating any)",
                       im->kv_caches);
    if ((unsigned)opt->dtype >= MX_KV_DTYPE_COUNT)
        return mx_fail(err, MX_EINVAL, "kv_configure: unknown KV dtype %d", (int)opt->dtype);
    TRY(cuda_enter(be, err));
    cuda_kv_pool_destroy(im); /* no cache holds a page: free memory is measured without them */
    im->kv.dtype = opt->dtype;
    im->kv.budget_bytes = opt->budget_bytes;
    return kv_resolve_budget(im, err);
}

void cuda_kv_usage(mx_backend *be, mx_kv_usage *out)
{
    cuda_impl *im = impl_of(be);
    mx_error ignored;
    memset(&ignored, 0, sizeof ignored);
    kv_resolve_budget(im, &ignored); /* first use; only a broken device leaves it 0 */
    out->dtype = im->kv.dtype;
    out->page_tokens = MX_KV_PAGE_TOKENS;
    out->budget_bytes = im->kv.budget_bytes;
    out->used_bytes = im->kv_used_bytes;
}

int cuda_kv_cache_init(mx_backend *be, mx_kv_cache *kv, int kv_heads, int head_dim, mx_error *err)
{
    if (!kv || kv_heads < 1 || head_dim < 1)
        return mx_fail(err, MX_EINVAL, "kv_cache_init: %d kv heads of dim %d", kv_heads, head_dim);
    cuda_impl *im = impl_of(be);
    TRY(kv_resolve_budget(im, err));
    memset(kv, 0, sizeof *kv);
    kv_paged *pg = (kv_paged *)calloc(1, sizeof *pg);
    if (!pg)
        return mx_fail(err, MX_ENOMEM, "kv_cache_init: out of memory");
    pg->page_bytes = mx_kv_page_bytes(im->kv.dtype, kv_heads, head_dim);
    kv->kv_heads = kv_heads;
    kv->head_dim = head_dim;
    kv->dtype = im->kv.dtype;
    kv->impl = pg;
    im->kv_caches++;
    return 0;
}

/* Returns pages [keep, n_pages) of the cache to the pool. */
static void kv_shrink(cuda_impl *im, kv_paged *pg, int64_t keep)
{
    if (pg->n_pages <= keep)
        return;
    kv_class *c = class_find(im->kv_pool, pg->page_bytes, false, NULL);
    for (int64_t i = keep; i < pg->n_pages; i++)
        pool_give(im, c, pg->host_table[i]);
    pg->n_pages = keep;
    if (pg->dev_n > keep)
        pg->dev_n = keep;
}

void cuda_kv_cache_free(mx_backend *be, mx_kv_cache *kv)
{
    if (!kv || !kv->impl)
        return;
    cuda_impl *im = impl_of(be);
    kv_paged *pg = (kv_paged *)kv->impl;
    cudaSetDevice(im->device);
    kv_shrink(im, pg, 0);
    cudaFree(pg->dev_table); /* waits for kernels still reading it */
    free(pg->host_table);
    free(pg);
    im->kv_caches--;
    kv->impl = NULL;
    kv->len = kv->capacity = 0;
}

/* The undo of a failed step's appends: pages past the new tail go back to the pool once the
 * queued kernels that may read them are done. Slots past len in the tail page keep stale
 * values: attention reads only the first len keys. */
void cuda_kv_cache_truncate(mx_backend *be, mx_kv_cache *kv, int64_t len)
{
    if (!kv || !kv->impl || len < 0 || len >= kv->len)
        return;
    cuda_impl *im = impl_of(be);
    kv_paged *pg = (kv_paged *)kv->impl;
    cudaSetDevice(im->device);
    cudaStreamSynchronize(im->stream);
    kv_shrink(im, pg, (len + PT - 1) / PT);
    kv->len = len;
    kv->capacity = pg->n_pages * PT;
}

/* Room for `n` entries in both page tables; a new device table is filled at upload time. */
static int table_reserve(kv_paged *pg, int64_t n, mx_error *err)
{
    if (n <= pg->table_cap)
        return 0;
    int64_t cap = pg->table_cap ? 2 * pg->table_cap : 16;
    if (cap < n)
        cap = n;
    char **ht = (char **)realloc(pg->host_table, (size_t)cap * sizeof *ht);
    if (!ht)
        return mx_fail(err, MX_ENOMEM, "KV page table: out of host memory");
    pg->host_table = ht;
    char **dt;
    cudaError_t e = cuda_malloc((void **)&dt, (size_t)cap * sizeof *dt);
    if (e != cudaSuccess) {
        cudaGetLastError();
        return mx_fail(err, MX_ENOMEM, "KV page table of %lld entries: %s", (long long)cap,
                       cudaGetErrorString(e));
    }
    cudaFree(pg->dev_table); /* waits for kernels still reading the old table */
    pg->dev_table = dt;
    pg->dev_n = 0;
    pg->table_cap = cap;
    return 0;
}

/* Pages for every span of the call, all or none: the budget is checked for the whole batch
 * first, and a device allocation failing midway returns the pages this call took. */
static int kv_reserve_all(mx_backend *be, mx_kv_cache *const *caches, const mx_span *spans,
                          int n_spans, mx_error *err)
{
    cuda_impl *im = impl_of(be);
    uint64_t need_bytes = 0;
    int64_t need_pages = 0;
    for (int i = 0; i < n_spans; i++) {
        kv_paged *pg = (kv_paged *)caches[i]->impl;
        int64_t want = mx_kv_pages_for_tokens(caches[i]->len + spans[i].len) - pg->n_pages;
        if (want > 0) {
            need_bytes += (uint64_t)want * pg->page_bytes;
            need_pages += want;
        }
    }
    if (need_pages == 0)
        return 0;
    uint64_t budget = im->kv.budget_bytes;
    if (im->kv_used_bytes + need_bytes > budget)
        return mx_fail(err, MX_ENOMEM, "KV budget: %llu more bytes needed (%lld pages of %d tokens), "
                       "%llu of %llu in use", (unsigned long long)need_bytes, (long long)need_pages,
                       MX_KV_PAGE_TOKENS, (unsigned long long)im->kv_used_bytes,
                       (unsigned long long)budget);
    kv_pool *pool;
    TRY(pool_get(im, &pool, err));
    int rc = 0, done = 0;
    int64_t *before = (int64_t *)malloc((size_t)n_spans * sizeof *before);
    if (!before)
        return mx_fail(err, MX_ENOMEM, "attention: out of memory");
    for (; done < n_spans && !rc; done++) {
        kv_paged *pg = (kv_paged *)caches[done]->impl;
        before[done] = pg->n_pages;
        int64_t want = mx_kv_pages_for_tokens(caches[done]->len + spans[done].len);
        if (want <= pg->n_pages)
            continue;
        rc = table_reserve(pg, want, err);
        kv_class *c = rc ? NULL : class_find(pool, pg->page_bytes, true, err);
        if (!c)
            rc = rc ? rc : MX_EUNSUPPORTED;
        while (!rc && pg->n_pages < want) {
            char *page;
            rc = pool_take(im, pool, c, need_pages, &page, err);
            if (!rc) {
                pg->host_table[pg->n_pages++] = page;
                need_pages--;
            }
        }
    }
    if (rc) {
        for (int i = 0; i < done; i++)
            kv_shrink(im, (kv_paged *)caches[i]->impl, before[i]);
        free(before);
        return rc;
    }
    free(before);
    for (int i = 0; i < n_spans; i++) {
        kv_paged *pg = (kv_paged *)caches[i]->impl;
        if (pg->dev_n < pg->n_pages) {
            CU_TRY(cudaMemcpyAsync(pg->dev_table + pg->dev_n, pg->host_table + pg->dev_n,
                                   (size_t)(pg->n_pages - pg->dev_n) * sizeof(char *),
                                   cudaMemcpyHostToDevice, im->stream));
            pg->dev_n = pg->n_pages;
        }
        caches[i]->capacity = pg->n_pages * PT;
    }
    return 0;
}

/* ---------------------------------------------------------------------------------------------
 * Element types. dec/enc convert one stored element; for the 8-bit types the stored value is
 * element * scale. A page-head's first chunk sets scale = (largest |x|) / qmax; a later chunk
 * that needs more doubles the scale until it is enough, so requantizing the earlier tokens
 * multiplies them by a power of two (one rounding each time, a bounded drift) - the CPU
 * backend's rule, so both backends store the same bytes for the same inputs.
 * ------------------------------------------------------------------------------------------- */

/* The scale of a page-head holding `old` (0: nothing yet or only zeros) after a chunk at slot
 * `off0` whose values need `need` = amax / qmax. */
__device__ __forceinline__ float grown_scale(float old, float need, int off0)
{
    if (!(need > old))
        return old;
    if (old > 0.0f && off0 > 0) {
        while (old < need)
            old *= 2.0f; /* stops at +inf at the latest */
        return old;
    }
    return need;
}

template <int DT> struct kv_t;
template <> struct kv_t<MX_KV_F32> {
    typedef float E;
    static constexpr bool scaled = false;
    static constexpr float qmax = 1.0f;
    __device__ static __forceinline__ float dec(E e) { return e; }
    __device__ static __forceinline__ E enc(float x) { return x; }
};
template <> struct kv_t<MX_KV_BF16> {
    typedef __nv_bfloat16 E;
    static constexpr bool scaled = false;
    static constexpr float qmax = 1.0f;
    __device__ static __forceinline__ float dec(E e) { return __bfloat162float(e); }
    __device__ static __forceinline__ E enc(float x) { return __float2bfloat16_rn(x); }
};
template <> struct kv_t<MX_KV_FP8_E4M3> {
    typedef __nv_fp8_storage_t E;
    static constexpr bool scaled = true;
    static constexpr float qmax = 448.0f; /* largest finite e4m3 */
    __device__ static __forceinline__ float dec(E e)
    {
        return __half2float(__half(__nv_cvt_fp8_to_halfraw(e, __NV_E4M3)));
    }
    /* round to nearest even, saturating at +-448 */
    __device__ static __forceinline__ E enc(float x) { return __nv_cvt_float_to_fp8(x, __NV_SATFINITE, __NV_E4M3); }
};
template <> struct kv_t<MX_KV_INT8> {
    typedef int8_t E;
    static constexpr bool scaled = true;
    static constexpr float qmax = 127.0f; /* symmetric: -128 unused */
    __device__ static __forceinline__ float dec(E e) { return (float)e; }
    __device__ static __forceinline__ E enc(float x)
    {
        int r = __float2int_rn(x); /* round to nearest even */
        return (E)(r > 127 ? 127 : r < -127 ? -127 : r);
    }
};


/* One query row: its row in q/o, its sequence's page table and its absolute position. */
struct tok_info {
    int row;
    int pos;
    char *const *table;
};

/* A prefill tile: up to 64 consecutive rows of one sequence. */
struct att_tile {
    char *const *table;
    int row0, n, pos0;
};

/* Tokens [off0, off0+n) of one page, appended from rows row0.. of k/v (a span's consecutive
 * positions are consecutive rows). A page appears at most once per call. */
struct kv_chunk {
    char *page;
    int off0, n, row0;
};

#define FLASH_ROWS 64
#define FLASH_KEYS 64
#define FLASH_MIN_SPAN 16
#define APPEND_THREADS 256

__device__ __forceinline__ void rope_pair(float *a, float *b, float angle)
{
    float c = cosf(angle), s = sinf(angle), x = *a, y = *b;
    *a = x * c - y * s;
    *b = y * c + x * s;
}

/* grid (rows), block 128: RoPE on every q head in place; RoPE'd k into krot [T, kv_heads*hd]. */
__global__ void rope_kernel(float *q, float *krot, const float *k, const tok_info *toks,
                            const float *inv_freq, int heads, int kv_heads, int hd, int rot)
{
    tok_info ti = toks[blockIdx.x];
    int64_t t = ti.row;
    int half = rot / 2;
    float *qt = q + t * heads * hd;
    for (int idx = threadIdx.x; idx < heads * half; idx += blockDim.x) {
        int h = idx / half, i = idx % half;
        rope_pair(&qt[h * hd + i], &qt[h * hd + i + half], (float)ti.pos * inv_freq[i]);
    }
    const float *kt = k + t * kv_heads * hd;
    float *kr = krot + t * kv_heads * hd;
    for (int idx = threadIdx.x; idx < kv_heads * hd; idx += blockDim.x) {
        int d = idx % hd;
        if (d < half) {
            float a = kt[idx], b = kt[idx + half];
            rope_pair(&a, &b, (float)ti.pos * inv_freq[d]);
            kr[idx] = a;
            kr[idx + half] = b;
        } else if (d >= rot) {
            kr[idx] = kt[idx];
        }
    }
}

/* grid (chunks, kv_heads), block APPEND_THREADS: writes the chunk's k (from krot) and v of one
 * head into its page. 8-bit types: the block takes the largest |x| of the new tokens, grows the
 * page-head's scales if needed (a page's first chunk starts from zero: recycled pages hold stale
 * scales), requantizes the page's earlier tokens of this head to the grown scale, then stores the
 * new tokens. One block owns one (page, head), so nothing races. soff: byte offset of the scales. */
template <int DT>
__global__ void __launch_bounds__(APPEND_THREADS)
kv_append_kernel(const kv_chunk *chunks, const float *krot, const float *v, int kv_heads, int hd,
                 int64_t soff)
{
    typedef kv_t<DT> T;
    typedef typename T::E E;
    const kv_chunk c = chunks[blockIdx.x];
    const int h = blockIdx.y;
    const int64_t rs = (int64_t)kv_heads * hd;
    E *kd = (E *)c.page + (int64_t)h * PT * hd;
    E *vd = (E *)c.page + (int64_t)(kv_heads + h) * PT * hd;
    const int n_new = c.n * hd, n_old = c.off0 * hd;
    if constexpr (T::scaled) {
        __shared__ float red[2][APPEND_THREADS / 32];
        __shared__ float sc[4];
        float ak = 0.0f, av = 0.0f;
        for (int i = threadIdx.x; i < n_new; i += blockDim.x) {
            int64_t src = (int64_t)(c.row0 + i / hd) * rs + (int64_t)h * hd + i % hd;
            ak = fmaxf(ak, fabsf(krot[src]));
            av = fmaxf(av, fabsf(v[src]));
        }
        for (int o = 16; o > 0; o >>= 1) {
            ak = fmaxf(ak, __shfl_xor_sync(0xffffffffu, ak, o));
            av = fmaxf(av, __shfl_xor_sync(0xffffffffu, av, o));
        }
        if ((threadIdx.x & 31) == 0) {
            red[0][threadIdx.x >> 5] = ak;
            red[1][threadIdx.x >> 5] = av;
        }
        __syncthreads();
        if (threadIdx.x == 0) {
            float mk = 0.0f, mv = 0.0f;
            for (int w = 0; w < APPEND_THREADS / 32; w++) {
                mk = fmaxf(mk, red[0][w]);
                mv = fmaxf(mv, red[1][w]);
            }
            float *scales = (float *)(c.page + soff);
            float ok = c.off0 ? scales[h] : 0.0f, ov = c.off0 ? scales[kv_heads + h] : 0.0f;
            float nk = grown_scale(ok, mk / T::qmax, c.off0), nv = grown_scale(ov, mv / T::qmax, c.off0);
            sc[0] = ok, sc[1] = nk, sc[2] = ov, sc[3] = nv;
            scales[h] = nk; /* only this thread touches the scales of (page, h) */
            scales[kv_heads + h] = nv;
        }
        __syncthreads();
        const float ok = sc[0], sk = sc[1], ov = sc[2], sv = sc[3];
        /* the same arithmetic as the CPU backend (core/cpu/kv_pages_cpu.c), so both store the
         * same bytes for the same inputs: earlier tokens times old/new (a power of two), new
         * ones x * (1/scale); a zero old scale means the earlier tokens are zeros already */
        if (sk > ok && ok > 0.0f)
            for (int i = threadIdx.x; i < n_old; i += blockDim.x)
                kd[i] = T::enc(T::dec(kd[i]) * (ok / sk));
        if (sv > ov && ov > 0.0f)
            for (int i = threadIdx.x; i < n_old; i += blockDim.x)
                vd[i] = T::enc(T::dec(vd[i]) * (ov / sv));
        const float ik = sk > 0.0f ? 1.0f / sk : 0.0f, iv = sv > 0.0f ? 1.0f / sv : 0.0f;
        for (int i = threadIdx.x; i < n_new; i += blockDim.x) {
            int64_t src = (int64_t)(c.row0 + i / hd) * rs + (int64_t)h * hd + i % hd;
            kd[n_old + i] = T::enc(krot[src] * ik);
            vd[n_old + i] = T::enc(v[src] * iv);
        }
    } else {
        (void)n_old;
        for (int i = threadIdx.x; i < n_new; i += blockDim.x) {
            int64_t src = (int64_t)(c.row0 + i / hd) * rs + (int64_t)h * hd + i % hd;
            kd[n_old + i] = T::enc(krot[src]);
            vd[n_old + i] = T::enc(v[src]);
        }
    }
}

/* Decode path. grid (listed rows, heads, splits), block 32 * ATT_WARPS. Each warp walks keys of
 * its split with an online softmax; lanes hold dims lane, lane+32, ...; warps merge in shared
 * memory and the block writes (max, sum, acc[hd]) for its split. 8-bit types: the dot product
 * runs on the stored elements and is scaled once per key; p is scaled by the V scale. */
template <int DT>
__global__ void paged_attention_kernel(float *part, const float *q, const tok_info *toks, int heads,
                                       int kv_heads, int hd, int chunk, float scale, int64_t soff)
{
    typedef kv_t<DT> T;
    typedef typename T::E E;
    __shared__ float wm[ATT_WARPS], wl[ATT_WARPS], wacc[ATT_WARPS][ATT_MAX_DIM];
    int64_t li = blockIdx.x;
    int h = blockIdx.y, split = blockIdx.z, splits = gridDim.z;
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    tok_info ti = toks[li];
    int kvh = h / (heads / kv_heads);
    const float *qh = q + ((int64_t)ti.row * heads + h) * hd;
    const int per = ATT_MAX_DIM / 32;
    float qv[per], acc[per];
#pragma unroll
    for (int r = 0; r < per; r++) {
        int d = lane + 32 * r;
        qv[r] = d < hd ? qh[d] : 0.0f;
        acc[r] = 0.0f;
    }
    float m = -INFINITY, l = 0.0f;
    int k_begin = split * chunk, k_end = min(ti.pos + 1, k_begin + chunk);
    for (int key = k_begin + warp; key < k_end; key += ATT_WARPS) {
        const char *page = ti.table[key / PT];
        int off = key % PT;
        const E *kp = (const E *)page + ((int64_t)kvh * PT + off) * hd;
        const E *vp = (const E *)page + ((int64_t)(kv_heads + kvh) * PT + off) * hd;
        float d = 0.0f;
#pragma unroll
        for (int r = 0; r < per; r++)
            if (lane + 32 * r < hd)
                d = fmaf(qv[r], T::dec(kp[lane + 32 * r]), d);
        for (int o = 16; o > 0; o >>= 1)
            d += __shfl_xor_sync(0xffffffffu, d, o);
        float vsc = 1.0f;
        if constexpr (T::scaled) {
            const float *ps = (const float *)(page + soff);
            d *= ps[kvh];
            vsc = ps[kv_heads + kvh];
        }
        float sc = d * scale;
        float m_new = fmaxf(m, sc);
        float corr = expf(m - m_new), p = expf(sc - m_new);
        l = l * corr + p;
        if constexpr (T::scaled) {
            float pv = p * vsc;
#pragma unroll
            for (int r = 0; r < per; r++)
                if (lane + 32 * r < hd)
                    acc[r] = acc[r] * corr + pv * T::dec(vp[lane + 32 * r]);
        } else {
            (void)vsc;
#pragma unroll
            for (int r = 0; r < per; r++)
                if (lane + 32 * r < hd)
                    acc[r] = acc[r] * corr + p * T::dec(vp[lane + 32 * r]);
        }
        m = m_new;
    }
    if (lane == 0) {
        wm[warp] = m;
        wl[warp] = l;
    }
#pragma unroll
    for (int r = 0; r < per; r++)
        if (lane + 32 * r < hd)
            wacc[warp][lane + 32 * r] = acc[r];
    __syncthreads();
    float M = -INFINITY;
    for (int w = 0; w < ATT_WARPS; w++)
        M = fmaxf(M, wm[w]);
    float *out = part + ((li * heads + h) * splits + split) * (int64_t)(hd + 2);
    for (int d = threadIdx.x; d < hd; d += blockDim.x) {
        float a = 0.0f;
        for (int w = 0; w < ATT_WARPS; w++)
            if (wm[w] != -INFINITY)
                a += wacc[w][d] * expf(wm[w] - M);
        out[2 + d] = a;
    }
    if (threadIdx.x == 0) {
        float L = 0.0f;
        for (int w = 0; w < ATT_WARPS; w++)
            if (wm[w] != -INFINITY)
                L += wl[w] * expf(wm[w] - M);
        out[0] = M;
        out[1] = L;
    }
}

/* grid (listed rows, heads), block 128: o = sum_s acc_s e^(m_s - M) / sum_s l_s e^(m_s - M). */
__global__ void attention_merge_kernel(float *o, const float *part, const tok_info *toks, int heads,
                                       int hd, int splits)
{
    int64_t li = blockIdx.x;
    int h = blockIdx.y;
    const float *p = part + (li * heads + h) * splits * (int64_t)(hd + 2);
    float M = -INFINITY;
    for (int s = 0; s < splits; s++)
        M = fmaxf(M, p[s * (hd + 2)]);
    float L = 0.0f;
    for (int s = 0; s < splits; s++)
        if (p[s * (hd + 2)] != -INFINITY)
            L += p[s * (hd + 2) + 1] * expf(p[s * (hd + 2)] - M);
    for (int d = threadIdx.x; d < hd; d += blockDim.x) {
        float a = 0.0f;
        for (int s = 0; s < splits; s++)
            if (p[s * (hd + 2)] != -INFINITY)
                a += p[s * (hd + 2) + 2 + d] * expf(p[s * (hd + 2)] - M);
        o[((int64_t)toks[li].row * heads + h) * hd + d] = a / L;
    }
}

/* Prefill path. grid (tiles, heads), block 256 = 64 query rows x 4 threads. Thread (r, part)
 * scores keys part*16 .. part*16+15 of each 64-key tile and accumulates output dims
 * part, part+4, ... (interleaved, so the four threads of a row hit different banks). K/V tiles are
 * converted to fp32 (times the page-head scale for 8-bit types) as they are staged. */
template <int DT>
__global__ void __launch_bounds__(256)
flash_prefill_kernel(float *o, const float *q, const att_tile *tiles, int heads, int kv_heads,
                     int hd, float scale, int64_t soff)
{
    typedef kv_t<DT> T;
    typedef typename T::E E;
    extern __shared__ float fsm[];
    const int ld = hd + 1;
    float *Qs = fsm, *Ks = Qs + FLASH_ROWS * ld, *Vs = Ks + FLASH_KEYS * ld;
    float *Ps = Vs + FLASH_KEYS * ld; /* [64][65] */
    const att_tile tile = tiles[blockIdx.x];
    int h = blockIdx.y, kvh = h / (heads / kv_heads);
    int r = threadIdx.x / 4, part = threadIdx.x % 4;
    for (int idx = threadIdx.x; idx < FLASH_ROWS * hd; idx += blockDim.x) {
        int rr = idx / hd, d = idx % hd;
        Qs[rr * ld + d] = rr < tile.n ? q[((int64_t)(tile.row0 + rr) * heads + h) * hd + d] : 0.0f;
    }
    const int per = ATT_MAX_DIM / 4;
    float acc[per];
#pragma unroll
    for (int i = 0; i < per; i++)
        acc[i] = 0.0f;
    float m = -INFINITY, l = 0.0f;
    int my_pos = tile.pos0 + r, n_keys = tile.pos0 + tile.n;
    for (int k0 = 0; k0 < n_keys; k0 += FLASH_KEYS) {
        __syncthreads(); /* previous tile fully consumed (and Qs loaded, first time) */
        for (int idx = threadIdx.x; idx < FLASH_KEYS * hd; idx += blockDim.x) {
            int kr = idx / hd, d = idx % hd, key = k0 + kr;
            float kv = 0.0f, vv = 0.0f;
            if (key < n_keys) {
                const char *page = tile.table[key / PT];
                int off = key % PT;
                kv = T::dec(((const E *)page)[((int64_t)kvh * PT + off) * hd + d]);
                vv = T::dec(((const E *)page)[((int64_t)(kv_heads + kvh) * PT + off) * hd + d]);
                if constexpr (T::scaled) {
                    const float *ps = (const float *)(page + soff);
                    kv *= ps[kvh];
                    vv *= ps[kv_heads + kvh];
                }
            }
            Ks[kr * ld + d] = kv;
            Vs[kr * ld + d] = vv;
        }
        __syncthreads();
        float sc[16], mx = -INFINITY;
#pragma unroll
        for (int i = 0; i < 16; i++) {
            int kr = part * 16 + i, key = k0 + kr;
            float dot = 0.0f;
            for (int d = 0; d < hd; d++)
                dot = fmaf(Qs[r * ld + d], Ks[kr * ld + d], dot);
            sc[i] = (key <= my_pos && r < tile.n) ? dot * scale : -INFINITY;
            mx = fmaxf(mx, sc[i]);
        }
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
        float m_new = fmaxf(m, mx);
        float corr = m_new == -INFINITY ? 1.0f : expf(m - m_new), psum = 0.0f;
#pragma unroll
        for (int i = 0; i < 16; i++) {
            float p = sc[i] == -INFINITY ? 0.0f : expf(sc[i] - m_new);
            Ps[r * (FLASH_KEYS + 1) + part * 16 + i] = p;
            psum += p;
        }
        psum += __shfl_xor_sync(0xffffffffu, psum, 1);
        psum += __shfl_xor_sync(0xffffffffu, psum, 2);
        l = l * corr + psum;
        m = m_new;
        __syncwarp(); /* the row's probabilities come from the 4 lanes of this warp */
#pragma unroll
        for (int i = 0; i < per; i++)
            acc[i] *= corr;
        for (int j = 0; j < FLASH_KEYS; j++) {
            float p = Ps[r * (FLASH_KEYS + 1) + j];
            const float *vr = Vs + j * ld;
#pragma unroll
            for (int i = 0; i < per; i++)
                if (part + 4 * i < hd)
                    acc[i] = fmaf(p, vr[part + 4 * i], acc[i]);
        }
    }
    if (r < tile.n) {
        float *orow = o + ((int64_t)(tile.row0 + r) * heads + h) * hd;
#pragma unroll
        for (int i = 0; i < per; i++)
            if (part + 4 * i < hd)
                orow[part + 4 * i] = acc[i] / l;
    }
}

static size_t flash_smem_bytes(int hd)
{
    return ((size_t)(FLASH_ROWS + 2 * FLASH_KEYS) * (hd + 1) + (size_t)FLASH_ROWS * (FLASH_KEYS + 1)) *
           sizeof(float);
}

static int check_attention_args(const mx_tensor *o, const mx_tensor *q, const mx_tensor *k,
                                const mx_tensor *v, int heads, int kv_heads, int hd, int rot,
                                double theta, mx_error *err)
{
    TRY(cuda_check_act(o, "attention o", err));
    TRY(cuda_check_act(q, "attention q", err));
    TRY(cuda_check_act(k, "attention k", err));
    TRY(cuda_check_act(v, "attention v", err));
    if (heads < 1 || kv_heads < 1 || heads % kv_heads != 0)
        return mx_fail(err, MX_EINVAL, "attention: %d heads cannot share %d kv heads", heads, kv_heads);
    if (hd < 1 || hd > ATT_MAX_DIM)
        return mx_fail(err, MX_EUNSUPPORTED, "attention: head dim %d (1..%d supported)", hd,
                       ATT_MAX_DIM);
    if (rot < 0 || rot > hd || rot % 2 != 0)
        return mx_fail(err, MX_EINVAL, "attention: rotary dim %d must be even and <= head dim %d",
                       rot, hd);
    if (!(theta > 0.0) || isinf(theta))
        return mx_fail(err, MX_EINVAL, "attention: rope theta %g must be > 0", theta);
    int64_t T = q->shape[0];
    if (q->shape[1] != (int64_t)heads * hd || o->shape[0] != T || o->shape[1] != q->shape[1] ||
        k->shape[0] != T || v->shape[0] != T || k->shape[1] != (int64_t)kv_heads * hd ||
        v->shape[1] != k->shape[1])
        return mx_fail(err, MX_EINVAL, "attention: q/k/v/o shapes do not match %d heads, %d kv heads "
                       "of dim %d over %lld tokens", heads, kv_heads, hd, (long long)T);
    if (o->data == q->data && T > 0)
        return mx_fail(err, MX_EINVAL, "attention: o must not alias q");
    return 0;
}

/* Host-side plan of one call: every row (for RoPE), the append chunks, the decode rows, the
 * prefill tiles. Built after the pages are reserved (chunks name page addresses). */
struct att_plan {
    tok_info *all, *dec;
    att_tile *tiles;
    kv_chunk *chunks;
    int n_all, n_dec, n_tiles, n_chunks;
    int64_t max_dec_keys;
};

static void plan_free(att_plan *p)
{
    free(p->all), free(p->dec), free(p->tiles), free(p->chunks);
}

static int plan_build(att_plan *p, const mx_span *spans, int n_spans, mx_kv_cache *const *caches,
                      int64_t n_tok, mx_error *err)
{
    memset(p, 0, sizeof *p);
    size_t n = (size_t)(n_tok > 0 ? n_tok : 1);
    p->all = (tok_info *)malloc(n * sizeof *p->all);
    p->dec = (tok_info *)malloc(n * sizeof *p->dec);
    p->tiles = (att_tile *)malloc((n / FLASH_ROWS + (size_t)n_spans + 1) * sizeof *p->tiles);
    /* a span of len tokens touches at most len / PT + 2 pages */
    p->chunks = (kv_chunk *)malloc((n / PT + 2 * (size_t)n_spans + 1) * sizeof *p->chunks);
    if (!p->all || !p->dec || !p->tiles || !p->chunks) {
        plan_free(p);
        return mx_fail(err, MX_ENOMEM, "attention: out of memory");
    }
    for (int i = 0; i < n_spans; i++) {
        kv_paged *pg = (kv_paged *)caches[i]->impl;
        char *const *table = pg->dev_table;
        int pos0 = (int)caches[i]->len, len = spans[i].len;
        for (int j = 0; j < len; j++) {
            tok_info ti = {spans[i].start + j, pos0 + j, table};
            p->all[p->n_all++] = ti;
            if (len < FLASH_MIN_SPAN)
                p->dec[p->n_dec++] = ti;
        }
        for (int j = 0; j < len;) {
            int pos = pos0 + j, off = pos % PT, nt = PT - off < len - j ? PT - off : len - j;
            p->chunks[p->n_chunks++] = {pg->host_table[pos / PT], off, nt, spans[i].start + j};
            j += nt;
        }
        if (len < FLASH_MIN_SPAN) {
            if (pos0 + len > p->max_dec_keys)
                p->max_dec_keys = pos0 + len;
            continue;
        }
        for (int j = 0; j < len; j += FLASH_ROWS) {
            int nr = len - j < FLASH_ROWS ? len - j : FLASH_ROWS;
            p->tiles[p->n_tiles++] = {table, spans[i].start + j, nr, pos0 + j};
        }
    }
    return 0;
}

/* The kernels of one call for element type DT, queued on the backend's stream. */
template <int DT>
static int launch_attention(cuda_impl *im, const att_plan *plan, float *o, float *q, const float *k,
                            const float *v, float *krot, float *part, int splits, int chunk,
                            const void *dall, const void *ddec, const void *dtiles,
                            const void *dchunks, const float *dfreq, int heads, int kv_heads, int hd,
                            int rot, int64_t soff, mx_error *err)
{
    float scale = 1.0f / sqrtf((float)hd);
    rope_kernel<<<(unsigned)plan->n_all, 128, 0, im->stream>>>(q, krot, k, (const tok_info *)dall, dfreq,
                                                               heads, kv_heads, hd, rot);
    kv_append_kernel<DT><<<dim3((unsigned)plan->n_chunks, (unsigned)kv_heads), APPEND_THREADS, 0,
                           im->stream>>>((const kv_chunk *)dchunks, krot, v, kv_heads, hd, soff);
    cudaError_t e = cudaGetLastError();
    if (e != cudaSuccess)
        return mx_fail(err, MX_EDEVICE, "attention rope/append launch: %s", cudaGetErrorString(e));
    if (plan->n_tiles) {
        size_t smem = flash_smem_bytes(hd);
        e = cudaFuncSetAttribute(flash_prefill_kernel<DT>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                 (int)smem);
        if (e == cudaSuccess) {
            flash_prefill_kernel<DT><<<dim3((unsigned)plan->n_tiles, (unsigned)heads), 256, smem,
                                       im->stream>>>(o, q, (const att_tile *)dtiles, heads, kv_heads,
                                                     hd, scale, soff);
            e = cudaGetLastError();
        }
        if (e != cudaSuccess)
            return mx_fail(err, MX_EDEVICE, "attention prefill launch: %s", cudaGetErrorString(e));
    }
    if (plan->n_dec) {
        paged_attention_kernel<DT><<<dim3((unsigned)plan->n_dec, (unsigned)heads, (unsigned)splits),
                                     32 * ATT_WARPS, 0, im->stream>>>(
            part, q, (const tok_info *)ddec, heads, kv_heads, hd, chunk, scale, soff);
        attention_merge_kernel<<<dim3((unsigned)plan->n_dec, (unsigned)heads), 128, 0, im->stream>>>(
            o, part, (const tok_info *)ddec, heads, hd, splits);
        e = cudaGetLastError();
        if (e != cudaSuccess)
            return mx_fail(err, MX_EDEVICE, "attention decode launch: %s", cudaGetErrorString(e));
    }
    return 0;
}

int cuda_softmax_attention(mx_backend *be, mx_tensor *o, mx_tensor *q, const mx_tensor *k,
                           const mx_tensor *v, const mx_span *spans, int n_spans,
                           mx_kv_cache *const *caches, int heads, int kv_heads, int head_dim,
                           int rotary_dim, double rope_theta, mx_error *err)
{
    TRY(check_attention_args(o, q, k, v, heads, kv_heads, head_dim, rotary_dim, rope_theta, err));
    int64_t T = q->shape[0];
    TRY(cuda_check_spans(spans, n_spans, T, err));
    if (n_spans > 0 && !caches)
        return mx_fail(err, MX_EINVAL, "attention: missing caches");
    cuda_impl *im = impl_of(be);
    int64_t n_tok = 0;
    for (int i = 0; i < n_spans; i++) {
        const mx_kv_cache *c = caches[i];
        if (!c || !c->impl || c->kv_heads != kv_heads || c->head_dim != head_dim)
            return mx_fail(err, MX_EINVAL, "attention: cache %d is not a CUDA cache of %d kv heads x %d",
                           i, kv_heads, head_dim);
        if (c->dtype != im->kv.dtype)
            return mx_fail(err, MX_EINVAL, "attention: cache %d holds %s, the backend %s", i,
                           mx_kv_dtype_name(c->dtype), mx_kv_dtype_name(im->kv.dtype));
        for (int j = 0; j < i; j++)
            if (caches[j] == caches[i])
                return mx_fail(err, MX_EINVAL, "attention: spans %d and %d share one cache", j, i);
        if (c->len + spans[i].len > 0x7fffffff)
            return mx_fail(err, MX_ERANGE, "attention: sequence %d would exceed 2^31 tokens", i);
        n_tok += spans[i].len;
    }
    if (n_spans == 0)
        return 0;
    TRY(cuda_enter(be, err));
    TRY(kv_reserve_all(be, caches, spans, n_spans, err));
    /* From here on the pages are held: a failure leaves them reserved (len unchanged), which the
     * next call or kv_cache_free reuses. */
    int half = rotary_dim / 2;
    float *inv_freq = (float *)malloc((size_t)(half + 1) * sizeof *inv_freq);
    if (!inv_freq)
        return mx_fail(err, MX_ENOMEM, "attention: out of memory");
    for (int i = 0; i < half; i++) /* 1 / theta^(2i/rot), in double then rounded to fp32 */
        inv_freq[i] = (float)(1.0 / pow(rope_theta, (double)(2 * i) / (double)rotary_dim));
    att_plan plan;
    int rc = plan_build(&plan, spans, n_spans, caches, n_tok, err);
    if (rc) {
        free(inv_freq);
        return rc;
    }
    mx_kv_dtype dt = im->kv.dtype;
    int64_t soff = 2ll * kv_heads * PT * head_dim * mx_kv_dtype_elem_bytes(dt);

    /* decode split: cut the key range when (rows x heads) blocks would not fill the GPU */
    int splits = 1, chunk = 0;
    size_t part_bytes = 0;
    if (plan.n_dec) {
        int64_t blocks = (int64_t)plan.n_dec * heads;
        int64_t want = (528 + blocks - 1) / blocks; /* ~4 blocks per SM on a 132-SM part */
        int64_t by_len = (plan.max_dec_keys + ATT_MIN_KEYS_PER_SPLIT - 1) / ATT_MIN_KEYS_PER_SPLIT;
        splits = (int)(want < by_len ? want : by_len);
        splits = splits < 1 ? 1 : splits > ATT_MAX_SPLITS ? ATT_MAX_SPLITS : splits;
        chunk = (int)((plan.max_dec_keys + splits - 1) / splits);
        part_bytes = (size_t)blocks * splits * (head_dim + 2) * sizeof(float);
    }
    /* one scratch buffer: RoPE'd k [T, kv_heads*hd], then the decode partials */
    size_t krot_bytes = ((size_t)T * kv_heads * head_dim * sizeof(float) + 255) & ~(size_t)255;
    void *scratch = NULL;
    rc = cuda_scratch(be, krot_bytes + part_bytes, &scratch, err);

    void *dall = NULL, *ddec = NULL, *dtiles = NULL, *dfreq = NULL, *dchunks = NULL;
    if (!rc)
        rc = cuda_params_reset(be, (size_t)(plan.n_all + plan.n_dec) * sizeof(tok_info) +
                                       (size_t)plan.n_tiles * sizeof(att_tile) +
                                       (size_t)plan.n_chunks * sizeof(kv_chunk) + (size_t)(half + 1) * 4,
                               err);
    if (!rc)
        rc = cuda_params_push(be, inv_freq, (size_t)(half + 1) * 4, &dfreq, err);
    if (!rc)
        rc = cuda_params_push(be, plan.all, (size_t)plan.n_all * sizeof(tok_info), &dall, err);
    if (!rc)
        rc = cuda_params_push(be, plan.chunks, (size_t)plan.n_chunks * sizeof(kv_chunk), &dchunks, err);
    if (!rc && plan.n_dec)
        rc = cuda_params_push(be, plan.dec, (size_t)plan.n_dec * sizeof(tok_info), &ddec, err);
    if (!rc && plan.n_tiles)
        rc = cuda_params_push(be, plan.tiles, (size_t)plan.n_tiles * sizeof(att_tile), &dtiles, err);
    if (!rc) {
        float *krot = (float *)scratch, *part = (float *)((char *)scratch + krot_bytes);
        float *od = (float *)o->data, *qd = (float *)q->data;
        const float *kd = (const float *)k->data, *vd = (const float *)v->data;
        const float *fr = (const float *)dfreq;
        switch (dt) {
        case MX_KV_F32:
            rc = launch_attention<MX_KV_F32>(im, &plan, od, qd, kd, vd, krot, part, splits, chunk, dall,
                                             ddec, dtiles, dchunks, fr, heads, kv_heads, head_dim,
                                             rotary_dim, soff, err);
            break;
        case MX_KV_BF16:
            rc = launch_attention<MX_KV_BF16>(im, &plan, od, qd, kd, vd, krot, part, splits, chunk, dall,
                                              ddec, dtiles, dchunks, fr, heads, kv_heads, head_dim,
                                              rotary_dim, soff, err);
            break;
        case MX_KV_FP8_E4M3:
            rc = launch_attention<MX_KV_FP8_E4M3>(im, &plan, od, qd, kd, vd, krot, part, splits, chunk,
                                                  dall, ddec, dtiles, dchunks, fr, heads, kv_heads,
                                                  head_dim, rotary_dim, soff, err);
            break;
        case MX_KV_INT8:
            rc = launch_attention<MX_KV_INT8>(im, &plan, od, qd, kd, vd, krot, part, splits, chunk, dall,
                                              ddec, dtiles, dchunks, fr, heads, kv_heads, head_dim,
                                              rotary_dim, soff, err);
            break;
        default:
            rc = mx_fail(err, MX_EINTERNAL, "attention: KV dtype %d", (int)dt);
        }
    }
    plan_free(&plan);
    free(inv_freq);
    TRY(rc);
    for (int i = 0; i < n_spans; i++)
        caches[i]->len += spans[i].len;
    return 0;
}
