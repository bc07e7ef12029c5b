/* softmax_attention_cpu.c - softmax GQA attention on the CPU, spec section 4: partial NeoX
 * RoPE on q and k, a growable contiguous KV cache of post-RoPE K and V per sequence, causal
 * attention with scale 1/sqrt(head_dim) and an fp32 softmax. Parallel over (sequence, head). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cpu_backend.h"

typedef struct {
    float *k, *v; /* [capacity, kv_heads, head_dim] */
} cpu_kv;

int mx_cpu_kv_cache_init(mx_backend *be, mx_kv_cache *kv, int kv_heads, int head_dim, mx_error *err)
{
    (void)be;
    memset(kv, 0, sizeof *kv);
    cpu_kv *c = calloc(1, sizeof *c);
    if (!c)
        return mx_fail(err, MX_ENOMEM, "out of memory for a KV cache");
    kv->kv_heads = kv_heads;
    kv->head_dim = head_dim;
    kv->impl = c;
    return 0;
}

void mx_cpu_kv_cache_free(mx_backend *be, mx_kv_cache *kv)
{
    (void)be;
    if (!kv || !kv->impl)
        return;
    cpu_kv *c = kv->impl;
    free(c->k);
    free(c->v);
    free(c);
    kv->impl = NULL;
    kv->len = kv->capacity = 0;
}

/* Placeholder until the paged cache lands: records the options, the budget is not enforced. */
int mx_cpu_kv_configure(mx_backend *be, const mx_kv_options *opt, mx_error *err)
{
    mx_cpu_impl *impl = be->impl;
    if (impl->kv_caches)
        return mx_fail(err, MX_EINVAL, "kv_configure: %d KV caches exist", impl->kv_caches);
    impl->kv = *opt;
    return 0;
}

void mx_cpu_kv_usage(mx_backend *be, mx_kv_usage *out)
{
    mx_cpu_impl *impl = be->impl;
    out->dtype = impl->kv.dtype;
    out->page_tokens = MX_KV_PAGE_TOKENS;
    out->budget_bytes = impl->kv.budget_bytes;
    out->used_bytes = impl->kv_used_bytes;
}

static int kv_reserve(mx_kv_cache *kv, int64_t need, mx_error *err)
{
    if (need <= kv->capacity)
        return 0;
    int64_t cap = kv->capacity ? kv->capacity : 64;
    while (cap < need)
        cap *= 2;
    size_t row = (size_t)kv->kv_heads * kv->head_dim * sizeof(float);
    cpu_kv *c = kv->impl;
    float *k = realloc(c->k, (size_t)cap * row);
    if (!k)
        return mx_fail(err, MX_ENOMEM, "out of memory growing a KV cache to %lld tokens", (long long)cap);
    c->k = k;
    float *v = realloc(c->v, (size_t)cap * row);
    if (!v)
        return mx_fail(err, MX_ENOMEM, "out of memory growing a KV cache to %lld tokens", (long long)cap);
    c->v = v;
    kv->capacity = cap;
    return 0;
}

/* Rotates the first rotary_dim dims of each head of one row in place; dim i pairs with
 * i + rotary_dim/2. Angles are fp32 products of position and fp32 inverse frequency. */
static void rope_row(float *x, int heads, int head_dim, int rotary_dim, int64_t pos, const float *inv_freq)
{
    int half = rotary_dim / 2;
    for (int i = 0; i < half; i++) {
        float angle = (float)pos * inv_freq[i];
        float c = (float)cos((double)angle), s = (float)sin((double)angle);
        for (int h = 0; h < heads; h++) {
            float *xh = x + (size_t)h * head_dim;
            float a = xh[i], b = xh[i + half];
            xh[i] = a * c - b * s;
            xh[i + half] = b * c + a * s;
        }
    }
}

typedef struct {
    float *o;
    const float *q;
    const mx_span *spans;
    mx_kv_cache *const *caches;
    const int64_t *past;  /* tokens in each cache before this batch */
    int heads, kv_heads, d;
} attn_job;

/* Online softmax over key tiles (flash-attention style), so memory stays constant however
 * long the context is: running max m, running sum l and an unnormalised accumulator. */
#define KEY_TILE 256

