#!/usr/bin/env bash
# bench_cluster.sh - decode tokens/s of a loopback cluster (gateway, 2 stages, 2 expert
# shards) against the single-process engine on the same model at batch 32, and their ratio.
# PIPELINE_DEPTH=D passes --pipeline-depth D to `mx cluster` (default: its own, the number of
# stages). Uses the "medium" preset of `mx make-model` (hidden 1024, 8 layers, 16 experts of 2048,
# top-2, vocab 8192; 1.7 GB), written once to $MX_BENCH_MODEL (default a temp dir, removed).
set -eu
BUILD=${BUILD:-build}
cd "$(dirname "$0")/.."
BATCH=${BATCH:-32} STEPS=${STEPS:-16} THREADS=${THREADS:-2}
depth_args=()
[ -n "${PIPELINE_DEPTH:-}" ] && depth_args=(--pipeline-depth "$PIPELINE_DEPTH")
model=${MX_BENCH_MODEL:-}
made=""
if [ -z "$model" ]; then
    model=$(mktemp -d)/medium
    made=$(dirname "$model")
fi
tmp=$(mktemp -d)
cleanup() {
    [ -n "${cl:-}" ] && kill -TERM "$cl" 2>/dev/null && wait "$cl" 2>/dev/null
    rm -rf "$tmp"
    [ -n "$made" ] && rm -rf "$made"
    return 0
}
trap cleanup EXIT
[ -f "$model/config.json" ] || "$BUILD/bin/mx" make-model --preset medium --out "$model" >/dev/null
local_line=$("$BUILD/bench/bench_cluster" --model "$model" --batch "$BATCH" --steps "$STEPS" --threads "$THREADS")
echo "$local_line"
"$BUILD/bin/mx" cluster --model "$model" --stages 2 --expert-shards 2 --threads "$THREADS" \
    "${depth_args[@]}" >"$tmp/out" 2>"$tmp/err" &
cl=$!
for _ in $(seq 1 1200); do grep -q "gateway listening" "$tmp/out" && break; sleep 0.1; done
gw=$(sed -n 's/gateway listening on //p' "$tmp/out")
[ -n "$gw" ] || { cat "$tmp/err"; exit 1; }
cluster_line=$("$BUILD/bench/bench_cluster" --addr "$gw" --batch "$BATCH" --steps "$STEPS")
echo "$cluster_line"
l=$(sed -nE 's/.* ([0-9.]+) tokens\/s$/\1/p' <<<"$local_line")
c=$(sed -nE 's/.* ([0-9.]+) tokens\/s$/\1/p' <<<"$cluster_line")
awk -v l="$l" -v c="$c" 'BEGIN { printf "cluster / single-process decode throughput: %.2f (target >= 0.85)\n", c / l }'
