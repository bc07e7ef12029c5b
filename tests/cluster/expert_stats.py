"""expert_stats.py FIXTURE_DIR - expert load statistics and placement against a golden fixture.
1. A real `mx cluster` (2 stages, 2 shards, shard 0 with 2 replicas) runs every case greedily
   (4 requests in flight); `mx expert-stats` then reads the stages' and shards' counters. The
   tokens routed per (layer, expert) must equal the fixture's expert_use_per_layer (counted by
   the reference implementation over the same tokens), the shards' served rows must add up to
   the same, and what the stages sent each replica must be what that replica served.
2. `mx plan-experts` on those stats: busiest replica no worse than the contiguous split, every
   expert placed, replicas add up; its libconfig block passes `attention-svc --check-config`.
3. A cluster laid out by that plan (with an expert held by two shards) runs every case again: the
   greedy tokens must still be the fixture's, the counters must again match, and each shard
   serves only experts it holds, with an expert held twice served by both holders.
Prints 'N passed, N failed' last."""
import concurrent.futures
import json
import os
import subprocess
import sys
import tempfile

import grpc

sys.path.insert(0, os.path.dirname(__file__))
import cluster_util as u
import placement_util as pu


def run_case(gateway, gen, prompt, steps):
    with grpc.insecure_channel(gateway) as ch:
        generate, _, _ = u.generation_stubs(ch, gen)
        req = gen.GenerateRequest(prompt_ids=prompt)
        req.sampling.temperature = 0
        req.sampling.max_new_tokens = steps + 1
        req.sampling.ignore_eos = True
        ids = []
        for msg in generate(req, timeout=120):
            ids.extend(msg.token_ids)
        return ids


def run_all(r, tag, gateway, gen, cases, exp):
    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        jobs = [(c["name"], pool.submit(run_case, gateway, gen, exp[c["name"] + ".prompt_ids"][2], c["steps"]))
                for c in cases]
        for name, fut in jobs:
            try:
                ids = fut.result()
            except grpc.RpcError as e:
                r.check(False, "%s %s" % (tag, name), "rpc failed: %s %s" % (e.code(), e.details()))
                continue
            want = exp[name + ".greedy_ids"][2]
            r.check(ids == want, "%s %s greedy ids" % (tag, name), "got %s want %s" % (ids, want))


def check_counts(r, tag, stats, use):
    L, E = len(use), len(use[0])
    got = stats["expert_tokens"]
    r.check(got == use, "%s: stages' routed tokens per (layer, expert) = the fixture's expert use" % tag,
            "got %s want %s" % (got, use))
    served = [[0] * E for _ in range(L)]
    for sh in stats["expert_shards"]:
        for l, per in sh["expert_rows"].items():
            for e, n in per.items():
                served[int(l)][int(e)] += n
    r.check(served == use, "%s: shards' served rows per (layer, expert) = the fixture's expert use" % tag,
            "got %s want %s" % (served, use))
    sent = {}
    for sh in stats["shards"]:
        for rep in sh["replicas"]:
            sent[rep["address"]] = (rep["calls"], rep["rows"])
    answered = {sh["address"]: (sh["calls_total"], sh["rows_total"]) for sh in stats["expert_shards"]}
    r.check(sent == answered, "%s: calls and rows sent per replica = served by that replica" % tag,
            "sent %s served %s" % (sent, answered))
    r.check(all(sh["in_flight"] == 0 for sh in stats["expert_shards"]), "%s: nothing in flight when idle" % tag)


