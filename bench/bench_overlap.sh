#!/usr/bin/env bash
# bench_overlap.sh - decode tokens/s of a 2-stage cluster laid out as two simulated hosts:
# host A = stage 0 + expert shard 0 pinned to core 0 (taskset -c 0) on 127.0.0.2, host B =
# stage 1 + expert shard 1 pinned to core 1 on 127.0.0.3 (the gateway and the client unpinned
# on 127.0.0.1). Four settings, alternated for ROUNDS rounds (each keeps its best, since
# this machine's speed drifts within a minute): the gateway's pipeline_depth 1, depth 2,
# depth 2 with the stages' overlap (a micro-batch's attention while the other one's expert
# calls are out), and depth 1 with overlap_halves (each batch as two halves interleaved per
# layer). Prints each rate and the ratios to depth 1 (target: 2 + overlap >= 1.6x), and for
# depth 2 the CPU cap: the most the rate could be with both cores busy all the time, given
# the CPU time the cluster's processes took per step.
# Runs two models (MODELS, default "long medium"), written once to $MX_BENCH_LONG_MODEL /
# $MX_BENCH_MODEL (default temp dirs, removed):
#   long   - the real 7:1 lightning/softmax layer pattern at width 512 (8 heads x 64, 4 experts
#            of 512): the stages' attention takes more CPU than the experts;
#   medium - hidden 1024, 16 experts of 2048: the expert GEMMs are most of a step. Both
#            simulated hosts read memory through the same bus here, and each micro-batch reads
#            every expert's weights, so depth 2 adds expert work that two real hosts would
#            each do at their own bandwidth.
. "$(dirname "$0")/bench_lib.sh"
BATCH=${BATCH:-32} STEPS=${STEPS:-32} ROUNDS=${ROUNDS:-2}
pids=()
stop_all() {
    for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    pids=()
}
trap 'stop_all; bench_cleanup' EXIT
# use_model PRESET VAR: the model and the expert/layer halves of the two hosts
use_model() {
    bench_model "$1" "$2"
    experts=$(sed -nE 's/.*"num_local_experts": *([0-9]+).*/\1/p' "$model/config.json")
    layers=$(sed -nE 's/.*"num_hidden_layers": *([0-9]+).*/\1/p' "$model/config.json")
    half_e=$((experts / 2)) half_l=$((layers / 2))
    E0="[$(list 0 $((half_e - 1)))]" E1="[$(list "$half_e" $((experts - 1)))]"
}
list() { seq -s, "$1" "$2"; }
port=$((52000 + RANDOM % 4000))
S0="127.0.0.2:$port" S1="127.0.0.3:$((port + 1))" X0="127.0.0.2:$((port + 2))" X1="127.0.0.3:$((port + 3))"
GW="127.0.0.1:$((port + 4))"

write_configs() { # OVERLAP DEPTH HALVES
    cat >"$tmp/x0.cfg" <<EOF
model_dir = "$model"; listen = "$X0"; threads = 1; shard_index = 0; experts = $E0;
EOF
    cat >"$tmp/x1.cfg" <<EOF
model_dir = "$model"; listen = "$X1"; threads = 1; shard_index = 1; experts = $E1;
EOF
    local ex="experts = { shards = ( { experts = $E0; replicas = [\"$X0\"]; }, { experts = $E1; replicas = [\"$X1\"]; } ); };"
    cat >"$tmp/s0.cfg" <<EOF
stage = { listen = "$S0"; model = "$model"; index = 0; count = 2; layer_begin = 0; layer_end = $half_l;
  threads = 1; kv_cache_bytes = "1GiB"; next = "$S1"; overlap = $1; overlap_halves = $3;
  port_file = "$tmp/s0.port"; };
$ex
EOF
    cat >"$tmp/s1.cfg" <<EOF
stage = { listen = "$S1"; model = "$model"; index = 1; count = 2; layer_begin = $half_l; layer_end = $layers;
  threads = 1; kv_cache_bytes = "1GiB"; overlap = $1; overlap_halves = $3; port_file = "$tmp/s1.port"; };
$ex
EOF
    cat >"$tmp/gw.cfg" <<EOF
gateway = { listen = "$GW"; model = "$model"; stages = ["$S0", "$S1"]; num_expert_shards = 2;
  max_batch_sequences = 64; pipeline_depth = $2; port_file = "$tmp/gw.port"; };
EOF
}

