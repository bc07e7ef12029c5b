#!/usr/bin/env bash
# fault_experts.sh - expert replicas stopped (SIGTERM, 5 rounds), frozen (SIGSTOP 20 s) and
# killed (SIGKILL) under 16 streams in a loopback cluster: no request fails, fixture tokens, the
# frozen replica costs under 60 % of the throughput and no 2 s token gap, the killed one no gap
# over one attempt deadline + 1 s (tests/cluster/fault_experts.py).
case "${BUILD:-build}" in *asan*) export MX_ASAN=1 ;; esac
exec "$(dirname "$0")/../cluster/run_py.sh" fault_experts ../shared/golden/tiny
