/* test_tokenizer_stream.c - streaming behaviour and fixed references: the incremental decoder
 * holds bytes until a character is whole, stop strings split across chunks, Split behaviours
 * as documented for the Rust tokenizers crate, the small tokenizer's special ids, and the
 * MiniMax-Text-01 quickstart prompt from the model card. */
#include <jansson.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "core/tokenizer/tok_internal.h"

static mx_tokenizer *tok;
static char dir[64];

static int setup(void **state)
{
    (void)state;
    mx_error err;
    char path[128];
    snprintf(dir, sizeof dir, "/tmp/mx_tok_stream_XXXXXX");
    if (!mkdtemp(dir) || mx_tokenizer_write_small(dir, 1024, &err) < 0)
        return -1;
    snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    return mx_tokenizer_load(path, &tok, &err);
}

static int teardown(void **state)
{
    (void)state;
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    mx_tokenizer_free(tok);
    return system(cmd) == 0 ? 0 : -1;
}

/* The id of a single byte: the vocab key is the byte's GPT-2 byte-level character. */
static int32_t byte_token(unsigned char b)
{
    static const char *const printable = "!\"#$%&'()*+,-./0123456789:;<=>?@ABCDEFGHIJKLMNOPQRSTUVWXYZ[\\]^_`abcdefghijklmnopqrstuvwxyz{|}~";
    if (b < 0x21 || b > 0x7E || !strchr(printable, b))
        return -1;
    char s[2] = { (char)b, 0 };
    return mx_tokenizer_token_id(tok, s);
}

static void test_stream_holds_partial_characters(void **state)
{
    (void)state;
    mx_error err;
    /* "€" is E2 82 AC; its bytes as separate tokens are Ģ (U+0122 = byte 0xE2), Ĥ.. — look them
     * up by their byte-level names */
    int32_t e2 = mx_tokenizer_token_id(tok, "\xc3\xa2"); /* 'â' = byte 0xE2 */
    int32_t x82 = mx_tokenizer_token_id(tok, "\xc4\xa4"); /* U+0124 = byte 0x82 */
    int32_t xac = mx_tokenizer_token_id(tok, "\xc2\xac"); /* '¬' = byte 0xAC */
    int32_t a = byte_token('a');
    assert_true(e2 >= 0 && x82 >= 0 && xac >= 0 && a >= 0);
    mx_detok_stream s;
    mx_text out = { 0 };
    mx_detok_stream_init(&s, tok, 0);
    assert_int_equal(mx_detok_stream_push(&s, a, &out, &err), 0);
    assert_string_equal(out.data, "a");
    assert_int_equal(mx_detok_stream_push(&s, e2, &out, &err), 0);
    assert_int_equal(out.len, 1);
    assert_int_equal(mx_detok_stream_push(&s, x82, &out, &err), 0);
    assert_int_equal(out.len, 1);
    assert_int_equal(mx_detok_stream_push(&s, xac, &out, &err), 0);
    assert_string_equal(out.data, "a\xe2\x82\xac");
    /* a broken sequence: E2 then 'a' -> U+FFFD then 'a'; an unfinished tail at the end -> U+FFFD */
    assert_int_equal(mx_detok_stream_push(&s, e2, &out, &err), 0);
    assert_int_equal(mx_detok_stream_push(&s, a, &out, &err), 0);
    assert_string_equal(out.data, "a\xe2\x82\xac\xef\xbf\xbd" "a");
    assert_int_equal(mx_detok_stream_push(&s, e2, &out, &err), 0);
    assert_int_equal(mx_detok_stream_finish(&s, &out, &err), 0);
    assert_string_equal(out.data, "a\xe2\x82\xac\xef\xbf\xbd" "a\xef\xbf\xbd");
    mx_text_free(&out);
    /* whole-sequence decode agrees */
    int32_t ids[] = { a, e2, x82, xac, e2, a, e2 };
    assert_int_equal(mx_tokenizer_decode(tok, ids, 7, 0, &out, &err), 0);
    assert_string_equal(out.data, "a\xe2\x82\xac\xef\xbf\xbd" "a\xef\xbf\xbd");
    mx_text_free(&out);
}

