#!/usr/bin/env bash
# build-images.sh - builds the mx container images from deploy/Containerfile: gateway,
# attention-svc, expert-svc and mx (the CLI) for the CPU, and with --cuda the CUDA variants
# (<name>-cuda) on an nvidia/cuda base. Where no container engine can run it says so and exits 0.
#   deploy/build-images.sh [--cuda|--cpu-only] [--registry REG] [--tag TAG] [--push] [--engine docker|podman]
# Images are named REG/NAME:TAG (default registry.example.com/mx/NAME:0.1.0, the overlays' placeholder): the tag must match the overlays'
# `images:` blocks and app.kubernetes.io/version (deploy/k8s/overlays/*/kustomization.yaml).
set -euo pipefail
cd "$(dirname "$0")/.."

REGISTRY=registry.example.com/mx   # the placeholder the overlays use; --registry for yours
TAG=0.1.0
CUDA=0
CPU=1
PUSH=0
ENGINE=${CONTAINER_ENGINE:-}
# The CUDA bases: the devel image has nvcc (the Containerfile builds with CUDA=auto, which
# compiles the CUDA backend when it finds it), the runtime image of the same version has cudart, cuBLAS and NCCL.
CUDA_VERSION=${CUDA_VERSION:-12.6.3}
CUDA_OS=${CUDA_OS:-ubuntu24.04}

usage() {
    sed -n '2,7p' "$0" | sed 's/^# \{0,1\}//'
    exit "${1:-0}"
}
while [ $# -gt 0 ]; do
    case $1 in
        --cuda) CUDA=1 ;;
        --cpu-only) CUDA=0 ;;
        --cuda-only) CUDA=1 CPU=0 ;;
        --registry) REGISTRY=$2; shift ;;
        --tag) TAG=$2; shift ;;
        --push) PUSH=1 ;;
        --engine) ENGINE=$2; shift ;;
        -h|--help) usage 0 ;;
        *) echo "build-images.sh: unknown option $1" >&2; usage 2 ;;
    esac
    shift
done

# A client binary is not enough: `docker` here may have no daemon behind it.
if [ -z "$ENGINE" ]; then
    for e in docker podman; do
        if command -v "$e" >/dev/null 2>&1 && "$e" info >/dev/null 2>&1; then ENGINE=$e; break; fi
    done
fi
if [ -z "$ENGINE" ] || ! "$ENGINE" info >/dev/null 2>&1; then
    echo "build-images.sh: no container engine can run here (docker/podman missing or without a daemon): nothing built"
    exit 0
fi

build() { # target, image name, extra build args...
    local target=$1 name=$2
    shift 2
    echo "== $ENGINE build --target $target -t $REGISTRY/$name:$TAG"
    "$ENGINE" build -f deploy/Containerfile --target "$target" -t "$REGISTRY/$name:$TAG" "$@" .
    if [ "$PUSH" = 1 ]; then "$ENGINE" push "$REGISTRY/$name:$TAG"; fi
}

for t in gateway attention-svc expert-svc mx; do
    if [ "$CPU" = 1 ]; then build "$t" "$t"; fi
done
if [ "$CUDA" = 1 ]; then
    # the gateway and the CLI never touch a GPU: their CPU images serve the GPU overlay too
    for t in attention-svc expert-svc; do
        build "$t" "$t-cuda" \
            --build-arg "BUILD_IMAGE=nvidia/cuda:$CUDA_VERSION-devel-$CUDA_OS" \
            --build-arg "RUNTIME_IMAGE=nvidia/cuda:$CUDA_VERSION-runtime-$CUDA_OS"
    done
fi
echo "built: $(if [ "$CPU" = 1 ]; then echo gateway attention-svc expert-svc mx; fi)$(if [ "$CUDA" = 1 ]; then echo " attention-svc-cuda expert-svc-cuda"; fi) as $REGISTRY/*:$TAG"