def main():
    fixture = sys.argv[1]
    name = os.path.basename(fixture.rstrip("/"))
    gen, _, _ = u.load_stubs()
    r = u.Results()
    meta = json.load(open(os.path.join(fixture, "cases.json")))
    cases = meta["cases"]
    use = meta["generation"]["expert_use_per_layer"]
    E = len(use[0])
    exp = u.read_safetensors(os.path.join(fixture, "expected.safetensors"))

    # 1. the contiguous split of `mx cluster`
    cl = u.Cluster(fixture, stages=2, shards=2, replicas="2,1", extra=["--kv-dtype", "f32"])
    stats = None
    try:
        run_all(r, name + " mx cluster", cl.gateway, gen, cases, exp)
        stats = pu.expert_stats(cl.stages, [a for a, _ in cl.experts.values()])
        check_counts(r, name + " mx cluster", stats, use)
    finally:
        status = cl.stop()
        r.check(status == 0, name + ": cluster stops cleanly", "exit %s" % status)
    if stats is None:
        r.finish()

    # 2. the plan: 2 shards with one spare slot each, 3 replicas
    K = (E + 1) // 2 + 1
    plan = pu.plan_experts(stats, 2, 3, K)
    shards = plan["plan"]
    placed = sorted({e for sh in shards for e in sh["experts"]})
    r.check(placed == list(range(E)), name + ": plan places every expert", str(shards))
    r.check(sum(sh["replicas"] for sh in shards) == 3 and all(len(sh["experts"]) <= K for sh in shards),
            name + ": plan has 3 replicas and at most %d experts per shard" % K, str(shards))
    r.check(plan["planned"]["max_per_replica"] <= plan["contiguous"]["max_per_replica"] + 1e-9,
            name + ": planned busiest replica %.4g x mean <= contiguous %.4g x"
            % (plan["planned"]["max_over_mean"], plan["contiguous"]["max_over_mean"]), json.dumps(plan)[:400])
    block = pu.plan_experts(stats, 2, 3, K, fmt="--config")
    with tempfile.NamedTemporaryFile("w", suffix=".cfg", delete=False) as f:
        f.write('stage = { listen = "127.0.0.1:0"; model = "%s"; index = 0; count = 1; layer_begin = 0; '
                'layer_end = %d; };\n%s' % (fixture, len(use), block))
        path = f.name
    out = subprocess.run([os.path.join(u.ROOT, u.BUILD, "bin", "attention-svc"), "--check-config", path],
                         capture_output=True, text=True, timeout=30)
    os.unlink(path)
    r.check(out.returncode == 0 and "config OK" in out.stdout + out.stderr,
            name + ": the plan's experts block passes attention-svc --check-config", out.stdout + out.stderr + block)

    # 3. a cluster laid out by the plan; when the plan holds no expert twice (the fixtures'
    # loads are nearly even), the hottest expert is added to a second shard so that the
    # least-loaded-holder path runs in a real cluster too
    shards = [{"experts": list(sh["experts"]), "replicas": sh["replicas"]} for sh in shards]
    multi = [e for e in range(E) if sum(e in sh["experts"] for sh in shards) > 1]
    if not multi:
        hot = max(range(E), key=lambda e: plan["load"][e])
        other = next(sh for sh in shards if hot not in sh["experts"])
        other["experts"] = sorted(other["experts"] + [hot])
        multi = [hot]
    pc = pu.PlacedCluster(fixture, shards, stages=2, kv_dtype="f32")
    try:
        run_all(r, name + " planned", pc.gateway, gen, cases, exp)
        st2 = pc.expert_stats()
        check_counts(r, name + " planned", st2, use)
        by_addr = {sh["address"]: sh for sh in st2["expert_shards"]}
        ok, used_by = True, {e: set() for e in multi}
        for i, addrs in enumerate(pc.shard_addrs):
            for a in addrs:
                for l, per in by_addr[a]["expert_rows"].items():
                    for e in per:
                        ok = ok and int(e) in shards[i]["experts"]
                        if int(e) in used_by:
                            used_by[int(e)].add(i)
        r.check(ok, name + " planned: each shard served only experts it holds")
        r.check(len(multi) > 0 and all(len(s) > 1 for s in used_by.values()),
                name + " planned: experts held by two shards (%s) were served by both" % multi, str(used_by))
    finally:
        status = pc.stop()
        r.check(status == 0, name + " planned: cluster stops cleanly", "exit %s" % status)
    r.finish()


if __name__ == "__main__":
    main()
