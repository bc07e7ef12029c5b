#!/usr/bin/env bash
# log_format.sh - the services' structured log lines (core/log.h) in a real loopback cluster:
# every line of every process log matches the format (RFC 3339 UTC timestamp with ms, level,
# service, optional req=, message), the "serving" lines keep their text, a Generate and a
# ModelInfo call each leave one access line in the gateway's log with the method, status OK,
# the prompt and generated token counts the client asked for, and a latency; a bad request
# leaves INVALID_ARGUMENT; Tokenize and Detokenize leave theirs; the OpenAI HTTP API leaves one
# per call ("POST /v1/completions", the HTTP status, the response id and tokens);
# MX_LOG_LEVEL=warn drops the info lines of a service.
. "$(dirname "$0")/lib.sh"
MX="$BUILD/bin/mx"
[ -x "$MX" ] || { bad "missing $MX (run make)"; finish; }

work=$(mktemp -d)
trap 'stop_cluster; rm -rf "$work"' EXIT

TS='[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{3}Z'
LINE="^$TS (error|warn|info|debug) [a-z0-9_.-]+( req=[^ ]+)?: .*$"

"$MX" make-model --preset tiny --out "$work/model" --seed 3 >/dev/null 2>&1 || { bad "make-model"; finish; }
start_cluster "$work/cluster.out" "$work/cluster.err" 600 0.2 --model "$work/model" --stages 2 --expert-shards 1 \
    --workdir "$work/run"
http=$(sed -nE 's/^http (http:.*)$/\1/p' "$work/cluster.out")
if [ -z "$addr" ]; then
    bad "cluster did not start: $(tail -5 "$work/cluster.err")"
    finish
fi

"$MX" client --addr "$addr" --prompt-ids 1,2,3,4,5 --max-new-tokens 6 >"$work/client.out" 2>&1 \
    || bad "client Generate: $(cat "$work/client.out")"
# a request the gateway refuses: a token id outside the vocabulary
"$MX" client --addr "$addr" --prompt-ids 1,999999999 --max-new-tokens 2 >/dev/null 2>&1
/usr/bin/python3 - "$addr" "$work" <<'EOF' >"$work/modelinfo.out" 2>&1 || bad "ModelInfo call: $(cat "$work/modelinfo.out")"
import os, subprocess, sys, grpc
addr, work = sys.argv[1], sys.argv[2]
subprocess.run(["protoc", "-Iproto", "--python_out=" + work, "mx/v1/generation.proto"], check=True)
sys.path.insert(0, work)
from mx.v1 import generation_pb2 as pb
ch = grpc.insecure_channel(addr)
req = pb.ModelInfoRequest()
ch.unary_unary("/mx.v1.Generation/ModelInfo", request_serializer=req.SerializeToString,
               response_deserializer=pb.ModelInfoResponse.FromString)(req, timeout=10)
tok = pb.TokenizeRequest(text="hello world")
n = len(ch.unary_unary("/mx.v1.Generation/Tokenize", request_serializer=tok.SerializeToString,
                       response_deserializer=pb.TokenizeResponse.FromString)(tok, timeout=10).token_ids)
open(os.path.join(work, "tokenize.n"), "w").write("%d\n" % n)
det = pb.DetokenizeRequest(token_ids=[1, 2, 3])
ch.unary_unary("/mx.v1.Generation/Detokenize", request_serializer=det.SerializeToString,
               response_deserializer=pb.DetokenizeResponse.FromString)(det, timeout=10)
