/* test_tokenizer_errors.c - bad input to the tokenizer gives a clear error, never a crash or
 * wrong ids: invalid UTF-8 text, truncated and malformed tokenizer.json, unsupported
 * components, unknown ids, bad chat messages. */
#include <jansson.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "core/tokenizer/tokenizer.h"

static char dir[64];
static json_t *good; /* the small tokenizer's tokenizer.json, edited per test */

static int setup(void **state)
{
    (void)state;
    mx_error err;
    snprintf(dir, sizeof dir, "/tmp/mx_tok_err_XXXXXX");
    if (!mkdtemp(dir) || mx_tokenizer_write_small(dir, 600, &err) < 0)
        return -1;
    char path[128];
    snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    good = json_load_file(path, 0, NULL);
    return good ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    json_decref(good);
    return system(cmd) == 0 ? 0 : -1;
}

/* Loads good with one edit applied; returns the load result and the error. */
static int load_edited(json_t *edited, mx_tokenizer **t, mx_error *err)
{
    char *s = json_dumps(edited, 0);
    int rc = mx_tokenizer_load_json(s, strlen(s), t, err);
    free(s);
    return rc;
}

static void test_invalid_utf8_text(void **state)
{
    (void)state;
    mx_tokenizer *t;
    mx_error err;
    char path[128];
    snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    assert_int_equal(mx_tokenizer_load(path, &t, &err), 0);
    static const char *const bad[] = { "abc\xff", "\xc3", "a\xe2\x82", "\xed\xa0\x80 surrogate", "\xc0\xaf overlong",
                                       "\xf4\x90\x80\x80 too big" };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        mx_tok_ids ids = { 0 };
        assert_int_equal(mx_tokenizer_encode(t, bad[i], strlen(bad[i]), 1, &ids, &err), MX_EINVAL);
        assert_non_null(strstr(err.msg, "not valid UTF-8"));
        mx_tok_ids_free(&ids);
    }
    mx_tokenizer_free(t);
}

static void test_truncated_json(void **state)
{
    (void)state;
    char *s = json_dumps(good, 0);
    size_t n = strlen(s);
    /* every prefix length class: inside the header, the vocab, the merges, the tail */
    for (size_t cut = 0; cut < n; cut += 1 + cut / 3) {
        mx_tokenizer *t = (mx_tokenizer *)1;
        mx_error err;
        assert_int_equal(mx_tokenizer_load_json(s, cut, &t, &err), MX_EFORMAT);
        assert_null(t);
        assert_non_null(strstr(err.msg, "invalid JSON"));
    }
    free(s);
}

static void expect_error(json_t *edited, int code, const char *needle)
{
    mx_tokenizer *t;
    mx_error err;
    assert_int_equal(load_edited(edited, &t, &err), code);
    assert_null(t);
    if (!strstr(err.msg, needle))
        fail_msg("error '%s' does not mention '%s'", err.msg, needle);
    json_decref(edited);
}

static void test_malformed_components(void **state)
{
    (void)state;
    json_t *j;
    j = json_deep_copy(good);
    json_object_set_new(json_object_get(j, "model"), "type", json_string("WordPiece"));
    expect_error(j, MX_EUNSUPPORTED, "WordPiece");

    j = json_deep_copy(good);
    json_object_set_new(j, "pre_tokenizer", json_pack("{s:s, s:s}", "type", "Metaspace", "replacement", "_"));
    expect_error(j, MX_EUNSUPPORTED, "Metaspace");

    j = json_deep_copy(good);
    json_object_set_new(j, "normalizer", json_pack("{s:s}", "type", "BertNormalizer"));
    expect_error(j, MX_EUNSUPPORTED, "BertNormalizer");

    j = json_deep_copy(good);
    json_object_set_new(j, "decoder", json_pack("{s:s}", "type", "WordPiece"));
    expect_error(j, MX_EUNSUPPORTED, "decoder");

    j = json_deep_copy(good);
    json_object_set_new(json_object_get(j, "model"), "dropout", json_real(0.1));
    expect_error(j, MX_EUNSUPPORTED, "dropout");

    j = json_deep_copy(good);
    json_array_append_new(json_object_get(json_object_get(j, "model"), "merges"), json_string("zzzq xyzzy"));
    expect_error(j, MX_EFORMAT, "not in the vocab");

    j = json_deep_copy(good);
    json_array_append_new(json_object_get(json_object_get(j, "model"), "merges"), json_integer(3));
    expect_error(j, MX_EFORMAT, "merges[");

    j = json_deep_copy(good);
    json_object_del(json_object_get(json_object_get(j, "model"), "vocab"), "A");
    expect_error(j, MX_EFORMAT, "byte 0x41");

    j = json_deep_copy(good);
    json_object_set_new(json_object_get(json_object_get(j, "model"), "vocab"), "A", json_string("x"));
    expect_error(j, MX_EFORMAT, "not an integer");

    j = json_deep_copy(good);
    json_object_set_new(json_object_get(json_object_get(j, "model"), "vocab"), "A", json_integer(-5));
    expect_error(j, MX_EFORMAT, "outside");

    j = json_deep_copy(good);
    json_object_set_new(j, "pre_tokenizer", json_pack("{s:s, s:{s:s}, s:s}", "type", "Split", "pattern", "Regex",
                                                       "(unclosed", "behavior", "Isolated"));
    expect_error(j, MX_EUNSUPPORTED, "regex");

    j = json_deep_copy(good);
    json_object_set_new(j, "pre_tokenizer", json_pack("{s:s, s:{s:s}, s:s}", "type", "Split", "pattern", "String",
                                                       " ", "behavior", "Sideways"));
    expect_error(j, MX_EUNSUPPORTED, "Sideways");

    j = json_deep_copy(good);
    json_object_set_new(j, "added_tokens", json_pack("[{s:i}]", "id", 3));
    expect_error(j, MX_EFORMAT, "added_tokens[0]");

    expect_error(json_array(), MX_EFORMAT, "not an object");
}

