"""cluster_util.py - shared pieces of the cluster acceptance tests: Python stubs generated
from proto/ with protoc at test time, a real `mx cluster` started and stopped around a test,
a small safetensors reader for the golden fixtures, and a pass/fail counter. The client side
is grpcio + protobuf only (independent of the C code under test)."""
import atexit
import json
import math
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time

import grpc

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
BUILD = os.environ.get("BUILD", "build")
MX = os.path.join(ROOT, BUILD, "bin", "mx")


# The generated health module lives under the package name "grpc", which is also grpcio's;
# import it by path instead of by package so grpcio stays importable.
def _import_health(out_dir):
    import importlib.util
    spec = importlib.util.spec_from_file_location("health_pb2", os.path.join(out_dir, "grpc/health/v1/health_pb2.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def load_stubs():
    out = tempfile.mkdtemp(prefix="mx-pb-")
    atexit.register(shutil.rmtree, out, True)
    protos = ["mx/v1/generation.proto", "mx/internal/v1/tensor.proto", "mx/internal/v1/attention_stage.proto",
              "grpc/health/v1/health.proto"]
    subprocess.run(["protoc", "-I" + os.path.join(ROOT, "proto"), "--python_out=" + out] + protos, check=True)
    sys.path.insert(0, out)
    import mx.v1.generation_pb2 as gen
    import mx.internal.v1.attention_stage_pb2 as stage
    health = _import_health(out)
    return gen, stage, health


def stop_process(proc, timeout=20):
    """SIGTERM, as a user's Ctrl-C would; SIGKILL if it has not exited after timeout seconds.
    Returns the exit status (negative: the signal that ended it)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


class Cluster:
    """`mx cluster ...` as a child process, with what it prints up to "gateway listening on":
    stages (addresses) and stage_pids, experts {shard: (address, pid)}, gateway (address) and
    gateway_pid, http (the OpenAI API's URL, if printed) and metrics_urls {service: URL}.
    replicas None leaves --replicas out (one each); mx is the binary (default $BUILD's)."""

    def __init__(self, model, stages=2, shards=2, replicas="2,1", extra=(), threads=1, start_timeout=90, mx=None,
                 stop_timeout=20):
        args = [mx or MX, "cluster", "--model", model, "--stages", str(stages), "--expert-shards", str(shards)]
        if replicas is not None:
            args += ["--replicas", replicas]
        args += ["--threads", str(threads)] + list(extra)
        self.stop_timeout = stop_timeout
        self.log = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=self.log, text=True)
        self.stages, self.stage_pids, self.experts = [], [], {}
        self.gateway, self.gateway_pid, self.http, self.metrics_urls = None, None, None, {}
        deadline = time.time() + start_timeout
        for line in self.proc.stdout:
            m = re.match(r"(stage|expert|gateway) (\S+) (\S+) pid (\d+)", line)
            if m and m.group(1) == "stage":
                self.stages.append(m.group(3))
                self.stage_pids.append(int(m.group(4)))
            elif m and m.group(1) == "expert":
                self.experts[m.group(2)] = (m.group(3), int(m.group(4)))
            elif m:
                self.gateway_pid = int(m.group(4))
            m = re.match(r"metrics (\S+) (http://\S+/metrics)$", line.strip())
            if m:
                self.metrics_urls[m.group(1)] = m.group(2)
            m = re.match(r"http (http://\S+)$", line.strip())
            if m:
                self.http = m.group(1)
            if line.startswith("gateway listening on "):
                self.gateway = line.split()[-1]
                break
            if time.time() > deadline:
                break
        if not self.gateway:
            self.stop()
            raise RuntimeError("mx cluster did not start:\n" + self.read_log())

    def read_log(self):
        self.log.seek(0)
        return self.log.read()

    def alive(self):
        return self.proc.poll() is None

    def stop(self):
        """SIGTERM (the cluster stops its services); returns the exit status."""
        return stop_process(self.proc, self.stop_timeout)


def read_safetensors(path):
    """{name: (dtype, shape, list of values)} for F32 and I32 tensors."""
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, t in header.items():
        if name == "__metadata__":
            continue
        a, b = t["data_offsets"]
        fmt = {"F32": "f", "I32": "i"}[t["dtype"]]
        count = (b - a) // 4
        out[name] = (t["dtype"], t["shape"], list(struct.unpack("<%d%s" % (count, fmt), data[a:b])))
    return out


def log_softmax_at(row, idx):
    m = max(row)
    s = sum(math.exp(v - m) for v in row)
    return row[idx] - m - math.log(s)


class Results:
    def __init__(self):
        self.passed = 0
        self.failed = 0

    def check(self, ok, name, detail=""):
        if ok:
            self.passed += 1
            print("PASS %s" % name)
        else:
            self.failed += 1
            print("FAIL %s %s" % (name, detail))
        sys.stdout.flush()
        return ok

    def finish(self):
        print("%d passed, %d failed" % (self.passed, self.failed))
        sys.exit(1 if self.failed else 0)


def generation_stubs(channel, gen):
    generate = channel.unary_stream("/mx.v1.Generation/Generate", request_serializer=gen.GenerateRequest.SerializeToString,
                                    response_deserializer=gen.GenerateResponse.FromString)
    complete = channel.unary_unary("/mx.v1.Generation/Complete", request_serializer=gen.GenerateRequest.SerializeToString,
                                   response_deserializer=gen.CompleteResponse.FromString)
    info = channel.unary_unary("/mx.v1.Generation/ModelInfo", request_serializer=gen.ModelInfoRequest.SerializeToString,
                               response_deserializer=gen.ModelInfoResponse.FromString)
    return generate, complete, info
