/* tok_small.c - writes a small byte-level BPE tokenizer (tokenizer.json + tokenizer_config.json)
 * for the random-weight models `mx make-model` creates: 256 byte tokens, merges learned by
 * plain BPE training on a fixed built-in text (so the output is deterministic), and the three
 * MiniMax special tokens at the top ids. Not a real MiniMax tokenizer. */
#include "core/tokenizer/tok_internal.h"

#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The MiniMax-Text-01 chat template (also in tests/tokenizer/templates/minimax-text-01.jinja). */
static const char text01_template[] =
    "{% for message in messages %}{% if message['role'] == 'system' %}{{ '<beginning_of_sentenc"
    "e>system ai_setting=assistant\\n' + message['content'][0]['text'] + '<end_of_sentence>\\n'}}"
    "{% elif message['role'] == 'user' %}{{ '<beginning_of_sentence>user name=user\\n' + message"
    "['content'][0]['text'] + '<end_of_sentence>\\n'}}{% elif message['role'] == 'assistant' %}{"
    "{ '<beginning_of_sentence>ai name=assistant\\n' }}{% for content in message['content'] | se"
    "lectattr('type', 'equalto', 'text') %}{% generation %}{{ content['text'] }}{% endgeneratio"
    "n %}{% endfor %}{{ '<end_of_sentence>\\n' }}{% elif message['role'] == 'function' %}{{ '<be"
    "ginning_of_sentence>system function_response=functions\\n' + '{\"name\": \"' + message['name']"
    " + '\", \"response\": ' + message['content'][0]['text'] + '}' + '<end_of_sentence>\\n'}}{% end"
    "if %}{% endfor %}{% if tools %}{% for function in tools %}{{ '<beginning_of_sentence>syste"
    "m function_setting=functions\\n' + function | tojson + '<end_of_sentence>\\n'}}{% endfor %}{"
    "% endif %}{% if add_generation_prompt %}{{ '<beginning_of_sentence>ai name=assistant\\n' }}"
    "{% endif %}";

static const char training_text[] =
    "The quick brown fox jumps over the lazy dog. A tokenizer turns text into numbers that a model "
    "can read, and turns the numbers it writes back into text. Byte pair encoding starts from single "
    "bytes and merges the pair that occurs most often, again and again, until the vocabulary is full. "
    "Hello, world! How are you today? I am fine, thank you. What is the weather like in Shanghai? "
    "It is sunny and warm, about twenty five degrees. The model answers questions, writes code, and "
    "translates between languages. for (int i = 0; i < n; i++) { sum += x[i] * y[i]; } return sum; "
    "def attention(q, k, v): return softmax(q @ k.T / sqrt(d)) @ v\n"
    "import numpy as np\nprint('hello world')\n"
    "MiniMax-Text-01 uses lightning attention and softmax attention layers with a mixture of experts. "
    "Each token is routed to two of the thirty two experts in every layer of the network. "
    "你好，世界。今天天气很好。我们的模型可以理解中文和英文。人工智能正在改变世界。 "
    "こんにちは、世界。日本語のテキストです。 1234567890 2024-01-15 3.14159 "
    "the the the and and and of of of to to to in in in is is is that that that it it it "
    "was was for for on on are are with with as as they they be be at at one one have have this this";

#define SPECIALS 3
static const char *const special_tokens[SPECIALS] = {
    "<beginning_of_sentence>", "<end_of_sentence>", "<end_of_document>"
};

/* Splits on the same lines as the written pre-tokenizer, roughly: an optional space followed by
 * letters (any non-ASCII byte counts as a letter here), a run of digits, or one other byte. */
