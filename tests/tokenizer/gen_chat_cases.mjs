// gen_chat_cases.mjs - writes chat template test cases (JSON Lines of {messages, tools,
// add_generation_prompt}) for one template to stdout: argv[2] is "minimax-text-01" (roles
// system/user/assistant/function) or "minimax-m1" (system/user/assistant/tool). Deterministic.
const format = process.argv[2];
const count = Number(process.argv[3] ?? 60);
let seed = 12345;
const rnd = () => { seed = (seed * 1103515245 + 12345) % 2147483648; return seed / 2147483648; };
const pick = (a) => a[Math.floor(rnd() * a.length)];
const texts = ["Hello!", "What's the weather like in Shanghai today?", "你好，请介绍一下你自己。", "日本語で答えてください。",
  "Line one\nLine two\n\n  indented", "Quotes \"double\" and 'single' and back\\slash", "emoji 🚀👩‍💻 and tabs\tend",
  "<b>html</b> & <script>", "  leading and trailing spaces  ", "", "{\"json\": [1, 2, 3]}", "1234567890 x 0.5 = ?",
  "You are a helpful assistant created by MiniMax based on MiniMax-Text-01 model."];
const tools = [
  { type: "function", function: { name: "get_current_weather", description: "Get the latest weather for a location",
    parameters: { type: "object", properties: { location: { type: "string", description: "A certain city, such as Beijing, Shanghai" } }, required: ["location"] } } },
  { name: "search_web", description: "搜索函数。", parameters: { type: "object", properties: { query_list: { type: "array", items: { type: "string" } }, limit: { type: "integer", minimum: 1, maximum: 10 }, ratio: { type: "number", default: 0.25 }, strict: { type: "boolean", default: true }, extra: { type: ["string", "null"] } } } },
  { name: "run_code", description: "Runs code with \"quotes\", newlines\nand tabs\t.", parameters: {} },
];
const parts = () => {
  const n = 1 + Math.floor(rnd() * 3);
  return Array.from({ length: n }, () => ({ type: "text", text: pick(texts) }));
};
const roles = format === "minimax-m1" ? ["system", "user", "assistant", "tool"] : ["system", "user", "assistant", "function"];
const out = [];
for (let i = 0; i < count; i++) {
  const messages = [];
  if (rnd() < 0.6) messages.push({ role: "system", content: [{ type: "text", text: pick(texts) }] });
  const n = Math.floor(rnd() * 6);
  for (let k = 0; k < n; k++) {
    const role = k === 0 ? "user" : pick(roles);
    if (role === "function") messages.push({ role, name: pick(["get_current_weather", "search_web"]), content: [{ type: "text", text: pick(['{"temperature": "25", "unit": "celsius"}', "[]", '"ok"']) }] });
    else if (role === "tool") messages.push({ role, content: Array.from({ length: 1 + Math.floor(rnd() * 2) }, () => ({ type: "text", name: pick(["search_web", "get_current_weather"]), text: pick(texts) })) });
    else if (role === "assistant") messages.push({ role, content: parts() });
    else messages.push({ role, content: [{ type: "text", text: pick(texts) }] });
  }
  const t = rnd() < 0.4 ? tools.slice(0, 1 + Math.floor(rnd() * tools.length)) : (rnd() < 0.2 ? [] : null);
  out.push(JSON.stringify({ messages, tools: t, add_generation_prompt: rnd() < 0.7 }));
}
process.stdout.write(out.join("\n") + "\n");