static void test_stop_strings_across_chunks(void **state)
{
    (void)state;
    mx_error err;
    const char *stops[] = { "</s>", "<end_of_sentence>", "STOP" };
    mx_stop_matcher *m;
    mx_text out = { 0 };
    size_t which = 99;
    assert_int_equal(mx_stop_matcher_new(stops, 3, &m, &err), 0);
    assert_int_equal(mx_stop_matcher_push(m, "Hello <", 7, &out, &which, &err), 0);
    assert_string_equal(out.data, "Hello ");
    assert_int_equal(mx_stop_matcher_push(m, "b>", 2, &out, &which, &err), 0); /* false alarm */
    assert_string_equal(out.data, "Hello <b>");
    assert_int_equal(mx_stop_matcher_push(m, " x</", 4, &out, &which, &err), 0);
    assert_string_equal(out.data, "Hello <b> x");
    assert_int_equal(mx_stop_matcher_push(m, "s", 1, &out, &which, &err), 0);
    assert_int_equal(mx_stop_matcher_push(m, ">tail", 5, &out, &which, &err), 1);
    assert_int_equal(which, 0);
    assert_string_equal(out.data, "Hello <b> x");
    assert_int_equal(mx_stop_matcher_push(m, "more", 4, &out, &which, &err), 1);
    assert_string_equal(out.data, "Hello <b> x");
    mx_stop_matcher_free(m);
    mx_text_free(&out);

    /* no stop: finish releases what was held; the earliest stop wins when two complete at once */
    assert_int_equal(mx_stop_matcher_new(stops, 3, &m, &err), 0);
    assert_int_equal(mx_stop_matcher_push(m, "abc ST", 6, &out, NULL, &err), 0);
    assert_string_equal(out.data, "abc ");
    assert_int_equal(mx_stop_matcher_finish(m, &out, &err), 0);
    assert_string_equal(out.data, "abc ST");
    mx_stop_matcher_free(m);
    mx_text_free(&out);
    assert_int_equal(mx_stop_matcher_new(stops, 3, &m, &err), 0);
    assert_int_equal(mx_stop_matcher_push(m, "x STOP</s>", 10, &out, &which, &err), 1);
    assert_int_equal(which, 2);
    assert_string_equal(out.data, "x ");
    mx_stop_matcher_free(m);
    mx_text_free(&out);
    const char *empty[] = { "" };
    assert_int_equal(mx_stop_matcher_new(empty, 1, &m, &err), MX_EINVAL);
}

/* The Rust tokenizers documentation's SplitDelimiterBehavior example: "the-final--countdown"
 * split on '-'. */
static void test_split_behaviors(void **state)
{
    (void)state;
    static const struct { const char *behavior; const char *expect; } cases[] = {
        { "Removed", "the|final|countdown" },
        { "Isolated", "the|-|final|-|-|countdown" },
        { "MergedWithPrevious", "the-|final-|-|countdown" },
        { "MergedWithNext", "the|-final|-|-countdown" },
        { "Contiguous", "the|-|final|--|countdown" },
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        mx_error err;
        json_t *j = json_pack("{s:s, s:{s:s}, s:s, s:b}", "type", "Split", "pattern", "String", "-",
                              "behavior", cases[c].behavior, "invert", 0);
        tok_pretok p;
        int has_bl = 0;
        assert_int_equal(pretok_parse(&p, j, &has_bl, &err), 0);
        mx_text buf = { 0 };
        tok_spans pieces = { 0 };
        mx_text_append(&buf, "the-final--countdown", 20, &err);
        spans_push(&pieces, 0, 20, &err);
        pcre2_match_data *md = pcre2_match_data_create(8, NULL);
        assert_int_equal(pretok_apply(&p, &buf, &pieces, md, &err), 0);
        char got[64] = "";
        for (size_t i = 0; i < pieces.n; i++)
            snprintf(got + strlen(got), sizeof got - strlen(got), "%s%.*s", i ? "|" : "",
                     (int)pieces.s[i].len, buf.data + pieces.s[i].off);
        assert_string_equal(got, cases[c].expect);
        pcre2_match_data_free(md);
        free(pieces.s);
        mx_text_free(&buf);
        pretok_free(&p);
        json_decref(j);
    }
}

