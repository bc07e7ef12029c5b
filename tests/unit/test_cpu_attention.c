/* test_cpu_attention.c - the CPU softmax attention (flash kernels over the paged KV cache)
 * against a double-precision reference computed here from the formulas (NeoX RoPE on q and k
 * with fp32 angles, causal softmax, scale 1/sqrt(head_dim)): prefill of odd lengths up to 64K,
 * GQA groups 1-8, head_dim 32/64/128, chunked prefill on a cache, decode, split-K decode over a
 * long cache, decode steps of 1-16 rows per kv head in every KV dtype, ragged batches, every
 * ISA path this CPU has and every KV dtype; then the budget:
 * MX_ENOMEM leaves every cache unchanged, freeing returns bytes, configure only without caches. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "core/backend.h"
#include "core/cpu/attention_cpu.h"
#include "core/cpu/cpu_features.h"

#define ROPE_THETA 10000000.0

/* Under AddressSanitizer (-O1, every load checked) the kernels and the reference run ~10x
 * slower: the long and scalar cases shrink so the file stays under a minute there. */
#ifdef __SANITIZE_ADDRESS__
#define SLOW_BUILD 1
#else
#define SLOW_BUILD 0
#endif

static uint64_t rng_next(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

static float rng_uniform(uint64_t *s) /* in [-1, 1) */
{
    return (float)((rng_next(s) >> 40) * (1.0 / 8388608.0) * 2.0 - 1.0);
}

/* One sequence: raw (pre-RoPE) q/k/v for all its tokens, the reference's rotated K in double,
 * and its cache. */
typedef struct seq {
    int total, done;
    float *q, *k, *v;   /* [total][heads*d], [total][kv_heads*d] */
    double *kr;          /* rotated k, filled lazily up to `rotated` */
    int rotated;
    mx_kv_cache kv;
} seq;

typedef struct shape {
    int heads, kv_heads, d, rotary;
} shape;

static void seq_make(seq *s, const shape *sh, int total, uint64_t seed, float q_gain, int growing)
{
    memset(s, 0, sizeof *s);
    s->total = total;
    size_t qn = (size_t)total * sh->heads * sh->d, kn = (size_t)total * sh->kv_heads * sh->d;
    s->q = malloc(qn * sizeof(float));
    s->k = malloc(kn * sizeof(float));
    s->v = malloc(kn * sizeof(float));
    s->kr = malloc(kn * sizeof(double));
    assert_non_null(s->q);
    assert_non_null(s->k);
    assert_non_null(s->v);
    assert_non_null(s->kr);
    uint64_t r = seed * 0x9e3779b97f4a7c15ull + 1;
    for (size_t i = 0; i < qn; i++)
        s->q[i] = q_gain * rng_uniform(&r);
    size_t row = (size_t)sh->kv_heads * sh->d;
    for (size_t i = 0; i < kn; i++) {
        /* growing: later tokens larger, so 8-bit pages must rescale what they hold */
        float g = growing ? 1.f + (float)(i / row % 64) * 0.25f : 1.f;
        s->k[i] = g * rng_uniform(&r);
        s->v[i] = g * rng_uniform(&r);
    }
}

static void seq_free(seq *s)
{
    free(s->q);
    free(s->k);
    free(s->v);
    free(s->kr);
}

/* The spec's RoPE: inverse frequencies and angles in fp32, the rotation in double. */
static void ref_rope(const float *x, double *out, int heads, const shape *sh, int64_t pos)
{
    int half = sh->rotary / 2;
    for (int h = 0; h < heads; h++) {
        const float *xh = x + (size_t)h * sh->d;
        double *oh = out + (size_t)h * sh->d;
        for (int a = 0; a < sh->d; a++)
            oh[a] = xh[a];
        for (int i = 0; i < half; i++) {
            float inv = 1.0f / powf((float)ROPE_THETA, (float)(2 * i) / (float)sh->rotary);
            float ang = (float)pos * inv;
            double c = cos((double)ang), sn = sin((double)ang);
            oh[i] = xh[i] * c - xh[i + half] * sn;
            oh[i + half] = xh[i + half] * c + xh[i] * sn;
        }
    }
}

/* Reference output of query head h at position p: o[d]. */
static void ref_row(seq *s, const shape *sh, int p, int h, double *o)
{
    size_t kv_row = (size_t)sh->kv_heads * sh->d;
    for (; s->rotated <= p; s->rotated++)
        ref_rope(s->k + s->rotated * kv_row, s->kr + s->rotated * kv_row, sh->kv_heads, sh, s->rotated);
    double q[512];
    ref_rope(s->q + (size_t)p * sh->heads * sh->d + (size_t)h * sh->d, q, 1, sh, p);
    int kvh = h / (sh->heads / sh->kv_heads);
    double scale = 1.0 / sqrt((double)sh->d), m = -INFINITY;
    double *sc = malloc((size_t)(p + 1) * sizeof(double));
    assert_non_null(sc);
    for (int j = 0; j <= p; j++) {
        const double *k = s->kr + (size_t)j * kv_row + (size_t)kvh * sh->d;
        double dot = 0;
        for (int a = 0; a < sh->d; a++)
            dot += q[a] * k[a];
        sc[j] = dot * scale;
        m = sc[j] > m ? sc[j] : m;
    }
    double l = 0;
    for (int a = 0; a < sh->d; a++)
        o[a] = 0;
    for (int j = 0; j <= p; j++) {
        double w = exp(sc[j] - m);
        l += w;
        const float *v = s->v + (size_t)j * kv_row + (size_t)kvh * sh->d;
        for (int a = 0; a < sh->d; a++)
            o[a] += w * v[a];
    }
    for (int a = 0; a < sh->d; a++)
        o[a] /= l;
    free(sc);
}

/* Rows of a chunk of `len` to check: all when short, else the first, the last and ~30 spread. */
static int check_row(int t, int len)
{
    if (len <= 40)
        return 1;
    int step = len / 30;
    return t == 0 || t == len - 1 || t % step == step / 2;
}

/* run_batch's isa for the AVX-512 kernels with the AMX tile kernels on bf16 prefill rows, and
 * with VDPBF16PS for P.V of decode rows on bf16 pages. */
#define ISA_AMX ((mx_cpu_isa)MX_CPU_ISA_COUNT)
#define ISA_BF16DOT ((mx_cpu_isa)(MX_CPU_ISA_COUNT + 1))

/* One batched call: sequence i gets lens[i] more tokens. Returns the largest |ours - ref| over
 * the checked rows; rc is the op's return code. */
static double run_batch(mx_backend *be, mx_cpu_isa isa, const shape *sh, seq **ss, const int *lens, int n,
                        int *rc_out, mx_error *err)
{
    int T = 0;
    for (int i = 0; i < n; i++)
        T += lens[i];
    mx_tensor q, k, v, o;
    int64_t qs[2] = {T, (int64_t)sh->heads * sh->d}, ks[2] = {T, (int64_t)sh->kv_heads * sh->d};
    assert_int_equal(be->alloc(be, &q, MX_DTYPE_F32, 2, qs, err), 0);
    assert_int_equal(be->alloc(be, &o, MX_DTYPE_F32, 2, qs, err), 0);
    assert_int_equal(be->alloc(be, &k, MX_DTYPE_F32, 2, ks, err), 0);
    assert_int_equal(be->alloc(be, &v, MX_DTYPE_F32, 2, ks, err), 0);
    mx_span spans[16];
    mx_kv_cache *caches[16];
    size_t qrow = (size_t)sh->heads * sh->d, krow = (size_t)sh->kv_heads * sh->d;
    for (int i = 0, start = 0; i < n; i++) {
        seq *s = ss[i];
        spans[i] = (mx_span){start, lens[i]};
        caches[i] = &s->kv;
        memcpy((float *)q.data + (size_t)start * qrow, s->q + (size_t)s->done * qrow, (size_t)lens[i] * qrow * 4);
        memcpy((float *)k.data + (size_t)start * krow, s->k + (size_t)s->done * krow, (size_t)lens[i] * krow * 4);
        memcpy((float *)v.data + (size_t)start * krow, s->v + (size_t)s->done * krow, (size_t)lens[i] * krow * 4);
        start += lens[i];
    }
    int flags = isa == ISA_AMX ? MX_FA_PATH_AMX : isa == ISA_BF16DOT ? MX_FA_PATH_BF16DOT : 0;
    int rc = mx_cpu_softmax_attention_path(be, flags ? MX_CPU_ISA_AVX512 : isa, flags, &o, &q, &k, &v, spans, n,
                                           caches, sh->heads, sh->kv_heads, sh->d, sh->rotary, ROPE_THETA, err);
    *rc_out = rc;
    double worst = 0;
    if (!rc) {
        double ref[512];
        for (int i = 0; i < n; i++) {
            seq *s = ss[i];
            for (int t = 0; t < lens[i]; t++) {
                if (!check_row(t, lens[i]))
                    continue;
                for (int h = 0; h < sh->heads; h++) {
                    ref_row(s, sh, s->done + t, h, ref);
                    const float *got = (const float *)o.data + (size_t)(spans[i].start + t) * qrow + (size_t)h * sh->d;
                    for (int a = 0; a < sh->d; a++) {
                        double dlt = fabs(got[a] - ref[a]);
                        if (!(dlt <= worst))
                            worst = dlt; /* NaN sticks */
                    }
                }
            }
            s->done += lens[i];
        }
    }
    be->free(be, &q);
    be->free(be, &o);
    be->free(be, &k);
    be->free(be, &v);
    return worst;
}

static mx_backend *make_backend(mx_kv_dtype dt, uint64_t budget)
{
    mx_backend *be = NULL;
    mx_error err = {0};
    assert_int_equal(mx_backend_cpu_create(2, &be, &err), 0);
    mx_kv_options o = {dt, budget};
    assert_int_equal(be->kv_configure(be, &o, &err), 0);
    return be;
}

/* f32 pages hold the rotated K exactly, so only fp32 arithmetic separates us from the double
 * reference: outputs are convex combinations of |v| <= 2 with O(1) weights; 2e-5 is ~100x the
 * rounding of a 64K-term softmax sum. */
#define TOL_F32 1e-4

/* Prefills one sequence of `len` tokens (q scaled by q_gain) in chunks and checks every chunk. */
static double prefill_case_gain(mx_backend *be, mx_cpu_isa isa, shape sh, int len, const int *chunks, int n_chunks,
                                int growing, float q_gain)
{
    seq s;
    mx_error err = {0};
    seq_make(&s, &sh, len, (uint64_t)len * 31 + sh.d + sh.heads, q_gain, growing);
    assert_int_equal(be->kv_cache_init(be, &s.kv, sh.kv_heads, sh.d, &err), 0);
    double worst = 0;
    seq *one = &s;
    for (int c = 0; s.done < len; c++) {
        int n = n_chunks ? chunks[c % n_chunks] : len;
        n = n < len - s.done ? n : len - s.done;
        int rc;
        double w = run_batch(be, isa, &sh, &one, &n, 1, &rc, &err);
        if (rc)
            fail_msg("attention failed: %s", err.msg);
        worst = w > worst || w != w ? w : worst;
    }
    assert_int_equal(s.kv.len, len);
    be->kv_cache_free(be, &s.kv);
    seq_free(&s);
    return worst;
}

static double prefill_case(mx_backend *be, mx_cpu_isa isa, shape sh, int len, const int *chunks, int n_chunks,
                           int growing)
{
    return prefill_case_gain(be, isa, sh, len, chunks, n_chunks, growing, 3.f);
}

static void paths_for(mx_cpu_isa isa)
{
    if (!mx_cpu_isa_supported(isa)) {
        skip();
        return;
    }
    mx_backend *be = make_backend(MX_KV_F32, 0);
    static const int lens[] = {1, 3, 63, 64, 65, 257, 1000};
    static const shape shapes[] = {{1, 1, 32, 16}, {2, 1, 64, 64}, {8, 2, 128, 64}, {8, 1, 32, 32}, {4, 1, 64, 16},
                                   {16, 2, 128, 128}, {3, 3, 64, 32}};
    for (size_t i = 0; i < sizeof lens / sizeof *lens; i++)
        for (size_t j = 0; j < sizeof shapes / sizeof *shapes; j++) {
            if (isa == MX_CPU_ISA_SCALAR && lens[i] > 257 && (j % 3 || SLOW_BUILD))
                continue; /* the scalar kernels are slow: one shape in three at 1000 */
            if (SLOW_BUILD && lens[i] > 257 && j % 2)
                continue;
            double w = prefill_case(be, isa, shapes[j], lens[i], NULL, 0, 0);
            if (!(w <= TOL_F32))
                fail_msg("%s prefill %d heads %d/%d d %d: max err %g", mx_cpu_isa_name(isa), lens[i], shapes[j].heads,
                         shapes[j].kv_heads, shapes[j].d, w);
        }
    /* chunks of odd sizes on top of the cache, then decode */
    static const int chunks[] = {37, 64, 1, 129, 500, 3, 1, 1, 1, 1};
    double w = prefill_case(be, isa, (shape){8, 2, 64, 32}, 1200, chunks, 10, 0);
    if (!(w <= TOL_F32))
        fail_msg("%s chunked prefill: max err %g", mx_cpu_isa_name(isa), w);
    static const int decode[] = {100, 1};
    w = prefill_case(be, isa, (shape){4, 1, 128, 64}, 130, decode, 2, 0);
    if (!(w <= TOL_F32))
        fail_msg("%s decode: max err %g", mx_cpu_isa_name(isa), w);
    if (isa != MX_CPU_ISA_SCALAR && !SLOW_BUILD) {
        w = prefill_case(be, isa, (shape){8, 1, 128, 64}, 4099, NULL, 0, 0);
        if (!(w <= TOL_F32))
            fail_msg("%s prefill 4099: max err %g", mx_cpu_isa_name(isa), w);
    }
    be->destroy(be);
}

static void test_paths_scalar(void **state)
{
    (void)state;
    paths_for(MX_CPU_ISA_SCALAR);
}

static void test_paths_avx2(void **state)
{
    (void)state;
    paths_for(MX_CPU_ISA_AVX2);
}

static void test_paths_avx512(void **state)
{
    (void)state;
    paths_for(MX_CPU_ISA_AVX512);
}

/* The AMX path: bf16 pages, q as two bf16 parts and p as bf16 in the tile products, fp32
 * accumulation. Bound as in test_kv_dtypes, charging e = 2^-8 to both q and k (each score moves
 * by at most delta = 2 e qmax kmax d / sqrt(d)), plus e for V and e for p: with |q| <= 1/2 that
 * is ~0.1 at d = 128, while a misplaced pair or tile gives errors of the order of |v| = 1.
 * Prompts of 17 to 4099 tokens (whole and partial 16-row tiles), GQA groups 1-8, head_dim 32 /
 * 64 / 128 and 48 (no AMX: AVX-512 kernels on the same pages), chunks on a cache and a decode
 * step (AVX-512 decode kernels) after them; f32 pages keep the fp32 kernels (fp32 bound). */
static double step_of(mx_kv_dtype dt);

static void test_paths_amx(void **state)
{
    (void)state;
    if (!mx_cpu_amx_usable()) {
        skip();
        return;
    }
    mx_backend *be = make_backend(MX_KV_BF16, 0);
    static const int lens[] = {17, 63, 64, 65, 257, 1000};
    static const shape shapes[] = {{2, 1, 64, 64},  {8, 2, 128, 64}, {8, 1, 32, 32}, {1, 1, 32, 16},
                                   {16, 2, 128, 128}, {3, 3, 64, 32}, {4, 1, 48, 48}};
    const float gain = 0.5f;
    double e = step_of(MX_KV_BF16), worst_all = 0;
    for (size_t i = 0; i < sizeof lens / sizeof *lens; i++)
        for (size_t j = 0; j < sizeof shapes / sizeof *shapes; j++) {
            if (SLOW_BUILD && lens[i] > 257)
                continue; /* the rest of the file is most of the minute under ASan */
            shape sh = shapes[j];
            double delta = 2 * e * gain * sh.d / sqrt((double)sh.d), bound = 2 * e + exp(2 * delta) - 1;
            double w = prefill_case_gain(be, ISA_AMX, sh, lens[i], NULL, 0, 0, gain);
            worst_all = w > worst_all || w != w ? w : worst_all;
            if (!(w <= bound))
                fail_msg("amx prefill %d heads %d/%d d %d: max err %g over %g", lens[i], sh.heads, sh.kv_heads, sh.d, w,
                         bound);
        }
    static const int chunks[] = {37, 64, 1, 129, 500, 3, 1, 1, 1, 1};
    shape sh = {8, 2, 64, 32};
    double delta = 2 * e * gain * sh.d / sqrt((double)sh.d), bound = 2 * e + exp(2 * delta) - 1;
    double w = prefill_case_gain(be, ISA_AMX, sh, SLOW_BUILD ? 400 : 1200, chunks, 10, 0, gain);
    if (!(w <= bound))
        fail_msg("amx chunked prefill: max err %g over %g", w, bound);
    if (!SLOW_BUILD) {
        sh = (shape){8, 1, 128, 64};
        delta = 2 * e * gain * sh.d / sqrt((double)sh.d);
        bound = 2 * e + exp(2 * delta) - 1;
        w = prefill_case_gain(be, ISA_AMX, sh, 4099, NULL, 0, 0, gain);
        if (!(w <= bound))
            fail_msg("amx prefill 4099: max err %g over %g", w, bound);
    }
    print_message("amx bf16 prefill: max err %.3g over the cases\n", worst_all);
    be->destroy(be);
    /* f32 pages under the AMX request: the fp32 kernels, so the fp32 bound holds */
    be = make_backend(MX_KV_F32, 0);
    w = prefill_case(be, ISA_AMX, (shape){8, 2, 128, 64}, SLOW_BUILD ? 300 : 1000, chunks, 10, 0);
    if (!(w <= TOL_F32))
        fail_msg("amx request on f32 pages: max err %g", w);
    be->destroy(be);
}

/* Long prompts on the fastest path (sampled rows), and split-K decode over a long cache:
 * one sequence, one kv head, so only splitting the keys keeps both threads busy. */
static void test_long_and_split_decode(void **state)
{
    (void)state;
    mx_cpu_isa isa = mx_cpu_best_isa();
    mx_backend *be = make_backend(MX_KV_F32, 0);
    double w = prefill_case(be, isa, (shape){4, 1, 64, 64}, SLOW_BUILD ? 4099 : 16411, NULL, 0, 0);
    if (!(w <= TOL_F32))
        fail_msg("prefill 16411: max err %g", w);
    w = prefill_case(be, isa, (shape){1, 1, 32, 16}, SLOW_BUILD ? 8195 : 65536, NULL, 0, 0);
    if (!(w <= TOL_F32))
        fail_msg("prefill 65536: max err %g", w);
    static const int decode[] = {SLOW_BUILD ? 6000 : 20000, 1, 1, 1};
    w = prefill_case(be, isa, (shape){8, 1, 128, 64}, decode[0] + 3, decode, 4, 0);
    if (!(w <= TOL_F32))
        fail_msg("split-K decode: max err %g", w);
    be->destroy(be);
}

/* Sequences at different positions in one call: decode next to chunks and a new prompt. */
static void test_ragged_batch(void **state)
{
    (void)state;
    for (int isa = MX_CPU_ISA_SCALAR; isa < MX_CPU_ISA_COUNT; isa++) {
        if (!mx_cpu_isa_supported((mx_cpu_isa)isa))
            continue;
        mx_backend *be = make_backend(MX_KV_F32, 0);
        shape sh = {8, 4, 64, 64};
        seq a, b, c, d;
        seq_make(&a, &sh, 400, 1, 3.f, 0);
        seq_make(&b, &sh, 100, 2, 3.f, 0);
        seq_make(&c, &sh, 1300, 3, 3.f, 0);
        seq_make(&d, &sh, 17, 4, 3.f, 0);
        seq *all[4] = {&a, &b, &c, &d};
        mx_error err = {0};
        for (int i = 0; i < 4; i++)
            assert_int_equal(be->kv_cache_init(be, &all[i]->kv, sh.kv_heads, sh.d, &err), 0);
        int rc;
        int l1[3] = {300, 5, 1000};
        double w = run_batch(be, (mx_cpu_isa)isa, &sh, all, l1, 3, &rc, &err);
        assert_int_equal(rc, 0);
        int l2[4] = {1, 70, 200, 17};
        double w2 = run_batch(be, (mx_cpu_isa)isa, &sh, all, l2, 4, &rc, &err);
        assert_int_equal(rc, 0);
        w = w2 > w ? w2 : w;
        if (!(w <= TOL_F32))
            fail_msg("%s ragged batch: max err %g", mx_cpu_isa_name((mx_cpu_isa)isa), w);
        for (int i = 0; i < 4; i++) {
            be->kv_cache_free(be, &all[i]->kv);
            seq_free(all[i]);
        }
        be->destroy(be);
    }
}

/* Per-element storage error of a dtype: bf16 (RNE, 8 significant bits) 2^-8 of the element;
 * fp8 e4m3 (4 significant bits) 2^-4 of the element (a page that rescales does so by powers of
 * two, which fp8 re-encodes exactly) plus, below 2^-6 * scale, subnormal steps of 2^-9 * scale;
 * int8, relative to the head's largest magnitude A in the page: the final scale S is at most
 * 2 A / 127 (doubling steps), and the first rounding plus every re-encoding add at most
 * S/2 (1 + 1/2 + 1/4 ...) <= S, so 2/127 of A. */
static double step_of(mx_kv_dtype dt)
{
    return dt == MX_KV_BF16 ? ldexp(1, -8) : dt == MX_KV_INT8 ? 2.0 / 127 : dt == MX_KV_FP8_E4M3 ? ldexp(1, -4) : 0;
}

/* Lossy KV dtypes against the exact reference, with a worst-case bound from the storage error
 * e (step_of): each score moves by at most delta = e * kmax * qmax * d / sqrt(d), so each
 * softmax weight by a factor within exp(+-2 delta), and o (a convex combination of v) by at
 * most vmax * (e^(2 delta) - 1); V's own rounding adds e * vmax. Inputs |q|, |k|, |v| <= 1. */
static void test_kv_dtypes(void **state)
{
    (void)state;
    static const mx_kv_dtype dts[] = {MX_KV_F32, MX_KV_BF16, MX_KV_INT8, MX_KV_FP8_E4M3};
    static const int chunks[] = {5, 30, 1, 100, 64, 7, 1, 1};
    for (int isa = MX_CPU_ISA_SCALAR; isa < MX_CPU_ISA_COUNT; isa++) {
        if (!mx_cpu_isa_supported((mx_cpu_isa)isa))
            continue;
        for (size_t i = 0; i < sizeof dts / sizeof *dts; i++) {
            mx_backend *be = make_backend(dts[i], 0);
            shape sh = {8, 2, 64, 32};
            seq s;
            mx_error err = {0};
            seq_make(&s, &sh, SLOW_BUILD ? 300 : 700, 77, 1.f, 0);
            assert_int_equal(be->kv_cache_init(be, &s.kv, sh.kv_heads, sh.d, &err), 0);
            seq *one = &s;
            double w = 0;
            for (int c = 0; s.done < s.total; c++) {
                int n = chunks[c % 8] < s.total - s.done ? chunks[c % 8] : s.total - s.done, rc;
                double wc = run_batch(be, (mx_cpu_isa)isa, &sh, &one, &n, 1, &rc, &err);
                assert_int_equal(rc, 0);
                w = wc > w || wc != wc ? wc : w;
            }
            double e = step_of(dts[i]), delta = e * sh.d / sqrt((double)sh.d);
            double bound = dts[i] == MX_KV_F32 ? TOL_F32 : e + exp(2 * delta) - 1;
            print_message("%s kv %s: max err %.3g (bound %.3g)\n", mx_cpu_isa_name((mx_cpu_isa)isa),
                          mx_kv_dtype_name(dts[i]), w, bound);
            if (!(w <= bound))
                fail_msg("%s kv %s: max err %g over %g", mx_cpu_isa_name((mx_cpu_isa)isa), mx_kv_dtype_name(dts[i]), w,
                         bound);
            be->kv_cache_free(be, &s.kv);
            mx_kv_usage u;
            be->kv_usage(be, &u);
            assert_int_equal(u.used_bytes, 0);
            seq_free(&s);
            be->destroy(be);
        }
    }
}

/* Every stored element, read back through each ISA's decode, within its dtype's storage error
 * (step_of), with values that grow within each page so 8-bit pages rescale what they hold. */
/* Decode steps of 1..16 query rows per kv head (tokens x GQA group sizes 1, 2, 4, 8: the
 * AVX-512 decode kernels read the pages as stored) on every ISA and KV dtype, head_dim 128 and
 * 48 (a column tail), over a cache long enough that the planner splits its keys across the
 * threads; bounds as in test_kv_dtypes. */
static void test_decode_rows(void **state)
{
    (void)state;
    static const mx_kv_dtype dts[] = {MX_KV_F32, MX_KV_BF16, MX_KV_INT8, MX_KV_FP8_E4M3};
    static const int groups[] = {1, 2, 4, 8};
    for (int isa = MX_CPU_ISA_SCALAR; isa < MX_CPU_ISA_COUNT; isa++) {
        if (!mx_cpu_isa_supported((mx_cpu_isa)isa))
            continue;
        for (size_t i = 0; i < sizeof dts / sizeof *dts; i++)
            for (size_t g = 0; g < sizeof groups / sizeof *groups; g++) {
                int G = groups[g], d = g == 3 ? 48 : 128;
                shape sh = {2 * G, 2, d, d / 2};
                /* a 1100-token cache (18 pages: two split-K parts), then steps of 1 .. 16 / G tokens */
                int pre = isa == MX_CPU_ISA_SCALAR || SLOW_BUILD ? 200 : 1100, steps = 16 / G, total = pre;
                for (int t = 1; t <= steps; t++)
                    total += t;
                mx_backend *be = make_backend(dts[i], 0);
                seq s;
                mx_error err = {0};
                seq_make(&s, &sh, total, 1000 + 10 * g + i, 1.f, 0);
                assert_int_equal(be->kv_cache_init(be, &s.kv, sh.kv_heads, sh.d, &err), 0);
                seq *one = &s;
                int rc;
                run_batch(be, (mx_cpu_isa)isa, &sh, &one, &pre, 1, &rc, &err);
                assert_int_equal(rc, 0);
                double w = 0;
                for (int t = 1; t <= steps; t++) {
                    double wt = run_batch(be, (mx_cpu_isa)isa, &sh, &one, &t, 1, &rc, &err);
                    assert_int_equal(rc, 0);
                    w = wt > w || wt != wt ? wt : w;
                }
                double e = step_of(dts[i]), delta = e * sh.d / sqrt((double)sh.d);
                double bound = dts[i] == MX_KV_F32 ? TOL_F32 : e + exp(2 * delta) - 1;
                if (!(w <= bound))
                    fail_msg("%s kv %s group %d d %d: decode max err %g over %g", mx_cpu_isa_name((mx_cpu_isa)isa),
                             mx_kv_dtype_name(dts[i]), G, d, w, bound);
                be->kv_cache_free(be, &s.kv);
                seq_free(&s);
                be->destroy(be);
            }
    }
}

/* One decode run of test_decode_bf16dot: a `pre`-token prompt, then steps of 1 .. steps tokens;
 * the largest error of the steps. */
static double decode_run(mx_cpu_isa isa, shape sh, int pre, int steps, uint64_t seed)
{
    int total = pre;
    for (int t = 1; t <= steps; t++)
        total += t;
    mx_backend *be = make_backend(MX_KV_BF16, 0);
    seq s;
    mx_error err = {0};
    seq_make(&s, &sh, total, seed, 1.f, 0);
    assert_int_equal(be->kv_cache_init(be, &s.kv, sh.kv_heads, sh.d, &err), 0);
    seq *one = &s;
    int rc;
    run_batch(be, mx_cpu_best_isa(), &sh, &one, &pre, 1, &rc, &err);
    assert_int_equal(rc, 0);
    double w = 0;
    for (int t = 1; t <= steps; t++) {
        double wt = run_batch(be, isa, &sh, &one, &t, 1, &rc, &err);
        if (rc)
            fail_msg("decode: %s", err.msg);
        w = wt > w || wt != wt ? wt : w;
    }
    be->kv_cache_free(be, &s.kv);
    seq_free(&s);
    be->destroy(be);
    return w;
}

/* Decode on bf16 pages with VDPBF16PS for P.V (p rounded to bf16) next to the fp32 AVX-512
 * kernels on the same pages: rounding p moves each weight by at most 2^-9 relative, so each
 * output (a convex combination of |v| <= 1 with fp32 weights) by at most 2^-9, and the largest
 * error against the reference may grow by no more than that (a misplaced key pair or column
 * would move outputs by ~|v|). Odd key counts in the last page (an odd key pairs with 0),
 * split-K parts, 1 .. 16 rows per kv head, head_dim 128 and 64; 48 takes the fp32 kernels. */
static void test_decode_bf16dot(void **state)
{
    (void)state;
    if (!mx_fa_bf16dot_usable()) {
        skip();
        return;
    }
    static const int groups[] = {1, 2, 4, 8};
    static const int dims[] = {128, 64, 48};
    for (size_t g = 0; g < sizeof groups / sizeof *groups; g++)
        for (size_t di = 0; di < sizeof dims / sizeof *dims; di++) {
            int G = groups[g], d = dims[di], steps = 16 / G, pre = SLOW_BUILD ? 301 : 1101;
            shape sh = {2 * G, 2, d, d / 2};
            double plain = decode_run(MX_CPU_ISA_AVX512, sh, pre, steps, 2000 + 10 * g + di);
            double dot = decode_run(ISA_BF16DOT, sh, pre, steps, 2000 + 10 * g + di);
            double e = step_of(MX_KV_BF16), delta = e * sh.d / sqrt((double)sh.d);
            double bound = e + exp(2 * delta) - 1;
            print_message("bf16dot group %d d %d: max err %.3g (fp32 kernels %.3g)\n", G, d, dot, plain);
            if (!(plain <= bound) || !(dot <= plain + ldexp(1, -9) + 1e-5))
                fail_msg("bf16dot group %d d %d: max err %g, fp32 kernels %g (bound %g)", G, d, dot, plain, bound);
        }
}

static void test_page_roundtrip(void **state)
{
    (void)state;
    static const mx_kv_dtype dts[] = {MX_KV_F32, MX_KV_BF16, MX_KV_INT8, MX_KV_FP8_E4M3};
    static const int chunks[] = {3, 1, 20, 7, 64, 1, 40};
    for (size_t i = 0; i < sizeof dts / sizeof *dts; i++) {
        mx_backend *be = make_backend(dts[i], 0);
        shape sh = {2, 2, 32, 32};
        seq s;
        mx_error err = {0};
        seq_make(&s, &sh, 300, 5, 1.f, 1);
        assert_int_equal(be->kv_cache_init(be, &s.kv, sh.kv_heads, sh.d, &err), 0);
        seq *one = &s;
        for (int c = 0; s.done < s.total; c++) {
            int n = chunks[c % 7] < s.total - s.done ? chunks[c % 7] : s.total - s.done, rc;
            run_batch(be, mx_cpu_best_isa(), &sh, &one, &n, 1, &rc, &err);
            assert_int_equal(rc, 0);
        }
        const mx_fa_kernels *ks[3] = {&mx_fa_kernels_scalar, &mx_fa_kernels_avx2, &mx_fa_kernels_avx512};
        size_t row = (size_t)sh.kv_heads * sh.d;
        float got[MX_KV_PAGE_TOKENS * 32];
        for (int isa = 0; isa < 3; isa++) {
            if (!mx_cpu_isa_supported((mx_cpu_isa)isa))
                continue;
            for (int64_t p = 0; p < s.total / MX_KV_PAGE_TOKENS; p++) { /* whole pages */
                const void *page = mx_kv_page(&s.kv, p);
                for (int h = 0; h < sh.kv_heads; h++)
                    for (int which = 0; which < 2; which++) {
                        const void *blk = which ? mx_kv_page_v(&s.kv, page, h) : mx_kv_page_k(&s.kv, page, h);
                        float sc = which ? mx_kv_page_v_scale(&s.kv, page, h) : mx_kv_page_k_scale(&s.kv, page, h);
                        ks[isa]->decode(dts[i], blk, sc, MX_KV_PAGE_TOKENS, sh.d, got);
                        if (!which) { /* K blocks are stored transposed: [d][MX_KV_PAGE_TOKENS] */
                            float kt[MX_KV_PAGE_TOKENS * 32];
                            memcpy(kt, got, sizeof kt);
                            for (int t = 0; t < MX_KV_PAGE_TOKENS; t++)
                                for (int a = 0; a < sh.d; a++)
                                    got[t * sh.d + a] = kt[a * MX_KV_PAGE_TOKENS + t];
                        }
                        double amax = 0, ref[MX_KV_PAGE_TOKENS * 32];
                        for (int t = 0; t < MX_KV_PAGE_TOKENS; t++) {
                            int64_t pos = p * MX_KV_PAGE_TOKENS + t;
                            if (which) {
                                for (int a = 0; a < sh.d; a++)
                                    ref[t * sh.d + a] = s.v[pos * row + (size_t)h * sh.d + a];
                            } else {
                                double tmp[64];
                                ref_rope(s.k + pos * row + (size_t)h * sh.d, tmp, 1, &sh, pos);
                                memcpy(ref + t * sh.d, tmp, (size_t)sh.d * sizeof(double));
                            }
                            for (int a = 0; a < sh.d; a++)
                                amax = fmax(amax, fabs(ref[t * sh.d + a]));
                        }
                        for (int e = 0; e < MX_KV_PAGE_TOKENS * sh.d; e++) {
                            double x = fabs(ref[e]), tol;
                            if (dts[i] == MX_KV_INT8)
                                tol = step_of(dts[i]) * amax;
                            else if (dts[i] == MX_KV_FP8_E4M3)
                                tol = step_of(dts[i]) * x + 16 * ldexp(1, -10) * 2 * amax / 448;
                            else
                                tol = step_of(dts[i]) * x + 1e-6 * amax; /* + fp32 RoPE */
                            if (!(fabs(got[e] - ref[e]) <= tol))
                                fail_msg("%s %s page %lld head %d %s elem %d: %g vs %g", mx_cpu_isa_name((mx_cpu_isa)isa),
                                         mx_kv_dtype_name(dts[i]), (long long)p, h, which ? "v" : "k", e, got[e], ref[e]);
                        }
                    }
            }
        }
        be->kv_cache_free(be, &s.kv);
        seq_free(&s);
        be->destroy(be);
    }
}

/* Element encodings against values worked out by hand. */
static void test_encodings(void **state)
{
    (void)state;
    assert_int_equal(mx_kv_f32_to_bf16(1.0f), 0x3f80);
    assert_int_equal(mx_kv_f32_to_bf16(1.00390625f), 0x3f80);  /* halfway 1 and 1+2^-7: even */
    assert_int_equal(mx_kv_f32_to_bf16(1.01171875f), 0x3f82);  /* halfway 1+2^-7 and 1+2^-6: even */
    assert_int_equal(mx_kv_f32_to_bf16(-2.0f), 0xc000);
    assert_true(mx_kv_bf16_to_f32(0x3f81) == 1.0078125f);
    /* fp8 e4m3fn: every finite value round-trips, 448 saturates, ties go to even */
    for (int b = 0; b < 256; b++) {
        float x = mx_kv_fp8_to_f32((uint8_t)b);
        if (x != x)
            continue;
        if (b == 0x80)
            continue; /* -0 encodes as -0 too, same value */
        assert_int_equal(mx_kv_f32_to_fp8(x), b);
    }
    assert_true(mx_kv_fp8_to_f32(0x7e) == 448.f);
    assert_int_equal(mx_kv_f32_to_fp8(1000.f), 0x7e);
    assert_int_equal(mx_kv_f32_to_fp8(-1e9f), 0xfe);
    assert_int_equal(mx_kv_f32_to_fp8(1.0625f), 0x38); /* halfway 1 and 1.125: 1 */
    assert_int_equal(mx_kv_f32_to_fp8(1.1875f), 0x3a); /* halfway 1.125 and 1.25: 1.25 */
    assert_int_equal(mx_kv_f32_to_fp8(0.0009765625f), 0x00); /* 2^-10: halfway 0 and 2^-9 */
    assert_int_equal(mx_kv_f32_to_fp8(0.0029296875f), 0x02); /* 1.5 * 2^-9: halfway 1 and 2 steps */
    assert_true(mx_kv_fp8_to_f32(0x01) == 0.001953125f);
    assert_true(mx_kv_fp8_to_f32(0x08) == 0.015625f);
}

/* The budget: a batch that does not fit fails with MX_ENOMEM and changes no cache; freeing
 * returns the bytes; configure only while no cache exists; usage reports a resolved budget. */
static void test_budget(void **state)
{
    (void)state;
    shape sh = {4, 2, 32, 32};
    uint64_t page = mx_kv_page_bytes(MX_KV_F32, sh.kv_heads, sh.d);
    mx_backend *be = make_backend(MX_KV_F32, 10 * page);
    mx_error err = {0};
    mx_kv_usage u;
    be->kv_usage(be, &u);
    assert_int_equal(u.budget_bytes, 10 * page);
    assert_int_equal(u.page_tokens, MX_KV_PAGE_TOKENS);
    seq a, b;
    seq_make(&a, &sh, 700, 11, 3.f, 0);
    seq_make(&b, &sh, 700, 12, 3.f, 0);
    assert_int_equal(be->kv_cache_init(be, &a.kv, sh.kv_heads, sh.d, &err), 0);
    assert_int_equal(be->kv_cache_init(be, &b.kv, sh.kv_heads, sh.d, &err), 0);
    mx_kv_options o = {MX_KV_BF16, 0};
    assert_int_equal(be->kv_configure(be, &o, &err), MX_EINVAL);
    seq *both[2] = {&a, &b};
    int rc, l1[2] = {130, 100}; /* 3 + 2 pages */
    double w = run_batch(be, mx_cpu_best_isa(), &sh, both, l1, 2, &rc, &err);
    assert_int_equal(rc, 0);
    assert_true(w <= TOL_F32);
    be->kv_usage(be, &u);
    assert_int_equal(u.used_bytes, 5 * page);
    /* a needs 3 more pages (to 6), b 4 more (to 6): 12 > 10 */
    int l2[2] = {250, 270};
    run_batch(be, mx_cpu_best_isa(), &sh, both, l2, 2, &rc, &err);
    assert_int_equal(rc, MX_ENOMEM);
    assert_true(strncmp(err.msg, "KV budget", 9) == 0);
    assert_non_null(strstr(err.msg, "bytes needed"));
    assert_int_equal(a.kv.len, 130);
    assert_int_equal(b.kv.len, 100);
    assert_int_equal(a.kv.capacity, 3 * MX_KV_PAGE_TOKENS);
    assert_int_equal(b.kv.capacity, 2 * MX_KV_PAGE_TOKENS);
    be->kv_usage(be, &u);
    assert_int_equal(u.used_bytes, 5 * page);
    /* within budget: the reference result, continuing from the unchanged caches */
    int l3[2] = {60, 190}; /* a to 190 (3 pages), b to 290 (5 pages): 8 */
    w = run_batch(be, mx_cpu_best_isa(), &sh, both, l3, 2, &rc, &err);
    assert_int_equal(rc, 0);
    if (!(w <= TOL_F32))
        fail_msg("after a refused batch: max err %g", w);
    be->kv_usage(be, &u);
    assert_int_equal(u.used_bytes, 8 * page);
    be->kv_cache_free(be, &a.kv);
    be->kv_usage(be, &u);
    assert_int_equal(u.used_bytes, 5 * page);
    be->kv_cache_free(be, &b.kv);
    be->kv_usage(be, &u);
    assert_int_equal(u.used_bytes, 0);
    assert_int_equal(be->kv_configure(be, &o, &err), 0);
    be->kv_usage(be, &u);
    assert_int_equal(u.dtype, MX_KV_BF16);
    assert_true(u.budget_bytes > 0); /* the default, resolved from MemAvailable */
    seq_free(&a);
    seq_free(&b);
    be->destroy(be);
    /* a never-configured backend reports bf16 and a resolved budget */
    mx_backend *be2 = NULL;
    assert_int_equal(mx_backend_cpu_create(1, &be2, &err), 0);
    be2->kv_usage(be2, &u);
    assert_int_equal(u.dtype, MX_KV_BF16);
    assert_true(u.budget_bytes > 0);
    be2->destroy(be2);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_encodings),
        cmocka_unit_test(test_paths_scalar),
        cmocka_unit_test(test_paths_avx2),
        cmocka_unit_test(test_paths_avx512),
        cmocka_unit_test(test_paths_amx),
        cmocka_unit_test(test_long_and_split_decode),
        cmocka_unit_test(test_ragged_batch),
        cmocka_unit_test(test_kv_dtypes),
        cmocka_unit_test(test_decode_rows),
        cmocka_unit_test(test_decode_bf16dot),
        cmocka_unit_test(test_page_roundtrip),
        cmocka_unit_test(test_budget),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
