/* softmax_attention.cu - softmax GQA attention over a paged KV cache, exact fp32 path.
 * The cache of one sequence (mx_kv_cache.impl) is a page table: page p holds tokens
 * [p*P, (p+1)*P) as K[kv_heads][P][head_dim] then V[kv_heads][P][head_dim] in F32 (post-RoPE K).
 * Pages are carved from slabs that grow by doubling, so appending never moves stored tokens.
 * One op: partial NeoX RoPE on q (in place) and k, append k/v, then causal attention where
 * every query token reads keys [0, its position] of its own sequence. The key range is split
 * across blocks (flash-decoding) when there are too few (token, head) pairs to fill the GPU;
 * partial softmax sums are merged by a second kernel. */
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
        cudaError_t e = cudaMalloc((void **)&dt, (size_t)cap * sizeof *dt);
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
    cudaError_t e = cudaMalloc(&slab, (size_t)add * pf * sizeof(float));
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

/* Per query token: which sequence (index into the table list) and its absolute position. */
struct tok_info {
    int seq;
    int pos;
};

__device__ __forceinline__ void rope_pair(float *a, float *b, float angle)
{
    float c = cosf(angle), s = sinf(angle), x = *a, y = *b;
    *a = x * c - y * s;
    *b = y * c + x * s;
}

/* grid (T), block 128: RoPE on every q head in place; RoPE'd k and plain v into the pages. */
__global__ void rope_append_kernel(float *q, const float *k, const float *v, const tok_info *toks,
                                   float *const *const *tables, const float *inv_freq, int heads,
                                   int kv_heads, int hd, int rot, int page_tokens)
{
    int64_t t = blockIdx.x;
    tok_info ti = toks[t];
    int half = rot / 2;
    float *qt = q + t * heads * hd;
    for (int idx = threadIdx.x; idx < heads * half; idx += blockDim.x) {
        int h = idx / half, i = idx % half;
        rope_pair(&qt[h * hd + i], &qt[h * hd + i + half], (float)ti.pos * inv_freq[i]);
    }
    float *page = tables[ti.seq][ti.pos / page_tokens];
    int off = ti.pos % page_tokens;
    const float *kt = k + t * kv_heads * hd, *vt = v + t * kv_heads * hd;
    for (int idx = threadIdx.x; idx < kv_heads * hd; idx += blockDim.x) {
        int h = idx / hd, d = idx % hd;
        float *kdst = page + ((int64_t)h * page_tokens + off) * hd;
        float *vdst = page + ((int64_t)(kv_heads + h) * page_tokens + off) * hd;
        vdst[d] = vt[idx];
        if (d < half) {
            float a = kt[idx], b = kt[idx + half], angle = (float)ti.pos * inv_freq[d];
            rope_pair(&a, &b, angle);
            kdst[d] = a;
            kdst[d + half] = b;
        } else if (d >= rot) {
            kdst[d] = kt[idx];
        }
    }
}

/* grid (T, heads, splits), block 32 * ATT_WARPS. Each warp walks keys of its split with an
 * online softmax; lanes hold dims lane, lane+32, ...; warps merge in shared memory and the
 * block writes (max, sum, acc[hd]) for its split. */
