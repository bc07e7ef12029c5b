"""long_cluster.py FIXTURE_DIR - long prompts and the KV budget through real loopback clusters
(`mx cluster`: gateway, 2 attention stages, 2 expert shards), seen by an independent grpcio
client. Expectations come from outside the cluster: greedy tokens from the single-process
engine (`mx generate` on the same model and prompt), KV sizes and the tokens that fit from
the page format of core/kv_cache.h recomputed here from config.json.

1. Default KV budget: ModelInfo.max_context_tokens = min(max_position_embeddings, what the
   stages' budgets fit); a prompt of MX_LONG_PROMPT_TOKENS (default 40000) tokens is served
   with the engine's tokens, while short requests sent during its prefill complete before its
   first token (prefill is chunked under max_step_tokens); all KV is returned afterwards.
2. kv_cache_bytes = 256 KiB per stage (16 pages, 1024 tokens of the tiny model): ModelInfo
   says 1024; a request over it fails at once with RESOURCE_EXHAUSTED naming them (also one of
   4,194,304 prompt ids, an 8 MiB message the old 4 MiB limit refused); two requests that
   each fit but not together both complete with the engine's tokens, the second one after
   the first, and a short one sent meanwhile goes ahead of it; a stage whose KV another
   client holds refuses a request (RESOURCE_EXHAUSTED naming the stage) while a short
   request keeps decoding; RunBatch straight to a stage refuses only the sequence that does
   not fit.
Prints 'N passed, N failed' last."""
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time

import grpc

sys.path.insert(0, os.path.dirname(__file__))
import cluster_util as u

gen, stage_pb, _ = u.load_stubs()
r = u.Results()

# ASan builds run 5-10 times slower: a shorter long prompt and fewer decode steps there
ASAN = "asan" in u.BUILD
LONG = int(os.environ.get("MX_LONG_PROMPT_TOKENS", "3000" if ASAN else "40000"))
PAGE_TOKENS = 64


# ---- KV arithmetic from the page format (core/kv_cache.h), independent of the C code ----
def page_bytes(dtype, kv_heads, head_dim):
    elem = {"f32": 4, "bf16": 2, "fp8_e4m3": 1, "int8": 1}[dtype]
    b = 2 * kv_heads * PAGE_TOKENS * head_dim * elem  # K then V
    if elem == 1:
        b += 2 * kv_heads * 4  # fp32 scales per kv head for K and V
    return (b + 63) // 64 * 64


