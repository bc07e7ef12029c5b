/* kernel_check.c - runs every op of the CUDA backend and the CPU backend on the same random
 * inputs and compares the results (max abs error, error relative to the largest reference
 * value), softmax attention in every KV dtype and the KV budget, plus the CUDA extras (grouped
 * expert SwiGLU, int8 grouped expert GEMM, int8 weights through upload_weight / matmul, sliced
 * weight upload, tensor-parallel all-reduce/RMSNorm with TP=1, bf16 tensor-core mode). The CPU backend is the reference.
 * Prints one PASS/FAIL line per check and "N passed, N failed" last; skips without a GPU. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/backend.h"
#include "core/cuda/expert_int8.h"
#include "core/cuda/mx_cuda.h"
#include "core/quantize.h"

typedef struct check {
    mx_backend *cpu, *gpu;
    mx_backend *cpu32; /* CPU backend with exact f32 KV: the reference for quantized KV */
    int pass, fail;
    uint64_t rng;
} check;

typedef struct pair { /* the same activation tensor on both backends */
    mx_tensor c, g;
} pair;

typedef struct wpair { /* one BF16 (or F32) weight: host data, CPU view, GPU copy */
    void *host;
    mx_tensor h, c, g;
} wpair;

static float frand(check *k)
{
    k->rng = k->rng * 6364136223846793005ull + 1442695040888963407ull;
    return (float)((k->rng >> 40) & 0xffffff) / 8388608.0f - 1.0f;
}

static void verdict(check *k, const char *name, const float *ref, const float *got, size_t n,
                    double tol)
{
    double max_abs = 0, max_ref = 0;
    size_t worst = 0;
    int bad = 0;
    for (size_t i = 0; i < n; i++) {
        if (!isfinite(got[i]) && isfinite(ref[i]))
            bad = 1;
        double d = fabs((double)got[i] - ref[i]);
        if (d > max_abs || d != d) {
            max_abs = d;
            worst = i;
        }
        if (fabs(ref[i]) > max_ref)
            max_ref = fabs(ref[i]);
    }
    double rel = max_abs / (max_ref > 1e-30 ? max_ref : 1e-30);
    int ok = !bad && rel <= tol;
    printf("%-44s max_abs %.3e  max_rel %.3e  (tol %.0e, worst at %zu)  %s\n", name, max_abs, rel,
           tol, worst, ok ? "PASS" : "FAIL");
    ok ? k->pass++ : k->fail++;
}

static void failed(check *k, const char *name, const mx_error *err)
{
    printf("%-44s error: %s  FAIL\n", name, err->msg);
    k->fail++;
}

static int pair_new(check *k, pair *p, int64_t rows, int64_t cols, float scale, mx_error *err)
{
    int64_t shape[2] = {rows, cols};
    memset(p, 0, sizeof *p);
    if (k->cpu->alloc(k->cpu, &p->c, MX_DTYPE_F32, 2, shape, err) ||
        k->gpu->alloc(k->gpu, &p->g, MX_DTYPE_F32, 2, shape, err))
        return -1;
    float *h = p->c.data;
    for (int64_t i = 0; i < rows * cols; i++)
        h[i] = scale * frand(k);
    return k->gpu->from_host_f32(k->gpu, &p->g, h, err);
}

static void pair_free(check *k, pair *p)
{
    k->cpu->free(k->cpu, &p->c);
    k->gpu->free(k->gpu, &p->g);
}

/* Compares the GPU copy with the CPU one (and returns 0), or reports an error. */
static void pair_check(check *k, const char *name, const pair *p, double tol)
{
    mx_error err = {0};
    size_t n = (size_t)mx_tensor_numel(&p->c);
    float *got = malloc(n * sizeof *got + 4);
    if (k->gpu->to_host_f32(k->gpu, got, &p->g, &err))
        failed(k, name, &err);
    else
        verdict(k, name, p->c.data, got, n, tol);
    free(got);
}

static int wpair_new(check *k, wpair *w, mx_dtype dt, int ndim, int64_t d0, int64_t d1, float scale,
                     mx_error *err)
{
    memset(w, 0, sizeof *w);
    int64_t n = ndim == 1 ? d0 : d0 * d1;
    w->host = malloc((size_t)n * mx_dtype_size(dt));
    for (int64_t i = 0; i < n; i++) {
        float v = scale * frand(k);
        if (dt == MX_DTYPE_BF16)
            ((uint16_t *)w->host)[i] = mx_f32_to_bf16(v);
        else
            ((float *)w->host)[i] = v;
    }
    w->h = mx_tensor_2d(w->host, dt, MX_DEVICE_CPU, d0, d1);
    w->h.ndim = ndim;
    if (k->cpu->upload_weight(k->cpu, &w->c, &w->h, err))
        return -1;
    return k->gpu->upload_weight(k->gpu, &w->g, &w->h, err);
}

static void wpair_free(check *k, wpair *w)
{
    k->cpu->free_weight(k->cpu, &w->c);
    k->gpu->free_weight(k->gpu, &w->g);
    free(w->host);
}

#define OR_FAIL(name, call)                                                                        \
    do {                                                                                           \
        if ((call)) {                                                                              \
            failed(k, name, &err);                                                                 \
            goto out;                                                                              \
        }                                                                                          \
    } while (0)

