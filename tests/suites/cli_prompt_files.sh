#!/usr/bin/env bash
# cli_prompt_files.sh - long prompts for `mx generate` and `mx client`: ids from a file
# (commas and/or whitespace), from stdin and from a comma list give the golden fixture's
# greedy tokens (also with a chunked prefill and with --kv-dtype); malformed files fail naming
# line, column, byte and id; 100,000- and 4,194,304-id files parse (--max-new-tokens 0: no
# prefill); --prompt-file tokenizes with the model's tokenizer.json; `mx client` sends ids and
# text files to a loopback cluster. Run from the repo root with $BUILD set.
. "$(dirname "$0")/lib.sh"
MX="$BUILD/bin/mx"
TINY=../shared/golden/tiny
tmp=$(mktemp -d)
trap 'stop_cluster; rm -rf "$tmp"' EXIT

# The fixture's p600_s4 case: prompt ids and greedy ids, read straight from expected.safetensors.
/usr/bin/python3 - "$TINY/expected.safetensors" "$tmp" <<'EOF'
import json, struct, sys
path, out = sys.argv[1], sys.argv[2]
with open(path, "rb") as f:
    n = struct.unpack("<Q", f.read(8))[0]
    header = json.loads(f.read(n))
    data = f.read()
def ints(name):
    a, b = header[name]["data_offsets"]
    return list(struct.unpack("<%di" % ((b - a) // 4), data[a:b]))
prompt, greedy = ints("p600_s4.prompt_ids"), ints("p600_s4.greedy_ids")
open(out + "/comma.txt", "w").write(",".join(map(str, prompt)))
# mixed separators: 7 ids a line, commas with spaces, tabs, CRLF, a trailing newline
lines = []
for i in range(0, len(prompt), 7):
    chunk = prompt[i:i + 7]
    lines.append(" , ".join(map(str, chunk[:3])) + "\t" + "  ".join(map(str, chunk[3:])))
open(out + "/mixed.txt", "w").write("\r\n".join(lines) + "\n")
open(out + "/greedy.txt", "w").write(" ".join(map(str, greedy)))
EOF
greedy=$(cat "$tmp/greedy.txt")
steps=$(wc -w <"$tmp/greedy.txt")

gen() { "$MX" generate --model "$TINY" --max-new-tokens "$steps" --threads 2 "$@" 2>"$tmp/gen.err"; }
out=$(gen --prompt-ids "$(cat "$tmp/comma.txt")")
expect_eq "comma list: the fixture's greedy tokens" "$out" "$greedy"
out=$(gen --prompt-ids-file "$tmp/mixed.txt")
expect_eq "file with mixed separators: same tokens" "$out" "$greedy"
expect_in "file: prompt length reported" "$(cat "$tmp/gen.err")" "prompt: 600 tokens"
out=$(gen --prompt-ids-file - <"$tmp/mixed.txt")
expect_eq "stdin: same tokens" "$out" "$greedy"
out=$(gen --prompt-ids-file "$tmp/comma.txt" --prefill-chunk 128)
expect_eq "prefill in chunks of 128: same tokens" "$out" "$greedy"
out=$(gen --prompt-ids-file "$tmp/comma.txt" --kv-dtype f32)
expect_eq "--kv-dtype f32: same tokens" "$out" "$greedy"

# malformed files: the message names the file, line, column, byte offset and id number
printf '1 2\n3, 4 ,\t5x 6\n' >"$tmp/bad.txt"
err=$("$MX" generate --model "$TINY" --prompt-ids-file "$tmp/bad.txt" 2>&1)
rc=$?
expect_eq "bad id: exit 2" "$rc" 2
expect_in "bad id: position named" "$err" "--prompt-ids-file $tmp/bad.txt: line 2, column 8 (byte 11, id #5): not a token id (a non-negative decimal integer): \"5x\""
err=$(printf '1,2,,3' | "$MX" generate --model "$TINY" --prompt-ids-file - 2>&1)
expect_in "double comma named" "$err" "--prompt-ids-file (stdin): line 1, column 5 (byte 4, id #3): two commas with no id between them"
err=$(printf '1,2,\n' | "$MX" generate --model "$TINY" --prompt-ids-file - 2>&1)
expect_in "trailing comma named" "$err" "line 2, column 1 (byte 5, id #3): the list ends with a comma"
err=$(printf '5 -1' | "$MX" generate --model "$TINY" --prompt-ids-file - 2>&1)
expect_in "negative id named" "$err" "line 1, column 3 (byte 2, id #2): not a token id (a non-negative decimal integer): \"-1\""
err=$(printf '7 4294967296' | "$MX" generate --model "$TINY" --prompt-ids-file - 2>&1)
expect_in "id over int32 named" "$err" "id #2): larger than the largest id 2147483647: \"4294967296\""
err=$("$MX" generate --model "$TINY" --prompt-ids-file "$tmp/none.txt" 2>&1)
expect_in "missing file named" "$err" "--prompt-ids-file $tmp/none.txt: No such file or directory"
err=$(printf ' \n' | "$MX" generate --model "$TINY" --prompt-ids-file - 2>&1)
expect_in "empty file" "$err" "--prompt-ids-file gives an empty prompt"
err=$("$MX" generate --model "$TINY" --prompt-ids 1 --prompt-ids-file "$tmp/comma.txt" 2>&1)
expect_in "two prompt flags: usage" "$err" "usage: mx generate"
err=$("$MX" generate --model "$TINY" --prompt-ids 1 --kv-dtype fp16 2>&1)
expect_in "unknown --kv-dtype" "$err" "--kv-dtype: unknown KV cache dtype \"fp16\""

# long files: parsed whole, checked against the vocabulary, no prefill (--max-new-tokens 0)
/usr/bin/python3 - "$tmp" <<'EOF'
import sys
out = sys.argv[1]
ids = [(i * 7919) % 512 for i in range(100000)]
open(out + "/100k.txt", "w").write("\n".join(" ".join(map(str, ids[i:i + 20])) for i in range(0, len(ids), 20)))
ids[99999] = 512
open(out + "/100k_oov.txt", "w").write(",".join(map(str, ids)))
with open(out + "/4m.txt", "w") as f:
    row = ",".join(str((i * 31) % 512) for i in range(1024))
    for _ in range(4096):
        f.write(row + "\n")
EOF
"$MX" generate --model "$TINY" --prompt-ids-file "$tmp/100k.txt" --max-new-tokens 0 >/dev/null 2>"$tmp/gen.err"
rc=$?
expect_eq "100,000 ids: exit 0" "$rc" 0
expect_in "100,000 ids: all parsed" "$(cat "$tmp/gen.err")" "prompt: 100000 tokens"
err=$("$MX" generate --model "$TINY" --prompt-ids-file "$tmp/100k_oov.txt" --max-new-tokens 0 2>&1)
expect_in "100,000 ids: an id outside the vocabulary is named" "$err" "prompt token 99999 is id 512, outside the vocabulary of 512"
start=$(date +%s%N)
"$MX" generate --model "$TINY" --prompt-ids-file "$tmp/4m.txt" --max-new-tokens 0 >/dev/null 2>"$tmp/gen.err"
rc=$?
ms=$(( ($(date +%s%N) - start) / 1000000 ))
expect_eq "4,194,304 ids: exit 0" "$rc" 0
expect_in "4,194,304 ids: all parsed ($ms ms)" "$(cat "$tmp/gen.err")" "prompt: 4194304 tokens"

# --prompt-file: text through the model's tokenizer.json (a made model has one; the fixture not)
"$MX" make-model --preset tiny --out "$tmp/model" >/dev/null 2>&1
printf 'Long prompts, read from a file: 12345 and some more words.' >"$tmp/prompt.txt"
ids=$("$MX" tokenize --tokenizer "$tmp/model/tokenizer.json" --no-special <"$tmp/prompt.txt" | tr ' ' ',')
a=$("$MX" generate --model "$tmp/model" --prompt-file "$tmp/prompt.txt" --max-new-tokens 4 2>/dev/null)
b=$("$MX" generate --model "$tmp/model" --prompt-ids "$ids" --max-new-tokens 4 2>/dev/null)
if [ -n "$a" ] && [ "$a" = "$b" ]; then ok "--prompt-file = --prompt-ids of its tokens ($a)"; else bad "--prompt-file: '$a' vs '$b'"; fi
err=$("$MX" generate --model "$TINY" --prompt-file "$tmp/prompt.txt" 2>&1)
expect_in "--prompt-file without tokenizer.json" "$err" "--prompt-file needs the model's tokenizer, and $TINY/tokenizer.json does not exist"

# mx client against a loopback cluster serving the made model (it has a tokenizer)
start_cluster "$tmp/cluster.out" "$tmp/cluster.err" 300 0.1 --model "$tmp/model" --stages 1 --expert-shards 1 --threads 1
if [ -z "$addr" ]; then
    bad "cluster did not start: $(tail -5 "$tmp/cluster.err")"
else
    printf '%s' "$ids" | tr ',' '\n' >"$tmp/ids_lines.txt"
    a=$("$MX" client --addr "$addr" --prompt-ids "$ids" --max-new-tokens 4 2>/dev/null)
    b=$("$MX" client --addr "$addr" --prompt-ids-file "$tmp/ids_lines.txt" --max-new-tokens 4 2>/dev/null)
    c=$("$MX" client --addr "$addr" --prompt-ids-file - --max-new-tokens 4 <"$tmp/ids_lines.txt" 2>/dev/null)
    if [ -n "$a" ] && [ "$a" = "$b" ] && [ "$a" = "$c" ]; then ok "client: ids list, file and stdin agree ($a)"; else bad "client ids: '$a' / '$b' / '$c'"; fi
    expect_eq "client ids = mx generate on the same model" "$a" "$("$MX" generate --model "$tmp/model" --prompt-ids "$ids" --max-new-tokens 4 2>/dev/null)"
    a=$("$MX" client --addr "$addr" --prompt "$(cat "$tmp/prompt.txt")" --max-new-tokens 4 2>"$tmp/c1.err")
    b=$("$MX" client --addr "$addr" --prompt-file "$tmp/prompt.txt" --max-new-tokens 4 2>"$tmp/c2.err")
    n_tok=$(wc -w <<<"${ids//,/ }")
    expect_in "client --prompt-file: the gateway tokenized the whole file ($n_tok tokens)" "$(cat "$tmp/c2.err")" "prompt $n_tok tokens"
    if [ -n "$b" ] && [ "$a" = "$b" ]; then ok "client --prompt-file streams the text --prompt does"; else bad "client --prompt-file: '$b' vs '$a' ($(cat "$tmp/c2.err"))"; fi
    err=$("$MX" client --addr "$addr" --prompt-ids-file "$tmp/bad.txt" 2>&1)
    expect_in "client: malformed ids file named" "$err" "line 2, column 8 (byte 11, id #5)"
    err=$("$MX" client --addr "$addr" --prompt-file "$tmp/none.txt" 2>&1)
    expect_in "client: missing prompt file named" "$err" "--prompt-file $tmp/none.txt: No such file or directory"
    kill -TERM "$cluster_pid"
    wait "$cluster_pid"
    rc=$?
    cluster_pid=
    expect_eq "cluster stopped cleanly" "$rc" 0
fi

finish
