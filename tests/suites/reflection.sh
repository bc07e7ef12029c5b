#!/usr/bin/env bash
# reflection.sh - gRPC server reflection (grpc.reflection.v1 and v1alpha) on all three services
# of a real loopback cluster, through an independent client that has none of mx's .proto files:
# npm grpc-js-reflection-client + @grpc/grpc-js (pinned in tests/reflection/package-lock.json,
# installed with `npm ci` into tests/.cache) lists services, describes mx.v1.Generation and calls
# Generate with the fetched descriptors only; the tokens must equal a Python grpcio client's and
# the fixture's (tests/reflection/reflection_cluster.py). Without node or the npm registry the
# suite reports itself skipped, not passed.
. "$(dirname "$0")/lib.sh"
CACHE=tests/.cache/reflection-node

need_bins mx gateway attention-svc expert-svc
npm_install tests/reflection "$CACHE"
cp tests/reflection/reflect_client.cjs "$CACHE/"
run_counted 300 /usr/bin/python3 tests/reflection/reflection_cluster.py ../shared/golden/tiny "$CACHE"