static void check_dense(check *k)
{
    mx_error err = {0};
    char name[96];
    pair x = {0}, y = {0}, a = {0}, g = {0};
    wpair w = {0}, nw = {0}, wf = {0}, table = {0};
    const int Ms[] = {1, 5, 8, 33, 300};
    OR_FAIL("dense setup", wpair_new(k, &w, MX_DTYPE_BF16, 2, 384, 256, 0.1f, &err));
    for (size_t i = 0; i < sizeof Ms / sizeof Ms[0]; i++) {
        snprintf(name, sizeof name, "matmul bf16 w [384,256] M=%d", Ms[i]);
        OR_FAIL(name, pair_new(k, &x, Ms[i], 256, 1.0f, &err) || pair_new(k, &y, Ms[i], 384, 0, &err));
        OR_FAIL(name, k->cpu->matmul(k->cpu, &y.c, &x.c, &w.c, &err) ||
                          k->gpu->matmul(k->gpu, &y.g, &x.g, &w.g, &err));
        pair_check(k, name, &y, 1e-5);
        pair_free(k, &x), pair_free(k, &y);
    }
    OR_FAIL("matmul f32 w", wpair_new(k, &wf, MX_DTYPE_F32, 2, 8, 256, 0.1f, &err));
    OR_FAIL("matmul f32 w", pair_new(k, &x, 37, 256, 1.0f, &err) || pair_new(k, &y, 37, 8, 0, &err));
    OR_FAIL("matmul f32 w", k->cpu->matmul(k->cpu, &y.c, &x.c, &wf.c, &err) ||
                                k->gpu->matmul(k->gpu, &y.g, &x.g, &wf.g, &err));
    pair_check(k, "matmul f32 w [8,256] M=37 (cuBLAS, no TF32)", &y, 1e-5);
    pair_free(k, &x), pair_free(k, &y);

    OR_FAIL("rmsnorm", wpair_new(k, &nw, MX_DTYPE_BF16, 1, 256, 1, 1.0f, &err));
    OR_FAIL("rmsnorm", pair_new(k, &x, 17, 256, 2.0f, &err) || pair_new(k, &y, 17, 256, 0, &err));
    OR_FAIL("rmsnorm", k->cpu->rmsnorm(k->cpu, &y.c, &x.c, &nw.c, 1e-5f, &err) ||
                           k->gpu->rmsnorm(k->gpu, &y.g, &x.g, &nw.g, 1e-5f, &err));
    pair_check(k, "rmsnorm [17,256]", &y, 1e-5);
    OR_FAIL("rmsnorm in place", k->cpu->rmsnorm(k->cpu, &x.c, &x.c, &nw.c, 1e-6f, &err) ||
                                    k->gpu->rmsnorm(k->gpu, &x.g, &x.g, &nw.g, 1e-6f, &err));
    pair_check(k, "rmsnorm in place", &x, 1e-5);
    pair_free(k, &x), pair_free(k, &y);

    OR_FAIL("elementwise", pair_new(k, &x, 9, 300, 4.0f, &err) || pair_new(k, &a, 9, 300, 4.0f, &err) ||
                               pair_new(k, &g, 9, 300, 4.0f, &err) || pair_new(k, &y, 9, 300, 0, &err));
    OR_FAIL("residual", k->cpu->residual(k->cpu, &y.c, &x.c, 3.5565588f, &a.c, 1.0f, &err) ||
                            k->gpu->residual(k->gpu, &y.g, &x.g, 3.5565588f, &a.g, 1.0f, &err));
    pair_check(k, "residual", &y, 1e-6);
    OR_FAIL("swiglu", k->cpu->swiglu(k->cpu, &y.c, &g.c, &a.c, &err) ||
                          k->gpu->swiglu(k->gpu, &y.g, &g.g, &a.g, &err));
    pair_check(k, "swiglu", &y, 1e-6);
    OR_FAIL("sigmoid_mul", k->cpu->sigmoid_mul(k->cpu, &y.c, &g.c, &a.c, &err) ||
                               k->gpu->sigmoid_mul(k->gpu, &y.g, &g.g, &a.g, &err));
    pair_check(k, "sigmoid_mul", &y, 1e-6);
    OR_FAIL("silu", k->cpu->silu(k->cpu, &g.c, &err) || k->gpu->silu(k->gpu, &g.g, &err));
    pair_check(k, "silu (in place)", &g, 1e-6);
    pair_free(k, &x), pair_free(k, &y), pair_free(k, &a), pair_free(k, &g);

    {
        int32_t ids[7] = {0, 511, 3, 3, 200, 17, 42};
        OR_FAIL("embed", wpair_new(k, &table, MX_DTYPE_BF16, 2, 512, 128, 1.0f, &err));
        OR_FAIL("embed", pair_new(k, &y, 7, 128, 0, &err));
        OR_FAIL("embed", k->cpu->embed(k->cpu, &y.c, ids, 7, &table.c, &err) ||
                             k->gpu->embed(k->gpu, &y.g, ids, 7, &table.g, &err));
        pair_check(k, "embed", &y, 0);
        ids[2] = 512;
        int rc = k->gpu->embed(k->gpu, &y.g, ids, 7, &table.g, &err);
        printf("%-44s %s: %s\n", "embed rejects id 512 of vocab 512", rc ? "PASS" : "FAIL",
               rc ? err.msg : "accepted");
        rc ? k->pass++ : k->fail++;
        pair_free(k, &y);
    }
out:
    pair_free(k, &x), pair_free(k, &y), pair_free(k, &a), pair_free(k, &g);
    wpair_free(k, &w), wpair_free(k, &nw), wpair_free(k, &wf), wpair_free(k, &table);
}

/* Lightning: two sequences prefilled together (multi-block + partial), decode steps batched,
 * then a multi-token continuation; outputs and final states compared. The GPU's second
 * sequence is in undo mode (a spare it advances into, swapped after each op as the model
 * does), the CPU's in place. */
static void check_lightning_shape(check *k, int heads, int hd, double tol)
{
    mx_error err = {0};
    char name[96];
    mx_lightning_state sc[2] = {0}, sg[2] = {0};
    mx_lightning_state *pc[2] = {&sc[0], &sc[1]}, *pgp[2] = {&sg[0], &sg[1]};
    float decay[16];
    for (int h = 0; h < heads; h++)
        decay[h] = (float)pow(2.0, -8.0 * (h + 1) / heads) * 0.7f;
    pair qkv = {0}, o = {0};
    float *gs = NULL;
    for (int i = 0; i < 2; i++)
        OR_FAIL("lightning setup", k->cpu->lightning_state_init(k->cpu, &sc[i], heads, hd, &err) ||
                                       k->gpu->lightning_state_init(k->gpu, &sg[i], heads, hd, &err));
    OR_FAIL("lightning setup", k->gpu->alloc(k->gpu, &sg[1].spare, MX_DTYPE_F32, 3, sg[1].S.shape, &err));
    /* step 0: prefill 600 + 37; steps 1..3: one token each; step 4: 5 + 1 tokens */
    const int steps[5][2] = {{600, 37}, {1, 1}, {1, 1}, {1, 1}, {5, 1}};
    for (int s = 0; s < 5; s++) {
        int T = steps[s][0] + steps[s][1];
        mx_span spans[2] = {{0, steps[s][0]}, {steps[s][0], steps[s][1]}};
        snprintf(name, sizeof name, "lightning%s h%d d%d step %d (%d+%d tok)", tol > 1e-3 ? " bf16-tc" : "",
                 heads, hd, s, steps[s][0], steps[s][1]);
        OR_FAIL(name, pair_new(k, &qkv, T, (int64_t)heads * 3 * hd, 0.5f, &err) ||
                          pair_new(k, &o, T, (int64_t)heads * hd, 0, &err));
        /* SiLU'd inputs as the model feeds them */
        OR_FAIL(name, k->cpu->silu(k->cpu, &qkv.c, &err) || k->gpu->silu(k->gpu, &qkv.g, &err));
        OR_FAIL(name, k->cpu->lightning(k->cpu, &o.c, &qkv.c, spans, 2, pc, decay, heads, hd, &err) ||
                          k->gpu->lightning(k->gpu, &o.g, &qkv.g, spans, 2, pgp, decay, heads, hd, &err));
        mx_tensor advanced = sg[1].spare; /* undo mode: the advanced state becomes S */
        sg[1].spare = sg[1].S;
        sg[1].S = advanced;
        pair_check(k, name, &o, tol);
        pair_free(k, &qkv), pair_free(k, &o);
    }
    gs = malloc(sizeof(float) * heads * hd * hd);
    for (int i = 0; i < 2; i++) {
        snprintf(name, sizeof name, "lightning%s h%d d%d final state %d", tol > 1e-3 ? " bf16-tc" : "", heads,
                 hd, i);
        OR_FAIL(name, k->gpu->to_host_f32(k->gpu, gs, &sg[i].S, &err));
        verdict(k, name, sc[i].S.data, gs, (size_t)heads * hd * hd, tol);
    }
out:
    free(gs);
    pair_free(k, &qkv), pair_free(k, &o);
    for (int i = 0; i < 2; i++) {
        k->cpu->lightning_state_free(k->cpu, &sc[i]);
        if (sg[i].spare.data)
            k->gpu->free(k->gpu, &sg[i].spare);
        k->gpu->lightning_state_free(k->gpu, &sg[i]);
    }
}

