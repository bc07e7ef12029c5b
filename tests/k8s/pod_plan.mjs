// pod_plan.mjs - turns a rendered overlay into the containers tests/suites/k8s_images.sh starts
// with a container engine, one line per pod as Kubernetes would run it: the Job first, then
// expert replicas, stages and the gateway. Each pod's ConfigMap files are written under
// OUT/<pod>/ (mounted where the pod mounts them); a container with a command gets it written
// to OUT/<pod>.cmd as JSON. Line (tab-separated): role name aliases image user mountPath
// cmdFile; aliases are the DNS names other pods use for it (Service, pod.Service, and for an
// expert replica its headless Service's full name, which every replica of the shard shares).
// usage: node pod_plan.mjs RENDERED.yaml OUT
import fs from "node:fs";
import path from "node:path";
import { parseAllDocuments } from "yaml";

const [rendered, out] = process.argv.slice(2);
const docs = parseAllDocuments(fs.readFileSync(rendered, "utf8")).map((d) => d.toJS()).filter(Boolean);
const services = docs.filter((o) => o.kind === "Service");
const configMaps = new Map(docs.filter((o) => o.kind === "ConfigMap").map((c) => [c.metadata.name, c]));
const labelsMatch = (sel, labels) => Object.entries(sel || {}).every(([k, v]) => labels?.[k] === v);

function emit(role, name, aliases, w) {
    const spec = w.spec.template.spec, c = spec.containers[0];
    const dir = path.join(out, name);
    fs.mkdirSync(dir, { recursive: true });
    let mountPath = "-";
    for (const m of c.volumeMounts || []) {
        const v = spec.volumes.find((x) => x.name === m.name);
        if (!v?.configMap) continue;
        const cm = configMaps.get(v.configMap.name);
        for (const [k, text] of Object.entries(cm.data)) fs.writeFileSync(path.join(dir, k), text);
        mountPath = m.mountPath;
    }
    let cmdFile = "-";
    if (c.command || c.args) {
        cmdFile = path.join(out, `${name}.cmd`);
        fs.writeFileSync(cmdFile, JSON.stringify({ command: c.command || null, args: c.args || [] }));
    }
    const user = c.securityContext?.runAsUser ?? spec.securityContext?.runAsUser ?? 0;
    console.log([role, name, aliases.join(",") || "-", c.image, user, mountPath, cmdFile].join("\t"));
}

const order = { Job: 0, StatefulSet: 1, Deployment: 2 };
const workloads = docs.filter((o) => o.kind in order)
    .sort((a, b) => order[a.kind] - order[b.kind] || (a.metadata.name === "mx-gateway") - (b.metadata.name === "mx-gateway"));
for (const w of workloads) {
    const svc = services.filter((s) => labelsMatch(s.spec.selector, w.spec.template.metadata.labels)).map((s) => s.metadata.name);
    if (w.kind === "StatefulSet") {
        for (let r = 0; r < (w.spec.replicas ?? 1); r++) {
            const pod = `${w.metadata.name}-${r}`;
            // the headless Service's full name resolves to every replica (the stages' DNS targets)
            const fqdn = `${w.spec.serviceName}.${w.metadata.namespace || "default"}.svc.cluster.local`;
            emit("expert", pod, [`${pod}.${w.spec.serviceName}`, fqdn], w);
        }
    } else if (w.kind === "Job") emit("job", w.metadata.name, [], w);
    else emit(w.metadata.name === "mx-gateway" ? "gateway" : "stage", w.metadata.name, svc, w);
}
