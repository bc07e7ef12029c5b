/* test_cpu_gemm.c - every gemm kernel family this CPU can run (scalar, AVX2, AVX-512), forced
 * one at a time (and each family's streaming and packed kernel forced at every small M),
 * against a double-precision reference computed here on odd shapes, all three weight dtypes,
 * padded row strides, and bad arguments that must fail cleanly; and that a warm packed call
 * (bf16 and int8 weights) allocates nothing. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "core/cpu/cpu_features.h"
#include "core/cpu/gemm.h"
#include "core/cpu/gemm_kernels.h"

/* ---- allocation counting: every malloc-family call of any thread while `counting` is set.
 * AddressSanitizer replaces malloc, so there its allocation hook counts. ---- */
static atomic_int counting;
static atomic_int counted;

static void note_alloc(void)
{
    if (atomic_load_explicit(&counting, memory_order_relaxed))
        atomic_fetch_add(&counted, 1);
}

#include "asan_alloc_hooks.h"

#ifdef UNDER_ASAN
static void on_malloc(const volatile void *p, size_t n)
{
    (void)p;
    (void)n;
    note_alloc();
}
static void counting_init(void) { asan_count_allocs(on_malloc); }
#else
static void counting_init(void) {}
void *malloc(size_t n)
{
    note_alloc();
    return __libc_malloc(n);
}
void *calloc(size_t n, size_t size)
{
    note_alloc();
    return __libc_calloc(n, size);
}
void *realloc(void *p, size_t n)
{
    note_alloc();
    return __libc_realloc(p, n);
}
void *aligned_alloc(size_t align, size_t n)
{
    note_alloc();
    return __libc_memalign(align, n);
}
void *memalign(size_t align, size_t n);
void *memalign(size_t align, size_t n)
{
    note_alloc();
    return __libc_memalign(align, n);
}
int posix_memalign(void **out, size_t align, size_t n)
{
    note_alloc();
    void *p = __libc_memalign(align, n);
    if (!p)
        return 12; /* ENOMEM */
    *out = p;
    return 0;
}
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

