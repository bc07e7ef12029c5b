/* flash_attention_cpu.c - softmax GQA attention on the CPU (spec section 4): partial NeoX RoPE
 * on q and k, K/V appended to the paged cache (kv_pages_cpu.c), then flash attention: query
 * tiles x key tiles (one page each) with an online softmax, the query heads of a GQA group
 * sharing every K/V tile, fully masked tiles skipped, long key ranges split across threads and
 * merged exactly. This file plans and dispatches; the tile kernels are per ISA (scalar here). */
#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "attention_cpu.h"
#include "cpu_backend.h"

/* Query rows (tokens x heads of a group) per work item: 128 rows of 128 dims keep Q, the
 * scores and the accumulator (3 x 64 KiB) plus one K and V tile (2 x 32 KiB) in L2, and the
 * key tile is reused by 128 rows once it is in L1. */
#define FA_ROWS 128
/* A split-K part covers at least this many pages, so merging stays negligible. */
#define FA_MIN_PART_PAGES 8
/* Work items per thread the planner aims for when it splits keys. */
#define FA_ITEMS_PER_THREAD 4
/* Decode prefetches the K and V blocks of the (page, kv head) this many steps ahead. */
#define FA_PREFETCH_HEADS 1

/* ---------------------------------------------------------------- scalar kernels */

static void qk_scalar(const float *q, int m, int d, const float *kt, float *s)
{
    for (int i = 0; i < m; i++) {
        float acc[MX_FA_KEY_TILE] = {0};
        for (int a = 0; a < d; a++) {
            float qa = q[(size_t)i * d + a];
            const float *k = kt + (size_t)a * MX_FA_KEY_TILE;
            for (int j = 0; j < MX_FA_KEY_TILE; j++)
                acc[j] += qa * k[j];
        }
        memcpy(s + (size_t)i * MX_FA_KEY_TILE, acc, sizeof acc);
    }
}

static void softmax_scalar(float *s, int m, const int *nvalid, float *mx, float *l, float *corr)
{
    for (int i = 0; i < m; i++) {
        float *r = s + (size_t)i * MX_FA_KEY_TILE;
        int n = nvalid[i];
        if (mx_fa_row_skip(r, n, &corr[i]))
            continue;
        float rmax = r[0];
        for (int j = 1; j < n; j++)
            rmax = r[j] > rmax ? r[j] : rmax;
        float mnew = mx_fa_row_max(rmax, &mx[i], &corr[i]);
        float sum = 0;
        for (int j = 0; j < n; j++) {
            r[j] = mx_fa_exp2(r[j] - mnew);
            sum += r[j];
        }
        for (int j = n; j < MX_FA_KEY_TILE; j++)
            r[j] = 0.f;
        mx_fa_row_done(sum, mnew, corr[i], &mx[i], &l[i]);
    }
}

static void pv_scalar(float *acc, const float *corr, const float *p, int m, int nk, const float *v, int d)
{
    for (int i = 0; i < m; i++) {
        float *o = acc + (size_t)i * d;
        const float *pi = p + (size_t)i * MX_FA_KEY_TILE;
        for (int a = 0; a < d; a++)
            o[a] *= corr[i];
        for (int j = 0; j < nk; j++) {
            float w = pi[j];
            const float *vj = v + (size_t)j * d;
            for (int a = 0; a < d; a++)
                o[a] += w * vj[a];
        }
    }
}

static void decode_scalar(mx_kv_dtype t, const void *src, float scale, int n, int d, float *dst)
{
    size_t count = (size_t)n * d;
    if (t == MX_KV_F32)
        memcpy(dst, src, count * sizeof(float));
    else if (t == MX_KV_BF16)
        for (size_t e = 0; e < count; e++)
            dst[e] = mx_kv_bf16_to_f32(((const uint16_t *)src)[e]);
    else if (t == MX_KV_INT8)
        for (size_t e = 0; e < count; e++)
            dst[e] = (float)((const int8_t *)src)[e] * scale;
    else
        for (size_t e = 0; e < count; e++)
            dst[e] = mx_kv_fp8_table[((const uint8_t *)src)[e]] * scale;
}

