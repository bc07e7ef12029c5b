// ref_text.mjs - the independent reference for the gateway's text tests: decodes ids and
// encodes text with @huggingface/tokenizers, renders chats with @huggingface/jinja.
// Usage: node ref_text.mjs tokenizer.json template.jinja < jobs.json > results.json
// jobs: [{"op": "decode", "ids": [...]}, {"op": "encode", "text": "..."},
//        {"op": "chat", "messages": [...], "tools": [...] | null, "add_generation_prompt": bool}]
// "chat" answers {"text": rendering, "ids": encode(rendering) with special tokens recognised}.
import { readFileSync } from "node:fs";
import { Tokenizer } from "@huggingface/tokenizers";
import { Template } from "@huggingface/jinja";

const [tokPath, templatePath] = process.argv.slice(2);
const tok = new Tokenizer(JSON.parse(readFileSync(tokPath, "utf8")), {});
const template = new Template(readFileSync(templatePath, "utf8"));
const jobs = JSON.parse(readFileSync(0, "utf8"));
const out = jobs.map((j) => {
  if (j.op === "decode") return tok.decode(j.ids, { skip_special_tokens: true, clean_up_tokenization_spaces: false });
  if (j.op === "encode") return tok.encode(j.text, { add_special_tokens: false }).ids;
  const vars = { messages: j.messages, add_generation_prompt: j.add_generation_prompt,
    bos_token: "<beginning_of_sentence>", eos_token: "<end_of_sentence>" };
  if (j.tools !== null) vars.tools = j.tools;
  const text = template.render(vars);
  return { text, ids: tok.encode(text, { add_special_tokens: false }).ids };
});
process.stdout.write(JSON.stringify(out));
