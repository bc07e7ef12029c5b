"""long_context.py - long prompts through a loopback cluster (`mx cluster`: gateway, 2 attention
stages, 2 expert shards), measured with a grpcio client:
  (a) time to first token of one long prompt, and each attention stage's peak RSS (VmHWM) against
      its weights + KV pages x 1.1 + 1 GiB;
  (b) inter-token latency of 8 short streams while a long prefill runs next to them, against the
      same streams alone just before and just after (p50 / p99 of the gaps between a stream's
      tokens, all streams pooled), and the long prompt's time to first token next to them.
      --max-prefill-tokens-with-decodes runs the gateway with that cap (0 = none); --compare-cap
      runs (b) once more on a cluster without the cap, so both are measured in the same run.
bench/bench_long_context.sh runs it; the ratios are what to read, this machine's speed drifts."""
import argparse
import json
import os
import random
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
import time

import grpc

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
GiB = 1 << 30
PAGE_TOKENS = 64  # MX_KV_PAGE_TOKENS (core/kv_cache.h)

sys.path.insert(0, os.path.join(ROOT, "tests", "cluster"))
import cluster_util as u  # noqa: E402


def load_stubs():
    out = tempfile.mkdtemp(prefix="mx-bench-pb-")
    subprocess.run(["protoc", "-I" + os.path.join(ROOT, "proto"), "--python_out=" + out, "mx/v1/generation.proto"],
                   check=True)
    sys.path.insert(0, out)
    import mx.v1.generation_pb2 as gen
    shutil.rmtree(out, True)  # the module is loaded; the files are no longer needed
    return gen


def start_cluster(a, extra):
    """`mx cluster` (2 stages, 2 expert shards, one replica each) as a child; stage_pids and the
    gateway's address parsed from what it prints (tests/cluster/cluster_util.py)."""
    return u.Cluster(a.model, stages=2, shards=2, replicas=None, extra=extra, threads=a.threads, start_timeout=180,
                     mx=a.mx, stop_timeout=30)


def vm_hwm(pid):
    """Peak resident set of a process in bytes (VmHWM in /proc/PID/status)."""
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def safetensors_sizes(model):
    """{tensor name: bytes} from the checkpoint's shard headers."""
    with open(os.path.join(model, "model.safetensors.index.json")) as f:
        shards = sorted(set(json.load(f)["weight_map"].values()))
    sizes = {}
    for s in shards:
        with open(os.path.join(model, s), "rb") as f:
            n = struct.unpack("<Q", f.read(8))[0]
            header = json.loads(f.read(n))
        for name, t in header.items():
            if name != "__metadata__":
                sizes[name] = t["data_offsets"][1] - t["data_offsets"][0]
    return sizes


