/* kv_pages_cpu.c - the CPU backend's paged KV cache: a pool of MX_KV_PAGE_TOKENS-token pages
 * (core/kv_cache.h format) carved from slabs, accounted against one byte budget, page tables
 * per sequence and layer, and the element encodings (f32, bf16, int8, fp8 e4m3). It must not
 * compute attention (flash_attention_cpu.c does). */
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "attention_cpu.h"
#include "cpu_backend.h"

/* Slabs of 2 MiB: one allocation serves many pages, so a decode step that starts a page takes
 * it from a free list instead of calling malloc. Slabs are 2 MiB aligned and advised as huge
 * pages: a long-context decode step streams every page of the sequence (1 GiB at 256K tokens
 * of the real layer in bf16), and with 4 KiB pages each 4 KiB of that costs a TLB miss and
 * stops the hardware prefetcher at the page edge (measured: the step's KV reads reached under
 * half of the memory bandwidth). */
#define KV_SLAB_BYTES ((uint64_t)2 << 20)
#define KV_MAX_CLASSES 16

typedef struct kv_table {
    void **pages;         /* [cap_pages] */
    int64_t n_pages, cap_pages;
    uint64_t page_bytes;
} kv_table;

typedef struct size_class {
    uint64_t page_bytes;
    void *free_list; /* free pages, linked through their first word */
} size_class;

struct mx_kv_pool {
    pthread_mutex_t lock; /* caches are freed on whichever thread ends a sequence */
    mx_kv_options opt;    /* budget_bytes resolved once `resolved` */
    int resolved;
    uint64_t used_bytes;
    int caches;
    size_class cls[KV_MAX_CLASSES];
    int n_cls;
    void **slabs;
    int n_slabs, cap_slabs;
};

/* ---------------------------------------------------------------- element encodings */

static const float fp8_values[256] = {
#include "kv_pages_fp8_table.inc"
};
const float *const mx_kv_fp8_table = fp8_values;

uint16_t mx_kv_f32_to_bf16(float x)
{
    uint32_t u;
    memcpy(&u, &x, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u)
        return (uint16_t)((u >> 16) | 0x40); /* quiet NaN */
    u += 0x7fffu + ((u >> 16) & 1);
    return (uint16_t)(u >> 16);
}

float mx_kv_bf16_to_f32(uint16_t b)
{
    uint32_t u = (uint32_t)b << 16;
    float x;
    memcpy(&x, &u, 4);
    return x;
}

/* Round to nearest even for 0 <= y < 2^22 without libm (default rounding mode). */
static inline float rne(float y)
{
    volatile float big = 12582912.f; /* 1.5 * 2^23: keeps the compiler from folding the trick */
    return (y + big) - big;
}

uint8_t mx_kv_f32_to_fp8(float x)
{
    uint8_t sign = signbit(x) ? 0x80 : 0;
    float a = fabsf(x);
    if (a != a)
        return 0x7f;
    if (a >= 448.f)
        return sign | 0x7e; /* saturate (e4m3fn has no infinity) */
    if (a < 0.015625f)     /* below 2^-6: subnormal steps of 2^-9; 8 steps = the first normal */
        return sign | (uint8_t)rne(a * 512.f);
    int e;
    float m = frexpf(a, &e); /* a = m * 2^e, m in [0.5, 1) */
    int q = (int)rne((m * 2.f - 1.f) * 8.f);
    e -= 1;
    if (q == 8) {
        q = 0;
        e++;
    }
    return sign | (uint8_t)(((e + 7) << 3) | q);
}

float mx_kv_fp8_to_f32(uint8_t b)
{
    return fp8_values[b];
}

float mx_kv_dtype_max(mx_kv_dtype t)
{
    return t == MX_KV_INT8 ? 127.f : t == MX_KV_FP8_E4M3 ? 448.f : 0.f;
}

static inline float dec8(mx_kv_dtype t, uint8_t e)
{
    return t == MX_KV_INT8 ? (float)(int8_t)e : fp8_values[e];
}

static inline uint8_t enc8(mx_kv_dtype t, float x)
{
    if (t == MX_KV_FP8_E4M3)
        return mx_kv_f32_to_fp8(x);
    float r = x < 0 ? -rne(-x) : rne(x);
    r = r > 127.f ? 127.f : r < -127.f ? -127.f : r;
    return (uint8_t)(int8_t)r;
}

/* ---------------------------------------------------------------- page layout */

static inline size_t block_elems(const mx_kv_cache *kv)
{
    return (size_t)MX_KV_PAGE_TOKENS * kv->head_dim;
}

