/* test_loader_make_model.c - the random-weight model writer: "tiny" has the golden tiny's
 * architecture, reloads through the full load plan, its index total matches the shard files'
 * data sections, weights have the intended scale, and the seed alone decides the bytes. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <jansson.h>
#include <math.h>

#include "core/model_writer.h"
#include "core/weights.h"
#include "loader_testutil.h"

static char *tmp;

static int setup(void **state)
{
    (void)state;
    tmp = make_temp_dir();
    return tmp ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    rm_tree(tmp);
    free(tmp);
    return 0;
}

static char *make(const char *preset, const char *name, uint64_t seed)
{
    char *dir = path_join(tmp, name);
    mx_error err = {0};
    if (mx_make_model(preset, dir, seed, &err))
        fail_msg("%s", err.msg);
    return dir;
}

static const char *const files[] = {"config.json", "model.safetensors.index.json",
                                    "model-00000-of-00003.safetensors", "model-00001-of-00003.safetensors",
                                    "model-00002-of-00003.safetensors"};

/* RMS of a tensor's values minus `center`. */
static double rms(const mx_tensor *t, double center)
{
    int64_t n = mx_tensor_numel(t);
    double s = 0;
    for (int64_t i = 0; i < n; i++) {
        double d = mx_load_as_f32(t->data, t->dtype, i) - center;
        s += d * d;
    }
    return sqrt(s / (double)n);
}

static void tiny_reloads(void **state)
{
    (void)state;
    char *dir = make("tiny", "tiny1", 1);
    /* The same architecture as the golden tiny fixture. */
    mx_config golden, ours;
    mx_error err = {0};
    assert_int_equal(mx_config_load(GOLDEN "/tiny/config.json", &golden, &err), 0);
    char *cfg_path = path_join(dir, "config.json");
    assert_int_equal(mx_config_load(cfg_path, &ours, &err), 0);
    free(cfg_path);
    assert_memory_equal(&golden, &ours, sizeof golden);

    mx_load_plan plan = mx_load_plan_full(&ours);
    mx_weights *w;
    if (mx_weights_load(dir, &plan, &w, &err))
        fail_msg("%s", err.msg);
    /* total_size = the data sections of the three shard files, measured from their bytes. */
    uint64_t data_bytes = 0;
    for (int k = 2; k < 5; k++) {
        char *p = path_join(dir, files[k]);
        size_t len = 0;
        unsigned char *raw = (unsigned char *)read_all(p, &len);
        uint64_t hlen = 0;
        for (int i = 7; i >= 0; i--)
            hlen = hlen << 8 | raw[i];
        assert_true(len > 8 + hlen); /* every shard holds data */
        data_bytes += len - 8 - hlen;
        free(raw);
        free(p);
    }
    char *ip = path_join(dir, "model.safetensors.index.json");
    json_t *idx = json_load_file(ip, 0, NULL);
    free(ip);
    assert_non_null(idx);
    assert_int_equal(json_integer_value(json_object_get(json_object_get(idx, "metadata"), "total_size")), data_bytes);
    assert_int_equal(json_object_size(json_object_get(idx, "weight_map")), 155); /* as golden tiny */
    json_decref(idx);
    assert_int_equal(w->bytes_mapped, data_bytes);

    assert_int_equal(w->embed.shape[0], 512);
    assert_int_equal(w->layers[0].qkv.shape[0], 384);
    assert_int_equal(w->layers[3].k_proj.shape[0], 64);
    assert_int_equal(w->layers[5].router.dtype, MX_DTYPE_F32);
    assert_int_equal(w->layers[5].experts[2].w2.dtype, MX_DTYPE_BF16);
    /* Scales: embedding ~N(0,1), linear ~N(0, 1/fan_in), norms ~1. */
    double e = rms(&w->embed, 0), q = rms(&w->layers[0].qkv, 0) * sqrt(128.0);
    double d = rms(&w->layers[1].experts[0].w2, 0) * sqrt(256.0), n = rms(&w->layers[2].input_norm, 1.0);
    if (fabs(e - 1) > 0.05 || fabs(q - 1) > 0.05 || fabs(d - 1) > 0.05 || n > 0.1)
        fail_msg("scales: embed %g, qkv*sqrt(fan_in) %g, w2*sqrt(fan_in) %g, norm-1 %g", e, q, d, n);
    mx_weights_free(w);
    free(dir);
}

static int same_file(const char *a, const char *b)
{
    size_t la = 0, lb = 0;
    char *x = read_all(a, &la), *y = read_all(b, &lb);
    int same = x && y && la == lb && memcmp(x, y, la) == 0;
    free(x);
    free(y);
    return same;
}

static void deterministic(void **state)
{
    (void)state;
    char *a = make("tiny", "seed7a", 7), *b = make("tiny", "seed7b", 7), *c = make("tiny", "seed8", 8);
    for (int k = 0; k < 5; k++) {
        char *pa = path_join(a, files[k]), *pb = path_join(b, files[k]), *pc = path_join(c, files[k]);
        assert_true(same_file(pa, pb));
        if (k >= 2)
            assert_false(same_file(pa, pc)); /* weights differ with the seed */
        else
            assert_true(same_file(pa, pc)); /* config and index do not */
        free(pa);
        free(pb);
        free(pc);
    }
    free(a);
    free(b);
    free(c);
}

static void presets(void **state)
{
    (void)state;
    const char *const *names = mx_model_presets();
    int n = 0;
    for (; names[n]; n++) {
        mx_config c;
        mx_error err = {0};
        assert_int_equal(mx_model_preset_config(names[n], &c, &err), 0);
        if (mx_config_validate(&c, &err))
            fail_msg("preset %s: %s", names[n], err.msg);
    }
    assert_int_equal(n, 4);
    mx_config c;
    mx_error err = {0};
    assert_int_equal(mx_model_preset_config("layer", &c, &err), 0);
    assert_int_equal(c.hidden_size, 6144);
    assert_int_equal(mx_config_attn_width(&c), 8192);
    assert_int_equal(c.intermediate_size, 9216);
    assert_int_equal(c.num_local_experts, 32);
    assert_int_equal(mx_model_preset_config("huge", &c, &err), MX_ENOTFOUND);
    assert_non_null(strstr(err.msg, "huge"));
    char *dir = path_join(tmp, "never");
    assert_int_equal(mx_make_model("huge", dir, 1, &err), MX_ENOTFOUND);
    free(dir);
    assert_int_not_equal(mx_make_model("tiny", "/proc/nope/x", 1, &err), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(tiny_reloads),
        cmocka_unit_test(deterministic),
        cmocka_unit_test(presets),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
