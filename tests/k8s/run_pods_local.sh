#!/usr/bin/env bash
# run_pods_local.sh - runs a rendered overlay's pods as local processes, each with its config
# from the overlay unchanged except two things a pod gets from Kubernetes: its own address
# (listen 0.0.0.0 becomes a loopback address of its own, 127.0.1.N, as a pod has its own IP)
# and the model volume's path. The DNS names the configs use (Services, StatefulSet pods) are
# resolved through an /etc/hosts bind-mounted in a private mount namespace (unshare -m, root
# only), so the services resolve exactly the names the cluster would give them. Then Generate
# through the gateway must give the tokens `mx generate` gives on the same model, every pod
# must serve GET /metrics on its metrics_listen, and the gateway's OpenAI-compatible API on its
# http_listen must answer /health and give the same tokens. The model is written by the
# overlay's model Job script.
# usage: run_pods_local.sh PLAN.tsv PODS_DIR MODEL_MOUNT MODEL_DIR BIN_DIR WORK   (inside unshare -m)
# Prints "ok ..." or "FAIL ..." lines; exit status 0 when all passed.
set -u
plan=$1 pods=$2 mount=$3 model=$4 bin=$5 work=$6
pids=()
stop_all() { for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null; done; for p in "${pids[@]}"; do wait "$p" 2>/dev/null; done; }
trap stop_all EXIT

# one loopback address per pod, its DNS names pointing at it
cp /etc/hosts "$work/hosts"
n=1
declare -A addr_of
while IFS=$'\t' read -r role name aliases _image _user _mount _cmd; do
    [ "$role" = job ] && continue
    n=$((n + 1))
    addr_of[$name]=127.0.1.$n
    [ "$aliases" != "-" ] && echo "127.0.1.$n ${aliases//,/ }" >>"$work/hosts"
done <"$plan"
mount --bind "$work/hosts" /etc/hosts || { echo "FAIL pods-local: cannot bind-mount /etc/hosts"; exit 1; }