def stage_layout(cfg, stages):
    """Layer ranges as `mx cluster` splits them (stage i: [i*L/S, (i+1)*L/S))."""
    L = cfg["num_hidden_layers"]
    return [(i * L // stages, (i + 1) * L // stages) for i in range(stages)]


def stage_weight_bytes(sizes, l0, l1, first, last):
    """What an attention stage holds: its layers without the experts (those live in expert-svc),
    the embedding on the first stage, the final norm and lm_head on the last."""
    total = 0
    for name, b in sizes.items():
        m = re.match(r"model\.layers\.(\d+)\.", name)
        if m:
            if l0 <= int(m.group(1)) < l1 and ".block_sparse_moe.experts." not in name:
                total += b
        elif name == "model.embed_tokens.weight":
            total += b if first else 0
        elif name in ("model.norm.weight", "lm_head.weight"):
            total += b if last else 0
    return total


def kv_page_bytes(elem_bytes, kv_heads, head_dim):
    """mx_kv_page_bytes for bf16/f32 (core/kv_cache.c): K and V pages padded to 64 bytes."""
    b = 2 * kv_heads * PAGE_TOKENS * head_dim * elem_bytes
    return (b + 63) & ~63


def softmax_layers(cfg, l0, l1):
    types = cfg.get("attn_type_list") or []
    return sum(1 for l in range(l0, l1) if l < len(types) and types[l] == 1)


def percentile(v, p):
    if not v:
        return float("nan")
    s = sorted(v)
    k = min(len(s) - 1, max(0, int(round(p / 100.0 * (len(s) - 1)))))
    return s[k]


def request(gen, ids, max_new):
    return gen.GenerateRequest(prompt_ids=ids, sampling=gen.SamplingParams(
        temperature=0, max_new_tokens=max_new, ignore_eos=True))


def time_to_first_token(gen, generate, ids, timeout):
    """Seconds from sending the request to the first token; the server's timings if it sent any."""
    t0 = time.monotonic()
    ttft, server = None, None
    for m in generate(request(gen, ids, 1), timeout=timeout):
        if m.token_ids and ttft is None:
            ttft = time.monotonic() - t0
        if m.HasField("timings") and m.timings.time_to_first_token_ms > 0:
            server = m.timings
    return ttft, server


class Streams:
    """n short streams, each recording when its tokens arrive; stoppable. With repeat, a stream
    that reaches max_new starts another request, so n streams decode until stopped (a request's
    first token, which waits for its prompt, starts a new list of times: never a gap)."""

    def __init__(self, gen, generate, n, max_new, prompt_len, vocab, seed, repeat=False):
        rnd = random.Random(seed)
        self.calls, self.times, self.errors = [None] * n, [], []
        self.threads, self.repeat, self.stopping = [], repeat, False
        self.lock = threading.Lock()
        for i in range(n):
            ids = [rnd.randrange(vocab) for _ in range(prompt_len)]
            t = threading.Thread(target=self._run, args=(gen, generate, i, ids, max_new), daemon=True)
            self.threads.append(t)

    def _run(self, gen, generate, i, ids, max_new):
        while True:
            times = []
            with self.lock:
                if self.stopping:
                    return
                self.times.append(times)
                call = generate(request(gen, ids, max_new), timeout=3600)
                self.calls[i] = call
            try:
                for m in call:
                    now = time.monotonic()
                    times.extend([now] * len(m.token_ids))
            except grpc.RpcError as e:
                if e.code() != grpc.StatusCode.CANCELLED:
                    self.errors.append(str(e.code()) + " " + str(e.details()))
                return
            if not self.repeat:
                return

    def start(self):
        for t in self.threads:
            t.start()

    def stop(self):
        with self.lock:
            self.stopping = True
            for c in self.calls:
                if c is not None:
                    c.cancel()
        self.join()

    def join(self):
        for t in self.threads:
            t.join(timeout=600)

    def gaps(self, t_from=None, t_to=None):
        """Gaps between consecutive tokens of each stream (the first token's wait excluded),
        only those whose both tokens arrived inside [t_from, t_to] when given."""
        out = []
        for ts in self.times:
            for a, b in zip(ts, ts[1:]):
                if (t_from is None or a >= t_from) and (t_to is None or b <= t_to):
                    out.append(b - a)
        return out


def attn_flops(cfg, n, layers):
    """Causal softmax attention flops of an n-token prefill over `layers` softmax layers."""
    return 4.0 * cfg["head_dim"] * cfg["num_attention_heads"] * n * (n + 1) / 2 * layers


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mx", default=os.path.join(ROOT, os.environ.get("BUILD", "build"), "bin", "mx"))
    ap.add_argument("--model", required=True)
    ap.add_argument("--prompt-tokens", type=int, default=65536)
    ap.add_argument("--itl-prompt-tokens", type=int, default=32768)
    ap.add_argument("--streams", type=int, default=8)
    ap.add_argument("--stream-tokens", type=int, default=64, help="tokens per stream request when alone")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--kv-dtype", default="bf16", choices=["bf16", "f32"])
    ap.add_argument("--attn-gflops", type=float, default=0,
                    help="softmax attention GFLOP/s measured on this model (bench_prefill) for projections")
    ap.add_argument("--project-tokens", type=int, default=1048576)
    ap.add_argument("--max-prefill-tokens-with-decodes", type=int, default=-1,
                    help="the gateway's cap on prompt tokens per step while requests decode (-1: its default)")
    ap.add_argument("--compare-cap", action="store_true",
                    help="run (b) again on a cluster whose gateway has no cap (0), for the ratio of the two")
    ap.add_argument("--skip-ttft", action="store_true")
    ap.add_argument("--skip-itl", action="store_true")
    a = ap.parse_args()

    gen = load_stubs()
    with open(os.path.join(a.model, "config.json")) as f:
        cfg = json.load(f)
    vocab = cfg["vocab_size"]
    cfg.setdefault("head_dim", cfg["hidden_size"] // cfg["num_attention_heads"])
    extra = [] if a.kv_dtype == "bf16" else ["--kv-dtype", a.kv_dtype]
    runs = [a.max_prefill_tokens_with_decodes]
    if a.compare_cap and not a.skip_itl and a.max_prefill_tokens_with_decodes != 0:
        runs.append(0)
    results = []
    for k, cap in enumerate(runs):
        cap_args = [] if cap < 0 else ["--max-prefill-tokens-with-decodes", str(cap)]
        cl = start_cluster(a, extra + cap_args)
        try:
            with grpc.insecure_channel(cl.gateway, options=[("grpc.max_send_message_length", 64 << 20),
                                                             ("grpc.max_receive_message_length", 64 << 20)]) as ch:
                generate = ch.unary_stream("/mx.v1.Generation/Generate",
                                           request_serializer=gen.GenerateRequest.SerializeToString,
                                           response_deserializer=gen.GenerateResponse.FromString)
                info = ch.unary_unary("/mx.v1.Generation/ModelInfo",
                                      request_serializer=gen.ModelInfoRequest.SerializeToString,
                                      response_deserializer=gen.ModelInfoResponse.FromString)(gen.ModelInfoRequest(),
                                                                                            timeout=30)
                print("%scluster: gateway %s, stages pids %s, %d threads per service; gateway max_context_tokens %d; "
                      "max_prefill_tokens_with_decodes %s"
                      % ("\n" if k else "", cl.gateway, cl.stage_pids, a.threads, info.max_context_tokens,
                         "the gateway's default" if cap < 0 else "%d%s" % (cap, " (no cap)" if cap == 0 else "")))
                if not a.skip_ttft and k == 0:
                    run_ttft(a, gen, generate, cfg, cl, info)
                if not a.skip_itl:
                    results.append(run_itl(a, gen, generate, vocab, info))
        finally:
            cl.stop()
    if len(results) == 2 and all(results):
        on, off = results
        print("\n(b) with the cap / without it: p99 during / alone %.2f vs %.2f; the long prompt's first token "
              "after %.1f s vs %.1f s (x%.2f)" % (on["p99_ratio"], off["p99_ratio"], on["ttft"], off["ttft"],
                                                  on["ttft"] / off["ttft"]))


def run_ttft(a, gen, generate, cfg, cl, info):
    n = a.prompt_tokens
    print("\n(a) one prompt of %d tokens (random ids), max_new_tokens 1" % n)
    if info.max_context_tokens and n + 1 > info.max_context_tokens:
        print("  the gateway accepts at most %d tokens of context: prompt not sent" % info.max_context_tokens)
        return
    rnd = random.Random(1)
    ids = [rnd.randrange(cfg["vocab_size"]) for _ in range(n)]
    try:
        ttft, server = time_to_first_token(gen, generate, ids, timeout=48 * 3600)
    except grpc.RpcError as e:
        print("  request failed: %s %s" % (e.code(), e.details()))
        return
    print("  time to first token %.2f s (%.0f prompt tokens/s)%s" % (
        ttft, n / ttft, "; gateway: prefill %.2f s, queue %.3f s" % (server.prefill_ms / 1e3, server.queue_ms / 1e3)
        if server else ""))
    sizes = safetensors_sizes(a.model)
    layout = stage_layout(cfg, len(cl.stage_pids))
    elem = 2 if a.kv_dtype == "bf16" else 4
    page = kv_page_bytes(elem, cfg["num_key_value_heads"], cfg["head_dim"])
    pages = (n + 1 + PAGE_TOKENS - 1) // PAGE_TOKENS
    print("  %-7s %7s %8s %12s %12s %12s %12s %8s" % ("stage", "layers", "softmax", "weights MB", "KV MB",
                                                      "target MB", "VmHWM MB", "of tgt"))
    for i, pid in enumerate(cl.stage_pids):
        l0, l1 = layout[i]
        w = stage_weight_bytes(sizes, l0, l1, i == 0, i == len(cl.stage_pids) - 1)
        kv = pages * page * softmax_layers(cfg, l0, l1)
        target = w + 1.1 * kv + GiB
        hwm = vm_hwm(pid)
        print("  %-7d %7s %8d %12.1f %12.1f %12.1f %12.1f %8.2f%s" % (
            i, "%d-%d" % (l0, l1 - 1), softmax_layers(cfg, l0, l1), w / 1e6, kv / 1e6, target / 1e6, hwm / 1e6,
            hwm / target, "" if hwm <= target else "  over target"))
    print("  target: VmHWM <= weights + KV pages x 1.1 + 1 GiB on every stage")
    if a.attn_gflops > 0:
        # T(n) = per-token part x n + attention flops(n) / rate: the per-token part from this run
        layers = softmax_layers(cfg, 0, cfg["num_hidden_layers"])
        rate = a.attn_gflops * 1e9
        per_token = max(0.0, (ttft - attn_flops(cfg, n, layers) / rate) / n)
        big = a.project_tokens
        proj = per_token * big + attn_flops(cfg, big, layers) / rate
        print("  projected time to first token at %d tokens: %.0f s (%.1f h) = %.2f ms/token x n (from this run)\n"
              "  + %.3g attention flops / %.1f GFLOP/s (softmax attention rate of this model, bench_prefill)"
              % (big, proj, proj / 3600, per_token * 1e3, attn_flops(cfg, big, layers), a.attn_gflops))


def run_itl(a, gen, generate, vocab, info):
    """Returns {p99_ratio, ttft} or None when the long prompt could not run."""
    n = a.itl_prompt_tokens
    print("\n(b) inter-token latency of %d streams (16-token prompts), alone and next to a %d-token prefill"
          % (a.streams, n))
    if info.max_context_tokens and n + 1 > info.max_context_tokens:
        print("  the gateway accepts at most %d tokens of context: long prompt not sent" % info.max_context_tokens)
        return None

    def alone(seed):
        s = Streams(gen, generate, a.streams, a.stream_tokens, 16, vocab, seed)
        s.start()
        s.join()
        return s

    before = alone(2)
    rnd = random.Random(3)
    ids = [rnd.randrange(vocab) for _ in range(n)]
    done = {}

    def long_request():
        try:
            done["ttft"], _ = time_to_first_token(gen, generate, ids, timeout=48 * 3600)
        except grpc.RpcError as e:
            done["error"] = "%s %s" % (e.code(), e.details())
        done["t"] = time.monotonic()

    # the streams decode for as long as the prefill runs (each starts another request when one
    # ends); their gaps count only while it runs
    busy = Streams(gen, generate, a.streams, min(4 * a.stream_tokens, info.max_new_tokens_limit or 4096), 16, vocab,
                   4, repeat=True)
    lt = threading.Thread(target=long_request, daemon=True)
    busy.start()
    time.sleep(1.0)  # the streams are decoding when the long prompt comes
    t_long = time.monotonic()
    lt.start()
    lt.join()
    busy.stop()
    after = alone(5)
    if "error" in done:
        print("  long request failed: " + done["error"])
        return None
    g_alone = before.gaps() + after.gaps()
    g_busy = busy.gaps(t_long, done["t"])
    errors = before.errors + busy.errors + after.errors
    if errors:
        print("  stream errors: %s" % errors[:3])
    rows = [("streams alone, before", before.gaps()), ("streams alone, after", after.gaps()),
            ("streams alone, both", g_alone), ("during the long prefill", g_busy)]
    print("  %-28s %8s %10s %10s %10s" % ("", "gaps", "p50 ms", "p99 ms", "max ms"))
    for name, g in rows:
        print("  %-28s %8d %10.1f %10.1f %10.1f" % (name, len(g), percentile(g, 50) * 1e3, percentile(g, 99) * 1e3,
                                                    max(g or [float("nan")]) * 1e3))
    p50a, p99a = percentile(g_alone, 50), percentile(g_alone, 99)
    p50b, p99b = percentile(g_busy, 50), percentile(g_busy, 99)
    print("  p99 during / alone: %.2f (target <= 3); p50: %.2f; the long prompt's first token after %.1f s "
          "(%.0f prompt tokens/s next to the streams)" % (p99b / p99a, p50b / p50a, done["ttft"], n / done["ttft"]))
    return {"p99_ratio": p99b / p99a, "ttft": done["ttft"]}


if __name__ == "__main__":
    main()
