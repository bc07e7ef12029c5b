// bench_ref.mjs - encode throughput of @huggingface/tokenizers on a JSON Lines corpus, best of
// ROUNDS (after one warm-up round, as the C side is measured). Prints "<MB/s> MB/s".
// Usage: node bench_ref.mjs tokenizer.json corpus.jsonl [ROUNDS]
import { readFileSync } from "node:fs";
import { Tokenizer } from "@huggingface/tokenizers";

const [tokPath, corpusPath, roundsArg] = process.argv.slice(2);
const tok = new Tokenizer(JSON.parse(readFileSync(tokPath, "utf8")), {});
const docs = readFileSync(corpusPath, "utf8").split("\n").filter((l) => l.length).map((l) => JSON.parse(l));
const bytes = docs.reduce((n, d) => n + Buffer.byteLength(d, "utf8"), 0);
let best = Infinity;
for (let r = 0; r <= Number(roundsArg ?? 3); r++) {
  const t0 = process.hrtime.bigint();
  for (const d of docs) tok.encode(d, { add_special_tokens: false });
  const dt = Number(process.hrtime.bigint() - t0) / 1e9;
  if (r > 0 && dt < best) best = dt;
}
console.log(`${(bytes / best / 1e6).toFixed(3)} MB/s`);
