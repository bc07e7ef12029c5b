"""placement.py --model DIR [--shards S --replicas R --max-experts-per-shard K --requests N
--prompt P --new T --rounds K] - expert-tier throughput of a loopback cluster laid out two
ways with the same replica count: the contiguous split (`mx cluster`'s) and the placement
`mx plan-experts` proposes from the load the first layout measured (`mx expert-stats`). Both
layouts stay up and take turns serving the same N greedy streams (random prompts, seeded),
K rounds in ABBA order, so each ratio compares bursts run next to each other. Prints per
layout the generated tokens/s and expert rows/s (wall clock), the expert tier's capacity (rows
per CPU second of the busiest replica: its throughput when each replica has its own cores,
which wall time on a shared machine does not show) and the busiest replica's rows against the
mean (measured by the shards, and as the planner predicted), then the median ratios.
bench_placement.sh runs it on a model made with `mx make-model --gate-skew`."""
import argparse
import concurrent.futures
import json
import os
import random
import sys
import time

import grpc

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests", "cluster"))
import cluster_util as u  # noqa: E402
import placement_util as pu  # noqa: E402


def stream(gateway, gen, prompt, new):
    with grpc.insecure_channel(gateway) as ch:
        generate, _, _ = u.generation_stubs(ch, gen)
        req = gen.GenerateRequest(prompt_ids=prompt)
        req.sampling.temperature = 0
        req.sampling.max_new_tokens = new
        req.sampling.ignore_eos = True
        n = 0
        for msg in generate(req, timeout=600):
            n += len(msg.token_ids)
        return n


def served(stats):
    return {sh["address"]: sh["rows_total"] for sh in stats["expert_shards"]}


def cpu_seconds(pid):
    """User + system CPU time of a process (Linux /proc)."""
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def burst(pc, prompts, new, gen):
    """All streams at once on one layout: tokens/s and rows/s (wall clock), rows per replica,
    and the CPU seconds of the busiest expert replica. Rows per busiest-replica CPU second is
    the expert tier's capacity when every replica has cores of its own; unlike wall time it
    does not depend on what else runs on this machine."""
    experts = [(addr, p.pid) for name, p, addr in pc.procs if name.startswith("expert-")]
    before = served(pc.expert_stats())
    cpu0 = {addr: cpu_seconds(pid) for addr, pid in experts}
    t0 = time.time()
    with concurrent.futures.ThreadPoolExecutor(max_workers=len(prompts)) as pool:
        tokens = sum(pool.map(lambda p: stream(pc.gateway, gen, p, new), prompts))
    wall = time.time() - t0
    cpu = {addr: cpu_seconds(pid) - cpu0[addr] for addr, pid in experts}
    after = served(pc.expert_stats())
    rows = {addr: after[addr] - before.get(addr, 0) for addr in after}
    total = sum(rows.values())
    mean = total / len(rows)
    busiest = max(cpu.values())
    return {"tokens_per_s": tokens / wall, "rows_per_s": total / wall,
            "max_over_mean": max(rows.values()) / mean if mean else 1.0,
            "busiest_cpu_s": busiest, "capacity": total / busiest if busiest > 0 else 0.0}


def median(xs):
    xs = sorted(xs)
    return xs[len(xs) // 2] if len(xs) % 2 else (xs[len(xs) // 2 - 1] + xs[len(xs) // 2]) / 2


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--shards", type=int, default=2)
    ap.add_argument("--replicas", type=int, default=2)
    ap.add_argument("--max-experts-per-shard", type=int, default=0)
    ap.add_argument("--requests", type=int, default=8)
    ap.add_argument("--prompt", type=int, default=256)
    ap.add_argument("--new", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    gen, _, _ = u.load_stubs()
    cfg = json.load(open(os.path.join(args.model, "config.json")))
    E, vocab = cfg["num_local_experts"], cfg["vocab_size"]
    rng = random.Random(7)
    prompts = [[rng.randrange(3, vocab) for _ in range(args.prompt)] for _ in range(args.requests)]
    # both layouts stay up and take turns (ABBA...), so each ratio compares bursts run next to
    # each other on this shared machine
    mk = lambda shards: pu.PlacedCluster(args.model, shards, stages=1, threads=1,  # noqa: E731
                                         max_batch=max(16, len(prompts)))
    a = mk(pu.contiguous(E, args.shards, args.replicas))
    b = None
    try:
        burst(a, prompts[:1], 2, gen)  # warm-up; its load is part of the stats planned from
        burst(a, prompts, args.new, gen)  # the load the plan is made from
        plan = pu.plan_experts(a.expert_stats(), args.shards, args.replicas, args.max_experts_per_shard)
        layout = [{"experts": sh["experts"], "replicas": sh["replicas"]} for sh in plan["plan"]]
        print("plan from the contiguous layout's expert-stats: %s" % json.dumps(layout))
        b = mk(layout)
        burst(b, prompts[:1], 2, gen)
        res = {"contiguous": [], "planned": []}
        ratios = []
        for rnd in range(args.rounds):
            order = [("planned", b), ("contiguous", a)] if rnd % 2 == 0 else [("contiguous", a), ("planned", b)]
            for name, pc in order:
                res[name].append(burst(pc, prompts, args.new, gen))
            c, p = res["contiguous"][-1], res["planned"][-1]
            ratios.append((p["tokens_per_s"] / c["tokens_per_s"], p["capacity"] / c["capacity"]))
            print("round %d: contiguous %.2f tok/s, busiest replica %.2f CPU s; planned %.2f tok/s, %.2f CPU s; "
                  "ratios: tokens/s %.3f, capacity %.3f"
                  % (rnd, c["tokens_per_s"], c["busiest_cpu_s"], p["tokens_per_s"], p["busiest_cpu_s"], *ratios[-1]))
            sys.stdout.flush()
    finally:
        a.stop()
        if b:
            b.stop()
    print("| layout | shards | replicas | tokens/s | expert rows/s | rows per busiest-replica CPU s |"
          " busiest replica / mean rows, measured | predicted by the planner |")
    print("|---|---|---|---|---|---|---|---|")
    for name in ("contiguous", "planned"):
        rs = res[name]
        print("| %s | %d | %d | %.2f | %.0f | %.0f | %.3f | %.3f |"
              % (name, args.shards, args.replicas, median([r["tokens_per_s"] for r in rs]),
                 median([r["rows_per_s"] for r in rs]), median([r["capacity"] for r in rs]),
                 median([r["max_over_mean"] for r in rs]), plan[name]["max_over_mean"]))
    print("(medians of %d bursts per layout)" % len(res["planned"]))
    print("planned / contiguous, median of %d paired rounds: tokens/s %.3f (%s); expert capacity %.3f (%s)"
          % (args.rounds, median([x[0] for x in ratios]), ", ".join("%.3f" % x[0] for x in ratios),
             median([x[1] for x in ratios]), ", ".join("%.3f" % x[1] for x in ratios)))


if __name__ == "__main__":
    main()
