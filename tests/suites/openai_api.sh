#!/usr/bin/env bash
# openai_api.sh - the gateway's OpenAI-compatible HTTP API on a real loopback cluster of the
# golden `tiny` fixture, driven by the official openai npm client (tests/openai/package-lock.json,
# installed with `npm ci` into tests/.cache): completions and chat completions, streamed and
# not, against the fixture's greedy tokens and the gRPC API's answers; stop strings, max_tokens,
# usage, logprobs; OpenAI-format errors with their HTTP status; /v1/models, /health; a client
# that disconnects mid-stream (or times out) frees its sequence on every stage
# (tests/openai/openai_api.py). Without node or the npm registry it reports itself skipped.
set -u
BUILD=${BUILD:-build}
export BUILD
cd "$(dirname "$0")/../.."
CACHE=tests/.cache/openai-node
skip() { echo "SKIP: $1"; echo "0 passed, 0 failed, 1 skipped"; exit 0; }

for b in mx gateway attention-svc expert-svc; do
    [ -x "$BUILD/bin/$b" ] || { echo "missing $BUILD/bin/$b (run make)"; echo "0 passed, 1 failed"; exit 1; }
done
command -v node >/dev/null && command -v npm >/dev/null || skip "node/npm not on PATH"
mkdir -p "$CACHE"
if ! cmp -s tests/openai/package-lock.json "$CACHE/package-lock.json" || [ ! -d "$CACHE/node_modules/openai" ]; then
    cp tests/openai/package.json tests/openai/package-lock.json "$CACHE/"
    (cd "$CACHE" && timeout 300 npm ci --no-audit --no-fund --loglevel=error) >/dev/null 2>&1 ||
        { rm -f "$CACHE/package-lock.json"; skip "npm ci failed (npm registry unreachable?)"; }
fi
cp tests/openai/client_checks.mjs "$CACHE/"
out=$(timeout 400 /usr/bin/python3 tests/openai/openai_api.py ../shared/golden/tiny "$CACHE" 2>&1)
rc=$?
echo "$out"
last=$(echo "$out" | tail -1)
if ! grep -qE '^[0-9]+ passed, [0-9]+ failed' <<<"$last"; then
    echo "0 passed, 1 failed"
    exit 1
fi
[ $rc -eq 0 ]
