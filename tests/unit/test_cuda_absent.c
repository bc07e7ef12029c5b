/* test_cuda_absent.c - on a machine without a usable GPU (or a build without CUDA), creating the
 * CUDA backend must fail cleanly with MX_EDEVICE and a message saying why; the same holds for
 * the tensor-parallel group and the extras. Skips when a GPU is actually usable. The extras
 * must also refuse a CPU backend cleanly. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "core/backend.h"
#include "core/cuda/mx_cuda.h"

static void test_create_fails_without_gpu(void **state)
{
    (void)state;
    mx_backend *be = (mx_backend *)&be; /* must be reset to NULL on failure */
    mx_error err = {0};
    int rc = mx_backend_cuda_create(0, &be, &err);
    if (rc == 0) {
        be->destroy(be);
        skip(); /* a GPU is present: the GPU script covers this machine */
    }
    assert_int_equal(rc, MX_EDEVICE);
    assert_int_equal(err.code, MX_EDEVICE);
    assert_null(be);
    assert_true(strlen(err.msg) > 0);
    print_message("cuda backend: %s\n", err.msg);
}

static void test_bad_options_rejected_or_no_device(void **state)
{
    (void)state;
    mx_backend *be = NULL;
    mx_error err = {0};
    mx_cuda_options opt = {.device = 0, .bf16_tensor_cores = 0, .kv_page_tokens = 48};
    int rc = mx_backend_cuda_create_ex(&opt, &be, &err);
    /* 48 is not a power of two: EINVAL with CUDA built in, EDEVICE in a CUDA-less build. */
    assert_true(rc == MX_EINVAL || rc == MX_EDEVICE);
    assert_null(be);
    assert_true(strlen(err.msg) > 0);
}

static void test_tp_create_fails_without_gpu(void **state)
{
    (void)state;
    mx_cuda_tp *tp = NULL;
    mx_error err = {0};
    mx_backend *probe = NULL;
    if (mx_backend_cuda_create(0, &probe, &err) == 0) {
        probe->destroy(probe);
        skip();
    }
    int rc = mx_cuda_tp_create(1, NULL, NULL, &tp, &err);
    assert_int_equal(rc, MX_EDEVICE);
    assert_null(tp);
    assert_true(strlen(err.msg) > 0);
    assert_int_equal(mx_cuda_tp_create(0, NULL, NULL, &tp, &err) < 0, 1);
}

/* The CUDA extras must refuse a non-CUDA backend with an error, never touch its tensors. */
static void test_extras_reject_cpu_backend(void **state)
{
    (void)state;
    mx_backend *cpu = NULL;
    mx_error err = {0};
    assert_int_equal(mx_backend_cpu_create(1, &cpu, &err), 0);
    float xs[8] = {0}, os[8] = {0};
    uint16_t ws[8] = {0};
    mx_tensor x = mx_tensor_2d(xs, MX_DTYPE_F32, MX_DEVICE_CPU, 2, 4);
    mx_tensor out = mx_tensor_2d(os, MX_DTYPE_F32, MX_DEVICE_CPU, 2, 4);
    mx_tensor w = mx_tensor_2d(ws, MX_DTYPE_BF16, MX_DEVICE_CPU, 2, 4), dst = {0};
    mx_cuda_expert_group g = {0, 2, &w, &w, &w};
    err.msg[0] = '\0';
    assert_true(mx_cuda_grouped_swiglu(cpu, &out, &x, &g, 1, &err) < 0);
    assert_true(strlen(err.msg) > 0);
    err.msg[0] = '\0';
    assert_true(mx_cuda_upload_weight_slice(cpu, &dst, &w, 0, 0, 1, &err) < 0);
    assert_true(strlen(err.msg) > 0);
    assert_null(dst.data);
    cpu->destroy(cpu);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_create_fails_without_gpu),
        cmocka_unit_test(test_bad_options_rejected_or_no_device),
        cmocka_unit_test(test_tp_create_fails_without_gpu),
        cmocka_unit_test(test_extras_reject_cpu_backend),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
