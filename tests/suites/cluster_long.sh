#!/usr/bin/env bash
# cluster_long.sh - long prompts and the KV budget through loopback clusters with an independent
# Python grpcio client (tests/cluster/long_cluster.py): a 40,000-token prompt served with the
# single-process engine's tokens while short requests keep decoding, ModelInfo's context limit
# from the stages' KV budgets, RESOURCE_EXHAUSTED naming the tokens that fit, requests waiting
# for KV room, stages refusing sequences whose KV does not fit. MX_LONG_PROMPT_TOKENS overrides
# the long prompt's length (8,000 under ASan builds).
exec "$(dirname "$0")/../cluster/run_py.sh" long_cluster ../shared/golden/tiny