static void test_missing_file(void **state)
{
    (void)state;
    mx_tokenizer *t;
    mx_error err;
    assert_int_equal(mx_tokenizer_load("/nonexistent/tokenizer.json", &t, &err), MX_EIO);
    assert_non_null(strstr(err.msg, "/nonexistent/tokenizer.json"));
}

static void test_unknown_ids(void **state)
{
    (void)state;
    mx_tokenizer *t;
    mx_error err;
    assert_int_equal(load_edited(good, &t, &err), 0);
    int32_t n = mx_tokenizer_n_ids(t);
    assert_int_equal(n, 600);
    int32_t ids[][2] = { { 65, -1 }, { 65, n }, { 65, 1 << 30 } };
    for (size_t i = 0; i < 3; i++) {
        mx_text out = { 0 };
        assert_int_equal(mx_tokenizer_decode(t, ids[i], 2, 0, &out, &err), MX_ERANGE);
        assert_non_null(strstr(err.msg, "not defined"));
        mx_text_free(&out);
        mx_detok_stream s;
        mx_detok_stream_init(&s, t, 0);
        assert_int_equal(mx_detok_stream_push(&s, ids[i][1], &out, &err), MX_ERANGE);
        mx_text_free(&out);
    }
    /* an id inside the range that no token uses (the gap below the specials) */
    int32_t gap = n - 4;
    mx_text out = { 0 };
    assert_int_equal(mx_tokenizer_decode(t, &gap, 1, 0, &out, &err), MX_ERANGE);
    mx_text_free(&out);
    mx_tokenizer_free(t);
}

static void test_bad_chat_messages(void **state)
{
    (void)state;
    mx_error err;
    mx_text out = { 0 };
    static const char *const bad[] = {
        "{\"role\": \"user\"}",
        "[{\"role\": \"wizard\", \"content\": \"hi\"}]",
        "[{\"content\": \"hi\"}]",
        "[{\"role\": \"user\", \"content\": []}]",
        "[{\"role\": \"user\", \"content\": [{\"type\": \"text\"}]}]",
        "[{\"role\": \"function\", \"content\": \"{}\"}]",
        "[{\"role\": \"user\", \"content\": 5}]",
        "[{\"role\": \"user\", \"content\": \"hi\"",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        assert_int_equal(mx_chat_render_json(MX_CHAT_MINIMAX_TEXT01, bad[i], NULL, 1, &out, &err), MX_EINVAL);
        assert_int_equal(out.len, 0);
    }
    assert_int_equal(mx_chat_render_json(MX_CHAT_MINIMAX_M1, "[{\"role\": \"tool\", \"content\": \"x\"}]", NULL, 1,
                                         &out, &err), MX_EINVAL);
    assert_int_equal(mx_chat_render_json(MX_CHAT_MINIMAX_TEXT01, "[]", "{\"not\": \"a list\"}", 1, &out, &err),
                     MX_EINVAL);
    mx_chat_format f;
    assert_int_equal(mx_chat_format_from_name("chatml", &f, &err), MX_EINVAL);
    mx_text_free(&out);
}

static void test_bad_small_sizes(void **state)
{
    (void)state;
    mx_error err;
    assert_int_equal(mx_tokenizer_write_small(dir, 100, &err), MX_ERANGE);
    assert_int_equal(mx_tokenizer_write_small("/nonexistent/dir", 600, &err), MX_EIO);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_invalid_utf8_text),    cmocka_unit_test(test_truncated_json),
        cmocka_unit_test(test_malformed_components), cmocka_unit_test(test_missing_file),
        cmocka_unit_test(test_unknown_ids),          cmocka_unit_test(test_bad_chat_messages),
        cmocka_unit_test(test_bad_small_sizes),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
