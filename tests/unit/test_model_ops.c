/* test_model_ops.c - the CPU backend's attention and routing ops against direct double-
 * precision evaluations of the spec's formulas (not against our own kernels): lightning
 * attention's closed form o_t = sum_{p<=t} exp(-s(t-p)) (q_t.k_p) v_p in one pass, in chunks
 * and token by token, in place and with a spare (undo mode: the op leaves S as it was and
 * writes the advanced state to the spare); softmax GQA attention with partial NeoX RoPE; the router's softmax,
 * top-k and renormalisation; ALiBi slopes for power-of-two and other head counts. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "core/backend.h"
#include "core/model.h"

static float frand(uint64_t *s)
{
    *s = *s * 6364136223846793005ull + 1442695040888963407ull;
    return (float)((*s >> 40) / (double)(1ull << 24)) * 2.f - 1.f;
}

static mx_backend *cpu(void)
{
    mx_backend *be;
    mx_error err = {0};
    if (mx_backend_cpu_create(2, &be, &err))
        fail_msg("%s", err.msg);
    return be;
}

static mx_tensor act(mx_backend *be, int64_t rows, int64_t cols)
{
    mx_tensor t;
    int64_t shape[2] = {rows, cols};
    mx_error err = {0};
    if (be->alloc(be, &t, MX_DTYPE_F32, 2, shape, &err))
        fail_msg("%s", err.msg);
    return t;
}

/* o for head h of the closed form over tokens [0, n), in double */
static void lightning_reference(const float *qkv, int n, int H, int d, const float *decay, double *o)
{
    for (int h = 0; h < H; h++)
        for (int t = 0; t < n; t++)
            for (int b = 0; b < d; b++) {
                double acc = 0;
                for (int p = 0; p <= t; p++) {
                    const float *q = qkv + (size_t)t * H * 3 * d + h * 3 * d;
                    const float *k = qkv + (size_t)p * H * 3 * d + h * 3 * d + d;
                    const float *v = k + d;
                    double dot = 0;
                    for (int a = 0; a < d; a++)
                        dot += (double)q[a] * k[a];
                    acc += exp(-(double)decay[h] * (t - p)) * dot * v[b];
                }
                o[((size_t)t * H + h) * d + b] = acc;
            }
}

static void run_lightning(mx_backend *be, const float *qkv_data, int n, int H, int d, const float *decay,
                          int chunk, bool spare, float *out)
{
    mx_lightning_state st;
    mx_error err = {0};
    assert_int_equal(be->lightning_state_init(be, &st, H, d, &err), 0);
    if (spare)
        assert_int_equal(be->alloc(be, &st.spare, MX_DTYPE_F32, st.S.ndim, st.S.shape, &err), 0);
    size_t floats = (size_t)H * d * d;
    float *before = malloc(floats * sizeof *before);
    mx_lightning_state *states[1] = {&st};
    for (int t0 = 0; t0 < n; t0 += chunk) {
        int len = n - t0 < chunk ? n - t0 : chunk;
        mx_tensor qkv = mx_tensor_2d((float *)qkv_data + (size_t)t0 * H * 3 * d, MX_DTYPE_F32, MX_DEVICE_CPU, len,
                                     (int64_t)H * 3 * d);
        mx_tensor o = mx_tensor_2d(out + (size_t)t0 * H * d, MX_DTYPE_F32, MX_DEVICE_CPU, len, (int64_t)H * d);
        mx_span span = {0, len};
        memcpy(before, st.S.data, floats * sizeof *before);
        if (be->lightning(be, &o, &qkv, &span, 1, states, decay, H, d, &err))
            fail_msg("%s", err.msg);
        if (spare) { /* S untouched; the advanced state is the spare: swap, as the model does */
            if (memcmp(before, st.S.data, floats * sizeof *before))
                fail_msg("chunk %d at token %d: the op wrote S in undo mode", chunk, t0);
            mx_tensor t = st.S;
            st.S = st.spare;
            st.spare = t;
        }
    }
    free(before);
    if (spare)
        be->free(be, &st.spare);
    be->lightning_state_free(be, &st);
}

