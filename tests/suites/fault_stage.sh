#!/usr/bin/env bash
# fault_stage.sh - stage failure semantics in a loopback cluster: an expert fault in the middle
# of a RunBatch then a retry gives the fixture's tokens; stage SIGKILL + restart, 5 rounds,
# leaves no orphan sequence after the lease; a stage is NOT_SERVING while a shard has no live
# replica and SERVING again on its own (tests/cluster/fault_stage.py).
case "${BUILD:-build}" in *asan*) export MX_ASAN=1 ;; esac
exec "$(dirname "$0")/../cluster/run_py.sh" fault_stage ../shared/golden/tiny
