#!/usr/bin/env bash
# install-deps.sh - installs every Debian package mx needs to build, test and run (as root).
# Used by .ci/run and by the README's set-up commands. Node.js/npm packages used by tests are
# fetched by the test suites themselves (and cached under tests/.cache).
set -euo pipefail
SUDO=
if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends \
    build-essential pkg-config clang libclang-rt-14-dev \
    libjansson-dev libcmocka-dev libopenblas-dev libconfig-dev libpcre2-dev libutf8proc-dev \
    libgrpc-dev libprotobuf-c-dev protobuf-c-compiler protobuf-compiler \
    libmicrohttpd-dev libc-ares-dev prometheus dnsmasq-base \
    python3 python3-grpcio python3-protobuf python3-numpy ca-certificates >/dev/null
# Node.js (for the reference tokenizer and gRPC clients in tests): keep a preinstalled one.
if ! command -v npm >/dev/null 2>&1; then
    $SUDO apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null
fi
