#!/usr/bin/env bash
# plan.sh - `mx plan` and `mx info` on the released MiniMax-Text-01 config (deploy/models, no
# weights): the 4M-token layouts on H200s against a Python reference that evaluates the
# stated formulas from config.json on its own; layouts that do not fit name the smallest
# stage / shard count that would; bad input is rejected with a clear error. Run from the repo
# root with $BUILD set.
. "$(dirname "$0")/lib.sh"
MX="$BUILD/bin/mx"
MODEL=deploy/models/MiniMax-Text-01
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# check_json NAME ARGS...: runs mx plan --json with ARGS and compares every number with the
# reference below (weights, KV pages, state, workspace, free bytes, sequences, fit verdicts).
check_json() {
    local name=$1
    shift
    if ! "$MX" plan --model "$MODEL" "$@" --json >"$tmp/plan.json" 2>"$tmp/plan.err"; then
        bad "$name: exit non-zero: $(cat "$tmp/plan.err")"
        return
    fi
    local out
    out=$(/usr/bin/python3 - "$MODEL/config.json" "$tmp/plan.json" <<'EOF'
import json, sys
c = json.load(open(sys.argv[1]))
p = json.load(open(sys.argv[2]))
o = p["options"]
H, I, L, NE = c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"], c["num_local_experts"]
heads, kvh, hd, V, k = c["num_attention_heads"], c["num_key_value_heads"], c["head_dim"], c["vocab_size"], c["num_experts_per_tok"]
A, KV = heads * hd, kvh * hd
S, E, N, B, T = o["stages"], o["expert_shards"], o["context_tokens"], o["batch_sequences"], o["max_step_tokens"]
bf16 = lambda r, cols: r * cols * 2
r64 = lambda b: (b + 63) // 64 * 64
wexp = bf16 if o["expert_dtype"] == "bf16" else (lambda r, cols: r64(r * cols) + r64(r * 4))
elem = {"bf16": 2, "f32": 4, "fp8_e4m3": 1, "int8": 1}[o["kv_dtype"]]
page = r64(2 * kvh * 64 * hd * elem + (2 * kvh * 4 if elem == 1 else 0))
soft = [t == 1 for t in c["attn_type_list"]]
def layer_bytes(l):
    b = 2 * H * 2 + NE * H * 4
    if soft[l]:
        return b + bf16(A, H) + 2 * bf16(KV, H) + bf16(H, A)
    return b + bf16(3 * A, H) + bf16(A, H) + A * 2 + bf16(H, A)
errors = []
def eq(what, got, want):
    if got != want:
        errors.append("%s: %r != %r" % (what, got, want))
pod = o["device_memory_bytes"] * o["devices_per_pod"]
reserve = int(pod * o["reserve_fraction"])
pages = -(-N // 64)
seqs = []
for s, st in enumerate(p["stages"]):
    l0, l1 = s * L // S, (s + 1) * L // S   # mx cluster's split
    ns = sum(soft[l0:l1]); nl = (l1 - l0) - ns
    w = sum(layer_bytes(l) for l in range(l0, l1))
    ws = T * (5 * H + 5 * A + NE) * 4
    if s == 0: w += bf16(V, H)
    if s == S - 1: w += bf16(V, H) + H * 2; ws += min(B, T) * V * 4 * 3
    kv = pages * ns * page
    state = 2 * nl * heads * hd * hd * 4   # current state + the buffer a step advances into (its undo)
    free = pod - reserve - w - ws
    fit = free // (kv + state) if free >= 0 else 0
    seqs.append(fit)
    for key, want in [("layer_begin", l0), ("layer_end", l1), ("softmax_layers", ns), ("weight_bytes", w),
                      ("workspace_bytes", ws), ("kv_bytes_per_seq", kv), ("state_bytes_per_seq", state),
                      ("free_bytes", free), ("seqs_fit", fit), ("fits", fit >= B)]:
        eq("stage %d %s" % (s, key), st[key], want)
spod = o["device_memory_bytes"] * o["shard_devices"]
sres = int(spod * o["reserve_fraction"])
shards_fit = True
for i, sh in enumerate(p["shards"]):
    n = (i + 1) * NE // E - i * NE // E
    w = L * n * (2 * wexp(I, H) + wexp(H, I))
    ws = T * min(k, n) * (4 * H + 2 * I) * 4
    fits = spod - sres - w - ws >= 0
    shards_fit &= fits
    for key, want in [("weight_bytes", w), ("workspace_bytes", ws), ("fits", fits)]:
        eq("shard %d %s" % (i, key), sh[key], want)
eq("kv_bytes_per_token", p["kv_bytes_per_token"], sum(soft) * page // 64)
eq("seqs_fit", p["seqs_fit"], min(seqs))
eq("fits", p["fits"], min(seqs) >= B and shards_fit)
print("; ".join(errors) if errors else "OK fits=%s seqs=%d kv/token=%d experts=%d devices=%d" % (
    p["fits"], p["seqs_fit"], p["kv_bytes_per_token"], p["expert_weight_bytes"], p["devices"]))
EOF
)
    if [[ $out == OK* ]]; then ok "$name: every number matches the reference ($out)"; else bad "$name: $out"; fi
}

# 4M tokens on H200s: 8 stages (at most 2 softmax layers = 32 GiB of KV per sequence) and
# 8 shards of 4 experts (108.7 GB) on one H200 each; the issue's 8 x 8-GPU stage pods with 16
# shards; int8 experts on 4 shards; fp8 KV; a layout that does not fit.
check_json "8 stages x 1 H200, 8 shards, 4M" --stages 8 --expert-shards 8 --context 4194304
check_json "8 stages x 8 H200, 16 shards x 8, 4M" --stages 8 --expert-shards 16 --context 4194304 --devices-per-pod 8
check_json "8 stages x 8 H200, batch 24, 16 shards x 1" --stages 8 --expert-shards 16 --context 4194304 --devices-per-pod 8 --shard-devices 1 --batch 24
check_json "int8 experts, 4 shards, fp8 KV" --stages 8 --expert-shards 4 --context 4194304 --expert-dtype int8 --kv-dtype fp8_e4m3
check_json "1 stage, 4 shards: does not fit" --stages 1 --expert-shards 4 --context 4194304
check_json "80 GiB devices, 1M tokens, 20 stages" --stages 20 --expert-shards 16 --context 1048576 --device-memory 80GiB

json() { /usr/bin/python3 -c "import json,sys; p=json.load(open(sys.argv[1])); print(eval(sys.argv[2]))" "$tmp/plan.json" "$1"; }
"$MX" plan --model "$MODEL" --stages 8 --expert-shards 8 --context 4194304 --json >"$tmp/plan.json"
expect_in "bf16 KV: 10 x 8 x 128 x 2 x 2 = 40,960 B/token" "$(json 'p["kv_bytes_per_token"]')" 40960
expect_in "4M tokens: 160 GiB of KV" "$(json 'p["kv_bytes_per_seq"] == 160 * 2**30')" True
expect_in "experts: 80 x 32 x 3 x 6144 x 9216 x 2 B" "$(json 'p["expert_weight_bytes"] == 80*32*3*6144*9216*2')" True
expect_in "softmax layers per stage 1,1,1,2,1,1,1,2" "$(json '[s["softmax_layers"] for s in p["stages"]]')" "[1, 1, 1, 2, 1, 1, 1, 2]"
expect_in "fits 3 sequences of 4M tokens" "$(json '(p["fits"], p["seqs_fit"])')" "(True, 3)"

# int8 attention projections: 1 byte per weight + a fp32 scale per output row; norms bf16,
# router gates fp32, embedding and lm_head bf16 (A = 8192, H = 6144, KV width 1024, V = 200064)
"$MX" plan --model "$MODEL" --stages 8 --expert-shards 8 --context 4194304 --attn-dtype int8 --json >"$tmp/plan.json"
light8='(3*8192*6144 + 8192*6144 + 6144*8192) + (3*8192 + 8192 + 6144)*4 + 8192*2 + 2*6144*2 + 32*6144*4'
soft8='(8192*6144 + 2*1024*6144 + 6144*8192) + (8192 + 2*1024 + 6144)*4 + 2*6144*2 + 32*6144*4'
expect_in "int8 attention weights" "$(json "p['attn_weight_bytes'] == 70*($light8) + 10*($soft8) + 2*200064*6144*2 + 6144*2")" True
expect_in "int8 attention: options echo it" "$(json 'p["options"]["attn_dtype"]')" int8
table=$("$MX" plan --model "$MODEL" --stages 8 --expert-shards 8 --context 4194304)
expect_in "table: whole-model KV" "$table" "KV 40960 B/token over 10 softmax layers = 160.00 GiB per sequence"
expect_in "table: experts" "$table" "experts 869.7 GB (810.00 GiB)"
expect_in "table: stage 3 row" "$table" "3     30-39        2    8"
expect_in "table: verdict" "$table" "fits: 3 sequence(s) of 4194304 tokens at once"
table=$("$MX" plan --model "$MODEL" --stages 1 --expert-shards 4 --context 4194304)
expect_in "too few stages: the smallest count that fits" "$table" "2 stages would fit"
expect_in "too few shards: the smallest count that fits" "$table" "8 expert shards would fit"
table=$("$MX" plan --model "$MODEL" --stages 80 --expert-shards 32 --context 40000000)
expect_in "no stage count fits 40M tokens" "$table" "no stage count up to 80 fits"
expect_in "context over max_position_embeddings" "$table" "warning   context 40000000 > max_position_embeddings 10240000"
table=$("$MX" plan --model "$MODEL" --stages 5 --expert-shards 8 --context 4194304 --split memory)
expect_in "--split memory runs" "$table" "split by memory"

# bad input
expect_err() { # NAME NEEDLE ARGS...
    local name=$1 needle=$2
    shift 2
    local err rc
    err=$("$MX" plan "$@" 2>&1)
    rc=$?
    if [ $rc -eq 0 ]; then bad "$name: exit 0"; else expect_in "$name" "$err" "$needle"; fi
}
expect_err "missing model dir" "--model $tmp/none: $tmp/none/config.json: cannot open" --model "$tmp/none" --stages 1 --expert-shards 1 --context 1
expect_err "--stages 0" "--stages: \"0\" is not an integer in [1," --model "$MODEL" --stages 0 --expert-shards 8 --context 1
expect_err "more stages than layers" "stages: 81 is not in [1, 80]" --model "$MODEL" --stages 81 --expert-shards 8 --context 1
expect_err "more shards than experts" "expert shards: 33 is not in [1, 32]" --model "$MODEL" --stages 8 --expert-shards 33 --context 1
expect_err "unknown KV dtype" "--kv-dtype: unknown KV cache dtype \"fp16\"" --model "$MODEL" --stages 8 --expert-shards 8 --context 1 --kv-dtype fp16
expect_err "unknown expert dtype" "--expert-dtype: unknown weight dtype \"fp4\"" --model "$MODEL" --stages 8 --expert-shards 8 --context 1 --expert-dtype fp4
expect_err "unknown attention dtype" "--attn-dtype: unknown weight dtype \"fp8\"" --model "$MODEL" --stages 8 --expert-shards 8 --context 1 --attn-dtype fp8
expect_err "missing --context" "--context are required" --model "$MODEL" --stages 8 --expert-shards 8
expect_err "bad --device-memory" "--device-memory: \"lots\" is not a byte count" --model "$MODEL" --stages 8 --expert-shards 8 --context 1 --device-memory lots

# mx info on a directory holding only config.json, KV in the chosen dtype
info=$("$MX" info --model "$MODEL" 2>&1)
expect_in "mx info without weights" "$info" "parameters          456089655296 total"
expect_in "mx info: bf16 KV" "$info" "KV cache (bf16)     40960 bytes per token"
info=$("$MX" info --model "$MODEL" --kv-dtype fp8_e4m3 2>&1)
# 2 x 8 x 64 x 128 bytes + 2 x 8 fp32 scales = 131,136 B per page per layer; x 10 / 64
expect_in "mx info: fp8 KV" "$info" "20490 bytes per token"
# int8 attention projections and experts: 1 byte per weight + a fp32 scale per output row;
# norms bf16, router gates fp32, embedding and lm_head bf16
gib8=$(/usr/bin/python3 -c '
A, H, KVW, I, E, V = 8192, 6144, 1024, 9216, 32, 200064
light = (3*A*H + A*H + H*A) + (3*A + A + H)*4 + A*2
soft = (A*H + 2*KVW*H + H*A) + (A + 2*KVW + H)*4
expert = 3*I*H + (2*I + H)*4
total = 70*light + 10*soft + 80*(2*H*2 + E*H*4 + E*expert) + 2*V*H*2 + H*2
print("%.2f" % (total / 2**30))')
info=$("$MX" info --model "$MODEL" --attn-dtype int8 --expert-dtype int8 2>&1)
expect_in "mx info: int8 attention + experts" "$info" "weights (attn int8, experts int8) $gib8 GiB total"
info=$("$MX" info --model "$MODEL" 2>&1)
expect_in "mx info: bf16 as loaded equals the bf16 total" "$info" "weights (attn bf16, experts bf16) 849.56 GiB total"
info=$("$MX" info --model "$MODEL" --attn-dtype fp4 2>&1)
expect_in "mx info: unknown attention dtype" "$info" "--attn-dtype: unknown weight dtype \"fp4\""
info=$("$MX" info --model "$MODEL" --kv-dtype f16 2>&1)
expect_in "mx info: unknown KV dtype" "$info" "--kv-dtype: unknown KV cache dtype \"f16\""

finish
