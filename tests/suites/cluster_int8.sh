#!/usr/bin/env bash
# cluster_int8.sh - int8 experts through a real loopback cluster: two expert-svc shards with
# expert_dtype = "int8", one attention stage and a gateway, started here as processes (ports
# picked by the services, read from their logs) and stopped by pid. The greedy ids streamed by
# `mx client` must equal `mx generate --expert-dtype int8` in one process, and the shards must
# hold int8 weights (half the bf16 bytes, plus per-row scales). Run from the repo root.
. "$(dirname "$0")/lib.sh"
MX="$BUILD/bin/mx"
tmp=$(mktemp -d)
pids=()
stop_all() {
    for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null; done
    for p in "${pids[@]}"; do
        for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$p" 2>/dev/null
        wait "$p" 2>/dev/null
    done
    pids=()
}
trap 'stop_all; rm -rf "$tmp"' EXIT

# wait_port LOG: the port a service printed once serving (bounded: 10 s), or nothing.
wait_port() {
    for _ in $(seq 100); do
        p=$(sed -nE 's/.*port ([0-9]+).*/\1/p' "$1" | head -1)
        [ -n "$p" ] && { echo "$p"; return; }
        sleep 0.1
    done
}

# run_fixture DIR EXPERTS_A EXPERTS_B INT8_MIB PROMPTS...
run_fixture() {
    local fx=$1 ea=$2 eb=$3 mib=$4 name
    shift 4
    name=$(basename "$fx")
    local shard_ports=()
    for i in 0 1; do
        local ex=$ea
        [ $i -eq 1 ] && ex=$eb
        printf 'model_dir = "%s";\nlisten = "127.0.0.1:0";\nthreads = 1;\nshard_index = %d;\nexperts = [%s];\nexpert_dtype = "int8";\n' \
            "$fx" $i "$ex" > "$tmp/$name-e$i.cfg"
        "$BUILD/bin/expert-svc" --config "$tmp/$name-e$i.cfg" 2> "$tmp/$name-e$i.log" &
        pids+=($!)
        shard_ports+=("$(wait_port "$tmp/$name-e$i.log")")
    done
    if [ -z "${shard_ports[0]}" ] || [ -z "${shard_ports[1]}" ]; then
        bad "$name: expert shards did not start: $(cat "$tmp/$name-e0.log" "$tmp/$name-e1.log")"
        stop_all
        return
    fi
    if grep -q "(${mib} MiB of weights)" "$tmp/$name-e0.log"; then
        ok "$name: shard 0 holds int8 experts ($mib MiB)"
    else
        bad "$name: shard 0 weights: $(cat "$tmp/$name-e0.log")"
    fi
    local layers
    layers=$(sed -nE 's/.*"num_hidden_layers": *([0-9]+).*/\1/p' "$fx/config.json")
    cat > "$tmp/$name-stage.cfg" <<EOF
stage = { listen = "127.0.0.1:0"; model = "$fx"; index = 0; count = 1;
          layer_begin = 0; layer_end = $layers; max_sequences = 16; threads = 1; };
experts = { shards = ( { experts = [$ea]; replicas = ["127.0.0.1:${shard_ports[0]}"]; },
                       { experts = [$eb]; replicas = ["127.0.0.1:${shard_ports[1]}"]; } ); };
EOF
    "$BUILD/bin/attention-svc" --config "$tmp/$name-stage.cfg" 2> "$tmp/$name-stage.log" &
    pids+=($!)
    local sp
    sp=$(wait_port "$tmp/$name-stage.log")
    cat > "$tmp/$name-gw.cfg" <<EOF
gateway = { listen = "127.0.0.1:0"; model = "$fx"; stages = ["127.0.0.1:$sp"];
            num_expert_shards = 2; max_step_tokens = 512; };
EOF
    "$BUILD/bin/gateway" --config "$tmp/$name-gw.cfg" 2> "$tmp/$name-gw.log" &
    pids+=($!)
    local gp
    gp=$(wait_port "$tmp/$name-gw.log")
    if [ -z "$sp" ] || [ -z "$gp" ]; then
        bad "$name: stage/gateway did not start: $(cat "$tmp/$name-stage.log" "$tmp/$name-gw.log")"
        stop_all
        return
    fi
    for prompt in "$@"; do
        local want got
        want=$(timeout 120 "$MX" generate --model "$fx" --expert-dtype int8 --threads 1 \
            --prompt-ids "$prompt" --max-new-tokens 8 --temperature 0 2>/dev/null)
        got=$(timeout 120 "$MX" client --addr "127.0.0.1:$gp" --prompt-ids "$prompt" \
            --max-new-tokens 8 --temperature 0 --ignore-eos 2>/dev/null | tr -s ' \n' ' ' | sed 's/ *$//')
        want=$(tr -s ' \n' ' ' <<<"$want" | sed 's/ *$//')
        if [ -n "$want" ] && [ "$want" = "$got" ]; then
            ok "$name: prompt ${prompt:0:20}...: cluster = local ($got)"
        else
            bad "$name: prompt ${prompt:0:20}...: local '$want' cluster '$got'"
        fi
    done
    stop_all
}

# expert_dtype in expert-svc's config: a bad value is refused, naming the file, line and key;
# int8 on the cuda backend is accepted (its upload_weight and matmul take I8 weights).
printf 'model_dir = "../shared/golden/tiny";\nlisten = "127.0.0.1:0";\nexperts = [0];\nexpert_dtype = "int4";\n' > "$tmp/bad_dtype.cfg"
printf 'model_dir = "../shared/golden/tiny";\nlisten = "127.0.0.1:0";\nbackend = "cuda";\nexperts = [0];\nexpert_dtype = "int8";\n' > "$tmp/cuda_int8.cfg"
printf 'model_dir = "../shared/golden/tiny";\nlisten = "127.0.0.1:0";\nbackend = "cuda";\nexperts = [0];\npin_threads = true;\n' > "$tmp/cuda_pin.cfg"
if timeout 20 "$BUILD/bin/expert-svc" --check-config "$tmp/cuda_int8.cfg" >/dev/null 2>&1; then
    ok "config cuda_int8: expert_dtype = \"int8\" with backend = \"cuda\" accepted"
