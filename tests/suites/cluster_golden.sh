#!/usr/bin/env bash
# cluster_golden.sh - the golden fixtures through a real loopback cluster (gateway, 2 stages,
# 2 expert shards, one with 2 replicas): greedy ids and logprobs against expected.safetensors,
# 4 requests in flight, via an independent Python grpcio client (tests/cluster/golden_cluster.py).
set -u
BUILD=${BUILD:-build}
export BUILD
cd "$(dirname "$0")/../.."
pass=0 fail=0
for fx in ../shared/golden/tiny ../shared/golden/small; do
    out=$(timeout 300 /usr/bin/python3 tests/cluster/golden_cluster.py "$fx" 2>&1)
    rc=$?
    echo "$out" | grep -v '^PASS' | grep -v -E '^[0-9]+ passed'
    last=$(echo "$out" | tail -1)
    p=$(sed -nE 's/^([0-9]+) passed, ([0-9]+) failed.*/\1/p' <<<"$last")
    f=$(sed -nE 's/^([0-9]+) passed, ([0-9]+) failed.*/\2/p' <<<"$last")
    if [ -z "$p" ]; then p=0 f=1; echo "$out" | tail -30; fi
    if [ $rc -ne 0 ] && [ "$f" -eq 0 ]; then f=1; fi
    echo "== $(basename "$fx"): $p passed, $f failed"
    pass=$((pass + p)) fail=$((fail + f))
done
echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
