#!/usr/bin/env bash
# openai_api.sh - the gateway's OpenAI-compatible HTTP API on a real loopback cluster of the
# golden `tiny` fixture, driven by the official openai npm client (tests/openai/package-lock.json,
# installed with `npm ci` into tests/.cache): completions and chat completions, streamed and
# not, against the fixture's greedy tokens and the gRPC API's answers; stop strings, max_tokens,
# usage, logprobs; OpenAI-format errors with their HTTP status; /v1/models, /health; a client
# that disconnects mid-stream (or times out) frees its sequence on every stage
# (tests/openai/openai_api.py). Without node or the npm registry it reports itself skipped.
. "$(dirname "$0")/lib.sh"
CACHE=tests/.cache/openai-node

need_bins mx gateway attention-svc expert-svc
npm_install tests/openai "$CACHE" node_modules/openai
cp tests/openai/client_checks.mjs "$CACHE/"
run_counted 400 /usr/bin/python3 tests/openai/openai_api.py ../shared/golden/tiny "$CACHE"