/* Sets the KV dtype (default budget) of the CPU reference and the GPU backend; no cache may
 * exist on either. */
static int kv_set(check *k, mx_kv_dtype dt, mx_error *err)
{
    mx_kv_options opt = {dt, 0};
    return k->cpu->kv_configure(k->cpu, &opt, err) || k->gpu->kv_configure(k->gpu, &opt, err);
}

/* Like pair_new for a [rows, heads*hd] tensor whose head h is scaled by mag[h]: 8-bit pages keep
 * one scale per head, so heads of different magnitude catch a scale read from the wrong head. */
static int pair_new_heads(check *k, pair *p, int64_t rows, int heads, int hd, const float *mag,
                          mx_error *err)
{
    if (pair_new(k, p, rows, (int64_t)heads * hd, 1.0f, err))
        return -1;
    float *h = p->c.data;
    for (int64_t r = 0; r < rows; r++)
        for (int64_t c = 0; c < (int64_t)heads * hd; c++)
            h[r * heads * hd + c] *= mag[c / hd];
    return k->gpu->from_host_f32(k->gpu, &p->g, h, err);
}

/* Tolerances (max error over the largest reference value) of CUDA attention with KV dtype t.
 * same_tol: against the CPU backend with the same dtype. Both store the same bytes for the same
 * RoPE'd k (same rounding; same scale rule: amax/qmax for a page's first chunk, doubled until
 * enough when a later chunk needs more), but RoPE'd k differs between the two in the last bits
 * (cosf/sinf and inv_freq rounding, ~1e-4 relative at positions of a few thousand), which moves
 * a few elements by one step of the element type (bf16 2^-8, int8 one step of the scale, fp8 2^-3
 * relative); one such k element shifts a logit by at most step*|q|/sqrt(d), so the outputs stay
 * within the bounds below (fp8 the loosest: 3 mantissa bits). f32: summation order only.
 * f32_tol: against the CPU backend with exact f32 KV: the element type's own rounding error
 * (bf16 2^-9 relative; int8 half a step of the scale; fp8 2^-4 relative), twice where a token
 * was requantized when its page's scale grew, carried into the weighted average of V. The CPU
 * backend measured against itself on these inputs: bf16 <= 4.1e-3, int8 <= 1.2e-2,
 * fp8 <= 6.3e-2, so the bounds leave 2-3x room. */
static double same_tol(mx_kv_dtype t)
{
    return t == MX_KV_F32 ? 1e-4 : t == MX_KV_BF16 ? 2e-3 : t == MX_KV_INT8 ? 1e-2 : 5e-2;
}

static double f32_tol(mx_kv_dtype t)
{
    return t == MX_KV_F32 ? 1e-4 : t == MX_KV_BF16 ? 1e-2 : t == MX_KV_INT8 ? 3e-2 : 1.25e-1;
}

/* Softmax attention with KV dtype dt: prefill two sequences crossing page boundaries, decode
 * steps (one with k/v three times larger, so every 8-bit page-head's scale grows and its earlier
 * tokens are requantized), then a continuation; o and the RoPE'd q compared with the CPU backend
 * in the same dtype, and (8-bit and bf16 KV) o with the CPU backend in exact f32 KV. */
