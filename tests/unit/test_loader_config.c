/* test_loader_config.c - config.json parsing against the golden fixtures' configs, defaults
 * for absent keys, one distinct error per bad value (naming the key), serialisation back to
 * the released key layout, and the parameter count of the released model from the spec. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <jansson.h>

#include "core/config.h"
#include "loader_testutil.h"

static void load_ok(const char *path, mx_config *c)
{
    mx_error err = {0};
    int rc = mx_config_load(path, c, &err);
    if (rc)
        fail_msg("%s", err.msg);
    rc = mx_config_validate(c, &err);
    if (rc)
        fail_msg("%s", err.msg);
}

static void golden_tiny(void **state)
{
    (void)state;
    mx_config c;
    load_ok(GOLDEN "/tiny/config.json", &c);
    assert_string_equal(c.architecture, "MiniMaxText01ForCausalLM");
    assert_string_equal(c.model_type, "minimax_text_01");
    assert_int_equal(c.hidden_size, 128);
    assert_int_equal(c.intermediate_size, 256);
    assert_int_equal(c.num_hidden_layers, 8);
    assert_int_equal(c.num_attention_heads, 4);
    assert_int_equal(c.num_key_value_heads, 2);
    assert_int_equal(c.head_dim, 32);
    assert_int_equal(c.rotary_dim, 16);
    assert_true(c.rope_theta == 10000000.0);
    const unsigned char types[8] = {0, 0, 0, 1, 0, 0, 0, 1};
    assert_memory_equal(c.attn_type, types, 8);
    assert_int_equal(c.num_local_experts, 4);
    assert_int_equal(c.num_experts_per_tok, 2);
    assert_true(c.rms_norm_eps == 1e-5);
    assert_int_equal(c.vocab_size, 512);
    assert_true(c.postnorm);
    assert_true(c.alpha_linear == 3.5565588200778455 && c.alpha_full == 3.5565588200778455 &&
                c.alpha_mlp == 3.5565588200778455);
    assert_true(c.beta_linear == 1.0 && c.beta_full == 1.0 && c.beta_mlp == 1.0);
    assert_int_equal(c.shared_intermediate_size, 0);
    assert_false(c.tie_word_embeddings);
    assert_int_equal(c.max_position_embeddings, 10240000);
    assert_int_equal(c.bos_token_id, -1);
    assert_int_equal(c.eos_token_id, -1);
    assert_string_equal(c.hidden_act, "silu");
    assert_int_equal(mx_config_attn_width(&c), 128);
    assert_int_equal(mx_config_kv_width(&c), 64);
}

static void golden_small(void **state)
{
    (void)state;
    mx_config c;
    load_ok(GOLDEN "/small/config.json", &c);
    assert_int_equal(c.hidden_size, 128);
    assert_int_equal(c.num_attention_heads, 8);
    assert_int_equal(c.num_hidden_layers, 16);
    assert_int_equal(c.intermediate_size, 64);
    assert_int_equal(c.vocab_size, 1024);
    assert_int_equal(mx_config_attn_width(&c), 256);
    for (int l = 0; l < 16; l++)
        assert_int_equal(c.attn_type[l], (l % 8) == 7 ? MX_ATTN_SOFTMAX : MX_ATTN_LIGHTNING);
    /* README: linear 3.25/1.0, full 3.75/0.875, mlp 3.5/1.125 */
    assert_true(mx_config_alpha(&c, 0) == 3.25 && mx_config_beta(&c, 0) == 1.0);
    assert_true(mx_config_alpha(&c, 7) == 3.75 && mx_config_beta(&c, 7) == 0.875);
    assert_true(c.alpha_mlp == 3.5 && c.beta_mlp == 1.125);
}

/* The index's total_size counts BF16 weights at 2 bytes and the F32 router gates at 4. */
static void param_count_matches_fixture_sizes(void **state)
{
    (void)state;
    const char *names[2] = {"tiny", "small"};
    for (int i = 0; i < 2; i++) {
        char path[256];
        mx_config c;
        snprintf(path, sizeof path, GOLDEN "/%s/config.json", names[i]);
        load_ok(path, &c);
        snprintf(path, sizeof path, GOLDEN "/%s/model.safetensors.index.json", names[i]);
        json_t *idx = json_load_file(path, 0, NULL);
        assert_non_null(idx);
        int64_t total = json_integer_value(json_object_get(json_object_get(idx, "metadata"), "total_size"));
        json_decref(idx);
        int64_t gates = (int64_t)c.num_hidden_layers * c.num_local_experts * c.hidden_size;
        assert_int_equal(2 * mx_config_param_count(&c) + 2 * gates, total);
    }
}

