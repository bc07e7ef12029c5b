"""metrics_cluster.py - Prometheus metrics of a real loopback cluster (`mx cluster`): every
service's GET /metrics passes `promtool check metrics` (Prometheus' own checker), and after a
known amount of traffic sent by an independent grpcio client the counters moved by exactly
what was sent and received: requests, prompt and generated tokens, rejections by code, the
histograms' counts (+Inf == _count, cumulative buckets), all of it under the gateway's
api="grpc" label and none under api="openai", tokens per stage step (prompt tokens
plus fed-back decode tokens), routed tokens (step tokens x layers x top-k), expert calls the
stages made == calls the shards served, per shard and replica, rows likewise."""
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

import grpc

sys.path.insert(0, os.path.dirname(__file__))
import cluster_util as u  # noqa: E402

gen, stage_pb, health_pb = u.load_stubs()
r = u.Results()
PROMTOOL = "/usr/bin/promtool"


class MetricsCluster(u.Cluster):
    """`mx cluster` (2 stages, 2 expert shards, replicas 2 and 1) with the metrics lines it
    prints: metrics {name: url}."""

    def __init__(self, model):
        super().__init__(model, stages=2, shards=2, replicas="2,1", start_timeout=120)
        self.metrics = self.metrics_urls


SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$')
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def scrape(url):
    with urllib.request.urlopen(url, timeout=10) as resp:
        return resp.status, resp.headers.get("Content-Type", ""), resp.read().decode()


def parse(text):
    """[(name, {label: value}, float)] of every sample line."""
    out = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = SAMPLE.match(line)
        if not m:
            raise ValueError("unparsable line %r" % line)
        out.append((m.group(1), dict(LABEL.findall(m.group(2) or "")), float(m.group(3))))
    return out


def total(samples, name, **labels):
    return sum(v for n, lb, v in samples if n == name and all(lb.get(k) == x for k, x in labels.items()))


def series(samples, name):
    return [(lb, v) for n, lb, v in samples if n == name]


