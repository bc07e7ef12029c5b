"""fault_gateway.py FIXTURE_DIR - the gateway under faults and crowds, in a real loopback
cluster (2 stages, 1 expert shard), seen by an independent Python grpcio client:
- a crowd, on a second gateway of our own (max_batch_sequences 16, so 32 workers, max_queued
  64, stream_write_timeout_ms 3000, max_context_tokens 4096) on the same stages: 200 streams that never read plus 50
  normal ones: a health Check (from a separate process, every 50 ms) answers within 100 ms
  throughout (within 500 ms during the burst below, where the test's own 300 sender threads
  saturate the CPUs), the normal streams complete with the fixture's tokens, RSS stays under 1 GiB;
  streams beyond the workers and the queue get RESOURCE_EXHAUSTED naming a retry time (the
  normal ones retry); then a burst of 300 requests of 1.2 MB each (prompt ids over the
  context limit): every one is answered at once, with RESOURCE_EXHAUSTED or the over-limit
  error naming the real token count; the gateway's
  RSS is back within 20 % (+ 8 MiB) of its pre-burst value 3 s after the burst;
- stage 0 stalled briefly (SIGSTOP for 0.75 s, three times at phases a third of the gateway's
  500 ms check interval apart, so that at least one stall makes a check miss its deadline, as a
  stage busy on a loaded machine does): the gateway's mx.v1.Generation health
  stays SERVING throughout (polled every 50 ms);
- stage 0 frozen (SIGSTOP): the gateway's mx.v1.Generation health turns NOT_SERVING within 2 s
  (its liveness, service "", stays SERVING); after SIGCONT it is SERVING again within 2 s, and a
  greedy request then gives the fixture's tokens.
- two gateways sharing the stages (the cluster's and ours, started within a second of each
  other) under 8 + 8 streams for 10 s: 0 failed requests, the fixture's tokens (their
  sequence ids are random with a per-gateway tag, so one's Release never hits the other's);
- SIGTERM of our gateway with 16 streams in flight (fixture's tokens + 100 more, about 4 s):
  every stream completes (the fixture's tokens first, all its tokens, a finish_reason) within
  the drain period (20 s, the Kubernetes overlay's), and the gateway exits 0 once they are done;
- on a cluster of its own (1 stage with max_sequences 8, a 3 s sequence_lease_ms and the
  test-only switch that fails one expert call in the middle of its first RunBatch, 1 expert
  shard): the first request still gives the fixture's tokens (the gateway sends the failed
  atomic step again); gateway SIGKILL with 8 long streams holding every slot: a new gateway
  runs 8 concurrent requests to the fixture's tokens within lease + 5 s of the kill;
Under AddressSanitizer (MX_ASAN=1) the time bounds are relaxed by a factor 3 (the lease by
4), and the RSS-returns check is skipped (its allocator quarantines freed memory).
Prints 'N passed, N failed' last."""
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time

import grpc

sys.path.insert(0, os.path.dirname(__file__))
import cluster_util as u

gen, stage_pb, health_pb = u.load_stubs()
r = u.Results()
DRAIN_MS = 20000
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


def test_brief_stall_keeps_serving(cl):
    gw = cl.gateway
    r.check(wait_status(gw, "mx.v1.Generation", 1, 10) is not None, "gateway SERVING before the stalls")
    pid = child_pid(cl.proc.pid, "stage-0.cfg")
    if not r.check(pid is not None, "stage 0's pid found"):
        return
    seen, stalls, tries = [], 0, 0
    # A stall of 0.75 s covers at most one whole 500 ms check: the watcher's first check that
    # times out is followed at once by one the stage answers. It makes a check miss when it
    # starts within 250 ms before one is sent; the gaps after the stalls differ by a third of
    # the interval, so one of three stalls does whatever the watcher's phase. A stall that
    # overran 0.95 s (this process descheduled) could cover two checks and is not counted;
    # tries are bounded.
    while stalls < 3 and tries < 8:
        tries += 1
        os.kill(pid, signal.SIGSTOP)
        t0 = time.time()
        try:
            while time.time() - t0 < 0.75:
                seen.append(status(gw, "mx.v1.Generation", timeout=0.3))
                time.sleep(0.05)
        finally:
            os.kill(pid, signal.SIGCONT)
        took = time.time() - t0
        t1 = time.time()
        while time.time() - t1 < 0.8 + 0.167 * stalls:
            seen.append(status(gw, "mx.v1.Generation", timeout=0.3))
            time.sleep(0.05)
        if took < 0.95:
            stalls += 1
    print("brief stalls of stage 0: %d counted of %d, %d health polls" % (stalls, tries, len(seen)))
    r.check(stalls == 3, "three stalls under 0.95 s", "%d of %d tries" % (stalls, tries))
    r.check(2 not in seen, "mx.v1.Generation stays SERVING through brief stalls of stage 0",
            "%d NOT_SERVING of %d polls" % (seen.count(2), len(seen)))


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


