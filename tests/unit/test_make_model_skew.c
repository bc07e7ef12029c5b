/* test_make_model_skew.c - `mx make-model --gate-skew` (mx_make_model_skewed): skew 1 writes
 * the plain model byte for byte; skew S multiplies exactly the router gate rows of the hot
 * experts by S in every layer and leaves every other value as drawn; bad arguments are refused. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "core/model_writer.h"
#include "core/safetensors.h"

static char *read_all(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc((size_t)n + 1);
    assert_non_null(buf);
    assert_int_equal(fread(buf, 1, (size_t)n, f), (size_t)n);
    fclose(f);
    *len = (size_t)n;
    return buf;
}

static void make(const char *dir, double skew, int hot)
{
    mx_config cfg;
    mx_error err = {0};
    assert_int_equal(mx_model_preset_config("tiny", &cfg, &err), 0);
    assert_int_equal(mx_make_model_skewed(&cfg, dir, 5, skew, hot, &err), 0);
}

/* The named tensor from whichever of the 3 shards holds it, as f32 values (copied). */
static float *tensor(const char *dir, const char *name, int64_t *rows, int64_t *cols)
{
    for (int k = 0; k < 3; k++) {
        char path[512];
        snprintf(path, sizeof path, "%s/model-%05d-of-00003.safetensors", dir, k);
        mx_st_file *f = NULL;
        mx_error err = {0};
        assert_int_equal(mx_st_open(path, &f, &err), 0);
        const mx_st_entry *e = mx_st_find(f, name);
        if (e) {
            mx_tensor t;
            assert_int_equal(mx_st_map(f, e, &t, &err), 0);
            assert_int_equal(t.dtype, MX_DTYPE_F32);
            *rows = t.shape[0];
            *cols = t.shape[1];
            float *v = malloc((size_t)(*rows * *cols) * sizeof *v);
            memcpy(v, t.data, (size_t)(*rows * *cols) * sizeof *v);
            mx_st_close(f);
            return v;
        }
        mx_st_close(f);
    }
    fail_msg("tensor %s not found", name);
    return NULL;
}

static void test_skew(void **state)
{
    (void)state;
    char plain[] = "/tmp/mx-skew-test-XXXXXX", one[] = "/tmp/mx-skew-test-XXXXXX", hot[] = "/tmp/mx-skew-test-XXXXXX";
    assert_non_null(mkdtemp(plain));
    assert_non_null(mkdtemp(one));
    assert_non_null(mkdtemp(hot));
    mx_error err = {0};
    assert_int_equal(mx_make_model("tiny", plain, 5, &err), 0);
    make(one, 1.0, 2);
    make(hot, 3.0, 1);
    for (int k = 0; k < 3; k++) { /* skew 1 = the plain model */
        char a[512], b[512];
        snprintf(a, sizeof a, "%s/model-%05d-of-00003.safetensors", plain, k);
        snprintf(b, sizeof b, "%s/model-%05d-of-00003.safetensors", one, k);
        size_t la, lb;
        char *x = read_all(a, &la), *y = read_all(b, &lb);
        assert_int_equal(la, lb);
        assert_memory_equal(x, y, la);
        free(x);
        free(y);
    }
    mx_config cfg;
    assert_int_equal(mx_model_preset_config("tiny", &cfg, &err), 0);
    for (int l = 0; l < cfg.num_hidden_layers; l++) {
        char name[96];
        snprintf(name, sizeof name, "model.layers.%d.block_sparse_moe.gate.weight", l);
        int64_t r1, c1, r2, c2;
        float *p = tensor(plain, name, &r1, &c1), *h = tensor(hot, name, &r2, &c2);
        assert_int_equal(r1, cfg.num_local_experts);
        assert_int_equal(r1, r2);
        assert_int_equal(c1, c2);
        for (int64_t i = 0; i < r1 * c1; i++) {
            float want = i < c1 ? p[i] * 3.0f : p[i]; /* row 0 (the one hot expert) scaled */
            if (memcmp(&want, &h[i], sizeof want))
                fail_msg("layer %d element %lld: %g, expected %g", l, (long long)i, h[i], want);
        }
        free(p);
        free(h);
    }
    assert_int_equal(mx_make_model_skewed(&cfg, hot, 5, 0.0, 1, &err), MX_EINVAL);
    assert_int_equal(mx_make_model_skewed(&cfg, hot, 5, 2.0, cfg.num_local_experts + 1, &err), MX_EINVAL);
    char cmd[256];
    snprintf(cmd, sizeof cmd, "rm -rf %s %s %s", plain, one, hot);
    assert_int_equal(system(cmd), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_skew),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
