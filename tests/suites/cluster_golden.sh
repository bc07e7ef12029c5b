#!/usr/bin/env bash
# cluster_golden.sh - the golden fixtures through a real loopback cluster (gateway, 2 stages,
# 2 expert shards, one with 2 replicas): greedy ids and logprobs against expected.safetensors,
# 4 requests in flight, via an independent Python grpcio client (tests/cluster/golden_cluster.py).
. "$(dirname "$0")/lib.sh"
per_fixture 300 tests/cluster/golden_cluster.py
finish