static void check_attention_shape(check *k, mx_kv_dtype dt, int heads, int kvh, int hd, int rot, int len0,
                                  int len1)
{
    mx_error err = {0};
    char name[128];
    const char *dn = mx_kv_dtype_name(dt);
    mx_kv_cache cc[2] = {0}, cg[2] = {0}, c32[2] = {0};
    mx_kv_cache *pc[2] = {&cc[0], &cc[1]}, *pg[2] = {&cg[0], &cg[1]}, *p32[2] = {&c32[0], &c32[1]};
    pair q = {0}, kk = {0}, v = {0}, o = {0}, q32 = {0}, o32 = {0};
    float kmag[16], vmag[16], *got = NULL;
    for (int h = 0; h < kvh && h < 16; h++) {
        kmag[h] = 1.0f + 0.5f * (float)(h % 3);
        vmag[h] = h % 2 ? 2.0f : 0.5f;
    }
    int vs_f32 = dt != MX_KV_F32;
    OR_FAIL("attention setup", kvh > 16 || kv_set(k, dt, &err));
    for (int i = 0; i < 2; i++)
        OR_FAIL("attention setup", k->cpu->kv_cache_init(k->cpu, &cc[i], kvh, hd, &err) ||
                                       k->gpu->kv_cache_init(k->gpu, &cg[i], kvh, hd, &err) ||
                                       (vs_f32 && k->cpu32->kv_cache_init(k->cpu32, &c32[i], kvh, hd, &err)));
    if (cg[0].dtype != dt) {
        printf("attention %s: CUDA cache dtype %s  FAIL\n", dn, mx_kv_dtype_name(cg[0].dtype));
        k->fail++;
    }
    /* prefill (flash path), decode, decode with larger k/v, then a 17-token continuation (flash
     * tile starting mid-sequence, mid-page) batched with a 3-token span (decode path) */
    const int steps[4][2] = {{len0, len1}, {1, 1}, {1, 1}, {17, 3}};
    const float step_mag[4] = {1.0f, 1.0f, 3.0f, 1.0f};
    for (int s = 0; s < 4; s++) {
        int T = steps[s][0] + steps[s][1];
        mx_span spans[2] = {{0, steps[s][0]}, {steps[s][0], steps[s][1]}};
        float km[16], vm[16];
        for (int h = 0; h < kvh; h++)
            km[h] = kmag[h] * step_mag[s], vm[h] = vmag[h] * step_mag[s];
        snprintf(name, sizeof name, "attention %s h%d/%d d%d r%d step %d (%d+%d)", dn, heads, kvh, hd, rot,
                 s, steps[s][0], steps[s][1]);
        OR_FAIL(name, pair_new(k, &q, T, (int64_t)heads * hd, 1.0f, &err) ||
                          pair_new_heads(k, &kk, T, kvh, hd, km, &err) ||
                          pair_new_heads(k, &v, T, kvh, hd, vm, &err) ||
                          pair_new(k, &o, T, (int64_t)heads * hd, 0, &err));
        if (vs_f32) { /* the f32 reference gets the same q (a copy: RoPE is applied in place) */
            int64_t sq[2] = {T, (int64_t)heads * hd};
            OR_FAIL(name, k->cpu32->alloc(k->cpu32, &q32.c, MX_DTYPE_F32, 2, sq, &err) ||
                              k->cpu32->alloc(k->cpu32, &o32.c, MX_DTYPE_F32, 2, sq, &err));
            memcpy(q32.c.data, q.c.data, (size_t)T * heads * hd * sizeof(float));
            OR_FAIL(name, k->cpu32->softmax_attention(k->cpu32, &o32.c, &q32.c, &kk.c, &v.c, spans, 2, p32,
                                                      heads, kvh, hd, rot, 1e7, &err));
        }
        OR_FAIL(name, k->cpu->softmax_attention(k->cpu, &o.c, &q.c, &kk.c, &v.c, spans, 2, pc, heads, kvh,
                                                hd, rot, 1e7, &err) ||
                          k->gpu->softmax_attention(k->gpu, &o.g, &q.g, &kk.g, &v.g, spans, 2, pg, heads,
                                                    kvh, hd, rot, 1e7, &err));
        pair_check(k, name, &o, same_tol(dt));
        if (vs_f32) {
            size_t n = (size_t)T * heads * hd;
            got = malloc(n * sizeof *got);
            char n2[160];
            snprintf(n2, sizeof n2, "%s vs f32 KV", name);
            if (k->gpu->to_host_f32(k->gpu, got, &o.g, &err))
                failed(k, n2, &err);
            else
                verdict(k, n2, o32.c.data, got, n, f32_tol(dt));
            free(got), got = NULL;
            k->cpu32->free(k->cpu32, &q32.c), k->cpu32->free(k->cpu32, &o32.c);
        }
        strncat(name, " q after RoPE", sizeof name - strlen(name) - 1);
        pair_check(k, name, &q, 1e-5);
        pair_free(k, &q), pair_free(k, &kk), pair_free(k, &v), pair_free(k, &o);
    }
    if (cg[0].len != cc[0].len || cg[1].len != cc[1].len) {
        printf("attention cache lengths %lld/%lld vs cpu %lld/%lld  FAIL\n", (long long)cg[0].len,
               (long long)cg[1].len, (long long)cc[0].len, (long long)cc[1].len);
        k->fail++;
    }
    {
        /* pages held: whole pages of the dtype's format for both sequences */
        mx_kv_usage u;
        k->gpu->kv_usage(k->gpu, &u);
        uint64_t want = (uint64_t)(mx_kv_pages_for_tokens(cg[0].len) + mx_kv_pages_for_tokens(cg[1].len)) *
                        mx_kv_page_bytes(dt, kvh, hd);
        int ok = u.used_bytes == want && u.dtype == dt && u.page_tokens == MX_KV_PAGE_TOKENS;
        snprintf(name, sizeof name, "attention %s KV usage", dn);
        printf("%-44s used %llu bytes, expected %llu  %s\n", name, (unsigned long long)u.used_bytes,
               (unsigned long long)want, ok ? "PASS" : "FAIL");
        ok ? k->pass++ : k->fail++;
    }
out:
    free(got);
    pair_free(k, &q), pair_free(k, &kk), pair_free(k, &v), pair_free(k, &o);
    if (k->cpu32)
        k->cpu32->free(k->cpu32, &q32.c), k->cpu32->free(k->cpu32, &o32.c);
    for (int i = 0; i < 2; i++) {
        k->cpu->kv_cache_free(k->cpu, &cc[i]);
        k->gpu->kv_cache_free(k->gpu, &cg[i]);
        if (vs_f32)
            k->cpu32->kv_cache_free(k->cpu32, &c32[i]);
    }
}

/* The KV budget: a call that needs more pages than the budget has left fails with MX_ENOMEM
 * ("KV budget ...") and leaves both caches and the bytes in use as they were (the next calls
 * match the CPU backend, which never saw the failed call); a batch that ends exactly at the
 * budget succeeds; kv_configure is refused while caches exist; freeing returns every byte. */
