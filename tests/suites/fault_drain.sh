#!/usr/bin/env bash
# fault_drain.sh - a stage drains on SIGTERM: 16 streams in flight through a 2-stage loopback
# cluster complete with the reference greedy tokens when stage 1, then stage 0, is SIGTERMed;
# a request after the signal fails fast; the stage exits 0 within drain_ms
# (tests/cluster/fault_drain.py).
case "${BUILD:-build}" in *asan*) export MX_ASAN=1 ;; esac
exec "$(dirname "$0")/../cluster/run_py.sh" fault_drain ../shared/golden/tiny
