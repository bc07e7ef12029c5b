#!/usr/bin/env bash
# service_config.sh - every service's config file through the shared config-file layer, as
# processes: `--check-config` accepts a good file (exit 0, "config OK", nothing loaded) and
# refuses a bad one (exit 2) with the file, line and key named; unknown keys are refused in
# each service (top level and inside groups, the router's `experts` group too); drain_ms is
# read by all three and range-checked; a stage that is not the last must have `next`; and
# expert-svc drains on SIGTERM for its drain_ms. Run from the repo root with $BUILD set.
. "$(dirname "$0")/lib.sh"
tmp=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null; done; rm -rf "$tmp"; }
trap cleanup EXIT
MODEL=../shared/golden/tiny

# refuse NAME BINARY NEEDLE CONFIG-TEXT: --check-config exits 2 naming NEEDLE
refuse() {
    printf '%b' "$4" > "$tmp/$1.cfg"
    out=$("$BUILD/bin/$2" --check-config "$tmp/$1.cfg" 2>&1)
    rc=$?
    if [ $rc -ne 2 ]; then bad "$1: exit $rc (want 2): $out"
    elif grep -qF -- "$3" <<<"$out"; then ok "$1"
    else bad "$1: '$out' lacks '$3'"; fi
}
# accept NAME BINARY CONFIG-TEXT: --check-config exits 0 with "config OK"
accept() {
    printf '%b' "$3" > "$tmp/$1.cfg"
    out=$("$BUILD/bin/$2" --check-config "$tmp/$1.cfg" 2>&1)
    rc=$?
    if [ $rc -eq 0 ] && grep -qF "config OK" <<<"$out"; then ok "$1"; else bad "$1: exit $rc: $out"; fi
}

GW='gateway = {\n  listen = "127.0.0.1:0";\n  model = "'$MODEL'";\n  stages = ["127.0.0.1:1"];\n'
ST='stage = {\n  listen = "127.0.0.1:0";\n  model = "'$MODEL'";\n  index = 1; count = 2;\n  layer_begin = 4; layer_end = 8;\n'
EX='model_dir = "'$MODEL'";\nlisten = "127.0.0.1:0";\nexperts = [0, 1];\n'

# gateway
accept gateway_ok gateway "$GW  drain_ms = 30000;\n};\n"
refuse gateway_unknown_key gateway "gateway_unknown_key.cfg:5: \`gateway.max_step_token\`: unknown key" \
    "$GW  max_step_token = 8;\n};\n"
refuse gateway_unknown_group gateway "gateway_unknown_group.cfg:6: \`gatewy\`: unknown key" "$GW};\ngatewy = {};\n"
refuse gateway_drain_range gateway "\`gateway.drain_ms\`: -1 is out of range" "$GW  drain_ms = -1;\n};\n"
refuse gateway_missing_listen gateway "\`gateway.listen\`: missing" \
    'gateway = { model = "x"; stages = ["a:1"]; };\n'
refuse gateway_no_group gateway "\`gateway\`: missing" "# no gateway group\n"

# attention-svc (the last stage of two: no next)
accept stage_ok attention-svc "$ST  drain_ms = 100;\n};\n"
refuse stage_unknown_key attention-svc "stage_unknown_key.cfg:6: \`stage.nxt\`: unknown key" \
    "$ST  nxt = \"127.0.0.1:2\";\n};\n"
refuse stage_drain_type attention-svc "\`stage.drain_ms\`: expected an integer" "$ST  drain_ms = \"5s\";\n};\n"
refuse stage_needs_next attention-svc "stage.next is required: stage 0 of 2 is not the last" \
    'stage = { listen = "127.0.0.1:0"; model = "x"; index = 0; count = 2; layer_begin = 0; layer_end = 4; };\n'
refuse stage_router_unknown_key attention-svc "\`experts.timeout_ms\`: unknown key" \
    "$ST};\nexperts = { timeout_ms = 5; shards = ( { experts = [0]; replicas = [\"a:1\"]; } ); };\n"
refuse stage_shard_unknown_key attention-svc "\`experts.shards.[0].replica\`: unknown key" \
    "$ST};\nexperts = { shards = ( { experts = [0]; replica = [\"a:1\"]; } ); };\n"
accept stage_with_router attention-svc \
    "$ST};\nexperts = { expert_timeout_ms = 500; shards = ( { experts = [0, 1, 2, 3]; replicas = [\"a:1\"]; } ); };\n"

# expert-svc
accept expert_ok expert-svc "${EX}drain_ms = 0;\n"
accept expert_old_spelling expert-svc "${EX}shutdown_grace_ms = 20000;\n"
refuse expert_unknown_key expert-svc "expert_unknown_key.cfg:4: \`drain\`: unknown key" "${EX}drain = 5;\n"
refuse expert_both_spellings expert-svc "\`shutdown_grace_ms\`: is the older spelling of drain_ms" \
    "${EX}drain_ms = 1;\nshutdown_grace_ms = 2;\n"

# usage errors exit 2; --help exits 0
for b in gateway attention-svc expert-svc; do
    "$BUILD/bin/$b" --bogus >/dev/null 2>&1
    rc=$?
    "$BUILD/bin/$b" --help >/dev/null 2>&1
    hrc=$?
    if [ $rc -eq 2 ] && [ $hrc -eq 0 ]; then ok "$b: usage exit codes"; else bad "$b: --bogus $rc, --help $hrc"; fi
done

# drain on SIGTERM: expert-svc says it drains for its drain_ms, then exits 0
printf '%bthreads = 1;\ndrain_ms = 1500;\n' "$EX" > "$tmp/drain.cfg"
"$BUILD/bin/expert-svc" --config "$tmp/drain.cfg" 2> "$tmp/drain.log" &
pid=$!
pids+=("$pid")
for _ in $(seq 100); do grep -q "serving" "$tmp/drain.log" && break; sleep 0.1; done
kill -TERM "$pid"
for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
if kill -0 "$pid" 2>/dev/null; then
    bad "drain: still running 10 s after SIGTERM"
else
    wait "$pid"
    rc=$?
    if [ $rc -eq 0 ] && grep -q "draining (up to 1500 ms)" "$tmp/drain.log"; then ok "drain: SIGTERM drains and exits 0"
    else bad "drain: exit $rc: $(cat "$tmp/drain.log")"; fi
fi

finish