static void attn_task(void *ctx, int task, int n_tasks)
{
    (void)n_tasks;
    const attn_job *j = ctx;
    int span = task / j->heads, h = task % j->heads, d = j->d;
    int group = j->heads / j->kv_heads, kvh = h / group;
    const mx_span *sp = &j->spans[span];
    const cpu_kv *c = j->caches[span]->impl;
    int64_t past = j->past[span];
    size_t kv_stride = (size_t)j->kv_heads * d, q_stride = (size_t)j->heads * d;
    float scale = 1.0f / sqrtf((float)d);
    float scores[KEY_TILE];
    for (int t = 0; t < sp->len; t++) {
        const float *q = j->q + (size_t)(sp->start + t) * q_stride + (size_t)h * d;
        float *o = j->o + (size_t)(sp->start + t) * q_stride + (size_t)h * d;
        int64_t n_keys = past + t + 1; /* causal: keys up to this query's position */
        float m = -INFINITY;
        double l = 0;
        for (int a = 0; a < d; a++)
            o[a] = 0.f;
        for (int64_t p0 = 0; p0 < n_keys; p0 += KEY_TILE) {
            int n = n_keys - p0 < KEY_TILE ? (int)(n_keys - p0) : KEY_TILE;
            float tile_max = -INFINITY;
            for (int i = 0; i < n; i++) {
                const float *k = c->k + (size_t)(p0 + i) * kv_stride + (size_t)kvh * d;
                float dot = 0.f;
                for (int a = 0; a < d; a++)
                    dot += q[a] * k[a];
                scores[i] = dot * scale;
                tile_max = scores[i] > tile_max ? scores[i] : tile_max;
            }
            float new_m = tile_max > m ? tile_max : m;
            float correction = expf(m - new_m); /* 0 on the first tile */
            l *= correction;
            for (int a = 0; a < d; a++)
                o[a] *= correction;
            for (int i = 0; i < n; i++) {
                float w = expf(scores[i] - new_m);
                const float *v = c->v + (size_t)(p0 + i) * kv_stride + (size_t)kvh * d;
                l += w;
                for (int a = 0; a < d; a++)
                    o[a] += w * v[a];
            }
            m = new_m;
        }
        float inv = (float)(1.0 / l);
        for (int a = 0; a < d; a++)
            o[a] *= inv;
    }
}

int mx_cpu_softmax_attention(mx_backend *be, mx_tensor *o, mx_tensor *q, const mx_tensor *k,
                             const mx_tensor *v, const mx_span *spans, int n_spans,
                             mx_kv_cache *const *caches, int heads, int kv_heads, int head_dim,
                             int rotary_dim, double rope_theta, mx_error *err)
{
    MX_TRY(mx_cpu_check_act(q, "attention q", (int64_t)heads * head_dim, err));
    MX_TRY(mx_cpu_check_act(k, "attention k", (int64_t)kv_heads * head_dim, err));
    MX_TRY(mx_cpu_check_act(v, "attention v", (int64_t)kv_heads * head_dim, err));
    MX_TRY(mx_cpu_check_act(o, "attention output", (int64_t)heads * head_dim, err));
    if (kv_heads < 1 || heads % kv_heads != 0 || rotary_dim % 2 || rotary_dim > head_dim)
        return mx_fail(err, MX_EINVAL, "attention: bad head layout %d/%d, rotary %d", heads, kv_heads, rotary_dim);
    float inv_freq[512];
    if (rotary_dim / 2 > 512)
        return mx_fail(err, MX_EUNSUPPORTED, "attention: rotary_dim %d over 1024", rotary_dim);
    for (int i = 0; i < rotary_dim / 2; i++)
        inv_freq[i] = 1.0f / powf((float)rope_theta, (float)(2 * i) / (float)rotary_dim);
    int64_t *past = malloc((size_t)(n_spans ? n_spans : 1) * sizeof *past);
    if (!past)
        return mx_fail(err, MX_ENOMEM, "attention: out of memory");
    size_t kv_row = (size_t)kv_heads * head_dim, q_row = (size_t)heads * head_dim;
    int rc = 0;
    for (int i = 0; i < n_spans && !rc; i++) {
        mx_kv_cache *kv = caches[i];
        const mx_span *sp = &spans[i];
        if (sp->len < 1 || sp->start < 0 || sp->start + sp->len > q->shape[0]) {
            rc = mx_fail(err, MX_EINVAL, "attention: span %d outside the batch", i);
            break;
        }
        if (kv->kv_heads != kv_heads || kv->head_dim != head_dim) {
            rc = mx_fail(err, MX_EINVAL, "attention: cache %d has a different head layout", i);
            break;
        }
        past[i] = kv->len;
        rc = kv_reserve(kv, kv->len + sp->len, err);
        if (rc)
            break;
        cpu_kv *c = kv->impl;
        for (int t = 0; t < sp->len; t++) {
            int64_t pos = kv->len + t;
            float *qr = (float *)q->data + (size_t)(sp->start + t) * q_row;
            rope_row(qr, heads, head_dim, rotary_dim, pos, inv_freq);
            float *kr = c->k + (size_t)pos * kv_row;
            memcpy(kr, (const float *)k->data + (size_t)(sp->start + t) * kv_row, kv_row * sizeof(float));
            rope_row(kr, kv_heads, head_dim, rotary_dim, pos, inv_freq);
            memcpy(c->v + (size_t)pos * kv_row, (const float *)v->data + (size_t)(sp->start + t) * kv_row,
                   kv_row * sizeof(float));
        }
        kv->len += sp->len;
    }
    if (!rc) {
        attn_job j = {o->data, q->data, spans, caches, past, heads, kv_heads, head_dim};
        mx_threadpool_run(mx_cpu_pool(be), attn_task, &j, n_spans * heads);
    }
    free(past);
    return rc;
}