def promtool_ok(text):
    p = subprocess.run([PROMTOOL, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30)
    return p.returncode == 0, (p.stdout + p.stderr).strip()


def histograms_consistent(samples, name):
    """Every series of histogram name: buckets cumulative (non-decreasing in le), +Inf equal to
    _count. Returns an error string or ''."""
    by_key = {}
    for lb, v in series(samples, name + "_bucket"):
        key = tuple(sorted((k, x) for k, x in lb.items() if k != "le"))
        by_key.setdefault(key, []).append((float("inf") if lb["le"] == "+Inf" else float(lb["le"]), v))
    counts = {tuple(sorted(lb.items())): v for lb, v in series(samples, name + "_count")}
    if not by_key:
        return "no buckets"
    for key, buckets in by_key.items():
        buckets.sort()
        if any(b[1] < a[1] for a, b in zip(buckets, buckets[1:])):
            return "%s%s: buckets not cumulative %s" % (name, key, buckets)
        if buckets[-1][0] != float("inf") or buckets[-1][1] != counts.get(key):
            return "%s%s: +Inf %s != _count %s" % (name, key, buckets[-1], counts.get(key))
    return ""


def request(prompt, n):
    req = gen.GenerateRequest(prompt_ids=prompt)
    req.sampling.max_new_tokens = n
    req.sampling.ignore_eos = True
    req.sampling.temperature = 0
    return req


def test_port_file(fixture, layers):
    """A lone stage (local experts) with metrics_listen port 0: the bound port is written to
    <port_file>.metrics, the endpoint serves (no router families without remote experts),
    a bad metrics_listen stops the start with the key named, SIGTERM exits 0."""
    binary = os.path.join(u.ROOT, u.BUILD, "bin", "attention-svc")
    with tempfile.TemporaryDirectory(prefix="mx-metrics-") as d:
        def start(metrics_listen):
            cfg = os.path.join(d, "stage.cfg")
            with open(cfg, "w") as f:
                f.write('stage = { listen = "127.0.0.1:0"; model = "%s"; index = 0; count = 1; layer_begin = 0;\n'
                        '  layer_end = %d; threads = 1; port_file = "%s/port"; metrics_listen = "%s"; };\n'
                        % (os.path.abspath(fixture), layers, d, metrics_listen))
            return subprocess.Popen([binary, "--config", cfg], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                    text=True)

        p = start("127.0.0.1:0")
        try:
            end = time.time() + 60
            while time.time() < end and not os.path.exists(os.path.join(d, "port")) and p.poll() is None:
                time.sleep(0.05)
            mport = open(os.path.join(d, "port.metrics")).read().strip()
            status, _, text = scrape("http://127.0.0.1:%s/metrics" % mport)
            ok, msg = promtool_ok(text)
            samples = parse(text)
            r.check(status == 200 and ok and total(samples, "mx_build_info", service="stage-0") == 1 and
                    total(samples, "mx_stage_live_sequences") == 0 and
                    not series(samples, "mx_stage_expert_calls_total"),
                    "port 0: <port_file>.metrics names the bound port; local experts: no router families", msg)
        finally:
            p.terminate()
            try:
                rc = p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
                rc = p.wait()
        r.check(rc == 0, "lone stage exits 0 on SIGTERM", str(rc))
        os.remove(os.path.join(d, "port"))
        p = start("nonsense")
        try:
            err = p.communicate(timeout=60)[1]
        except subprocess.TimeoutExpired:
            p.kill()
            err = p.communicate()[1]
        r.check(p.returncode == 1 and "metrics_listen" in err and "nonsense" in err,
                "a bad metrics_listen stops the start, naming it", "exit %s: %s" % (p.returncode, err[-500:]))


def main():
    fixture = sys.argv[1]
    cfg = json.load(open(os.path.join(fixture, "config.json")))
    layers, top_k = cfg["num_hidden_layers"], cfg["num_experts_per_tok"]
    cl = MetricsCluster(fixture)
    try:
        names = ["gateway", "stage-0", "stage-1", "expert-0.0", "expert-0.1", "expert-1.0"]
        r.check(sorted(cl.metrics) == sorted(names), "mx cluster prints a metrics line per service",
                repr(cl.metrics))
        before = {n: parse(scrape(cl.metrics[n])[2]) for n in names}

        # --- known traffic: 4 streamed + 2 unary, greedy, fixed lengths; one bad request ---
        prompts = [[1, 2, 3], [4, 5, 6, 7, 8], [9], [10, 11], [12, 13, 14, 15], [16, 17, 18, 19, 20, 21, 22]]
        M = 6
        received = [0] * len(prompts)
        errors = []
        with grpc.insecure_channel(cl.gateway) as ch:
            generate, complete, _ = u.generation_stubs(ch, gen)

            def one(i):
                try:
                    if i < 4:
                        received[i] = sum(len(m.token_ids) for m in generate(request(prompts[i], M), timeout=60))
                    else:
                        received[i] = len(complete(request(prompts[i], M), timeout=60).token_ids)
                except Exception as e:  # counted as a failure below
                    errors.append(repr(e))

            threads = [threading.Thread(target=one, args=(i,)) for i in range(len(prompts))]
            for t in threads:
                t.start()
            for t in threads:
                t.join(90)
            bad = request([1], 4)
            bad.sampling.top_p = float("nan")
            try:
                complete(bad, timeout=10)
                errors.append("NaN top_p was accepted")
            except grpc.RpcError as e:
                if e.code() != grpc.StatusCode.INVALID_ARGUMENT:
                    errors.append("NaN top_p: %s" % e.code())
        r.check(not errors and received == [M] * len(prompts), "traffic: %d requests of %d tokens" % (len(prompts), M),
                "%s %s" % (errors, received))
        N, P, G = len(prompts), sum(len(p) for p in prompts), sum(received)

        # the stages release the sequences right after the last token: wait for the gauges
        after = {}
        end = time.time() + 10
        while time.time() < end:
            after = {n: parse(scrape(cl.metrics[n])[2]) for n in names}
            if all(total(after[s], "mx_stage_live_sequences") == 0 for s in ("stage-0", "stage-1")) and \
                    total(after["gateway"], "mx_gateway_running_sequences") == 0:
                break
            time.sleep(0.1)

        # --- format: promtool, content type, 404 ---
        for n in names:
            status, ctype, text = scrape(cl.metrics[n])
            ok, msg = promtool_ok(text)
            r.check(status == 200 and ctype.startswith("text/plain; version=0.0.4") and ok,
                    "%s: GET /metrics passes promtool check metrics" % n, "%s %s %s" % (status, ctype, msg))
            r.check(total(parse(text), "mx_build_info", service=n.split(".")[0] if n.startswith("expert") else n) == 1
                    and total(parse(text), "process_resident_memory_bytes") > 1 << 20
                    and total(parse(text), "process_start_time_seconds") > time.time() - 600,
                    "%s: build info, start time, resident memory" % n)
        try:
            urllib.request.urlopen(cl.metrics["gateway"].replace("/metrics", "/other"), timeout=10)
            r.check(False, "GET /other is 404", "answered 200")
        except urllib.error.HTTPError as e:
            r.check(e.code == 404, "GET /other is 404", str(e.code))

        def delta(svc, name, **labels):
            return total(after[svc], name, **labels) - total(before[svc], name, **labels)

        # --- gateway ---
        g = "gateway"
        r.check(delta(g, "mx_gateway_requests_total") == N and
                delta(g, "mx_gateway_requests_total", api="grpc", outcome="ok", finish_reason="length") == N,
                "gateway: requests_total{grpc,ok,length} == %d" % N, str(series(after[g], "mx_gateway_requests_total")))
        r.check(delta(g, "mx_gateway_rejected_total", api="grpc", code="INVALID_ARGUMENT") == 1 and
                delta(g, "mx_gateway_rejected_total") == 1, "gateway: one rejection, grpc INVALID_ARGUMENT",
                str(series(after[g], "mx_gateway_rejected_total")))
        r.check(delta(g, "mx_gateway_prompt_tokens_total") == P and
                delta(g, "mx_gateway_prompt_tokens_total", api="grpc") == P, "gateway: prompt tokens == %d sent" % P,
                str(series(after[g], "mx_gateway_prompt_tokens_total")))
        r.check(delta(g, "mx_gateway_generated_tokens_total") == G and
                delta(g, "mx_gateway_generated_tokens_total", api="grpc") == G,
                "gateway: generated tokens == %d received" % G, str(series(after[g], "mx_gateway_generated_tokens_total")))
        for h, want in (("mx_gateway_request_duration_seconds", N), ("mx_gateway_time_to_first_token_seconds", N),
                        ("mx_gateway_queue_time_seconds", N), ("mx_gateway_inter_token_seconds", N * (M - 1))):
            err = histograms_consistent(after[g], h)
            r.check(not err and delta(g, h + "_count") == want and delta(g, h + "_count", api="grpc") == want,
                    "gateway: %s{api=grpc} count == %d, buckets consistent" % (h, want),
                    err or str(series(after[g], h + "_count")))
        # the HTTP API's series exist from the start (zeros before any HTTP traffic) and stayed there
        r.check({lb.get("api") for lb, _ in series(after[g], "mx_gateway_time_to_first_token_seconds_count")} ==
                {"grpc", "openai"} and
                all(delta(g, name, api="openai") == 0 for name in (
                    "mx_gateway_requests_total", "mx_gateway_rejected_total", "mx_gateway_prompt_tokens_total",
                    "mx_gateway_generated_tokens_total", "mx_gateway_request_duration_seconds_count")),
                "gateway: api=openai series present, unmoved by gRPC traffic")
        r.check(total(after[g], "mx_gateway_running_sequences") == 0 and total(after[g], "mx_gateway_queued_requests") == 0,
                "gateway: nothing running or queued after the traffic")
        ttft_sum = delta(g, "mx_gateway_time_to_first_token_seconds_sum")
        e2e_sum = delta(g, "mx_gateway_request_duration_seconds_sum")
        r.check(0 < ttft_sum <= e2e_sum, "gateway: time to first token <= end to end (sums)",
                "%s %s" % (ttft_sum, e2e_sum))

        # --- stages: step tokens == prompt tokens + fed-back decode tokens; routed tokens ---
        stage_calls = {}
        routed_all = 0
        for i, s in enumerate(("stage-0", "stage-1")):
            l0, l1 = i * layers // 2, (i + 1) * layers // 2
            fed = P + N * (M - 1)
            r.check(delta(s, "mx_stage_step_tokens_sum") == fed, "%s: step tokens == %d (prompts + decodes)" % (s, fed),
                    str(delta(s, "mx_stage_step_tokens_sum")))
            batches = delta(s, "mx_stage_batches_total", outcome="ok")
            r.check(batches > 0 and delta(s, "mx_stage_step_tokens_count") == batches and
                    delta(s, "mx_stage_step_seconds_count", outcome="ok") == batches and
                    not histograms_consistent(after[s], "mx_stage_step_seconds") and
                    not histograms_consistent(after[s], "mx_stage_step_tokens"),
                    "%s: %d batches, one step-time and one step-tokens sample each" % (s, batches))
            routed = delta(s, "mx_stage_routed_tokens_total")
            layers_seen = {lb["layer"] for lb, _ in series(after[s], "mx_stage_routed_tokens_total")}
            r.check(routed == fed * (l1 - l0) * top_k and layers_seen == {str(x) for x in range(l0, l1)},
                    "%s: routed tokens == %d tokens x %d layers x top-%d" % (s, fed, l1 - l0, top_k),
                    "%s %s" % (routed, sorted(layers_seen)))
            routed_all += routed
            r.check(total(after[s], "mx_stage_live_sequences") == 0 and total(after[s], "mx_stage_kv_used_bytes") == 0
                    and total(after[s], "mx_stage_kv_budget_bytes") > 0,
                    "%s: no live sequence, no KV bytes used after release; a KV budget" % s)
            r.check(delta(s, "mx_stage_expert_retries_total") == 0, "%s: no expert retries" % s)
            for lb, v in series(after[s], "mx_stage_expert_calls_total"):
                key = "expert-%s.%s" % (lb["shard"], lb["replica"])
                stage_calls[key] = stage_calls.get(key, 0) + v - total(before[s], "mx_stage_expert_calls_total", **lb)
            calls = delta(s, "mx_stage_expert_calls_total")
            r.check(calls > 0 and delta(s, "mx_stage_expert_call_seconds_count") == calls and
                    not histograms_consistent(after[s], "mx_stage_expert_call_seconds"),
                    "%s: %d expert calls, each answered one latency sample" % (s, calls))

        # --- shards: calls and rows served == what the stages sent ---
        for e in ("expert-0.0", "expert-0.1", "expert-1.0"):
            served = delta(e, "mx_expert_calls_total")
            r.check(served == stage_calls.get(e) and delta(e, "mx_expert_calls_total", outcome="error") == 0,
                    "%s: calls served == calls the stages sent it (%s)" % (e, stage_calls.get(e)), str(served))
            r.check(total(after[e], "mx_expert_calls_in_flight") == 0 and total(after[e], "mx_expert_rows_in_flight") == 0
                    and delta(e, "mx_expert_compute_seconds_count") == served
                    and delta(e, "mx_expert_queue_seconds_count") == served
                    and not histograms_consistent(after[e], "mx_expert_compute_seconds"),
                    "%s: nothing in flight; one compute and one queue sample per call" % e)
        rows = sum(delta(e, "mx_expert_rows_total") for e in ("expert-0.0", "expert-0.1", "expert-1.0"))
        r.check(rows == routed_all, "shards: rows served == routed tokens of both stages (%d)" % routed_all, str(rows))
    finally:
        status = cl.stop()
        r.check(status == 0, "cluster stops cleanly", "exit %s\n%s" % (status, cl.read_log()[-3000:]))
    try:
        test_port_file(fixture, layers)
    except Exception as e:  # a crash here is a failure, not a lost count
        r.check(False, "lone stage with metrics_listen port 0", repr(e))
    r.finish()


if __name__ == "__main__":
    main()
