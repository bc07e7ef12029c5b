"""reflection_cluster.py FIXTURE_DIR NODE_DIR - gRPC server reflection on a real loopback cluster
(gateway, 1 stage, 1 expert shard). The references are independent of the C code: what protoc's
own Python descriptors of proto/ say the public service looks like, and the greedy tokens a
Python grpcio client (protoc-generated stubs) gets from the gateway, checked against the
fixture's greedy_ids. NODE_DIR holds the npm reflection client (reflect_client.cjs): it must
see the same service, methods and types, and get the same tokens calling Generate with only
the descriptors it fetched by reflection. Prints 'N passed, N failed' last."""
import json
import os
import re
import subprocess
import sys
import tempfile

import grpc
from google.protobuf import descriptor_pb2

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "cluster"))
import cluster_util as u

CASE = "p5_s12"


def protoc_view(gen):
    """The Generation service, its methods and GenerateRequest's fields, from protoc's descriptors."""
    fdp = descriptor_pb2.FileDescriptorProto()
    gen.DESCRIPTOR.CopyToProto(fdp)
    svc = fdp.service[0]
    methods = [{"name": m.name, "input": m.input_type.lstrip("."), "output": m.output_type.lstrip("."),
                "client_streaming": m.client_streaming, "server_streaming": m.server_streaming} for m in svc.method]
    req = next(m for m in fdp.message_type if m.name == "GenerateRequest")
    F = descriptor_pb2.FieldDescriptorProto
    fields = []
    for f in req.field:
        if f.type in (F.TYPE_MESSAGE, F.TYPE_ENUM):
            t = f.type_name.lstrip(".")
        else:
            t = F.Type.Name(f.type)[len("TYPE_"):].lower()
        fields.append([f.name, f.number, t, f.label == F.LABEL_REPEATED])
    return "%s.%s" % (fdp.package, svc.name), methods, fields


def main():
    fixture, node_dir = sys.argv[1], sys.argv[2]
    gen, _, _ = u.load_stubs()
    r = u.Results()
    exp = u.read_safetensors(os.path.join(fixture, "expected.safetensors"))
    prompt = exp[CASE + ".prompt_ids"][2]
    want = exp[CASE + ".greedy_ids"][2]
    service, methods, fields = protoc_view(gen)
    r.check(service == "mx.v1.Generation", "protoc names the public service mx.v1.Generation", service)
    # f32 KV cache: the fixture's reference tier, so the tokens can be checked against it too
    cl = u.Cluster(fixture, stages=1, shards=1, replicas="1", extra=["--kv-dtype", "f32"])
    try:
        with grpc.insecure_channel(cl.gateway) as ch:
            generate, _, _ = u.generation_stubs(ch, gen)
            req = gen.GenerateRequest(prompt_ids=prompt)
            req.sampling.temperature = 0
            req.sampling.max_new_tokens = len(want)
            req.sampling.ignore_eos = True
            ids = [t for m in generate(req, timeout=60) for t in m.token_ids]
        r.check(ids == want, "Python grpcio Generate: the fixture's greedy tokens", "got %s want %s" % (ids, want))
        expert = next(iter(cl.experts.values()))[0]
        spec = {"gateway": cl.gateway, "stage": cl.stages[0], "expert": expert, "service": service,
                "methods": methods, "request_fields": fields, "prompt_ids": prompt,
                "max_new_tokens": len(want), "want_ids": ids}
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
            json.dump(spec, f)
        node_rc = None
        try:
            p = subprocess.run(["node", os.path.join(node_dir, "reflect_client.cjs"), f.name],
                               capture_output=True, text=True, timeout=180)
            out, node_rc = p.stdout + p.stderr, p.returncode
        except subprocess.TimeoutExpired as e:
            out = (e.stdout or b"").decode() + "\nFAIL node client: timed out\n0 passed, 1 failed"
        finally:
            os.unlink(f.name)
        for line in out.splitlines():
            m = re.match(r"^(\d+) passed, (\d+) failed", line)
            if m:
                r.passed += int(m.group(1))
                r.failed += int(m.group(2))
            else:
                print(line)
        if not re.search(r"^\d+ passed, \d+ failed", out, re.M):
            r.check(False, "node reflection client", "no result line (exit %s)" % node_rc)
        r.check(cl.alive(), "the cluster is still up after the reflection calls")
    finally:
        rc = cl.stop()
    r.check(rc == 0, "mx cluster exits 0 on SIGTERM (no reflection stream holds the drain)", "exit %s" % rc)
    r.finish()


if __name__ == "__main__":
    main()