static inline size_t elem_bytes(const mx_kv_cache *kv)
{
    return (size_t)mx_kv_dtype_elem_bytes(kv->dtype);
}

void *mx_kv_page(const mx_kv_cache *kv, int64_t i)
{
    return ((const kv_table *)kv->impl)->pages[i];
}

const void *mx_kv_page_k(const mx_kv_cache *kv, const void *page, int h)
{
    return (const char *)page + (size_t)h * block_elems(kv) * elem_bytes(kv);
}

const void *mx_kv_page_v(const mx_kv_cache *kv, const void *page, int h)
{
    return (const char *)page + ((size_t)kv->kv_heads + h) * block_elems(kv) * elem_bytes(kv);
}

static float *page_scales(const mx_kv_cache *kv, const void *page)
{
    return (float *)((char *)page + 2 * (size_t)kv->kv_heads * block_elems(kv) * elem_bytes(kv));
}

float mx_kv_page_k_scale(const mx_kv_cache *kv, const void *page, int h)
{
    return kv->dtype == MX_KV_INT8 || kv->dtype == MX_KV_FP8_E4M3 ? page_scales(kv, page)[h] : 1.f;
}

float mx_kv_page_v_scale(const mx_kv_cache *kv, const void *page, int h)
{
    return kv->dtype == MX_KV_INT8 || kv->dtype == MX_KV_FP8_E4M3 ? page_scales(kv, page)[kv->kv_heads + h] : 1.f;
}

/* Stores n rows of one head (src rows `stride` floats apart) at slots [slot, slot + n) of a
 * [MX_KV_PAGE_TOKENS][d] block, or of a [d][MX_KV_PAGE_TOKENS] block when `tr` (K: attention
 * then reads a key tile already transposed; the slots not yet written are 0, so a partly
 * filled tile holds no NaN or Inf). 8-bit: when the new rows need a larger scale than the block
 * has, the `slot` rows already there are re-encoded with the new scale first. A block that
 * already holds rows grows its scale by powers of two: each re-encoding rounds again, and with
 * at least doubling steps those roundings sum to at most one final step (measured with one new
 * record per decode token: re-encoding to the exact new scale drifted by 3 steps in a page);
 * fp8 re-encodes by a power of two exactly. The cost is at most one bit of int8 resolution
 * in pages that rescale. */
static void write_block(mx_kv_dtype t, void *block, float *scale, int d, int slot, int n, const float *src,
                        size_t stride, int tr)
{
    const size_t T = MX_KV_PAGE_TOKENS;
/* element (token slot c, dim a) of the block */
#define AT(c, a) (tr ? (size_t)(a) * T + (size_t)(c) : (size_t)(c) * d + (size_t)(a))
    if (tr && slot == 0)
        memset(block, 0, T * (size_t)d * (size_t)mx_kv_dtype_elem_bytes(t));
    if (t == MX_KV_F32) {
        float *b = block;
        for (int i = 0; i < n; i++)
            for (int a = 0; a < d; a++)
                b[AT(slot + i, a)] = src[(size_t)i * stride + a];
        return;
    }
    if (t == MX_KV_BF16) {
        uint16_t *b = block;
        for (int i = 0; i < n; i++)
            for (int a = 0; a < d; a++)
                b[AT(slot + i, a)] = mx_kv_f32_to_bf16(src[(size_t)i * stride + a]);
        return;
    }
    uint8_t *b = block;
    float amax = 0;
    for (int i = 0; i < n; i++)
        for (int a = 0; a < d; a++) {
            float x = fabsf(src[(size_t)i * stride + a]);
            amax = x > amax ? x : amax;
        }
    float need = amax / mx_kv_dtype_max(t);
    if (need > *scale) {
        float old = *scale;
        if (old > 0 && slot > 0) {
            while (old < need)
                old *= 2.f;
            need = old;
            old = *scale;
            for (int c = 0; c < slot; c++)
                for (int a = 0; a < d; a++)
                    b[AT(c, a)] = enc8(t, dec8(t, b[AT(c, a)]) * (old / need));
        }
        *scale = need;
    }
    float inv = *scale > 0 ? 1.f / *scale : 0.f;
    for (int i = 0; i < n; i++)
        for (int a = 0; a < d; a++)
            b[AT(slot + i, a)] = enc8(t, src[(size_t)i * stride + a] * inv);
#undef AT
}

