"""fault_drain.py FIXTURE_DIR - a stage drains on SIGTERM: streams in flight complete.
A loopback cluster started by this test (2 chained stages of the tiny fixture with local
experts, f32 KV, drain_ms 20 s (80 s under AddressSanitizer); one gateway); 16 greedy streams
through the gateway, and once every stream has its first tokens, SIGTERM to stage 1 (first
round) or stage 0 (second round):
- every stream completes with `mx generate`'s greedy tokens (a single process, no RPC; its
  first tokens are checked against the fixture's greedy_ids first);
- a request sent after the signal fails fast (RESOURCE_EXHAUSTED: the stage is draining, or
  UNAVAILABLE once it is gone), it does not hang;
- the stage exits 0 after the last stream's last token and well before the drain period ends.
Every process is stopped by pid. Prints 'N passed, N failed' last."""
import os
import signal
import socket
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
ASAN = os.environ.get("MX_ASAN") == "1"
SLOW = 4 if ASAN else 1  # time bounds relaxed by this factor under AddressSanitizer
N_STREAMS = 16
NEW_TOKENS = 48
# The drain period must hold the streams' remaining tokens: 16 x up to 47 decode steps took 37 s
# under AddressSanitizer on a loaded 2-core machine, so it scales with SLOW like the other bounds.
DRAIN_S = 20 * SLOW
LEASE_MS = 3000 * SLOW
BIN = os.path.join(u.ROOT, u.BUILD, "bin")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def reference(fixture, prompt, fixture_greedy):
    """`mx generate`'s greedy tokens for prompt, checked against the fixture's first."""
    out = subprocess.run([os.path.join(BIN, "mx"), "generate", "--model", fixture, "--prompt-ids",
                          ",".join(str(t) for t in prompt), "--max-new-tokens", str(NEW_TOKENS), "--kv-dtype", "f32",
                          "--threads", "1"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, timeout=120 * SLOW)
    ids = [int(t) for t in out.stdout.split()]
    r.check(ids[:len(fixture_greedy)] == list(fixture_greedy) and len(ids) == NEW_TOKENS,
            "mx generate: the fixture's greedy tokens first, %d tokens" % NEW_TOKENS, "%s" % ids)
    return ids


def not_serving(port):
    """True once the stage's health says NOT_SERVING (or it is gone), False while SERVING."""
    with grpc.insecure_channel("127.0.0.1:%d" % port) as ch:
        check = ch.unary_unary("/grpc.health.v1.Health/Check",
                               request_serializer=health_pb.HealthCheckRequest.SerializeToString,
                               response_deserializer=health_pb.HealthCheckResponse.FromString)
        try:
            st = check(health_pb.HealthCheckRequest(service="mx.internal.v1.AttentionStage"), timeout=1).status
        except grpc.RpcError:
            return True
        return st != health_pb.HealthCheckResponse.SERVING


class Stream(threading.Thread):
    def __init__(self, addr, prompt, i):
        super().__init__(daemon=True)
        self.addr, self.prompt, self.i = addr, prompt, i
        self.tokens, self.code, self.t_done, self.t_last = [], None, None, None

    def run(self):
        ch = grpc.insecure_channel(self.addr)
        generate, _, _ = u.generation_stubs(ch, gen)
        req = gen.GenerateRequest(prompt_ids=self.prompt, request_id="drain-%d" % self.i)
        req.sampling.temperature = 0
        req.sampling.max_new_tokens = NEW_TOKENS
        req.sampling.ignore_eos = True
        try:
            for m in generate(req, timeout=120 * SLOW):
                self.tokens.extend(m.token_ids)
                self.t_last = time.time()
            self.code = grpc.StatusCode.OK
        except grpc.RpcError as e:
            self.code = e.code()
            self.detail = e.details()
        self.t_done = time.time()
        ch.close()


def one_round(fixture, prompt, want, victim):
    tmp = tempfile.mkdtemp(prefix="mx-fault-drain-")
    procs = {}

    def start(name, binary, text):
        path = os.path.join(tmp, name + ".cfg")
        with open(path, "w") as f:
            f.write(text)
        log = open(os.path.join(tmp, name + ".log"), "a")
        procs[name] = subprocess.Popen([os.path.join(BIN, binary), "--config", path], stdout=log, stderr=log)

    def log_of(name):
        with open(os.path.join(tmp, name + ".log")) as f:
            return f.read()[-1500:]

    sp = [free_port(), free_port()]
    try:
        for i in (1, 0):
            nxt = 'next = "127.0.0.1:%d";' % sp[1] if i == 0 else ""
            start("stage-%d" % i, "attention-svc",
                  'stage = { listen = "127.0.0.1:%d"; model = "%s"; index = %d; count = 2; layer_begin = %d;\n'
                  '  layer_end = %d; threads = 1; kv_dtype = "f32"; max_sequences = 64; sequence_lease_ms = %d;\n'
                  '  drain_ms = %d; %s };\n' % (sp[i], fixture, i, 4 * i, 4 * i + 4, LEASE_MS, DRAIN_S * 1000, nxt))
        port_file = os.path.join(tmp, "gateway.port")
        start("gateway", "gateway", 'gateway = { listen = "127.0.0.1:0"; model = "%s"; stages = ["127.0.0.1:%d", '
              '"127.0.0.1:%d"]; port_file = "%s"; drain_ms = 2000; max_batch_sequences = 32; };\n'
              % (fixture, sp[0], sp[1], port_file))
        addr = None
        t0 = time.time()
        while time.time() - t0 < 60 * SLOW and addr is None and procs["gateway"].poll() is None:
            if os.path.exists(port_file):
                addr = "127.0.0.1:%s" % open(port_file).read().strip()
            time.sleep(0.1)
        if addr is None:
            r.check(False, "round stage %d: the gateway started" % victim, log_of("gateway"))
            return
        streams = [Stream(addr, prompt, i) for i in range(N_STREAMS)]
        for s in streams:
            s.start()
        t0 = time.time()
        while time.time() - t0 < 60 * SLOW and not all(s.tokens or s.code for s in streams):
            time.sleep(0.005)
        at_signal = [len(s.tokens) for s in streams]
        procs["stage-%d" % victim].send_signal(signal.SIGTERM)
        t_sig = time.time()
        mid = sum(1 for n in at_signal if 0 < n < NEW_TOKENS)
        print("stage %d SIGTERM: tokens per stream at the signal %s" % (victim, at_signal))
        r.check(mid == N_STREAMS, "stage %d: all %d streams in flight at the signal (first tokens out, not done)"
                % (victim, N_STREAMS), "%s" % at_signal)
        # a request after the signal: a clear status, fast. Sent once the stage took the signal
        # (its health NOT_SERVING, set right before it starts draining; 0.1 s more for that).
        t0 = time.time()
        while time.time() - t0 < 5 * SLOW and not_serving(sp[victim]) is False:
            time.sleep(0.01)
        time.sleep(0.1)
        late = Stream(addr, prompt, 99)
        late.start()
        late.join(timeout=15 * SLOW)
        late_s = (late.t_done or time.time()) - t_sig
        r.check(late.code in (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE) and late_s < 10 * SLOW,
                "stage %d: a request after the signal fails fast (RESOURCE_EXHAUSTED draining / UNAVAILABLE)"
                % victim, "%s after %.2f s: %s" % (late.code, late_s, getattr(late, "detail", "")))
        print("stage %d: the request after the signal: %s in %.2f s (%s)"
              % (victim, late.code, late_s, getattr(late, "detail", "")))
        # the victim's exit, timed by polling its pid
        p = procs["stage-%d" % victim]
        t_exit = None
        while time.time() - t_sig < DRAIN_S + 10 * SLOW:
            if p.poll() is not None:
                t_exit = time.time()
                break
            time.sleep(0.01)
        for s in streams:
            s.join(timeout=max(1, 60 * SLOW - (time.time() - t_sig)))
        good = sum(1 for s in streams if s.code == grpc.StatusCode.OK and s.tokens == want)
        bad = ["%d: %s %s" % (s.i, s.code, s.tokens) for s in streams if not (s.code == grpc.StatusCode.OK and
                                                                               s.tokens == want)][:3]
        r.check(good == N_STREAMS, "stage %d drains: every stream completes with mx generate's greedy tokens"
                % victim, "%d of %d; %s" % (good, N_STREAMS, bad))
        t_last = max((s.t_last or 0) for s in streams)
        exit_s = None if t_exit is None else t_exit - t_sig
        print("stage %d: last token %.2f s after the signal, stage exit %s s after it (drain period %d s)"
              % (victim, t_last - t_sig, "never" if exit_s is None else "%.2f" % exit_s, DRAIN_S))
        r.check(t_exit is not None and p.returncode == 0 and exit_s < DRAIN_S,
                "stage %d exits 0 before the drain period ends" % victim,
                "rc %s after %s s: %s" % (p.returncode, exit_s, log_of("stage-%d" % victim)))
        # the stage stays up for every stream: its exit comes after the last token was sent to
        # the client (0.25 s of slack for the gateway -> client hop of that last token)
        r.check(t_exit is not None and t_exit >= t_last - 0.25, "stage %d exits after the last stream" % victim,
                "exit %s, last token %.2f" % (exit_s, t_last - t_sig))
    finally:
        for name, p in procs.items():
            if p.poll() is None:
                p.kill()
                p.wait()


def main():
    fixture = os.path.abspath(sys.argv[1])
    exp = u.read_safetensors(os.path.join(fixture, "expected.safetensors"))
    prompt = exp["p5_s12.prompt_ids"][2]
    want = reference(fixture, prompt, exp["p5_s12.greedy_ids"][2])
    for victim in (1, 0):
        one_round(fixture, prompt, want, victim)
    r.finish()


if __name__ == "__main__":
    main()
