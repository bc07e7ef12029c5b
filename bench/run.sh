#!/usr/bin/env bash
# run.sh - runs the benchmarks (memory bandwidth, gemm vs OpenBLAS, one-layer decode) and
# prints their tables; `make bench` calls it with $BUILD set. Takes a few minutes on 2 cores.
set -eu
BUILD=${BUILD:-build}
cd "$(dirname "$0")/.."
# OpenBLAS 0.3.21 does not know some newer Xeons and falls back to its SSE3 "Prescott"
# kernels; compare against its AVX-512 kernels unless the caller chose a core type.
if grep -q avx512f /proc/cpuinfo 2>/dev/null; then
    export OPENBLAS_CORETYPE=${OPENBLAS_CORETYPE:-SkylakeX}
fi
for b in bench_bandwidth bench_gemm bench_layer bench_expert_rtt; do
    if [ -x "$BUILD/bench/$b" ]; then
        echo "== $b"
        "$BUILD/bench/$b"
        echo
    fi
done
echo "== tokenizer encode vs @huggingface/tokenizers"
BUILD=$BUILD bench/bench_tokenizer.sh
echo
echo "== loopback cluster vs single-process engine, batch 32"
BUILD=$BUILD bench/bench_cluster.sh
