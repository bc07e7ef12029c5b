/* softmax_attention.cu - softmax GQA attention over a paged KV cache, exact fp32 path.
 * The cache of one sequence (mx_kv_cache.impl) is a page table: page p holds tokens
 * [p*P, (p+1)*P) as K[kv_heads][P][head_dim] then V[kv_heads][P][head_dim] in F32 (post-RoPE K).
 * Pages are carved from slabs that grow by doubling, so appending never moves stored tokens.
 * One op: partial NeoX RoPE on q (in place) and k, append k/v, then causal attention where
 * every query token reads keys [0, its position] of its own sequence. Spans of 16+ tokens
 * (prefill) run a flash-style kernel: 64 queries of one head per block, 64-key tiles of K/V
 * staged in shared memory, online softmax in fp32. Shorter spans (decode) run one block per
 * (token, head) whose key range is split across blocks (flash-decoding) when there are too few
 * blocks to fill the GPU; a second kernel merges the partial softmax sums. */
#include "cuda_internal.cuh"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define ATT_WARPS 4
#define ATT_MAX_DIM 128
#define ATT_MIN_KEYS_PER_SPLIT 256
#define ATT_MAX_SPLITS 64

struct kv_paged {
    int page_tokens;
    int n_pages, table_cap;  /* pages in use; entries the device table can hold */
    float **host_table;      /* page addresses (host copy, table_cap entries) */
    float **dev_table;       /* the same on the device */
    void **slabs;            /* cudaMalloc'd blocks the pages live in */
    int n_slabs, slab_cap;
};

static size_t page_floats(const mx_kv_cache *kv, int page_tokens)
{
    return (size_t)2 * kv->kv_heads * page_tokens * kv->head_dim;
}

int cuda_kv_cache_init(mx_backend *be, mx_kv_cache *kv, int kv_heads, int head_dim, mx_error *err)
{
    if (!kv || kv_heads < 1 || head_dim < 1)
        return mx_fail(err, MX_EINVAL, "kv_cache_init: %d kv heads of dim %d", kv_heads, head_dim);
    memset(kv, 0, sizeof *kv);
    kv_paged *pg = (kv_paged *)calloc(1, sizeof *pg);
    if (!pg)
        return mx_fail(err, MX_ENOMEM, "kv_cache_init: out of memory");
    pg->page_tokens = impl_of(be)->opt.kv_page_tokens;
    kv->kv_heads = kv_heads;
    kv->head_dim = head_dim;
    kv->impl = pg;
    return 0;
}

void cuda_kv_cache_free(mx_backend *be, mx_kv_cache *kv)
{
    if (!kv || !kv->impl)
        return;
    kv_paged *pg = (kv_paged *)kv->impl;
    cudaSetDevice(impl_of(be)->device);
    for (int i = 0; i < pg->n_slabs; i++)
        cudaFree(pg->slabs[i]);
    cudaFree(pg->dev_table);
    free(pg->slabs);
    free(pg->host_table);
    free(pg);
    kv->impl = NULL;
    kv->len = kv->capacity = 0;
}

/* Placeholder until the CUDA cache takes every dtype: records the options only. */
int cuda_kv_configure(mx_backend *be, const mx_kv_options *opt, mx_error *err)
{
    cuda_impl *im = impl_of(be);
    if (im->kv_caches)
        return mx_fail(err, MX_EINVAL, "kv_configure: %d KV caches exist", im->kv_caches);
    im->kv = *opt;
    return 0;
}

void cuda_kv_usage(mx_backend *be, mx_kv_usage *out)
{
    cuda_impl *im = impl_of(be);
    out->dtype = im->kv.dtype;
    out->page_tokens = MX_KV_PAGE_TOKENS;
    out->budget_bytes = im->kv.budget_bytes;
    out->used_bytes = im->kv_used_bytes;
}