const mx_fa_kernels mx_fa_kernels_scalar = {MX_CPU_ISA_SCALAR, qk_scalar, softmax_scalar, pv_scalar,
                                            decode_scalar, NULL, NULL};

/* ---------------------------------------------------------------- planning */

/* Queries [t0, t1) of one span against keys [k0, k1) for kv heads [kvh, kvh + nh). Its rows
 * are ordered (head, token, query head of the group). part < 0: the item sees every key its
 * rows see and writes o; otherwise it writes partial slot `part`. */
typedef struct fa_item {
    int span, kvh, nh, t0, t1;
    int64_t k0, k1;
    int part;
    double cost;
} fa_item;

/* Partial slots [first, first + n) that together form rows [t0, t1) of (span, kv heads
 * [kvh, kvh + nh)). */
typedef struct fa_merge {
    int span, kvh, nh, t0, t1, first, n;
} fa_merge;

typedef struct fa_plan {
    int n_items, n_merges, n_parts;
} fa_plan;

typedef struct fa_job {
    const mx_fa_kernels *kern;
    float *o;
    const float *q;
    const mx_span *spans;
    mx_kv_cache *const *caches;
    const int64_t *past;
    int heads, kv_heads, d, group, tile_rows;
    int amx; /* bf16 pages of prefill items take the AMX kernels */
    float qscale;
    fa_item *items;
    fa_merge *merges;
    int n_items;
    atomic_int next;
    float *partials; /* per part: m[rows], l[rows], acc[rows][d] with rows = FA_ROWS max */
    size_t part_floats;
    char *slots; /* per task: scratch below */
    size_t slot_bytes;
} fa_job;

static size_t part_floats(int max_rows, int d)
{
    return (size_t)max_rows * (2 + (size_t)d);
}

static int64_t ceil_div(int64_t a, int64_t b)
{
    return (a + b - 1) / b;
}

/* Lays out the work (items == NULL: only counts). Costs are query rows x visible keys; keys
 * of items whose cost is well above an even share are split into page-aligned parts. An item
 * covers one kv head, or every kv head when `all_heads` (decode: then a thread reads whole
 * pages in address order, K and V of every head, which the hardware prefetchers follow,
 * instead of 2 x 16 KiB pieces 256 KiB apart). */
static fa_plan plan_work(const mx_span *spans, int n_spans, mx_kv_cache *const *caches, const int64_t *past,
                         int kv_heads, int group, int tile_rows, int n_threads, int all_heads, fa_item *items,
                         fa_merge *merges)
{
    int nh = all_heads ? kv_heads : 1;
    (void)group; /* every item has the same heads per row, so costs compare without it */
    double total = 0;
    for (int s = 0; s < n_spans; s++)
        for (int t0 = 0; t0 < spans[s].len; t0 += tile_rows) {
            int t1 = t0 + tile_rows < spans[s].len ? t0 + tile_rows : spans[s].len;
            total += (double)(t1 - t0) * ((double)(past ? past[s] : caches[s]->len) + 0.5 * (t0 + t1));
        }
    total *= kv_heads;
    double target = total / ((double)n_threads * FA_ITEMS_PER_THREAD);
    fa_plan pl = {0, 0, 0};
    for (int s = 0; s < n_spans; s++) {
        int64_t p = past ? past[s] : caches[s]->len;
        for (int t0 = 0; t0 < spans[s].len; t0 += tile_rows) {
            int t1 = t0 + tile_rows < spans[s].len ? t0 + tile_rows : spans[s].len;
            int64_t visible = p + t1; /* keys the last row sees */
            double cost = (double)(t1 - t0) * ((double)p + 0.5 * (t0 + t1)) * nh;
            int64_t pages = ceil_div(visible, MX_KV_PAGE_TOKENS);
            int64_t n_parts = n_threads > 1 ? (int64_t)ceil(cost / target) : 1;
            int64_t max_parts = pages / FA_MIN_PART_PAGES;
            n_parts = n_parts > max_parts ? max_parts : n_parts;
            n_parts = n_parts < 1 ? 1 : n_parts;
            for (int h = 0; h < kv_heads; h += nh) {
                if (n_parts > 1 && merges)
                    merges[pl.n_merges] = (fa_merge){s, h, nh, t0, t1, pl.n_parts, (int)n_parts};
                for (int64_t part = 0; part < n_parts; part++) {
                    int64_t pg0 = pages * part / n_parts, pg1 = pages * (part + 1) / n_parts;
                    int64_t k0 = pg0 * MX_KV_PAGE_TOKENS, k1 = pg1 * MX_KV_PAGE_TOKENS;
                    k1 = k1 < visible ? k1 : visible;
                    if (items)
                        items[pl.n_items] = (fa_item){s, h, nh, t0, t1, k0, k1,
                                                      n_parts > 1 ? pl.n_parts + (int)part : -1, cost / (double)n_parts};
                    pl.n_items++;
                }
                if (n_parts > 1) {
                    pl.n_merges++;
                    pl.n_parts += (int)n_parts;
                }
            }
        }
    }
    return pl;
}

