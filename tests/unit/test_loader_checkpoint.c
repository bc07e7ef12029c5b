/* test_loader_checkpoint.c - opening the golden checkpoints (index + three shards), mapping
 * every tensor the index lists (their bytes must add up to the index's total_size), and broken
 * copies of the fixture: tensor missing from a shard, missing shard, escaping shard names,
 * wrong shape/dtype requests, bad config, single-file checkpoints. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <jansson.h>

#include "core/checkpoint.h"
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

static mx_checkpoint *open_ok(const char *dir)
{
    mx_checkpoint *ck;
    mx_error err = {0};
    if (mx_checkpoint_open(dir, &ck, &err))
        fail_msg("%s", err.msg);
    return ck;
}

/* Maps every tensor the index names; the byte total must be the index's metadata.total_size. */
static void map_whole_fixture(const char *name)
{
    char dir[256], idx_path[300];
    snprintf(dir, sizeof dir, GOLDEN "/%s", name);
    snprintf(idx_path, sizeof idx_path, "%s/model.safetensors.index.json", dir);
    json_t *idx = json_load_file(idx_path, 0, NULL);
    assert_non_null(idx);
    json_int_t total = json_integer_value(json_object_get(json_object_get(idx, "metadata"), "total_size"));
    mx_checkpoint *ck = open_ok(dir);
    uint64_t sum = 0;
    const char *tname;
    json_t *v;
    json_object_foreach(json_object_get(idx, "weight_map"), tname, v) {
        assert_true(mx_checkpoint_has(ck, tname));
        const mx_st_entry *e;
        const char *shard;
        mx_error err = {0};
        assert_int_equal(mx_checkpoint_entry(ck, tname, &e, &shard, &err), 0);
        assert_string_equal(shard, json_string_value(v));
        mx_tensor t;
        if (mx_checkpoint_get(ck, tname, MX_DTYPES_FLOAT, e->ndim, e->shape, &t, &err))
            fail_msg("%s", err.msg);
        sum += mx_tensor_nbytes(&t);
        /* README: router gates are F32, everything else BF16 */
        assert_int_equal(t.dtype, strstr(tname, ".gate.weight") ? MX_DTYPE_F32 : MX_DTYPE_BF16);
    }
    assert_int_equal(sum, (uint64_t)total);
    mx_checkpoint_close(ck);
    json_decref(idx);
}

static void golden_tiny_and_small(void **state)
{
    (void)state;
    map_whole_fixture("tiny");
    map_whole_fixture("small");
}

static void typed_gets(void **state)
{
    (void)state;
    mx_checkpoint *ck = open_ok(GOLDEN "/tiny");
    assert_int_equal(mx_checkpoint_config(ck)->hidden_size, 128);
    assert_string_equal(mx_checkpoint_dir(ck), GOLDEN "/tiny");
    mx_tensor t;
    mx_error err = {0};
    const int64_t gate[2] = {4, 128};
    assert_int_equal(mx_checkpoint_get(ck, "model.layers.0.block_sparse_moe.gate.weight", MX_DTYPES_FLOAT, 2,
                                       gate, &t, &err), 0);
    assert_int_equal(t.dtype, MX_DTYPE_F32);
    assert_int_equal(t.ndim, 2);
    assert_int_equal(t.shape[0], 4);
    assert_int_equal(t.shape[1], 128);

    const int64_t wrong[2] = {128, 64};
    assert_int_equal(mx_checkpoint_get(ck, "model.layers.3.self_attn.q_proj.weight", MX_DTYPES_FLOAT, 2, wrong,
                                       &t, &err), MX_EFORMAT);
    assert_string_equal(err.msg, "model-00001-of-00003.safetensors: tensor model.layers.3.self_attn.q_proj.weight "
                                 "has shape [128, 128], expected [128, 64]");

    assert_int_equal(mx_checkpoint_get(ck, "model.layers.0.block_sparse_moe.gate.weight", 1u << MX_DTYPE_BF16, 2,
                                       gate, &t, &err), MX_EFORMAT);
    assert_non_null(strstr(err.msg, "has dtype F32, expected BF16"));

    assert_false(mx_checkpoint_has(ck, "model.layers.99.input_layernorm.weight"));
    const int64_t one[1] = {128};
    assert_int_equal(mx_checkpoint_get(ck, "model.layers.99.input_layernorm.weight", MX_DTYPES_FLOAT, 1, one, &t,
                                       &err), MX_ENOTFOUND);
    assert_non_null(strstr(err.msg, "model.layers.99.input_layernorm.weight"));
    mx_checkpoint_close(ck);
}

