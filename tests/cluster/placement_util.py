"""placement_util.py - a loopback cluster with an explicit expert placement (which experts each
shard holds, how many replicas each shard has), which `mx cluster` does not take: writes the
expert-svc, attention-svc and gateway config files itself, starts the binaries, waits until
every process answers grpc.health SERVING and stops them all by pid. Also runs
`mx expert-stats` and `mx plan-experts`. Used by the expert-stats suite and the placement
benchmark; the placement's shard/experts/replicas come from the caller (e.g. a plan's JSON)."""
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time

import grpc

import cluster_util as u


def free_ports(n):
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


def contiguous(n_experts, n_shards, n_replicas):
    """The `mx cluster` layout: shard s holds [s*N/S, (s+1)*N/S); replicas spread evenly."""
    return [{"experts": list(range(s * n_experts // n_shards, (s + 1) * n_experts // n_shards)),
             "replicas": n_replicas // n_shards + (1 if s < n_replicas % n_shards else 0)} for s in range(n_shards)]


class PlacedCluster:
    """shards: [{"experts": [...], "replicas": r}, ...] (as `mx plan-experts --json` "plan")."""

    def __init__(self, model, shards, stages=1, threads=1, max_batch=64, kv_dtype=None):
        _, _, self.health = u.load_stubs()
        cfg = json.load(open(os.path.join(model, "config.json")))
        layers = cfg["num_hidden_layers"]
        self.dir = tempfile.mkdtemp(prefix="mx-placed-")
        self.procs = []  # (name, Popen, address)
        n_rep = sum(s["replicas"] for s in shards)
        ports = free_ports(n_rep + stages + 1)
        self.shard_addrs = []
        k = 0
        for i, sh in enumerate(shards):
            addrs = []
            for r in range(sh["replicas"]):
                addr = "127.0.0.1:%d" % ports[k]
                k += 1
                self._write("expert-%d.%d.cfg" % (i, r),
                            'model_dir = "%s";\nlisten = "%s";\nthreads = %d;\nshard_index = %d;\nexperts = [%s];\n'
                            % (model, addr, threads, i, ", ".join(str(e) for e in sh["experts"])))
                addrs.append(addr)
            self.shard_addrs.append(addrs)
        block = "experts = {\n  shards = (\n%s\n  );\n};\n" % ",\n".join(
            '    { experts = [%s]; replicas = [%s]; }' % (", ".join(str(e) for e in sh["experts"]),
                                                         ", ".join('"%s"' % a for a in self.shard_addrs[i]))
            for i, sh in enumerate(shards))
        self.stages = ["127.0.0.1:%d" % ports[k + i] for i in range(stages)]
        for i in range(stages):
            text = ('stage = {\n  listen = "%s";\n  model = "%s";\n  index = %d;\n  count = %d;\n'
                    '  layer_begin = %d;\n  layer_end = %d;\n  max_sequences = %d;\n  threads = %d;\n'
                    % (self.stages[i], model, i, stages, i * layers // stages, (i + 1) * layers // stages,
                       max_batch * 2 + 16, threads))
            if i + 1 < stages:
                text += '  next = "%s";\n' % self.stages[i + 1]
            if kv_dtype:
                text += '  kv_dtype = "%s";\n' % kv_dtype
            self._write("stage-%d.cfg" % i, text + "};\n" + block)
        self.gateway = "127.0.0.1:%d" % ports[-1]
        self._write("gateway.cfg", 'gateway = {\n  listen = "%s";\n  model = "%s";\n  num_expert_shards = %d;\n'
                    '  max_batch_sequences = %d;\n  stages = [%s];\n};\n'
                    % (self.gateway, model, len(shards), max_batch, ", ".join('"%s"' % s for s in self.stages)))
        try:
            for i, addrs in enumerate(self.shard_addrs):
                for r, a in enumerate(addrs):
                    self._spawn("expert-svc", "expert-%d.%d" % (i, r), a)
            for i, a in enumerate(self.stages):
                self._spawn("attention-svc", "stage-%d" % i, a)
            self._spawn("gateway", "gateway", self.gateway)
            self._wait_serving(90)
        except Exception:
            self.stop()
            raise

    def _write(self, name, text):
        with open(os.path.join(self.dir, name), "w") as f:
            f.write(text)

    def _spawn(self, binary, name, addr):
        log = open(os.path.join(self.dir, name + ".log"), "w")
        p = subprocess.Popen([os.path.join(u.ROOT, u.BUILD, "bin", binary), "--config",
                              os.path.join(self.dir, name + ".cfg")], stdout=log, stderr=log)
        self.procs.append((name, p, addr))

    def _wait_serving(self, seconds):
        deadline = time.time() + seconds
        for name, p, addr in self.procs:
            while True:
                if p.poll() is not None:
                    raise RuntimeError("%s exited %s:\n%s" % (name, p.returncode, self.read_log(name)))
                try:
                    with grpc.insecure_channel(addr) as ch:
                        check = ch.unary_unary("/grpc.health.v1.Health/Check",
                                               request_serializer=self.health.HealthCheckRequest.SerializeToString,
                                               response_deserializer=self.health.HealthCheckResponse.FromString)
                        if check(self.health.HealthCheckRequest(service=""), timeout=1).status == 1:
                            break
                except grpc.RpcError:
                    pass
                if time.time() > deadline:
                    raise RuntimeError("%s at %s not SERVING after %d s" % (name, addr, seconds))
                time.sleep(0.1)
        # the gateway's own view of the stages ("can serve") follows its 500 ms watcher
        time.sleep(1.0)

    def read_log(self, name):
        try:
            return open(os.path.join(self.dir, name + ".log")).read()[-3000:]
        except OSError:
            return ""

    def expert_stats(self):
        shards = [a for addrs in self.shard_addrs for a in addrs]
        return expert_stats(self.stages, shards)

    def stop(self):
        """SIGTERM to each process (gateway first), SIGKILL after 20 s; returns the worst exit status."""
        worst = 0
        for name, p, _ in reversed(self.procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for name, p, _ in reversed(self.procs):
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
            worst = worst or (p.returncode or 0)
        self.procs = []
        shutil.rmtree(self.dir, True)
        return worst


def expert_stats(stages, shards=()):
    args = [u.MX, "expert-stats"]
    for s in stages:
        args += ["--stage", s]
    for s in shards:
        args += ["--shard", s]
    out = subprocess.run(args, capture_output=True, text=True, timeout=30)
    if out.returncode != 0:
        raise RuntimeError("mx expert-stats failed: %s" % out.stderr)
    return json.loads(out.stdout)


def plan_experts(stats, shards, replicas, max_per_shard=0, fmt="--json"):
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(stats, f)
        path = f.name
    try:
        args = [u.MX, "plan-experts", "--stats", path, "--shards", str(shards), "--replicas", str(replicas), fmt]
        if max_per_shard:
            args += ["--max-experts-per-shard", str(max_per_shard)]
        out = subprocess.run(args, capture_output=True, text=True, timeout=30)
        if out.returncode != 0:
            raise RuntimeError("mx plan-experts failed: %s" % out.stderr)
        return json.loads(out.stdout) if fmt == "--json" else out.stdout
    finally:
        os.unlink(path)