PROBE = r"""
import sys, time, grpc
sys.path.insert(0, sys.argv[2])
import cluster_util as u
_, _, health_pb = u.load_stubs()
ch = grpc.insecure_channel(sys.argv[1])
check = ch.unary_unary("/grpc.health.v1.Health/Check",
                       request_serializer=health_pb.HealthCheckRequest.SerializeToString,
                       response_deserializer=health_pb.HealthCheckResponse.FromString)
check(health_pb.HealthCheckRequest(service=""), timeout=5)
worst, n, bad = 0.0, 0, 0
while sys.stdin.readline().strip() != "stop":
    t0 = time.time()
    try:
        st = check(health_pb.HealthCheckRequest(service=""), timeout=2).status
    except grpc.RpcError:
        st = None
    dt = time.time() - t0
    worst, n, bad = max(worst, dt), n + 1, bad + (st != 1)
    print("%f %d %d" % (worst, n, bad), flush=True)
"""


class Probe:
    """Health Checks every 50 ms from a process of its own (the crowd's threads share our GIL)."""

    def __init__(self, addr):
        self.p = subprocess.Popen([sys.executable, "-c", PROBE, addr, os.path.dirname(os.path.abspath(__file__))],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.last = (0.0, 0, 0)
        self.stop = threading.Event()
        self.t = threading.Thread(target=self.run, daemon=True)
        self.t.start()

    def run(self):
        while not self.stop.is_set():
            try:
                self.p.stdin.write("go\n")
                self.p.stdin.flush()
                line = self.p.stdout.readline()
            except (BrokenPipeError, ValueError):
                return
            if not line:
                return
            w, n, b = line.split()
            self.last = (float(w), int(n), int(b))
            time.sleep(0.05)

    def finish(self):
        self.stop.set()
        self.t.join(timeout=10)
        try:
            self.p.stdin.write("stop\n")
            self.p.stdin.flush()
        except (BrokenPipeError, ValueError):
            pass
        try:
            self.p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait()
        return self.last


def rss_mib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return 0.0


class OwnGateway:
    """A second gateway on the cluster's stages, with our own limits."""

    def __init__(self, fixture, stages, extra="", drain_ms=5000):
        self.dir = tempfile.mkdtemp(prefix="mx-fault-gw-")
        self.port_file = os.path.join(self.dir, "port")
        cfg = os.path.join(self.dir, "gw.cfg")
        with open(cfg, "w") as f:
            f.write('gateway = {\n  listen = "127.0.0.1:0";\n  model = "%s";\n  stages = [%s];\n'
                    '  port_file = "%s";\n  drain_ms = %d;\n%s};\n'
                    % (os.path.abspath(fixture), ", ".join('"%s"' % a for a in stages), self.port_file, drain_ms, extra))
        self.log = open(os.path.join(self.dir, "log"), "w+")
        self.proc = subprocess.Popen([os.path.join(os.environ.get("BUILD", "build"), "bin", "gateway"), "--config", cfg],
                                     stdout=self.log, stderr=self.log)
        self.addr = None
        t0 = time.time()
        while time.time() - t0 < 60 and self.proc.poll() is None:
            if os.path.exists(self.port_file):
                self.addr = "127.0.0.1:%s" % open(self.port_file).read().strip()
                break
            time.sleep(0.1)
        if not self.addr:
            raise RuntimeError("own gateway did not start: " + self.read_log())

    def read_log(self):
        self.log.seek(0)
        return self.log.read()

    def stop(self):
        return u.stop_process(self.proc)


def test_crowd(fixture, cl, prompt, want):
    gw = OwnGateway(fixture, cl.stages, "  max_batch_sequences = 16;\n  max_queued = 64;\n"
                    "  stream_write_timeout_ms = 3000;\n  max_context_tokens = 4096;\n")
    try:
        crowd_on(gw, prompt, want)
    finally:
        st = gw.stop()
        r.check(st == 0, "own gateway drains and exits 0 on SIGTERM", "exit %s\n%s" % (st, gw.read_log()[-2000:]))


def crowd_on(gw, prompt, want):
    pid = gw.proc.pid
    ch = grpc.insecure_channel(gw.addr)
    generate, _, _ = u.generation_stubs(ch, gen)
    greedy(gw.addr, prompt, want)  # warm
    rss0 = rss_mib(pid)
    probe = Probe(gw.addr)
    silent = []
    for i in range(200):
        req = gen.GenerateRequest(prompt_ids=prompt, request_id="silent-%d" % i)
        req.sampling.temperature = 0
        req.sampling.max_new_tokens = len(want)
        req.sampling.ignore_eos = True
        silent.append(generate(req, timeout=120))  # never read
    results, refused, lock = [], [], threading.Lock()

    def normal(i):
        chn = grpc.insecure_channel(gw.addr)
        gen_n, _, _ = u.generation_stubs(chn, gen)
        got, err, busy = [], None, 0
        for attempt in range(60):  # RESOURCE_EXHAUSTED says when to come back
            try:
                req = gen.GenerateRequest(prompt_ids=prompt, request_id="normal-%d-%d" % (i, attempt))
                req.sampling.temperature = 0
                req.sampling.max_new_tokens = len(want)
                req.sampling.ignore_eos = True
                got = []
                for m in gen_n(req, timeout=120):
                    got.extend(m.token_ids)
                err = None
                break
            except grpc.RpcError as e:
                err = "%s %s" % (e.code(), e.details())
                if e.code() != grpc.StatusCode.RESOURCE_EXHAUSTED or "retry after" not in e.details():
                    break
                busy += 1
                time.sleep(1.0)
        with lock:
            results.append((got, err))
            refused.append(busy)
        chn.close()

    peak = [rss0]
    stop_rss = threading.Event()

    def watch_rss():
        while not stop_rss.is_set():
            peak[0] = max(peak[0], rss_mib(pid))
            time.sleep(0.1)

    tw = threading.Thread(target=watch_rss, daemon=True)
    tw.start()
    threads = [threading.Thread(target=normal, args=(i,), daemon=True) for i in range(50)]
    t0 = time.time()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=150)
    took = time.time() - t0
    ok = sum(1 for got, err in results if got == want and err is None)
    r.check(ok == 50, "200 never-reading streams + 50 normal: the normal streams complete with the fixture's tokens",
            "%d of 50 ok in %.1f s: %s" % (ok, took, [e for _, e in results if e][:3]))
    r.check(sum(refused) > 0, "excess requests get RESOURCE_EXHAUSTED naming when to retry (and complete on a retry)",
            "%d refusals" % sum(refused))
    for s in silent:
        s.cancel()
    worst, n, bad = probe.finish()
    print("health during the crowd: %d checks, worst %.1f ms, %d not SERVING" % (n, worst * 1e3, bad))
    lim = 0.1 * SLACK
    r.check(n >= 20 and bad == 0 and worst < lim, "health Check answers within %.0f ms throughout the crowd" % (lim * 1e3),
            "%d checks, worst %.1f ms, %d bad" % (n, worst * 1e3, bad))
    probe = Probe(gw.addr)
    time.sleep(2.0)
    rss_mid = rss_mib(pid)
    print("gateway RSS after the crowd: %.1f MiB" % rss_mid)
    # the burst: requests of 1.2 MB (prompt ids past the context limit) all at once
    big = gen.GenerateRequest(prompt_ids=[1] * 600000, request_id="big")
    big.sampling.max_new_tokens = 1
    codes, details = {}, []

    def burst(k):
        chb = grpc.insecure_channel(gw.addr, options=[("grpc.max_send_message_length", 64 << 20)])
        gen_b, _, _ = u.generation_stubs(chb, gen)
        try:
            for _ in gen_b(big, timeout=60):
                pass
            code = "OK"
        except grpc.RpcError as e:
            code = e.code().name
            with lock:
                details.append((code, e.details()))
        with lock:
            codes[code] = codes.get(code, 0) + 1
        chb.close()

    bt = [threading.Thread(target=burst, args=(k,), daemon=True) for k in range(300)]
    t0 = time.time()
    for t in bt:
        t.start()
    for t in bt:
        t.join(timeout=90)
    took = time.time() - t0
    print("burst of 300: %s in %.1f s" % (codes, took))
    r.check(all(c in ("RESOURCE_EXHAUSTED", "INVALID_ARGUMENT") for c in codes), "burst: refused or rejected at once",
            str(codes))
    over = [d for c, d in details if c == "INVALID_ARGUMENT" and "600000 tokens" in d]
    r.check(len(over) > 0, "the over-limit message names the real token count (600000)", str(details[:3]))
    r.check(sum(codes.values()) == 300, "every burst request answered", str(codes))
    time.sleep(3.0)
    stop_rss.set()
    tw.join(timeout=5)
    worst, n, bad = probe.finish()
    # the test's own 300 sender threads saturate this machine's CPUs during the burst, the
    # probe process included: a looser bound here
    print("health during the burst: %d checks, worst %.1f ms, %d not SERVING" % (n, worst * 1e3, bad))
    lim = 0.5 * SLACK
    r.check(n >= 5 and bad == 0 and worst < lim, "health Check answers within %.0f ms during the burst" % (lim * 1e3),
            "%d checks, worst %.1f ms, %d bad" % (n, worst * 1e3, bad))
    rss1 = rss_mib(pid)
    print("gateway RSS: %.1f MiB before, peak %.1f MiB, %.1f MiB 3 s after" % (rss0, peak[0], rss1))
    r.check(peak[0] < 1024, "RSS stays under 1 GiB", "peak %.1f MiB" % peak[0])
    if SLACK > 1:
        # AddressSanitizer's allocator keeps freed memory in quarantine: RSS cannot return
        print("skip: RSS back after the burst (AddressSanitizer's allocator quarantines freed memory)")
    else:
        r.check(rss1 <= rss0 * 1.2 + 8, "RSS back within 20 % of the pre-burst value", "%.1f -> %.1f" % (rss0, rss1))
    ch.close()


