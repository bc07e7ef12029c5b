#!/usr/bin/env bash
# expert_stats.sh - expert load statistics and placement on the golden fixtures: routed tokens
# counted by real stages (`mx expert-stats`) against the fixture's own expert use, a plan from
# `mx plan-experts`, and a cluster laid out by that plan (experts on two shards) still giving
# the fixture's greedy tokens (tests/cluster/expert_stats.py, an independent grpcio client).
. "$(dirname "$0")/lib.sh"
per_fixture 400 tests/cluster/expert_stats.py
finish