static int by_cost_desc(const void *a, const void *b)
{
    double ca = ((const fa_item *)a)->cost, cb = ((const fa_item *)b)->cost;
    return ca < cb ? 1 : ca > cb ? -1 : 0;
}

/* ---------------------------------------------------------------- per-task scratch */

typedef struct fa_scratch {
    float *q, *s, *acc, *m, *l, *corr, *kt, *vbuf;
    int *nvalid;
    uint16_t *qb, *pb, *kpack, *vpack; /* AMX: bf16 q and p, repacked K and V blocks */
} fa_scratch;

/* Rows rounded up to whole 16-row AMX tiles (q, s and acc hold that many). */
static int pad16(int rows)
{
    return (rows + 15) & ~15;
}

static size_t align64(size_t b)
{
    return (b + 63) & ~(size_t)63;
}

/* Carves one task's scratch (mem == NULL: returns the bytes it needs). */
static size_t carve(char *mem, int max_rows, int d, fa_scratch *sc)
{
    size_t off = 0, T = MX_FA_KEY_TILE;
    max_rows = pad16(max_rows);
#define CARVE(field, type, count)                                   \
    do {                                                            \
        if (mem)                                                    \
            sc->field = (type *)(mem + off);                        \
        off += align64((size_t)(count) * sizeof(type));             \
    } while (0)
    CARVE(q, float, (size_t)max_rows * d);
    CARVE(s, float, (size_t)max_rows * T);
    CARVE(acc, float, (size_t)max_rows * d);
    CARVE(m, float, max_rows);
    CARVE(l, float, max_rows);
    CARVE(corr, float, max_rows);
    CARVE(nvalid, int, max_rows);
    CARVE(kt, float, (size_t)d * T);
    CARVE(vbuf, float, (size_t)d * T);
    CARVE(qb, uint16_t, (size_t)2 * max_rows * d); /* hi and lo parts */
    CARVE(pb, uint16_t, (size_t)2 * max_rows * T);
    CARVE(kpack, uint16_t, (size_t)d * T);
    CARVE(vpack, uint16_t, (size_t)d * T);
#undef CARVE
    return off;
}

/* ---------------------------------------------------------------- one work item */

/* Row i of an item (rows ordered head, token, group member): its token and query head. */
static void item_row(int kvh, int t0, int M, int G, int i, int *t, int *h)
{
    *t = t0 + i % M / G;
    *h = (kvh + i / M) * G + i % M % G;
}

