#!/usr/bin/env bash
# rpc_python_client.sh - an independent client (Python grpcio) against a server built on the
# mx RPC layer (tests/rpc/echo_server.c), then a SIGTERM that must stop it cleanly.
# Skips (does not fail) when python3-grpcio or protoc is missing.
set -u
BUILD=${BUILD:-build}
SERVER=$BUILD/tests/rpc/echo_server
PY=/usr/bin/python3
if ! $PY -c 'import grpc, google.protobuf' 2>/dev/null || ! command -v protoc >/dev/null; then
    echo "python3-grpcio / protobuf-compiler missing"
    echo "0 passed, 0 failed, 1 skipped"
    exit 0
fi
if [ ! -x "$SERVER" ]; then
    echo "$SERVER not built"
    echo "0 passed, 1 failed"
    exit 1
fi
tmp=$(mktemp -d)
trap 'kill $pid 2>/dev/null; rm -rf "$tmp"' EXIT
protoc -Iproto --python_out="$tmp" proto/grpc/health/v1/health.proto proto/mx/v1/generation.proto \
    proto/mx/internal/v1/*.proto || { echo "0 passed, 1 failed"; exit 1; }

"$SERVER" >"$tmp/out" 2>"$tmp/err" &
pid=$!
port=
for _ in $(seq 100); do
    port=$(sed -nE 's/^port ([0-9]+)$/\1/p' "$tmp/out")
    [ -n "$port" ] && break
    sleep 0.05
done
if [ -z "$port" ]; then
    cat "$tmp/err"
    echo "0 passed, 1 failed"
    exit 1
fi

$PY tests/rpc/client_test.py "$port" "$tmp" | tee "$tmp/py"
py_pass=$(sed -nE 's/^([0-9]+) passed, ([0-9]+) failed$/\1/p' "$tmp/py")
py_fail=$(sed -nE 's/^([0-9]+) passed, ([0-9]+) failed$/\2/p' "$tmp/py")
pass=${py_pass:-0} fail=${py_fail:-1}

# Graceful stop: SIGTERM -> exit 0 within the 2 s grace period (+ slack).
kill -TERM $pid
rc=124
for _ in $(seq 100); do
    if ! kill -0 $pid 2>/dev/null; then wait $pid; rc=$?; break; fi
    sleep 0.05
done
if [ $rc -eq 0 ] && grep -q "stopped on signal 15" "$tmp/out"; then
    echo "PASS sigterm_stops_server"; pass=$((pass + 1))
else
    echo "FAIL sigterm_stops_server (exit $rc)"; cat "$tmp/err"; fail=$((fail + 1))
fi
echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