void mx_kv_write_page(mx_kv_cache *kv, int64_t pos, int n, const float *k, const float *v, size_t stride)
{
    void *page = mx_kv_page(kv, pos / MX_KV_PAGE_TOKENS);
    int slot = (int)(pos % MX_KV_PAGE_TOKENS), d = kv->head_dim, H = kv->kv_heads;
    int eight = kv->dtype == MX_KV_INT8 || kv->dtype == MX_KV_FP8_E4M3;
    float one = 1.f, *sc = eight ? page_scales(kv, page) : NULL;
    for (int h = 0; h < H; h++) {
        write_block(kv->dtype, (void *)mx_kv_page_k(kv, page, h), eight ? &sc[h] : &one, d, slot, n,
                    k + (size_t)h * d, stride, 1);
        write_block(kv->dtype, (void *)mx_kv_page_v(kv, page, h), eight ? &sc[H + h] : &one, d, slot, n,
                    v + (size_t)h * d, stride, 0);
    }
}

/* ---------------------------------------------------------------- pool */

int mx_kv_pool_create(mx_kv_pool **out, mx_error *err)
{
    mx_kv_pool *p = calloc(1, sizeof *p);
    if (!p)
        return mx_fail(err, MX_ENOMEM, "out of memory creating the KV page pool");
    pthread_mutex_init(&p->lock, NULL);
    p->opt.dtype = MX_KV_BF16;
    *out = p;
    return 0;
}

void mx_kv_pool_destroy(mx_kv_pool *p)
{
    if (!p)
        return;
    for (int i = 0; i < p->n_slabs; i++)
        free(p->slabs[i]);
    free(p->slabs);
    pthread_mutex_destroy(&p->lock);
    free(p);
}

/* MX_KV_DEFAULT_RAM_FRACTION of MemAvailable (of free physical pages if /proc is missing). */
static uint64_t default_budget(void)
{
    uint64_t avail = 0;
    FILE *f = fopen("/proc/meminfo", "r");
    if (f) {
        char line[256];
        unsigned long long kb;
        while (fgets(line, sizeof line, f))
            if (sscanf(line, "MemAvailable: %llu kB", &kb) == 1) {
                avail = (uint64_t)kb * 1024;
                break;
            }
        fclose(f);
    }
    if (!avail) {
        long pages = sysconf(_SC_AVPHYS_PAGES), psz = sysconf(_SC_PAGESIZE);
        avail = pages > 0 && psz > 0 ? (uint64_t)pages * (uint64_t)psz : (uint64_t)1 << 30;
    }
    return (uint64_t)((double)avail * MX_KV_DEFAULT_RAM_FRACTION);
}

static void resolve_locked(mx_kv_pool *p)
{
    if (!p->resolved) {
        if (!p->opt.budget_bytes)
            p->opt.budget_bytes = default_budget();
        p->resolved = 1;
    }
}

int mx_kv_pool_configure(mx_kv_pool *p, const mx_kv_options *opt, mx_error *err)
{
    if ((unsigned)opt->dtype >= MX_KV_DTYPE_COUNT)
        return mx_fail(err, MX_EINVAL, "kv_configure: unknown KV dtype %d", (int)opt->dtype);
    pthread_mutex_lock(&p->lock);
    int rc = 0;
    if (p->caches) {
        rc = mx_fail(err, MX_EINVAL, "kv_configure: %d KV caches exist (configure before any sequence)", p->caches);
    } else {
        p->opt = *opt;
        p->resolved = 0;
        resolve_locked(p);
    }
    pthread_mutex_unlock(&p->lock);
    return rc;
}

void mx_kv_pool_usage(mx_kv_pool *p, mx_kv_usage *out)
{
    pthread_mutex_lock(&p->lock);
    resolve_locked(p);
    out->dtype = p->opt.dtype;
    out->page_tokens = MX_KV_PAGE_TOKENS;
    out->budget_bytes = p->opt.budget_bytes;
    out->used_bytes = p->used_bytes;
    pthread_mutex_unlock(&p->lock);
}

int mx_kv_pool_cache_init(mx_kv_pool *p, mx_kv_cache *kv, int kv_heads, int head_dim, mx_error *err)
{
    memset(kv, 0, sizeof *kv);
    if (kv_heads < 1 || head_dim < 1)
        return mx_fail(err, MX_EINVAL, "KV cache: %d kv heads of %d dims", kv_heads, head_dim);
    kv_table *t = calloc(1, sizeof *t);
    if (!t)
        return mx_fail(err, MX_ENOMEM, "out of memory for a KV cache");
    pthread_mutex_lock(&p->lock);
    resolve_locked(p);
    p->caches++;
    kv->dtype = p->opt.dtype;
    pthread_mutex_unlock(&p->lock);
    kv->kv_heads = kv_heads;
    kv->head_dim = head_dim;
    t->page_bytes = mx_kv_page_bytes(kv->dtype, kv_heads, head_dim);
    kv->impl = t;
    return 0;
}

