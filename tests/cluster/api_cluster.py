"""api_cluster.py FIXTURE_DIR - the public API of a real loopback cluster seen by an
independent Python grpcio client: grpc health on every service, ModelInfo, Complete vs
Generate, bad input (each rejected with the right code and a message naming the field, the
cluster serving afterwards), client cancellation and deadlines (stage state released on
every stage, checked through AttentionStage/Info), and killing one replica of the replicated
expert shard while requests stream (all still complete with the same tokens).
Prints 'N passed, N failed' last."""
import concurrent.futures
import json
import os
import signal
import sys
import threading
import time

import grpc

sys.path.insert(0, os.path.dirname(__file__))
import cluster_util as u

gen, stage_pb, health_pb = u.load_stubs()
r = u.Results()


def health(addr, service=""):
    with grpc.insecure_channel(addr) as ch:
        check = ch.unary_unary("/grpc.health.v1.Health/Check",
                               request_serializer=health_pb.HealthCheckRequest.SerializeToString,
                               response_deserializer=health_pb.HealthCheckResponse.FromString)
        return check(health_pb.HealthCheckRequest(service=service), timeout=5).status


def stage_live(addr):
    with grpc.insecure_channel(addr) as ch:
        info = ch.unary_unary("/mx.internal.v1.AttentionStage/Info",
                              request_serializer=stage_pb.StageInfoRequest.SerializeToString,
                              response_deserializer=stage_pb.StageInfoResponse.FromString)
        return info(stage_pb.StageInfoRequest(), timeout=5).live_sequences


def wait_released(cl, timeout=5.0):
    end = time.time() + timeout
    while time.time() < end:
        live = [stage_live(a) for a in cl.stages]
        if all(n == 0 for n in live):
            return live
        time.sleep(0.05)
    return live


def request(prompt, n, **sampling):
    req = gen.GenerateRequest(prompt_ids=prompt)
    req.sampling.max_new_tokens = n
    req.sampling.ignore_eos = True
    for k, v in sampling.items():
        setattr(req.sampling, k, v)
    return req


def expect_error(call, req, code, needle, name):
    try:
        out = call(req, timeout=10)
        if hasattr(out, "__iter__"):
            list(out)
        r.check(False, name, "no error")
    except grpc.RpcError as e:
        r.check(e.code() == code and needle in (e.details() or ""), name,
                "got %s %r, want %s mentioning %r" % (e.code(), e.details(), code, needle))


def test_health_and_info(cl, generate, complete, info, vocab):
    r.check(health(cl.gateway) == health_pb.HealthCheckResponse.SERVING, "gateway health SERVING")
    r.check(health(cl.gateway, "mx.v1.Generation") == health_pb.HealthCheckResponse.SERVING,
            "gateway mx.v1.Generation SERVING")
    r.check(all(health(a) == health_pb.HealthCheckResponse.SERVING for a in cl.stages), "stages SERVING")
    r.check(all(health(a) == health_pb.HealthCheckResponse.SERVING for a, _ in cl.experts.values()),
            "expert replicas SERVING")
    mi = info(gen.ModelInfoRequest(), timeout=5)
    r.check(mi.vocab_size == vocab and mi.num_stages == 2 and mi.num_expert_shards == 2, "ModelInfo",
            str(mi).replace("\n", " "))
    streamed = [t for m in generate(request([1, 2, 3], 10), timeout=30) for t in m.token_ids]
    whole = complete(request([1, 2, 3], 10), timeout=30)
    r.check(len(streamed) == 10 and list(whole.token_ids) == streamed and
            whole.finish_reason == gen.FINISH_REASON_LENGTH, "Complete equals Generate",
            "%s vs %s" % (streamed, list(whole.token_ids)))
    stop_at = streamed[3]
    req = request([1, 2, 3], 10)
    req.sampling.stop_token_ids.append(stop_at)
    got = complete(req, timeout=30)
    first = streamed.index(stop_at)
    r.check(list(got.token_ids) == streamed[:first + 1] and got.finish_reason == gen.FINISH_REASON_STOP,
            "stop_token_ids ends with FINISH_REASON_STOP", str(got).replace("\n", " ")[:200])


