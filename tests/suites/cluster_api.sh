#!/usr/bin/env bash
# cluster_api.sh - the public API of a real loopback cluster through an independent Python
# grpcio client: health, ModelInfo, Complete, bad input, cancellation/deadline release on
# every stage, killing an expert replica mid-stream, child death (tests/cluster/api_cluster.py).
set -u
BUILD=${BUILD:-build}
export BUILD
cd "$(dirname "$0")/../.."
out=$(timeout 300 /usr/bin/python3 tests/cluster/api_cluster.py ../shared/golden/tiny 2>&1)
rc=$?
echo "$out"
last=$(echo "$out" | tail -1)
if ! grep -qE '^[0-9]+ passed, [0-9]+ failed' <<<"$last"; then
    echo "0 passed, 1 failed"
    exit 1
fi
[ $rc -eq 0 ]