class Streams:
    """n threads sending greedy requests one after another to addr until stopped (or once)."""

    def __init__(self, addr, n, prompt, want, once=False, extra=0):
        self.addr, self.prompt, self.want, self.once, self.extra = addr, prompt, want, once, extra
        self.ends = []
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.ok, self.failed, self.started = 0, [], 0
        self.threads = [threading.Thread(target=self.run, args=(i,), daemon=True) for i in range(n)]
        for t in self.threads:
            t.start()

    def run(self, i):
        ch = grpc.insecure_channel(self.addr)
        generate, _, _ = u.generation_stubs(ch, gen)
        k = 0
        while not self.stop.is_set():
            k += 1
            req = gen.GenerateRequest(prompt_ids=self.prompt, request_id="s-%d-%d" % (i, k))
            req.sampling.temperature = 0
            req.sampling.max_new_tokens = len(self.want) + self.extra
            req.sampling.ignore_eos = True
            got = []
            try:
                with self.lock:
                    self.started += 1
                last = None
                for m in generate(req, timeout=60):
                    got.extend(m.token_ids)
                    last = m
                with self.lock:
                    self.ends.append(time.time())
                    # beyond the fixture's tokens only the count is known
                    if (got[:len(self.want)] == self.want and len(got) == len(self.want) + self.extra
                            and last is not None and last.finish_reason):
                        self.ok += 1
                    else:
                        self.failed.append("tokens %s want %s" % (got, self.want))
            except grpc.RpcError as e:
                with self.lock:
                    self.failed.append("%s %s" % (e.code(), e.details()))
            if self.once:
                break
        ch.close()

    def finish(self, timeout=60):
        self.stop.set()
        t0 = time.time()
        for t in self.threads:
            t.join(timeout=max(0.1, timeout - (time.time() - t0)))
        return self.ok, self.failed