EOF
# the OpenAI HTTP API: a completion (its id is the access line's request id), a body that is
# not JSON, the model list
/usr/bin/python3 - "$http" "$work" <<'EOF' >"$work/http.out" 2>&1 || bad "HTTP calls: $(cat "$work/http.out")"
import json, os, sys, urllib.error, urllib.request
base, work = sys.argv[1], sys.argv[2]
def post(body):
    req = urllib.request.Request(base + "/v1/completions", data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.load(resp)
    except urllib.error.HTTPError as e:
        return e.code, None
st, out = post(json.dumps({"prompt": [1, 2, 3, 4, 5], "max_tokens": 6, "temperature": 0,
                           "ignore_eos": True}).encode())
assert st == 200 and out["usage"]["completion_tokens"] == 6, (st, out)
open(os.path.join(work, "http.id"), "w").write(out["id"] + "\n")
assert post(b"{not json")[0] == 400
assert urllib.request.urlopen(base + "/v1/models", timeout=10).status == 200
EOF
kill -TERM "$cluster_pid" 2>/dev/null
wait "$cluster_pid" 2>/dev/null
cluster_pid=

gw="$work/run/gateway.log"
if [ ! -s "$gw" ]; then
    bad "no gateway log in $work/run: $(ls "$work/run" 2>&1)"
    finish
fi
for f in "$work"/run/*.log; do
    n=$(wc -l <"$f")
    badl=$(grep -cvE "$LINE" "$f")
    if [ "$n" -gt 0 ] && [ "$badl" -eq 0 ]; then ok "$(basename "$f"): $n lines, all in the log format"
    else bad "$(basename "$f"): $badl of $n lines not in the format: $(grep -vE "$LINE" "$f" | head -3)"; fi
done
if grep -qE "^$TS info gateway: .*serving mx\.v1\.Generation on port [0-9]+" "$gw"; then ok "gateway serving line"
else bad "gateway serving line: $(head -5 "$gw")"; fi
if grep -qE "^$TS info expert-svc: .*serving" "$work"/run/expert*.log; then ok "expert-svc serving line"
else bad "expert-svc serving line"; fi

acc="^$TS info gateway req=[^ ]+: access method=Generate status=OK prompt_tokens=5 generated_tokens=6 latency_ms=[0-9]+\.[0-9]$"
if [ "$(grep -cE "$acc" "$gw")" -eq 1 ]; then ok "one Generate access line: $(grep -E "$acc" "$gw")"
else bad "Generate access line: $(grep access "$gw")"; fi
acc="^$TS info gateway: access method=Generate status=INVALID_ARGUMENT prompt_tokens=-1 generated_tokens=-1 latency_ms="
if grep -qE "$acc" "$gw"; then ok "refused Generate: INVALID_ARGUMENT access line"
else bad "refused Generate access line: $(grep access "$gw")"; fi
acc="^$TS info gateway: access method=ModelInfo status=OK prompt_tokens=-1 generated_tokens=-1 latency_ms="
if grep -qE "$acc" "$gw"; then ok "ModelInfo access line"
else bad "ModelInfo access line: $(grep access "$gw")"; fi
# an access line matching the extended regex $2 in the gateway's log
has_access() { if grep -qE "$2" "$gw"; then ok "$1"; else bad "$1: $(grep access "$gw")"; fi; }
n=$(cat "$work/tokenize.n" 2>/dev/null)
has_access "Tokenize access line (${n:-no} ids)" \
    "^$TS info gateway: access method=Tokenize status=OK prompt_tokens=${n:-x} generated_tokens=-1 latency_ms="
has_access "Detokenize access line" \
    "^$TS info gateway: access method=Detokenize status=OK prompt_tokens=3 generated_tokens=-1 latency_ms="
id=$(cat "$work/http.id" 2>/dev/null)
acc="^$TS info gateway req=${id:-x}: access method=\"POST /v1/completions\" status=200 prompt_tokens=5 generated_tokens=6 latency_ms=[0-9]+\.[0-9]$"
if [ -n "$id" ] && [ "$(grep -cE "$acc" "$gw")" -eq 1 ]; then ok "one HTTP completion access line: $(grep -E "$acc" "$gw")"
else bad "HTTP completion access line ($id): $(grep access "$gw")"; fi
has_access "HTTP bad JSON: 400 access line" \
    "^$TS info gateway: access method=\"POST /v1/completions\" status=400 prompt_tokens=-1 generated_tokens=-1 latency_ms="
has_access "HTTP GET /v1/models access line" \
    "^$TS info gateway: access method=\"GET /v1/models\" status=200 prompt_tokens=-1 generated_tokens=-1 latency_ms="
if grep -qE "^$TS info gateway: signal 15, draining \(up to [0-9]+ ms\)$" "$gw"; then ok "drain line"
else bad "drain line: $(tail -3 "$gw")"; fi

# MX_LOG_LEVEL=warn: a service run with a bad config still logs its error, and nothing at info
printf 'model_dir = "%s/model";\nlisten = "127.0.0.1:0";\nbackend = "tpu";\n' "$work" >"$work/bad.cfg"
MX_LOG_LEVEL=warn "$BUILD/bin/expert-svc" --config "$work/bad.cfg" 2>"$work/bad.log"
if grep -qE "^$TS error expert-svc: .*not a backend" "$work/bad.log" && ! grep -q " info " "$work/bad.log"; then
    ok "MX_LOG_LEVEL=warn: the error line only"
else bad "MX_LOG_LEVEL=warn: $(cat "$work/bad.log")"; fi
MX_LOG_LEVEL=loud "$BUILD/bin/expert-svc" --config "$work/bad.cfg" 2>"$work/bad2.log"
rc=$?
if [ $rc -eq 2 ] && grep -q "MX_LOG_LEVEL" "$work/bad2.log"; then ok "unknown MX_LOG_LEVEL refused (exit 2)"
else bad "unknown MX_LOG_LEVEL: exit $rc: $(cat "$work/bad2.log")"; fi
finish