def stage_softmax_layers(cfg, stages):
    """mx cluster splits the layers evenly: stage i holds [i*L/S, (i+1)*L/S)."""
    n = cfg["num_hidden_layers"]
    return [sum(cfg["attn_type_list"][l] == 1 for l in range(i * n // stages, (i + 1) * n // stages))
            for i in range(stages)]


def kv_bytes(cfg, dtype, layers, tokens):
    pages = (tokens + PAGE_TOKENS - 1) // PAGE_TOKENS
    return pages * layers * page_bytes(dtype, cfg["num_key_value_heads"], cfg["head_dim"])


def tokens_fit(cfg, dtype, layers, budget):
    if layers == 0 or budget == 0:
        return None  # no limit
    return budget // (layers * page_bytes(dtype, cfg["num_key_value_heads"], cfg["head_dim"])) * PAGE_TOKENS


# ---- the single-process engine as the reference ----
_ref_cache = {}


def engine_tokens(fixture, prompt, n):
    key = (tuple(prompt), n)
    if key in _ref_cache:
        return _ref_cache[key]
    help_text = subprocess.run([u.MX, "generate", "--help"], capture_output=True, text=True).stdout
    args = [u.MX, "generate", "--model", fixture, "--max-new-tokens", str(n), "--threads", "1"]
    ids = ",".join(map(str, prompt))
    tmp = None
    if "--prompt-ids-file" in help_text:
        tmp = tempfile.NamedTemporaryFile("w", suffix=".ids", delete=False)
        tmp.write(ids)
        tmp.close()
        args += ["--prompt-ids-file", tmp.name]
    else:
        args += ["--prompt-ids", ids]  # under the 128 KiB argument limit with ids < 100
    try:
        out = subprocess.run(args, capture_output=True, text=True, timeout=600)
    finally:
        if tmp:
            os.unlink(tmp.name)
    if out.returncode != 0:
        raise RuntimeError("mx generate failed: " + out.stderr[-500:])
    toks = [int(t) for t in out.stdout.split()]
    _ref_cache[key] = toks
    return toks


def prompt_ids(n, seed):
    g = random.Random(seed)
    return [g.randrange(1, 100) for _ in range(n)]


def request(prompt, n):
    req = gen.GenerateRequest(prompt_ids=prompt)
    req.sampling.max_new_tokens = n
    req.sampling.ignore_eos = True
    return req


def stage_info(addr):
    with grpc.insecure_channel(addr) as ch:
        info = ch.unary_unary("/mx.internal.v1.AttentionStage/Info",
                              request_serializer=stage_pb.StageInfoRequest.SerializeToString,
                              response_deserializer=stage_pb.StageInfoResponse.FromString)
        return info(stage_pb.StageInfoRequest(), timeout=5)


def wait_released(cl, timeout=10.0):
    """Every stage back to no live sequence and no KV page in use."""
    end = time.time() + timeout
    while True:
        infos = [stage_info(a) for a in cl.stages]
        state = [(i.live_sequences, i.kv_used_bytes) for i in infos]
        if all(s == (0, 0) for s in state) or time.time() > end:
            return state
        time.sleep(0.05)


class Timed:
    """A Complete call in a thread: result or error, and when it was sent and answered."""

    def __init__(self, complete, req, timeout=300):
        self.resp, self.err, self.t_sent, self.t_done = None, None, None, None
        self.th = threading.Thread(target=self._run, args=(complete, req, timeout))
        self.th.start()

    def _run(self, complete, req, timeout):
        self.t_sent = time.time()
        try:
            self.resp = complete(req, timeout=timeout)
        except grpc.RpcError as e:
            self.err = e
        self.t_done = time.time()

    def join(self, timeout=320):
        self.th.join(timeout)
        return self

    def tokens(self):
        return list(self.resp.token_ids) if self.resp else "rpc error %s %s" % (
            self.err.code(), self.err.details()) if self.err else "no answer"


def check_info(cl, info, cfg, dtype, name):
    """ModelInfo and every stage's Info against the arithmetic above."""
    layers = stage_softmax_layers(cfg, len(cl.stages))
    fits = []
    for i, a in enumerate(cl.stages):
        si = stage_info(a)
        want_fit = tokens_fit(cfg, dtype, layers[i], si.kv_budget_bytes)
        per_token = layers[i] * page_bytes(dtype, cfg["num_key_value_heads"], cfg["head_dim"]) // PAGE_TOKENS
        r.check(si.kv_dtype == dtype and si.softmax_layers == layers[i] and si.kv_bytes_per_token == per_token
                and si.kv_page_tokens == PAGE_TOKENS and si.kv_budget_bytes > 0
                and si.kv_tokens_fit == (want_fit if want_fit is not None else 2 ** 63 - 1),
                "%s: stage %d Info KV numbers" % (name, i),
                "%s; want fit %s, %d bytes/token" % (str(si).replace("\n", " "), want_fit, per_token))
        if want_fit is not None:
            fits.append(want_fit)
    mi = info(gen.ModelInfoRequest(), timeout=5)
    want = min([cfg["max_position_embeddings"]] + fits)
    r.check(mi.max_context_tokens == want, "%s: ModelInfo.max_context_tokens = min(positions, stages' fit)" % name,
            "got %d want %d" % (mi.max_context_tokens, want))
    return want


def test_long_prompt(fixture, cfg):
    cl = u.Cluster(fixture, stages=2, shards=2, replicas="1,1")
    try:
        with grpc.insecure_channel(cl.gateway) as ch:
            _, complete, info = u.generation_stubs(ch, gen)
            ctx = check_info(cl, info, cfg, "bf16", "default budget")
            long_prompt = prompt_ids(LONG, 1)
            short_prompt = prompt_ids(5, 2)
            want_long = engine_tokens(fixture, long_prompt, 4)
            want_short = engine_tokens(fixture, short_prompt, 2)
            r.check(LONG + 4 <= ctx, "the long prompt fits the default budget", "%d > %d" % (LONG + 4, ctx))
            big = Timed(complete, request(long_prompt, 4), timeout=600)
            used, end = [0] * len(cl.stages), time.time() + 60
            while big.th.is_alive() and not all(used) and time.time() < end:
                used = [max(x, stage_info(a).kv_used_bytes) for x, a in zip(used, cl.stages)]
                time.sleep(0.01)
            shorts, deadline = [], time.time() + 600
            # short requests one after the other while the long one is in flight
            while big.th.is_alive() and len(shorts) < 50 and time.time() < deadline:
                shorts.append(Timed(complete, request(short_prompt, 2), timeout=120).join())
            big.join(600)
            r.check(all(b > 0 for b in used), "KV pages in use on every stage during the long prefill", str(used))
            r.check(big.tokens() == want_long, "%d-token prompt: greedy tokens equal mx generate" % LONG,
                    "got %s want %s" % (big.tokens(), want_long))
            r.check(big.resp is not None and big.resp.usage.prompt_tokens == LONG, "usage.prompt_tokens = %d" % LONG)
            r.check(len(shorts) > 0 and all(s.tokens() == want_short for s in shorts),
                    "short requests during the long prefill: engine tokens",
                    "%s want %s" % ([s.tokens() for s in shorts][:3], want_short))
            if big.resp:
                t = big.resp.timings
                lat = sorted(s.t_done - s.t_sent for s in shorts if s.t_done)
                print("INFO %d-token prompt: queue %.0f ms, prefill %.0f ms, first token %.0f ms; %d short requests "
                      "meanwhile, median %.0f ms each" % (LONG, t.queue_ms, t.prefill_ms, t.time_to_first_token_ms,
                                                          len(shorts), 1000 * lat[len(lat) // 2] if lat else -1))
                first = big.t_sent + big.resp.timings.time_to_first_token_ms / 1000
                early = [s for s in shorts if s.t_done and s.t_done < first]
                r.check(len(early) >= 1, "short requests complete before the long prompt's first token "
                        "(chunked prefill shares the steps)",
                        "%d of %d before %.1f s" % (len(early), len(shorts), first - big.t_sent))
            r.check(wait_released(cl) == [(0, 0), (0, 0)], "all sequences and KV pages released afterwards")
    finally:
        status = cl.stop()
        r.check(status == 0, "cluster stops cleanly", "exit %s\n%s" % (status, cl.read_log()[-2000:]))


def run_batch_stub(ch):
    return ch.unary_unary("/mx.internal.v1.AttentionStage/RunBatch",
                          request_serializer=stage_pb.RunBatchRequest.SerializeToString,
                          response_deserializer=stage_pb.RunBatchResponse.FromString)


def release_stub(ch):
    return ch.unary_unary("/mx.internal.v1.AttentionStage/Release",
                          request_serializer=stage_pb.ReleaseRequest.SerializeToString,
                          response_deserializer=stage_pb.ReleaseResponse.FromString)


def test_small_budget(fixture, cfg):
    budget = 256 << 10
    refused_at = 0
    # one micro-batch at a time: a refused prompt chunk shares its batch with the short request
    cl = u.Cluster(fixture, stages=2, shards=2, replicas="1,1",
                   extra=["--kv-cache-bytes", "256K", "--pipeline-depth", "1"])
    layers = stage_softmax_layers(cfg, 2)
    fit = min(tokens_fit(cfg, "bf16", n, budget) for n in layers if n)
    try:
        with grpc.insecure_channel(cl.gateway, options=[("grpc.max_send_message_length", 64 << 20)]) as ch:
            generate, complete, info = u.generation_stubs(ch, gen)
            r.check(check_info(cl, info, cfg, "bf16", "kv_cache_bytes 256K") == fit, "256 KiB fits %d tokens" % fit)
            short_prompt = prompt_ids(5, 3)
            want_short = engine_tokens(fixture, short_prompt, 100)

            # -- too large for the budget: refused at once, while a short request streams
            runner = Timed(complete, request(short_prompt, 100))
            for prompt_len, n, what in ((300, 1000, "prompt + max_new_tokens"), (fit + 100, 0, "prompt alone")):
                total = prompt_len + (n if n else 1)
                t0 = time.time()
                try:
                    complete(request(prompt_ids(prompt_len, 4), n), timeout=30)
                    r.check(False, "over the KV budget (%s)" % what, "no error")
                except grpc.RpcError as e:
                    msg = e.details() or ""
                    r.check(e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "at most %d tokens fit" % fit in msg
                            and "%d tokens do not fit" % total in msg and time.time() - t0 < 5,
                            "over the KV budget (%s): RESOURCE_EXHAUSTED naming %d tokens" % (what, fit),
                            "%s %r" % (e.code(), msg))
            huge = gen.GenerateRequest(prompt_ids=[257] * 4194304)  # 2-byte varints: 8 MiB
            huge.sampling.max_new_tokens = 1
            try:
                complete(huge, timeout=60)
                r.check(False, "4,194,304-token request", "no error")
            except grpc.RpcError as e:
                r.check(e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "4194305 tokens do not fit" in (
                    e.details() or ""), "a 4,194,304-token request (8 MiB) is received and refused for KV",
                    "%s %r" % (e.code(), e.details()))
            runner.join()
            r.check(runner.tokens() == want_short, "a short request streams on meanwhile (engine tokens)",
                    str(runner.tokens())[:200])

            # -- two requests that fit alone but not together: the second waits, a short one passes it
            # 650 tokens each (11 pages of 64 on a 16-page stage); long enough a decode that A
            # still runs when C comes
            n_new = 150 if ASAN else 500
            pa, pb = prompt_ids(650 - n_new, 5), prompt_ids(650 - n_new, 6)
            need = kv_bytes(cfg, "bf16", 1, 650)
            r.check(need <= budget < 2 * need, "A and B (%d bytes each) fit alone, not together" % need)
            want_a, want_b = engine_tokens(fixture, pa, n_new), engine_tokens(fixture, pb, n_new)
            want_c = engine_tokens(fixture, short_prompt, 10)
            a = Timed(complete, request(pa, n_new))
            time.sleep(0.2)
            b = Timed(complete, request(pb, n_new))
            time.sleep(0.2)
            c = Timed(complete, request(short_prompt, 10)).join()
            a.join()
            b.join()
            r.check(a.tokens() == want_a and b.tokens() == want_b, "both complete with the engine's tokens",
                    "%s / %s" % (str(a.tokens())[:100], str(b.tokens())[:100]))
            r.check(c.tokens() == want_c, "a short request sent meanwhile completes", str(c.tokens()))
            if a.resp and b.resp and c.resp:
                a_done = a.t_sent + a.resp.timings.total_ms / 1000
                b_start = b.t_sent + b.resp.timings.queue_ms / 1000
                c_done = c.t_sent + c.resp.timings.total_ms / 1000
                print("INFO A: %.0f ms; B queued %.0f ms; C sent %.0f ms after A, done in %.0f ms" % (
                    a.resp.timings.total_ms, b.resp.timings.queue_ms, 1000 * (c.t_sent - a.t_sent),
                    c.resp.timings.total_ms))
                r.check(b_start >= a_done - 0.05, "B waited in the queue until A finished",
                        "B scheduled %.3f s after A's end" % (b_start - a_done))
                r.check(c_done <= b_start + 0.05, "the short request went ahead of the waiting B",
                        "C done %.3f s after B started" % (c_done - b_start))
            r.check(wait_released(cl) == [(0, 0), (0, 0)], "all KV released after the waits")

            # -- a request waiting for KV room ends at its deadline; the one running is unaffected
            a = Timed(complete, request(pa, n_new))
            time.sleep(0.2)
            late = Timed(complete, request(pb, n_new), timeout=0.5).join()
            a.join()
            r.check(late.err is not None and late.err.code() == grpc.StatusCode.DEADLINE_EXCEEDED,
                    "a request waiting for KV room ends at its deadline",
                    "%s" % (late.tokens() if late.err is None else late.err.code()))
            r.check(a.tokens() == want_a, "the running request completes meanwhile", str(a.tokens())[:100])
            r.check(wait_released(cl) == [(0, 0), (0, 0)], "all KV released after the deadline")
            got = [t for m in generate(request(short_prompt, 10), timeout=60) for t in m.token_ids]
            r.check(got == want_c, "the gateway admits again after the deadline", str(got))

            # -- another client holds stage 0's KV: the stage refuses, the gateway fails that request only.
            # The short request alongside needs 4 pages (5 + 195 tokens): 11 + 4 of 16 leave the
            # 7-page request no room whichever comes first.
            want_runner = engine_tokens(fixture, short_prompt, 195)
            with grpc.insecure_channel(cl.stages[0]) as c0:
                run0, rel0 = run_batch_stub(c0), release_stub(c0)
                held = 700  # 11 pages: 5 left
                run0(stage_pb.RunBatchRequest(batch_id=1, sequences=[stage_pb.SequenceInput(
                    sequence_id=10 ** 15, start_position=0, token_ids=prompt_ids(held, 7), num_tokens=held)]),
                    timeout=60)
                used = stage_info(cl.stages[0]).kv_used_bytes
                r.check(used == kv_bytes(cfg, "bf16", layers[0], held), "stage 0 counts %d tokens' pages" % held,
                        "%d bytes in use" % used)
                runner = Timed(complete, request(short_prompt, 195))
                time.sleep(0.1)
                try:
                    complete(request(prompt_ids(400, 8), 10), timeout=60)  # 7 pages
                    r.check(False, "a stage's KV is full", "no error")
                except grpc.RpcError as e:
                    refused_at = time.time()
                    r.check(e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "stage 0" in (e.details() or "")
                            and "KV budget" in (e.details() or ""),
                            "a stage whose KV another client holds: RESOURCE_EXHAUSTED naming the stage",
                            "%s %r" % (e.code(), e.details()))
                runner.join()
                r.check(runner.tokens() == want_runner and runner.t_done > refused_at,
                        "the short request decoding alongside it completes afterwards",
                        "%s, done %.3f s after the refusal" % (str(runner.tokens())[:200], runner.t_done - refused_at))
                end = time.time() + 10  # the refused request's pages come back when the gateway releases it
                while stage_info(cl.stages[0]).kv_used_bytes != used and time.time() < end:
                    time.sleep(0.05)
                # RunBatch straight to the stage: only the sequence that does not fit is left out
                free_tokens = (budget - used) // page_bytes("bf16", cfg["num_key_value_heads"], cfg["head_dim"]) \
                    * PAGE_TOKENS
                small_id, big_id = 10 ** 15 + 1, 10 ** 15 + 2
                resp = run0(stage_pb.RunBatchRequest(batch_id=2, sequences=[
                    stage_pb.SequenceInput(sequence_id=small_id, token_ids=[1] * 10, num_tokens=10),
                    stage_pb.SequenceInput(sequence_id=big_id, token_ids=[1] * free_tokens, num_tokens=free_tokens)]),
                    timeout=60)
                r.check(list(resp.kv_refused_sequence_ids) == [big_id] and resp.hidden.rows == 10
                        and "stage 0" in resp.kv_refused_message,
                        "RunBatch: the sequence that does not fit is refused, the other runs",
                        "refused %s rows %d %r" % (list(resp.kv_refused_sequence_ids), resp.hidden.rows,
                                                   resp.kv_refused_message))
                try:
                    run0(stage_pb.RunBatchRequest(batch_id=3, sequences=[stage_pb.SequenceInput(
                        sequence_id=big_id, token_ids=[1] * free_tokens, num_tokens=free_tokens)]), timeout=60)
                    r.check(False, "RunBatch with nothing that fits", "no error")
                except grpc.RpcError as e:
                    r.check(e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "stage 0" in (e.details() or "")
                            and "%d of %d bytes in use" % (used + 16384, budget) in (e.details() or ""),
                            "RunBatch with nothing that fits: RESOURCE_EXHAUSTED with the stage's numbers",
                            "%s %r" % (e.code(), e.details()))
                r.check(stage_info(cl.stages[0]).live_sequences == 2, "the refused sequences hold no state")
                rel0(stage_pb.ReleaseRequest(sequence_ids=[10 ** 15, small_id, big_id]), timeout=10)
            got = [t for m in generate(request(short_prompt, 10), timeout=60) for t in m.token_ids]
            r.check(got == want_c, "the gateway serves on after the refusals", str(got))
            r.check(wait_released(cl) == [(0, 0), (0, 0)], "all KV released at the end")
    finally:
        status = cl.stop()
        r.check(status == 0, "cluster stops cleanly", "exit %s\n%s" % (status, cl.read_log()[-2000:]))


def main():
    fixture = sys.argv[1]
    cfg = json.load(open(os.path.join(fixture, "config.json")))
    which = os.environ.get("MX_LONG_GROUPS", "long,budget").split(",")
    for name, t in (("long", test_long_prompt), ("budget", test_small_budget)):
        if name not in which:
            continue
        try:
            t(fixture, cfg)
        except Exception as e:  # a crash in one group is a failure, the other still runs
            r.check(False, "test group %s" % name, repr(e))
    r.finish()


if __name__ == "__main__":
    main()
