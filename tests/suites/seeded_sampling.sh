#!/usr/bin/env bash
# seeded_sampling.sh - sampling draws from (seed, step) everywhere: a seeded, temperature-sampled
# request through a loopback cluster (`mx cluster`, stopped by pid) streams the same ids as
# `mx generate` with the same seed in one process, for several seeds and sampling settings; a
# different seed gives a different continuation. Run from the repo root.
. "$(dirname "$0")/lib.sh"
MX="$BUILD/bin/mx"
FIXTURE=${MX_GOLDEN_DIR:-../shared/golden}/tiny
tmp=$(mktemp -d)
trap 'stop_cluster; rm -rf "$tmp"' EXIT

start_cluster "$tmp/cluster.out" "$tmp/cluster.out" 300 0.1 --model "$FIXTURE" --stages 2 --expert-shards 2 --threads 1
if [ -z "$addr" ]; then
    bad "cluster did not come up"; cat "$tmp/cluster.out"
    finish
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
finish