static int is_letter(unsigned char c)
{
    return c >= 0x80 || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

static size_t next_word(const unsigned char *s, size_t n, size_t i)
{
    size_t j = i;
    if (s[j] == ' ' && j + 1 < n)
        j++;
    if (is_letter(s[j])) {
        while (j < n && is_letter(s[j]))
            j++;
        return j;
    }
    if (s[j] >= '0' && s[j] <= '9') {
        while (j < n && s[j] >= '0' && s[j] <= '9')
            j++;
        return j;
    }
    return j + 1;
}

typedef struct {
    int32_t *sym; /* token ids */
    size_t n;
} word;

/* Byte-level spelling of raw bytes into o. */
static int spell(mx_text *o, const unsigned char *b, size_t n, mx_error *err)
{
    for (size_t i = 0; i < n; i++) {
        uint32_t c = byte_level_char(b[i]);
        char u[2] = { (char)(c < 0x80 ? c : 0xC0 | (c >> 6)), (char)(0x80 | (c & 0x3F)) };
        if (mx_text_append(o, u, c < 0x80 ? 1 : 2, err) < 0)
            return err->code;
    }
    return 0;
}

typedef struct {
    mx_text *tok;   /* raw bytes of each id */
    size_t n_tok;
    json_t *merges;
} trained;

static int train(int n_merges, trained *tr, mx_error *err)
{
    const unsigned char *s = (const unsigned char *)training_text;
    size_t n = sizeof training_text - 1, nw = 0;
    word *w = calloc(n, sizeof *w);
    tr->tok = calloc(256 + (size_t)n_merges, sizeof *tr->tok);
    tr->merges = json_array();
    if (!w || !tr->tok || !tr->merges)
        return mx_fail(err, MX_ENOMEM, "small tokenizer: out of memory");
    for (int b = 0; b < 256; b++) {
        unsigned char c = (unsigned char)b;
        if (mx_text_append(&tr->tok[b], &c, 1, err) < 0)
            return err->code;
    }
    tr->n_tok = 256;
    for (size_t i = 0; i < n;) {
        size_t j = next_word(s, n, i);
        w[nw].sym = malloc((j - i) * sizeof(int32_t));
        if (!w[nw].sym)
            return mx_fail(err, MX_ENOMEM, "small tokenizer: out of memory");
        for (size_t k = i; k < j; k++)
            w[nw].sym[w[nw].n++] = s[k];
        nw++;
        i = j;
    }
    int rc = 0;
    for (int m = 0; m < n_merges && rc == 0; m++) {
        /* count adjacent pairs; the most frequent (ties: lowest ids) is merged next */
        mx_pairmap counts = { 0 };
        int32_t best_a = -1, best_b = -1;
        uint32_t best = 1;
        for (size_t k = 0; k < nw && rc == 0; k++)
            for (size_t i = 0; i + 1 < w[k].n && rc == 0; i++) {
                uint32_t c = 0;
                int32_t unused;
                int32_t a = w[k].sym[i], b = w[k].sym[i + 1];
                pairmap_get(&counts, a, b, &c, &unused);
                rc = pairmap_put(&counts, a, b, c + 1, 0, err);
                if (c + 1 > best || (c + 1 == best && best_a >= 0 && (a < best_a || (a == best_a && b < best_b)))) {
                    best = c + 1;
                    best_a = a;
                    best_b = b;
                }
            }
        pairmap_free(&counts);
        if (rc < 0 || best_a < 0)
            break;
        int32_t id = (int32_t)tr->n_tok++;
        mx_text sp = { 0 };
        rc = mx_text_append(&tr->tok[id], tr->tok[best_a].data, tr->tok[best_a].len, err);
        if (rc == 0)
            rc = mx_text_append(&tr->tok[id], tr->tok[best_b].data, tr->tok[best_b].len, err);
        if (rc == 0)
            rc = spell(&sp, (const unsigned char *)tr->tok[best_a].data, tr->tok[best_a].len, err);
        if (rc == 0)
            rc = mx_text_append(&sp, " ", 1, err);
        if (rc == 0)
            rc = spell(&sp, (const unsigned char *)tr->tok[best_b].data, tr->tok[best_b].len, err);
        if (rc == 0)
            rc = json_array_append_new(tr->merges, json_stringn(sp.data, sp.len)) ? MX_ENOMEM : 0;
        mx_text_free(&sp);
        for (size_t k = 0; k < nw; k++) {
            size_t o = 0;
            for (size_t i = 0; i < w[k].n; i++) {
                if (i + 1 < w[k].n && w[k].sym[i] == best_a && w[k].sym[i + 1] == best_b) {
                    w[k].sym[o++] = id;
                    i++;
                } else
                    w[k].sym[o++] = w[k].sym[i];
            }
            w[k].n = o;
        }
    }
    for (size_t k = 0; k < nw; k++)
        free(w[k].sym);
    free(w);
    return rc;
}

static json_t *pre_tokenizer(void)
{
    const char *re = "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
    return json_pack("{s:s, s:[{s:s, s:{s:s}, s:s, s:b}, {s:s, s:b, s:b, s:b}]}", "type", "Sequence",
                     "pretokenizers", "type", "Split", "pattern", "Regex", re, "behavior", "Isolated",
                     "invert", 0, "type", "ByteLevel", "add_prefix_space", 0, "trim_offsets", 0,
                     "use_regex", 0);
}

static int write_json(const char *dir, const char *name, json_t *j, mx_error *err)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    if (!j)
        return mx_fail(err, MX_ENOMEM, "%s: out of memory", path);
    int rc = json_dump_file(j, path, JSON_INDENT(1) | JSON_ENSURE_ASCII);
    json_decref(j);
    return rc ? mx_fail(err, MX_EIO, "%s: cannot write: %s", path, strerror(errno)) : 0;
}