static void lightning_matches_closed_form(void **state)
{
    (void)state;
    const int n = 600, H = 3, d = 8; /* three blocks: 256 + 256 + 88 */
    mx_backend *be = cpu();
    uint64_t seed = 1;
    float *qkv = malloc(sizeof(float) * n * H * 3 * d), *out = malloc(sizeof(float) * n * H * d);
    double *ref = malloc(sizeof(double) * n * H * d);
    for (int i = 0; i < n * H * 3 * d; i++)
        qkv[i] = frand(&seed) * 0.5f;
    float decay[3] = {0.5f, 0.05f, 0.004f};
    lightning_reference(qkv, n, H, d, decay, ref);
    int chunks[] = {n, 100, 1, 256, 257};
    for (int spare = 0; spare < 2; spare++)
        for (size_t c = 0; c < sizeof chunks / sizeof *chunks; c++) {
            run_lightning(be, qkv, n, H, d, decay, chunks[c], spare, out);
            double worst = 0, scale = 0;
            for (int i = 0; i < n * H * d; i++) {
                worst = fmax(worst, fabs(out[i] - ref[i]));
                scale = fmax(scale, fabs(ref[i]));
            }
            if (worst > 1e-5 * scale)
                fail_msg("chunk %d%s: max error %g of scale %g", chunks[c], spare ? " (spare)" : "", worst, scale);
        }
    free(qkv);
    free(out);
    free(ref);
    be->destroy(be);
}

static void rope_ref(double *x, int rotary, int64_t pos, double theta)
{
    int half = rotary / 2;
    for (int i = 0; i < half; i++) {
        float inv = 1.0f / powf((float)theta, (float)(2 * i) / (float)rotary);
        double ang = (double)((float)pos * inv);
        double a = x[i], b = x[i + half];
        x[i] = a * cos(ang) - b * sin(ang);
        x[i + half] = b * cos(ang) + a * sin(ang);
    }
}

static void softmax_attention_matches_formula(void **state)
{
    (void)state;
    const int n = 300, H = 6, KVH = 2, d = 16, rot = 8;
    const double theta = 10000.0;
    mx_backend *be = cpu();
    uint64_t seed = 3;
    mx_tensor q = act(be, n, H * d), k = act(be, n, KVH * d), v = act(be, n, KVH * d), o = act(be, n, H * d);
    float *q0 = malloc(sizeof(float) * n * H * d);
    for (int i = 0; i < n * H * d; i++)
        q0[i] = ((float *)q.data)[i] = frand(&seed);
    for (int i = 0; i < n * KVH * d; i++) {
        ((float *)k.data)[i] = frand(&seed);
        ((float *)v.data)[i] = frand(&seed);
    }
    /* prefill 250 tokens, then 50 single-token steps: positions must continue */
    mx_kv_cache kv;
    mx_error err = {0};
    mx_kv_options f32_kv = {MX_KV_F32, 0}; /* the formula is checked at fp32 precision */
    assert_int_equal(be->kv_configure(be, &f32_kv, &err), 0);
    assert_int_equal(be->kv_cache_init(be, &kv, KVH, d, &err), 0);
    mx_kv_cache *caches[1] = {&kv};
    for (int t0 = 0; t0 < n;) {
        int len = t0 == 0 ? 250 : 1;
        mx_tensor qs = mx_tensor_rows(&q, t0, len), ks = mx_tensor_rows(&k, t0, len), vs = mx_tensor_rows(&v, t0, len),
                  os = mx_tensor_rows(&o, t0, len);
        mx_span span = {0, len};
        if (be->softmax_attention(be, &os, &qs, &ks, &vs, &span, 1, caches, H, KVH, d, rot, theta, &err))
            fail_msg("%s", err.msg);
        t0 += len;
    }
    assert_int_equal(kv.len, n);
    double worst = 0;
    double *qr = malloc(sizeof(double) * d), *kr = malloc(sizeof(double) * n * d), *w = malloc(sizeof(double) * n);
    for (int h = 0; h < H; h++) {
        int kh = h / (H / KVH);
        for (int p = 0; p < n; p++) {
            for (int a = 0; a < d; a++)
                kr[p * d + a] = ((float *)k.data)[(size_t)p * KVH * d + kh * d + a];
            rope_ref(kr + p * d, rot, p, theta);
        }
        for (int t = 0; t < n; t++) {
            for (int a = 0; a < d; a++)
                qr[a] = q0[(size_t)t * H * d + h * d + a];
            rope_ref(qr, rot, t, theta);
            double mx = -INFINITY, sum = 0;
            for (int p = 0; p <= t; p++) {
                double dot = 0;
                for (int a = 0; a < d; a++)
                    dot += qr[a] * kr[p * d + a];
                w[p] = dot / sqrt((double)d);
                mx = fmax(mx, w[p]);
            }
            for (int p = 0; p <= t; p++)
                sum += (w[p] = exp(w[p] - mx));
            for (int b = 0; b < d; b++) {
                double acc = 0;
                for (int p = 0; p <= t; p++)
                    acc += w[p] / sum * ((float *)v.data)[(size_t)p * KVH * d + kh * d + b];
                worst = fmax(worst, fabs(acc - ((float *)o.data)[(size_t)t * H * d + h * d + b]));
            }
        }
    }
    if (worst > 2e-5)
        fail_msg("max error %g", worst);
    be->kv_cache_free(be, &kv);
    free(q0);
    free(qr);
    free(kr);
    free(w);
    be->free(be, &q);
    be->free(be, &k);
    be->free(be, &v);
    be->free(be, &o);
    be->destroy(be);
}

