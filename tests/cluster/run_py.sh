#!/usr/bin/env bash
# run_py.sh - runs one Python cluster test (tests/cluster/SCRIPT.py ARGS...) for a suite in
# tests/suites/: Debian's python3 (grpcio), a time limit, its output passed through, and a
# "0 passed, 1 failed" line if it died before printing its own count.
. "$(dirname "$0")/../suites/lib.sh"
script=$1
shift
run_counted 300 /usr/bin/python3 "tests/cluster/$script.py" "$@"