# The model Job's own script fills the model directory (its binary and volume paths mapped
# here); run twice, the second run must find the marker and leave the model alone.
while IFS=$'\t' read -r role name _aliases _image _user _mount cmd; do
    [ "$role" = job ] || continue
    script=$(node -e 'const j=JSON.parse(require("fs").readFileSync(process.argv[1]));process.stdout.write(j.command[0]==="/bin/sh"&&j.command[1]==="-c"?j.command[2]:"")' "$cmd")
    [ -n "$script" ] || { echo "FAIL pods-local-job: $name does not run a /bin/sh -c script"; exit 1; }
    script=${script//\/usr\/local\/bin\/mx/$bin/mx}
    script=${script//$mount\//$model/}
    sh -c "$script" >"$work/$name.log" 2>&1 && [ -f "$model/.mx-model-ready" ] && [ -f "$model/tiny/config.json" ] &&
        sh -c "$script" >"$work/$name.2.log" 2>&1 && grep -q "model already there" "$work/$name.2.log" ||
        { echo "FAIL pods-local-job: $(tail -3 "$work/$name.log" "$work/$name.2.log" 2>/dev/null)"; exit 1; }
    echo "ok   pods-local-job: $name's script wrote the model and the ready marker, and a rerun left them alone"
done <"$plan"

gw_addr= gw_http=
declare -A metrics_of
while IFS=$'\t' read -r role name _aliases _image _user _mount _cmd; do
    [ "$role" = job ] && continue
    cfg=$(ls "$pods/$name"/*.cfg)
    sed -i -E "s#\"0\.0\.0\.0:([0-9]+)\"#\"${addr_of[$name]}:\1\"#; s#\"$mount/#\"$model/#g; s#\"$mount\"#\"$model\"#g" "$cfg"
    case $role in
        expert) exe=expert-svc ;;
        stage) exe=attention-svc ;;
        gateway) exe=gateway
            gw_addr="${addr_of[$name]}:$(sed -nE 's/^ *listen = "[0-9.]+:([0-9]+)".*/\1/p' "$cfg")"
            gw_http="${addr_of[$name]}:$(sed -nE 's/^ *http_listen = "[0-9.]+:([0-9]+)".*/\1/p' "$cfg")" ;;
    esac
    metrics_of[$name]="${addr_of[$name]}:$(sed -nE 's/^ *metrics_listen = "[0-9.]+:([0-9]+)".*/\1/p' "$cfg")"
    "$bin/$exe" --config "$cfg" >"$work/$name.log" 2>&1 &
    pids+=($!)
done <"$plan"

ids=
for _ in $(seq 1 240); do
    ids=$(timeout 20 "$bin/mx" client --addr "$gw_addr" --prompt-ids 1,2,3,4,5 --max-new-tokens 12 2>/dev/null) && [ -n "$ids" ] && break
    ids=
    sleep 0.25
done
ref=$("$bin/mx" generate --model "$model/tiny" --prompt-ids 1,2,3,4,5 --max-new-tokens 12 2>/dev/null)
ids2=$(timeout 30 "$bin/mx" client --addr "$gw_addr" --prompt-ids 9,8,7,6,5,4,3,2,1 --max-new-tokens 10 2>/dev/null)
ref2=$("$bin/mx" generate --model "$model/tiny" --prompt-ids 9,8,7,6,5,4,3,2,1 --max-new-tokens 10 2>/dev/null)
rc=0
if [ -n "$ids" ] && [ "$ids" = "$ref" ] && [ -n "$ids2" ] && [ "$ids2" = "$ref2" ]; then
    echo "ok   pods-local: ${#pids[@]} services on the overlay's configs and DNS names; Generate through the gateway = mx generate ([$ids], [$ids2])"
else
    echo "FAIL pods-local: gateway [$ids] [$ids2] vs mx generate [$ref] [$ref2]"
    for f in "$work"/*.log; do echo "== $f"; tail -5 "$f"; done
    rc=1
fi
# GET /metrics of every pod: 200 with its mx_build_info line
bad=
for name in "${!metrics_of[@]}"; do
    body=$(timeout 10 python3 -c 'import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())' \
        "http://${metrics_of[$name]}/metrics" 2>&1)
    grep -q '^mx_build_info{' <<<"$body" || bad="$bad $name(${metrics_of[$name]})"
done
if [ -z "$bad" ]; then
    echo "ok   pods-local-metrics: ${#metrics_of[@]} pods serve GET /metrics on their metrics_listen"
else
    echo "FAIL pods-local-metrics: no metrics from$bad"
    rc=1
fi
# the OpenAI-compatible API on the gateway's http_listen: /health, and the greedy tokens of a
# completion (as token ids) == mx generate's
http_ids=$(timeout 40 python3 - "http://$gw_http" <<'EOF' 2>&1
import json, sys, urllib.request
base = sys.argv[1]
assert urllib.request.urlopen(base + "/health", timeout=5).status == 200
body = {"prompt": [1, 2, 3, 4, 5], "max_tokens": 12, "temperature": 0, "logprobs": 0,
        "return_tokens_as_token_ids": True}
req = urllib.request.Request(base + "/v1/completions", data=json.dumps(body).encode(),
                             headers={"Content-Type": "application/json"})
out = json.load(urllib.request.urlopen(req, timeout=30))
print(" ".join(t.split(":")[1] for t in out["choices"][0]["logprobs"]["tokens"]))
EOF
)
if [ -n "$ref" ] && [ "$http_ids" = "$ref" ]; then
    echo "ok   pods-local-http: the gateway's http_listen answers /health and /v1/completions = mx generate ([$http_ids])"
else
    echo "FAIL pods-local-http: [$http_ids] vs mx generate [$ref]"
    rc=1
fi
# SIGTERM: every service drains and exits 0, well inside the pods' 30 s grace period
t0=$(date +%s.%N)
for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null; done
codes=()
for p in "${pids[@]}"; do wait "$p"; codes+=($?); done
pids=()
trap - EXIT
secs=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN {printf "%.1f", b - a}')
if [ "$(printf '%s\n' "${codes[@]}" | sort -u)" = 0 ] && awk -v s="$secs" 'BEGIN {exit !(s < 25)}'; then
    echo "ok   pods-local-sigterm: all exited 0 after SIGTERM in ${secs} s"
else
    echo "FAIL pods-local-sigterm: exit codes ${codes[*]} after ${secs} s"
    rc=1
fi
exit $rc
