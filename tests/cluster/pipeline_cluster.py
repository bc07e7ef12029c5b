"""pipeline_cluster.py FIXTURE_DIR - chained stages and pipelined micro-batches in a real
loopback cluster (3 chained stages, gateway pipeline_depth 2), seen by an independent
Python grpcio client: 8 concurrent greedy requests give the fixture's tokens; the stages
report their `next` and that two micro-batches were in the pipeline at once; a downstream
failure comes back with the stages named; cancelling requests while batches are in flight
leaves the others' tokens unchanged and frees every stage; bad `next` / pipeline_depth
configs are refused at start-up. Prints 'N passed, N failed' last."""
import concurrent.futures
import os
import subprocess
import sys
import tempfile
import time

import grpc

sys.path.insert(0, os.path.dirname(__file__))
import cluster_util as u

gen, stage_pb, _ = u.load_stubs()
r = u.Results()


def stage_call(addr, method, req, resp_type, timeout=10):
    with grpc.insecure_channel(addr) as ch:
        call = ch.unary_unary("/mx.internal.v1.AttentionStage/" + method, request_serializer=type(req).SerializeToString,
                              response_deserializer=resp_type.FromString)
        return call(req, timeout=timeout)


def stage_info(addr):
    return stage_call(addr, "Info", stage_pb.StageInfoRequest(), stage_pb.StageInfoResponse)


def wait_released(cl, timeout=5.0):
    end = time.time() + timeout
    while True:
        live = [stage_info(a).live_sequences for a in cl.stages]
        if all(n == 0 for n in live) or time.time() > end:
            return live
        time.sleep(0.05)


def greedy(gateway, prompt, n, name=""):
    with grpc.insecure_channel(gateway) as ch:
        generate, _, _ = u.generation_stubs(ch, gen)
        req = gen.GenerateRequest(prompt_ids=prompt, request_id=name)
        req.sampling.temperature = 0
        req.sampling.max_new_tokens = n
        req.sampling.ignore_eos = True
        return [t for m in generate(req, timeout=120) for t in m.token_ids]


def test_golden_concurrent(cl, fixture):
    exp = u.read_safetensors(os.path.join(fixture, "expected.safetensors"))
    import json
    cases = json.load(open(os.path.join(fixture, "cases.json")))["cases"]
    jobs = [cases[i % len(cases)] for i in range(8)]
    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        futs = [pool.submit(greedy, cl.gateway, exp[c["name"] + ".prompt_ids"][2], c["steps"] + 1, c["name"])
                for c in jobs]
        for i, (c, f) in enumerate(zip(jobs, futs)):
            want = exp[c["name"] + ".greedy_ids"][2]
            try:
                got = f.result()
            except grpc.RpcError as e:
                got = "rpc error %s %s" % (e.code(), e.details())
            r.check(got == want, "8 in flight, pipelined: %s#%d greedy ids" % (c["name"], i), "got %s want %s" % (got, want))


def test_stage_info(cl):
    infos = [stage_info(a) for a in cl.stages]
    r.check([i.next for i in infos] == cl.stages[1:] + [""], "each stage names the next one (last: none)",
            str([i.next for i in infos]))
    r.check(infos[0].max_batches_in_flight >= 2, "stage 0 had two micro-batches in the pipeline at once",
            "max_batches_in_flight %d" % infos[0].max_batches_in_flight)
    r.check(infos[0].batches_run > 0 and infos[0].batches_run == infos[1].batches_run == infos[2].batches_run,
            "every batch went through the whole chain", str([i.batches_run for i in infos]))
    r.check(all(i.batches_in_flight == 0 for i in infos), "no batch in flight when idle",
            str([i.batches_in_flight for i in infos]))


def test_downstream_error(cl):
    """Stage 0 knows the sequence, stage 1 does not: the error names both and keeps NOT_FOUND."""
    sid = 10 ** 13 + 1
    first = stage_pb.SequenceInput(sequence_id=sid, start_position=0, token_ids=[1], num_tokens=1)
    stage_call(cl.stages[0], "RunBatch", stage_pb.RunBatchRequest(batch_id=1, sequences=[first]),
               stage_pb.RunBatchResponse)
    nxt = stage_pb.SequenceInput(sequence_id=sid, start_position=1, token_ids=[2], num_tokens=1, sample=True)
    try:
        stage_call(cl.stages[0], "RunBatch", stage_pb.RunBatchRequest(batch_id=2, sequences=[nxt], forward=True),
                   stage_pb.RunBatchResponse)
        r.check(False, "downstream error comes back", "no error")
    except grpc.RpcError as e:
        d = e.details() or ""
        r.check(e.code() == grpc.StatusCode.NOT_FOUND and "stage 0: next stage " + cl.stages[1] in d
                and "not live on stage 1" in d, "downstream error comes back with the stages named",
                "%s %r" % (e.code(), d))
    stage_call(cl.stages[0], "Release", stage_pb.ReleaseRequest(sequence_ids=[sid]), stage_pb.ReleaseResponse)
    r.check(wait_released(cl) == [0, 0, 0], "no state left after the failed forward")