static void run_item(const fa_job *j, const fa_item *it, fa_scratch *sc)
{
    const mx_span *sp = &j->spans[it->span];
    const mx_kv_cache *kv = j->caches[it->span];
    int d = j->d, G = j->group, M = (it->t1 - it->t0) * G, R = M * it->nh;
    int64_t past = j->past[it->span];
    size_t q_stride = (size_t)j->heads * d;
    for (int i = 0; i < R; i++) {
        int t, h;
        item_row(it->kvh, it->t0, M, G, i, &t, &h);
        const float *src = j->q + (size_t)(sp->start + t) * q_stride + (size_t)h * d;
        float *dst = sc->q + (size_t)i * d;
        for (int a = 0; a < d; a++)
            dst[a] = src[a] * j->qscale;
    }
    for (int i = 0; i < R; i++) {
        sc->m[i] = -INFINITY;
        sc->l[i] = 0.f;
    }
    memset(sc->acc, 0, (size_t)R * d * sizeof(float));
    int64_t last = past + it->t1; /* keys visible to the last row */
    int64_t k_end = it->k1 < last ? it->k1 : last;
    /* Decode (few rows per kv head): the kernels read the page's blocks as stored, so each
     * byte of K and V is read once and never copied; the block read two blocks later (the
     * next head's, or the next page's first: pages are slab pieces, not contiguous) is
     * prefetched meanwhile. */
    int direct = M <= MX_FA_DECODE_ROWS && j->kern->qk_page && j->kern->pv_page;
    /* Prefill rows on bf16 pages: AMX tiles (one kv head per item there; see plan_work) */
    int amx = j->amx && !direct && M > MX_FA_DECODE_ROWS && it->nh == 1 && kv->dtype == MX_KV_BF16;
    int mp = pad16(M);
    if (amx) {
        mx_fa_amx_q(sc->q, M, mp, d, sc->qb);
        memset(sc->acc + (size_t)M * d, 0, (size_t)(mp - M) * d * sizeof(float));
    }
    for (int64_t kb = it->k0; kb < k_end; kb += MX_FA_KEY_TILE) {
        int nk = k_end - kb < MX_FA_KEY_TILE ? (int)(k_end - kb) : MX_FA_KEY_TILE;
        const void *page = mx_kv_page(kv, kb / MX_KV_PAGE_TOKENS);
        for (int i = 0; i < M; i++) {
            int64_t n = past + it->t0 + i / G - kb + 1;
            sc->nvalid[i] = n < 0 ? 0 : n > nk ? nk : (int)n;
        }
        for (int hh = 0; hh < it->nh; hh++) {
            int h = it->kvh + hh;
            const void *kp = mx_kv_page_k(kv, page, h), *vp = mx_kv_page_v(kv, page, h);
            float ks = mx_kv_page_k_scale(kv, page, h), vs = mx_kv_page_v_scale(kv, page, h);
            float *q = sc->q + (size_t)hh * M * d, *acc = sc->acc + (size_t)hh * M * d;
            float *m = sc->m + hh * M, *l = sc->l + hh * M;
            if (direct) {
                const void *pk = NULL, *pv = NULL;
                int ahead = hh + FA_PREFETCH_HEADS;
                int64_t pb = kb + (int64_t)(ahead / it->nh) * MX_FA_KEY_TILE;
                if (pb < k_end) {
                    const void *pp = mx_kv_page(kv, pb / MX_KV_PAGE_TOKENS);
                    pk = mx_kv_page_k(kv, pp, it->kvh + ahead % it->nh);
                    pv = mx_kv_page_v(kv, pp, it->kvh + ahead % it->nh);
                }
                j->kern->qk_page(kv->dtype, kp, ks, pk, q, M, d, sc->s);
                j->kern->softmax(sc->s, M, sc->nvalid, m, l, sc->corr);
                j->kern->pv_page(kv->dtype, vp, vs, pv, acc, sc->corr, sc->s, M, nk, d);
                continue;
            }
            if (amx) {
                mx_fa_amx_qk(sc->qb, mp, d, kp, sc->kpack, sc->s);
                j->kern->softmax(sc->s, M, sc->nvalid, m, l, sc->corr);
                mx_fa_amx_pv(acc, sc->corr, sc->s, M, mp, nk, vp, d, sc->pb, sc->vpack);
                continue;
            }
            /* K blocks are stored transposed: the key tile is the block itself (f32) or its decoding */
            const float *kt = kp;
            if (kv->dtype != MX_KV_F32) {
                j->kern->decode(kv->dtype, kp, ks, d, MX_FA_KEY_TILE, sc->kt);
                kt = sc->kt;
            }
            const float *vf = vp;
            if (kv->dtype != MX_KV_F32) {
                j->kern->decode(kv->dtype, vp, vs, nk, d, sc->vbuf);
                vf = sc->vbuf;
            }
            j->kern->qk(q, M, d, kt, sc->s);
            j->kern->softmax(sc->s, M, sc->nvalid, m, l, sc->corr);
            j->kern->pv(acc, sc->corr, sc->s, M, nk, vf, d);
        }
    }
    if (it->part < 0) {
        for (int i = 0; i < R; i++) {
            int t, h;
            item_row(it->kvh, it->t0, M, G, i, &t, &h);
            float *o = j->o + (size_t)(sp->start + t) * q_stride + (size_t)h * d;
            float inv = 1.f / sc->l[i];
            for (int a = 0; a < d; a++)
                o[a] = sc->acc[(size_t)i * d + a] * inv;
        }
    } else {
        float *p = j->partials + (size_t)it->part * j->part_floats;
        memcpy(p, sc->m, (size_t)R * sizeof(float));
        memcpy(p + R, sc->l, (size_t)R * sizeof(float));
        memcpy(p + 2 * R, sc->acc, (size_t)R * d * sizeof(float));
    }
}