/* Makes room for `tokens` tokens in total; new pages come from one new slab. */
static int kv_reserve(mx_backend *be, mx_kv_cache *kv, int64_t tokens, mx_error *err)
{
    kv_paged *pg = (kv_paged *)kv->impl;
    int64_t need = (tokens + pg->page_tokens - 1) / pg->page_tokens;
    if (need <= pg->n_pages)
        return 0;
    if (need > (1 << 24))
        return mx_fail(err, MX_ENOMEM, "kv cache: %lld tokens is too long", (long long)tokens);
    cuda_impl *im = impl_of(be);
    int add = (int)(need - pg->n_pages);
    if (add < pg->n_pages)
        add = pg->n_pages; /* double, so a long prompt followed by decode allocates rarely */
    if (pg->n_pages + add > pg->table_cap) {
        int cap = pg->n_pages + add;
        float **ht = (float **)realloc(pg->host_table, (size_t)cap * sizeof *ht);
        if (!ht)
            return mx_fail(err, MX_ENOMEM, "kv cache: out of memory for the page table");
        pg->host_table = ht;
        float **dt;
        cudaError_t e = cuda_malloc((void **)&dt, (size_t)cap * sizeof *dt);
        if (e != cudaSuccess) {
            cudaGetLastError();
            return mx_fail(err, MX_ENOMEM, "kv cache page table: %s", cudaGetErrorString(e));
        }
        cudaFree(pg->dev_table); /* waits for kernels still reading the old table */
        pg->dev_table = dt;
        pg->table_cap = cap;
    }
    if (pg->n_slabs == pg->slab_cap) {
        int cap = pg->slab_cap ? 2 * pg->slab_cap : 8;
        void **s = (void **)realloc(pg->slabs, (size_t)cap * sizeof *s);
        if (!s)
            return mx_fail(err, MX_ENOMEM, "kv cache: out of memory for the slab list");
        pg->slabs = s;
        pg->slab_cap = cap;
    }
    size_t pf = page_floats(kv, pg->page_tokens);
    void *slab;
    cudaError_t e = cuda_malloc(&slab, (size_t)add * pf * sizeof(float));
    if (e != cudaSuccess) {
        cudaGetLastError();
        return mx_fail(err, MX_ENOMEM, "kv cache: %d pages of %zu bytes: %s", add, pf * sizeof(float),
                       cudaGetErrorString(e));
    }
    pg->slabs[pg->n_slabs++] = slab;
    for (int i = 0; i < add; i++)
        pg->host_table[pg->n_pages + i] = (float *)slab + (size_t)i * pf;
    pg->n_pages += add;
    CU_TRY(cudaMemcpyAsync(pg->dev_table, pg->host_table, (size_t)pg->n_pages * sizeof(float *),
                           cudaMemcpyHostToDevice, im->stream));
    kv->capacity = (int64_t)pg->n_pages * pg->page_tokens;
    return 0;
}

/* One query row: its row in q/o, its sequence's page table and its absolute position. */
struct tok_info {
    int row;
    int pos;
    float *const *table;
};

/* A prefill tile: up to 64 consecutive rows of one sequence. */
struct att_tile {
    float *const *table;
    int row0, n, pos0;
};

#define FLASH_ROWS 64
#define FLASH_KEYS 64
#define FLASH_MIN_SPAN 16

__device__ __forceinline__ void rope_pair(float *a, float *b, float angle)
{
    float c = cosf(angle), s = sinf(angle), x = *a, y = *b;
    *a = x * c - y * s;
    *b = y * c + x * s;
}

/* grid (rows), block 128: RoPE on every q head in place; RoPE'd k and plain v into the pages. */
__global__ void rope_append_kernel(float *q, const float *k, const float *v, const tok_info *toks,
                                   const float *inv_freq, int heads, int kv_heads, int hd, int rot,
                                   int page_tokens)
{
    tok_info ti = toks[blockIdx.x];
    int64_t t = ti.row;
    int half = rot / 2;
    float *qt = q + t * heads * hd;
    for (int idx = threadIdx.x; idx < heads * half; idx += blockDim.x) {
        int h = idx / half, i = idx % half;
        rope_pair(&qt[h * hd + i], &qt[h * hd + i + half], (float)ti.pos * inv_freq[i]);
    }
    float *page = ti.table[ti.pos / page_tokens];
    int off = ti.pos % page_tokens;
    const float *kt = k + t * kv_heads * hd, *vt = v + t * kv_heads * hd;
    for (int idx = threadIdx.x; idx < kv_heads * hd; idx += blockDim.x) {
        int h = idx / hd, d = idx % hd;
        float *kdst = page + ((int64_t)h * page_tokens + off) * hd;
        float *vdst = page + ((int64_t)(kv_heads + h) * page_tokens + off) * hd;
        vdst[d] = vt[idx];
        if (d < half) {
            float a = kt[idx], b = kt[idx + half];
            rope_pair(&a, &b, (float)ti.pos * inv_freq[d]);
            kdst[d] = a;
            kdst[d + half] = b;
        } else if (d >= rot) {
            kdst[d] = kt[idx];
        }
    }
}

