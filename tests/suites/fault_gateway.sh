#!/usr/bin/env bash
# fault_gateway.sh - the gateway's health follows its pipeline: it stays SERVING through brief
# stalls of stage 0, turns NOT_SERVING within 2 s of losing it (frozen), SERVING again within
# 2 s of its return, and more (tests/cluster/fault_gateway.py).
case "${BUILD:-build}" in *asan*) export MX_ASAN=1 ;; esac
exec "$(dirname "$0")/../cluster/run_py.sh" fault_gateway ../shared/golden/tiny
