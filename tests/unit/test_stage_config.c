/* test_stage_config.c - the attention-svc config keys of the KV cache (stage.kv_dtype,
 * stage.kv_cache_bytes with units), stage.pin_threads and the byte-count parser: values against
 * hand-worked numbers, every error naming the file, line and key. No model, no network. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "attention-svc/stage_config.h"

/* Writes a stage config whose stage group ends with `extra` to a new file named in path and
 * loads it into c (the caller frees c when this returns 0, and removes the file). */
static int load_kept(const char *extra, stage_config *c, mx_error *err, char *path, size_t cap)
{
    snprintf(path, cap, "/tmp/mx-test-stage-%d-XXXXXX", (int)getpid());
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    FILE *f = fdopen(fd, "w");
    fprintf(f, "stage = {\n  listen = \"127.0.0.1:0\";\n  model = \"m\";\n  index = 0; count = 1;\n"
               "  layer_begin = 0; layer_end = 2;\n%s\n};\n", extra);
    fclose(f);
    return stage_config_load(path, c, err);
}

/* The same, freeing c at once: for errors. */
static int load(const char *extra, stage_config *c, mx_error *err, char *path, size_t cap)
{
    int rc = load_kept(extra, c, err, path, cap);
    stage_config_free(c);
    return rc;
}

static void expect_values(const char *extra, mx_kv_dtype dtype, uint64_t bytes)
{
    char path[128];
    stage_config c;
    mx_error err = {0};
    int rc = load_kept(extra, &c, &err, path, sizeof path);
    unlink(path);
    if (rc)
        fail_msg("%s: %s", extra, err.msg);
    if (c.kv_dtype != dtype || c.kv_cache_bytes != bytes)
        fail_msg("%s: kv_dtype %d kv_cache_bytes %llu, expected %d and %llu", extra, (int)c.kv_dtype,
                 (unsigned long long)c.kv_cache_bytes, (int)dtype, (unsigned long long)bytes);
    stage_config_free(&c);
}

static void expect_error(const char *extra, const char *needle)
{
    stage_config c;
    mx_error err = {0};
    char path[128];
    int rc = load(extra, &c, &err, path, sizeof path);
    unlink(path);
    if (rc != MX_EINVAL || !strstr(err.msg, needle) || !strstr(err.msg, path))
        fail_msg("%s: rc %d \"%s\", expected MX_EINVAL naming %s and \"%s\"", extra, rc, err.msg, path, needle);
}

static void test_defaults(void **state)
{
    (void)state;
    expect_values("", MX_KV_BF16, 0);
}

static void test_values(void **state)
{
    (void)state;
    expect_values("kv_dtype = \"f32\";", MX_KV_F32, 0);
    expect_values("kv_dtype = \"fp8_e4m3\"; kv_cache_bytes = 0;", MX_KV_FP8_E4M3, 0);
    expect_values("kv_dtype = \"int8\"; kv_cache_bytes = 1048576;", MX_KV_INT8, 1048576);
    expect_values("kv_cache_bytes = 8589934592L;", MX_KV_BF16, 8ull << 30);
    expect_values("kv_cache_bytes = \"123\";", MX_KV_BF16, 123);
    expect_values("kv_cache_bytes = \"64K\";", MX_KV_BF16, 64ull << 10);
    expect_values("kv_cache_bytes = \"512MiB\";", MX_KV_BF16, 512ull << 20);
    expect_values("kv_cache_bytes = \"512m\";", MX_KV_BF16, 512ull << 20);
    expect_values("kv_cache_bytes = \"8 GiB\";", MX_KV_BF16, 8ull << 30);
    expect_values("kv_cache_bytes = \"2T\";", MX_KV_BF16, 2ull << 40);
}

static void test_errors(void **state)
{
    (void)state;
    expect_error("kv_dtype = \"fp16\";", "stage.kv_dtype");
    expect_error("kv_dtype = 3;", "stage.kv_dtype");
    expect_error("kv_cache_bytes = -1;", "stage.kv_cache_bytes");
    expect_error("kv_cache_bytes = \"1.5G\";", "stage.kv_cache_bytes");
    expect_error("kv_cache_bytes = \"10MB\";", "unknown unit");
    expect_error("kv_cache_bytes = \"G\";", "stage.kv_cache_bytes");
    expect_error("kv_cache_bytes = \"-5M\";", "stage.kv_cache_bytes");
    expect_error("kv_cache_bytes = \"99999999999T\";", "too large");
    expect_error("kv_cache_bytes = \"99999999999999999999999\";", "too large");
    expect_error("kv_cache_bytes = true;", "stage.kv_cache_bytes");
    expect_error("kv_cache_bytes = 1.5;", "stage.kv_cache_bytes");
}

/* pin_threads: off unless set; a CPU-backend setting, refused with another backend. */
static void test_pin_threads(void **state)
{
    (void)state;
    const char *cases[] = {"", "pin_threads = false;", "pin_threads = true;"};
    for (int i = 0; i < 3; i++) {
        stage_config c;
        mx_error err = {0};
        char path[128];
        int rc = load_kept(cases[i], &c, &err, path, sizeof path);
        unlink(path);
        if (rc)
            fail_msg("%s: %s", cases[i], err.msg);
        assert_int_equal(c.pin_threads, i == 2);
        stage_config_free(&c);
    }
    expect_error("pin_threads = 1;", "stage.pin_threads");
    expect_error("backend = \"cuda\"; pin_threads = true;", "pin_threads applies to the cpu backend only");
}

static void test_parse_bytes(void **state)
{
    (void)state;
    uint64_t v;
    mx_error err = {0};
    assert_int_equal(stage_parse_bytes("0", "x", &v, &err), 0);
    assert_int_equal(v, 0);
    assert_int_equal(stage_parse_bytes("16777215T", "x", &v, &err), 0);
    assert_true(v == 16777215ull << 40);
    assert_int_equal(stage_parse_bytes("16777216T", "x", &v, &err), MX_EINVAL); /* 2^64 */
    assert_int_equal(stage_parse_bytes("3KiB", "x", &v, &err), 0);
    assert_int_equal(v, 3072);
    assert_int_equal(stage_parse_bytes("3Ki", "what", &v, &err), MX_EINVAL);
    assert_non_null(strstr(err.msg, "what"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_defaults),
        cmocka_unit_test(test_values),
        cmocka_unit_test(test_errors),
        cmocka_unit_test(test_parse_bytes),
        cmocka_unit_test(test_pin_threads),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
