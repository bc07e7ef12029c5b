#!/usr/bin/env bash
# run_fuzz.sh - builds the tokenizer's libFuzzer targets (clang, ASan + UBSan) and runs each for
# SECONDS (default 45): fuzz_load on tokenizer.json bytes, fuzz_encode on text through encode,
# decode, streaming, stop strings and chat rendering. Usage: tests/tokenizer/run_fuzz.sh [SECONDS]
# Exits non-zero if a fuzzer finds a crash; its reproducer is left in $OUT (default build/fuzz).
set -eu -o pipefail
cd "$(dirname "$0")/../.."
SECONDS_EACH=${1:-45}
OUT=${OUT:-build/fuzz}
mkdir -p "$OUT/corpus_load" "$OUT/corpus_encode" "$OUT/small"
CFLAGS="-g -O1 -std=c11 -D_GNU_SOURCE -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined -I. -Icore $(pkg-config --cflags jansson libpcre2-8 libutf8proc)"
LIBS="$(pkg-config --libs jansson libpcre2-8 libutf8proc) -lpthread -lm"
SRC="core/error.c $(ls core/tokenizer/*.c)"
for t in fuzz_load fuzz_encode; do
    clang $CFLAGS -o "$OUT/$t" "tests/tokenizer/$t.c" $SRC $LIBS
done
# seeds: a real small tokenizer.json, and a few texts
clang -g -O1 -std=c11 -D_GNU_SOURCE -I. -Icore -o "$OUT/write_small" -x c - $SRC $LIBS <<'C'
#include "tokenizer/tokenizer.h"
#include <stdio.h>
int main(int c, char **v) { mx_error e; (void)c; if (mx_tokenizer_write_small(v[1], 300, &e)) { fprintf(stderr, "%s\n", e.msg); return 1; } return 0; }
C
"$OUT/write_small" "$OUT/small"
cp "$OUT/small/tokenizer.json" "$OUT/corpus_load/seed.json"
printf 'Hello world! 你好 <end_of_sentence>\n\n  123456' >"$OUT/corpus_encode/s1"
printf '[{"role":"user","content":[{"type":"text","text":"hi"}]},{"role":"function","name":"f","content":"x"}]' >"$OUT/corpus_encode/s2"
rc=0
"$OUT/fuzz_load" -max_total_time="$SECONDS_EACH" -max_len=65536 -rss_limit_mb=4096 \
    -artifact_prefix="$OUT/load-" "$OUT/corpus_load" 2>&1 | tail -3 || rc=1
MX_FUZZ_TOKENIZER="$OUT/small/tokenizer.json" "$OUT/fuzz_encode" -max_total_time="$SECONDS_EACH" -max_len=4096 \
    -artifact_prefix="$OUT/encode-" "$OUT/corpus_encode" 2>&1 | tail -3 || rc=1
[ $rc -eq 0 ] && echo "fuzzing: no crashes" || echo "fuzzing: crash found (see $OUT)"
exit $rc
