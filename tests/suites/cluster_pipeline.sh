#!/usr/bin/env bash
# cluster_pipeline.sh - chained stages and pipelined micro-batches in a real loopback cluster
# (3 stages, pipeline_depth 2): fixture tokens with 8 requests in flight, overlap seen in
# AttentionStage/Info, downstream errors named, cancellation while pipelined, bad configs
# (tests/cluster/pipeline_cluster.py, an independent Python grpcio client).
set -u
BUILD=${BUILD:-build}
export BUILD
cd "$(dirname "$0")/../.."
out=$(timeout 300 /usr/bin/python3 tests/cluster/pipeline_cluster.py ../shared/golden/tiny 2>&1)
rc=$?
echo "$out"
last=$(echo "$out" | tail -1)
if ! grep -qE '^[0-9]+ passed, [0-9]+ failed' <<<"$last"; then
    echo "0 passed, 1 failed"
    exit 1
fi
[ $rc -eq 0 ]