static void check_kv_budget(check *k, mx_kv_dtype dt)
{
    mx_error err = {0};
    char name[112];
    enum { H = 4, KVH = 2, D = 32, ROT = 16 };
    const uint64_t page = mx_kv_page_bytes(dt, KVH, D);
    const char *dn = mx_kv_dtype_name(dt);
    mx_kv_cache cc[2] = {0}, cg[2] = {0};
    mx_kv_cache *pc[2] = {&cc[0], &cc[1]}, *pg[2] = {&cg[0], &cg[1]};
    pair q = {0}, kk = {0}, v = {0}, o = {0};
    mx_kv_options small = {dt, 4 * page}, ref = {dt, 0};
    mx_kv_usage u;
    OR_FAIL("kv budget setup", k->gpu->kv_configure(k->gpu, &small, &err) ||
                                   k->cpu->kv_configure(k->cpu, &ref, &err));
    k->gpu->kv_usage(k->gpu, &u);
    snprintf(name, sizeof name, "kv budget %s: usage after configure", dn);
    {
        int ok = u.budget_bytes == 4 * page && u.used_bytes == 0 && u.dtype == dt;
        printf("%-44s budget %llu used %llu  %s\n", name, (unsigned long long)u.budget_bytes,
               (unsigned long long)u.used_bytes, ok ? "PASS" : "FAIL");
        ok ? k->pass++ : k->fail++;
    }
    for (int i = 0; i < 2; i++)
        OR_FAIL("kv budget setup", k->cpu->kv_cache_init(k->cpu, &cc[i], KVH, D, &err) ||
                                       k->gpu->kv_cache_init(k->gpu, &cg[i], KVH, D, &err));
    {
        int rc = k->gpu->kv_configure(k->gpu, &ref, &err);
        snprintf(name, sizeof name, "kv budget %s: configure refused with caches", dn);
        printf("%-44s %s\n", name, rc == MX_EINVAL ? "PASS" : "FAIL");
        rc == MX_EINVAL ? k->pass++ : k->fail++;
    }
    /* steps: {tokens of seq 0, seq 1, expect failure}; pages after: 2+1, fail (needs 2, 1 left),
     * 2+1 (decode within the pages), 3+1 = the whole budget */
    const int steps[4][3] = {{100, 60, 0}, {30, 10, 1}, {1, 1, 0}, {28, 1, 0}};
    for (int s = 0; s < 4; s++) {
        int T = steps[s][0] + steps[s][1];
        mx_span spans[2] = {{0, steps[s][0]}, {steps[s][0], steps[s][1]}};
        snprintf(name, sizeof name, "kv budget %s step %d (%d+%d)%s", dn, s, steps[s][0], steps[s][1],
                 steps[s][2] ? " refused" : "");
        OR_FAIL(name, pair_new(k, &q, T, H * D, 1.0f, &err) || pair_new(k, &kk, T, KVH * D, 1.0f, &err) ||
                          pair_new(k, &v, T, KVH * D, 1.0f, &err) || pair_new(k, &o, T, H * D, 0, &err));
        if (steps[s][2]) {
            mx_kv_usage before, after;
            int64_t l0 = cg[0].len, l1 = cg[1].len;
            k->gpu->kv_usage(k->gpu, &before);
            int rc = k->gpu->softmax_attention(k->gpu, &o.g, &q.g, &kk.g, &v.g, spans, 2, pg, H, KVH, D, ROT,
                                               1e7, &err);
            k->gpu->kv_usage(k->gpu, &after);
            int ok = rc == MX_ENOMEM && strncmp(err.msg, "KV budget", 9) == 0 && cg[0].len == l0 &&
                     cg[1].len == l1 && after.used_bytes == before.used_bytes;
            printf("%-44s rc %d, lens %lld/%lld, used %llu -> %llu: %s  %s\n", name, rc, (long long)cg[0].len,
                   (long long)cg[1].len, (unsigned long long)before.used_bytes,
                   (unsigned long long)after.used_bytes, rc ? err.msg : "accepted", ok ? "PASS" : "FAIL");
            ok ? k->pass++ : k->fail++;
        } else {
            OR_FAIL(name, k->cpu->softmax_attention(k->cpu, &o.c, &q.c, &kk.c, &v.c, spans, 2, pc, H, KVH, D,
                                                    ROT, 1e7, &err) ||
                              k->gpu->softmax_attention(k->gpu, &o.g, &q.g, &kk.g, &v.g, spans, 2, pg, H, KVH,
                                                        D, ROT, 1e7, &err));
            pair_check(k, name, &o, same_tol(dt));
        }
        pair_free(k, &q), pair_free(k, &kk), pair_free(k, &v), pair_free(k, &o);
    }
    k->gpu->kv_usage(k->gpu, &u);
    snprintf(name, sizeof name, "kv budget %s: whole budget in use", dn);
    printf("%-44s used %llu of %llu  %s\n", name, (unsigned long long)u.used_bytes,
           (unsigned long long)u.budget_bytes, u.used_bytes == 4 * page ? "PASS" : "FAIL");
    u.used_bytes == 4 * page ? k->pass++ : k->fail++;
    k->gpu->kv_cache_free(k->gpu, &cg[0]);
    k->gpu->kv_usage(k->gpu, &u);
    snprintf(name, sizeof name, "kv budget %s: free returns pages", dn);
    printf("%-44s used %llu after freeing 3 pages  %s\n", name, (unsigned long long)u.used_bytes,
           u.used_bytes == page ? "PASS" : "FAIL");
    u.used_bytes == page ? k->pass++ : k->fail++;
out:
    pair_free(k, &q), pair_free(k, &kk), pair_free(k, &v), pair_free(k, &o);
    for (int i = 0; i < 2; i++) {
        k->cpu->kv_cache_free(k->cpu, &cc[i]);
        k->gpu->kv_cache_free(k->gpu, &cg[i]);
    }
    k->gpu->kv_usage(k->gpu, &u);
    snprintf(name, sizeof name, "kv budget %s: all bytes back", dn);
    printf("%-44s used %llu  %s\n", name, (unsigned long long)u.used_bytes, u.used_bytes == 0 ? "PASS" : "FAIL");
    u.used_bytes == 0 ? k->pass++ : k->fail++;
    kv_set(k, MX_KV_BF16, &err);
}

static void check_moe(check *k)
{
    mx_error err = {0};
    pair x = {0}, y = {0}, out = {0};
    wpair gate = {0};
    enum { T = 64, H = 128, E = 8, K = 2 };
    int32_t ic[T * K], ig[T * K];
    float wc[T * K], wg[T * K];
    OR_FAIL("moe_route", wpair_new(k, &gate, MX_DTYPE_F32, 2, E, H, 0.3f, &err));
    OR_FAIL("moe_route", pair_new(k, &x, T, H, 1.0f, &err));
    OR_FAIL("moe_route", k->cpu->moe_route(k->cpu, ic, wc, &x.c, &gate.c, K, &err) ||
                             k->gpu->moe_route(k->gpu, ig, wg, &x.g, &gate.g, K, &err));
    int same = memcmp(ic, ig, sizeof ic) == 0;
    printf("%-44s %s\n", "moe_route expert ids identical", same ? "PASS" : "FAIL");
    same ? k->pass++ : k->fail++;
    verdict(k, "moe_route weights", wc, wg, T * K, 1e-5);

    int32_t rows[5] = {7, 0, 63, 12, 30};
    float scale[5] = {0.5f, 1.0f, -0.25f, 2.0f, 0.125f};
    OR_FAIL("gather_rows", pair_new(k, &y, 5, H, 0, &err) || pair_new(k, &out, T, H, 1.0f, &err));
    OR_FAIL("gather_rows", k->cpu->gather_rows(k->cpu, &y.c, &x.c, rows, 5, &err) ||
                               k->gpu->gather_rows(k->gpu, &y.g, &x.g, rows, 5, &err));
    pair_check(k, "gather_rows", &y, 0);
    OR_FAIL("scatter_add_rows", k->cpu->scatter_add_rows(k->cpu, &out.c, &y.c, rows, scale, 5, &err) ||
                                    k->gpu->scatter_add_rows(k->gpu, &out.g, &y.g, rows, scale, 5, &err));
    pair_check(k, "scatter_add_rows", &out, 1e-6);
out:
    pair_free(k, &x), pair_free(k, &y), pair_free(k, &out);
    wpair_free(k, &gate);
}