static void test_small_tokenizer_specials(void **state)
{
    (void)state;
    mx_error err;
    assert_int_equal(mx_tokenizer_n_ids(tok), 1024);
    assert_int_equal(mx_tokenizer_token_id(tok, "<beginning_of_sentence>"), 1021);
    assert_int_equal(mx_tokenizer_token_id(tok, "<end_of_sentence>"), 1022);
    assert_int_equal(mx_tokenizer_token_id(tok, "<end_of_document>"), 1023);
    assert_true(mx_tokenizer_is_special(tok, 1022));
    const char *text = "hi<end_of_sentence>";
    mx_tok_ids with = { 0 }, without = { 0 };
    assert_int_equal(mx_tokenizer_encode(tok, text, strlen(text), 1, &with, &err), 0);
    assert_int_equal(mx_tokenizer_encode(tok, text, strlen(text), 0, &without, &err), 0);
    assert_int_equal(with.ids[with.len - 1], 1022);
    for (size_t i = 0; i < without.len; i++)
        assert_true(without.ids[i] < 1021);
    mx_text out = { 0 };
    assert_int_equal(mx_tokenizer_decode(tok, with.ids, with.len, 1, &out, &err), 0);
    assert_string_equal(out.data, "hi");
    mx_text_free(&out);
    assert_int_equal(mx_tokenizer_decode(tok, without.ids, without.len, 1, &out, &err), 0);
    assert_string_equal(out.data, text);
    mx_text_free(&out);
    mx_tok_ids_free(&with);
    mx_tok_ids_free(&without);
    /* the config carries the chat template */
    char path[128];
    snprintf(path, sizeof path, "%s/tokenizer_config.json", dir);
    json_t *cfg = json_load_file(path, 0, NULL);
    assert_non_null(strstr(json_string_value(json_object_get(cfg, "chat_template")), "function_setting=functions"));
    assert_string_equal(json_string_value(json_object_get(cfg, "eos_token")), "<end_of_sentence>");
    json_decref(cfg);
}

/* The model card's quickstart prompt (shared/spec section 8). */
static void test_text01_quickstart_prompt(void **state)
{
    (void)state;
    mx_error err;
    mx_text out = { 0 };
    const char *msgs = "[{\"role\": \"system\", \"content\": [{\"type\": \"text\", \"text\": \"You are a helpful assistant "
                       "created by MiniMax based on MiniMax-Text-01 model.\"}]}, {\"role\": \"user\", \"content\": "
                       "[{\"type\": \"text\", \"text\": \"Hello!\"}]}]";
    assert_int_equal(mx_chat_render_json(MX_CHAT_MINIMAX_TEXT01, msgs, NULL, 1, &out, &err), 0);
    assert_string_equal(out.data,
                        "<beginning_of_sentence>system ai_setting=assistant\nYou are a helpful assistant created by "
                        "MiniMax based on MiniMax-Text-01 model.<end_of_sentence>\n<beginning_of_sentence>user "
                        "name=user\nHello!<end_of_sentence>\n<beginning_of_sentence>ai name=assistant\n");
    mx_text plain = { 0 };
    assert_int_equal(mx_chat_render_json(MX_CHAT_MINIMAX_TEXT01,
                                         "[{\"role\": \"system\", \"content\": \"You are a helpful assistant created by "
                                         "MiniMax based on MiniMax-Text-01 model.\"}, {\"role\": \"user\", \"content\": "
                                         "\"Hello!\"}]", "null", 1, &plain, &err), 0);
    assert_string_equal(plain.data, out.data); /* string content == one text part */
    mx_text_free(&plain);
    mx_text_free(&out);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_stream_holds_partial_characters), cmocka_unit_test(test_stop_strings_across_chunks),
        cmocka_unit_test(test_split_behaviors),                 cmocka_unit_test(test_small_tokenizer_specials),
        cmocka_unit_test(test_text01_quickstart_prompt),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