int mx_tokenizer_write_small(const char *dir, int vocab_size, mx_error *err)
{
    mx_error local;
    if (!err)
        err = &local;
    if (vocab_size < 256 + SPECIALS || vocab_size > (1 << 22))
        return mx_fail(err, MX_ERANGE, "small tokenizer: vocab_size %d outside %d..%d", vocab_size,
                       256 + SPECIALS, 1 << 22);
    trained tr = { 0 };
    int rc = train(vocab_size - 256 - SPECIALS, &tr, err);
    json_t *vocab = json_object(), *added = json_array();
    for (size_t id = 0; rc == 0 && id < tr.n_tok; id++) {
        mx_text sp = { 0 };
        rc = spell(&sp, (const unsigned char *)tr.tok[id].data, tr.tok[id].len, err);
        if (rc == 0 && json_object_setn_new(vocab, sp.data, sp.len, json_integer((json_int_t)id)))
            rc = mx_fail(err, MX_ENOMEM, "small tokenizer: out of memory");
        mx_text_free(&sp);
    }
    for (int k = 0; rc == 0 && k < SPECIALS; k++)
        json_array_append_new(added, json_pack("{s:i, s:s, s:b, s:b, s:b, s:b, s:b}", "id",
                                               vocab_size - SPECIALS + k, "content", special_tokens[k],
                                               "single_word", 0, "lstrip", 0, "rstrip", 0,
                                               "normalized", 0, "special", 1));
    if (rc == 0) {
        json_t *tok = json_pack("{s:s, s:n, s:n, s:o, s:n, s:o, s:o, s:n, s:{s:s, s:b, s:b, s:b}}",
                                "version", "1.0", "truncation", "padding", "added_tokens", added,
                                "normalizer", "pre_tokenizer", pre_tokenizer(), "model",
                                json_pack("{s:s, s:n, s:n, s:n, s:n, s:b, s:b, s:b, s:O, s:O}", "type", "BPE",
                                          "dropout", "unk_token", "continuing_subword_prefix",
                                          "end_of_word_suffix", "fuse_unk", 0, "byte_fallback", 0,
                                          "ignore_merges", 0, "vocab", vocab, "merges", tr.merges),
                                "post_processor", "decoder", "type", "ByteLevel", "add_prefix_space", 0,
                                "trim_offsets", 0, "use_regex", 0);
        added = NULL;
        rc = write_json(dir, "tokenizer.json", tok, err);
    }
    if (rc == 0)
        rc = write_json(dir, "tokenizer_config.json",
                        json_pack("{s:b, s:s, s:s, s:s, s:b, s:i, s:s, s:s}", "add_prefix_space", 0,
                                  "bos_token", special_tokens[0], "eos_token", special_tokens[1],
                                  "unk_token", special_tokens[2], "clean_up_tokenization_spaces", 0,
                                  "model_max_length", 40960000, "tokenizer_class", "GPT2Tokenizer",
                                  "chat_template", text01_template),
                        err);
    json_decref(vocab);
    json_decref(added);
    json_decref(tr.merges);
    for (size_t id = 0; id < tr.n_tok; id++)
        mx_text_free(&tr.tok[id]);
    free(tr.tok);
    return rc;
}
