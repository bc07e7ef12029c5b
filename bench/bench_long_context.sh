#!/usr/bin/env bash
# bench_long_context.sh - long prompts through a loopback cluster (`mx cluster`: gateway, 2
# attention stages, 2 expert shards) on the "long" preset (the real 7:1 lightning/softmax
# pattern at width 512): (a) time to first token of a BENCH_PROMPT_TOKENS-token prompt (default
# 65,536) and each stage's peak RSS against weights + KV pages x 1.1 + 1 GiB, with the time
# projected to 1,048,576 tokens from the measured softmax-attention rate; (b) inter-token latency
# of 8 short streams next to a long prefill (BENCH_ITL_PROMPT_TOKENS, default 32,768; 262,144
# with BENCH_LONG=1) against the same streams alone, and the long prompt's time to first token next
# to them; the gateway's max_prefill_tokens_with_decodes is BENCH_PREFILL_CAP (default: the
# gateway's), and with BENCH_COMPARE_CAP=1 (default) (b) runs again without the cap, so the ratio
# of the two is measured in the same run. The client is bench/long_context.py (grpcio).
# BENCH_PROMPT_TOKENS=1048576 runs the full 1M-token prompt (hours on 2 cores; about 35 minutes with
# MX_BENCH_LONG_MODEL set to a `mx make-model --preset longnarrow` model, the same layer pattern at
# a quarter of the width). BENCH_LONG_ARGS adds arguments of long_context.py (e.g. --skip-ttft to
# run only (b)).
. "$(dirname "$0")/bench_lib.sh"
if [ "${BENCH_LONG:-0}" = 1 ]; then itl_default=262144; else itl_default=32768; fi
PROMPT=${BENCH_PROMPT_TOKENS:-65536}
ITL_PROMPT=${BENCH_ITL_PROMPT_TOKENS:-$itl_default}
THREADS=${THREADS:-2}
cap_args=()
[ -n "${BENCH_PREFILL_CAP:-}" ] && cap_args+=(--max-prefill-tokens-with-decodes "$BENCH_PREFILL_CAP")
[ "${BENCH_COMPARE_CAP:-1}" = 1 ] && cap_args+=(--compare-cap)
trap bench_cleanup EXIT
bench_model long MX_BENCH_LONG_MODEL
# The softmax-attention rate of this model in chunks of 512 tokens (the gateway's default
# max_step_tokens), for the projection to 1M tokens; BENCH_ATTN_GFLOPS skips the measurement.
rate=${BENCH_ATTN_GFLOPS:-}
if [ -z "$rate" ]; then
    out=$("$BUILD/bench/bench_prefill" --model "$model" --sizes 16K --chunk 512 --threads "$THREADS")
    line=$(grep '^result' <<<"$out")
    rate=$(sed -nE 's/.* attn_gflops=([0-9.]+).*/\1/p' <<<"$line")
    grep -A1 '^kernel paths' <<<"$out" || true # which kernels ran (AMX where the CPU has it)
    echo "softmax attention of this model, 16K-token prefill in chunks of 512 (single process): $rate GFLOP/s"
fi
BUILD=$BUILD /usr/bin/python3 bench/long_context.py --model "$model" --prompt-tokens "$PROMPT" \
    --itl-prompt-tokens "$ITL_PROMPT" --threads "$THREADS" --attn-gflops "${rate:-0}" --project-tokens 1048576 \
    ${cap_args[@]+"${cap_args[@]}"} ${BENCH_LONG_ARGS:-}