/* Grouped expert SwiGLU against the CPU backend composing matmul + swiglu + matmul per group. */
static void check_grouped(check *k)
{
    mx_error err = {0};
    enum { G = 4, H = 256, I = 192 };
    const int rows[G] = {1, 3, 8, 40}; /* the last group takes the tiled (prefill) path */
    wpair w1[G] = {{0}}, w3[G] = {{0}}, w2[G] = {{0}};
    pair x = {0}, out = {0};
    mx_tensor a = {0}, b = {0};
    int T = 0;
    for (int g = 0; g < G; g++)
        T += rows[g];
    mx_cuda_expert_group groups[G];
    OR_FAIL("grouped_swiglu setup", pair_new(k, &x, T, H, 1.0f, &err) || pair_new(k, &out, T, H, 0, &err));
    int row0 = 0;
    for (int g = 0; g < G; g++) {
        OR_FAIL("grouped_swiglu setup", wpair_new(k, &w1[g], MX_DTYPE_BF16, 2, I, H, 0.1f, &err) ||
                                            wpair_new(k, &w3[g], MX_DTYPE_BF16, 2, I, H, 0.1f, &err) ||
                                            wpair_new(k, &w2[g], MX_DTYPE_BF16, 2, H, I, 0.1f, &err));
        groups[g] = (mx_cuda_expert_group){row0, rows[g], &w1[g].g, &w3[g].g, &w2[g].g};
        int64_t sa[2] = {rows[g], I};
        OR_FAIL("grouped_swiglu cpu", k->cpu->alloc(k->cpu, &a, MX_DTYPE_F32, 2, sa, &err) ||
                                          k->cpu->alloc(k->cpu, &b, MX_DTYPE_F32, 2, sa, &err));
        mx_tensor xg = mx_tensor_rows(&x.c, row0, rows[g]), og = mx_tensor_rows(&out.c, row0, rows[g]);
        OR_FAIL("grouped_swiglu cpu", k->cpu->matmul(k->cpu, &a, &xg, &w1[g].c, &err) ||
                                          k->cpu->matmul(k->cpu, &b, &xg, &w3[g].c, &err) ||
                                          k->cpu->swiglu(k->cpu, &a, &a, &b, &err) ||
                                          k->cpu->matmul(k->cpu, &og, &a, &w2[g].c, &err));
        k->cpu->free(k->cpu, &a), k->cpu->free(k->cpu, &b);
        row0 += rows[g];
    }
    OR_FAIL("grouped_swiglu", mx_cuda_grouped_swiglu(k->gpu, &out.g, &x.g, groups, G, &err));
    pair_check(k, "grouped_swiglu (1,3,8,40 rows)", &out, 1e-5);
out:
    k->cpu->free(k->cpu, &a), k->cpu->free(k->cpu, &b);
    pair_free(k, &x), pair_free(k, &out);
    for (int g = 0; g < G; g++)
        wpair_free(k, &w1[g]), wpair_free(k, &w3[g]), wpair_free(k, &w2[g]);
}

/* int8 weight-only experts: the GPU grouped int8 GEMM against the CPU backend's int8 path on
 * the same quantized weights (groups of 1, 5 and 20 rows; K a multiple of 16 and not). */
static void check_int8_experts(check *k)
{
    enum { G = 3, N = 200, T = 26 };
    const int rows[G] = {1, 5, 20};
    static const int Ks[2] = {320, 300};
    for (int ki = 0; ki < 2; ki++) {
        mx_error err = {0};
        const int K = Ks[ki];
        pair x = {0}, y = {0};
        uint16_t *wb[G] = {0};
        void *qm[G] = {0};
        mx_tensor qh[G], qd[G];
        memset(qd, 0, sizeof qd);
        mx_cuda_i8_group groups[G];
        char name[64];
        snprintf(name, sizeof name, "gemm_i8_grouped K=%d (1,5,20 rows)", K);
        OR_FAIL(name, pair_new(k, &x, T, K, 1.0f, &err) || pair_new(k, &y, T, N, 0, &err));
        int row0 = 0;
        for (int g = 0; g < G; g++) {
            wb[g] = malloc((size_t)N * K * 2);
            qm[g] = aligned_alloc(64, (size_t)mx_quantized_i8_bytes(N, K));
            if (!wb[g] || !qm[g]) {
                mx_fail(&err, MX_ENOMEM, "out of memory");
                failed(k, name, &err);
                goto out;
            }
            for (int64_t i = 0; i < (int64_t)N * K; i++)
                wb[g][i] = mx_f32_to_bf16(0.1f * frand(k));
            mx_tensor src = mx_tensor_2d(wb[g], MX_DTYPE_BF16, MX_DEVICE_CPU, N, K);
            OR_FAIL(name, mx_quantize_i8(&src, qm[g], 1, &qh[g], &err) ||
                              mx_cuda_upload_i8(k->gpu, &qd[g], &qh[g], &err));
            mx_tensor xg = mx_tensor_rows(&x.c, row0, rows[g]), yg = mx_tensor_rows(&y.c, row0, rows[g]);
            OR_FAIL(name, k->cpu->matmul(k->cpu, &yg, &xg, &qh[g], &err));
            groups[g] = (mx_cuda_i8_group){row0, rows[g], &qd[g]};
            row0 += rows[g];
        }
        OR_FAIL(name, mx_cuda_gemm_i8_grouped(k->gpu, &y.g, &x.g, groups, G, &err));
        pair_check(k, name, &y, 1e-5);
    out:
        pair_free(k, &x), pair_free(k, &y);
        for (int g = 0; g < G; g++) {
            mx_cuda_free_i8(k->gpu, &qd[g]);
            free(qm[g]);
            free(wb[g]);
        }
    }
}

/* int8 weights through the backend's op table, as the model uses them (attention projections
 * and experts quantized at load): be->upload_weight of an I8 tensor, be->matmul, be->free_weight,
 * against the CPU backend's matmul on the same quantized weight (decode and prefill row counts). */
