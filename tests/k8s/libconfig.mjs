// libconfig.mjs - a small reader for libconfig files (the services' config format), written
// from the libconfig grammar so the manifest checks read the embedded configs independently of
// the services' own C loaders: groups { }, arrays [ ], lists ( ), strings (adjacent ones join),
// integers (decimal, hex, L suffix), floats, booleans, and #, // and /* */ comments.

export function parseLibconfig(text) {
    let i = 0;
    const fail = (msg) => {
        const line = text.slice(0, i).split("\n").length;
        throw new Error(`libconfig line ${line}: ${msg}`);
    };
    const skip = () => {
        for (;;) {
            while (i < text.length && /\s/.test(text[i])) i++;
            if (text[i] === "#" || text.startsWith("//", i)) {
                while (i < text.length && text[i] !== "\n") i++;
            } else if (text.startsWith("/*", i)) {
                const end = text.indexOf("*/", i + 2);
                if (end < 0) fail("unterminated comment");
                i = end + 2;
            } else return;
        }
    };
    const name = () => {
        const m = /^[A-Za-z*][-A-Za-z0-9_*]*/.exec(text.slice(i));
        if (!m) fail(`expected a setting name at ${JSON.stringify(text.slice(i, i + 20))}`);
        i += m[0].length;
        return m[0];
    };
    const string = () => {
        let out = "";
        while (text[i] === '"') {
            i++;
            while (text[i] !== '"') {
                if (i >= text.length) fail("unterminated string");
                if (text[i] === "\\") {
                    const c = text[i + 1];
                    const map = { n: "\n", t: "\t", r: "\r", f: "\f", "\\": "\\", '"': '"' };
                    if (c in map) { out += map[c]; i += 2; }
                    else if (c === "x") { out += String.fromCharCode(parseInt(text.slice(i + 2, i + 4), 16)); i += 4; }
                    else fail(`bad escape \\${c}`);
                } else out += text[i++];
            }
            i++;
            skip();
        }
        return out;
    };
    const value = () => {
        skip();
        const c = text[i];
        if (c === '"') return string();
        if (c === "{") { i++; const g = settings("}"); i++; return g; }
        if (c === "[" || c === "(") {
            const close = c === "[" ? "]" : ")";
            i++;
            const items = [];
            skip();
            while (text[i] !== close) {
                items.push(value());
                skip();
                if (text[i] === ",") { i++; skip(); }
                else if (text[i] !== close) fail(`expected , or ${close}`);
            }
            i++;
            if (close === "]" && items.some((v) => typeof v === "object")) fail("an array holds scalars only");
            return items;
        }
        const m = /^(true|false|TRUE|FALSE|[-+]?0[xX][0-9A-Fa-f]+L{0,2}|[-+]?(\d+\.\d*|\.\d+|\d+)([eE][-+]?\d+)?L{0,2})/.exec(text.slice(i));
        if (!m) fail(`expected a value at ${JSON.stringify(text.slice(i, i + 20))}`);
        i += m[0].length;
        const t = m[0].replace(/L+$/, "");
        if (/^(true|false)$/i.test(t)) return t.toLowerCase() === "true";
        if (/^[-+]?0[xX]/.test(t)) return parseInt(t, 16);
        return Number(t);
    };
    const settings = (close) => {
        const out = {};
        for (;;) {
            skip();
            if (i >= text.length ? close === null : text[i] === close) return out;
            if (i >= text.length) fail(`missing ${close}`);
            const key = name();
            skip();
            if (text[i] !== "=" && text[i] !== ":") fail(`expected = or : after ${key}`);
            i++;
            if (key in out) fail(`duplicate setting ${key}`);
            out[key] = value();
            skip();
            if (text[i] === ";" || text[i] === ",") i++;
        }
    };
    return settings(null);
}
