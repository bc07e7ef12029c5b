// client_checks.mjs - the gateway's OpenAI-compatible HTTP API seen by the official `openai`
// npm client (pinned in package-lock.json). The expectations come from openai_api.py: the
// golden fixture's greedy tokens and the gRPC API's answers to the same requests.
// Usage: node client_checks.mjs expect.json   Prints "PASS name" / "FAIL name detail" lines;
// for the disconnect check it prints "STREAMING" and waits for a line on stdin before aborting,
// then prints "ABORTED" (openai_api.py checks the stages' live sequences around it). Around a
// window of known traffic it prints "METRICS_BEGIN" (and waits), then "METRICS_END {json}"
// with what the responses said (openai_api.py compares the gateway's metrics). Last it prints
// "HTTPCALLS [json]": every HTTP call made, as "METHOD /path" and the status the client got
// (499 for a call it gave up on), for the gateway's access log.
import { readFileSync } from "node:fs";
import { createInterface } from "node:readline";
import OpenAI from "openai";

const ex = JSON.parse(readFileSync(process.argv[2], "utf8"));
// Every HTTP call goes through this fetch, which records it (the client's and the raw ones).
const calls = [];
async function recordedFetch(input, init = {}) {
  const url = new URL(typeof input === "string" || input instanceof URL ? String(input) : input.url);
  const rec = { what: `${(init.method ?? input.method ?? "GET").toUpperCase()} ${url.pathname}`, status: null };
  calls.push(rec);
  try {
    const r = await fetch(input, init);
    rec.status = r.status;
    return r;
  } catch (e) {
    rec.status = 499;   // the client gave up (abort, timeout) before an answer
    throw e;
  }
}
const client = new OpenAI({ baseURL: ex.base_url + "/v1", apiKey: "unused", maxRetries: 0, timeout: 60000,
  fetch: recordedFetch });
const stdinLines = createInterface({ input: process.stdin })[Symbol.asyncIterator]();

function check(ok, name, detail = "") {
  console.log(ok ? `PASS ${name}` : `FAIL ${name} ${detail}`);
  return ok;
}
const same = (a, b) => JSON.stringify(a) === JSON.stringify(b);
// return_tokens_as_token_ids gives "token_id:N" for every logprob token
const idsOf = (tokens) => tokens.map((t) => Number(String(t).replace("token_id:", "")));
const greedy = { temperature: 0, ignore_eos: true };

async function expectError(name, status, param, fn) {
  try {
    await fn();
    check(false, name, "no error");
  } catch (e) {
    const body = e.error ?? {};
    check(e instanceof OpenAI.APIError && e.status === status && (param === null || e.param === param) &&
          typeof e.message === "string" && "type" in body && "code" in body,
          name, `got ${e.status} param=${e.param} ${e.message}`);
  }
}

async function collect(stream) {
  const chunks = [];
  for await (const c of stream) chunks.push(c);
  return chunks;
}

// Known traffic between two scrapes of the gateway's metrics (nothing else runs meanwhile):
// four generations (completions and chat, plain and streamed) and two refused requests.
async function metricsWindow() {
  console.log("METRICS_BEGIN");
  await stdinLines.next();
  const n = 6, done = [];
  const a = await client.completions.create({ model: ex.model, prompt: ex.fixture.prompt_ids, max_tokens: n,
    ...greedy });
  done.push({ id: a.id, ...a.usage });
  const b = await collect(await client.completions.create({ model: ex.model, prompt: ex.text.prompt, max_tokens: n,
    stream: true, stream_options: { include_usage: true }, ...greedy }));
  done.push({ id: b[0].id, ...b[b.length - 1].usage });
  const c = await client.chat.completions.create({ model: ex.model, messages: ex.chat.messages, max_tokens: n,
    ...greedy });
  done.push({ id: c.id, ...c.usage });
  const d = await collect(await client.chat.completions.create({ model: ex.model, messages: ex.chat.messages,
    max_tokens: n, stream: true, stream_options: { include_usage: true }, ...greedy }));
  done.push({ id: d[0].id, ...d[d.length - 1].usage });
  check(done.every((u) => u.completion_tokens === n && u.prompt_tokens > 0 && u.id),
        "metrics window: 4 generations of 6 tokens each, usage reported", JSON.stringify(done));
  await expectError("metrics window: unknown model is 404", 404, "model", () =>
    client.completions.create({ model: "gpt-nope", prompt: "hi" }));
  const bad = await recordedFetch(ex.base_url + "/v1/chat/completions", { method: "POST", body: "{not json" });
  check(bad.status === 400, "metrics window: bad JSON is 400", String(bad.status));
  console.log("METRICS_END " + JSON.stringify({ requests: done, rejected: { 400: 1, 404: 1 } }));
  await stdinLines.next();
}