static void check_int8_matmul(check *k)
{
    enum { N = 192, K = 256 };
    static const int Ms[3] = {1, 7, 40};
    mx_error err = {0};
    uint16_t *wb = malloc((size_t)N * K * 2);
    void *qm = aligned_alloc(64, (size_t)mx_quantized_i8_bytes(N, K));
    mx_tensor qh, qd = {0};
    const char *name = "matmul on an uploaded I8 weight";
    if (!wb || !qm) {
        mx_fail(&err, MX_ENOMEM, "out of memory");
        failed(k, name, &err);
        goto out;
    }
    for (int64_t i = 0; i < (int64_t)N * K; i++)
        wb[i] = mx_f32_to_bf16(0.1f * frand(k));
    mx_tensor src = mx_tensor_2d(wb, MX_DTYPE_BF16, MX_DEVICE_CPU, N, K);
    OR_FAIL(name, mx_quantize_i8(&src, qm, 1, &qh, &err) || k->gpu->upload_weight(k->gpu, &qd, &qh, &err));
    if (qd.dtype != MX_DTYPE_I8 || qd.device != MX_DEVICE_CUDA || !qd.scale) {
        mx_fail(&err, MX_EINVAL, "upload_weight of an I8 tensor gave dtype %s, %s scales",
                mx_dtype_name(qd.dtype), qd.scale ? "with" : "without");
        failed(k, name, &err);
        goto out;
    }
    for (int mi = 0; mi < 3; mi++) {
        char nm[64];
        snprintf(nm, sizeof nm, "matmul I8 weight M=%d", Ms[mi]);
        pair x = {0}, y = {0};
        OR_FAIL(nm, pair_new(k, &x, Ms[mi], K, 1.0f, &err) || pair_new(k, &y, Ms[mi], N, 0, &err) ||
                        k->cpu->matmul(k->cpu, &y.c, &x.c, &qh, &err) ||
                        k->gpu->matmul(k->gpu, &y.g, &x.g, &qd, &err));
        pair_check(k, nm, &y, 1e-5);
        pair_free(k, &x), pair_free(k, &y);
    }
out:
    if (qd.data)
        k->gpu->free_weight(k->gpu, &qd);
    free(qm);
    free(wb);
}

/* Row-parallel sharding: the sum of two column-slice matmuls equals the full matmul; TP=1
 * all-reduce leaves data alone; tp_rmsnorm equals rmsnorm. */
static void check_tp(check *k)
{
    mx_error err = {0};
    mx_cuda_tp *tp = NULL;
    wpair w = {0}, nw = {0};
    pair x = {0}, y = {0}, x0 = {0}, x1 = {0}, y0 = {0}, y1 = {0};
    mx_tensor s0 = {0}, s1 = {0};
    float *h0 = NULL, *h1 = NULL;
    enum { M = 6, N = 64, K = 256 };
    OR_FAIL("tp setup", wpair_new(k, &w, MX_DTYPE_BF16, 2, N, K, 0.1f, &err));
    OR_FAIL("tp setup", pair_new(k, &x, M, K, 1.0f, &err) || pair_new(k, &y, M, N, 0, &err));
    OR_FAIL("tp cpu", k->cpu->matmul(k->cpu, &y.c, &x.c, &w.c, &err));
    OR_FAIL("weight slice", mx_cuda_upload_weight_slice(k->gpu, &s0, &w.h, 1, 0, K / 2, &err) ||
                                mx_cuda_upload_weight_slice(k->gpu, &s1, &w.h, 1, K / 2, K / 2, &err));
    {
        /* x split by columns on the host: x0 = x[:, :K/2], x1 = x[:, K/2:] */
        float *xh = x.c.data, *a = malloc(sizeof(float) * M * K / 2), *b = malloc(sizeof(float) * M * K / 2);
        for (int r = 0; r < M; r++) {
            memcpy(a + r * K / 2, xh + r * K, sizeof(float) * K / 2);
            memcpy(b + r * K / 2, xh + r * K + K / 2, sizeof(float) * K / 2);
        }
        int64_t sh[2] = {M, K / 2}, so[2] = {M, N};
        int rc = k->gpu->alloc(k->gpu, &x0.g, MX_DTYPE_F32, 2, sh, &err) ||
                 k->gpu->alloc(k->gpu, &x1.g, MX_DTYPE_F32, 2, sh, &err) ||
                 k->gpu->alloc(k->gpu, &y0.g, MX_DTYPE_F32, 2, so, &err) ||
                 k->gpu->alloc(k->gpu, &y1.g, MX_DTYPE_F32, 2, so, &err) ||
                 k->gpu->from_host_f32(k->gpu, &x0.g, a, &err) || k->gpu->from_host_f32(k->gpu, &x1.g, b, &err);
        free(a), free(b);
        OR_FAIL("weight slice", rc);
    }
    OR_FAIL("weight slice", k->gpu->matmul(k->gpu, &y0.g, &x0.g, &s0, &err) ||
                                k->gpu->matmul(k->gpu, &y1.g, &x1.g, &s1, &err));
    h0 = malloc(sizeof(float) * M * N), h1 = malloc(sizeof(float) * M * N);
    OR_FAIL("weight slice", k->gpu->to_host_f32(k->gpu, h0, &y0.g, &err) ||
                                k->gpu->to_host_f32(k->gpu, h1, &y1.g, &err));
    for (int i = 0; i < M * N; i++)
        h0[i] += h1[i];
    verdict(k, "column-sliced weights sum to full matmul", y.c.data, h0, M * N, 1e-5);

    if (mx_cuda_tp_create(1, NULL, NULL, &tp, &err)) {
        failed(k, "tp_create(1)", &err);
        goto out;
    }
    {
        mx_backend *tb = mx_cuda_tp_backend(tp, 0);
        mx_tensor t = {0}, t2 = {0};
        int64_t sh[2] = {M, K};
        OR_FAIL("tp rank 0", tb->alloc(tb, &t, MX_DTYPE_F32, 2, sh, &err) ||
                                 tb->alloc(tb, &t2, MX_DTYPE_F32, 2, sh, &err) ||
                                 tb->from_host_f32(tb, &t, x.c.data, &err));
        mx_tensor *bufs[1] = {&t};
        float *back = malloc(sizeof(float) * M * K);
        if (mx_cuda_tp_allreduce(tp, bufs, &err) || tb->to_host_f32(tb, back, &t, &err))
            failed(k, "tp_allreduce (TP=1)", &err);
        else
            verdict(k, "tp_allreduce (TP=1) is identity", x.c.data, back, M * K, 0);
        mx_tensor nwg = {0};
        int64_t nsh[1] = {K};
        float *nh = malloc(sizeof(float) * K);
        for (int i = 0; i < K; i++)
            nh[i] = 0.5f + 0.01f * (float)i;
        mx_tensor nhost = mx_tensor_2d(nh, MX_DTYPE_F32, MX_DEVICE_CPU, K, 1);
        nhost.ndim = 1;
        (void)nsh;
        mx_tensor nwc = {0};
        mx_tensor ref = {0};
        int64_t rsh[2] = {M, K};
        int rc = tb->upload_weight(tb, &nwg, &nhost, &err) ||
                 k->cpu->upload_weight(k->cpu, &nwc, &nhost, &err) ||
                 k->cpu->alloc(k->cpu, &ref, MX_DTYPE_F32, 2, rsh, &err) ||
                 k->cpu->rmsnorm(k->cpu, &ref, &x.c, &nwc, 1e-6f, &err);
        mx_tensor *ys[1] = {&t2};
        const mx_tensor *xs[1] = {&t}, *ws[1] = {&nwg};
        if (rc || mx_cuda_tp_rmsnorm(tp, ys, xs, ws, 1e-6f, &err) || tb->to_host_f32(tb, back, &t2, &err))
            failed(k, "tp_rmsnorm (TP=1)", &err);
        else
            verdict(k, "tp_rmsnorm (TP=1) equals rmsnorm", ref.data, back, M * K, 1e-5);
        k->cpu->free(k->cpu, &ref);
        k->cpu->free_weight(k->cpu, &nwc);
        tb->free_weight(tb, &nwg);
        tb->free(tb, &t), tb->free(tb, &t2);
        free(nh), free(back);
    }
out:
    free(h0), free(h1);
    mx_cuda_tp_destroy(tp);
    if (s0.data)
        k->gpu->free_weight(k->gpu, &s0);
    if (s1.data)
        k->gpu->free_weight(k->gpu, &s1);
    k->gpu->free(k->gpu, &x0.g), k->gpu->free(k->gpu, &x1.g);
    k->gpu->free(k->gpu, &y0.g), k->gpu->free(k->gpu, &y1.g);
    pair_free(k, &x), pair_free(k, &y);
    wpair_free(k, &w), wpair_free(k, &nw);
}

