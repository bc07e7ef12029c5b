#!/usr/bin/env bash
# seeded_sampling.sh - sampling draws from (seed, step) everywhere: a seeded, temperature-sampled
# request through a loopback cluster (`mx cluster`, stopped by pid) streams the same ids as
# `mx generate` with the same seed in one process, for several seeds and sampling settings; a
# different seed gives a different continuation. Run from the repo root.
set -u
BUILD=${BUILD:-build}
cd "$(dirname "$0")/../.."
MX="$BUILD/bin/mx"
FIXTURE=${MX_GOLDEN_DIR:-../shared/golden}/tiny
pass=0 fail=0
tmp=$(mktemp -d)
cluster_pid=
cleanup() {
    if [ -n "$cluster_pid" ]; then
        kill -TERM "$cluster_pid" 2>/dev/null
        for _ in $(seq 100); do kill -0 "$cluster_pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$cluster_pid" 2>/dev/null
    fi
    rm -rf "$tmp"
}
trap cleanup EXIT
ok() { echo "ok   $1"; pass=$((pass + 1)); }
bad() { echo "FAIL $1"; fail=$((fail + 1)); }

"$MX" cluster --model "$FIXTURE" --stages 2 --expert-shards 2 --threads 1 >"$tmp/cluster.out" 2>&1 &
cluster_pid=$!
addr=
for _ in $(seq 300); do   # bounded: 30 s
    addr=$(sed -nE 's/^gateway listening on (.*)$/\1/p' "$tmp/cluster.out" | head -1)
    [ -n "$addr" ] && break
    sleep 0.1
done
if [ -z "$addr" ]; then
    bad "cluster did not come up"; cat "$tmp/cluster.out"
    echo "$pass passed, $fail failed"; exit 1
fi

# seed | sampling flags
cases=("7|--temperature 0.8"
       "123456789|--temperature 1.3 --top-k 50"
       "42|--temperature 1.0 --top-p 0.9 --repetition-penalty 1.2")
for c in "${cases[@]}"; do
    seed=${c%%|*} flags=${c#*|}
    # shellcheck disable=SC2086
    local_ids=$(timeout 120 "$MX" generate --model "$FIXTURE" --prompt-ids 1,2,3,4,5 --max-new-tokens 12 \
        --seed "$seed" $flags 2>/dev/null)
    # shellcheck disable=SC2086
    cluster_ids=$(timeout 120 "$MX" client --addr "$addr" --prompt-ids 1,2,3,4,5 --max-new-tokens 12 \
        --seed "$seed" $flags 2>/dev/null | head -1)
    if [ -n "$local_ids" ] && [ "$local_ids" = "$cluster_ids" ]; then
        ok "seed $seed ($flags): cluster = mx generate ($local_ids)"
    else
        bad "seed $seed ($flags): mx generate '$local_ids', cluster '$cluster_ids'"
    fi
done
a=$(timeout 120 "$MX" generate --model "$FIXTURE" --prompt-ids 1,2,3,4,5 --max-new-tokens 12 --seed 1 --temperature 1.5 2>/dev/null)
b=$(timeout 120 "$MX" generate --model "$FIXTURE" --prompt-ids 1,2,3,4,5 --max-new-tokens 12 --seed 2 --temperature 1.5 2>/dev/null)
if [ -n "$a" ] && [ "$a" != "$b" ]; then ok "seeds 1 and 2 differ"; else bad "seeds 1 and 2 give '$a' and '$b'"; fi
echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