static void router_softmax_topk_renormalise(void **state)
{
    (void)state;
    mx_backend *be = cpu();
    /* one token x = e0, gate column 0 = logits: experts' logits are 1, 3, 2, 3 -> top-2 are
     * experts 1 and 3 (tie keeps the lower id first) with equal weights 0.5 each */
    mx_tensor x = act(be, 2, 4), gate = act(be, 4, 4);
    float logits[4] = {1, 3, 2, 3};
    for (int e = 0; e < 4; e++)
        ((float *)gate.data)[e * 4] = logits[e];
    ((float *)x.data)[0] = 1;
    /* second token: logits 0, ln 3 (via x = [0, 1]) and ln 1, 0: probabilities of experts
     * with logits 0, ln3, 0, 0: top-2 = expert 1 (3/6) and expert 0 (1/6) -> 0.75 / 0.25 */
    ((float *)x.data)[4 + 1] = 1;
    ((float *)gate.data)[1 * 4 + 1] = logf(3.f);
    int32_t ids[4];
    float w[4];
    mx_error err = {0};
    assert_int_equal(be->moe_route(be, ids, w, &x, &gate, 2, &err), 0);
    assert_int_equal(ids[0], 1);
    assert_int_equal(ids[1], 3);
    assert_float_equal(w[0], 0.5f, 1e-6);
    assert_float_equal(w[1], 0.5f, 1e-6);
    assert_int_equal(ids[2], 1);
    assert_int_equal(ids[3], 0);
    assert_float_equal(w[2], 0.75f, 1e-6);
    assert_float_equal(w[3], 0.25f, 1e-6);
    be->free(be, &x);
    be->free(be, &gate);
    be->destroy(be);
}

static void slopes_follow_the_alibi_rule(void **state)
{
    (void)state;
    float s[8];
    /* 8 heads: 2^(-(h+1)); layer 0 of 2 layers: factor 1 + 1e-5 */
    mx_lightning_decay(8, 0, 2, s);
    for (int h = 0; h < 8; h++)
        assert_float_equal(s[h], (float)ldexp(1.0, -(h + 1)) * (float)(1.0 + 1e-5), 1e-9);
    /* 6 heads: the 4-head slopes 2^-2, 2^-4, 2^-6, 2^-8, then every other 8-head slope: 2^-1, 2^-3 */
    double want6[6] = {0.25, 0.0625, 0.015625, 0.00390625, 0.5, 0.125};
    mx_lightning_decay(6, 0, 2, s);
    for (int h = 0; h < 6; h++)
        assert_float_equal(s[h], (float)want6[h] * (float)(1.0 + 1e-5), 1e-9);
    /* 64 heads, layer 78 of 80: s_0 = 2^(-1/8) * (1 - 78/79 + 1e-5); the spec gives lambda ~ 0.9885 */
    float s64[64];
    mx_lightning_decay(64, 78, 80, s64);
    assert_float_equal(expf(-s64[0]), 0.9885f, 1e-4);
    assert_float_equal(expf(-s64[63]), 0.99995f, 1e-5);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(lightning_matches_closed_form),
        cmocka_unit_test(softmax_attention_matches_formula),
        cmocka_unit_test(router_softmax_topk_renormalise),
        cmocka_unit_test(slopes_follow_the_alibi_rule),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
