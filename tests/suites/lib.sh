# lib.sh - the prelude the suites in tests/suites/ share; sourced, never run:
#     . "$(dirname "$0")/lib.sh"
# It sets BUILD (default build, exported for the Python and Node clients the suites start),
# moves to the repo root (the fixtures are ../shared/golden from there), and gives the pass /
# fail counters with ok, bad, check and finish, skip for a suite that cannot run here, checks
# for built binaries, the npm packages of a Node client, one Python client run whose own
# "N passed, N failed" line counts, and a loopback cluster (`mx cluster`) started and stopped
# by pid. Every wait is bounded. The last line a suite prints is "N passed, N failed[, N
# skipped]": tests/run.sh adds those up.
if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    echo "lib.sh is the suites' shared prelude: source it, do not run it"
    echo "0 passed, 0 failed"
    exit 0
fi
set -u
BUILD=${BUILD:-build}
export BUILD
cd "$(dirname "${BASH_SOURCE[0]}")/../.." || exit 1
pass=0 fail=0

ok() { echo "ok   $1"; pass=$((pass + 1)); }
bad() { echo "FAIL $1"; fail=$((fail + 1)); }
# check NAME STATUS DETAIL: ok when STATUS is 0
check() { if [ "$2" -eq 0 ]; then ok "$1 $3"; else bad "$1 $3"; fi; }
expect_eq() { if [ "$2" = "$3" ]; then ok "$1"; else bad "$1: got '$2', expected '$3'"; fi; }
expect_in() { if grep -qF -- "$3" <<<"$2"; then ok "$1"; else bad "$1: '$2' lacks '$3'"; fi; }
# The count line, then exit: 0 when nothing failed.
finish() {
    echo "$pass passed, $fail failed"
    [ "$fail" -eq 0 ]
    exit
}
# skip REASON: the suite cannot run here (a missing tool or registry): skipped, not passed.
skip() {
    echo "SKIP: $1"
    echo "0 passed, 0 failed, 1 skipped"
    exit 0
}

# need_bins NAME...: every $BUILD/bin/NAME is built, else one failure and exit.
need_bins() {
    local b
    for b in "$@"; do
        [ -x "$BUILD/bin/$b" ] || { echo "missing $BUILD/bin/$b (run make)"; echo "0 passed, 1 failed"; exit 1; }
    done
}

# npm_install SRC CACHE [MARK]: `npm ci` of SRC/package-lock.json into CACHE, once per lock file
# (again when the lock changes or CACHE/MARK is missing; MARK defaults to node_modules). Skips
# the suite without node/npm or when the registry cannot be reached.
npm_install() {
    local src=$1 cache=$2 mark=${3:-node_modules}
    command -v node >/dev/null && command -v npm >/dev/null || skip "node/npm not on PATH"
    mkdir -p "$cache"
    if ! cmp -s "$src/package-lock.json" "$cache/package-lock.json" || [ ! -d "$cache/$mark" ]; then
        cp "$src/package.json" "$src/package-lock.json" "$cache/"
        (cd "$cache" && timeout 300 npm ci --no-audit --no-fund --loglevel=error) >/dev/null 2>&1 ||
            { rm -f "$cache/package-lock.json"; skip "npm ci failed (npm registry unreachable?)"; }
    fi
}

# run_counted SECONDS COMMAND...: runs a client that prints its own "N passed, N failed" last
# line, passing its output through; adds "0 passed, 1 failed" if it died before that line.
# Returns 1 then, else the client's exit status.
run_counted() {
    local limit=$1 out rc
    shift
    out=$(timeout "$limit" "$@" 2>&1)
    rc=$?
    echo "$out"
    if ! tail -1 <<<"$out" | grep -qE '^[0-9]+ passed, [0-9]+ failed'; then
        echo "0 passed, 1 failed"
        return 1
    fi
    return $rc
}

# per_fixture SECONDS SCRIPT: the Python client SCRIPT on the tiny and small fixtures, each
# within SECONDS; its PASS lines are dropped, its counts added to pass / fail (a client that
# died without its count line, or exited non-zero, counts one failure).
per_fixture() {
    local limit=$1 script=$2 fx out rc last p f
    for fx in ../shared/golden/tiny ../shared/golden/small; do
        out=$(timeout "$limit" /usr/bin/python3 "$script" "$fx" 2>&1)
        rc=$?
        echo "$out" | grep -v '^PASS' | grep -v -E '^[0-9]+ passed'
        last=$(echo "$out" | tail -1)
        p=$(sed -nE 's/^([0-9]+) passed, ([0-9]+) failed.*/\1/p' <<<"$last")
        f=$(sed -nE 's/^([0-9]+) passed, ([0-9]+) failed.*/\2/p' <<<"$last")
        if [ -z "$p" ]; then p=0 f=1; echo "$out" | tail -30; fi
        if [ $rc -ne 0 ] && [ "$f" -eq 0 ]; then f=1; fi
        echo "== $(basename "$fx"): $p passed, $f failed"
        pass=$((pass + p)) fail=$((fail + f))
    done
}

# start_cluster OUT ERR TRIES INTERVAL ARGS...: `mx cluster ARGS` in the background, its stdout
# in OUT and stderr in ERR (the same file is fine); waits at most TRIES x INTERVAL seconds for
# its "gateway listening on ADDR" line. Sets cluster_pid, and addr (empty if the cluster exited
# or did not come up in time). stop_cluster ends it.
cluster_pid=
start_cluster() {
    local out=$1 err=$2 tries=$3 interval=$4
    shift 4
    if [ "$out" = "$err" ]; then
        "$BUILD/bin/mx" cluster "$@" >"$out" 2>&1 &
    else
        "$BUILD/bin/mx" cluster "$@" >"$out" 2>"$err" &
    fi
    cluster_pid=$!
    addr=
    for _ in $(seq "$tries"); do
        addr=$(sed -nE 's/^gateway listening on (\S+)$/\1/p' "$out" | head -1)
        [ -n "$addr" ] && break
        kill -0 "$cluster_pid" 2>/dev/null || break
        sleep "$interval"
    done
}

# SIGTERM to the cluster (it stops its services), SIGKILL if it is still there after 10 s.
stop_cluster() {
    [ -n "$cluster_pid" ] || return 0
    kill -TERM "$cluster_pid" 2>/dev/null
    for _ in $(seq 100); do kill -0 "$cluster_pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$cluster_pid" 2>/dev/null
    wait "$cluster_pid" 2>/dev/null
    cluster_pid=
}
