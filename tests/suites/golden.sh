#!/usr/bin/env bash
# golden.sh - `mx golden` on every fixture in ../shared/golden (tiny and small): each case
# alone, all cases as one batch, long prompts in chunks of 100, against the reference logits.
set -u
BUILD=${BUILD:-build}
GOLDEN=${MX_GOLDEN_DIR:-../shared/golden}
pass=0 fail=0
for dir in "$GOLDEN"/*/; do
    [ -f "$dir/cases.json" ] || continue
    out=$("$BUILD/bin/mx" golden "${dir%/}" 2>&1)
    rc=$?
    echo "$out" | grep -vE '^loading'
    last=$(echo "$out" | tail -1)
    p=$(sed -nE 's/^([0-9]+) passed, ([0-9]+) failed.*/\1/p' <<<"$last")
    f=$(sed -nE 's/^([0-9]+) passed, ([0-9]+) failed.*/\2/p' <<<"$last")
    if [ -z "$p" ]; then p=0; f=1; fi
    if [ $rc -ne 0 ] && [ "$f" -eq 0 ]; then f=1; fi
    pass=$((pass + p)); fail=$((fail + f))
done
if [ $((pass + fail)) -eq 0 ]; then
    echo "no golden fixtures found under $GOLDEN"
    fail=1
fi
echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