/* bf16 tensor-core mode: matmul rounds x to bf16, so compare with a bf16-sized tolerance. */
static void check_bf16_mode(check *k)
{
    mx_error err = {0};
    mx_backend *fast = NULL, *saved = k->gpu;
    mx_cuda_options opt = {0, 1, 0};
    wpair w = {0};
    pair x = {0}, y = {0};
    if (mx_backend_cuda_create_ex(&opt, &fast, &err)) {
        failed(k, "bf16 tensor-core backend", &err);
        return;
    }
    k->gpu = fast;
    OR_FAIL("matmul bf16 tc", wpair_new(k, &w, MX_DTYPE_BF16, 2, 512, 384, 0.1f, &err));
    OR_FAIL("matmul bf16 tc", pair_new(k, &x, 300, 384, 1.0f, &err) || pair_new(k, &y, 300, 512, 0, &err));
    OR_FAIL("matmul bf16 tc", k->cpu->matmul(k->cpu, &y.c, &x.c, &w.c, &err) ||
                                  fast->matmul(fast, &y.g, &x.g, &w.g, &err));
    pair_check(k, "matmul bf16 tensor cores M=300 (bf16 tol)", &y, 1e-2);
    /* tensor-core lightning prefill (head dims that are multiples of 16), bf16-sized tolerance */
    check_lightning_shape(k, 4, 32, 3e-2);
    check_lightning_shape(k, 2, 128, 3e-2);
out:
    pair_free(k, &x), pair_free(k, &y);
    wpair_free(k, &w);
    k->gpu = saved;
    fast->destroy(fast);
}

int main(void)
{
    check k = {.rng = 12345};
    mx_error err = {0};
    if (mx_backend_cuda_create(0, &k.gpu, &err)) {
        printf("SKIP: CUDA backend unavailable: %s\n", err.msg);
        printf("0 passed, 0 failed, 1 skipped\n");
        return 0;
    }
    mx_kv_options f32kv = {MX_KV_F32, 0};
    if (mx_backend_cpu_create(0, &k.cpu, &err) || mx_backend_cpu_create(0, &k.cpu32, &err) ||
        k.cpu32->kv_configure(k.cpu32, &f32kv, &err)) {
        printf("CPU backend: %s\n0 passed, 1 failed\n", err.msg);
        return 1;
    }
    check_dense(&k);
    check_lightning_shape(&k, 4, 32, 1e-4);
    check_lightning_shape(&k, 2, 128, 1e-4);
    check_lightning_shape(&k, 3, 40, 1e-4);
    {
        /* before any cache: the default dtype and a resolved (non-zero) budget */
        mx_kv_usage u;
        k.gpu->kv_usage(k.gpu, &u);
        int ok = u.dtype == MX_KV_BF16 && u.budget_bytes > 0 && u.used_bytes == 0 &&
                 u.page_tokens == MX_KV_PAGE_TOKENS;
        printf("%-44s %s, budget %llu  %s\n", "kv_usage default", mx_kv_dtype_name(u.dtype),
               (unsigned long long)u.budget_bytes, ok ? "PASS" : "FAIL");
        ok ? k.pass++ : k.fail++;
    }
    /* exact f32 KV first (the golden fp32 tier relies on it), then every other dtype; the 5000-token
     * shape decodes with the key range split over many blocks (split-K) */
    check_attention_shape(&k, MX_KV_F32, 4, 2, 32, 16, 300, 70);
    check_attention_shape(&k, MX_KV_F32, 8, 1, 128, 64, 1500, 5);
    check_attention_shape(&k, MX_KV_F32, 6, 3, 24, 24, 65, 64);
    const mx_kv_dtype dts[4] = {MX_KV_F32, MX_KV_BF16, MX_KV_FP8_E4M3, MX_KV_INT8};
    for (int i = 0; i < 4; i++) {
        if (dts[i] != MX_KV_F32)
            check_attention_shape(&k, dts[i], 4, 2, 32, 16, 300, 70);
        check_attention_shape(&k, dts[i], 8, 2, 128, 64, 5000, 3);
        check_kv_budget(&k, dts[i]);
    }
    check_moe(&k);
    check_grouped(&k);
    check_int8_experts(&k);
    check_int8_matmul(&k);
    check_tp(&k);
    check_bf16_mode(&k);
    k.cpu->destroy(k.cpu);
    k.cpu32->destroy(k.cpu32);
    k.gpu->destroy(k.gpu);
    printf("%d passed, %d failed\n", k.pass, k.fail);
    return k.fail ? 1 : 0;
}
