#!/usr/bin/env bash
# reflection.sh - gRPC server reflection (grpc.reflection.v1 and v1alpha) on all three services
# of a real loopback cluster, through an independent client that has none of mx's .proto files:
# npm grpc-js-reflection-client + @grpc/grpc-js (pinned in tests/reflection/package-lock.json,
# installed with `npm ci` into tests/.cache) lists services, describes mx.v1.Generation and calls
# Generate with the fetched descriptors only; the tokens must equal a Python grpcio client's and
# the fixture's (tests/reflection/reflection_cluster.py). Without node or the npm registry the
# suite reports itself skipped, not passed.
set -u
BUILD=${BUILD:-build}
export BUILD
cd "$(dirname "$0")/../.."
CACHE=tests/.cache/reflection-node
skip() { echo "SKIP: $1"; echo "0 passed, 0 failed, 1 skipped"; exit 0; }

for b in mx gateway attention-svc expert-svc; do
    [ -x "$BUILD/bin/$b" ] || { echo "missing $BUILD/bin/$b (run make)"; echo "0 passed, 1 failed"; exit 1; }
done
command -v node >/dev/null && command -v npm >/dev/null || skip "node/npm not on PATH"
mkdir -p "$CACHE"
if ! cmp -s tests/reflection/package-lock.json "$CACHE/package-lock.json" || [ ! -d "$CACHE/node_modules" ]; then
    cp tests/reflection/package.json tests/reflection/package-lock.json "$CACHE/"
    (cd "$CACHE" && timeout 300 npm ci --no-audit --no-fund --loglevel=error) >/dev/null 2>&1 ||
        { rm -f "$CACHE/package-lock.json"; skip "npm ci failed (npm registry unreachable?)"; }
fi
cp tests/reflection/reflect_client.cjs "$CACHE/"

out=$(timeout 300 /usr/bin/python3 tests/reflection/reflection_cluster.py ../shared/golden/tiny "$CACHE" 2>&1)
rc=$?
echo "$out"
if ! tail -1 <<<"$out" | grep -qE '^[0-9]+ passed, [0-9]+ failed'; then
    echo "0 passed, 1 failed"
    exit 1
fi
exit $rc
