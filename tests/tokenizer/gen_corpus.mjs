// gen_corpus.mjs - writes the tokenizer test corpus (JSON Lines, one document per line) to
// stdout: English, Chinese, Japanese, code, emoji, long whitespace and digit runs, mixed
// scripts, contractions and special-token text. Deterministic (fixed-seed PRNG); size in bytes
// from argv[2] (default 1.2 MB). Must not depend on anything but node itself.
const target = Number(process.argv[2] ?? 1_200_000);
let seed = 0x9e3779b9;
const rnd = () => { seed ^= seed << 13; seed >>>= 0; seed ^= seed >>> 17; seed ^= seed << 5; seed >>>= 0; return seed / 4294967296; };
const pick = (a) => a[Math.floor(rnd() * a.length)];
const int = (lo, hi) => lo + Math.floor(rnd() * (hi - lo + 1));
const rep = (n, f) => Array.from({ length: n }, f).join("");

const en = "the of and to in is that it was for on are with as they be at one have this from or had by word but what some we can out other were all there when up use your how said an each she which do their time if will way about many then them write would like so these her long make thing see him two has look more day could go come did number sound no most people my over know water than call first who may down side been now find any new work part take get place made live where after back little only round man year came show every good me give our under name very through just form sentence great think say help low line differ turn cause much mean before move right boy old too same tell does set three want air well also play small end put home read hand port large spell add even land here must big high such follow act why ask men change went light kind off need house picture try us again animal point mother world near build self earth father Hello World OpenAI Transformer tokenizer MiniMax lightning attention".split(" ");
const contractions = ["don't", "I'm", "you're", "we've", "she'll", "he'd", "it's", "DON'T", "I'LL", "They'RE", "can't", "won't", "y'all", "'s", "o'clock"];
const zh = "我们的人工智能模型正在学习如何理解自然语言处理任务这是一个非常有趣的问题中国北京上海深圳广州天气今天很好明天会下雨吗学生老师学校医院银行公司经济发展科技创新数据分析机器学习深度神经网络".split("");
const zhPunct = ["，", "。", "！", "？", "；", "：", "“", "”", "、", "（", "）", "《", "》"];
const ja = ["これは", "日本語の", "テキスト", "です。", "東京", "大阪", "カタカナ", "ひらがな", "漢字", "を使って", "文章を", "書きます", "コンピューター", "プログラミング", "ありがとうございます", "すみません", "ｶﾀｶﾅ", "〜", "ー"];
const ko = ["안녕하세요", "한국어", "텍스트", "입니다", "서울", "감사합니다"];
const other = ["Привет мир", "Ελληνικά γράμματα", "مرحبا بالعالم", "שלום עולם", "नमस्ते दुनिया", "สวัสดีครับ", "Tiếng Việt có dấu", "Ñandú café naïve façade résumé", "Zürich Straße Øresund Łódź", "e\u0301 a\u0300 o\u0308 (combining)", "ﬁ ﬂ ＡＢＣ １２３ ½ ² ㎏", "İstanbul ıi ǅ ß ẞ", "\u00a0nbsp\u00a0", "\u200bzero\u200bwidth\u200d", "Ⅻ ⅻ ① ⑳"];
const emoji = ["😀", "😂", "🤖", "🚀", "❤️", "👍🏽", "👩‍💻", "👨‍👩‍👧‍👦", "🇨🇳", "🇯🇵", "🏳️‍🌈", "✨", "🔥", "🎉", "🧑🏿‍🚀", "☃", "⌘", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢", "𠀀𠮷", "🀄"];
const code = [
  'int main(int argc, char **argv) {\n    printf("hello %d\\n", argc);\n    return 0;\n}\n',
  'def fib(n):\n    """Return the n-th Fibonacci number."""\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a\n',
  'const x = await fetch(`https://example.com/api/v1/items?id=${id}&limit=100`);\nif (x.status !== 200) throw new Error("bad");\n',
  '<div class="container">\n\t<span id=\'a\'>&nbsp;&lt;tag&gt;</span>\n</div>\n',
  'SELECT name, COUNT(*) AS n FROM users WHERE age >= 18 GROUP BY name ORDER BY n DESC;\n',
  '#include <stdio.h>\n#define MAX(a,b) ((a)>(b)?(a):(b))\nstatic const double pi = 3.14159265358979;\n',
  'fn main() -> Result<(), Box<dyn Error>> {\n    let v: Vec<u32> = (0..10).map(|i| i * i).collect();\n    println!("{:?}", v);\n    Ok(())\n}\n',
  '{"key": "value", "list": [1, 2.5, -3e10, true, null], "nested": {"a": {"b": []}}}\n',
  '    if (x == y) {\r\n        return;\r\n    }\r\n',
  '$ ls -la /usr/local/bin | grep -E "^-rwx" && echo "done" >> /tmp/log.txt 2>&1\n',
];
const specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|begin_of_text|>", "<|eot_id|>", "<｜begin▁of▁sentence｜>", "<end_of_sentence>", "<|reserved_special_token_5|>", "<think>", "</think>", "<|fim_prefix|>"];
const ws = () => rep(int(1, 4), () => pick([" ", "  ", "\t", "\n", "\n\n", "\r\n", " \n ", "\u3000", "\u00a0"]));

function sentence() {
  const n = int(3, 18);
  let s = "";
  for (let i = 0; i < n; i++) {
    const w = rnd() < 0.08 ? pick(contractions) : pick(en);
    s += (i ? " " : "") + (rnd() < 0.1 ? w.toUpperCase() : rnd() < 0.2 ? w[0].toUpperCase() + w.slice(1) : w);
    if (rnd() < 0.08) s += pick([",", ";", ":", " -", "...", "!?", "'", '"']);
  }
  return s + pick([".", "!", "?", ".\n", ". "]);
}
const generators = [
  () => rep(int(1, 6), sentence),
  () => rep(int(5, 60), () => pick(zh)) + pick(zhPunct) + rep(int(5, 40), () => pick(zh)) + "。",
  () => rep(int(3, 12), () => pick(ja)) + "。",
  () => pick(code) + (rnd() < 0.5 ? pick(code) : ""),
  () => rep(int(1, 12), () => pick(emoji) + (rnd() < 0.5 ? " " : "")),
  () => rep(int(1, 400), () => pick([" ", " ", " ", "\t", "\n"])),
  () => rep(int(1, 120), () => String(int(0, 9))) + pick(["", ".", ",", " ", "e-5", "%"]) + String(int(0, 1e9)),
  () => pick(other) + " " + pick(ko) + " " + pick(emoji) + " " + pick(zh) + pick(en) + pick(ja) + "123abc" + pick(other),
  () => pick(specials) + sentence() + pick(specials) + (rnd() < 0.5 ? " " + pick(specials) : ""),
  () => "  " + pick(en) + "   " + pick(en) + "\n\n\n    " + rep(int(1, 5), () => pick(["#", "//", "--", "==", "**", "```", "->", "=>", "::", "{{", "}}"])),
];

let total = 0, docs = 0;
const out = [];
while (total < target) {
  const parts = int(1, 8);
  let doc = "";
  for (let i = 0; i < parts; i++) doc += (i ? ws() : "") + pick(generators)();
  const line = JSON.stringify(doc);
  out.push(line);
  total += Buffer.byteLength(doc, "utf8");
  docs++;
}
process.stdout.write(out.join("\n") + "\n");
process.stderr.write(`corpus: ${docs} documents, ${total} bytes of text\n`);