/* Spec section 1: the released model has 456,089,655,296 parameters. */
static void released_param_count(void **state)
{
    (void)state;
    char json[2048];
    int n = snprintf(json, sizeof json,
                     "{\"architectures\":[\"MiniMaxText01ForCausalLM\"],\"hidden_size\":6144,"
                     "\"intermediate_size\":9216,\"num_hidden_layers\":80,\"num_attention_heads\":64,"
                     "\"num_key_value_heads\":8,\"head_dim\":128,\"rotary_dim\":64,\"rope_theta\":10000000,"
                     "\"num_local_experts\":32,\"num_experts_per_tok\":2,\"vocab_size\":200064,"
                     "\"postnorm\":true,\"attn_type_list\":[");
    for (int l = 0; l < 80; l++)
        n += snprintf(json + n, sizeof json - (size_t)n, "%s%d", l ? "," : "", (l + 1) % 8 == 0);
    snprintf(json + n, sizeof json - (size_t)n, "]}");
    mx_config c;
    mx_error err = {0};
    assert_int_equal(mx_config_parse(json, &c, &err), 0);
    assert_int_equal(mx_config_validate(&c, &err), 0);
    assert_int_equal(mx_config_param_count(&c), 456089655296LL);
    assert_int_equal(mx_config_attn_width(&c), 8192);
}

static void defaults(void **state)
{
    (void)state;
    const char *json = "{\"hidden_size\":64,\"intermediate_size\":32,\"num_hidden_layers\":2,"
                       "\"num_attention_heads\":4,\"num_local_experts\":2,\"vocab_size\":100,"
                       "\"attn_type_list\":[0,1],\"bos_token_id\":null}";
    mx_config c;
    mx_error err = {0};
    assert_int_equal(mx_config_parse(json, &c, &err), 0);
    assert_int_equal(mx_config_validate(&c, &err), 0);
    assert_int_equal(c.head_dim, 16);
    assert_int_equal(c.rotary_dim, 16);
    assert_int_equal(c.num_key_value_heads, 4);
    assert_int_equal(c.num_experts_per_tok, 2);
    assert_true(c.alpha_linear == 1.0 && c.beta_full == 1.0 && c.alpha_mlp == 1.0 && c.beta_mlp == 1.0);
    assert_false(c.postnorm);
    assert_int_equal(c.bos_token_id, -1);
    assert_int_equal(c.eos_token_id, -1);
    assert_int_equal(c.shared_intermediate_size, 0);
    assert_int_equal(c.max_position_embeddings, 10240000);
    assert_true(c.rms_norm_eps == 1e-5);
    assert_string_equal(c.hidden_act, "silu");
    assert_string_equal(c.architecture, "MiniMaxText01ForCausalLM");
    assert_false(c.tie_word_embeddings);
}

typedef struct bad_case {
    const char *key;   /* key to replace in the tiny config (NULL: whole text below) */
    const char *value; /* JSON value text, or NULL to delete the key */
    int code;
    const char *needle;
} bad_case;

static const bad_case bad_cases[] = {
    {"hidden_size", "\"128\"", MX_EFORMAT, "'hidden_size' must be an integer"},
    {"hidden_size", "0", MX_ERANGE, "'hidden_size' = 0 must be positive"},
    {"hidden_size", "1.5", MX_EFORMAT, "'hidden_size' must be an integer"},
    {"intermediate_size", "-1", MX_ERANGE, "'intermediate_size'"},
    {"vocab_size", NULL, MX_EFORMAT, "required key 'vocab_size' is missing"},
    {"num_attention_heads", "3", MX_EINVAL, "not a multiple of 'num_key_value_heads'"},
    {"num_key_value_heads", "0", MX_ERANGE, "'num_key_value_heads'"},
    {"rotary_dim", "15", MX_EINVAL, "'rotary_dim' = 15"},
    {"rotary_dim", "64", MX_EINVAL, "'rotary_dim' = 64"},
    {"head_dim", "\"x\"", MX_EFORMAT, "'head_dim' must be an integer"},
    {"attn_type_list", "[0,0,0,1]", MX_EINVAL, "'attn_type_list' has 4 entries"},
    {"attn_type_list", "[0,0,0,2,0,0,0,1]", MX_EINVAL, "'attn_type_list' entry 3"},
    {"attn_type_list", "{}", MX_EFORMAT, "'attn_type_list' must be a list"},
    {"num_experts_per_tok", "0", MX_ERANGE, "'num_experts_per_tok' = 0"},
    {"num_experts_per_tok", "5", MX_ERANGE, "'num_experts_per_tok' = 5"},
    {"rms_norm_eps", "0", MX_ERANGE, "'rms_norm_eps'"},
    {"rms_norm_eps", "\"tiny\"", MX_EFORMAT, "'rms_norm_eps' must be a number"},
    {"rope_theta", "-1", MX_ERANGE, "'rope_theta'"},
    {"shared_intermediate_size", "128", MX_EUNSUPPORTED, "'shared_intermediate_size'"},
    {"hidden_act", "\"gelu\"", MX_EUNSUPPORTED, "'hidden_act' = \"gelu\""},
    {"hidden_act", "7", MX_EFORMAT, "'hidden_act' must be a string"},
    {"num_hidden_layers", "2000", MX_ERANGE, "'num_hidden_layers' = 2000"},
    {"postnorm", "\"yes\"", MX_EFORMAT, "'postnorm' must be true or false"},
    {"bos_token_id", "512", MX_ERANGE, "'bos_token_id'"},
    {"architectures", "\"MiniMaxText01ForCausalLM\"", MX_EFORMAT, "'architectures'"},
    {"max_position_embeddings", "0", MX_ERANGE, "'max_position_embeddings'"},
    {"hidden_size", "99999999999", MX_ERANGE, "'hidden_size' = 99999999999"},
};

