/* test_cpu_gemm_int8.c - int8 expert weights: the quantizer against its definition computed
 * here in double (scale = max|w| / 127, round to nearest, zero rows), every int8 kernel
 * family this CPU runs (scalar, AVX2, AVX-512; streaming and packed paths forced) against a
 * double reference over the dequantized weights on odd shapes, and a real load of the tiny
 * fixture with int8 experts compared with its bf16 tensors. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "core/cpu/cpu_features.h"
#include "core/cpu/gemm.h"
#include "core/quantize.h"
#include "core/weights.h"

#define FIXTURE "../shared/golden/tiny"

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

static double bf16_value(uint16_t h)
{
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

/* Checks q/scale of one row against the definition; returns the row's scale. */
static void check_row(const double *w, int K, const int8_t *q, float scale, int row)
{
    double amax = 0;
    for (int k = 0; k < K; k++)
        amax = fmax(amax, fabs(w[k]));
    double sref = amax / 127.0;
    if (fabs((double)scale - sref) > 1e-7 * sref)
        fail_msg("row %d: scale %.9g, want max|w|/127 = %.9g", row, scale, sref);
    int hit127 = 0;
    for (int k = 0; k < K; k++) {
        if (amax == 0) {
            if (q[k] != 0)
                fail_msg("zero row %d: q[%d] = %d", row, k, q[k]);
            continue;
        }
        double t = w[k] / sref, want = nearbyint(t);
        double frac = fabs(t - trunc(t));
        /* near a tie the float reciprocal may round the other way: one step either side */
        int near_tie = fabs(frac - 0.5) < 1e-4;
        if (q[k] == -128 || (near_tie ? fabs(q[k] - want) > 1 : q[k] != want))
            fail_msg("row %d: q[%d] = %d for w/scale = %.6f", row, k, q[k], t);
        hit127 |= q[k] == 127 || q[k] == -127;
        if (fabs(q[k] * (double)scale - w[k]) > 0.5 * sref * (1 + 1e-4) + 1e-30)
            fail_msg("row %d: dequantized error above half a step at %d", row, k);
    }
    if (amax > 0 && !hit127)
        fail_msg("row %d: the largest weight does not map to +-127", row);
}

static void test_quantizer(void **state)
{
    (void)state;
    const int N = 41, K = 333;
    uint64_t s = 12345;
    uint16_t *w = malloc(sizeof *w * N * K);
    double *wd = malloc(sizeof *wd * N * K);
    for (int n = 0; n < N; n++)
        for (int k = 0; k < K; k++) {
            float f = rng_uniform(&s) * (float)(n + 1) * 0.01f;
            if (n == 5 || (n == 6 && k != 17))
                f = 0.f; /* an all-zero row; a row with one weight */
            if (n == 7)
                f = (float)((k % 255) - 127) / 127.f * 0.5f; /* exact multiples: ties at .5 */
            uint32_t u;
            memcpy(&u, &f, 4);
            w[(size_t)n * K + k] = (uint16_t)(u >> 16);
            wd[(size_t)n * K + k] = bf16_value(w[(size_t)n * K + k]);
        }
    mx_tensor src = mx_tensor_2d(w, MX_DTYPE_BF16, MX_DEVICE_CPU, N, K), q;
    void *mem = aligned_alloc(64, mx_quantized_i8_bytes(N, K));
    mx_error err = {0};
    for (int threads = 1; threads <= 3; threads += 2) {
        memset(mem, 0x55, mx_quantized_i8_bytes(N, K));
        assert_int_equal(mx_quantize_i8(&src, mem, threads, &q, &err), 0);
        assert_int_equal(q.dtype, MX_DTYPE_I8);
        assert_int_equal(q.shape[0], N);
        assert_int_equal(q.shape[1], K);
        assert_non_null(q.scale);
        for (int n = 0; n < N; n++)
            check_row(wd + (size_t)n * K, K, (const int8_t *)q.data + (size_t)n * K, q.scale[n], n);
        assert_true(q.scale[5] == 0.f);
    }
    /* Rows of a view keep their scales. */
    mx_tensor v = mx_tensor_rows(&q, 9, 3);
    assert_ptr_equal(v.scale, q.scale + 9);
    assert_ptr_equal(v.data, (int8_t *)q.data + (size_t)9 * K);
    /* Bad input: not a matrix, not a float dtype, unaligned memory. */
    mx_tensor bad = src;
    bad.dtype = MX_DTYPE_I32;
    assert_int_equal(mx_quantize_i8(&bad, mem, 1, &q, &err), MX_EINVAL);
    assert_int_equal(mx_quantize_i8(&src, (char *)mem + 1, 1, &q, &err), MX_EINVAL);
    mx_weight_format f;
    assert_int_equal(mx_weight_format_from_name("int8", &f), 0);
    assert_int_equal(f, MX_WEIGHTS_INT8);
    assert_int_equal(mx_weight_format_from_name("bf16", &f), 0);
    assert_int_equal(f, MX_WEIGHTS_AS_STORED);
    assert_int_equal(mx_weight_format_from_name("int4", &f), -1);
    free(mem);
    free(w);
    free(wd);
}

