#!/usr/bin/env bash
# tests/gpu/run.sh - the GPU check of the CUDA backend, for a machine with an NVIDIA GPU:
# builds, compares every CUDA kernel with the CPU backend (kernel_check), runs every golden
# fixture on the CUDA backend at the fp32 tier with f32 KV and at the kv tier with the default
# bf16 KV, then prints the kernel benchmark table.
# Without a GPU it says so and exits 0 with "0 passed, 0 failed, N skipped". Last line is
# always "N passed, N failed[, N skipped]"; exit status is non-zero if anything failed.
set -u
cd "$(dirname "$0")/../.."
BUILD=${BUILD:-build}
GOLDEN=${GOLDEN:-../shared/golden}
FIXTURES=(tiny small long)
n_checks=$((2 + 2 * ${#FIXTURES[@]}))   # kernel_check, bench, two per fixture

if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
    echo "no NVIDIA GPU found (nvidia-smi unavailable or lists no device): skipping GPU tests"
    echo "0 passed, 0 failed, $n_checks skipped"
    exit 0
fi
nvidia-smi -L

pass=0 fail=0 skip=0
log=$(mktemp)
if ! make -j"$(nproc)" BUILD="$BUILD" all gpu-bins >"$log" 2>&1; then
    tail -40 "$log"
    rm -f "$log"
    echo "build failed"
    echo "0 passed, 1 failed"
    exit 1
fi

rm -f "$log"

# 1. every kernel against the CPU backend
echo "== kernel_check (CUDA vs CPU backend, random inputs)"
out=$(timeout 180 "$BUILD/tests/gpu/kernel_check" 2>&1)
rc=$?
echo "$out"
last=$(tail -1 <<<"$out")
p=$(sed -nE 's/^([0-9]+) passed.*/\1/p' <<<"$last")
f=$(sed -nE 's/.* ([0-9]+) failed.*/\1/p' <<<"$last")
if [ "$rc" -eq 0 ] && [ "${f:-1}" -eq 0 ] && [ "${p:-0}" -gt 0 ]; then
    pass=$((pass + 1))
else
    echo "kernel_check: FAIL (exit $rc)"
    fail=$((fail + 1))
fi

# 2. golden fixtures on the CUDA backend: exact fp32 path with f32 KV (the fp32 tier applies),
#    then the default bf16 KV at the kv tier (greedy tokens kept, logits within its bound)
for fx in "${FIXTURES[@]}"; do
    for mode in "--kv-dtype f32" "--tier kv"; do
        echo "== golden $fx on cuda ($mode)"
        if [ ! -d "$GOLDEN/$fx" ]; then
            echo "fixture $GOLDEN/$fx missing: skipped"
            skip=$((skip + 1))
            continue
        fi
        # shellcheck disable=SC2086 # mode is two words on purpose
        if timeout 240 "$BUILD/bin/mx" golden "$GOLDEN/$fx" --backend cuda $mode; then
            pass=$((pass + 1))
        else
            echo "golden $fx on cuda ($mode): FAIL"
            fail=$((fail + 1))
        fi
    done
done

# 3. kernel benchmarks (summary table; targets are reported, not counted as failures)
echo "== kernel benchmarks"
if timeout 300 "$BUILD/tests/gpu/bench_cuda"; then
    pass=$((pass + 1))
else
    echo "bench_cuda: FAIL"
    fail=$((fail + 1))
fi

echo "$pass passed, $fail failed, $skip skipped"
[ "$fail" -eq 0 ]
