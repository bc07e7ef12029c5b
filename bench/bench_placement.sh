#!/usr/bin/env bash
# bench_placement.sh - expert placement: throughput of the expert tier on a model whose router
# gate favours experts 0 and 1 (`mx make-model --preset medium --gate-skew 4`: hidden 1024, 8
# layers, 16 experts of 2048, top-2; 1.7 GB, written once to a temp dir and removed), laid out
# as the contiguous split and as `mx plan-experts` proposes from the load measured on the first
# (`mx expert-stats`), with the same replica count, both up at once and taking turns
# (bench/placement.py: the median of paired rounds). Prefill-heavy (8 streams of 256 prompt tokens, 4 new), so expert rows,
# not weight reads, set the cost. Prints the busiest replica's rows against the mean
# (measured and predicted) and tokens/s per layout, then the ratio.
set -eu
BUILD=${BUILD:-build}
export BUILD
cd "$(dirname "$0")/.."
SKEW=${SKEW:-4} ROUNDS=${ROUNDS:-4} REQUESTS=${REQUESTS:-8} PROMPT=${PROMPT:-256} NEW=${NEW:-4}
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
"$BUILD/bin/mx" make-model --preset medium --gate-skew "$SKEW" --out "$dir/medium" >/dev/null
run() {
    echo "-- $1 shards, $2 replicas, at most $3 experts per shard"
    /usr/bin/python3 bench/placement.py --model "$dir/medium" --shards "$1" --replicas "$2" \
        --max-experts-per-shard "$3" --requests "$REQUESTS" --prompt "$PROMPT" --new "$NEW" --rounds "$ROUNDS"
}
run 2 2 8
run 4 4 5