/* y from the kernel against sum_k x[m,k] * q[n,k] * scale[n] in double. */
static void check_gemm(mx_threadpool *pool, mx_cpu_isa isa, mx_gemm_i8_path path, int M, int K,
                       int N, int xpad, int ypad)
{
    uint64_t s = 0x9E3779B97F4A7C15ull ^ ((uint64_t)M << 40) ^ ((uint64_t)K << 20) ^ (uint64_t)N;
    int ldx = K + xpad, ldy = N + ypad;
    float *x = malloc(sizeof(float) * (size_t)M * ldx), *y = malloc(sizeof(float) * (size_t)M * ldy);
    int8_t *q = malloc((size_t)N * K);
    float *scale = malloc(sizeof(float) * (size_t)N);
    for (size_t i = 0; i < (size_t)M * ldx; i++)
        x[i] = rng_uniform(&s);
    for (size_t i = 0; i < (size_t)M * ldy; i++)
        y[i] = 12345.f; /* sentinel: padding must stay untouched */
    for (size_t i = 0; i < (size_t)N * K; i++)
        q[i] = (int8_t)((int)(rng_next(&s) % 255) - 127);
    for (int n = 0; n < N; n++)
        scale[n] = (n % 5 == 3) ? 0.f : (0.5f + rng_uniform(&s)) * 1e-2f;
    mx_error err = {0};
    if (mx_cpu_gemm_i8_with(pool, isa, path, y, ldy, x, ldx, M, K, q, scale, N, &err) != 0)
        fail_msg("%s path %d M=%d K=%d N=%d: %s", mx_cpu_isa_name(isa), (int)path, M, K, N, err.msg);
    for (int m = 0; m < M; m++) {
        for (int n = 0; n < N; n++) {
            double ref = 0, mag = 0;
            for (int k = 0; k < K; k++) {
                double w = (double)q[(size_t)n * K + k] * scale[n];
                ref += (double)x[(size_t)m * ldx + k] * w;
                mag += fabs((double)x[(size_t)m * ldx + k] * w);
            }
            double got = y[(size_t)m * ldy + n];
            if (!(fabs(got - ref) <= 1e-5 * mag + 1e-30))
                fail_msg("%s path %d M=%d K=%d N=%d: y[%d,%d]=%.9g want %.9g (magnitude %g)",
                         mx_cpu_isa_name(isa), (int)path, M, K, N, m, n, got, ref, mag);
        }
        for (int n = N; n < ldy; n++)
            if (y[(size_t)m * ldy + n] != 12345.f)
                fail_msg("%s: padding y[%d,%d] was overwritten", mx_cpu_isa_name(isa), m, n);
    }
    free(x);
    free(y);
    free(q);
    free(scale);
}

