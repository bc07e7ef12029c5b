"""openai_api.py - the gateway's OpenAI-compatible HTTP API on a real loopback `mx cluster`
(golden fixture `tiny` with the tokenizer `mx make-model` writes for its vocabulary): computes
the expectations (the fixture's greedy tokens, the gRPC API's Complete answers for the same
requests through the grpcio client of tests/cluster), runs client_checks.mjs with the official
openai npm client against them, and checks through AttentionStage/Info that a client that
disconnects mid-stream or times out frees its sequence on every stage. Around a window of known
client traffic it scrapes the gateway's /metrics: the api="openai" series moved by exactly what
the responses reported (requests, tokens, rejections by HTTP status, histogram counts), the
api="grpc" ones not at all. The gateway's log holds one access line per HTTP call the client
made, with its method and path, the status the client got and, for a generation, its tokens.
Usage: openai_api.py FIXTURE_DIR NODE_MODULES_DIR. Prints 'N passed, N failed'."""
import collections
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request

import http.client
import urllib.parse

import grpc

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "cluster"))
import cluster_util as u

gen, stage_pb, _health = u.load_stubs()
r = u.Results()
MODEL = "MiniMax-Text-01"  # the gateway's default model_name
KV_BYTES = "4M"            # 256 B of KV per token per stage on tiny: ~16K tokens fit
LONG_TOKENS = 4000         # a request still running when the client goes away


def make_model(fixture, work):
    """The fixture's weights (linked) with a tokenizer.json + tokenizer_config.json sized to its
    vocabulary, taken from a `mx make-model --preset tiny` of the same vocabulary."""
    gen_dir, model = os.path.join(work, "gen"), os.path.join(work, "model")
    subprocess.run([u.MX, "make-model", "--preset", "tiny", "--out", gen_dir], check=True, stdout=subprocess.DEVNULL)
    if json.load(open(os.path.join(gen_dir, "config.json")))["vocab_size"] != \
            json.load(open(os.path.join(fixture, "config.json")))["vocab_size"]:
        raise RuntimeError("mx make-model --preset tiny no longer has the fixture's vocabulary size")
    os.makedirs(model)
    for f in os.listdir(fixture):
        os.symlink(os.path.abspath(os.path.join(fixture, f)), os.path.join(model, f))
    for f in ("tokenizer.json", "tokenizer_config.json"):
        if os.path.exists(os.path.join(gen_dir, f)):
            shutil.copy(os.path.join(gen_dir, f), model)
    return model


class Cluster(u.Cluster):
    """`mx cluster` (tests/cluster/cluster_util.py) of 2 stages and 2 expert shards with
    KV_BYTES of KV each; metrics is the gateway's metrics URL. With a workdir the processes'
    logs stay there (gateway.log)."""

    def __init__(self, model, workdir=None):
        super().__init__(model, stages=2, shards=2, replicas="1,1", start_timeout=120,
                         extra=["--kv-cache-bytes", KV_BYTES] + (["--workdir", workdir] if workdir else []))
        self.metrics = self.metrics_urls.get("gateway")


def stage_live(addr):
    with grpc.insecure_channel(addr) as ch:
        info = ch.unary_unary("/mx.internal.v1.AttentionStage/Info",
                              request_serializer=stage_pb.StageInfoRequest.SerializeToString,
                              response_deserializer=stage_pb.StageInfoResponse.FromString)
        return info(stage_pb.StageInfoRequest(), timeout=5).live_sequences


def wait_live(cl, want, seconds=10):
    """Polls every stage's live sequence count until it is `want` everywhere (bounded)."""
    deadline = time.time() + seconds
    while True:
        live = [stage_live(a) for a in cl.stages]
        if all(n == want for n in live) or time.time() > deadline:
            return live
        time.sleep(0.05)


def grpc_complete(complete, req, n):
    req.sampling.max_new_tokens = n
    req.sampling.ignore_eos = True
    req.logprobs.enabled = True
    out = complete(req, timeout=60)
    return out


