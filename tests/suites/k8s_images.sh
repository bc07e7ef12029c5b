#!/usr/bin/env bash
# k8s_images.sh - the CPU container images run as the cpu-small overlay runs them: builds them
# with deploy/build-images.sh, renders deploy/k8s/overlays/cpu-small, runs its model Job, then
# the expert replicas, the 2 stages and the gateway from the images with the overlay's configs
# and the manifests' user, read-only root filesystem, /tmp tmpfs, no capabilities, each under
# the DNS names its Service gives it (network aliases), and compares the tokens of Generate
# calls through the gateway with `mx generate` on the same model files. Where no container
# engine can run (docker without a daemon, no podman), it reports itself skipped.
. "$(dirname "$0")/lib.sh"
CACHE=tests/.cache/k8s-node

ENGINE=${CONTAINER_ENGINE:-}
if [ -z "$ENGINE" ]; then
    for e in docker podman; do
        if command -v "$e" >/dev/null 2>&1 && timeout 20 "$e" info >/dev/null 2>&1; then ENGINE=$e; break; fi
    done
fi
[ -n "$ENGINE" ] || skip "no container engine can run here (docker/podman missing or without a daemon)"
[ -x "$BUILD/bin/mx" ] || { echo "missing $BUILD/bin/mx (run make)"; echo "0 passed, 1 failed"; exit 1; }
command -v kubectl >/dev/null || skip "kubectl not on PATH (renders the overlay)"
npm_install tests/k8s "$CACHE"
cp tests/k8s/*.mjs "$CACHE/"

work=$(mktemp -d)
net=mx-k8s-test-$$
started=()
mx_image=
cleanup() {
    for c in "${started[@]}"; do "$ENGINE" rm -f "$c" >/dev/null 2>&1; done
    "$ENGINE" network rm "$net" >/dev/null 2>&1
    # files the containers wrote belong to their user: a rootless engine maps it elsewhere
    if ! rm -rf "$work" 2>/dev/null && [ -n "$mx_image" ]; then
        "$ENGINE" run --rm -v "$work:/w" --entrypoint /bin/rm "$mx_image" -rf /w/models >/dev/null 2>&1
        rm -rf "$work"
    fi
}
trap cleanup EXIT

# Images named as the overlay names them (registry placeholder and tag from its `images:`).
kubectl kustomize deploy/k8s/overlays/cpu-small >"$work/cpu-small.yaml" || { echo "render failed"; echo "0 passed, 1 failed"; exit 1; }
node "$CACHE/pod_plan.mjs" "$work/cpu-small.yaml" "$work/pods" >"$work/plan.tsv" || { echo "pod plan failed"; echo "0 passed, 1 failed"; exit 1; }
mx_image=$(awk -F'\t' '$1 == "job" {print $4}' "$work/plan.tsv")
registry=${mx_image%/*}
tag=${mx_image##*:}
timeout 3000 deploy/build-images.sh --engine "$ENGINE" --registry "$registry" --tag "$tag" >"$work/build.log" 2>&1
check "build-images" $? "CPU images $registry/{gateway,attention-svc,expert-svc,mx}:$tag"
for img in $(cut -f4 "$work/plan.tsv" | sort -u); do
    "$ENGINE" image inspect "$img" >/dev/null 2>&1 || { tail -30 "$work/build.log"; echo "image $img missing"; echo "$pass passed, $((fail + 1)) failed"; exit 1; }
done

# ENTRYPOINT is the binary alone and CMD the config path: args replace only the arguments
ep=$("$ENGINE" image inspect -f '{{json .Config.Entrypoint}} {{json .Config.Cmd}} {{.Config.User}}' "$registry/gateway:$tag")
check "image-entrypoint" $([ "$ep" = '["/usr/local/bin/gateway"] ["--config","/etc/mx/gateway.cfg"] 65532:65532' ]; echo $?) "$ep"

"$ENGINE" network create "$net" >/dev/null || { echo "network create failed"; echo "$pass passed, $((fail + 1)) failed"; exit 1; }
mkdir -p "$work/models" && chmod 0777 "$work/models"
# every container as the pods run it: numeric user, read-only root, /tmp tmpfs, no capabilities
run() { # name user image mountPath cfgdir cmdFile aliases
    local name=$1 user=$2 image=$3 mount=$4 cfgdir=$5 cmdfile=$6 aliases=$7 a
    shift 7   # the rest: extra engine options
    local opts=(--name "$name-$$" --network "$net" --user "$user:$user" --read-only --tmpfs /tmp:rw,size=64m
                --cap-drop ALL --security-opt no-new-privileges)
    [ "$mount" != "-" ] && opts+=(-v "$cfgdir:$mount:ro")
    if [ "$aliases" != "-" ]; then for a in ${aliases//,/ }; do opts+=(--network-alias "$a"); done; fi
    local argv=()
    if [ "$cmdfile" != "-" ]; then
        local entry
        entry=$(node -e 'const j=JSON.parse(require("fs").readFileSync(process.argv[1]));process.stdout.write(j.command?j.command[0]:"")' "$cmdfile")
        [ -n "$entry" ] && opts+=(--entrypoint "$entry")
        mapfile -d '' argv < <(node -e 'const j=JSON.parse(require("fs").readFileSync(process.argv[1]));for(const a of [...(j.command||[]).slice(1),...j.args])process.stdout.write(a+"\0")' "$cmdfile")
    fi
    printf '%s\n' "${opts[@]}" "$image" "${argv[@]}" >"$work/$name.run"
    "$ENGINE" run "${opts[@]}" "$@" "$image" "${argv[@]}"
}

while IFS=$'\t' read -r role name aliases image user mount cmdfile; do
    case $role in
        job)
            started+=("$name-$$")
            run "$name" "$user" "$image" "$mount" "$work/pods/$name" "$cmdfile" "$aliases" -v "$work/models:/models" >"$work/$name.log" 2>&1
            check "model-job" $? "$(tail -1 "$work/$name.log")"
            ;;
        *)
            started+=("$name-$$")
            extra=(-d -v "$work/models:/models:ro")
            [ "$role" = gateway ] && extra+=(-p 127.0.0.1::50051)
            run "$name" "$user" "$image" "$mount" "$work/pods/$name" "$cmdfile" "$aliases" "${extra[@]}" >/dev/null ||
                check "start-$name" 1 "$ENGINE run failed"
            ;;
    esac
done <"$work/plan.tsv"

port=$("$ENGINE" port "mx-gateway-$$" 50051 2>/dev/null | head -1 | sed 's/.*://')
ids=
for _ in $(seq 1 ${MX_K8S_WAIT_S:-120}); do
    [ -n "$port" ] && ids=$(timeout 20 "$BUILD/bin/mx" client --addr "127.0.0.1:$port" --prompt-ids 1,2,3,4,5 --max-new-tokens 12 2>/dev/null) && [ -n "$ids" ] && break
    ids=
    sleep 1
done
if [ -z "$ids" ]; then
    for c in "${started[@]}"; do echo "== $c"; "$ENGINE" logs "$c" 2>&1 | tail -5; done
fi
ref=$("$BUILD/bin/mx" generate --model "$work/models/tiny" --prompt-ids 1,2,3,4,5 --max-new-tokens 12 2>/dev/null)
check "generate-through-images" $([ -n "$ids" ] && [ "$ids" = "$ref" ]; echo $?) "gateway: [$ids] mx generate: [$ref]"
ids2=$(timeout 30 "$BUILD/bin/mx" client --addr "127.0.0.1:$port" --prompt-ids 7,8,9,10,11,12,13 --max-new-tokens 8 2>/dev/null)
ref2=$("$BUILD/bin/mx" generate --model "$work/models/tiny" --prompt-ids 7,8,9,10,11,12,13 --max-new-tokens 8 2>/dev/null)
check "generate-through-images-2" $([ -n "$ids2" ] && [ "$ids2" = "$ref2" ]; echo $?) "gateway: [$ids2] mx generate: [$ref2]"

# graceful stop within the pods' terminationGracePeriodSeconds (30 s)
t0=$(date +%s)
"$ENGINE" stop -t 30 "mx-gateway-$$" >/dev/null 2>&1
code=$("$ENGINE" inspect -f '{{.State.ExitCode}}' "mx-gateway-$$" 2>/dev/null)
check "sigterm-exit" $([ "$code" = 0 ] && [ $(($(date +%s) - t0)) -lt 30 ]; echo $?) "gateway exit $code after SIGTERM in $(($(date +%s) - t0)) s"

finish
