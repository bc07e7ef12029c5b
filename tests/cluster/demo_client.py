#!/usr/bin/env python3
"""demo_client.py - the README demo's independent client: Python grpcio (stubs generated from
proto/ at run time) asks the gateway's health service, then streams one Generate call and
prints each response as it arrives."""
import argparse
import os
import sys

import grpc

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cluster_util import generation_stubs, load_stubs  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--addr", required=True)
    ap.add_argument("--proto-dir", default="proto")
    args = ap.parse_args()
    gen, _, health_pb = load_stubs()
    with grpc.insecure_channel(args.addr) as ch:
        check = ch.unary_unary("/grpc.health.v1.Health/Check",
                               request_serializer=health_pb.HealthCheckRequest.SerializeToString,
                               response_deserializer=health_pb.HealthCheckResponse.FromString)
        status = check(health_pb.HealthCheckRequest(service="mx.v1.Generation"), timeout=5).status
        print("health mx.v1.Generation:", health_pb.HealthCheckResponse.ServingStatus.Name(status))
        generate, _, _ = generation_stubs(ch, gen)
        req = gen.GenerateRequest(prompt_ids=[1, 2, 3, 4, 5], request_id="demo")
        req.sampling.max_new_tokens = 12
        req.sampling.ignore_eos = True
        ids = []
        for resp in generate(req, timeout=60):
            ids.extend(resp.token_ids)
            if resp.finish_reason:
                print("finish:", gen.FinishReason.Name(resp.finish_reason),
                      "completion tokens:", resp.usage.completion_tokens)
        print("streamed ids:", " ".join(map(str, ids)))


if __name__ == "__main__":
    main()