static void bad_values(void **state)
{
    (void)state;
    json_t *base = json_load_file(GOLDEN "/tiny/config.json", 0, NULL);
    assert_non_null(base);
    for (size_t i = 0; i < sizeof bad_cases / sizeof bad_cases[0]; i++) {
        const bad_case *b = &bad_cases[i];
        json_t *j = json_deep_copy(base);
        if (b->value)
            json_object_set_new(j, b->key, json_loads(b->value, JSON_DECODE_ANY, NULL));
        else
            json_object_del(j, b->key);
        char *text = json_dumps(j, 0);
        json_decref(j);
        mx_config c;
        mx_error err = {0};
        int rc = mx_config_parse(text, &c, &err);
        if (rc == 0)
            rc = mx_config_validate(&c, &err);
        free(text);
        if (rc != b->code || !strstr(err.msg, b->needle))
            fail_msg("case %zu (%s = %s): got %d \"%s\", want %d containing \"%s\"", i, b->key,
                     b->value ? b->value : "(deleted)", rc, err.msg, b->code, b->needle);
    }
    json_decref(base);
}

static void bad_documents(void **state)
{
    (void)state;
    mx_config c;
    mx_error err = {0};
    assert_int_equal(mx_config_parse("{\"hidden_size\": 12", &c, &err), MX_EFORMAT);
    assert_non_null(strstr(err.msg, "invalid JSON"));
    assert_int_equal(mx_config_parse("[1, 2]", &c, &err), MX_EFORMAT);
    assert_non_null(strstr(err.msg, "top level must be a JSON object"));
    assert_int_equal(mx_config_parse("{\"hidden_size\":1,\"hidden_size\":2}", &c, &err), MX_EFORMAT);
    assert_int_equal(mx_config_load("/nonexistent/config.json", &c, &err), MX_ENOTFOUND);
    assert_non_null(strstr(err.msg, "/nonexistent/config.json"));
}

/* Every key of the golden config.json is written, and the result parses back identically. */
static void to_json_layout(void **state)
{
    (void)state;
    const char *paths[2] = {GOLDEN "/tiny/config.json", GOLDEN "/small/config.json"};
    for (int i = 0; i < 2; i++) {
        mx_config c, back;
        load_ok(paths[i], &c);
        char *text = mx_config_to_json(&c);
        assert_non_null(text);
        json_t *golden = json_load_file(paths[i], 0, NULL), *ours = json_loads(text, 0, NULL);
        assert_non_null(ours);
        const char *key;
        json_t *v;
        json_object_foreach(golden, key, v) {
            json_t *o = json_object_get(ours, key);
            if (!o)
                fail_msg("key %s missing from mx_config_to_json output", key);
            if (!json_equal(o, v) && !(json_is_number(o) && json_is_number(v) &&
                                       json_number_value(o) == json_number_value(v)))
                fail_msg("key %s differs from the golden config", key);
        }
        assert_int_equal(json_object_size(ours), json_object_size(golden));
        json_decref(golden);
        json_decref(ours);
        mx_error err = {0};
        memset(&back, 0x55, sizeof back);
        assert_int_equal(mx_config_parse(text, &back, &err), 0);
        free(text);
        assert_memory_equal(&c, &back, sizeof c);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(golden_tiny),
        cmocka_unit_test(golden_small),
        cmocka_unit_test(param_count_matches_fixture_sizes),
        cmocka_unit_test(released_param_count),
        cmocka_unit_test(defaults),
        cmocka_unit_test(bad_values),
        cmocka_unit_test(bad_documents),
        cmocka_unit_test(to_json_layout),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