static void attn_task(void *ctx, int task, int n_tasks)
{
    (void)n_tasks;
    fa_job *j = ctx;
    fa_scratch sc;
    carve(j->slots + (size_t)task * j->slot_bytes, j->tile_rows * j->group, j->d, &sc);
    if (j->amx)
        mx_fa_amx_begin(); /* tile configuration is per thread */
    for (;;) {
        int i = atomic_fetch_add_explicit(&j->next, 1, memory_order_relaxed);
        if (i >= j->n_items)
            break;
        run_item(j, &j->items[i], &sc);
    }
    if (j->amx)
        mx_fa_amx_end();
}

/* Combines the parts of one split item exactly: rescale each to the common max, then divide
 * by the summed weights. */
static void merge_parts(const fa_job *j, const fa_merge *mg)
{
    int d = j->d, G = j->group, R = (mg->t1 - mg->t0) * G * mg->nh;
    size_t q_stride = (size_t)j->heads * d;
    const mx_span *sp = &j->spans[mg->span];
    for (int i = 0; i < R; i++) {
        float mmax = -INFINITY;
        for (int p = 0; p < mg->n; p++) {
            float mp = j->partials[(size_t)(mg->first + p) * j->part_floats + i];
            mmax = mp > mmax ? mp : mmax;
        }
        int t, h;
        item_row(mg->kvh, mg->t0, (mg->t1 - mg->t0) * G, G, i, &t, &h);
        float *o = j->o + (size_t)(sp->start + t) * q_stride + (size_t)h * d;
        float l = 0;
        for (int a = 0; a < d; a++)
            o[a] = 0.f;
        for (int p = 0; p < mg->n; p++) {
            const float *part = j->partials + (size_t)(mg->first + p) * j->part_floats;
            if (part[i] == -INFINITY)
                continue; /* this part held no key the row sees */
            float w = mx_fa_exp2(part[i] - mmax);
            l += w * part[R + i];
            const float *acc = part + 2 * R + (size_t)i * d;
            for (int a = 0; a < d; a++)
                o[a] += w * acc[a];
        }
        float inv = 1.f / l;
        for (int a = 0; a < d; a++)
            o[a] *= inv;
    }
}

/* ---------------------------------------------------------------- RoPE and append */

/* Rotates the first rotary_dim dims of each head of one row in place; dim i pairs with
 * i + rotary_dim/2. cs holds cos then sin of the row's angles. */
static void rope_row(float *x, int heads, int head_dim, int half, const float *cs)
{
    for (int h = 0; h < heads; h++) {
        float *xh = x + (size_t)h * head_dim;
        for (int i = 0; i < half; i++) {
            float a = xh[i], b = xh[i + half], c = cs[i], s = cs[half + i];
            xh[i] = a * c - b * s;
            xh[i + half] = b * c + a * s;
        }
    }
}