async function main() {
  await metricsWindow();
  // ---- /v1/models and /health ----
  const models = await client.models.list();
  check(models.data.length === 1 && models.data[0].id === ex.model && models.data[0].object === "model",
        "GET /v1/models lists the served model", JSON.stringify(models.data));
  const health = await recordedFetch(ex.base_url + "/health");
  check(health.status === 200, "GET /health is 200 while every stage serves", String(health.status));

  // ---- completions, prompt as token ids: the golden fixture's greedy tokens ----
  const fx = await client.completions.create({ model: ex.model, prompt: ex.fixture.prompt_ids,
    max_tokens: ex.fixture.greedy_ids.length, logprobs: 0, return_tokens_as_token_ids: true, ...greedy });
  check(same(idsOf(fx.choices[0].logprobs.tokens), ex.fixture.greedy_ids),
        "completions (token-id prompt): tokens == the golden fixture's greedy continuation",
        JSON.stringify(fx.choices[0].logprobs.tokens));
  check(fx.usage.prompt_tokens === ex.fixture.prompt_ids.length &&
        fx.usage.completion_tokens === ex.fixture.greedy_ids.length &&
        fx.usage.total_tokens === fx.usage.prompt_tokens + fx.usage.completion_tokens &&
        fx.choices[0].finish_reason === "length" && fx.object === "text_completion" && fx.id.startsWith("cmpl-") &&
        fx.model === ex.model && Number.isInteger(fx.created),
        "completions: usage, finish_reason length, id/object/model/created", JSON.stringify(fx));

  // ---- completions, text prompt: equal to the gRPC Complete answer ----
  const t = ex.text;
  const tc = await client.completions.create({ model: ex.model, prompt: t.prompt, max_tokens: t.ids.length,
    logprobs: 2, return_tokens_as_token_ids: true, ...greedy });
  const lp = tc.choices[0].logprobs;
  check(same(idsOf(lp.tokens), t.ids) && tc.choices[0].text === t.text,
        "completions (text prompt): tokens and text == gRPC Complete", JSON.stringify([tc.choices[0].text, t.text]));
  check(tc.usage.prompt_tokens === t.prompt_tokens && tc.usage.completion_tokens === t.ids.length,
        "completions: usage.prompt_tokens == gRPC usage", JSON.stringify(tc.usage));
  check(lp.token_logprobs.every((v, i) => Math.abs(v - t.logprobs[i]) < 1e-4) &&
        lp.top_logprobs.every((o) => Object.keys(o).length === 2),
        "completions: logprobs == gRPC logprobs, 2 alternatives each", JSON.stringify(lp.token_logprobs));

  const ts = await collect(await client.completions.create({ model: ex.model, prompt: t.prompt,
    max_tokens: t.ids.length, stream: true, stream_options: { include_usage: true }, ...greedy }));
  const last = ts[ts.length - 1], body = ts.slice(0, -1);
  check(body.map((c) => c.choices[0].text).join("") === t.text &&
        body[body.length - 1].choices[0].finish_reason === "length" &&
        body.slice(0, -1).every((c) => c.choices[0].finish_reason === null),
        "completions stream: text deltas join to the gRPC text, finish_reason on the last", JSON.stringify(body));
  check(last.choices.length === 0 && last.usage.completion_tokens === t.ids.length &&
        last.usage.prompt_tokens === t.prompt_tokens && body.every((c) => c.usage === null),
        "completions stream: include_usage sends usage in a last chunk", JSON.stringify(last));

  // ---- stop strings and max_tokens ----
  const st = ex.stop;
  const sc = await client.completions.create({ model: ex.model, prompt: t.prompt, max_tokens: t.ids.length,
    stop: ["@@never@@", st.stop], ...greedy });
  check(sc.choices[0].text === st.text && sc.choices[0].finish_reason === "stop" &&
        sc.usage.completion_tokens === st.completion_tokens,
        "stop string: text ends before it (== gRPC), finish_reason stop", JSON.stringify([sc.choices[0], st]));
  const ss = await collect(await client.completions.create({ model: ex.model, prompt: t.prompt,
    max_tokens: t.ids.length, stop: st.stop, stream: true, ...greedy }));
  check(ss.map((c) => c.choices[0].text).join("") === st.text &&
        ss[ss.length - 1].choices[0].finish_reason === "stop",
        "stop string (stream, single string): same text, finish_reason stop");
  const mt = await client.completions.create({ model: ex.model, prompt: t.prompt, max_tokens: 3, ...greedy });
  check(mt.choices[0].finish_reason === "length" && mt.usage.completion_tokens === 3,
        "max_tokens 3: 3 tokens, finish_reason length", JSON.stringify(mt.usage));

  // ---- sampling fields: seeded sampling with filters and a stop token id == gRPC ----
  const sm = ex.sampled;
  const sa = await client.completions.create({ model: ex.model, prompt: t.prompt, max_tokens: 30, ignore_eos: true,
    logprobs: 0, return_tokens_as_token_ids: true, ...sm.params });
  check(same(idsOf(sa.choices[0].logprobs.tokens), sm.ids) && sa.choices[0].text === sm.text,
        "sampling (temperature, top_p, top_k, min_p, repetition_penalty, seed, stop_token_ids) == gRPC",
        JSON.stringify([idsOf(sa.choices[0].logprobs.tokens), sm.ids]));
  const unseeded = [];
  for (let i = 0; i < 2; i++)
    unseeded.push((await client.completions.create({ model: ex.model, prompt: t.prompt, max_tokens: 16,
      ignore_eos: true, temperature: 1 })).choices[0].text);
  check(unseeded[0] !== unseeded[1], "no seed: two sampled completions differ", JSON.stringify(unseeded));

  // ---- chat completions: equal to gRPC Complete with the same messages ----
  const ch = ex.chat;
  const cc = await client.chat.completions.create({ model: ex.model, messages: ch.messages,
    max_completion_tokens: ch.ids.length, logprobs: true, top_logprobs: 3, return_tokens_as_token_ids: true,
    ...greedy });
  const content = cc.choices[0].logprobs.content;
  check(same(content.map((c) => Number(c.token.replace("token_id:", ""))), ch.ids) &&
        cc.choices[0].message.content === ch.text && cc.choices[0].message.role === "assistant",
        "chat: tokens and text == gRPC Complete(messages)", JSON.stringify([cc.choices[0].message, ch.text]));
  check(cc.usage.prompt_tokens === ch.prompt_tokens && cc.usage.completion_tokens === ch.ids.length &&
        cc.object === "chat.completion" && cc.id.startsWith("chatcmpl-") && cc.choices[0].finish_reason === "length",
        "chat: usage (prompt rendered with the chat template), object, id", JSON.stringify(cc.usage));
  check(content.every((c) => c.top_logprobs.length === 3 && Math.abs(c.top_logprobs[0].logprob - c.logprob) < 1e-5),
        "chat: top_logprobs 3, greedy token is the most likely");
  const cs = await collect(await client.chat.completions.create({ model: ex.model, messages: ch.messages,
    max_tokens: ch.ids.length, stream: true, stream_options: { include_usage: true }, ...greedy }));
  const deltas = cs.filter((c) => c.choices.length).map((c) => c.choices[0].delta);
  check(deltas[0].role === "assistant" && deltas.map((d) => d.content ?? "").join("") === ch.text &&
        cs[cs.length - 1].usage.completion_tokens === ch.ids.length &&
        cs.every((c) => c.object === "chat.completion.chunk"),
        "chat stream: role first, content deltas join to the gRPC text, usage last", JSON.stringify(deltas));

  const tl = ex.tools;
  const tt = await client.chat.completions.create({ model: ex.model, messages: tl.messages, tools: tl.tools,
    max_tokens: 16, ...greedy });
  check(tt.choices[0].message.content === tl.text && tt.usage.prompt_tokens === tl.prompt_tokens,
        "chat with tools and content parts == gRPC (tools_json, parts)", JSON.stringify([tt.choices[0].message, tl]));
  const one = await client.completions.create({ model: ex.model, prompt: [t.prompt], max_tokens: 4, ...greedy });
  check(one.choices[0].text === tc.choices[0].text.slice(0, one.choices[0].text.length) && one.usage.completion_tokens === 4,
        "completions: a list of one prompt string is that prompt");

  // ---- errors ----
  await expectError("bad field type is 400 naming it", 400, "temperature", () =>
    client.completions.create({ model: ex.model, prompt: "hi", temperature: "hot" }));
  await expectError("n = 2 is 400", 400, "n", () =>
    client.completions.create({ model: ex.model, prompt: "hi", n: 2 }));
  await expectError("negative max_tokens is 400", 400, "max_tokens", () =>
    client.completions.create({ model: ex.model, prompt: "hi", max_tokens: -1 }));
  await expectError("token id outside the vocabulary is 400", 400, "prompt", () =>
    client.completions.create({ model: ex.model, prompt: [1, 2, 1 << 20] }));
  await expectError("chat without messages is 400", 400, "messages", () =>
    client.chat.completions.create({ model: ex.model, messages: [] }));
  await expectError("unknown model is 404", 404, "model", () =>
    client.completions.create({ model: "gpt-nope", prompt: "hi" }));
  await expectError("prompt over the KV budget is 413", 413, null, () =>
    client.completions.create({ model: ex.model, prompt: new Array(ex.too_long).fill(7), max_tokens: 1 }));
  const raw = async (path, init) => {
    const r = await recordedFetch(ex.base_url + path, init);
    let j = null;
    try { j = await r.json(); } catch { /* not JSON */ }
    return [r.status, j, r.headers];
  };
  let [s, j] = await raw("/v1/completions", { method: "POST", body: "{not json" });
  check(s === 400 && j?.error?.type === "invalid_request_error" && /JSON/.test(j.error.message),
        "bad JSON is 400 in the OpenAI error format", JSON.stringify(j));
  [s, j] = await raw("/v1/nowhere", { method: "GET" });
  check(s === 404 && j?.error?.message, "unknown path is 404", String(s));
  let h;
  [s, j, h] = await raw("/v1/chat/completions", { method: "GET" });
  check(s === 405 && h.get("allow") === "POST" && j?.error, "GET on a POST endpoint is 405 with Allow", String(s));
  [s, j] = await raw("/v1/completions", { method: "POST", headers: { "content-type": "application/json" },
    body: JSON.stringify({ model: ex.model, prompt: "x".repeat(ex.max_body + 10) }) });
  check(s === 413 && j?.error, "body over max_request_kb is 413", String(s));

  // ---- a client that disconnects mid-stream ----
  const ac = new AbortController();
  const long = await client.chat.completions.create({ model: ex.model, messages: ch.messages,
    max_tokens: ex.long_tokens, stream: true, ...greedy }, { signal: ac.signal });
  const longCall = calls[calls.length - 1];
  const it = long[Symbol.asyncIterator]();
  for (let i = 0; i < 3; i++) await it.next();
  console.log("STREAMING");
  await stdinLines.next();
  ac.abort();
  try { await it.next(); } catch { /* aborted */ }
  longCall.status = 499;   // headers came (200), then the client left mid-stream
  console.log("ABORTED");
  await stdinLines.next();
  // a non-streaming request whose client gives up (timeout) is cancelled as well
  try {
    await client.completions.create({ model: ex.model, prompt: t.prompt, max_tokens: ex.long_tokens, ...greedy },
      { timeout: 1500 });
    check(false, "client timeout on a long non-streaming request", "it finished");
  } catch (e) {
    check(e instanceof OpenAI.APIConnectionTimeoutError, "client timeout on a long non-streaming request", String(e));
  }
  console.log("TIMEDOUT");
  await stdinLines.next();
  console.log("HTTPCALLS " + JSON.stringify(calls));
}

main().then(() => process.exit(0), (e) => {
  console.log(`FAIL client_checks: ${e.stack ?? e}`);
  process.exit(1);
});
