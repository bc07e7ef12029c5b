// ref_chat.mjs - renders chat template test cases with @huggingface/jinja: one JSON string (or
// {"error": ...}) per line. Usage: node ref_chat.mjs TEMPLATE.jinja CASES.jsonl
import { readFileSync } from "node:fs";
import { Template } from "@huggingface/jinja";

const [templatePath, casesPath] = process.argv.slice(2);
const template = new Template(readFileSync(templatePath, "utf8"));
const out = [];
for (const line of readFileSync(casesPath, "utf8").split("\n").filter((l) => l.length)) {
  const c = JSON.parse(line);
  const vars = { messages: c.messages, add_generation_prompt: c.add_generation_prompt,
    bos_token: "<beginning_of_sentence>", eos_token: "<end_of_sentence>" };
  if (c.tools !== null) vars.tools = c.tools;
  try {
    out.push(JSON.stringify(template.render(vars)));
  } catch (e) {
    out.push(JSON.stringify({ error: String(e.message ?? e) }));
  }
}
process.stdout.write(out.join("\n") + "\n");
