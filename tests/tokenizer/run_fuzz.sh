#!/usr/bin/env bash
# run_fuzz.sh - runs the tokenizer's libFuzzer targets, each for SECONDS (default 45): fuzz_load
# on tokenizer.json bytes, fuzz_encode on text through encode, decode, streaming, stop strings
# and chat rendering. The targets are built by the Makefile (`make fuzz-bins`: clang, the
# project's flags, ASan + UBSan) into $BUILD/fuzz. Usage: tests/tokenizer/run_fuzz.sh [SECONDS]
# Exits non-zero if a fuzzer finds a crash; its reproducer is left in $OUT (default $BUILD/fuzz).
set -eu -o pipefail
cd "$(dirname "$0")/../.."
SECONDS_EACH=${1:-45}
BUILD=${BUILD:-build}
OUT=${OUT:-$BUILD/fuzz}
make -s --no-print-directory BUILD="$BUILD" fuzz-bins
mkdir -p "$OUT/corpus_load" "$OUT/corpus_encode" "$OUT/small"
# seeds: a real small tokenizer.json, and a few texts
"$BUILD/fuzz/write_small_tokenizer" "$OUT/small" 300
cp "$OUT/small/tokenizer.json" "$OUT/corpus_load/seed.json"
printf 'Hello world! 你好 <end_of_sentence>\n\n  123456' >"$OUT/corpus_encode/s1"
printf '[{"role":"user","content":[{"type":"text","text":"hi"}]},{"role":"function","name":"f","content":"x"}]' >"$OUT/corpus_encode/s2"
rc=0
"$BUILD/fuzz/fuzz_load" -max_total_time="$SECONDS_EACH" -max_len=65536 -rss_limit_mb=4096 \
    -artifact_prefix="$OUT/load-" "$OUT/corpus_load" 2>&1 | tail -3 || rc=1
MX_FUZZ_TOKENIZER="$OUT/small/tokenizer.json" "$BUILD/fuzz/fuzz_encode" -max_total_time="$SECONDS_EACH" -max_len=4096 \
    -artifact_prefix="$OUT/encode-" "$OUT/corpus_encode" 2>&1 | tail -3 || rc=1
[ $rc -eq 0 ] && echo "fuzzing: no crashes" || echo "fuzzing: crash found (see $OUT)"
exit $rc