def test_two_gateways(fixture, cl, prompt, want):
    gw = OwnGateway(fixture, cl.stages, drain_ms=DRAIN_MS)
    try:
        a = Streams(cl.gateway, 8, prompt, want)
        b = Streams(gw.addr, 8, prompt, want)
        time.sleep(10.0)
        oka, fa = a.finish()
        okb, fb = b.finish()
        print("two gateways: %d + %d requests ok" % (oka, okb))
        r.check(oka > 0 and okb > 0 and not fa and not fb, "two gateways sharing the stages under load: 0 failed requests",
                "%d ok %s / %d ok %s" % (oka, fa[:3], okb, fb[:3]))
        # SIGTERM with streams in flight: they all finish within the drain period
        c = Streams(gw.addr, 16, prompt, want, once=True, extra=100)
        t_wait = time.time()
        while time.time() - t_wait < 10 and c.started < 16:
            time.sleep(0.05)
        time.sleep(0.2)
        t0 = time.time()
        gw.proc.send_signal(signal.SIGTERM)
        ok, failed = c.finish(timeout=30)
        late = sum(1 for e in c.ends if e > t0)
        try:
            st = gw.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            st = None
        took = time.time() - t0
        print("gateway SIGTERM: %d streams ok (%d ended after the signal), exit %s after %.2f s" % (ok, late, st, took))
        r.check(late == 16, "the 16 streams were in flight at the SIGTERM", "%d ended after it" % late)
        r.check(ok == 16 and not failed, "SIGTERM of the gateway: every stream in flight completes", "%d ok %s" % (ok, failed[:3]))
        r.check(st == 0 and took < DRAIN_MS / 1e3 * SLACK, "the gateway exits 0 within its drain period", "exit %s after %.2f s" % (st, took))
    finally:
        gw.stop()


