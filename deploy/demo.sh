#!/usr/bin/env bash
# demo.sh - the README's main job: writes a small random-weight model, starts a loopback
# cluster (gateway, 2 attention stages, 2 expert shards, the second with 2 replicas), sends
# streaming Generate calls with `mx client` (token ids, then chat messages) and health +
# Generate calls from Python grpcio, then stops the cluster. Run through `make demo`.
set -euo pipefail
BUILD=${BUILD:-build}
MX="$BUILD/bin/mx"
work=$(mktemp -d)
cluster_pid=
cleanup() {
    if [ -n "$cluster_pid" ]; then kill -TERM "$cluster_pid" 2>/dev/null || true; wait "$cluster_pid" 2>/dev/null || true; fi
    rm -rf "$work"
}
trap cleanup EXIT

"$MX" make-model --preset tiny --out "$work/model" --seed 7
"$MX" cluster --model "$work/model" --stages 2 --expert-shards 2 --replicas 1,2 >"$work/cluster.out" 2>"$work/cluster.err" &
cluster_pid=$!
addr=
for _ in $(seq 1 300); do
    addr=$(sed -nE 's/^gateway listening on (.*)$/\1/p' "$work/cluster.out")
    [ -n "$addr" ] && break
    kill -0 "$cluster_pid" 2>/dev/null || { cat "$work/cluster.err"; echo "cluster failed to start"; exit 1; }
    sleep 0.2
done
[ -n "$addr" ] || { echo "cluster did not become ready"; exit 1; }
cat "$work/cluster.out"

echo "== mx client: Generate (streaming), greedy, 12 tokens"
"$MX" client --addr "$addr" --prompt-ids 1,2,3,4,5 --max-new-tokens 12
echo "== the same model in one process (must print the same ids)"
"$MX" generate --model "$work/model" --prompt-ids 1,2,3,4,5 --max-new-tokens 12 2>/dev/null

echo "== mx client: chat messages in (MiniMax-Text-01 template), streamed text out (random weights: gibberish)"
"$MX" client --addr "$addr" --max-new-tokens 16 \
    --messages '[{"role": "system", "content": "You are a helpful assistant."}, {"role": "user", "content": "Hello!"}]'
echo
echo "== Python grpcio: Health/Check and Generate"
/usr/bin/python3 tests/cluster/demo_client.py --addr "$addr" --proto-dir proto