static void run_isa(mx_cpu_isa isa, int threads)
{
    if (!mx_cpu_isa_supported(isa))
        skip();
    mx_threadpool *pool = NULL;
    mx_error err = {0};
    assert_int_equal(mx_threadpool_create(threads, &pool, &err), 0);
    const mx_gemm_i8_path paths[] = {MX_GEMM_I8_AUTO, MX_GEMM_I8_STREAM, MX_GEMM_I8_PACKED};
    /* M 1..20: every pass size of the streaming kernel; K = 1117 and 333: not a multiple of
     * 16 or 64 (masked tails of every length class); N odd: full row groups plus remainders. */
    for (int M = 1; M <= 20; M++)
        for (size_t p = 0; p < 3; p++)
            check_gemm(pool, isa, paths[p], M, M % 2 ? 1117 : 333, 23 + 2 * (M % 3), M % 3, M % 2);
    static const int big_ms[] = {64, 100};
    for (size_t i = 0; i < 2; i++)
        for (size_t p = 0; p < 3; p++)
            check_gemm(pool, isa, paths[p], big_ms[i], 1117, 301, 1, 3);
    /* Model-sized K: whole rows for few x rows, several windows/blocks for more; tiny K. */
    check_gemm(pool, isa, MX_GEMM_I8_STREAM, 1, 9216, 19, 0, 1);
    check_gemm(pool, isa, MX_GEMM_I8_STREAM, 3, 6144, 37, 2, 0);
    check_gemm(pool, isa, MX_GEMM_I8_STREAM, 13, 6144, 17, 0, 0);
    check_gemm(pool, isa, MX_GEMM_I8_STREAM, 6, 13000, 11, 1, 0); /* equal K blocks, a tail */
    check_gemm(pool, isa, MX_GEMM_I8_STREAM, 8, 6144, 9, 0, 1);
    check_gemm(pool, isa, MX_GEMM_I8_PACKED, 17, 6144, 70, 0, 0);
    check_gemm(pool, isa, MX_GEMM_I8_AUTO, 5, 1, 9, 0, 0);
    check_gemm(pool, isa, MX_GEMM_I8_AUTO, 2, 15, 1, 1, 1);
    mx_threadpool_destroy(pool);
}

static void test_scalar(void **state) { (void)state; run_isa(MX_CPU_ISA_SCALAR, 2); }
static void test_avx2(void **state) { (void)state; run_isa(MX_CPU_ISA_AVX2, 2); }
static void test_avx512(void **state) { (void)state; run_isa(MX_CPU_ISA_AVX512, 2); }
static void test_avx512_no_pool(void **state)
{
    (void)state;
    if (!mx_cpu_isa_supported(MX_CPU_ISA_AVX512))
        skip();
    check_gemm(NULL, MX_CPU_ISA_AVX512, MX_GEMM_I8_PACKED, 7, 500, 300, 0, 0);
    check_gemm(NULL, MX_CPU_ISA_AVX512, MX_GEMM_I8_STREAM, 3, 500, 31, 0, 0);
}

static void test_bad_arguments(void **state)
{
    (void)state;
    float x[4] = {0}, y[4] = {0}, s[4] = {1, 1, 1, 1};
    int8_t q[16] = {0};
    mx_error err = {0};
    assert_int_equal(mx_cpu_gemm_i8(NULL, y, 2, x, 2, 1, 2, q, NULL, 2, &err), MX_EINVAL);
    assert_non_null(strstr(err.msg, "scales"));
    assert_int_equal(mx_cpu_gemm_i8(NULL, y, 2, x, 1, 1, 2, q, s, 2, &err), MX_EINVAL);
    assert_int_equal(mx_cpu_gemm_i8(NULL, y, 2, x, 2, 1, 0, q, s, 2, &err), MX_EINVAL);
    assert_int_equal(mx_cpu_gemm_i8_with(NULL, MX_CPU_ISA_SCALAR, (mx_gemm_i8_path)7, y, 2, x, 2, 1,
                                         2, q, s, 2, &err),
                     MX_EINVAL);
    /* The bf16 entry point refuses I8: it would read the data without its scales. */
    assert_int_equal(mx_cpu_gemm(NULL, y, 2, x, 2, 1, 2, q, MX_DTYPE_I8, 2, &err), MX_EUNSUPPORTED);
    assert_int_equal(mx_cpu_gemm_i8(NULL, y, 2, x, 2, 0, 2, q, s, 2, &err), 0); /* M = 0: nothing */
}

