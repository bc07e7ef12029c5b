#!/usr/bin/env bash
# bench_cluster.sh - decode tokens/s of a loopback cluster (gateway, 2 chained stages, 2 expert
# shards) against the single-process engine on the same model at batch 32, and their ratio.
# The cluster runs twice: with pipeline_depth 1 (one micro-batch at a time: the right setting
# when every process shares this machine's cores; the ratio line with the target) and with
# PIPELINE_DEPTH micro-batches in flight (default 2, the gateway's default for 2 stages; on
# one machine this splits the batch and multiplies weight reads, so it is reported apart).
# Uses the "medium" preset of `mx make-model` (hidden 1024, 8 layers, 16 experts of 2048,
# top-2, vocab 8192; 1.7 GB), written once to $MX_BENCH_MODEL (default a temp dir, removed).
. "$(dirname "$0")/bench_lib.sh"
BATCH=${BATCH:-32} STEPS=${STEPS:-16} THREADS=${THREADS:-2} PIPELINE_DEPTH=${PIPELINE_DEPTH:-2}
ROUNDS=${ROUNDS:-2}
cl=""
stop_cluster() {
    [ -n "$cl" ] && kill -TERM "$cl" 2>/dev/null && wait "$cl" 2>/dev/null
    cl=""
    return 0
}
trap 'stop_cluster; bench_cleanup' EXIT
bench_model medium
# run_cluster DEPTH: prints the cluster's bench line, tagged with the depth
run_cluster() {
    "$BUILD/bin/mx" cluster --model "$model" --stages 2 --expert-shards 2 --threads "$THREADS" \
        --pipeline-depth "$1" >"$tmp/out" 2>"$tmp/err" &
    cl=$!
    for _ in $(seq 1 1200); do grep -q "gateway listening" "$tmp/out" && break; sleep 0.1; done
    gw=$(sed -n 's/gateway listening on //p' "$tmp/out")
    [ -n "$gw" ] || { cat "$tmp/err" >&2; exit 1; }
    line=$("$BUILD/bench/bench_cluster" --addr "$gw" --batch "$BATCH" --steps "$STEPS")
    stop_cluster
    echo "$line (pipeline_depth $1)"
}
# best_rate RATE LINE: the larger of RATE and LINE's tokens/s
best_rate() { best "$1" "$(tokens_per_s "$2")"; }
# The engine and the serial cluster alternate for ROUNDS rounds and each keeps its best: this
# machine's speed drifts by tens of per cent within a minute, and runs taken far apart would
# compare the drift, not the two.
l=0
c1=0
for _ in $(seq 1 "$ROUNDS"); do
    local_line=$("$BUILD/bench/bench_cluster" --model "$model" --batch "$BATCH" --steps "$STEPS" --threads "$THREADS")
    echo "$local_line"
    l=$(best_rate "$l" "$local_line")
    serial_line=$(run_cluster 1)
    echo "$serial_line"
    c1=$(best_rate "$c1" "$serial_line")
done
piped_line=$(run_cluster "$PIPELINE_DEPTH")
echo "$piped_line"
cp=$(best_rate 0 "$piped_line")
awk -v l="$l" -v c="$cp" -v d="$PIPELINE_DEPTH" 'BEGIN { printf "cluster (pipeline_depth %d) / single-process: %.2f (one machine: the stages share its cores)\n", d, c / l }'
awk -v l="$l" -v c="$c1" -v r="$ROUNDS" 'BEGIN { printf "cluster / single-process decode throughput, best of %d alternating rounds each: %.2f (target >= 0.95)\n", r, c / l }'