start() { # CORE BINARY NAME
    rm -f "$tmp/$3.port"
    if [ "$1" = any ]; then
        "$BUILD/bin/$2" --config "$tmp/$3.cfg" >"$tmp/$3.out" 2>&1 &
    else
        taskset -c "$1" "$BUILD/bin/$2" --config "$tmp/$3.cfg" >"$tmp/$3.out" 2>&1 &
    fi
    pids+=($!)
    # stages and the gateway write a port file; expert-svc (no such key) logs "serving"
    for _ in $(seq 1 1200); do
        [ -s "$tmp/$3.port" ] && return 0
        grep -q "experts (.*) on" "$tmp/$3.out" 2>/dev/null && return 0
        sleep 0.1
    done
    echo "bench_overlap: $3 did not start:" >&2
    cat "$tmp/$3.out" >&2
    exit 1
}

run() { # OVERLAP DEPTH HALVES: prints tokens/s and the CPU cap (see below)
    write_configs "$1" "$2" "$3"
    start 0 expert-svc x0
    start 1 expert-svc x1
    start 1 attention-svc s1
    start 0 attention-svc s0
    start any gateway gw
    line=$("$BUILD/bench/bench_cluster" --addr "$GW" --batch "$BATCH" --steps "$STEPS" \
        --cpu-pids "$(IFS=,; echo "${pids[*]}")")
    stop_all
    # The CPU cap: the rate if the two cores never idled, from the CPU time the cluster's
    # processes took per step (BATCH tokens per step, 2 cores of CPU time per wall second).
    # No schedule of that CPU time beats it: overlap closes the gap to it, more needs less CPU.
    cpu=$(sed -nE 's/.* cpu ([0-9.]+) ms\/step.*$/\1/p' <<<"$line")
    awk -v r="$(tokens_per_s "$line")" -v c="$cpu" -v b="$BATCH" 'BEGIN { printf "%s %.1f\n", r, (c > 0 ? b * 2000 / c : 0) }'
}

for preset in ${MODELS:-long medium}; do
    case $preset in
    medium) use_model medium MX_BENCH_MODEL ;;
    *) use_model "$preset" MX_BENCH_LONG_MODEL ;;
    esac
    d1=0 d2=0 d2o=0 d1h=0 cap2=0 cap2o=0
    for r in $(seq 1 "$ROUNDS"); do
        a=$(run false 1 false) b=$(run false 2 false) c=$(run true 2 false) h=$(run false 1 true)
        cb=${b#* } cc=${c#* } a=${a% *} b=${b% *} c=${c% *} h=${h% *}
        echo "$preset round $r: depth 1 $a, depth 2 $b (CPU cap $cb), depth 2 + overlap $c (CPU cap $cc)," \
            "depth 1 + halves $h tokens/s (batch $BATCH, load $(cut -d' ' -f1 /proc/loadavg))"
        d1=$(best "$d1" "$a") d2=$(best "$d2" "$b") d2o=$(best "$d2o" "$c") d1h=$(best "$d1h" "$h")
        cap2=$(best "$cap2" "$cb") cap2o=$(best "$cap2o" "$cc")
    done
    awk -v m="$preset" -v a="$d1" -v b="$d2" -v c="$d2o" -v h="$d1h" -v r="$ROUNDS" -v cb="$cap2" -v cc="$cap2o" 'BEGIN {
        if (a <= 0) { print "bench_overlap: no rate measured for " m; exit 1 }
        printf "%s: two simulated hosts, best of %d rounds: depth 1 %.1f, depth 2 %.1f (%.2fx; CPU cap %.2fx), depth 2 + overlap %.1f (%.2fx, target >= 1.6x; CPU cap %.2fx), depth 1 + halves %.1f (%.2fx) tokens/s\n", m, r, a, b, b / a, cb / a, c, c / a, cc / a, h, h / a }'
done