/* Independent widening: bf16 by bit shift, f16 decoded from its fields here. */
static double ref_bf16(uint16_t h)
{
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static double ref_f16(uint16_t h)
{
    int s = h >> 15, e = (h >> 10) & 31, m = h & 1023;
    double v = e == 0 ? ldexp(m, -24) : ldexp(1024 + m, e - 25);
    return s ? -v : v;
}

/* Random weights exactly representable in the dtype: bf16 = top half of a float; f16 built
 * from sign/exponent/mantissa in a moderate range. */
static void *make_weights(mx_dtype dt, size_t n, uint64_t *s, double *wd)
{
    if (dt == MX_DTYPE_F32) {
        float *w = malloc(n * 4);
        for (size_t i = 0; i < n; i++)
            wd[i] = w[i] = rng_uniform(s);
        return w;
    }
    uint16_t *w = malloc(n * 2);
    for (size_t i = 0; i < n; i++) {
        if (dt == MX_DTYPE_BF16) {
            float f = rng_uniform(s);
            uint32_t u;
            memcpy(&u, &f, 4);
            w[i] = (uint16_t)(u >> 16);
            wd[i] = ref_bf16(w[i]);
        } else {
            uint64_t r = rng_next(s);
            w[i] = (uint16_t)(((r & 1) << 15) | ((10 + (r >> 1) % 6) << 10) | ((r >> 8) & 1023));
            wd[i] = ref_f16(w[i]);
        }
    }
    return w;
}

/* check_path's path for the public entry point mx_cpu_gemm (its own choice of kernel). */
#define PATH_DEFAULT ((mx_gemm_path)-1)

static void check_path(mx_threadpool *pool, mx_cpu_isa isa, mx_gemm_path path, mx_dtype dt,
                       int M, int K, int N, int xpad, int ypad)
{
    uint64_t s = 0x9E3779B97F4A7C15ull ^ ((uint64_t)M << 40) ^ ((uint64_t)K << 20) ^ (uint64_t)N;
    int ldx = K + xpad, ldy = N + ypad;
    float *x = malloc(sizeof(float) * (size_t)(M ? M : 1) * ldx);
    float *y = malloc(sizeof(float) * (size_t)(M ? M : 1) * ldy);
    double *wd = malloc(sizeof(double) * (size_t)N * K);
    for (size_t i = 0; i < (size_t)M * ldx; i++)
        x[i] = rng_uniform(&s);
    for (size_t i = 0; i < (size_t)M * ldy; i++)
        y[i] = 12345.f; /* sentinel: padding must stay untouched */
    void *w = make_weights(dt, (size_t)N * K, &s, wd);
    mx_error err = {0};
    int rc = path == PATH_DEFAULT ? mx_cpu_gemm(pool, y, ldy, x, ldx, M, K, w, dt, N, &err)
                                  : mx_cpu_gemm_with_path(pool, isa, path, y, ldy, x, ldx, M, K, w, dt, N, &err);
    if (rc != 0)
        fail_msg("%s %s path %d M=%d K=%d N=%d: %s", mx_cpu_isa_name(isa), mx_dtype_name(dt),
                 (int)path, M, K, N, err.msg);
    for (int m = 0; m < M; m++) {
        for (int n = 0; n < N; n++) {
            double ref = 0, mag = 0;
            for (int k = 0; k < K; k++) {
                ref += (double)x[(size_t)m * ldx + k] * wd[(size_t)n * K + k];
                mag += fabs((double)x[(size_t)m * ldx + k] * wd[(size_t)n * K + k]);
            }
            double got = y[(size_t)m * ldy + n];
            if (fabs(got - ref) > 1e-5 * mag + 1e-30)
                fail_msg("%s %s path %d M=%d K=%d N=%d: y[%d,%d]=%.9g want %.9g (scale %g)",
                         mx_cpu_isa_name(isa), mx_dtype_name(dt), (int)path, M, K, N, m, n, got,
                         ref, mag);
        }
        for (int n = N; n < ldy; n++)
            if (y[(size_t)m * ldy + n] != 12345.f)
                fail_msg("%s: padding y[%d,%d] was overwritten", mx_cpu_isa_name(isa), m, n);
    }
    free(x);
    free(y);
    free(wd);
    free(w);
}

static void check_case(mx_threadpool *pool, mx_cpu_isa isa, mx_dtype dt, int M, int K, int N,
                       int xpad, int ypad)
{
    check_path(pool, isa, MX_GEMM_PATH_AUTO, dt, M, K, N, xpad, ypad);
}

/* Both kernels of the family forced at every M the streaming one takes (up to 32): the
 * automatic choice by M must never pick a kernel that is wrong for that M. K = 1117: several
 * K blocks for M >= 8, 32-wide groups and a tail; N = 23: full row groups of every size plus
 * single remainder rows; then model-sized K where the BF16 kernel runs x in several passes. */
static void run_paths(mx_cpu_isa isa, int threads)
{
    if (!mx_cpu_isa_supported(isa))
        skip();
    mx_threadpool *pool = NULL;
    mx_error err = {0};
    assert_int_equal(mx_threadpool_create(threads, &pool, &err), 0);
    const mx_dtype dts[] = {MX_DTYPE_BF16, MX_DTYPE_F16, MX_DTYPE_F32};
    for (size_t d = 0; d < 3; d++) {
        int max_m = mx_gemv_max_m(isa, dts[d]);
        for (int M = 1; M <= 32; M++) {
            if (M <= max_m)
                check_path(pool, isa, MX_GEMM_PATH_STREAM, dts[d], M, 1117, 23, M % 3, M % 2);
            check_path(pool, isa, MX_GEMM_PATH_PACKED, dts[d], M, 1117, 23, M % 2, M % 3);
        }
        if (max_m < 32) {
            /* Above its limit the streaming kernel is refused, not run out of bounds. */
            float x[33], y[33];
            uint16_t w[33] = {0};
            assert_int_equal(mx_cpu_gemm_with_path(pool, isa, MX_GEMM_PATH_STREAM, y, 1, x, 1,
                                                   max_m + 1, 1, w, dts[d], 1, &err),
                             MX_EINVAL);
            assert_non_null(strstr(err.msg, "at most"));
        }
    }
    static const int big_ms[] = {9, 13, 16, 17, 25, 32};
    for (size_t i = 0; i < sizeof big_ms / sizeof *big_ms; i++)
        if (big_ms[i] <= mx_gemv_max_m(isa, MX_DTYPE_BF16))
            check_path(pool, isa, MX_GEMM_PATH_STREAM, MX_DTYPE_BF16, big_ms[i], 6144, 37, 1, 0);
    /* Few rows of x read W in whole rows, or in equal K blocks when x's slice outgrows the
     * kernel's buffer: K = 9216 (the experts' down projection) and K = 13000 (blocks of
     * unequal last length, and a tail of 8). */
    static const int row_ms[] = {1, 2, 5, 6};
    for (size_t i = 0; i < sizeof row_ms / sizeof *row_ms; i++) {
        if (row_ms[i] > mx_gemv_max_m(isa, MX_DTYPE_BF16))
            continue;
        check_path(pool, isa, MX_GEMM_PATH_STREAM, MX_DTYPE_BF16, row_ms[i], 9216, 19, 0, 1);
        check_path(pool, isa, MX_GEMM_PATH_STREAM, MX_DTYPE_BF16, row_ms[i], 13000, 11, 1, 0);
    }
    mx_threadpool_destroy(pool);
}

static void run_shapes(mx_cpu_isa isa, int threads)
{
    if (!mx_cpu_isa_supported(isa))
        skip();
    mx_threadpool *pool = NULL;
    mx_error err = {0};
    assert_int_equal(mx_threadpool_create(threads, &pool, &err), 0);
    static const int Ms[] = {1, 2, 3, 4, 5, 9, 16, 17, 64, 65};
    static const int Ks[] = {100, 129, 16, 1};
    static const int Ns[] = {1, 7, 33, 200};
    const mx_dtype dts[] = {MX_DTYPE_BF16, MX_DTYPE_F16, MX_DTYPE_F32};
    for (size_t d = 0; d < 3; d++)
        for (size_t mi = 0; mi < sizeof Ms / sizeof *Ms; mi++)
            for (size_t ki = 0; ki < sizeof Ks / sizeof *Ks; ki++)
                for (size_t ni = 0; ni < sizeof Ns / sizeof *Ns; ni++)
                    check_case(pool, isa, dts[d], Ms[mi], Ks[ki], Ns[ni], (int)(mi % 2) * 3,
                               (int)(ni % 2) * 5);
    /* Model-sized K (several K blocks, panel tails) and a wide N with a partial last panel. */
    for (size_t d = 0; d < 3; d++) {
        check_case(pool, isa, dts[d], 1, 6144, 33, 0, 0);
        check_case(pool, isa, dts[d], 3, 6144, 40, 16, 1);
        check_case(pool, isa, dts[d], 17, 6144, 70, 0, 0);
        /* Every row count of the streaming kernels, K blocks with 32-wide groups and tails of
         * 1..31 columns (the BF16 path splits x into even/odd halves per 32 columns). */
        check_case(pool, isa, dts[d], 6, 1117, 23, 2, 0);
        check_case(pool, isa, dts[d], 7, 3000, 19, 0, 2);
        check_case(pool, isa, dts[d], 8, 6144, 37, 1, 1);
        check_case(pool, isa, dts[d], 2, 8250, 13, 0, 0);
        check_case(pool, isa, dts[d], 64, 300, 1000, 1, 1);
        check_case(pool, isa, dts[d], 65, 129, 1000, 0, 3);
    }
    mx_threadpool_destroy(pool);
}

static void test_scalar(void **state) { (void)state; run_shapes(MX_CPU_ISA_SCALAR, 2); }
static void test_avx2(void **state) { (void)state; run_shapes(MX_CPU_ISA_AVX2, 2); }
static void test_avx512(void **state) { (void)state; run_shapes(MX_CPU_ISA_AVX512, 2); }
static void test_avx512_one_thread(void **state)
{
    (void)state;
    run_shapes(MX_CPU_ISA_AVX512, 1);
}

static void test_paths_scalar(void **state) { (void)state; run_paths(MX_CPU_ISA_SCALAR, 2); }
static void test_paths_avx2(void **state) { (void)state; run_paths(MX_CPU_ISA_AVX2, 2); }
static void test_paths_avx512(void **state) { (void)state; run_paths(MX_CPU_ISA_AVX512, 2); }

/* The AMX kernel (bf16 tiles on x split exactly into three bf16 parts) at the fp32 kernels'
 * tolerance (1e-5 of the sum of |products|: one bf16 part alone misses it by ~200x): row and
 * column counts around the 16 x 16 tiles and 32 x 32 blocks, K around the 32-wide tile steps
 * and the 384 block, padded strides, 1 and 2 threads, and mx_cpu_gemm's own choice at M >= 64.
 * Other weight dtypes are refused. */
static void test_amx(void **state)
{
    (void)state;
    if (!mx_cpu_amx_usable()) {
        skip();
        return;
    }
    mx_error err = {0};
    for (int threads = 1; threads <= 2; threads++) {
        mx_threadpool *pool = NULL;
        assert_int_equal(mx_threadpool_create(threads, &pool, &err), 0);
        static const int Ms[] = {1, 15, 16, 17, 33, 64, 65, 130};
        static const int Ks[] = {1, 31, 33, 385, 1117};
        static const int Ns[] = {1, 17, 32, 257};
        for (size_t mi = 0; mi < sizeof Ms / sizeof *Ms; mi++)
            for (size_t ki = 0; ki < sizeof Ks / sizeof *Ks; ki++)
                for (size_t ni = 0; ni < sizeof Ns / sizeof *Ns; ni++)
                    check_path(pool, MX_CPU_ISA_AVX512, MX_GEMM_PATH_AMX, MX_DTYPE_BF16, Ms[mi], Ks[ki], Ns[ni],
                               (int)(mi % 2), (int)(ni % 3));
        check_path(pool, MX_CPU_ISA_AVX512, MX_GEMM_PATH_AMX, MX_DTYPE_BF16, 70, 6144, 600, 0, 1);
        check_path(pool, MX_CPU_ISA_AVX512, PATH_DEFAULT, MX_DTYPE_BF16, 96, 2000, 300, 3, 0);
        mx_threadpool_destroy(pool);
    }
    float x[4] = {0}, y[4];
    uint16_t w[4] = {0};
    assert_int_equal(mx_cpu_gemm_with_path(NULL, MX_CPU_ISA_AVX512, MX_GEMM_PATH_AMX, y, 1, x, 1, 1, 1, w,
                                           MX_DTYPE_F16, 1, &err),
                     MX_EUNSUPPORTED);
}

/* The packed kernels' panels and the flags that hand them out come from the pool's scratch:
 * once a shape has run, calls at prefill-sized M (above the streaming limit) allocate nothing,
 * for every family this CPU has, bf16 (mx_cpu_gemm's own choice, AMX included where usable)
 * and int8 weights. The counter is checked to see an allocation first. */
static void test_packed_allocates_nothing(void **state)
{
    (void)state;
    counting_init();
    atomic_store(&counted, 0);
    atomic_store(&counting, 1);
    void *volatile probe = malloc(16); /* volatile: a malloc/free pair may be optimized away */
    free(probe);
    atomic_store(&counting, 0);
    assert_int_equal(atomic_load(&counted), 1);

    enum { M = 64, K = 768, N = 600 };
    mx_threadpool *pool = NULL;
    mx_error err = {0};
    assert_int_equal(mx_threadpool_create(2, &pool, &err), 0);
    float *x = calloc((size_t)M * K, sizeof *x), *y = calloc((size_t)M * N, sizeof *y);
    uint16_t *w = calloc((size_t)N * K, sizeof *w);
    int8_t *q = calloc((size_t)N * K, sizeof *q);
    float *scale = calloc(N, sizeof *scale);
    assert_true(x && y && w && q && scale);
    for (int isa = 0; isa < MX_CPU_ISA_COUNT; isa++) {
        if (!mx_cpu_isa_supported((mx_cpu_isa)isa))
            continue;
        for (int warm = 1; warm >= 0; warm--) { /* the first round sizes the pool's scratch */
            atomic_store(&counted, 0);
            atomic_store(&counting, !warm);
            for (int i = 0; i < 3; i++) {
                assert_int_equal(mx_cpu_gemm_with_path(pool, (mx_cpu_isa)isa, MX_GEMM_PATH_PACKED, y, N, x, K, M,
                                                       K, w, MX_DTYPE_BF16, N, &err),
                                 0);
                assert_int_equal(mx_cpu_gemm_i8_with(pool, (mx_cpu_isa)isa, MX_GEMM_I8_PACKED, y, N, x, K, M, K, q,
                                                     scale, N, &err),
                                 0);
                assert_int_equal(mx_cpu_gemm(pool, y, N, x, K, M, K, w, MX_DTYPE_BF16, N, &err), 0);
            }
            atomic_store(&counting, 0);
            if (!warm && atomic_load(&counted) != 0)
                fail_msg("%s: %d allocations in 3 warm rounds of packed calls",
                         mx_cpu_isa_name((mx_cpu_isa)isa), atomic_load(&counted));
        }
    }
    free(x);
    free(y);
    free(w);
    free(q);
    free(scale);
    mx_threadpool_destroy(pool);
}

static void test_dispatch_picks_best(void **state)
{
    (void)state;
    assert_string_equal(mx_cpu_gemm_isa(), mx_cpu_isa_name(mx_cpu_best_isa()));
    assert_true(mx_cpu_isa_supported(MX_CPU_ISA_SCALAR));
    /* The public entry point gives the same answers as the reference too. */
    float x[3 * 5], y[3 * 2];
    uint16_t w[2 * 5];
    for (int i = 0; i < 15; i++)
        x[i] = (float)(i + 1);
    for (int i = 0; i < 10; i++)
        w[i] = 0x3f80; /* bf16 1.0 */
    w[7] = 0x4000;     /* bf16 2.0 */
    mx_error err = {0};
    assert_int_equal(mx_cpu_gemm(NULL, y, 2, x, 5, 3, 5, w, MX_DTYPE_BF16, 2, &err), 0);
    assert_true(y[0] == 15.f && y[1] == 18.f && y[2] == 40.f && y[3] == 48.f);
    assert_true(y[4] == 65.f && y[5] == 78.f);
}

static void test_bad_arguments(void **state)
{
    (void)state;
    float x[64] = {0}, y[64] = {0};
    uint16_t w[64] = {0};
    mx_error err = {0};
    assert_int_equal(mx_cpu_gemm(NULL, y, 4, x, 4, -1, 4, w, MX_DTYPE_BF16, 4, &err), MX_EINVAL);
    assert_non_null(strstr(err.msg, "M=-1"));
    assert_int_equal(mx_cpu_gemm(NULL, y, 4, x, 4, 1, 0, w, MX_DTYPE_BF16, 4, &err), MX_EINVAL);
    assert_int_equal(mx_cpu_gemm(NULL, y, 4, x, 4, 1, 4, w, MX_DTYPE_BF16, 0, &err), MX_EINVAL);
    assert_int_equal(mx_cpu_gemm(NULL, y, 4, x, 3, 1, 4, w, MX_DTYPE_BF16, 4, &err), MX_EINVAL);
    assert_non_null(strstr(err.msg, "ldx"));
    assert_int_equal(mx_cpu_gemm(NULL, y, 3, x, 4, 1, 4, w, MX_DTYPE_BF16, 4, &err), MX_EINVAL);
    assert_int_equal(mx_cpu_gemm(NULL, y, 4, x, 4, 1, 4, w, MX_DTYPE_I32, 4, &err),
                     MX_EUNSUPPORTED);
    assert_non_null(strstr(err.msg, "I32"));
    assert_int_equal(mx_cpu_gemm(NULL, y, 4, x, 4, 1, 4, NULL, MX_DTYPE_BF16, 4, &err), MX_EINVAL);
    assert_int_equal(mx_cpu_gemm(NULL, NULL, 4, x, 4, 1, 4, w, MX_DTYPE_BF16, 4, &err), MX_EINVAL);
    assert_int_equal(mx_cpu_gemm_with_isa(NULL, MX_CPU_ISA_COUNT, y, 4, x, 4, 1, 4, w,
                                          MX_DTYPE_BF16, 4, &err),
                     MX_EUNSUPPORTED);
    assert_int_equal(mx_cpu_gemm_with_path(NULL, MX_CPU_ISA_SCALAR, (mx_gemm_path)7, y, 4, x, 4,
                                           1, 4, w, MX_DTYPE_BF16, 4, &err),
                     MX_EINVAL);
    assert_non_null(strstr(err.msg, "path"));
    /* M = 0 is an empty product, not an error, and touches nothing. */
    assert_int_equal(mx_cpu_gemm(NULL, NULL, 4, NULL, 4, 0, 4, w, MX_DTYPE_BF16, 4, &err), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_scalar),
        cmocka_unit_test(test_avx2),
        cmocka_unit_test(test_avx512),
        cmocka_unit_test(test_avx512_one_thread),
        cmocka_unit_test(test_paths_scalar),
        cmocka_unit_test(test_paths_avx2),
        cmocka_unit_test(test_paths_avx512),
        cmocka_unit_test(test_amx),
        cmocka_unit_test(test_packed_allocates_nothing),
        cmocka_unit_test(test_dispatch_picks_best),
        cmocka_unit_test(test_bad_arguments),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
