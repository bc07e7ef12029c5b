/* fuzz_load.c - libFuzzer target: arbitrary bytes as tokenizer.json must load or fail with an
 * error, never crash, leak or hang. Seeded by run_fuzz.sh with a real small tokenizer.json. */
#include <stddef.h>
#include <stdint.h>

#include "core/tokenizer/tokenizer.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    mx_tokenizer *t = NULL;
    mx_error err;
    if (mx_tokenizer_load_json((const char *)data, size, &t, &err) == 0) {
        mx_tok_ids ids = { 0 };
        mx_text out = { 0 };
        if (mx_tokenizer_encode(t, "Hello world 123 <|x|> \xe4\xbd\xa0\xe5\xa5\xbd", 25, 1, &ids, &err) == 0)
            mx_tokenizer_decode(t, ids.ids, ids.len, 0, &out, &err);
        mx_tok_ids_free(&ids);
        mx_text_free(&out);
        mx_tokenizer_free(t);
    }
    return 0;
}