def test_bad_input(cl, ch, generate, complete, vocab):
    INV = grpc.StatusCode.INVALID_ARGUMENT
    expect_error(generate, request([1, vocab], 4), INV, "prompt_ids[1]", "token id >= vocab")
    expect_error(generate, request([], 4), INV, "prompt", "empty prompt")
    expect_error(generate, request([1], 4, temperature=-1.0), INV, "sampling.temperature", "negative temperature")
    expect_error(generate, request([1], 4, temperature=float("nan")), INV, "sampling.temperature", "NaN temperature")
    expect_error(generate, request([1], 4, top_p=-0.5), INV, "sampling.top_p", "negative top_p")
    expect_error(complete, request([1], 4, top_p=float("nan")), INV, "sampling.top_p", "NaN top_p (Complete)")
    expect_error(generate, request([1], 10 ** 7), INV, "sampling.max_new_tokens", "max_new_tokens over the limit")
    big = gen.GenerateRequest(prompt_ids=[1], request_id="x" * (33 << 20))  # over the 32 MiB default
    expect_error(generate, big, grpc.StatusCode.RESOURCE_EXHAUSTED, "larger than max", "message over the size limit")
    raw = ch.unary_stream("/mx.v1.Generation/Generate")  # bytes in, bytes out
    expect_error(raw, b"\x0a\xff\xff\xff\xff\x0f\x01", INV, "malformed", "malformed protobuf")
    got = [t for m in generate(request([5, 6, 7], 6), timeout=30) for t in m.token_ids]
    r.check(len(got) == 6, "serving after bad input", str(got))
    r.check(wait_released(cl) == [0, 0], "no stage state left after bad input")


def test_cancel_and_deadline(cl, generate):
    call = generate(request([1, 2, 3, 4], 4000), timeout=60)
    seen = 0
    for m in call:
        seen += len(m.token_ids)
        if seen >= 3:
            break
    live_during = [stage_live(a) for a in cl.stages]
    call.cancel()
    r.check(live_during == [1, 1], "a streaming request holds state on both stages", str(live_during))
    live = wait_released(cl)
    r.check(live == [0, 0], "cancel releases the sequence on every stage", str(live))
    try:
        # 4000 tokens take the tiny model about 0.5 s here: a 0.1 s deadline ends the call
        # mid-stream with room to spare on faster machines
        for _ in generate(request([1, 2, 3, 4], 4000), timeout=0.1):
            pass
        r.check(False, "deadline", "stream finished before its deadline")
    except grpc.RpcError as e:
        r.check(e.code() == grpc.StatusCode.DEADLINE_EXCEEDED, "deadline ends the call", str(e.code()))
    live = wait_released(cl)
    r.check(live == [0, 0], "deadline releases the sequence on every stage", str(live))


def test_stage_direct(cl):
    """AttentionStage checks its input and its live-sequence cap (max_sequences = 144 here)."""
    with grpc.insecure_channel(cl.stages[0]) as c0, grpc.insecure_channel(cl.stages[1]) as c1:
        run0 = c0.unary_unary("/mx.internal.v1.AttentionStage/RunBatch",
                              request_serializer=stage_pb.RunBatchRequest.SerializeToString,
                              response_deserializer=stage_pb.RunBatchResponse.FromString)
        run1 = c1.unary_unary("/mx.internal.v1.AttentionStage/RunBatch",
                              request_serializer=stage_pb.RunBatchRequest.SerializeToString,
                              response_deserializer=stage_pb.RunBatchResponse.FromString)
        cap = 144
        over = stage_pb.RunBatchRequest(batch_id=1, sequences=[
            stage_pb.SequenceInput(sequence_id=10 ** 12 + i, start_position=0, token_ids=[1], num_tokens=1)
            for i in range(cap + 1)])
        expect_error(run0, over, grpc.StatusCode.RESOURCE_EXHAUSTED, "max_sequences", "stage live-sequence cap")
        r.check(stage_live(cl.stages[0]) == 0, "a rejected batch leaves no sequence behind")
        ok = run0(stage_pb.RunBatchRequest(batch_id=2, sequences=over.sequences[:cap]), timeout=30)
        r.check(ok.hidden.rows == cap and stage_live(cl.stages[0]) == cap, "stage holds exactly max_sequences")
        expect_error(run0, stage_pb.RunBatchRequest(batch_id=3, sequences=[stage_pb.SequenceInput(
            sequence_id=10 ** 12 + cap, start_position=0, token_ids=[1], num_tokens=1)]),
            grpc.StatusCode.RESOURCE_EXHAUSTED, "max_sequences", "stage full: one more is refused")
        rel = c0.unary_unary("/mx.internal.v1.AttentionStage/Release",
                             request_serializer=stage_pb.ReleaseRequest.SerializeToString,
                             response_deserializer=stage_pb.ReleaseResponse.FromString)
        got = rel(stage_pb.ReleaseRequest(sequence_ids=[q.sequence_id for q in over.sequences]), timeout=10)
        r.check(got.released_sequences == cap and stage_live(cl.stages[0]) == 0, "Release frees them all",
                str(got.released_sequences))
        expect_error(run0, stage_pb.RunBatchRequest(sequences=[stage_pb.SequenceInput(
            sequence_id=7, start_position=5, token_ids=[1], num_tokens=1)]), grpc.StatusCode.NOT_FOUND,
            "not live", "unknown sequence past position 0")
        bad_hidden = stage_pb.RunBatchRequest(sequences=[stage_pb.SequenceInput(sequence_id=8, num_tokens=2)])
        bad_hidden.hidden.dtype = 1
        bad_hidden.hidden.rows = 2
        bad_hidden.hidden.cols = 3
        bad_hidden.hidden.data = b"\0" * 24
        expect_error(run1, bad_hidden, grpc.StatusCode.INVALID_ARGUMENT, "RunBatchRequest.hidden",
                     "hidden of the wrong shape")
        expect_error(run0, stage_pb.RunBatchRequest(sequences=[stage_pb.SequenceInput(
            sequence_id=9, token_ids=[100000], num_tokens=1)]), grpc.StatusCode.INVALID_ARGUMENT,
            "token_ids[0]", "stage token id >= vocab")
        r.check(stage_live(cl.stages[0]) == 0 and stage_live(cl.stages[1]) == 0, "no state left by bad batches")