/* A copy of tiny whose shards are symlinks and whose index text is edited by `edit`. */
static char *copy_tiny(const char *name, const char *key, const char *shard)
{
    char *dir = path_join(tmp, name);
    mkdir(dir, 0777);
    char *cfg = read_all(GOLDEN "/tiny/config.json", NULL), *p = path_join(dir, "config.json");
    write_bytes(p, cfg, strlen(cfg));
    free(cfg);
    free(p);
    char cwd[4096];
    assert_non_null(getcwd(cwd, sizeof cwd));
    for (int k = 0; k < 3; k++) {
        char src[4400], dst[64];
        snprintf(dst, sizeof dst, "model-%05d-of-00003.safetensors", k);
        snprintf(src, sizeof src, "%s/" GOLDEN "/tiny/%s", cwd, dst);
        p = path_join(dir, dst);
        assert_int_equal(symlink(src, p), 0);
        free(p);
    }
    json_t *idx = json_load_file(GOLDEN "/tiny/model.safetensors.index.json", 0, NULL);
    if (key)
        json_object_set_new(json_object_get(idx, "weight_map"), key, json_string(shard));
    char *text = json_dumps(idx, JSON_INDENT(2));
    json_decref(idx);
    p = path_join(dir, "model.safetensors.index.json");
    write_bytes(p, text, strlen(text));
    free(text);
    free(p);
    return dir;
}

static void expect_open_fail(const char *dir, int code, const char *n1, const char *n2)
{
    mx_checkpoint *ck = (mx_checkpoint *)0x1;
    mx_error err = {0};
    int rc = mx_checkpoint_open(dir, &ck, &err);
    if (rc != code || !strstr(err.msg, n1) || (n2 && !strstr(err.msg, n2)))
        fail_msg("%s: got %d \"%s\", want %d with \"%s\" and \"%s\"", dir, rc, err.msg, code, n1, n2 ? n2 : "");
    assert_null(ck);
}

static void broken_copies(void **state)
{
    (void)state;
    char *d = copy_tiny("intact", NULL, NULL);
    mx_checkpoint_close(open_ok(d));
    free(d);

    d = copy_tiny("extra", "model.layers.0.extra.weight", "model-00000-of-00003.safetensors");
    expect_open_fail(d, MX_EFORMAT, "model.layers.0.extra.weight", "model-00000-of-00003.safetensors");
    free(d);

    /* the real tensor pointed at the wrong shard: also absent from that shard's header */
    d = copy_tiny("moved", "model.embed_tokens.weight", "model-00002-of-00003.safetensors");
    expect_open_fail(d, MX_EFORMAT, "model.embed_tokens.weight", "missing from the shard's header");
    free(d);

    d = copy_tiny("noshard", "model.norm.weight", "model-00007-of-00003.safetensors");
    expect_open_fail(d, MX_ENOTFOUND, "model-00007-of-00003.safetensors does not exist", "model.norm.weight");
    free(d);

    d = copy_tiny("dotdot", "model.norm.weight", "../intact/model-00000-of-00003.safetensors");
    expect_open_fail(d, MX_EFORMAT, "leaves the checkpoint directory", "model.norm.weight");
    free(d);

    d = copy_tiny("absolute", "model.norm.weight", "/etc/passwd");
    expect_open_fail(d, MX_EFORMAT, "leaves the checkpoint directory", "/etc/passwd");
    free(d);

    d = copy_tiny("notstring", NULL, NULL);
    char *p = path_join(d, "model.safetensors.index.json");
    write_bytes(p, "{\"weight_map\": {\"a\": 3}}", 24);
    expect_open_fail(d, MX_EFORMAT, "shard file name is not a string", "a");
    write_bytes(p, "{\"weight_map\": [", 16);
    expect_open_fail(d, MX_EFORMAT, "invalid JSON", "model.safetensors.index.json");
    write_bytes(p, "{\"metadata\": {}}", 16);
    expect_open_fail(d, MX_EFORMAT, "'weight_map' is missing", NULL);
    remove(p);
    expect_open_fail(d, MX_ENOTFOUND, "neither model.safetensors.index.json nor model.safetensors", NULL);
    free(p);
    p = path_join(d, "config.json");
    remove(p);
    expect_open_fail(d, MX_ENOTFOUND, "config.json", NULL);
    write_bytes(p, "{}", 2);
    expect_open_fail(d, MX_EFORMAT, "config.json", "hidden_size");
    free(p);
    free(d);

    d = copy_tiny("badcfg", NULL, NULL);
    p = path_join(d, "config.json");
    char *cfg = read_all(GOLDEN "/tiny/config.json", NULL);
    char *s = strstr(cfg, "\"shared_intermediate_size\": 0");
    assert_non_null(s);
    s[strlen("\"shared_intermediate_size\": ")] = '7';
    write_bytes(p, cfg, strlen(cfg));
    expect_open_fail(d, MX_EUNSUPPORTED, "shared_intermediate_size", "config.json");
    free(cfg);
    free(p);
    free(d);
}

