#!/usr/bin/env bash
# run.sh - runs the benchmarks (memory bandwidth, gemm vs OpenBLAS, one-layer decode, softmax
# attention, long-context prefill, the llama.cpp comparison, long prompts through the cluster,
# expert placement) and prints their tables; `make bench` calls it with $BUILD set. Takes about
# half an hour on 2 cores; BENCH_LONG=1 adds the 256K-token sizes (an hour or more).
set -eu
BUILD=${BUILD:-build}
cd "$(dirname "$0")/.."
# OpenBLAS 0.3.21 does not know some newer Xeons and falls back to its SSE3 "Prescott"
# kernels; compare against its AVX-512 kernels unless the caller chose a core type.
if grep -q avx512f /proc/cpuinfo 2>/dev/null; then
    export OPENBLAS_CORETYPE=${OPENBLAS_CORETYPE:-SkylakeX}
fi
for b in bench_bandwidth bench_gemm bench_layer bench_expert_rtt bench_attention; do
    if [ -x "$BUILD/bench/$b" ]; then
        echo "== $b"
        "$BUILD/bench/$b"
        echo
    fi
done
echo "== bench_prefill: long-context prefill, 7:1 lightning/softmax model"
"$BUILD/bench/bench_prefill" --preset long
echo
echo "== bench_prefill: the llama.cpp comparison model, 16,384-token prefill"
"$BUILD/bench/bench_prefill" --preset llamacmp
echo
# section TITLE SCRIPT: one of the shell benchmarks under its heading
section() {
    echo "== $1"
    BUILD=$BUILD "bench/$2"
    echo
}
section "long prompts through a loopback cluster" bench_long_context.sh
section "tokenizer encode vs @huggingface/tokenizers" bench_tokenizer.sh
section "loopback cluster vs single-process engine, batch 32" bench_cluster.sh
section "two simulated hosts (a stage and an expert shard per core): pipeline depth and overlap" bench_overlap.sh
section "expert placement: contiguous split vs mx plan-experts on a skewed gate" bench_placement.sh
