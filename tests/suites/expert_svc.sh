#!/usr/bin/env bash
# expert_svc.sh - the expert-svc binary as a process: config errors name the file, line and
# key and exit non-zero; a good config loads the golden tiny shard, serves, and SIGTERM makes
# it shut down cleanly (exit 0). Run from the repo root with $BUILD set.
. "$(dirname "$0")/lib.sh"
BIN="$BUILD/bin/expert-svc"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# expect_config_error NAME NEEDLE CONFIG-TEXT
expect_config_error() {
    printf '%b' "$3" > "$tmp/$1.cfg"
    if out=$("$BIN" --config "$tmp/$1.cfg" 2>&1); then
        bad "$1: exited 0"
    elif grep -qF -- "$2" <<<"$out"; then
        ok "$1"
    else
        bad "$1: '$out' lacks '$2'"
    fi
}

expect_config_error unknown_key "$tmp/unknown_key.cfg:3: \`expert\`: unknown key" \
    'model_dir = "../shared/golden/tiny";\nlisten = "127.0.0.1:0";\nexpert = [0];\n'
expect_config_error missing_listen "\`listen\`: missing" 'model_dir = "../shared/golden/tiny";\nexperts = [0];\n'
expect_config_error bad_backend "\`backend\`: \"tpu\" is not a backend" \
    'model_dir = "x";\nlisten = "a:1";\nbackend = "tpu";\nexperts = [0];\n'
expect_config_error syntax "$tmp/syntax.cfg:2: syntax error" 'model_dir = "x";\nlisten = ;\n'
expect_config_error expert_range "\`experts\`: expert 7 does not exist" \
    'model_dir = "../shared/golden/tiny";\nlisten = "127.0.0.1:0";\nexperts = [0, 7];\n'
expect_config_error no_model "../shared/golden/nothere" \
    'model_dir = "../shared/golden/nothere";\nlisten = "127.0.0.1:0";\nexperts = [0];\n'
if "$BIN" --config "$tmp/none.cfg" 2>/dev/null; then bad "missing file: exited 0"; else ok "missing file"; fi

printf 'model_dir = "../shared/golden/tiny";\nlisten = "127.0.0.1:0";\nexperts = [1, 3];\nthreads = 1;\n' > "$tmp/good.cfg"
"$BIN" --config "$tmp/good.cfg" 2> "$tmp/good.log" &
pid=$!
for _ in $(seq 50); do grep -q "serving" "$tmp/good.log" && break; sleep 0.1; done
if grep -q "serving 16 experts" "$tmp/good.log"; then ok "starts and serves 16 experts"; else bad "start: $(cat "$tmp/good.log")"; fi
kill -TERM "$pid"
for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
if kill -0 "$pid" 2>/dev/null; then
    kill -KILL "$pid"
    bad "SIGTERM: still running after 5 s"
else
    wait "$pid"
    rc=$?
    if [ "$rc" -eq 0 ]; then ok "SIGTERM: clean exit"; else bad "SIGTERM: exit $rc"; fi
fi

finish
