// ref_encode.mjs - the reference side of the tokenizer comparison: encodes every document of
// a JSON Lines corpus with @huggingface/tokenizers (no post-processor specials) and prints
// one line of space-separated ids per document. Usage: node ref_encode.mjs tokenizer.json corpus.jsonl
import { readFileSync } from "node:fs";
import { Tokenizer } from "@huggingface/tokenizers";

const [tokPath, corpusPath] = process.argv.slice(2);
const json = JSON.parse(readFileSync(tokPath, "utf8"));
const tok = new Tokenizer(json, {});
const lines = readFileSync(corpusPath, "utf8").split("\n").filter((l) => l.length);
const out = [];
for (const line of lines) {
  const ids = tok.encode(JSON.parse(line), { add_special_tokens: false }).ids;
  out.push(ids.join(" "));
}
process.stdout.write(out.join("\n") + "\n");