static size_class *class_for(mx_kv_pool *p, uint64_t page_bytes)
{
    for (int i = 0; i < p->n_cls; i++)
        if (p->cls[i].page_bytes == page_bytes)
            return &p->cls[i];
    if (p->n_cls == KV_MAX_CLASSES)
        return NULL;
    p->cls[p->n_cls] = (size_class){page_bytes, NULL};
    return &p->cls[p->n_cls++];
}

static void push_free(size_class *c, void *page)
{
    *(void **)page = c->free_list;
    c->free_list = page;
}

/* A free page of class c, carving a new slab when the list is empty; NULL if out of memory. */
static void *pop_page(mx_kv_pool *p, size_class *c)
{
    if (!c->free_list) {
        if (p->n_slabs == p->cap_slabs) {
            int cap = p->cap_slabs ? 2 * p->cap_slabs : 16;
            void **s = realloc(p->slabs, (size_t)cap * sizeof *s);
            if (!s)
                return NULL;
            p->slabs = s;
            p->cap_slabs = cap;
        }
        uint64_t n = KV_SLAB_BYTES / c->page_bytes;
        n = n < 1 ? 1 : n;
        size_t bytes = (size_t)(n * c->page_bytes);
        bytes = (bytes + KV_SLAB_BYTES - 1) & ~(size_t)(KV_SLAB_BYTES - 1);
        char *slab = aligned_alloc(KV_SLAB_BYTES, bytes);
        if (!slab)
            return NULL;
#ifdef MADV_HUGEPAGE
        (void)madvise(slab, bytes, MADV_HUGEPAGE); /* advice only: 4 KiB pages still work */
#endif
        p->slabs[p->n_slabs++] = slab;
        for (uint64_t i = n; i-- > 0;)
            push_free(c, slab + i * c->page_bytes);
    }
    void *page = c->free_list;
    c->free_list = *(void **)page;
    return page;
}

void mx_kv_pool_cache_free(mx_kv_pool *p, mx_kv_cache *kv)
{
    if (!kv || !kv->impl)
        return;
    kv_table *t = kv->impl;
    pthread_mutex_lock(&p->lock);
    size_class *c = t->n_pages ? class_for(p, t->page_bytes) : NULL;
    for (int64_t i = 0; i < t->n_pages; i++)
        push_free(c, t->pages[i]);
    p->used_bytes -= (uint64_t)t->n_pages * t->page_bytes;
    p->caches--;
    pthread_mutex_unlock(&p->lock);
    free(t->pages);
    free(t);
    kv->impl = NULL;
    kv->len = kv->capacity = 0;
}

int mx_kv_reserve(mx_kv_pool *p, mx_kv_cache *const *caches, const int64_t *add, int n, mx_error *err)
{
    /* Growing the page pointer arrays first changes nothing a caller can see. */
    uint64_t need = 0;
    int64_t pages = 0;
    for (int i = 0; i < n; i++) {
        kv_table *t = caches[i]->impl;
        int64_t want = mx_kv_pages_for_tokens(caches[i]->len + add[i]);
        if (want <= t->n_pages)
            continue;
        if (want > t->cap_pages) {
            int64_t cap = t->cap_pages ? t->cap_pages : 4;
            while (cap < want)
                cap *= 2;
            void **a = realloc(t->pages, (size_t)cap * sizeof *a);
            if (!a)
                return mx_fail(err, MX_ENOMEM, "out of memory for a KV page table of %lld pages", (long long)cap);
            t->pages = a;
            t->cap_pages = cap;
        }
        need += (uint64_t)(want - t->n_pages) * t->page_bytes;
        pages += want - t->n_pages;
    }
    if (!need)
        return 0;
    pthread_mutex_lock(&p->lock);
    resolve_locked(p);
    if (p->used_bytes + need > p->opt.budget_bytes) {
        uint64_t avail = p->opt.budget_bytes > p->used_bytes ? p->opt.budget_bytes - p->used_bytes : 0;
        pthread_mutex_unlock(&p->lock);
        return mx_fail(err, MX_ENOMEM,
                       "KV budget spent: %llu bytes needed (%lld pages), %llu of the %llu-byte budget available",
                       (unsigned long long)need, (long long)pages, (unsigned long long)avail,
                       (unsigned long long)p->opt.budget_bytes);
    }
    int i = 0, failed = 0;
    for (; i < n && !failed; i++) {
        kv_table *t = caches[i]->impl;
        int64_t want = mx_kv_pages_for_tokens(caches[i]->len + add[i]);
        size_class *c = want > t->n_pages ? class_for(p, t->page_bytes) : NULL;
        while (!failed && want > t->n_pages) {
            void *page = c ? pop_page(p, c) : NULL;
            if (!page) {
                failed = 1;
                break;
            }
            if (caches[i]->dtype == MX_KV_INT8 || caches[i]->dtype == MX_KV_FP8_E4M3)
                memset(page_scales(caches[i], page), 0, 2 * (size_t)caches[i]->kv_heads * sizeof(float));
            t->pages[t->n_pages++] = page;
        }
    }
    if (failed) { /* give back what this call took: every cache as it was */
        for (int j = 0; j < i; j++) {
            kv_table *t = caches[j]->impl;
            int64_t keep = mx_kv_pages_for_tokens(caches[j]->capacity);
            size_class *c = class_for(p, t->page_bytes);
            while (t->n_pages > keep)
                push_free(c, t->pages[--t->n_pages]);
        }
        pthread_mutex_unlock(&p->lock);
        return mx_fail(err, MX_ENOMEM, "out of memory for %llu bytes of KV pages", (unsigned long long)need);
    }
    p->used_bytes += need;
    pthread_mutex_unlock(&p->lock);
    for (int j = 0; j < n; j++) {
        kv_table *t = caches[j]->impl;
        caches[j]->capacity = t->n_pages * MX_KV_PAGE_TOKENS;
    }
    return 0;
}

