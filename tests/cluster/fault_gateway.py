"""fault_gateway.py FIXTURE_DIR - the gateway's health means "can serve", in a real loopback
cluster (2 stages, 1 expert shard), seen by an independent Python grpcio client:
- stage 0 frozen (SIGSTOP): the gateway's mx.v1.Generation health turns NOT_SERVING within 2 s
  (its liveness, service "", stays SERVING); after SIGCONT it is SERVING again within 2 s, and a
  greedy request then gives the fixture's tokens.
Under AddressSanitizer (MX_ASAN=1) the 2 s bounds are relaxed by a factor 3.
Prints 'N passed, N failed' last."""
import json
import os
import signal
import sys
import time

import grpc

sys.path.insert(0, os.path.dirname(__file__))
import cluster_util as u

gen, stage_pb, health_pb = u.load_stubs()
r = u.Results()
SLACK = 3.0 if os.environ.get("MX_ASAN") == "1" else 1.0


def status(addr, service, timeout=0.5):
    """1 SERVING, 2 NOT_SERVING, None no answer."""
    try:
        with grpc.insecure_channel(addr) as ch:
            check = ch.unary_unary("/grpc.health.v1.Health/Check",
                                   request_serializer=health_pb.HealthCheckRequest.SerializeToString,
                                   response_deserializer=health_pb.HealthCheckResponse.FromString)
            return check(health_pb.HealthCheckRequest(service=service), timeout=timeout).status
    except grpc.RpcError:
        return None


def wait_status(addr, service, want, timeout):
    """Seconds until the status is want (polled every 50 ms), or None after timeout."""
    t0 = time.time()
    while time.time() - t0 < timeout:
        if status(addr, service) == want:
            return time.time() - t0
        time.sleep(0.05)
    return None


def child_pid(parent, needle):
    """The pid of parent's child whose command line contains needle."""
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % d) as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            with open("/proc/%s/cmdline" % d, "rb") as f:
                cmd = f.read().decode(errors="replace")
        except (OSError, ValueError, IndexError):
            continue
        if ppid == parent and needle in cmd:
            return int(d)
    return None


def greedy(addr, prompt, want):
    with grpc.insecure_channel(addr) as ch:
        generate, _, _ = u.generation_stubs(ch, gen)
        req = gen.GenerateRequest(prompt_ids=prompt, request_id="fault-gw")
        req.sampling.temperature = 0
        req.sampling.max_new_tokens = len(want)
        req.sampling.ignore_eos = True
        got = []
        for m in generate(req, timeout=60):
            got.extend(m.token_ids)
        return got


def test_health_follows_stage0(cl, prompt, want):
    gw = cl.gateway
    r.check(wait_status(gw, "mx.v1.Generation", 1, 10) is not None, "gateway SERVING with every stage up")
    pid = child_pid(cl.proc.pid, "stage-0.cfg")
    if not r.check(pid is not None, "stage 0's pid found"):
        return
    os.kill(pid, signal.SIGSTOP)
    try:
        down = wait_status(gw, "mx.v1.Generation", 2, 2.0 * SLACK + 1.0)
        r.check(down is not None and down <= 2.0 * SLACK, "NOT_SERVING within 2 s of losing stage 0",
                "after %s s" % down)
        r.check(status(gw, "") == 1, "liveness (service \"\") stays SERVING meanwhile")
        time.sleep(1.0)
        r.check(status(gw, "mx.v1.Generation") == 2, "still NOT_SERVING while stage 0 is gone")
    finally:
        os.kill(pid, signal.SIGCONT)
    up = wait_status(gw, "mx.v1.Generation", 1, 2.0 * SLACK + 1.0)
    r.check(up is not None and up <= 2.0 * SLACK, "SERVING again within 2 s of stage 0's return", "after %s s" % up)
    got = greedy(gw, prompt, want)
    r.check(got == want, "a request after the return gives the fixture's tokens", "%s want %s" % (got, want))


def main():
    fixture = sys.argv[1]
    exp = u.read_safetensors(os.path.join(fixture, "expected.safetensors"))
    names = [c["name"] for c in json.load(open(os.path.join(fixture, "cases.json")))["cases"]]
    name = [n for n in names if n + ".greedy_ids" in exp][0]
    prompt, want = exp[name + ".prompt_ids"][2], exp[name + ".greedy_ids"][2]
    cl = u.Cluster(fixture, stages=2, shards=1, replicas="1")
    try:
        try:
            test_health_follows_stage0(cl, prompt, want)
        except Exception as e:  # a crash in one group is a failure; the cluster still stops
            r.check(False, "test group", repr(e))
    finally:
        st = cl.stop()
        r.check(st == 0, "cluster stops cleanly on SIGTERM", "exit %s\n%s" % (st, cl.read_log()[-3000:]))
    r.finish()


if __name__ == "__main__":
    main()