def free_port():
    import socket
    so = socket.socket()
    so.bind(("127.0.0.1", 0))
    port = so.getsockname()[1]
    so.close()
    return port


def round_ok(addr, n, prompt, want):
    """n concurrent greedy requests; the number that gave the fixture's tokens."""
    st = Streams(addr, n, prompt, want, once=True)
    ok, _ = st.finish(timeout=30)
    return ok


def test_gateway_sigkill(fixture, prompt, want):
    lease_ms = 3000 * (4 if SLACK > 1 else 1)
    tmp = tempfile.mkdtemp(prefix="mx-fault-gw-kill-")
    bin_dir = os.path.join(os.environ.get("BUILD", "build"), "bin")
    ep, sp = free_port(), free_port()
    procs = []

    def start(name, binary, text):
        path = os.path.join(tmp, name + ".cfg")
        with open(path, "w") as f:
            f.write(text)
        log = open(os.path.join(tmp, name + ".log"), "a")
        procs.append(subprocess.Popen([os.path.join(bin_dir, binary), "--config", path], stdout=log, stderr=log))

    gws = []
    try:
        start("expert", "expert-svc", 'model_dir = "%s"; listen = "127.0.0.1:%d"; threads = 1; shard_index = 0;'
              ' experts = [0, 1, 2, 3];\n' % (os.path.abspath(fixture), ep))
        start("stage", "attention-svc",
              'stage = { listen = "127.0.0.1:%d"; model = "%s"; index = 0; count = 1; layer_begin = 0; layer_end = 8;\n'
              '  threads = 1; max_sequences = 8; sequence_lease_ms = %d; drain_ms = 500;\n'
              '  test_fail_expert_call_once_at_layer = 2; };\n'
              'experts = { shards = ( { experts = [0, 1, 2, 3]; replicas = ["127.0.0.1:%d"]; } ); };\n'
              % (sp, os.path.abspath(fixture), lease_ms, ep))
        stages = ["127.0.0.1:%d" % sp]
        a = OwnGateway(fixture, stages, "  max_batch_sequences = 8;\n")
        gws.append(a)
        # the stage fails its first RunBatch in the middle (an expert call, once); steps being
        # atomic (Info), the gateway sends it again and the request gives the fixture's tokens
        got = greedy(a.addr, prompt, want)
        r.check(got == want, "a RunBatch failed midway is retried by the gateway: the fixture's tokens",
                "%s want %s" % (got, want))
        # 8 long streams hold every slot of the stage
        hold = Streams(a.addr, 8, prompt, want, once=True, extra=3000)
        t0 = time.time()
        ch0 = grpc.insecure_channel(stages[0])
        info = ch0.unary_unary("/mx.internal.v1.AttentionStage/Info",
                               request_serializer=stage_pb.StageInfoRequest.SerializeToString,
                               response_deserializer=stage_pb.StageInfoResponse.FromString)
        live = 0
        while time.time() - t0 < 60 and live < 8:
            try:
                live = info(stage_pb.StageInfoRequest(), timeout=2).live_sequences
            except grpc.RpcError:
                pass
            time.sleep(0.1)
        r.check(live == 8, "the first gateway's 8 streams hold every slot of the stage", "live %d" % live)
        a.proc.kill()
        t_kill = time.time()
        a.proc.wait()
        hold.finish(timeout=10)
        b = OwnGateway(fixture, stages, "  max_batch_sequences = 8;\n")
        gws.append(b)
        first_fail = None
        t_ok = None
        while time.time() - t_kill < lease_ms / 1e3 + 5 + 10:
            ok = round_ok(b.addr, 8, prompt, want)
            if ok == 8:
                t_ok = time.time()
                break
            if first_fail is None:
                first_fail = (time.time() - t_kill, ok)
            time.sleep(0.5)
        took = None if t_ok is None else t_ok - t_kill
        print("gateway SIGKILL: first round after the kill %s; all 8 slots usable %s s after the kill (lease %.1f s)"
              % (first_fail, "never" if took is None else "%.1f" % took, lease_ms / 1e3))
        r.check(took is not None and took <= lease_ms / 1e3 + 5, "gateway SIGKILL: a new gateway uses all max_sequences "
                "slots within lease + 5 s", "%s s" % took)
        ch0.close()
    finally:
        for g in gws:
            g.stop()
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


