# bench_lib.sh - what the shell benchmarks share; sourced, never run:
#     . "$(dirname "$0")/bench_lib.sh"
# Sets BUILD (default build), moves to the repo root, makes $tmp (a scratch dir) and gives
# bench_model, the benchmark model, bench_cleanup, which removes what the prelude made (call it
# from the script's EXIT trap, after stopping its processes), and tokens_per_s / best, to keep
# the best rate of several rounds (this machine's speed drifts within a minute).
set -eu
BUILD=${BUILD:-build}
cd "$(dirname "${BASH_SOURCE[0]}")/.."
tmp=$(mktemp -d)
made=""

# bench_model PRESET [VAR]: sets model to $VAR (default MX_BENCH_MODEL) if set, else to a temp
# dir removed by bench_cleanup, and writes `mx make-model --preset PRESET` there unless it
# already holds a config.json.
bench_model() {
    local var=${2:-MX_BENCH_MODEL}
    model=${!var:-}
    if [ -z "$model" ]; then
        model=$(mktemp -d)
        made="$made $model"
        model=$model/$1
    fi
    [ -f "$model/config.json" ] || "$BUILD/bin/mx" make-model --preset "$1" --out "$model" >/dev/null
}

bench_cleanup() {
    rm -rf "$tmp"
    local d
    for d in $made; do rm -rf "$d"; done
    return 0
}

# tokens_per_s LINE: the rate in a bench_cluster line ("... N tokens/s ...").
tokens_per_s() { sed -nE 's/.* ([0-9.]+) tokens\/s.*$/\1/p' <<<"$1"; }
# best A B: the larger of two rates.
best() { awk -v a="$1" -v b="$2" 'BEGIN { print (b + 0 > a + 0) ? b : a }'; }
