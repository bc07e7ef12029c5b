#!/usr/bin/env bash
# expert_stats.sh - expert load statistics and placement on the golden fixtures: routed tokens
# counted by real stages (`mx expert-stats`) against the fixture's own expert use, a plan from
# `mx plan-experts`, and a cluster laid out by that plan (experts on two shards) still giving
# the fixture's greedy tokens (tests/cluster/expert_stats.py, an independent grpcio client).
set -u
BUILD=${BUILD:-build}
export BUILD
cd "$(dirname "$0")/../.."
pass=0 fail=0
for fx in ../shared/golden/tiny ../shared/golden/small; do
    out=$(timeout 400 /usr/bin/python3 tests/cluster/expert_stats.py "$fx" 2>&1)
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
