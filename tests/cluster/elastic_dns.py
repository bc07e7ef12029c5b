"""elastic_dns.py FIXTURE_DIR - an expert shard found through DNS and scaled 1 -> 3 -> 1 under
load. Debian's dnsmasq (unprivileged, on a loopback port) serves shard 0's name from a hosts
file; shard 0's replicas listen on 127.0.0.2, 127.0.0.3 and 127.0.0.4 (same port), shard 1 is
a static address. Two attention stages (their config names shard 0 as
"dns://127.0.0.1:PORT/shard0.mx.test:PORT") and a gateway are started here, all by hand, and
stopped by pid. An independent Python grpcio client runs 16 streams of greedy requests whose
tokens must equal the fixture's (a third Health/Watch on a replica, beyond the stages' two, is
refused: at most half of its 4 workers serve Watches), while:
- two replicas are started, then added to DNS (SIGHUP re-reads the hosts file): within 10 s of
  that each serves at least 20 % of shard 0's calls, by the replicas' own counters
  (ExpertShard/Info calls_total);
- one of them gets SIGTERM while still in DNS (as a deleted pod does): its health turns
  NOT_SERVING, the routers, told through Health/Watch, send it nothing more, its calls in
  flight finish and it exits 0 - and no call had to be retried elsewhere (the stages' own
  mx_stage_expert_retries_total, scraped from their metrics endpoints, does not move);
- the other is removed from DNS: it stops getting calls (drained), then exits 0 on SIGTERM;
- a replica on [::1] joins through an AAAA record of the same name, gets calls, and leaves;
- no request fails throughout.
Prints 'N passed, N failed' last."""
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

import grpc

sys.path.insert(0, os.path.dirname(__file__))
import cluster_util as u
import fault_experts as fe  # its Load: 16 streams checked against the fixture

r = u.Results()
ASAN = os.environ.get("MX_ASAN") == "1"
DNSMASQ = "/usr/sbin/dnsmasq"
NAME = "shard0.mx.test"
NEW = ("127.0.0.3", "127.0.0.4")


def expert_info_stub():
    """ExpertShard/Info as a callable returning the response (stubs generated here)."""
    out = tempfile.mkdtemp(prefix="mx-pb-es-")
    subprocess.run(["protoc", "-I" + os.path.join(u.ROOT, "proto"), "--python_out=" + out,
                    "mx/internal/v1/expert_shard.proto"], check=True)
    sys.path.insert(0, out)
    import mx.internal.v1.expert_shard_pb2 as es
    return es


def free_port(hosts):
    """A TCP port free on every host given (tried at random, bounded)."""
    for _ in range(200):
        port = random.randint(20000, 60000)
        socks = []
        try:
            for h in hosts:
                s = socket.socket(socket.AF_INET6 if ":" in h else socket.AF_INET)
                socks.append(s)
                s.bind((h, port))
            return port
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no free port on %s" % (hosts,))


def free_udp_port():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Procs:
    """Children started here, each with its log file; stopped by pid."""

    def __init__(self, tmp):
        self.tmp, self.p = tmp, {}

    def start(self, name, argv):
        log = open(os.path.join(self.tmp, name + ".log"), "w")
        self.p[name] = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        return self.p[name]

    def stop(self, name, sig=signal.SIGTERM, timeout=20):
        """Signals name and waits (bounded); returns the exit status (None: killed after the wait)."""
        p = self.p.get(name)
        if p is None:
            return None
        if p.poll() is None:
            p.send_signal(sig)
            try:
                p.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
                return None
        return p.returncode

    def log(self, name, tail=2000):
        try:
            with open(os.path.join(self.tmp, name + ".log")) as f:
                return f.read()[-tail:]
        except OSError:
            return ""

    def stop_all(self):
        """SIGTERM to every child still running, newest first; {name: exit status}."""
        return {name: self.stop(name, timeout=15) for name in reversed(list(self.p))}


def serving(addr, service="", timeout=1.0):
    return fe.serving(addr, service, timeout)


