"""golden_cluster.py FIXTURE_DIR - starts a real cluster (gateway, 2 stages, 2 expert shards,
shard 0 with 2 replicas) on loopback and runs every case of the golden fixture through the
public Generate stream with greedy decoding, 4 requests in flight at once (each case twice).
Tokens must equal the fixture's greedy_ids and each chosen token's logprob must be within
1e-3 of log_softmax(expected logits). Prints 'N passed, N failed' last."""
import concurrent.futures
import json
import os
import sys

import grpc

sys.path.insert(0, os.path.dirname(__file__))
import cluster_util as u

LOGPROB_TOL = 1e-3


def run_case(gateway, gen, case, prompt, steps):
    with grpc.insecure_channel(gateway) as ch:
        generate, _, _ = u.generation_stubs(ch, gen)
        req = gen.GenerateRequest(prompt_ids=prompt, request_id=case)
        req.sampling.temperature = 0
        req.sampling.max_new_tokens = steps + 1
        req.sampling.ignore_eos = True
        req.logprobs.enabled = True
        ids, lps, last = [], [], None
        for msg in generate(req, timeout=120):
            ids.extend(msg.token_ids)
            lps.extend(p.chosen.logprob for p in msg.logprobs)
            last = msg
        return ids, lps, last


def main():
    fixture = sys.argv[1]
    gen, _, _ = u.load_stubs()
    r = u.Results()
    cases = json.load(open(os.path.join(fixture, "cases.json")))["cases"]
    exp = u.read_safetensors(os.path.join(fixture, "expected.safetensors"))
    vocab = json.load(open(os.path.join(fixture, "config.json")))["vocab_size"]
    # the fp32 tier: an f32 KV cache on the stages (their default, bf16, is the kv tier's)
    cl = u.Cluster(fixture, stages=2, shards=2, replicas="2,1", extra=["--kv-dtype", "f32"])
    try:
        jobs = []
        with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
            for rep in range(2):
                for c in cases:
                    name = c["name"]
                    prompt = exp[name + ".prompt_ids"][2]
                    jobs.append((name, rep, pool.submit(run_case, cl.gateway, gen, name, prompt, c["steps"])))
            for name, rep, fut in jobs:
                tag = "%s/%s#%d" % (os.path.basename(fixture.rstrip("/")), name, rep)
                try:
                    ids, lps, last = fut.result()
                except grpc.RpcError as e:
                    r.check(False, tag, "rpc failed: %s %s" % (e.code(), e.details()))
                    continue
                want = exp[name + ".greedy_ids"][2]
                r.check(ids == want, tag + " greedy ids", "got %s want %s" % (ids, want))
                logits = exp[name + ".logits"][2]
                worst = 0.0
                for j, tok in enumerate(want[:len(lps)]):
                    ref = u.log_softmax_at(logits[j * vocab:(j + 1) * vocab], tok)
                    worst = max(worst, abs(ref - lps[j]))
                r.check(len(lps) == len(want) and worst <= LOGPROB_TOL, tag + " logprobs",
                        "max |d| %.3g over %d of %d" % (worst, len(lps), len(want)))
                r.check(last is not None and last.finish_reason == gen.FINISH_REASON_LENGTH
                        and last.usage.prompt_tokens == len(exp[name + ".prompt_ids"][2])
                        and last.usage.completion_tokens == len(want), tag + " finish + usage",
                        str(last).replace("\n", " ")[:300] if last else "no message")
    finally:
        status = cl.stop()
        r.check(status == 0, "cluster stops cleanly on SIGTERM", "exit %s\n%s" % (status, cl.read_log()[-2000:]))
    r.finish()


if __name__ == "__main__":
    main()