/* Angles are fp32 products of position and fp32 inverse frequency (the reference's rounding). */
static void rope_angles(int64_t pos, int half, const float *inv_freq, float *cs)
{
    for (int i = 0; i < half; i++) {
        float angle = (float)pos * inv_freq[i];
        cs[i] = (float)cos((double)angle);
        cs[half + i] = (float)sin((double)angle);
    }
}

int mx_fa_bf16dot_usable(void)
{
    return mx_cpu_isa_supported(MX_CPU_ISA_AVX512) && __builtin_cpu_supports("avx512bf16");
}

static const mx_fa_kernels *kernels_for(mx_cpu_isa isa, int d, int bf16dot)
{
    if (isa == MX_CPU_ISA_AVX512 && d % 16 == 0)
        return bf16dot ? &mx_fa_kernels_avx512bf16 : &mx_fa_kernels_avx512;
    if (isa >= MX_CPU_ISA_AVX2 && d % 8 == 0)
        return &mx_fa_kernels_avx2;
    return &mx_fa_kernels_scalar;
}

int mx_cpu_softmax_attention_path(mx_backend *be, mx_cpu_isa isa, int flags, mx_tensor *o, mx_tensor *q,
                                  const mx_tensor *k, const mx_tensor *v, const mx_span *spans, int n_spans,
                                  mx_kv_cache *const *caches, int heads, int kv_heads, int head_dim,
                                  int rotary_dim, double rope_theta, mx_error *err)
{
    MX_TRY(mx_cpu_check_act(q, "attention q", (int64_t)heads * head_dim, err));
    MX_TRY(mx_cpu_check_act(k, "attention k", (int64_t)kv_heads * head_dim, err));
    MX_TRY(mx_cpu_check_act(v, "attention v", (int64_t)kv_heads * head_dim, err));
    MX_TRY(mx_cpu_check_act(o, "attention output", (int64_t)heads * head_dim, err));
    if (kv_heads < 1 || heads % kv_heads != 0 || rotary_dim % 2 || rotary_dim > head_dim || head_dim < 1)
        return mx_fail(err, MX_EINVAL, "attention: bad head layout %d/%d, rotary %d", heads, kv_heads, rotary_dim);
    if (!mx_cpu_isa_supported(isa))
        return mx_fail(err, MX_EUNSUPPORTED, "attention: this CPU cannot run %s kernels", mx_cpu_isa_name(isa));
    int amx = flags & MX_FA_PATH_AMX, bf16dot = flags & MX_FA_PATH_BF16DOT;
    if (amx && !mx_cpu_amx_usable())
        return mx_fail(err, MX_EUNSUPPORTED, "attention: this CPU (or OS) cannot run AMX kernels");
    if (bf16dot && !mx_fa_bf16dot_usable())
        return mx_fail(err, MX_EUNSUPPORTED, "attention: this CPU cannot run AVX512-BF16 kernels");
    if (rotary_dim / 2 > 512)
        return mx_fail(err, MX_EUNSUPPORTED, "attention: rotary_dim %d over 1024", rotary_dim);
    if (n_spans < 1)
        return 0;
    for (int i = 0; i < n_spans; i++) {
        const mx_span *sp = &spans[i];
        if (sp->len < 1 || sp->start < 0 || sp->start + sp->len > q->shape[0] || sp->start + sp->len > k->shape[0] ||
            sp->start + sp->len > v->shape[0] || sp->start + sp->len > o->shape[0])
            return mx_fail(err, MX_EINVAL, "attention: span %d outside the batch", i);
        if (!caches[i] || !caches[i]->impl || caches[i]->kv_heads != kv_heads || caches[i]->head_dim != head_dim)
            return mx_fail(err, MX_EINVAL, "attention: cache %d has a different head layout", i);
    }
    mx_threadpool *pool = mx_cpu_pool(be);
    int n_threads = mx_threadpool_size(pool), group = heads / kv_heads;
    int tile_rows = group >= FA_ROWS ? 1 : FA_ROWS / group, max_rows = tile_rows * group;
    const mx_fa_kernels *kern = kernels_for(isa, head_dim, bf16dot);
    int longest = 0;
    for (int i = 0; i < n_spans; i++)
        longest = spans[i].len > longest ? spans[i].len : longest;
    int decode_rows = (longest < tile_rows ? longest : tile_rows) * group;
    int all_heads = kern->qk_page && decode_rows <= MX_FA_DECODE_ROWS && decode_rows * kv_heads <= max_rows;
    fa_plan pl =
        plan_work(spans, n_spans, caches, NULL, kv_heads, group, tile_rows, n_threads, all_heads, NULL, NULL);

    /* one scratch area the pool keeps between calls: no allocation per call */
    size_t kv_row = (size_t)kv_heads * head_dim, q_row = (size_t)heads * head_dim;
    size_t pf = part_floats(max_rows, head_dim);
    size_t slot_bytes = carve(NULL, max_rows, head_dim, NULL);
    size_t k_tmp = (size_t)MX_KV_PAGE_TOKENS * kv_row * sizeof(float);
    slot_bytes = slot_bytes > k_tmp ? slot_bytes : align64(k_tmp);
    size_t off_past = 0;
    size_t off_add = off_past + align64((size_t)n_spans * sizeof(int64_t));
    size_t off_items = off_add + align64((size_t)n_spans * sizeof(int64_t));
    size_t off_merges = off_items + align64((size_t)pl.n_items * sizeof(fa_item));
    size_t off_parts = off_merges + align64((size_t)pl.n_merges * sizeof(fa_merge));
    size_t off_slots = off_parts + align64((size_t)pl.n_parts * pf * sizeof(float));
    size_t total = off_slots + (size_t)n_threads * slot_bytes;
    char *mem = mx_threadpool_scratch(pool, total);
    if (!mem)
        return mx_fail(err, MX_ENOMEM, "attention: out of memory for %zu bytes of scratch", total);
    int64_t *past = (int64_t *)(mem + off_past), *add = (int64_t *)(mem + off_add);
    for (int i = 0; i < n_spans; i++) {
        past[i] = caches[i]->len;
        add[i] = spans[i].len;
    }
    /* all pages first: on failure no cache (and not q) has changed */
    MX_TRY(mx_kv_reserve(((mx_cpu_impl *)be->impl)->kv_pool, caches, add, n_spans, err));

    int half = rotary_dim / 2;
    float inv_freq[512], cs[1024];
    for (int i = 0; i < half; i++)
        inv_freq[i] = 1.0f / powf((float)rope_theta, (float)(2 * i) / (float)rotary_dim);
    float *ktmp = (float *)(mem + off_slots);
    for (int s = 0; s < n_spans; s++) {
        const mx_span *sp = &spans[s];
        mx_kv_cache *kv = caches[s];
        for (int t0 = 0; t0 < sp->len;) {
            int64_t pos0 = past[s] + t0;
            int n = MX_KV_PAGE_TOKENS - (int)(pos0 % MX_KV_PAGE_TOKENS);
            n = n < sp->len - t0 ? n : sp->len - t0;
            for (int t = 0; t < n; t++) {
                size_t row = (size_t)sp->start + t0 + t;
                rope_angles(pos0 + t, half, inv_freq, cs);
                rope_row((float *)q->data + row * q_row, heads, head_dim, half, cs);
                memcpy(ktmp + (size_t)t * kv_row, (const float *)k->data + row * kv_row, kv_row * sizeof(float));
                rope_row(ktmp + (size_t)t * kv_row, kv_heads, head_dim, half, cs);
            }
            mx_kv_write_page(kv, pos0, n, ktmp, (const float *)v->data + ((size_t)sp->start + t0) * kv_row, kv_row);
            t0 += n;
        }
        kv->len += sp->len;
    }

    fa_job *j = &(fa_job){0};
    j->kern = kern;
    j->o = o->data;
    j->q = q->data;
    j->spans = spans;
    j->caches = caches;
    j->past = past;
    j->heads = heads;
    j->kv_heads = kv_heads;
    j->d = head_dim;
    j->group = group;
    j->tile_rows = tile_rows;
    j->amx = amx && isa == MX_CPU_ISA_AVX512 && head_dim % 32 == 0 && kern->isa == MX_CPU_ISA_AVX512;
    if (j->amx) { /* only when some bf16 cache gets prefill rows: tile state costs a context switch */
        int any = 0;
        for (int i = 0; i < n_spans; i++)
            any |= caches[i]->dtype == MX_KV_BF16 && spans[i].len * group > MX_FA_DECODE_ROWS;
        j->amx = any;
    }
    j->qscale = (float)(1.4426950408889634 / sqrt((double)head_dim)); /* log2(e)/sqrt(d): exp2 below */
    j->items = (fa_item *)(mem + off_items);
    j->merges = (fa_merge *)(mem + off_merges);
    j->partials = (float *)(mem + off_parts);
    j->part_floats = pf;
    j->slots = mem + off_slots;
    j->slot_bytes = slot_bytes;
    fa_plan again =
        plan_work(spans, n_spans, caches, past, kv_heads, group, tile_rows, n_threads, all_heads, j->items, j->merges);
    j->n_items = again.n_items;
    atomic_init(&j->next, 0);
    /* longest items first, so the triangle's long rows do not finish last */
    qsort(j->items, (size_t)j->n_items, sizeof *j->items, by_cost_desc);
    int n_tasks = n_threads < j->n_items ? n_threads : j->n_items;
    if (n_tasks > 1)
        mx_threadpool_run(pool, attn_task, j, n_tasks);
    else
        attn_task(j, 0, 1);
    for (int i = 0; i < again.n_merges; i++)
        merge_parts(j, &j->merges[i]);
    return 0;
}