/* The tiny fixture loaded twice: every expert matrix of the int8 load is I8 with scales,
 * owned (not inside the checkpoint mapping), and within half a step of the bf16 weights;
 * attention, router, embedding and head are the same tensors as stored. */
static void test_load_int8_experts(void **state)
{
    (void)state;
    mx_config cfg;
    mx_error err = {0};
    if (mx_config_load(FIXTURE "/config.json", &cfg, &err) != 0)
        skip();
    mx_load_plan plan = mx_load_plan_full(&cfg);
    mx_weights *ref = NULL, *w8 = NULL;
    assert_int_equal(mx_weights_load(FIXTURE, &plan, &ref, &err), 0);
    plan.expert_format = MX_WEIGHTS_INT8;
    plan.quantize_threads = 2;
    if (mx_weights_load(FIXTURE, &plan, &w8, &err) != 0)
        fail_msg("int8 load: %s", err.msg);
    uint64_t want_bytes = 0;
    for (int l = 0; l < cfg.num_hidden_layers; l++) {
        assert_int_equal(w8->layers[l].qkv.dtype, ref->layers[l].qkv.dtype);
        assert_int_equal(w8->layers[l].router.dtype, MX_DTYPE_F32);
        for (int e = 0; e < cfg.num_local_experts; e++) {
            const mx_tensor *a[3] = {&ref->layers[l].experts[e].w1, &ref->layers[l].experts[e].w3,
                                     &ref->layers[l].experts[e].w2};
            const mx_tensor *b[3] = {&w8->layers[l].experts[e].w1, &w8->layers[l].experts[e].w3,
                                     &w8->layers[l].experts[e].w2};
            for (int i = 0; i < 3; i++) {
                assert_int_equal(a[i]->dtype, MX_DTYPE_BF16);
                assert_int_equal(b[i]->dtype, MX_DTYPE_I8);
                assert_non_null(b[i]->scale);
                assert_int_equal(b[i]->shape[0], a[i]->shape[0]);
                assert_int_equal(b[i]->shape[1], a[i]->shape[1]);
                const char *p = b[i]->data, *lo = w8->quantized;
                assert_true(p >= lo && p < lo + w8->bytes_quantized);
                int64_t rows = a[i]->shape[0], cols = a[i]->shape[1];
                want_bytes += (uint64_t)rows * cols + (uint64_t)rows * 4;
                double *row = malloc(sizeof *row * (size_t)cols);
                for (int64_t r = 0; r < rows; r++) {
                    for (int64_t c = 0; c < cols; c++)
                        row[c] = bf16_value(((const uint16_t *)a[i]->data)[r * cols + c]);
                    check_row(row, (int)cols, (const int8_t *)b[i]->data + r * cols, b[i]->scale[r],
                              (int)r);
                }
                free(row);
            }
        }
    }
    assert_true(w8->bytes_quantized >= want_bytes);
    assert_true(w8->bytes_quantized <= want_bytes + (uint64_t)cfg.num_hidden_layers *
                                                        cfg.num_local_experts * 3 * 128);
    mx_weights_free(ref);
    mx_weights_free(w8);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_quantizer),     cmocka_unit_test(test_scalar),
        cmocka_unit_test(test_avx2),          cmocka_unit_test(test_avx512),
        cmocka_unit_test(test_avx512_no_pool), cmocka_unit_test(test_bad_arguments),
        cmocka_unit_test(test_load_int8_experts),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