else
    bad "config cuda_int8: $(timeout 20 "$BUILD/bin/expert-svc" --check-config "$tmp/cuda_int8.cfg" 2>&1)"
fi
for c in "bad_dtype:4: \`expert_dtype\`: \"int4\" is not an expert dtype" \
         "cuda_pin:5: \`pin_threads\`: pin_threads applies to the cpu backend only"; do
    f=${c%%:*}
    if out=$(timeout 20 "$BUILD/bin/expert-svc" --config "$tmp/$f.cfg" 2>&1); then
        bad "config $f: exited 0"
    elif grep -qF -- "$tmp/$f.cfg${c#$f}" <<<"$out"; then
        ok "config $f refused"
    else
        bad "config $f: '$out' lacks '$c'"
    fi
done

# attn_dtype in attention-svc's stage config: a bad value is refused, naming the file, line
# and key; int8 on the cpu and cuda backends is accepted.
stage_cfg() { # BACKEND_LINE DTYPE
    printf 'stage = { listen = "127.0.0.1:0"; model = "../shared/golden/tiny"; index = 0; count = 1;\n%s\nlayer_begin = 0; layer_end = 2;\nattn_dtype = "%s"; };\n' "$1" "$2"
}
stage_cfg "" int4 > "$tmp/stage_bad.cfg"
stage_cfg 'backend = "cuda";' int8 > "$tmp/stage_cuda.cfg"
stage_cfg "" int8 > "$tmp/stage_ok.cfg"
for c in "stage_bad:4: \`stage.attn_dtype\`: \"int4\" is not an attention weight dtype"; do
    f=${c%%:*}
    if out=$(timeout 20 "$BUILD/bin/attention-svc" --check-config "$tmp/$f.cfg" 2>&1); then
        bad "config $f: exited 0"
    elif grep -qF -- "$tmp/$f.cfg${c#$f}" <<<"$out"; then
        ok "config $f refused"
    else
        bad "config $f: '$out' lacks '$c'"
    fi
done
for f in stage_ok stage_cuda; do
    if timeout 20 "$BUILD/bin/attention-svc" --check-config "$tmp/$f.cfg" >/dev/null 2>&1; then
        ok "config $f: attn_dtype = \"int8\" accepted"
    else
        bad "config $f: refused: $(timeout 20 "$BUILD/bin/attention-svc" --check-config "$tmp/$f.cfg" 2>&1)"
    fi
done

# mx cluster --expert-dtype int8 --attn-dtype int8: the shards' and the stage's configs carry
# the dtypes, and the shards hold int8 experts (tiny: 1.5 MiB per two experts, as above).
"$MX" cluster --model ../shared/golden/tiny --stages 1 --expert-shards 2 --threads 1 --port 0 \
    --expert-dtype int8 --attn-dtype int8 --workdir "$tmp/cl" > "$tmp/cl.out" 2>&1 &
cl_pid=$!
for _ in $(seq 600); do grep -q "gateway listening" "$tmp/cl.out" && break; kill -0 $cl_pid 2>/dev/null || break; sleep 0.1; done
if grep -q "gateway listening" "$tmp/cl.out"; then
    grep -q 'expert_dtype = "int8";' "$tmp/cl/expert-0.0.cfg" && grep -q 'expert_dtype = "int8";' "$tmp/cl/expert-1.0.cfg" \
        && ok "mx cluster: expert_dtype = \"int8\" in both shard configs" || bad "mx cluster: shard configs: $(cat "$tmp"/cl/expert-*.cfg)"
    grep -q 'attn_dtype = "int8";' "$tmp/cl/stage-0.cfg" \
        && ok "mx cluster: attn_dtype = \"int8\" in the stage config" || bad "mx cluster: stage config: $(cat "$tmp/cl/stage-0.cfg")"
    grep -q "(1.5 MiB of weights)" "$tmp/cl/expert-0.0.log" \
        && ok "mx cluster: shard 0 holds int8 experts" || bad "mx cluster: shard 0: $(cat "$tmp/cl/expert-0.0.log")"
else
    bad "mx cluster did not start: $(cat "$tmp/cl.out")"
fi
kill -TERM $cl_pid 2>/dev/null
for _ in $(seq 100); do kill -0 $cl_pid 2>/dev/null || break; sleep 0.1; done
kill -KILL $cl_pid 2>/dev/null
wait $cl_pid 2>/dev/null
if bad_out=$("$MX" cluster --model ../shared/golden/tiny --stages 1 --expert-shards 1 --attn-dtype fp8 2>&1); then
    bad "mx cluster --attn-dtype fp8: exit 0"
else
    grep -qF -- '--attn-dtype: "fp8" is not bf16 or int8' <<<"$bad_out" && ok "mx cluster --attn-dtype fp8 refused" \
        || bad "mx cluster --attn-dtype fp8: '$bad_out'"
fi

long_prompt=$(seq -s, 3 2 301) # 150 tokens
run_fixture ../shared/golden/tiny "0, 1" "2, 3" 1.5 "1,2,3,4,5" "$long_prompt"
run_fixture ../shared/golden/small "0, 1, 2, 3" "4, 5, 6, 7" 1.6 "7" "$long_prompt"
finish