def main():
    fixture = sys.argv[1]
    exp = u.read_safetensors(os.path.join(fixture, "expected.safetensors"))
    names = [c["name"] for c in json.load(open(os.path.join(fixture, "cases.json")))["cases"]]
    name = [n for n in names if n + ".greedy_ids" in exp][0]
    prompt, want = exp[name + ".prompt_ids"][2], exp[name + ".greedy_ids"][2]
    cl = u.Cluster(fixture, stages=2, shards=1, replicas="1")
    try:
        try:
            test_gateway_sigkill(fixture, prompt, want)
        except Exception as e:  # a crash in one group is a failure; the cluster still stops
            r.check(False, "test group", repr(e))
        try:
            test_two_gateways(fixture, cl, prompt, want)
        except Exception as e:  # a crash in one group is a failure; the cluster still stops
            r.check(False, "test group", repr(e))
        try:
            test_crowd(fixture, cl, prompt, want)
        except Exception as e:  # a crash in one group is a failure; the cluster still stops
            r.check(False, "test group", repr(e))
        try:
            test_brief_stall_keeps_serving(cl)
            test_health_follows_stage0(cl, prompt, want)
        except Exception as e:  # a crash in one group is a failure; the cluster still stops
            r.check(False, "test group", repr(e))
    finally:
        st = cl.stop()
        r.check(st == 0, "cluster stops cleanly on SIGTERM", "exit %s\n%s" % (st, cl.read_log()[-3000:]))
    r.finish()


if __name__ == "__main__":
    main()