int mx_cpu_softmax_attention_isa(mx_backend *be, mx_cpu_isa isa, mx_tensor *o, mx_tensor *q,
                                 const mx_tensor *k, const mx_tensor *v, const mx_span *spans, int n_spans,
                                 mx_kv_cache *const *caches, int heads, int kv_heads, int head_dim,
                                 int rotary_dim, double rope_theta, mx_error *err)
{
    return mx_cpu_softmax_attention_path(be, isa, 0, o, q, k, v, spans, n_spans, caches, heads, kv_heads, head_dim,
                                         rotary_dim, rope_theta, err);
}

/* The AMX path where the CPU has it: the check is an idempotent syscall, small next to a
 * prefill and skipped for decode-only calls. Not MX_FA_PATH_BF16DOT: its bf16 p moved the kv
 * tier's tiny/p600_s4 from max_rel 5.9e-4 to 0.051 (a router near-tie crossed, as in
 * tiny/p5_s12), for 1.2-1.3x less CPU time per long-context decode step; callers opt in. */
int mx_cpu_softmax_attention(mx_backend *be, mx_tensor *o, mx_tensor *q, const mx_tensor *k,
                             const mx_tensor *v, const mx_span *spans, int n_spans,
                             mx_kv_cache *const *caches, int heads, int kv_heads, int head_dim,
                             int rotary_dim, double rope_theta, mx_error *err)
{
    mx_cpu_isa isa = mx_cpu_best_isa();
    int prefill = 0;
    for (int i = 0; i < n_spans; i++)
        prefill |= spans[i].len * (heads / (kv_heads > 0 ? kv_heads : 1)) > MX_FA_DECODE_ROWS;
    int flags = prefill && isa == MX_CPU_ISA_AVX512 && mx_cpu_amx_usable() ? MX_FA_PATH_AMX : 0;
    return mx_cpu_softmax_attention_path(be, isa, flags, o, q, k, v, spans, n_spans, caches, heads, kv_heads,
                                         head_dim, rotary_dim, rope_theta, err);
}

const char *mx_cpu_attention_path(void)
{
    mx_cpu_isa isa = mx_cpu_best_isa();
    return isa == MX_CPU_ISA_AVX512 && mx_cpu_amx_usable() ? "amx" : mx_cpu_isa_name(isa);
}