__global__ void paged_attention_kernel(float *part, const float *q, const tok_info *toks,
                                       float *const *const *tables, int heads, int kv_heads, int hd,
                                       int page_tokens, int chunk, float scale)
{
    __shared__ float wm[ATT_WARPS], wl[ATT_WARPS], wacc[ATT_WARPS][ATT_MAX_DIM];
    int64_t t = blockIdx.x;
    int h = blockIdx.y, split = blockIdx.z, splits = gridDim.z;
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    tok_info ti = toks[t];
    int kvh = h / (heads / kv_heads);
    const float *qh = q + (t * heads + h) * hd;
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
    float *const *table = tables[ti.seq];
    for (int key = k_begin + warp; key < k_end; key += ATT_WARPS) {
        const float *page = table[key / page_tokens];
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
    float *out = part + ((t * heads + h) * splits + split) * (int64_t)(hd + 2);
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

/* grid (T, heads), block 128: o = sum_s acc_s e^(m_s - M) / sum_s l_s e^(m_s - M). */
__global__ void attention_merge_kernel(float *o, const float *part, int heads, int hd, int splits)
{
    int64_t t = blockIdx.x;
    int h = blockIdx.y;
    const float *p = part + (t * heads + h) * splits * (int64_t)(hd + 2);
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
        o[(t * heads + h) * hd + d] = a / L;
    }
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
    int64_t max_keys = 0, n_tok = 0;
    for (int i = 0; i < n_spans; i++) {
        const mx_kv_cache *c = caches[i];
        if (!c || !c->impl || c->kv_heads != kv_heads || c->head_dim != head_dim)
            return mx_fail(err, MX_EINVAL, "attention: cache %d is not a CUDA cache of %d kv heads x %d",
                           i, kv_heads, head_dim);
        for (int j = 0; j < i; j++)
            if (caches[j] == caches[i])
                return mx_fail(err, MX_EINVAL, "attention: spans %d and %d share one cache", j, i);
        int64_t end = c->len + spans[i].len;
        if (end > 0x7fffffff)
            return mx_fail(err, MX_ERANGE, "attention: sequence %d would exceed 2^31 tokens", i);
        if (end > max_keys)
            max_keys = end;
        n_tok += spans[i].len;
    }
    if (n_spans == 0)
        return 0;
    TRY(cuda_enter(be, err));
    cuda_impl *im = impl_of(be);
    for (int i = 0; i < n_spans; i++)
        TRY(kv_reserve(be, caches[i], caches[i]->len + spans[i].len, err));

    /* Host arrays: per-token (sequence, position), the sequences' page tables, inv_freq. */
    int half = rotary_dim / 2;
    tok_info *toks = (tok_info *)malloc((size_t)(n_tok > 0 ? n_tok : 1) * sizeof *toks);
    float *const **tables = (float *const **)malloc((size_t)(unsigned)n_spans * sizeof *tables);
    float *inv_freq = (float *)malloc((size_t)(half + 1) * sizeof *inv_freq);
    if (!toks || !tables || !inv_freq) {
        free(toks), free(tables), free(inv_freq);
        return mx_fail(err, MX_ENOMEM, "attention: out of memory");
    }
    for (int i = 0; i < n_spans; i++)
        tables[i] = ((kv_paged *)caches[i]->impl)->dev_table;
    for (int i = 0; i < half; i++) /* 1 / theta^(2i/rot), in double then rounded to fp32 */
        inv_freq[i] = (float)(1.0 / pow(rope_theta, (double)(2 * i) / (double)rotary_dim));
    /* The kernels address query rows directly, so when the spans tile [0, T) (the usual packed
     * batch) one launch covers all of them; otherwise each span gets its own launches. */
    bool packed = n_tok == T;
    if (packed) {
        for (int i = 0; i < n_spans; i++)
            for (int j = 0; j < spans[i].len; j++)
                toks[spans[i].start + j] = {i, (int)(caches[i]->len + j)};
    }
    int pt = ((kv_paged *)caches[0]->impl)->page_tokens;
    float scale = 1.0f / sqrtf((float)head_dim);
    int rc = 0;
    void *dtoks = NULL, *dtables = NULL, *dfreq = NULL;
    size_t tok_bytes = (size_t)n_tok * sizeof *toks;
    rc = cuda_params_reset(be, tok_bytes + (size_t)n_spans * sizeof *tables + (size_t)(half + 1) * 4,
                           err);
    if (!rc)
        rc = cuda_params_push(be, tables, (size_t)n_spans * sizeof *tables, &dtables, err);
    if (!rc)
        rc = cuda_params_push(be, inv_freq, (size_t)(half + 1) * 4, &dfreq, err);
    if (!rc && packed)
        rc = cuda_params_push(be, toks, tok_bytes, &dtoks, err);
    /* Split the key range when (tokens x heads) blocks would not fill the GPU (decode). */
    int splits = 1;
    if (!rc) {
        int64_t blocks = T * heads;
        int64_t want = (528 + blocks - 1) / blocks; /* ~4 blocks per SM on a 132-SM part */
        int64_t by_len = (max_keys + ATT_MIN_KEYS_PER_SPLIT - 1) / ATT_MIN_KEYS_PER_SPLIT;
        splits = (int)(want < by_len ? want : by_len);
        if (splits > ATT_MAX_SPLITS)
            splits = ATT_MAX_SPLITS;
        if (splits < 1)
            splits = 1;
    }
    int chunk = (int)((max_keys + splits - 1) / splits);
    float *part = NULL;
    if (!rc)
        rc = cuda_scratch(be, (size_t)T * heads * splits * (head_dim + 2) * sizeof(float),
                          (void **)&part, err);
    if (!rc && !packed) {
        /* Per-span launches: rows of span i are addressed from its start. */
        for (int i = 0; i < n_spans && !rc; i++) {
            for (int j = 0; j < spans[i].len; j++)
                toks[j] = {0, (int)(caches[i]->len + j)};
            void *dt1, *dtab1;
            rc = cuda_params_reset(be, (size_t)spans[i].len * sizeof *toks + sizeof *tables +
                                       (size_t)(half + 1) * 4, err);
            if (!rc)
                rc = cuda_params_push(be, &tables[i], sizeof *tables, &dtab1, err);
            if (!rc)
                rc = cuda_params_push(be, inv_freq, (size_t)(half + 1) * 4, &dfreq, err);
            if (!rc)
                rc = cuda_params_push(be, toks, (size_t)spans[i].len * sizeof *toks, &dt1, err);
            if (rc)
                break;
            int64_t s0 = spans[i].start;
            float *qs = (float *)q->data + s0 * heads * head_dim;
            rope_append_kernel<<<spans[i].len, 128, 0, im->stream>>>(
                qs, (const float *)k->data + s0 * kv_heads * head_dim,
                (const float *)v->data + s0 * kv_heads * head_dim, (const tok_info *)dt1,
                (float *const *const *)dtab1, (const float *)dfreq, heads, kv_heads, head_dim,
                rotary_dim, pt);
            dim3 g1((unsigned)spans[i].len, (unsigned)heads, (unsigned)splits);
            paged_attention_kernel<<<g1, 32 * ATT_WARPS, 0, im->stream>>>(
                part, qs, (const tok_info *)dt1, (float *const *const *)dtab1, heads, kv_heads,
                head_dim, pt, chunk, scale);
            attention_merge_kernel<<<dim3((unsigned)spans[i].len, (unsigned)heads), 128, 0,
                                     im->stream>>>((float *)o->data + s0 * heads * head_dim, part,
                                                   heads, head_dim, splits);
            cudaError_t e = cudaGetLastError();
            if (e != cudaSuccess)
                rc = mx_fail(err, MX_EDEVICE, "attention launch: %s", cudaGetErrorString(e));
        }
    } else if (!rc) {
        rope_append_kernel<<<(unsigned)T, 128, 0, im->stream>>>(
            (float *)q->data, (const float *)k->data, (const float *)v->data, (const tok_info *)dtoks,
            (float *const *const *)dtables, (const float *)dfreq, heads, kv_heads, head_dim,
            rotary_dim, pt);
        dim3 g((unsigned)T, (unsigned)heads, (unsigned)splits);
        paged_attention_kernel<<<g, 32 * ATT_WARPS, 0, im->stream>>>(
            part, (const float *)q->data, (const tok_info *)dtoks, (float *const *const *)dtables,
            heads, kv_heads, head_dim, pt, chunk, scale);
        attention_merge_kernel<<<dim3((unsigned)T, (unsigned)heads), 128, 0, im->stream>>>(
            (float *)o->data, part, heads, head_dim, splits);
        cudaError_t e = cudaGetLastError();
        if (e != cudaSuccess)
            rc = mx_fail(err, MX_EDEVICE, "attention launch: %s", cudaGetErrorString(e));
    }
    free(toks), free(tables), free(inv_freq);
    TRY(rc);
    for (int i = 0; i < n_spans; i++)
        caches[i]->len += spans[i].len;
    return 0;
}
