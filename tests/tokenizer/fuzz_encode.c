/* fuzz_encode.c - libFuzzer target: arbitrary bytes through encode (both special-token modes),
 * decode, the streaming decoder, stop strings and the chat renderer. The tokenizer is the one
 * in $MX_FUZZ_TOKENIZER (run_fuzz.sh points it at a real tokenizer.json). */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/tokenizer/tokenizer.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

static mx_tokenizer *tok;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    mx_error err;
    const char *path = getenv("MX_FUZZ_TOKENIZER");
    if (!path || mx_tokenizer_load(path, &tok, &err) < 0) {
        fprintf(stderr, "set MX_FUZZ_TOKENIZER to a loadable tokenizer.json (%s)\n", path ? err.msg : "unset");
        exit(1);
    }
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    mx_error err;
    for (int special = 0; special < 2; special++) {
        mx_tok_ids ids = { 0 };
        mx_text whole = { 0 }, streamed = { 0 }, stopped = { 0 };
        if (mx_tokenizer_encode(tok, (const char *)data, size, special, &ids, &err) == 0) {
            if (mx_tokenizer_decode(tok, ids.ids, ids.len, 0, &whole, &err) < 0 || whole.len != size ||
                memcmp(whole.data, data, size) != 0) {
                /* valid UTF-8 must round-trip unless the tokenizer normalizes */
                if (!getenv("MX_FUZZ_NORMALIZES"))
                    abort();
            }
            mx_detok_stream s;
            mx_detok_stream_init(&s, tok, special);
            const char *stops[] = { "\n\n", "<end_of_sentence>" };
            mx_stop_matcher *m = NULL;
            mx_stop_matcher_new(stops, 2, &m, &err);
            for (size_t i = 0; i < ids.len; i++) {
                size_t before = streamed.len;
                mx_detok_stream_push(&s, ids.ids[i], &streamed, &err);
                if (m && streamed.len > before &&
                    mx_stop_matcher_push(m, streamed.data + before, streamed.len - before, &stopped, NULL, &err) == 1)
                    break;
            }
            mx_detok_stream_finish(&s, &streamed, &err);
            mx_stop_matcher_free(m);
        }
        mx_tok_ids_free(&ids);
        mx_text_free(&whole);
        mx_text_free(&streamed);
        mx_text_free(&stopped);
    }
    /* the same bytes as a chat request */
    char *msgs = malloc(size + 1);
    if (msgs) {
        memcpy(msgs, data, size);
        msgs[size] = '\0';
        mx_text out = { 0 };
        mx_chat_render_json(MX_CHAT_MINIMAX_TEXT01, msgs, NULL, 1, &out, &err);
        mx_chat_render_json(MX_CHAT_MINIMAX_M1, msgs, "[{\"name\": \"f\"}]", 1, &out, &err);
        mx_text_free(&out);
        free(msgs);
    }
    return 0;
}
