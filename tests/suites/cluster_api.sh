#!/usr/bin/env bash
# cluster_api.sh - the public API of a real loopback cluster through an independent Python
# grpcio client: health, ModelInfo, Complete, bad input, cancellation/deadline release on
# every stage, killing an expert replica mid-stream, child death (tests/cluster/api_cluster.py).
exec "$(dirname "$0")/../cluster/run_py.sh" api_cluster ../shared/golden/tiny
