"""client_test.py - an independent client (Python grpcio + protobuf) against an mx RPC
server (tests/rpc/echo_server.c): health Check/Watch, raw-bytes unary and streaming calls,
unknown method, protobuf interop with mx.v1.Generation, malformed input, size limit.
Usage: client_test.py PORT PYTHON_STUB_DIR. Prints PASS/FAIL lines and a count line."""
import importlib.util
import os
import sys
import time

import grpc

sys.path.insert(0, sys.argv[2])
# Generated at test time; loaded by path because the package name "grpc" is grpcio's.
_spec = importlib.util.spec_from_file_location(
    "health_pb2", os.path.join(sys.argv[2], "grpc", "health", "v1", "health_pb2.py"))
health_pb2 = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(health_pb2)
from mx.v1 import generation_pb2  # noqa: E402

ADDR = "127.0.0.1:" + sys.argv[1]
channel = grpc.insecure_channel(ADDR, options=[("grpc.max_send_message_length", 8 << 20)])
grpc.channel_ready_future(channel).result(timeout=10)
results = []


def case(fn):
    try:
        fn()
        results.append(True)
        print("PASS", fn.__name__)
    except Exception as e:  # report and go on with the next case
        results.append(False)
        print("FAIL", fn.__name__, repr(e))
    return fn


def raw_unary(method):
    return channel.unary_unary(method, request_serializer=None, response_deserializer=None)


def expect_code(fn, code):
    try:
        fn()
    except grpc.RpcError as e:
        assert e.code() == code, "got %s: %s" % (e.code(), e.details())
        return e
    raise AssertionError("call succeeded, expected %s" % code)


check = channel.unary_unary("/grpc.health.v1.Health/Check",
                            request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
                            response_deserializer=health_pb2.HealthCheckResponse.FromString)
watch = channel.unary_stream("/grpc.health.v1.Health/Watch",
                             request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
                             response_deserializer=health_pb2.HealthCheckResponse.FromString)
R = health_pb2.HealthCheckResponse


@case
def health_check_server():
    r = check(health_pb2.HealthCheckRequest(service=""), timeout=5)
    assert r.status == R.SERVING, r


@case
def health_check_unknown_service_is_not_found():
    expect_code(lambda: check(health_pb2.HealthCheckRequest(service="nope"), timeout=5),
                grpc.StatusCode.NOT_FOUND)


@case
def health_watch_sees_changes():
    stream = watch(health_pb2.HealthCheckRequest(service="mx.v1.Generation"), timeout=10)
    assert next(stream).status == R.SERVICE_UNKNOWN
    raw_unary("/mx.test.Echo/SetHealth")(b"mx.v1.Generation=SERVING", timeout=5)
    assert next(stream).status == R.SERVING
    raw_unary("/mx.test.Echo/SetHealth")(b"mx.v1.Generation=NOT_SERVING", timeout=5)
    assert next(stream).status == R.NOT_SERVING
    stream.cancel()
    r = check(health_pb2.HealthCheckRequest(service="mx.v1.Generation"), timeout=5)
    assert r.status == R.NOT_SERVING


@case
def raw_unary_echo():
    data = os.urandom(100000)
    assert raw_unary("/mx.test.Echo/Echo")(data, timeout=5) == data


@case
def raw_server_stream():
    call = channel.unary_stream("/mx.test.Echo/Chunks", request_serializer=None,
                                response_deserializer=None)
    assert list(call(b"abcdefgh", timeout=5)) == [b"abc", b"def", b"gh"]


@case
def unknown_method_is_unimplemented_quickly():
    t0 = time.monotonic()
    expect_code(lambda: raw_unary("/mx.test.Echo/Nope")(b"x", timeout=10),
                grpc.StatusCode.UNIMPLEMENTED)
    assert time.monotonic() - t0 < 2


@case
def generation_protobuf_interop():
    complete = channel.unary_unary(
        "/mx.v1.Generation/Complete",
        request_serializer=generation_pb2.GenerateRequest.SerializeToString,
        response_deserializer=generation_pb2.CompleteResponse.FromString)
    req = generation_pb2.GenerateRequest(prompt_ids=[5, 300, 70000], prompt="héllo",
                                         request_id="py-1")
    req.sampling.temperature = 0.7
    req.sampling.stop.append("\n")
    req.messages.add(role="user", text="hi")
    r = complete(req, timeout=5)
    assert list(r.token_ids) == [70000, 300, 5], r
    assert r.text == "héllo" and r.request_id == "py-1"
    assert r.finish_reason == generation_pb2.FINISH_REASON_LENGTH
    assert r.usage.prompt_tokens == 3


@case
def malformed_protobuf_is_invalid_argument():
    e = expect_code(lambda: raw_unary("/mx.v1.Generation/Complete")(b"\x0a\x64\x01", timeout=5),
                    grpc.StatusCode.INVALID_ARGUMENT)
    assert "malformed" in e.details(), e.details()


@case
def oversized_message_is_resource_exhausted():
    expect_code(lambda: raw_unary("/mx.test.Echo/Echo")(b"\0" * (2 << 20), timeout=5),
                grpc.StatusCode.RESOURCE_EXHAUSTED)


channel.close()
print("%d passed, %d failed" % (results.count(True), results.count(False)))
sys.exit(0 if all(results) else 1)