def expectations(cl, fixture, base_url):
    exp = u.read_safetensors(os.path.join(fixture, "expected.safetensors"))
    prompt = exp["p5_s12.prompt_ids"][2]
    steps = 12
    greedy_ids = exp["p5_s12.greedy_ids"][2][:steps]  # rows 0..steps-1: the tokens a greedy run emits
    with grpc.insecure_channel(cl.gateway) as ch:
        _generate, complete, _info = u.generation_stubs(ch, gen)
        fx = grpc_complete(complete, gen.GenerateRequest(prompt_ids=prompt), steps)
        r.check(list(fx.token_ids) == greedy_ids, "gRPC Complete reproduces the fixture's greedy tokens",
                "%s vs %s" % (list(fx.token_ids), greedy_ids))
        text_prompt = "Hello, world! The quick brown fox"
        t = grpc_complete(complete, gen.GenerateRequest(prompt=text_prompt), 40)
        text = t.text
        # a stop string inside the answer, after its first few characters
        stop = None
        for k in range(4, max(4, len(text) - 3)):
            cand = text[k:k + 3]
            if "\ufffd" not in cand and cand.strip() and text.find(cand) == k:
                stop = cand
                break
        if stop is None:
            raise RuntimeError("no usable stop string in %r" % text)
        sreq = gen.GenerateRequest(prompt=text_prompt)
        sreq.sampling.stop.append(stop)
        s = grpc_complete(complete, sreq, 40)
        r.check(s.text == text[:text.find(stop)] and s.finish_reason == gen.FINISH_REASON_STOP,
                "gRPC: the stop string cuts the text where it first occurs")
        msgs = [{"role": "system", "content": "You are a helpful assistant."},
                {"role": "user", "content": "What is the weather like in Shanghai?"}]
        creq = gen.GenerateRequest(add_generation_prompt=True,
                                   messages=[gen.ChatMessage(role=m["role"], text=m["content"]) for m in msgs])
        c = grpc_complete(complete, creq, 24)
        # tools go to the chat template as they do through tools_json; content as text parts
        tools = [{"type": "function", "function": {"name": "get_weather", "description": "Get the weather",
                                                   "parameters": {"type": "object", "properties": {
                                                       "location": {"type": "string"}}}}}]
        treq = gen.GenerateRequest(add_generation_prompt=True, tools_json=json.dumps(tools))
        tm = treq.messages.add(role="user")
        tm.parts.parts.add(type="text", text="Weather in Beijing?")
        tc = grpc_complete(complete, treq, 16)
        # sampling fields: the same seeded, filtered sampling through both APIs
        sampled = gen.GenerateRequest(prompt=text_prompt)
        sp = sampled.sampling
        sp.temperature, sp.top_p, sp.top_k, sp.min_p, sp.repetition_penalty, sp.seed = 0.9, 0.95, 40, 0.01, 1.1, 7
        sp.stop_token_ids.append(t.token_ids[5])
        sm = grpc_complete(complete, sampled, 30)
    return {
        "base_url": base_url, "model": MODEL,
        "fixture": {"prompt_ids": prompt, "greedy_ids": greedy_ids},
        "text": {"prompt": text_prompt, "ids": list(t.token_ids), "text": text,
                 "prompt_tokens": t.usage.prompt_tokens, "logprobs": [p.chosen.logprob for p in t.logprobs]},
        "stop": {"stop": stop, "text": s.text, "completion_tokens": s.usage.completion_tokens},
        "chat": {"messages": msgs, "ids": list(c.token_ids), "text": c.text, "prompt_tokens": c.usage.prompt_tokens},
        "sampled": {"params": {"temperature": 0.9, "top_p": 0.95, "top_k": 40, "min_p": 0.01,
                               "repetition_penalty": 1.1, "seed": 7, "stop_token_ids": [t.token_ids[5]]},
                    "ids": list(sm.token_ids), "text": sm.text},
        "tools": {"tools": tools, "messages": [{"role": "user", "content": [{"type": "text",
                                                                          "text": "Weather in Beijing?"}]}],
                  "text": tc.text, "prompt_tokens": tc.usage.prompt_tokens},
        "too_long": 20000, "max_body": 32 * 1024 * 1024, "long_tokens": LONG_TOKENS,
    }


SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$')
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def scrape(url):
    """[(name, {label: value}, float)] of every sample of a GET /metrics."""
    with urllib.request.urlopen(url, timeout=10) as resp:
        text = resp.read().decode()
    out = []
    for line in text.splitlines():
        m = SAMPLE.match(line) if line and not line.startswith("#") else None
        if m:
            out.append((m.group(1), dict(LABEL.findall(m.group(2) or "")), float(m.group(3))))
    return out


def total(samples, name, **labels):
    return sum(v for n, lb, v in samples if n == name and all(lb.get(k) == x for k, x in labels.items()))


def check_metrics(before, after, window):
    """The gateway's metrics moved by exactly the window's traffic, all of it under api="openai"."""
    def delta(name, **labels):
        return total(after, name, **labels) - total(before, name, **labels)

    reqs = window["requests"]
    n, prompt = len(reqs), sum(q["prompt_tokens"] for q in reqs)
    generated = sum(q["completion_tokens"] for q in reqs)
    gaps = sum(q["completion_tokens"] - 1 for q in reqs)
    r.check(delta("mx_gateway_requests_total", api="openai") == n and
            delta("mx_gateway_requests_total", api="openai", outcome="ok", finish_reason="length") == n,
            "metrics: requests_total{api=openai,ok,length} moved by the %d HTTP generations" % n,
            str(delta("mx_gateway_requests_total", api="openai")))
    r.check(delta("mx_gateway_prompt_tokens_total", api="openai") == prompt and
            delta("mx_gateway_generated_tokens_total", api="openai") == generated,
            "metrics: prompt / generated tokens{api=openai} == the responses' usage (%d / %d)" % (prompt, generated),
            "%s / %s" % (delta("mx_gateway_prompt_tokens_total", api="openai"),
                         delta("mx_gateway_generated_tokens_total", api="openai")))
    want = {code: k for code, k in window["rejected"].items()}
    got = {code: delta("mx_gateway_rejected_total", api="openai", code=code) for code in want}
    r.check(got == want and delta("mx_gateway_rejected_total", api="openai") == sum(want.values()),
            "metrics: rejected_total{api=openai} by HTTP status == %s" % want,
            "%s, all: %s" % (got, delta("mx_gateway_rejected_total", api="openai")))
    for h, k in (("mx_gateway_request_duration_seconds", n), ("mx_gateway_time_to_first_token_seconds", n),
                 ("mx_gateway_queue_time_seconds", n), ("mx_gateway_inter_token_seconds", gaps)):
        r.check(delta(h + "_count", api="openai") == k and
                total(after, h + "_bucket", api="openai", le="+Inf") == total(after, h + "_count", api="openai"),
                "metrics: %s{api=openai} count == %d" % (h, k), str(delta(h + "_count", api="openai")))
    moved = [name for name in ("mx_gateway_requests_total", "mx_gateway_rejected_total",
                               "mx_gateway_prompt_tokens_total", "mx_gateway_generated_tokens_total",
                               "mx_gateway_request_duration_seconds_count") if delta(name, api="grpc") != 0]
    r.check(not moved, "metrics: the api=grpc series did not move for HTTP traffic", str(moved))


def check_access_log(log_path, calls, window):
    """One access line per HTTP call: the same (method path, status) multiset as the client saw;
    the window's generations with their response id and usage."""
    lines = open(log_path).read().splitlines() if os.path.exists(log_path) else []
    seen = []
    by_id = {}
    for ln in lines:
        m = re.search(r'(?: req=(\S+))?: access method="([A-Z]+ [^"]*)" status=(\d+) prompt_tokens=(-?\d+) '
                      r'generated_tokens=(-?\d+) latency_ms=\d+\.\d$', ln)
        if m:
            seen.append((m.group(2), int(m.group(3))))
            if m.group(1):
                by_id[m.group(1)] = (int(m.group(4)), int(m.group(5)))
    want = collections.Counter((c["what"], c["status"]) for c in calls)
    got = collections.Counter(seen)
    r.check(len(calls) > 20 and got == want,
            "access log: one line per HTTP call (%d), method and path, the status the client got" % len(calls),
            "missing %s, extra %s" % (dict(want - got), dict(got - want)))
    bad = [q for q in window["requests"] if by_id.get(q["id"]) != (q["prompt_tokens"], q["completion_tokens"])]
    r.check(not bad, "access log: a generation's line carries its response id and tokens",
            "%s vs %s" % (bad, {q["id"]: by_id.get(q["id"]) for q in bad}))