def test_cancel_pipelined(cl):
    short = [([3, 1, 4, 1, 5], 40), ([2, 7, 1, 8], 40), ([9, 9, 8], 40), ([6, 2, 6], 40)]
    want = [greedy(cl.gateway, p, n) for p, n in short]
    before = stage_info(cl.stages[0]).batches_run
    with grpc.insecure_channel(cl.gateway) as ch:
        generate, _, _ = u.generation_stubs(ch, gen)
        longs = []
        for k in range(4):
            req = gen.GenerateRequest(prompt_ids=[1 + k, 2, 3])
            req.sampling.max_new_tokens = 4000
            req.sampling.ignore_eos = True
            longs.append(generate(req, timeout=120))
        with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
            futs = [pool.submit(greedy, cl.gateway, p, n) for p, n in short]
            for call in longs:  # each long request is streaming: its sequence lives on the stages
                seen = 0
                for m in call:
                    seen += len(m.token_ids)
                    if seen >= 3:
                        break
            live = [stage_info(a).live_sequences for a in cl.stages]
            for call in longs:
                call.cancel()
            got = [f.result() for f in futs]
    r.check(all(n >= 4 for n in live), "the cancelled requests held state on every stage", str(live))
    r.check(got == want, "requests in flight beside cancelled ones keep their tokens", "%s vs %s" % (got, want))
    r.check(stage_info(cl.stages[0]).batches_run > before, "batches ran meanwhile")
    live = wait_released(cl)
    r.check(live == [0, 0, 0], "cancelling while pipelined frees the state on every stage", str(live))


def run_expect_refusal(binary, cfg_text, needle, name):
    with tempfile.NamedTemporaryFile("w", suffix=".cfg", delete=False) as f:
        f.write(cfg_text)
        path = f.name
    try:
        p = subprocess.run([os.path.join(u.ROOT, u.BUILD, "bin", binary), "--config", path], capture_output=True,
                           text=True, timeout=30)
        r.check(p.returncode != 0 and needle in p.stderr, name, "exit %d: %s" % (p.returncode, p.stderr[-300:]))
    finally:
        os.unlink(path)


def test_bad_configs(fixture):
    run_expect_refusal("attention-svc", 'stage = { listen = "127.0.0.1:0"; model = "%s"; index = 1; count = 2;\n'
                       'layer_begin = 4; layer_end = 8; next = "127.0.0.1:1"; };\n' % fixture,
                       "stage.next is set but stage 1 is the last", "stage.next on the last stage is refused")
    run_expect_refusal("attention-svc", 'stage = { listen = "127.0.0.1:0"; model = "%s"; index = 0; count = 2;\n'
                       'layer_begin = 0; layer_end = 4; next = "nowhere"; };\n' % fixture,
                       "stage.next = \"nowhere\" is not a \"host:port\"", "a stage.next without a port is refused")
    run_expect_refusal("gateway", 'gateway = { listen = "127.0.0.1:0"; model = "%s"; stages = ["127.0.0.1:1"];\n'
                       'pipeline_depth = 0; };\n' % fixture, "`gateway.pipeline_depth`: 0 is out of range [1, 64]",
                       "gateway.pipeline_depth 0 is refused")


def main():
    fixture = sys.argv[1]
    cl = u.Cluster(fixture, stages=3, shards=2, replicas="1,1", extra=["--pipeline-depth", "2"])
    try:
        for t in (lambda: test_golden_concurrent(cl, fixture), lambda: test_stage_info(cl),
                  lambda: test_downstream_error(cl), lambda: test_cancel_pipelined(cl)):
            try:
                t()
            except Exception as e:  # a crash in one group is a failure, the rest still run
                r.check(False, "test group", repr(e))
    finally:
        status = cl.stop()
        r.check(status == 0, "cluster stops cleanly on SIGTERM", "exit %s\n%s" % (status, cl.read_log()[-3000:]))
    test_bad_configs(fixture)
    r.finish()


if __name__ == "__main__":
    main()
