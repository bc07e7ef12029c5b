#!/usr/bin/env bash
# run.sh - the whole test suite: every cmocka unit-test binary in $BUILD/tests, then every
# suite script in tests/suites/ (golden fixtures, cluster, clients, tokenizer...). Each suite
# prints its own last line "N passed, N failed[, N skipped]"; this script adds them up and
# prints the grand total as its last line. Exit status is non-zero if anything failed.
set -u
BUILD=${BUILD:-build}
export BUILD
cd "$(dirname "$0")/.."
total_pass=0 total_fail=0 total_skip=0
failed_suites=()

add_counts() { # name, text of the last line
    local name=$1 line=$2 p f s
    p=$(sed -nE 's/.*\b([0-9]+) passed.*/\1/p' <<<"$line")
    f=$(sed -nE 's/.*\b([0-9]+) failed.*/\1/p' <<<"$line")
    s=$(sed -nE 's/.*\b([0-9]+) skipped.*/\1/p' <<<"$line")
    total_pass=$((total_pass + ${p:-0}))
    total_fail=$((total_fail + ${f:-0}))
    total_skip=$((total_skip + ${s:-0}))
}

# a bound on each binary against hangs; AddressSanitizer runs the kernels' long-prompt cases
# (up to 65,536 tokens) several times slower, so it gets more
test_limit=600
grep -q 'SAN=1' "$BUILD/config.stamp" 2>/dev/null && test_limit=1500
for t in "$BUILD"/tests/test_*; do
    [ -x "$t" ] || continue
    name=$(basename "$t")
    out=$(CMOCKA_MESSAGE_OUTPUT=stdout timeout "$test_limit" "$t" 2>&1)
    rc=$?
    # a binary may run several cmocka groups: add up every group's summary
    p=$(sed -nE 's/^\[  PASSED  \] ([0-9]+) test.*/\1/p' <<<"$out" | awk '{n += $1} END {print n + 0}')
    f=$(sed -nE 's/^\[  FAILED  \] ([0-9]+) test.*/\1/p' <<<"$out" | awk '{n += $1} END {print n + 0}')
    s=$(sed -nE 's/^\[  SKIPPED \] ([0-9]+) test.*/\1/p' <<<"$out" | awk '{n += $1} END {print n + 0}')
    p=${p:-0} f=${f:-0} s=${s:-0}
    if [ $rc -ne 0 ] && [ "$f" -eq 0 ]; then f=1; fi   # crashed or timed out
    echo "== $name: $p passed, $f failed, $s skipped"
    if [ "$f" -ne 0 ]; then
        echo "$out" | tail -40
        failed_suites+=("$name")
    fi
    total_pass=$((total_pass + p)); total_fail=$((total_fail + f)); total_skip=$((total_skip + s))
done

for s in tests/suites/*.sh; do
    [ -f "$s" ] || continue
    name=$(basename "$s" .sh)
    [ "$name" = lib ] && continue   # the suites' shared prelude (sourced), not a suite
    log=$(mktemp)
    timeout 1200 bash "$s" >"$log" 2>&1
    rc=$?
    last=$(grep -E '[0-9]+ passed, [0-9]+ failed' "$log" | tail -1)
    echo "== $name: ${last:-no result line (exit $rc)}"
    if [ -z "$last" ]; then
        last="0 passed, 1 failed"
    elif [ $rc -ne 0 ] && ! grep -qE '[1-9][0-9]* failed' <<<"$last"; then
        total_fail=$((total_fail + 1))   # exited non-zero although it counted no failure
    fi
    if [ $rc -ne 0 ] || grep -qE '[1-9][0-9]* failed' <<<"$last"; then
        tail -60 "$log"
        failed_suites+=("$name")
    fi
    add_counts "$name" "$last"
    rm -f "$log"
done

[ ${#failed_suites[@]} -eq 0 ] || echo "failing: ${failed_suites[*]}"
echo "$total_pass passed, $total_fail failed, $total_skip skipped"
[ "$total_fail" -eq 0 ] && [ ${#failed_suites[@]} -eq 0 ]