def run_client(cl, ex, modules, work):
    """Runs client_checks.mjs; returns (every HTTP call it made, the metrics window's traffic)."""
    calls, window, before = [], {"requests": [], "rejected": {}}, []
    path = os.path.join(work, "expect.json")
    json.dump(ex, open(path, "w"))
    script = os.path.join(modules, "client_checks.mjs")
    p = subprocess.Popen(["node", script, path], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    try:
        for line in p.stdout:
            line = line.rstrip("\n")
            if line.startswith("PASS "):
                r.check(True, "openai client: " + line[5:])
            elif line.startswith("FAIL "):
                r.check(False, "openai client: " + line[5:])
            elif line == "STREAMING":
                live = [stage_live(a) for a in cl.stages]
                r.check(live == [1, 1], "a streaming HTTP request holds a sequence on both stages", str(live))
                p.stdin.write("go\n")
                p.stdin.flush()
            elif line == "METRICS_BEGIN":
                before = scrape(cl.metrics)
                p.stdin.write("go\n")
                p.stdin.flush()
            elif line.startswith("METRICS_END "):
                window = json.loads(line[len("METRICS_END "):])
                check_metrics(before, scrape(cl.metrics), window)
                p.stdin.write("go\n")
                p.stdin.flush()
            elif line.startswith("HTTPCALLS "):
                calls = json.loads(line[len("HTTPCALLS "):])
            elif line in ("ABORTED", "TIMEDOUT"):
                live = wait_live(cl, 0, 3)
                r.check(live == [0, 0], "client %s: the sequence is released on every stage" %
                        ("disconnect mid-stream" if line == "ABORTED" else "timeout (non-streaming)"), str(live))
                p.stdin.write("go\n")
                p.stdin.flush()
            else:
                print(line)
            if time.time() > deadline:
                r.check(False, "openai client finished in time")
                break
    finally:
        if p.poll() is None:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
    r.check(p.returncode == 0, "openai client script exited 0", str(p.returncode))
    return calls, window


def post(url, path, body, timeout=10):
    u_ = urllib.parse.urlparse(url)
    conn = http.client.HTTPConnection(u_.hostname, u_.port, timeout=timeout)
    conn.request("POST", path, body=json.dumps(body), headers={"Content-Type": "application/json"})
    return conn, conn.getresponse()


def status_of(url, method, path, body=None):
    try:
        u_ = urllib.parse.urlparse(url)
        conn = http.client.HTTPConnection(u_.hostname, u_.port, timeout=5)
        conn.request(method, path, body=json.dumps(body) if body else None)
        resp = conn.getresponse()
        out = (resp.status, resp.read())
        conn.close()
        return out
    except OSError as e:
        return (None, str(e).encode())


def test_queue_full(cl, model, work):
    """A second gateway on the same stages with one sequence per step and one queue slot: with
    one request running and one queued, the next is 429 with Retry-After (RESOURCE_EXHAUSTED)."""
    cfg, port_file = os.path.join(work, "gw2.cfg"), os.path.join(work, "gw2.http")
    with open(cfg, "w") as f:
        f.write('gateway = {\n  listen = "127.0.0.1:0";\n  model = "%s";\n  stages = [%s];\n'
                '  max_batch_sequences = 1;\n  max_queued = 1;\n  http_listen = "127.0.0.1:0";\n'
                '  http_port_file = "%s";\n};\n' % (model, ", ".join('"%s"' % a for a in cl.stages), port_file))
    log = tempfile.TemporaryFile()
    gw = subprocess.Popen([os.path.join(u.ROOT, u.BUILD, "bin", "gateway"), "--config", cfg], stderr=log)
    conns = []
    try:
        deadline = time.time() + 30
        while not os.path.exists(port_file) and time.time() < deadline and gw.poll() is None:
            time.sleep(0.05)
        if not r.check(os.path.exists(port_file), "queue: a second gateway serves HTTP (http_port_file)"):
            return
        url = "http://127.0.0.1:%s" % open(port_file).read().strip()
        body = {"model": MODEL, "prompt": "Hello", "max_tokens": LONG_TOKENS, "stream": True, "temperature": 0,
                "ignore_eos": True}
        conn, resp = post(url, "/v1/completions", body)
        conns.append(conn)
        r.check(resp.status == 200 and resp.readline().startswith(b"data: "), "queue: the first request runs")
        conn2, resp2 = post(url, "/v1/completions", body)  # waits in the queue: headers come later
        conns.append(conn2)
        time.sleep(0.3)
        st, out = status_of(url, "POST", "/v1/completions", {"prompt": "hi", "max_tokens": 1})
        err = json.loads(out or b"{}").get("error", {})
        r.check(st == 429 and err.get("type") == "rate_limit_error" and "max_queued" in err.get("message", ""),
                "queue full: 429 rate_limit_error", "%s %r" % (st, out))
    finally:
        for c in conns:
            c.close()
        gw.send_signal(signal.SIGTERM)
        try:
            gw.wait(timeout=20)
        except subprocess.TimeoutExpired:
            gw.kill()
            gw.wait()
    r.check(gw.returncode == 0, "queue: the second gateway stops cleanly", str(gw.returncode))
    r.check(wait_live(cl, 0, 5) == [0, 0], "queue: its requests are released on every stage after it stopped")


def test_drain(model):
    """SIGTERM to the gateway with an HTTP stream in flight: new requests and /health answer
    503 while the drain (drain_ms = 2000) lasts, the stream ends with an error event and
    [DONE] when it is over, and the gateway exits."""
    cl = Cluster(model)
    try:
        conn, resp = post(cl.http, "/v1/completions", {"model": MODEL, "prompt": "Hello", "max_tokens": LONG_TOKENS,
                                                        "stream": True, "temperature": 0, "ignore_eos": True})
        first = resp.readline()
        r.check(resp.status == 200 and first.startswith(b"data: "), "drain: a long stream is running")
        t0 = time.time()
        os.kill(cl.gateway_pid, signal.SIGTERM)
        seen_post = seen_health = None
        while time.time() - t0 < 1.5 and (seen_post != 503 or seen_health != 503):
            seen_post = status_of(cl.http, "POST", "/v1/completions", {"prompt": "hi", "max_tokens": 1})[0]
            seen_health = status_of(cl.http, "GET", "/health")[0]
            time.sleep(0.05)
        r.check(seen_post == 503 and seen_health == 503, "drain: new requests and /health answer 503",
                "%s %s" % (seen_post, seen_health))
        rest = b""
        try:
            rest = resp.read()
        except (OSError, http.client.HTTPException) as e:
            rest = str(e).encode()
        took = time.time() - t0
        events = [ln for ln in rest.split(b"\n") if ln.startswith(b"data: ")]
        r.check(len(events) >= 2 and b"shutting down" in events[-2] and events[-1] == b"data: [DONE]" and took < 6,
                "drain: the stream ends with a 503 error event and [DONE] after drain_ms",
                "%.1f s, %r" % (took, events[-2:]))
        conn.close()
        deadline = time.time() + 10
        while time.time() < deadline and os.path.exists("/proc/%d" % cl.gateway_pid):
            time.sleep(0.05)
        r.check(not os.path.exists("/proc/%d" % cl.gateway_pid), "drain: the gateway exits")
    finally:
        cl.stop()


def main():
    fixture, modules = sys.argv[1], sys.argv[2]
    work = tempfile.mkdtemp(prefix="mx-openai-")
    try:
        model = make_model(fixture, work)
        run_dir = os.path.join(work, "run")
        cl = Cluster(model, run_dir)
        calls = window = None
        try:
            r.check(cl.http is not None and cl.metrics is not None, "mx cluster prints the HTTP API and metrics addresses",
                    "%s %s" % (cl.http, cl.metrics))
            if cl.http and cl.metrics:
                ex = expectations(cl, fixture, cl.http)
                calls, window = run_client(cl, ex, modules, work)
                test_queue_full(cl, model, work)
        finally:
            rc = cl.stop()
            r.check(rc == 0, "the cluster (gateway with its HTTP server) stops cleanly on SIGTERM", str(rc))
        if calls is not None:
            check_access_log(os.path.join(run_dir, "gateway.log"), calls, window)
        test_drain(model)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    r.finish()


main()