static void single_file_checkpoint(void **state)
{
    (void)state;
    char *d = path_join(tmp, "single");
    mkdir(d, 0777);
    char *cfg = read_all(GOLDEN "/tiny/config.json", NULL), *p = path_join(d, "config.json");
    write_bytes(p, cfg, strlen(cfg));
    free(cfg);
    free(p);
    uint16_t w[128];
    for (int i = 0; i < 128; i++)
        w[i] = mx_f32_to_bf16((float)i);
    mx_st_write_item it = {.name = "model.norm.weight", .dtype = MX_DTYPE_BF16, .ndim = 1, .shape = {128}, .data = w};
    p = path_join(d, "model.safetensors");
    mx_error err = {0};
    assert_int_equal(mx_st_write(p, &it, 1, &err), 0);
    mx_checkpoint *ck = open_ok(d);
    assert_true(mx_checkpoint_has(ck, "model.norm.weight"));
    assert_false(mx_checkpoint_has(ck, "lm_head.weight"));
    mx_tensor t;
    const int64_t shape[1] = {128};
    assert_int_equal(mx_checkpoint_get(ck, "model.norm.weight", MX_DTYPES_FLOAT, 1, shape, &t, &err), 0);
    assert_true(mx_load_as_f32(t.data, t.dtype, 77) == 77.0f);
    mx_checkpoint_close(ck);
    free(p);
    free(d);
}

/* small: the experts of layer 10 span two shards (README); all are reachable. */
static void experts_split_across_shards(void **state)
{
    (void)state;
    mx_checkpoint *ck = open_ok(GOLDEN "/small");
    const char *first = NULL;
    int split = 0;
    for (int i = 0; i < 24; i++) {
        int e = i / 3, w = i % 3 + 1;
        char name[96];
        snprintf(name, sizeof name, "model.layers.10.block_sparse_moe.experts.%d.w%d.weight", e, w);
        const mx_st_entry *en;
        const char *shard;
        mx_error err = {0};
        assert_int_equal(mx_checkpoint_entry(ck, name, &en, &shard, &err), 0);
        if (!first)
            first = shard;
        split |= strcmp(first, shard) != 0;
        mx_tensor t;
        const int64_t shape[2] = {w == 2 ? 128 : 64, w == 2 ? 64 : 128};
        assert_int_equal(mx_checkpoint_get(ck, name, MX_DTYPES_FLOAT, 2, shape, &t, &err), 0);
    }
    assert_true(split);
    mx_checkpoint_close(ck);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(golden_tiny_and_small),
        cmocka_unit_test(typed_gets),
        cmocka_unit_test(broken_copies),
        cmocka_unit_test(single_file_checkpoint),
        cmocka_unit_test(experts_split_across_shards),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