def test_replica_kill(cl, generate):
    req = request([9, 8, 7, 6, 5], 120)
    want = [t for m in generate(req, timeout=60) for t in m.token_ids]
    started = threading.Event()

    def stream():
        ids = []
        for m in generate(req, timeout=120):
            ids.extend(m.token_ids)
            if len(ids) >= 5:
                started.set()
        return ids

    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        futs = [pool.submit(stream) for _ in range(4)]
        started.wait(30)
        addr, pid = cl.experts["0.1"]
        streaming = not any(f.done() for f in futs)
        os.kill(pid, signal.SIGKILL)
        results = []
        for f in futs:
            try:
                results.append(f.result())
            except grpc.RpcError as e:
                results.append("rpc error %s %s" % (e.code(), e.details()))
    r.check(streaming, "the replica died while the requests were streaming")
    r.check(all(x == want for x in results), "killing a replica mid-stream: every request completes, same tokens",
            "%s vs %s" % (results, want))
    again = [t for m in generate(req, timeout=60) for t in m.token_ids]
    r.check(again == want and cl.alive(), "cluster keeps serving on the surviving replica")


def pid_alive(pid):
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False


def test_child_death(fixture):
    """Without --allow-replica-loss, a dead child stops the whole cluster with a non-zero exit."""
    cl = u.Cluster(fixture, stages=2, shards=2, replicas="1,1")
    _, pid = cl.experts["1.0"]
    os.kill(pid, signal.SIGKILL)
    try:
        status = cl.proc.wait(timeout=20)
    except Exception:
        status = None
        cl.stop()
    others = [p for k, (_, p) in cl.experts.items() if k != "1.0"]
    time.sleep(0.2)
    r.check(status not in (None, 0) and not any(pid_alive(p) for p in others),
            "a dead child stops the cluster with a non-zero exit", "exit %s" % status)


def main():
    fixture = sys.argv[1]
    vocab = json.load(open(os.path.join(fixture, "config.json")))["vocab_size"]
    cl = u.Cluster(fixture, stages=2, shards=2, replicas="2,1", extra=["--allow-replica-loss"])
    try:
        with grpc.insecure_channel(cl.gateway) as ch:
            generate, complete, info = u.generation_stubs(ch, gen)
            for t in (lambda: test_health_and_info(cl, generate, complete, info, vocab),
                      lambda: test_bad_input(cl, ch, generate, complete, vocab),
                      lambda: test_cancel_and_deadline(cl, generate),
                      lambda: test_stage_direct(cl),
                      lambda: test_replica_kill(cl, generate)):
                try:
                    t()
                except Exception as e:  # a crash in one group is a failure, the rest still run
                    r.check(False, "test group", repr(e))
    finally:
        status = cl.stop()
        r.check(status == 0, "cluster stops cleanly on SIGTERM", "exit %s\n%s" % (status, cl.read_log()[-3000:]))
    test_child_death(fixture)
    r.finish()


if __name__ == "__main__":
    main()
