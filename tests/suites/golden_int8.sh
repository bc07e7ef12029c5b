#!/usr/bin/env bash
# golden_int8.sh - `mx golden --expert-dtype int8 --tier int8-experts` on the fixtures: experts
# quantized to int8 at load (per-row scales), everything else fp32, every case alone, batched
# and chunked, held to the int8-experts tier (cmd_golden.c); then the same with the attention
# projections in int8 too (--attn-dtype int8), held to the int8 tier. f32 KV pages, so that
# the weights are the only approximation. `long` (a 32K prompt) runs last; under
# AddressSanitizer (BUILD under */asan, or MX_GOLDEN_SLOW=1) it is skipped: it takes over 8
# minutes there, and the golden suite already runs it under ASan through the same code (the
# int8 kernels are the ones tiny and small run), and so is small's int8-tier run. Also checks
# that the tiers are not vacuous: int8 experts, and int8 attention alone, fail the fp32 tier.
set -u
BUILD=${BUILD:-build}
GOLDEN=${MX_GOLDEN_DIR:-../shared/golden}
slow=${MX_GOLDEN_SLOW:-0}
case "$BUILD" in *asan*) slow=1 ;; esac
pass=0 fail=0
for run in "int8-experts" "int8 --attn-dtype int8"; do
tier=${run%% *}
extra=""
[ "$tier" != "$run" ] && extra=${run#* }
for fx in tiny small long; do
    dir="$GOLDEN/$fx"
    if [ ! -f "$dir/cases.json" ]; then
        echo "FAIL $fx: no fixture at $dir"
        fail=$((fail + 1))
        continue
    fi
    if [ "$slow" = 1 ] && [ "$fx" = long ]; then
        echo "long: skipped under AddressSanitizer"
        continue
    fi
    # under ASan the int8 tier runs tiny only: small goes through the same int8 kernels (its
    # int8-experts run above) and would add a minute there
    if [ "$slow" = 1 ] && [ "$tier" = int8 ] && [ "$fx" = small ]; then
        echo "small [int8 tier]: skipped under AddressSanitizer"
        continue
    fi
    # shellcheck disable=SC2086 # $extra is a flag and its value
    out=$(timeout 900 "$BUILD/bin/mx" golden "$dir" --expert-dtype int8 $extra --kv-dtype f32 \
        --tier "$tier" 2>&1)
    rc=$?
    echo "$out" | grep -vE '^loading'
    last=$(echo "$out" | tail -1)
    p=$(sed -nE 's/^([0-9]+) passed, ([0-9]+) failed.*/\1/p' <<<"$last")
    f=$(sed -nE 's/^([0-9]+) passed, ([0-9]+) failed.*/\2/p' <<<"$last")
    if [ -z "$p" ]; then p=0; f=1; fi
    if [ $rc -ne 0 ] && [ "$f" -eq 0 ]; then f=1; fi
    pass=$((pass + p)); fail=$((fail + f))
done
done
# int8 experts move the logits far beyond the fp32 tolerance: the runner must say so.
if timeout 120 "$BUILD/bin/mx" golden "$GOLDEN/tiny" --expert-dtype int8 --kv-dtype f32 --tier fp32 \
    > /dev/null 2>&1; then
    echo "FAIL tiny: int8 experts passed the fp32 tier (are the experts really quantized?)"
    fail=$((fail + 1))
else
    echo "ok   tiny: int8 experts fail the fp32 tier, as they must"
    pass=$((pass + 1))
fi
if timeout 120 "$BUILD/bin/mx" golden "$GOLDEN/tiny" --attn-dtype int8 --kv-dtype f32 --tier fp32 \
    > /dev/null 2>&1; then
    echo "FAIL tiny: int8 attention passed the fp32 tier (are the projections really quantized?)"
    fail=$((fail + 1))
else
    echo "ok   tiny: int8 attention fails the fp32 tier, as it must"
    pass=$((pass + 1))
fi
echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
