"""text_cluster.py - text in and out of a real loopback cluster, seen by an independent Python
grpcio client: Generate with chat messages (with and without tools) and with prompt text,
streamed text checked against Detokenize and against @huggingface/tokenizers decoding the same
ids, the chat prompt's ids against @huggingface/jinja + @huggingface/tokenizers, stop strings
that span token boundaries, bad input, and `mx client --prompt`. The model is a random tiny one
written by `mx make-model` (with its small tokenizer). Prints 'N passed, N failed[, N skipped]'."""
import json
import os
import shutil
import subprocess
import sys
import tempfile

import grpc

sys.path.insert(0, os.path.dirname(__file__))
import cluster_util as u

gen, _stage_pb, _health_pb = u.load_stubs()
r = u.Results()
skipped = 0
CACHE = os.path.join(u.ROOT, "tests", ".cache", "tokenizer-node")
TEMPLATE = os.path.join(u.ROOT, "tests", "tokenizer", "templates", "minimax-text-01.jinja")
TOOLS = [{"type": "function", "function": {"name": "get_current_weather", "description": "Get the weather",
                                           "parameters": {"type": "object", "properties": {
                                               "location": {"type": "string"}}, "required": ["location"]}}}]


def node_ready():
    """The JS reference packages, installed like tests/suites/tokenizer_ref.sh does."""
    if not shutil.which("node") or not shutil.which("npm"):
        return False
    lock = os.path.join(u.ROOT, "tests", "tokenizer", "package-lock.json")
    os.makedirs(CACHE, exist_ok=True)
    have = os.path.join(CACHE, "package-lock.json")
    same = os.path.exists(have) and open(have, "rb").read() == open(lock, "rb").read()
    if not same or not os.path.isdir(os.path.join(CACHE, "node_modules")):
        for f in ("package.json", "package-lock.json"):
            shutil.copy(os.path.join(u.ROOT, "tests", "tokenizer", f), CACHE)
        try:
            subprocess.run(["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=CACHE, timeout=300,
                           check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        except (subprocess.SubprocessError, OSError):
            os.remove(have)
            return False
    shutil.copy(os.path.join(os.path.dirname(__file__), "ref_text.mjs"), CACHE)
    return True


def reference(tokenizer_json, jobs):
    out = subprocess.run(["node", os.path.join(CACHE, "ref_text.mjs"), tokenizer_json, TEMPLATE],
                         input=json.dumps(jobs), capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        raise RuntimeError(out.stderr)
    return json.loads(out.stdout)


def chat_msg(role, text, as_parts=True):
    m = gen.ChatMessage(role=role)
    if as_parts:
        m.parts.parts.add(type="text", text=text)
    else:
        m.text = text
    return m


def stream(generate, req):
    ids, pieces, last = [], [], None
    for m in generate(req, timeout=60):
        ids += list(m.token_ids)
        pieces.append(m.text)
        last = m
    return ids, pieces, last


def greedy(req, n):
    req.sampling.max_new_tokens = n
    req.sampling.ignore_eos = True
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


def test_no_tokenizer(fixture):
    """A model dir without tokenizer.json: ids still work, text features name the tokenizer."""
    cl = u.Cluster(fixture, stages=1, shards=1, replicas="1")
    try:
        with grpc.insecure_channel(cl.gateway) as ch:
            generate, complete, info = u.generation_stubs(ch, gen)
            tokenize = ch.unary_unary("/mx.v1.Generation/Tokenize", request_serializer=gen.TokenizeRequest.SerializeToString,
                                      response_deserializer=gen.TokenizeResponse.FromString)
            UNI = grpc.StatusCode.UNIMPLEMENTED
            expect_error(generate, gen.GenerateRequest(prompt="hi"), UNI, "tokenizer", "no tokenizer: prompt refused")
            expect_error(tokenize, gen.TokenizeRequest(text="hi"), UNI, "tokenizer", "no tokenizer: Tokenize refused")
            out = complete(greedy(gen.GenerateRequest(prompt_ids=[1, 2, 3]), 3), timeout=30)
            r.check(len(out.token_ids) == 3 and out.text == "" and not info(gen.ModelInfoRequest()).chat_template_available,
                    "no tokenizer: prompt_ids still work")
    finally:
        cl.stop()


def main():
    global skipped
    work = tempfile.mkdtemp(prefix="mx-text-")
    model = os.path.join(work, "m")
    subprocess.run([u.MX, "make-model", "--preset", "tiny", "--out", model], check=True, stdout=subprocess.DEVNULL)
    tok_json = os.path.join(model, "tokenizer.json")
    tj = json.load(open(tok_json))
    defined = set(tj["model"]["vocab"].values()) | {a["id"] for a in tj["added_tokens"]}
    have_node = node_ready()
    if not have_node:
        print("SKIP JS reference checks: node/npm or the npm registry unavailable")
    cl = u.Cluster(model, stages=2, shards=2, replicas="1,1")
    try:
        with grpc.insecure_channel(cl.gateway) as ch:
            generate, complete, info = u.generation_stubs(ch, gen)
            tokenize = ch.unary_unary("/mx.v1.Generation/Tokenize", request_serializer=gen.TokenizeRequest.SerializeToString,
                                      response_deserializer=gen.TokenizeResponse.FromString)
            detok = ch.unary_unary("/mx.v1.Generation/Detokenize",
                                   request_serializer=gen.DetokenizeRequest.SerializeToString,
                                   response_deserializer=gen.DetokenizeResponse.FromString)
            r.check(info(gen.ModelInfoRequest(), timeout=5).chat_template_available, "ModelInfo: chat template available")
            jobs, expect = [], []

            # ---- chat: system + user, and with tools ----
            chats = [
                ("chat system+user", [chat_msg("system", "You are a helpful assistant."),
                                      chat_msg("user", "What is the weather like in Shanghai?", as_parts=False)], None),
                ("chat with tools", [chat_msg("user", "Weather in Beijing?")], TOOLS),
            ]
            for name, msgs, tools in chats:
                req = greedy(gen.GenerateRequest(messages=msgs, add_generation_prompt=True,
                                                 tools_json=json.dumps(tools) if tools else ""), 40)
                ids, pieces, last = stream(generate, req)
                text = "".join(pieces)
                known = [i for i in ids if i in defined]
                whole = detok(gen.DetokenizeRequest(token_ids=known, skip_special_tokens=True), timeout=10).text
                r.check(len(ids) == 40 and text == whole, name + ": streamed text == Detokenize(streamed ids)",
                        "%r vs %r" % (text, whole))
                r.check(all(p.encode("utf-8", "strict") is not None for p in pieces) and
                        complete(req, timeout=60).text == text, name + ": Complete returns the same text")
                tk = tokenize(gen.TokenizeRequest(messages=msgs, add_generation_prompt=True,
                                                  tools_json=json.dumps(tools) if tools else ""), timeout=10)
                r.check(last.usage.prompt_tokens == len(tk.token_ids) and len(tk.pieces) == len(tk.token_ids),
                        name + ": Tokenize(messages) has usage.prompt_tokens ids",
                        "%d vs %d" % (last.usage.prompt_tokens, len(tk.token_ids)))
                by_ids = stream(generate, greedy(gen.GenerateRequest(prompt_ids=list(tk.token_ids)), 40))[0]
                r.check(by_ids == ids, name + ": Generate(messages) used exactly the Tokenize ids")
                ref_msgs = [{"role": m.role, "content": [{"type": "text",
                                                          "text": m.text if m.WhichOneof("content") == "text"
                                                          else m.parts.parts[0].text}]} for m in msgs]
                jobs += [{"op": "decode", "ids": known},
                         {"op": "chat", "messages": ref_msgs, "tools": tools, "add_generation_prompt": True}]
                expect += [(name + ": text == @huggingface/tokenizers decode of the ids", text),
                           (name + ": chat ids == jinja rendering encoded by @huggingface/tokenizers",
                            list(tk.token_ids))]

            # ---- plain prompt text ----
            req = greedy(gen.GenerateRequest(prompt="Hello, world! The quick brown fox"), 48)
            ids, pieces, last = stream(generate, req)
            text = "".join(pieces)
            known = [i for i in ids if i in defined]
            r.check(text == detok(gen.DetokenizeRequest(token_ids=known, skip_special_tokens=True), timeout=10).text,
                    "prompt: streamed text == Detokenize(streamed ids)")
            tk = tokenize(gen.TokenizeRequest(text="Hello, world! The quick brown fox"), timeout=10)
            r.check(last.usage.prompt_tokens == len(tk.token_ids), "prompt: usage.prompt_tokens == Tokenize(text)")
            marker = tokenize(gen.TokenizeRequest(text="a<end_of_sentence>b"), timeout=10)
            r.check(510 not in marker.token_ids and len(marker.token_ids) > 3,
                    "prompt text: special-token text is plain text", str(list(marker.token_ids)))
            jobs += [{"op": "decode", "ids": known}, {"op": "encode", "text": "Hello, world! The quick brown fox"}]
            expect += [("prompt: text == @huggingface/tokenizers decode", text),
                       ("prompt: Tokenize(text) == @huggingface/tokenizers encode", list(tk.token_ids))]

            # ---- stop string spanning a token boundary ----
            bounds = []  # character offsets in `text` where a token's text ends
            for k in range(1, len(ids)):
                pre = detok(gen.DetokenizeRequest(token_ids=[i for i in ids[:k] if i in defined],
                                                  skip_special_tokens=True), timeout=10).text
                if text.startswith(pre):
                    bounds.append(len(pre))
            stop = None
            for b in bounds[len(bounds) // 3:]:
                cand = text[b - 2:b + 2]
                if b >= 2 and len(cand) == 4 and "\ufffd" not in cand and text.find(cand) == b - 2 and b - 2 > 0:
                    stop = cand
                    break
            if r.check(stop is not None, "stop: found a stop string spanning two tokens", repr(text)):
                req2 = greedy(gen.GenerateRequest(prompt="Hello, world! The quick brown fox"), 48)
                req2.sampling.stop.append("@@never@@")
                req2.sampling.stop.append(stop)
                ids2, pieces2, last2 = stream(generate, req2)
                got = "".join(pieces2)
                r.check(last2.finish_reason == gen.FINISH_REASON_STOP and last2.matched_stop == stop,
                        "stop: FINISH_REASON_STOP with matched_stop", str(last2).replace("\n", " ")[:300])
                r.check(got == text[:text.find(stop)], "stop: text is exactly the text before the stop string %r" % stop,
                        "%r vs %r (stop %r)" % (got, text[:text.find(stop)], stop))
                r.check(ids2 == ids[:len(ids2)] and len(ids2) < len(ids), "stop: ids are the sampled ids up to the stop")
                c2 = complete(req2, timeout=60)
                r.check(c2.text == got and list(c2.token_ids) == ids2 and c2.finish_reason == gen.FINISH_REASON_STOP,
                        "stop: Complete agrees")

            # ---- bad input ----
            INV = grpc.StatusCode.INVALID_ARGUMENT
            expect_error(generate, gen.GenerateRequest(prompt="hi", prompt_ids=[1, 2]), INV, "prompt_ids",
                         "both prompt and prompt_ids")
            expect_error(generate, gen.GenerateRequest(prompt="hi", messages=[chat_msg("user", "x")]), INV, "messages",
                         "both prompt and messages")
            expect_error(generate, gen.GenerateRequest(messages=[chat_msg("user", "x")], tools_json="[{"), INV,
                         "tools_json", "invalid tools_json")
            expect_error(generate, gen.GenerateRequest(messages=[chat_msg("user", "x")], tools_json='{"a":1}'), INV,
                         "tools_json", "tools_json not an array")
            expect_error(generate, gen.GenerateRequest(messages=[chat_msg("bogus", "x")]), INV, "messages[0]",
                         "unknown role")
            bad_stop = gen.GenerateRequest(prompt="hi")
            bad_stop.sampling.stop.append("")
            expect_error(generate, bad_stop, INV, "sampling.stop[0]", "empty stop string")
            long_stop = gen.GenerateRequest(prompt="hi")
            long_stop.sampling.stop.append("x" * 1000)
            expect_error(complete, long_stop, INV, "sampling.stop[0]", "overlong stop string")
            undefined = next(i for i in range(512) if i not in defined)
            expect_error(detok, gen.DetokenizeRequest(token_ids=[1, undefined]), INV, "token_ids[1]",
                         "Detokenize unknown id")
            expect_error(detok, gen.DetokenizeRequest(token_ids=[2 ** 31 + 5]), INV, "token_ids[0]",
                         "Detokenize huge id")
            expect_error(tokenize, gen.TokenizeRequest(text="a", messages=[chat_msg("user", "x")]), INV, "messages",
                         "Tokenize text and messages")
            ok = complete(greedy(gen.GenerateRequest(prompt="still there?"), 4), timeout=30)
            r.check(len(ok.token_ids) == 4, "serving after bad input")

            # ---- mx client --prompt ----
            cli = subprocess.run([u.MX, "client", "--addr", cl.gateway, "--prompt", "hello", "--max-new-tokens", "12",
                                  "--ignore-eos"], capture_output=True, text=True, timeout=60)
            want = complete(greedy(gen.GenerateRequest(prompt="hello"), 12), timeout=30).text
            r.check(cli.returncode == 0 and cli.stdout == want + "\n" and "FINISH_REASON_LENGTH" in cli.stderr,
                    "mx client --prompt prints the streamed text", "%r vs %r" % (cli.stdout, want))

            # ---- the independent JS reference ----
            if have_node:
                got = reference(tok_json, jobs)
                for (name, want), g in zip(expect, got):
                    if isinstance(g, dict):
                        g = g["ids"]
                    r.check(g == want, name, "%r vs %r" % (g, want))
            else:
                skipped += len(expect)
    finally:
        cl.stop()
        shutil.rmtree(work, True)
    test_no_tokenizer(sys.argv[1])
    print("%d passed, %d failed, %d skipped" % (r.passed, r.failed, skipped))
    sys.exit(1 if r.failed else 0)


if __name__ == "__main__":
    main()
