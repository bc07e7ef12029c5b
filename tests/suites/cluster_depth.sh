#!/usr/bin/env bash
# cluster_depth.sh - `mx cluster`'s default pipeline depth: one micro-batch per stage when the
# stages' threads fit the machine's cores (stages x --threads <= online cores), else 1 (the
# processes share the cores, so a second micro-batch would only read every weight again);
# --pipeline-depth overrides it. Reads the gateway config the running cluster wrote
# (--workdir) once its gateway listens.
. "$(dirname "$0")/lib.sh"
need_bins mx gateway attention-svc expert-svc
fixture=../shared/golden/tiny
tmp=$(mktemp -d)
trap 'stop_cluster; rm -rf "$tmp"' EXIT
cores=$(getconf _NPROCESSORS_ONLN)

# depth_of ARGS...: starts the cluster with ARGS, prints the gateway's pipeline_depth ("" if
# it did not come up), then stops it
depth_of() {
    local w=$tmp/w$RANDOM
    mkdir -p "$w"
    start_cluster "$tmp/out" "$tmp/out" 600 0.1 --model "$fixture" --expert-shards 1 --workdir "$w" "$@"
    if [ -z "$addr" ]; then
        cat "$tmp/out" >&2
        stop_cluster
        return 0
    fi
    sed -nE 's/^ *pipeline_depth = ([0-9]+);/\1/p' "$w/gateway.cfg"
    stop_cluster
}

# every core per process (the default): the stages cover the cores whenever there are 2
expect_eq "2 stages, threads = every core: depth 1" "$(depth_of --stages 2)" 1
# 1 thread per stage: 2 stages fit 2 or more cores
want=1
[ "$cores" -ge 2 ] && want=2
expect_eq "2 stages x 1 thread on $cores cores: depth $want" "$(depth_of --stages 2 --threads 1)" "$want"
# an explicit depth is kept
expect_eq "--pipeline-depth 3 is kept" "$(depth_of --stages 2 --pipeline-depth 3)" 3
finish
