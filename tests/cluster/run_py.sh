#!/usr/bin/env bash
# run_py.sh - runs one Python cluster test (tests/cluster/SCRIPT.py ARGS...) for a suite in
# tests/suites/: Debian's python3 (grpcio), a time limit, its output passed through, and a
# "0 passed, 1 failed" line if it died before printing its own count.
set -u
BUILD=${BUILD:-build}
export BUILD
cd "$(dirname "$0")/../.."
script=$1
shift
out=$(timeout 300 /usr/bin/python3 "tests/cluster/$script.py" "$@" 2>&1)
rc=$?
echo "$out"
last=$(echo "$out" | tail -1)
if ! grep -qE '^[0-9]+ passed, [0-9]+ failed' <<<"$last"; then
    echo "0 passed, 1 failed"
    exit 1
fi
[ $rc -eq 0 ]