def main():
    fixture = sys.argv[1]
    es = expert_info_stub()
    cfg = json.load(open(os.path.join(fixture, "config.json")))
    L, E = cfg["num_hidden_layers"], cfg["num_local_experts"]
    exp = u.read_safetensors(os.path.join(fixture, "expected.safetensors"))
    names = [c["name"] for c in json.load(open(os.path.join(fixture, "cases.json")))["cases"]]
    cases = [(exp[n + ".prompt_ids"][2], exp[n + ".greedy_ids"][2]) for n in names if n in ("p5_s12", "p37_s12")]
    model = os.path.abspath(fixture)
    bindir = os.path.join(u.ROOT, u.BUILD, "bin")
    tmp = tempfile.mkdtemp(prefix="mx-elastic-")
    procs = Procs(tmp)
    hosts_file = os.path.join(tmp, "hosts")
    p0 = free_port(["127.0.0.2", "127.0.0.3", "127.0.0.4", "::1"])
    p1, ps0, ps1, pg, pm0, pm1 = (free_port(["127.0.0.1"]) for _ in range(6))
    metrics_ports = {0: pm0, 1: pm1}
    dns_port = free_udp_port()
    half = E // 2

    def write_hosts(ips):
        with open(hosts_file + ".new", "w") as f:
            for ip in ips:
                f.write("%s %s\n" % (ip, NAME))
        os.replace(hosts_file + ".new", hosts_file)

    def expert(name, ip, port, shard):
        path = os.path.join(tmp, name + ".cfg")
        experts = list(range(0, half)) if shard == 0 else list(range(half, E))
        host = "[%s]" % ip if ":" in ip else ip
        with open(path, "w") as f:
            f.write('model_dir = "%s";\nlisten = "%s:%d";\nthreads = 1;\nshard_index = %d;\nexperts = %s;\n'
                    'drain_ms = 8000;\n' % (model, host, port, shard, json.dumps(experts)))
        procs.start(name, [os.path.join(bindir, "expert-svc"), "--config", path])
        return "%s:%d" % (host, port)

    def stage(i, port, nxt):
        path = os.path.join(tmp, "stage%d.cfg" % i)
        with open(path, "w") as f:
            f.write('stage = {\n  listen = "127.0.0.1:%d";\n  model = "%s";\n  index = %d;\n  count = 2;\n'
                    '  layer_begin = %d;\n  layer_end = %d;\n  max_sequences = 64;\n  threads = 1;\n'
                    '  metrics_listen = "127.0.0.1:%d";\n%s};\n'
                    % (port, model, i, i * L // 2, (i + 1) * L // 2, metrics_ports[i],
                       '  next = "127.0.0.1:%d";\n' % nxt if nxt else ""))
            f.write('experts = {\n  resolve_interval_ms = 1000;\n  shards = (\n'
                    '    { experts = %s; replicas = ["dns://127.0.0.1:%d/%s:%d"]; },\n'
                    '    { experts = %s; replicas = ["127.0.0.1:%d"]; }\n  );\n};\n'
                    % (json.dumps(list(range(0, half))), dns_port, NAME, p0, json.dumps(list(range(half, E))), p1))
        procs.start("stage%d" % i, [os.path.join(bindir, "attention-svc"), "--config", path])
        return "127.0.0.1:%d" % port

    def info_calls(addr):
        try:
            with grpc.insecure_channel(addr) as ch:
                call = ch.unary_unary("/mx.internal.v1.ExpertShard/Info",
                                      request_serializer=es.ShardInfoRequest.SerializeToString,
                                      response_deserializer=es.ShardInfoResponse.FromString)
                return call(es.ShardInfoRequest(), timeout=2).calls_total
        except grpc.RpcError:
            return None

    def retries():
        """Sum of both stages' mx_stage_expert_retries_total (None when a scrape failed)."""
        total = 0.0
        for port in metrics_ports.values():
            try:
                with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=5) as f:
                    text = f.read().decode()
            except OSError:
                return None
            series = [line for line in text.splitlines() if line.startswith("mx_stage_expert_retries_total")]
            if not series:  # the metric must be there (a series per replica called), not read as 0
                return None
            total += sum(float(line.rsplit(" ", 1)[1]) for line in series)
        return total

    load = None
    try:
        write_hosts(["127.0.0.2"])
        procs.start("dnsmasq", [DNSMASQ, "--no-daemon", "--port=%d" % dns_port, "--listen-address=127.0.0.1",
                                "--bind-interfaces", "--no-resolv", "--no-hosts", "--addn-hosts=" + hosts_file,
                                "--local=/mx.test/", "--pid-file=", "--user=", "--log-facility=-"])
        a = expert("expert0a", "127.0.0.2", p0, 0)
        s1 = expert("expert1", "127.0.0.1", p1, 1)
        st1 = stage(1, ps1, None)
        st0 = stage(0, ps0, ps1)
        up = fe.wait_until(lambda: all(serving(x, svc) for x, svc in
                                       ((a, "mx.internal.v1.ExpertShard"), (s1, "mx.internal.v1.ExpertShard"),
                                        (st0, "mx.internal.v1.AttentionStage"),
                                        (st1, "mx.internal.v1.AttentionStage"))), 120)
        r.check(up, "experts up, both stages SERVING with shard 0 found through DNS",
                "\n".join(procs.log(n, 600) for n in ("expert0a", "expert1", "stage0", "stage1", "dnsmasq")))
        if not up:
            return
        gpath = os.path.join(tmp, "gateway.cfg")
        with open(gpath, "w") as f:
            f.write('gateway = {\n  listen = "127.0.0.1:%d";\n  model = "%s";\n  num_expert_shards = 2;\n'
                    '  max_batch_sequences = 64;\n  pipeline_depth = 2;\n  stages = ["%s", "%s"];\n};\n'
                    % (pg, model, st0, st1))
        procs.start("gateway", [os.path.join(bindir, "gateway"), "--config", gpath])
        gw = "127.0.0.1:%d" % pg
        if not r.check(fe.wait_until(lambda: serving(gw), 60), "gateway SERVING", procs.log("gateway")):
            return
        # both stages hold a Health/Watch on the replica; with expert-svc's 4 workers that is the
        # most it serves (half), so a third is refused and Check still answers. A stage opens its
        # watch after it is SERVING, and one refused because this probe held the slot at that
        # moment waits 10 s (the router's WATCH_REFUSED_MS) before asking again, so this asks
        # until refused, seldom (every 2 s: each ask holds a slot briefly and could refuse a
        # stage again), bounded: 20 tries over at most 30 s (60 s under ASan).
        code, t_end = None, time.time() + (60 if ASAN else 30)
        for _ in range(20):
            try:
                with grpc.insecure_channel(a) as ch:
                    watch = ch.unary_stream("/grpc.health.v1.Health/Watch",
                                            request_serializer=fe.health_pb.HealthCheckRequest.SerializeToString,
                                            response_deserializer=fe.health_pb.HealthCheckResponse.FromString)
                    first = next(watch(fe.health_pb.HealthCheckRequest(service="mx.internal.v1.ExpertShard"),
                                       timeout=5))
                    code = "answered %s" % first.status
            except grpc.RpcError as e:
                code = e.code()
            if code == grpc.StatusCode.RESOURCE_EXHAUSTED or time.time() > t_end:
                break
            time.sleep(2.0)
        r.check(code == grpc.StatusCode.RESOURCE_EXHAUSTED and serving(a, "mx.internal.v1.ExpertShard"),
                "a third Health/Watch on a 4-worker replica is refused (the stages hold two); Check answers",
                "%s" % code)
        load = fe.Load(gw, cases)
        load.start()
        r.check(fe.wait_until(lambda: load.counts()[0] >= 4, 60), "requests complete with one replica")

        # scale up: two replicas start, become SERVING, then appear in DNS
        b = expert("expert0b", NEW[0], p0, 0)
        c = expert("expert0c", NEW[1], p0, 0)
        r.check(fe.wait_until(lambda: serving(b, "mx.internal.v1.ExpertShard") and
                              serving(c, "mx.internal.v1.ExpertShard"), 60), "new replicas SERVING")
        before = {x: info_calls(x) for x in (a, b, c)}
        write_hosts(["127.0.0.2"] + list(NEW))
        os.kill(procs.p["dnsmasq"].pid, signal.SIGHUP)
        t_add = time.time()
        first = {}
        while time.time() < t_add + 10:
            for x in (b, c):
                if x not in first and (info_calls(x) or 0) > before[x]:
                    first[x] = time.time() - t_add
            time.sleep(0.2)
        after = {x: info_calls(x) for x in (a, b, c)}
        d = {x: (after[x] or 0) - (before[x] or 0) for x in (a, b, c)}
        total = max(sum(d.values()), 1)
        print("scale up: first call %s s after the DNS change; shares over 10 s: %s (%d calls)" %
              ({x: "%.2f" % t for x, t in first.items()}, {x: "%.0f %%" % (100.0 * v / total) for x, v in d.items()},
               total))
        for x in (b, c):
            r.check(d[x] >= 0.2 * total, "new replica %s serves >= 20 %% of shard 0's calls within 10 s" % x,
                    "%d of %d" % (d[x], total))

        # a replica still in DNS gets SIGTERM: drained through Health/Watch, not by retries
        ok0 = load.counts()[0]
        calls_c, rt0 = info_calls(c), retries()
        t0 = time.time()
        status = procs.stop("expert0c", timeout=15)
        took = time.time() - t0
        time.sleep(1.0)
        rt1 = retries()
        print("sigterm in DNS: exit %s after %.2f s (%s calls served before), retries %s -> %s" %
              (status, took, calls_c, rt0, rt1))
        r.check(status == 0 and took < 5.0, "SIGTERM of a replica in DNS: it exits 0 once its calls are done, "
                "before its 8 s drain period", "status %s after %.2f s\n%s" % (status, took, procs.log("expert0c", 600)))
        if ASAN:  # ten times slower: a call may beat the NOT_SERVING news to the replica's door
            r.check(rt0 is not None and rt1 is not None, "stages' retry counters scraped")
        else:
            r.check(rt0 is not None and rt1 == rt0, "SIGTERM of a replica in DNS: no call had to be retried elsewhere",
                    "retries %s -> %s" % (rt0, rt1))

        # scale down: both leave DNS, the live one drains (no new calls), then stops on SIGTERM
        write_hosts(["127.0.0.2"])
        os.kill(procs.p["dnsmasq"].pid, signal.SIGHUP)
        t_rm = time.time()
        last, stable_since, drained_at = None, None, None
        while time.time() < t_rm + 20 and drained_at is None:
            now_calls = info_calls(b)
            if now_calls != last:
                last, stable_since = now_calls, time.time()
            elif time.time() - stable_since >= 2.0:
                drained_at = stable_since - t_rm
            time.sleep(0.2)
        a_before = info_calls(a)
        r.check(drained_at is not None, "a replica removed from DNS gets no more calls (drained)",
                "calls still growing 20 s after the DNS change")
        if drained_at is not None:
            print("scale down: last call to the removed replica %.2f s after the DNS change" % drained_at)
        for name in ("expert0b",):
            t0 = time.time()
            status = procs.stop(name, timeout=15)
            r.check(status == 0, "%s exits 0 on SIGTERM after its drain" % name,
                    "status %s after %.1f s\n%s" % (status, time.time() - t0, procs.log(name, 600)))
        r.check(fe.wait_until(lambda: load.counts()[0] > ok0 + 4, 60), "requests complete after the scale-down")
        r.check((info_calls(a) or 0) > (a_before or 0), "the remaining replica serves shard 0")

        # an AAAA record: a replica on [::1] joins through the same name, and leaves again
        v6 = expert("expert0v6", "::1", p0, 0)
        if r.check(fe.wait_until(lambda: serving(v6, "mx.internal.v1.ExpertShard"), 60), "replica on [::1] SERVING",
                   procs.log("expert0v6")):
            write_hosts(["127.0.0.2", "::1"])
            os.kill(procs.p["dnsmasq"].pid, signal.SIGHUP)
            t6 = time.time()
            got = fe.wait_until(lambda: (info_calls(v6) or 0) > 0, 15)
            r.check(got, "a replica found through an AAAA record ([::1]) gets calls",
                    "none 15 s after the DNS change")
            if got:
                print("aaaa: first call %.2f s after the DNS change" % (time.time() - t6))
            write_hosts(["127.0.0.2"])
            os.kill(procs.p["dnsmasq"].pid, signal.SIGHUP)
            status = procs.stop("expert0v6", timeout=15)
            r.check(status == 0, "the [::1] replica exits 0 on SIGTERM", "status %s" % status)
        load.finish()
        ok, failed, wrong, errs = load.counts()
        print("load: %d requests ok, %d failed, %d wrong tokens" % (ok, failed, wrong))
        r.check(failed == 0 and wrong == 0 and ok > 0, "no request failed, fixture tokens throughout",
                "%d ok, %d failed, %d wrong: %s" % (ok, failed, wrong, errs))
    except Exception as e:  # a crash in the test is a failure; the processes still stop
        r.check(False, "test run", repr(e))
    finally:
        if load is not None:
            load.stop.set()
        status = procs.stop_all()
    bad = {n: st for n, st in status.items() if n != "dnsmasq" and st != 0}
    r.check(not bad, "every service drains and exits 0 on SIGTERM at the end",
            "; ".join("%s: %s\n%s" % (n, st, procs.log(n, 800)) for n, st in bad.items()))
    if r.failed == 0:
        shutil.rmtree(tmp, True)
    else:
        print("logs kept in %s" % tmp)
    r.finish()


if __name__ == "__main__":
    main()