/* ---------------------------------------------------------------- backend ops */

int mx_cpu_kv_cache_init(mx_backend *be, mx_kv_cache *kv, int kv_heads, int head_dim, mx_error *err)
{
    return mx_kv_pool_cache_init(((mx_cpu_impl *)be->impl)->kv_pool, kv, kv_heads, head_dim, err);
}

void mx_cpu_kv_cache_free(mx_backend *be, mx_kv_cache *kv)
{
    mx_kv_pool_cache_free(((mx_cpu_impl *)be->impl)->kv_pool, kv);
}

int mx_cpu_kv_configure(mx_backend *be, const mx_kv_options *opt, mx_error *err)
{
    return mx_kv_pool_configure(((mx_cpu_impl *)be->impl)->kv_pool, opt, err);
}

void mx_cpu_kv_usage(mx_backend *be, mx_kv_usage *out)
{
    mx_kv_pool_usage(((mx_cpu_impl *)be->impl)->kv_pool, out);
}

/* The undo of a failed step's appends (mx_backend.kv_cache_truncate): the tail page's dropped
 * slots are zeroed again (the kernels read whole blocks; the written-or-zero invariant of
 * write_block holds), later pages go back to the pool. */
void mx_cpu_kv_cache_truncate(mx_backend *be, mx_kv_cache *kv, int64_t len)
{
    if (!kv || !kv->impl || len < 0 || len >= kv->len)
        return;
    mx_kv_pool *p = ((mx_cpu_impl *)be->impl)->kv_pool;
    kv_table *t = kv->impl;
    int slot = (int)(len % MX_KV_PAGE_TOKENS), d = kv->head_dim;
    size_t eb = elem_bytes(kv), T = MX_KV_PAGE_TOKENS;
    if (slot) {
        void *page = mx_kv_page(kv, len / MX_KV_PAGE_TOKENS);
        for (int h = 0; h < kv->kv_heads; h++) {
            uint8_t *k = (uint8_t *)mx_kv_page_k(kv, page, h), *v = (uint8_t *)mx_kv_page_v(kv, page, h);
            for (int a = 0; a < d; a++) /* K: [d][T] */
                memset(k + ((size_t)a * T + (size_t)slot) * eb, 0, (T - (size_t)slot) * eb);
            memset(v + (size_t)slot * d * eb, 0, (T - (size_t)slot) * d * eb); /* V: [T][d] */
        }
    }
    int64_t keep = mx_kv_pages_for_tokens(len);
    if (t->n_pages > keep) {
        pthread_mutex_lock(&p->lock);
        size_class *c = class_for(p, t->page_bytes);
        p->used_bytes -= (uint64_t)(t->n_pages - keep) * t->page_bytes;
        while (t->n_pages > keep)
            push_free(c, t->pages[--t->n_pages]);
        pthread_mutex_unlock(&p->lock);
    }
    kv->len = len;
    kv->capacity = t->n_pages * MX_KV_PAGE_TOKENS;
}
