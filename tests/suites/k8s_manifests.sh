#!/usr/bin/env bash
# k8s_manifests.sh - the Kubernetes deployment without a cluster: `kubectl kustomize` renders
# every overlay in deploy/k8s/overlays, and tests/k8s/check_manifests.mjs validates each
# rendered object against the Kubernetes API schemas (npm kubernetes-models, pinned in
# tests/k8s/package-lock.json, installed with `npm ci` into tests/.cache) and checks the
# cross-references (selectors, ports, config files and addresses, layer and expert coverage
# against the model's config.json, images vs GPUs, pod security, network policies; every pod
# exposes its metrics_listen as port "metrics" with prometheus.io annotations, the gateway its
# http_listen as port "http"), feeding every embedded config to the service's own
# --check-config. cpu-small's pods then run as local processes on the overlay's configs and DNS
# names, answering gRPC, /metrics and the HTTP API (tests/k8s/run_pods_local.sh). Without
# kubectl, node or the npm registry the suite reports itself skipped, not passed.
. "$(dirname "$0")/lib.sh"
CACHE=tests/.cache/k8s-node

need_bins mx gateway attention-svc expert-svc
command -v kubectl >/dev/null || skip "kubectl not on PATH (Debian has no kubectl package; install it from the Kubernetes release channel to run this suite)"
npm_install tests/k8s "$CACHE"
cp tests/k8s/*.mjs "$CACHE/"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# The model each overlay serves: its config.json. cpu-small's Job runs `mx make-model --preset
# tiny`, so the shape comes from the same command; h200 serves the released MiniMax-Text-01.
"$BUILD/bin/mx" make-model --preset tiny --out "$work/tiny" --seed 7 >/dev/null ||
    { echo "mx make-model failed"; echo "0 passed, 1 failed"; exit 1; }
model_config() {
    case $1 in
        cpu-small) echo "$work/tiny/config.json" ;;
        h200) echo deploy/models/MiniMax-Text-01/config.json ;;
        *) echo "" ;;
    esac
}

for dir in deploy/k8s/overlays/*/; do
    overlay=$(basename "$dir")
    cfg=$(model_config "$overlay")
    if [ -z "$cfg" ]; then
        echo "FAIL $overlay: no model config.json known for this overlay (add it to model_config)"; fail=$((fail + 1)); continue
    fi
    if ! timeout 60 kubectl kustomize "$dir" >"$work/$overlay.yaml" 2>"$work/$overlay.err"; then
        echo "FAIL $overlay/render: $(tail -3 "$work/$overlay.err")"; fail=$((fail + 1)); continue
    fi
    pass=$((pass + 1))
    echo "ok   $overlay/render $(grep -c '^kind:' "$work/$overlay.yaml") objects"
    timeout 120 node "$CACHE/check_manifests.mjs" "$work/$overlay.yaml" "$cfg" deploy/Containerfile proto "$BUILD/bin" \
        "$overlay" >"$work/$overlay.out" 2>&1
    rc=$?
    grep -v -E '^[0-9]+ passed, [0-9]+ failed' "$work/$overlay.out"
    last=$(grep -E '^[0-9]+ passed, [0-9]+ failed' "$work/$overlay.out" | tail -1)
    if [ -z "$last" ]; then
        echo "FAIL $overlay/checks: no result (exit $rc)"; fail=$((fail + 1)); continue
    fi
    set -- $last
    pass=$((pass + $1)); fail=$((fail + $3))
    if [ $rc -ne 0 ] && [ "$3" -eq 0 ]; then fail=$((fail + 1)); fi
done

# cpu-small's pods as local processes: the real services on the overlay's configs (only their
# own address and the model path changed), resolving the configs' DNS names through an
# /etc/hosts of a private mount namespace; Generate through the gateway = mx generate.
skipped=0
if [ "$(id -u)" -eq 0 ] && unshare -m true 2>/dev/null; then
    mkdir -p "$work/local/models"
    node "$CACHE/pod_plan.mjs" "$work/cpu-small.yaml" "$work/local/pods" >"$work/local/plan.tsv" &&
        timeout 300 unshare -m bash tests/k8s/run_pods_local.sh "$work/local/plan.tsv" "$work/local/pods" /models \
            "$work/local/models" "$BUILD/bin" "$work/local" >"$work/local.out" 2>&1
    cat "$work/local.out"
    pass=$((pass + $(grep -c '^ok' "$work/local.out"))); fail=$((fail + $(grep -c '^FAIL' "$work/local.out")))
    grep -q '^ok   pods-local:' "$work/local.out" || grep -q '^FAIL' "$work/local.out" || { fail=$((fail + 1)); echo "FAIL pods-local: no result"; }
else
    skipped=1; echo "SKIP pods-local: needs root and unshare -m (a private /etc/hosts for the cluster DNS names)"
fi

# The checks must be able to fail: a broken copy of cpu-small (stage 1 no longer ends at the
# model's last layer, the gateway's Service loses its named target port, the gateway's config
# moves its HTTP API off the port the pod exposes, and shard 0's config has a value of the
# wrong type, which only the service's own loader knows) must be caught.
mkdir -p "$work/broken"
cp -r deploy/k8s/base deploy/k8s/overlays "$work/broken/"
mkdir -p "$work/broken/k8s" && mv "$work/broken/base" "$work/broken/overlays" "$work/broken/k8s/"
sed -i 's/layer_begin = 4; layer_end = 8;/layer_begin = 4; layer_end = 7;/' "$work/broken/k8s/overlays/cpu-small/stages/1/attention-svc.cfg"
sed -i 's/targetPort: grpc,/targetPort: grpc-x,/' "$work/broken/k8s/base/gateway.yaml"
sed -i 's/^threads = 1;/threads = "one";/' "$work/broken/k8s/overlays/cpu-small/experts/0/expert-svc.cfg"
sed -i 's/http_listen = "0.0.0.0:8000";/http_listen = "0.0.0.0:8001";/' "$work/broken/k8s/overlays/cpu-small/gateway.cfg"
if kubectl kustomize "$work/broken/k8s/overlays/cpu-small" >"$work/broken.yaml" 2>/dev/null &&
    ! node "$CACHE/check_manifests.mjs" "$work/broken.yaml" "$work/tiny/config.json" deploy/Containerfile proto "$BUILD/bin" \
        broken >"$work/broken.out" 2>&1 &&
    grep -q 'FAIL broken/pipeline.*stages end at layer 7' "$work/broken.out" &&
    grep -q 'FAIL broken/ports.*grpc-x' "$work/broken.out" &&
    grep -q 'FAIL broken/metrics-http.*http_listen is 0.0.0.0:8001, containerPort http is 8000' "$work/broken.out" &&
    grep -q 'FAIL broken/check-config: expert-svc --check-config mx-expert-config-0' "$work/broken.out" &&
    ! grep -q 'FAIL broken/check-config.*mx-expert-config-1' "$work/broken.out"; then
    pass=$((pass + 1)); echo "ok   broken-overlay: a layer gap, a dangling targetPort, an HTTP port the pod does not expose and a config the service refuses are reported"
else
    fail=$((fail + 1)); echo "FAIL broken-overlay: the checks did not report the planted errors"; cat "$work/broken.out" 2>/dev/null | tail -15
fi

echo "$pass passed, $fail failed, $skipped skipped"
[ "$fail" -eq 0 ]
