/* write_small_tokenizer.c - writes the small byte-level BPE tokenizer.json of
 * mx_tokenizer_write_small into a directory: the seed of the tokenizer fuzzers
 * (tests/tokenizer/run_fuzz.sh). Usage: write_small_tokenizer DIR [VOCAB] */
#include <stdio.h>
#include <stdlib.h>

#include "core/tokenizer/tokenizer.h"

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: %s DIR [VOCAB]\n", argv[0]);
        return 2;
    }
    mx_error err = {0};
    if (mx_tokenizer_write_small(argv[1], argc > 2 ? atoi(argv[2]) : 300, &err) < 0) {
        fprintf(stderr, "write_small_tokenizer: %s\n", err.msg);
        return 1;
    }
    return 0;
}
