#!/usr/bin/env bash
# metrics.sh - Prometheus metrics of a loopback cluster (tests/cluster/metrics_cluster.py):
# every service's /metrics passes promtool, and the counters and histograms moved by exactly
# the traffic an independent grpcio client sent (requests, tokens, rejections, stage steps,
# routed tokens, expert calls and rows on both sides), on the gateway under api="grpc" (the
# HTTP API's api="openai" series are checked by openai_api.sh).
if [ ! -x /usr/bin/promtool ]; then
    echo "SKIP metrics: promtool not installed (Debian package prometheus)"
    echo "0 passed, 0 failed, 1 skipped"
    exit 0
fi
exec "$(dirname "$0")/../cluster/run_py.sh" metrics_cluster ../shared/golden/tiny
