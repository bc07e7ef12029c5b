#!/usr/bin/env bash
# cluster_pipeline.sh - chained stages and pipelined micro-batches in a real loopback cluster
# (3 stages, pipeline_depth 2): fixture tokens with 8 requests in flight, overlap seen in
# AttentionStage/Info, downstream errors named, cancellation while pipelined, bad configs
# (tests/cluster/pipeline_cluster.py, an independent Python grpcio client).
exec "$(dirname "$0")/../cluster/run_py.sh" pipeline_cluster ../shared/golden/tiny
