#!/usr/bin/env bash
# cluster_cores.sh - what `mx cluster` derives from the machine's cores. The pipeline depth:
# one micro-batch per stage when the stages' threads fit the cores (stages x --threads <= the
# CPUs it may use), else 1 (the processes share the cores, so a second micro-batch would only
# read every weight again); --pipeline-depth overrides it. Thread pinning: when every stage and
# shard has a thread per CPU (--threads 0, the default, or the CPU count) each one's pool
# workers run on one CPU each, apart (read from /proc: Cpus_allowed_list of every thread);
# with fewer threads, or --pin-threads no, no thread is pinned. Reads the configs the running
# cluster wrote (--workdir) once its gateway listens.
. "$(dirname "$0")/lib.sh"
need_bins mx gateway attention-svc expert-svc
fixture=../shared/golden/tiny
tmp=$(mktemp -d)
trap 'stop_cluster; rm -rf "$tmp"' EXIT
cores=$(nproc) # the CPUs this process may use, as mx cluster counts them

# up ARGS...: starts the cluster with ARGS in a fresh workdir ($w); "" in $addr if it failed
up() {
    w=$tmp/w$RANDOM
    mkdir -p "$w"
    start_cluster "$tmp/out" "$tmp/out" 600 0.1 --model "$fixture" --expert-shards 1 --workdir "$w" "$@"
    [ -n "$addr" ] || cat "$tmp/out" >&2
}

# depth_of ARGS...: the gateway's pipeline_depth for a cluster started with ARGS
depth_of() {
    up "$@"
    [ -n "$addr" ] && sed -nE 's/^ *pipeline_depth = ([0-9]+);/\1/p' "$w/gateway.cfg"
    stop_cluster
}

# pinned_of ARGS...: for a cluster started with ARGS, one line per stage and shard process:
# "<kind> <pinned threads> <distinct CPUs among them>", a thread being pinned when its
# Cpus_allowed_list is a single CPU
pinned_of() {
    up "$@"
    if [ -n "$addr" ]; then
        sed -nE 's/^(stage|expert) .* pid ([0-9]+)$/\1 \2/p' "$tmp/out" | while read -r kind pid; do
            cpus=$(cat /proc/"$pid"/task/*/status 2>/dev/null | sed -nE 's/^Cpus_allowed_list:\s+([0-9]+)$/\1/p')
            echo "$kind $(grep -c . <<<"$cpus") $(sort -u <<<"$cpus" | grep -c .)"
        done
    fi
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

if [ "$cores" -ge 2 ]; then
    # a pool of `cores` threads: its cores - 1 workers pinned, one CPU each, all different
    workers=$((cores - 1))
    expect_eq "threads = every core: each process's workers pinned apart" \
        "$(pinned_of --stages 2 | sort | uniq -c | sed 's/^ *//')" \
        "$(printf '1 expert %d %d\n2 stage %d %d' "$workers" "$workers" "$workers" "$workers")"
    expect_eq "--threads $cores: pinned as well" "$(pinned_of --stages 1 --threads "$cores" | sort)" \
        "$(printf 'expert %d %d\nstage %d %d' "$workers" "$workers" "$workers" "$workers")"
    expect_eq "--pin-threads no: nothing pinned" "$(pinned_of --stages 1 --pin-threads no | sort)" \
        "$(printf 'expert 0 0\nstage 0 0')"
    expect_eq "--threads 1: nothing pinned" "$(pinned_of --stages 1 --threads 1 | sort)" \
        "$(printf 'expert 0 0\nstage 0 0')"
else
    skip "thread pinning needs 2 CPUs or more"
fi
finish