/* Decode path. grid (listed rows, heads, splits), block 32 * ATT_WARPS. Each warp walks keys of
 * its split with an online softmax; lanes hold dims lane, lane+32, ...; warps merge in shared
 * memory and the block writes (max, sum, acc[hd]) for its split. */
__global__ void paged_attention_kernel(float *part, const float *q, const tok_info *toks, int heads,
                                       int kv_heads, int hd, int page_tokens, int chunk, float scale)
{
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
        const float *page = ti.table[key / page_tokens];
        int off = key % page_tokens;
        const float *kp = page + ((int64_t)kvh * page_tokens + off) * hd;
        const float *vp = page + ((int64_t)(kv_heads + kvh) * page_tokens + off) * hd;
        float d = 0.0f;
#pragma unroll
        for (int r = 0; r < per; r++)
            if (lane + 32 * r < hd)
                d = fmaf(qv[r], kp[lane + 32 * r], d);
        for (int o = 16; o > 0; o >>= 1)
            d += __shfl_xor_sync(0xffffffffu, d, o);
        float sc = d * scale;
        float m_new = fmaxf(m, sc);
        float corr = expf(m - m_new), p = expf(sc - m_new);
        l = l * corr + p;
#pragma unroll
        for (int r = 0; r < per; r++)
            if (lane + 32 * r < hd)
                acc[r] = acc[r] * corr + p * vp[lane + 32 * r];
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
 * part, part+4, ... (interleaved, so the four threads of a row hit different banks). */
__global__ void __launch_bounds__(256)
flash_prefill_kernel(float *o, const float *q, const att_tile *tiles, int heads, int kv_heads,
                     int hd, int page_tokens, float scale)
{
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
                const float *page = tile.table[key / page_tokens];
                int off = key % page_tokens;
                kv = page[((int64_t)kvh * page_tokens + off) * hd + d];
                vv = page[((int64_t)(kv_heads + kvh) * page_tokens + off) * hd + d];
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

/* Host-side plan of one call: every row (for RoPE/append), the decode rows, the prefill tiles. */
struct att_plan {
    tok_info *all, *dec;
    att_tile *tiles;
    int n_all, n_dec, n_tiles;
    int64_t max_dec_keys;
};

static void plan_free(att_plan *p)
{
    free(p->all), free(p->dec), free(p->tiles);
}

static int plan_build(att_plan *p, const mx_span *spans, int n_spans, mx_kv_cache *const *caches,
                      int64_t n_tok, mx_error *err)
{
    memset(p, 0, sizeof *p);
    size_t n = (size_t)(n_tok > 0 ? n_tok : 1);
    p->all = (tok_info *)malloc(n * sizeof *p->all);
    p->dec = (tok_info *)malloc(n * sizeof *p->dec);
    p->tiles = (att_tile *)malloc((n / FLASH_ROWS + (size_t)n_spans + 1) * sizeof *p->tiles);
    if (!p->all || !p->dec || !p->tiles) {
        plan_free(p);
        return mx_fail(err, MX_ENOMEM, "attention: out of memory");
    }
    for (int i = 0; i < n_spans; i++) {
        float *const *table = ((kv_paged *)caches[i]->impl)->dev_table;
        int pos0 = (int)caches[i]->len;
        for (int j = 0; j < spans[i].len; j++) {
            tok_info ti = {spans[i].start + j, pos0 + j, table};
            p->all[p->n_all++] = ti;
            if (spans[i].len < FLASH_MIN_SPAN)
                p->dec[p->n_dec++] = ti;
        }
        if (spans[i].len < FLASH_MIN_SPAN) {
            if (pos0 + spans[i].len > p->max_dec_keys)
                p->max_dec_keys = pos0 + spans[i].len;
            continue;
        }
        for (int j = 0; j < spans[i].len; j += FLASH_ROWS) {
            int nr = spans[i].len - j < FLASH_ROWS ? spans[i].len - j : FLASH_ROWS;
            p->tiles[p->n_tiles++] = {table, spans[i].start + j, nr, pos0 + j};
        }
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
    int64_t n_tok = 0;
    for (int i = 0; i < n_spans; i++) {
        const mx_kv_cache *c = caches[i];
        if (!c || !c->impl || c->kv_heads != kv_heads || c->head_dim != head_dim)
            return mx_fail(err, MX_EINVAL, "attention: cache %d is not a CUDA cache of %d kv heads x %d",
                           i, kv_heads, head_dim);
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
    cuda_impl *im = impl_of(be);
    for (int i = 0; i < n_spans; i++)
        TRY(kv_reserve(be, caches[i], caches[i]->len + spans[i].len, err));

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
    int pt = ((kv_paged *)caches[0]->impl)->page_tokens;
    float scale = 1.0f / sqrtf((float)head_dim);
    void *dall = NULL, *ddec = NULL, *dtiles = NULL, *dfreq = NULL;
    rc = cuda_params_reset(be, (size_t)(plan.n_all + plan.n_dec) * sizeof(tok_info) +
                                   (size_t)plan.n_tiles * sizeof(att_tile) + (size_t)(half + 1) * 4,
                           err);
    if (!rc)
        rc = cuda_params_push(be, inv_freq, (size_t)(half + 1) * 4, &dfreq, err);
    if (!rc)
        rc = cuda_params_push(be, plan.all, (size_t)plan.n_all * sizeof(tok_info), &dall, err);
    if (!rc && plan.n_dec)
        rc = cuda_params_push(be, plan.dec, (size_t)plan.n_dec * sizeof(tok_info), &ddec, err);
    if (!rc && plan.n_tiles)
        rc = cuda_params_push(be, plan.tiles, (size_t)plan.n_tiles * sizeof(att_tile), &dtiles, err);
    if (!rc) {
        rope_append_kernel<<<(unsigned)plan.n_all, 128, 0, im->stream>>>(
            (float *)q->data, (const float *)k->data, (const float *)v->data, (const tok_info *)dall,
            (const float *)dfreq, heads, kv_heads, head_dim, rotary_dim, pt);
        cudaError_t e = cudaGetLastError();
        if (e != cudaSuccess)
            rc = mx_fail(err, MX_EDEVICE, "attention rope/append launch: %s", cudaGetErrorString(e));
    }
    if (!rc && plan.n_tiles) {
        size_t smem = flash_smem_bytes(head_dim);
        cudaError_t e = cudaFuncSetAttribute(flash_prefill_kernel,
                                             cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem);
        if (e == cudaSuccess) {
            flash_prefill_kernel<<<dim3((unsigned)plan.n_tiles, (unsigned)heads), 256, smem,
                                   im->stream>>>((float *)o->data, (const float *)q->data,
                                                 (const att_tile *)dtiles, heads, kv_heads, head_dim,
                                                 pt, scale);
            e = cudaGetLastError();
        }
        if (e != cudaSuccess)
            rc = mx_fail(err, MX_EDEVICE, "attention prefill launch: %s", cudaGetErrorString(e));
    }
    if (!rc && plan.n_dec) {
        /* Split the key range when (rows x heads) blocks would not fill the GPU. */
        int64_t blocks = (int64_t)plan.n_dec * heads;
        int64_t want = (528 + blocks - 1) / blocks; /* ~4 blocks per SM on a 132-SM part */
        int64_t by_len = (plan.max_dec_keys + ATT_MIN_KEYS_PER_SPLIT - 1) / ATT_MIN_KEYS_PER_SPLIT;
        int splits = (int)(want < by_len ? want : by_len);
        splits = splits < 1 ? 1 : splits > ATT_MAX_SPLITS ? ATT_MAX_SPLITS : splits;
        int chunk = (int)((plan.max_dec_keys + splits - 1) / splits);
        float *part = NULL;
        rc = cuda_scratch(be, (size_t)blocks * splits * (head_dim + 2) * sizeof(float), (void **)&part,
                          err);
        if (!rc) {
            paged_attention_kernel<<<dim3((unsigned)plan.n_dec, (unsigned)heads, (unsigned)splits),
                                     32 * ATT_WARPS, 0, im->stream>>>(
                part, (const float *)q->data, (const tok_info *)ddec, heads, kv_heads, head_dim, pt,
                chunk, scale);
            attention_merge_kernel<<<dim3((unsigned)plan.n_dec, (unsigned)heads), 128, 0,
                                     im->stream>>>((float *)o->data, part, (const tok_info *)ddec,
                                                   heads, head_dim, splits);
            cudaError_t e = cudaGetLastError();
            if (e != cudaSuccess)
                rc = mx_fail(err, MX_EDEVICE, "attention decode launch: %s", cudaGetErrorString(e));
        }
    }
    plan_free(&plan);
    free(inv_freq);
    TRY(rc);
    for (int i = 0; i < n_spans; i++)
        caches[i]->len += spans[i].len;
    return 0;
}
