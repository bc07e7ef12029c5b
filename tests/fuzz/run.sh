#!/usr/bin/env bash
# run.sh - every libFuzzer target of mx, each for SECONDS (default 30): the checkpoint loader's
# safetensors reader and config parser (here), and the tokenizer's loader and encoder
# (tests/tokenizer/run_fuzz.sh). The targets are built by the Makefile (`make fuzz-bins`:
# clang, the project's flags, ASan + UBSan) into $BUILD/fuzz. `make fuzz` runs it; CI too.
# Exits non-zero if any fuzzer finds a crash; reproducers are left in $OUT (default $BUILD/fuzz).
set -eu -o pipefail
cd "$(dirname "$0")/../.."
SECONDS_EACH=${1:-30}
BUILD=${BUILD:-build}
OUT=${OUT:-$BUILD/fuzz}
export BUILD OUT
make -s --no-print-directory BUILD="$BUILD" fuzz-bins
mkdir -p "$OUT/corpus_st" "$OUT/corpus_cfg"
# seeds: the golden fixtures' real files when they are there
for f in ../shared/golden/*/expected.safetensors; do [ -f "$f" ] && head -c 65536 "$f" >"$OUT/corpus_st/$(basename "$(dirname "$f")")"; done
for f in ../shared/golden/*/config.json; do [ -f "$f" ] && cp "$f" "$OUT/corpus_cfg/$(basename "$(dirname "$f")").json"; done
rc=0
"$BUILD/fuzz/fuzz_safetensors" -max_total_time="$SECONDS_EACH" -max_len=65536 -artifact_prefix="$OUT/st-" "$OUT/corpus_st" 2>&1 | tail -2 || rc=1
"$BUILD/fuzz/fuzz_config" -max_total_time="$SECONDS_EACH" -max_len=8192 -artifact_prefix="$OUT/cfg-" "$OUT/corpus_cfg" 2>&1 | tail -2 || rc=1
tests/tokenizer/run_fuzz.sh "$SECONDS_EACH" || rc=1
[ $rc -eq 0 ] && echo "fuzzing: no crashes" || echo "fuzzing: crash found (see $OUT)"
exit $rc
