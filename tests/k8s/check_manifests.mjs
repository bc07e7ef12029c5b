// check_manifests.mjs - checks one rendered kustomize overlay of mx (the YAML `kubectl kustomize`
// prints): every object against the Kubernetes API schemas (npm kubernetes-models), then the
// cross-references nothing else checks before pods start: selectors vs labels, named and probe
// ports, config files vs the image's --config path, config listen ports vs containerPorts,
// metrics and HTTP ports (metrics_listen, http_listen) vs named containerPorts, Services and
// prometheus.io annotations, addresses in configs vs rendered Services, layer ranges and expert shards vs the model's
// config.json, images vs backend vs GPUs, pod security and probes, network policies. Each
// embedded config is also fed to the service's own binary (--check-config).
// usage: node check_manifests.mjs RENDERED.yaml MODEL_CONFIG.json CONTAINERFILE PROTO_DIR BIN_DIR OVERLAY
// Prints "ok   NAME detail" / "FAIL NAME detail" per check and "N passed, N failed" last.
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { execFileSync } from "node:child_process";
import { parseAllDocuments } from "yaml";
import * as core from "kubernetes-models/v1";
import * as apps from "kubernetes-models/apps/v1";
import * as batch from "kubernetes-models/batch/v1";
import * as policy from "kubernetes-models/policy/v1";
import * as networking from "kubernetes-models/networking.k8s.io/v1";
import { parseLibconfig } from "./libconfig.mjs";

const [renderedPath, modelConfigPath, containerfilePath, protoDir, binDir, overlay] = process.argv.slice(2);
let passed = 0, failed = 0;
function check(name, errors, detail) {
    if (errors.length === 0) { passed++; console.log(`ok   ${overlay}/${name} ${detail}`); }
    else { failed++; console.log(`FAIL ${overlay}/${name}: ${errors.slice(0, 12).join("; ")}${errors.length > 12 ? ` (+${errors.length - 12} more)` : ""}`); }
}

const MX_USER = 65532;
const IMAGE_SERVICE = { gateway: "gateway", "attention-svc": "attention-svc", "expert-svc": "expert-svc" };
const COMPONENT_OF = { gateway: "gateway", "attention-svc": "attention-stage", "expert-svc": "expert-shard" };
const SERVICE_GRACE_S = { gateway: 2, "attention-svc": 2, "expert-svc": 5 };   // drain_ms defaults (s)
const H200_BYTES = 141e9;

// ---- inputs ---------------------------------------------------------------------------------
const docs = parseAllDocuments(fs.readFileSync(renderedPath, "utf8")).map((d) => d.toJS()).filter(Boolean);
const model = JSON.parse(fs.readFileSync(modelConfigPath, "utf8"));
const L = model.num_hidden_layers, E = model.num_local_experts;

// The images' ENTRYPOINT and CMD per Containerfile target (FROM ... AS target).
const targets = {};
{
    let cur = null;
    for (const line of fs.readFileSync(containerfilePath, "utf8").split("\n")) {
        const from = /^FROM\s+\S+\s+AS\s+(\S+)/i.exec(line);
        if (from) { cur = targets[from[1]] = { entrypoint: [], cmd: [] }; continue; }
        const m = /^(ENTRYPOINT|CMD)\s+(\[.*\])\s*$/.exec(line);
        if (m && cur) cur[m[1] === "CMD" ? "cmd" : "entrypoint"] = JSON.parse(m[2]);
    }
}
// Fully qualified gRPC service names from the .proto files.
const grpcServices = new Set();
for (const f of fs.readdirSync(protoDir, { recursive: true })) {
    if (!String(f).endsWith(".proto")) continue;
    const text = fs.readFileSync(path.join(protoDir, String(f)), "utf8");
    const pkg = /^package\s+([\w.]+);/m.exec(text);
    for (const s of text.matchAll(/^service\s+(\w+)/gm)) grpcServices.add(pkg ? `${pkg[1]}.${s[1]}` : s[1]);
}

// ---- 1. schemas -----------------------------------------------------------------------------
const groups = { v1: core, "apps/v1": apps, "batch/v1": batch, "policy/v1": policy, "networking.k8s.io/v1": networking };
// The schemas' validators accept unknown fields (a misspelt `readinesProbe` would be dropped
// by the API server without a word), so field names are also checked against the models'
// type declarations: each interface's properties, following the property types.
const nodeModules = path.join(path.dirname(new URL(import.meta.url).pathname), "node_modules");
const dtsCache = new Map();
function dtsInterface(file) {
    if (dtsCache.has(file)) return dtsCache.get(file);
    const text = fs.readFileSync(file, "utf8");
    const imports = {};
    for (const m of text.matchAll(/^import \{ (\w+) \} from "([^"]+)";/gm))
        imports[m[1]] = m[2].startsWith(".") ? path.join(path.dirname(file), m[2].replace(/\.js$/, ".d.ts"))
            : path.join(nodeModules, `${m[2]}.d.ts`);
    const body = /^export interface \w+[^{]*\{\n([\s\S]*?)^\}/m.exec(text);
    const props = body ? {} : null;
    if (body) for (const m of body[1].matchAll(/^ {4}"([^"]+)"\??: (.+?);?$/gm)) {
        const t = /^(?:Array<)?(\w+)>?$/.exec(m[2]);
        props[m[1]] = t && imports[t[1]] ? imports[t[1]] : null;
    }
    dtsCache.set(file, props);
    return props;
}
function unknownFields(value, file, where, errs) {
    if (value === null || typeof value !== "object" || !file || !fs.existsSync(file)) return;
    const props = dtsInterface(file);
    if (!props) return;   // a type alias (Quantity, IntOrString...)
    for (const item of Array.isArray(value) ? value : [value]) {
        if (item === null || typeof item !== "object") continue;
        for (const [k, v] of Object.entries(item)) {
            if (!(k in props)) errs.push(`${where}.${k}: no such field`);
            else unknownFields(v, props[k], `${where}.${k}`, errs);
        }
    }
}
{
    const errs = [], seen = new Set();
    for (const o of docs) {
        const cls = groups[o.apiVersion]?.[o.kind];
        const id = `${o.kind}/${o.metadata?.name}`;
        if (!cls) { errs.push(`${id}: no schema for ${o.apiVersion} ${o.kind}`); continue; }
        try { new cls(o).validate(); } catch (e) { errs.push(`${id}: ${e.message}`); }
        const dts = path.join(nodeModules, "kubernetes-models", o.apiVersion, `${o.kind}.d.ts`);
        if (!fs.existsSync(dts)) errs.push(`${id}: no type declarations at ${dts}`);
        else unknownFields(o, dts, id, errs);
        if (seen.has(id)) errs.push(`${id} rendered twice`);
        seen.add(id);
    }
    check("schema", errs, `${docs.length} objects valid against the Kubernetes API schemas, no unknown fields`);
}

// ---- the model of the deployment ------------------------------------------------------------
const byKind = (k) => docs.filter((o) => o.kind === k);
const ns = (o) => o.metadata.namespace || "default";
const workloads = docs.filter((o) => ["Deployment", "StatefulSet", "Job"].includes(o.kind));
const subset = (sel, labels) => Object.entries(sel || {}).every(([k, v]) => (labels || {})[k] === v);
const matchesSel = (sel, labels) => {
    if (!sel) return false;
    if (!subset(sel.matchLabels, labels)) return false;
    for (const e of sel.matchExpressions || []) {
        const has = labels && e.key in labels, v = labels?.[e.key];
        if (e.operator === "In" && !(has && e.values.includes(v))) return false;
        if (e.operator === "NotIn" && has && e.values.includes(v)) return false;
        if (e.operator === "Exists" && !has) return false;
        if (e.operator === "DoesNotExist" && has) return false;
    }
    return true;
};
const podLabels = (w) => w.spec.template.metadata?.labels || {};
const imageTarget = (image) => {
    const repo = image.replace(/[:@].*$/, "").split("/").pop();
    return repo.replace(/-cuda$/, "");
};
// Each mx container: its service, effective argv, config path and parsed config.
const mxContainers = [];
const configMaps = new Map(byKind("ConfigMap").map((c) => [`${ns(c)}/${c.metadata.name}`, c]));
{
    const errs = [];
    for (const w of workloads) {
        for (const c of w.spec.template.spec.containers) {
            const target = imageTarget(c.image);
            if (!IMAGE_SERVICE[target]) continue;
            const t = targets[target];
            if (!t) { errs.push(`${w.metadata.name}/${c.name}: no Containerfile target ${target}`); continue; }
            const argv = [...(c.command || t.entrypoint), ...(c.command ? c.args || [] : c.args || t.cmd)];
            const k = argv.indexOf("--config");
            const cfgPath = k >= 0 ? argv[k + 1] : undefined;
            if (!cfgPath) { errs.push(`${w.metadata.name}/${c.name}: no --config in ${JSON.stringify(argv)}`); continue; }
            if (argv.filter((a) => a === "--config").length !== 1) errs.push(`${w.metadata.name}/${c.name}: --config given twice: ${JSON.stringify(argv)}`);
            // the volume mount holding cfgPath must be a ConfigMap that has the file as a key
            const mount = (c.volumeMounts || []).filter((m) => cfgPath.startsWith(m.mountPath.replace(/\/?$/, "/")))
                .sort((a, b) => b.mountPath.length - a.mountPath.length)[0];
            const vol = mount && w.spec.template.spec.volumes.find((v) => v.name === mount.name);
            if (!vol?.configMap) { errs.push(`${w.metadata.name}/${c.name}: ${cfgPath} is not on a ConfigMap volume`); continue; }
            const cm = configMaps.get(`${ns(w)}/${vol.configMap.name}`);
            if (!cm) { errs.push(`${w.metadata.name}: ConfigMap ${vol.configMap.name} is not rendered`); continue; }
            let key = cfgPath.slice(mount.mountPath.replace(/\/?$/, "/").length);
            if (vol.configMap.items) key = vol.configMap.items.find((it) => it.path === key)?.key;
            if (!key || !(key in (cm.data || {}))) { errs.push(`${w.metadata.name}: ConfigMap ${cm.metadata.name} has no key for ${cfgPath}`); continue; }
            let cfg;
            try { cfg = parseLibconfig(cm.data[key]); } catch (e) { errs.push(`${cm.metadata.name}/${key}: ${e.message}`); continue; }
            mxContainers.push({ w, c, service: IMAGE_SERVICE[target], argv, cfgPath, cm, key, cfg, text: cm.data[key] });
        }
    }
    check("config-mounts", errs, `${mxContainers.length} service containers: --config (args or the image's CMD) names a key of a rendered ConfigMap`);
}
const svcOf = (s) => mxContainers.filter((m) => m.service === s);
const gateways = svcOf("gateway"), stages = svcOf("attention-svc"), experts = svcOf("expert-svc");
const listenOf = (m) => m.service === "gateway" ? m.cfg.gateway?.listen : m.service === "attention-svc" ? m.cfg.stage?.listen : m.cfg.listen;
const modelOf = (m) => m.service === "gateway" ? m.cfg.gateway?.model : m.service === "attention-svc" ? m.cfg.stage?.model : m.cfg.model_dir;

// ---- 2. selectors and labels ----------------------------------------------------------------
{
    const errs = [];
    for (const w of workloads) {
        if (w.kind !== "Job" && !matchesSel(w.spec.selector, podLabels(w))) errs.push(`${w.kind}/${w.metadata.name}: selector does not match its pod labels`);
        if (w.kind !== "Job" && "app.kubernetes.io/version" in (w.spec.selector.matchLabels || {})) errs.push(`${w.metadata.name}: version in an immutable selector`);
        for (const t of w.spec.template.spec.topologySpreadConstraints || []) {
            const hits = workloads.filter((o) => matchesSel(t.labelSelector, podLabels(o)));
            if (hits.length !== 1 || hits[0] !== w) errs.push(`${w.metadata.name}: topology spread selector matches ${hits.map((h) => h.metadata.name)}`);
        }
    }
    for (const s of byKind("Service")) {
        const hits = workloads.filter((w) => ns(w) === ns(s) && subset(s.spec.selector, podLabels(w)));
        if (hits.length !== 1) errs.push(`Service/${s.metadata.name} selects ${hits.length} workloads`);
    }
    for (const p of byKind("PodDisruptionBudget")) {
        const hits = workloads.filter((w) => matchesSel(p.spec.selector, podLabels(w)));
        if (hits.length !== 1 || hits[0].kind === "Job") errs.push(`PDB/${p.metadata.name} selects ${hits.map((h) => h.metadata.name)}`);
    }
    for (const w of workloads.filter((w) => w.kind !== "Job")) {
        if (!byKind("PodDisruptionBudget").some((p) => matchesSel(p.spec.selector, podLabels(w)))) errs.push(`${w.metadata.name}: no PodDisruptionBudget`);
    }
    const rec = ["app.kubernetes.io/instance", "app.kubernetes.io/part-of", "app.kubernetes.io/version", "app.kubernetes.io/managed-by"];
    for (const o of docs) for (const l of rec) if (!o.metadata.labels?.[l]) errs.push(`${o.kind}/${o.metadata.name}: no label ${l}`);
    for (const o of [...workloads, ...byKind("Service"), ...byKind("PodDisruptionBudget")])
        if (!o.metadata.labels?.["app.kubernetes.io/name"]) errs.push(`${o.kind}/${o.metadata.name}: no label app.kubernetes.io/name`);
    for (const w of workloads) for (const l of ["app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/component", "app.kubernetes.io/part-of"])
        if (!podLabels(w)[l]) errs.push(`${w.metadata.name}: pod template without ${l}`);
    for (const m of mxContainers) if (podLabels(m.w)["app.kubernetes.io/component"] !== COMPONENT_OF[m.service])
        errs.push(`${m.w.metadata.name}: runs ${m.service} but is labelled ${podLabels(m.w)["app.kubernetes.io/component"]}`);
    check("selectors", errs, "workload, Service, PDB and spread selectors each match exactly their pods; recommended labels everywhere");
}

// ---- 3. ports and probes --------------------------------------------------------------------
const containerPort = (w, port) => {
    for (const c of w.spec.template.spec.containers)
        for (const p of c.ports || []) if (p.name === port || p.containerPort === port) return p.containerPort;
    return undefined;
};
{
    const errs = [];
    for (const s of byKind("Service")) {
        const w = workloads.find((o) => ns(o) === ns(s) && subset(s.spec.selector, podLabels(o)));
        for (const p of s.spec.ports) {
            const target = containerPort(w, p.targetPort ?? p.port);
            if (target === undefined) errs.push(`Service/${s.metadata.name} port ${p.name}: targetPort ${p.targetPort} is no containerPort of ${w?.metadata.name}`);
            const proto = p.name === "grpc" ? "grpc" : "http";   // metrics and the OpenAI API are plain HTTP
            if (p.appProtocol !== proto) errs.push(`Service/${s.metadata.name} port ${p.name}: appProtocol ${p.appProtocol}, not ${proto}`);
            if (s.spec.clusterIP === "None" && target !== p.port) errs.push(`headless Service/${s.metadata.name}: clients dial port ${p.port}, the pod listens on ${target}`);
        }
    }
    for (const m of mxContainers) {
        const listen = listenOf(m) || "";
        const port = Number(listen.split(":").pop());
        const grpc = (m.c.ports || []).find((p) => p.name === "grpc");
        if (!grpc || grpc.containerPort !== port) errs.push(`${m.w.metadata.name}: config listens on ${listen}, containerPort grpc is ${grpc?.containerPort}`);
        if (!/^(0\.0\.0\.0|\[::\]|::):/.test(listen)) errs.push(`${m.w.metadata.name}: listen ${listen} is not reachable from other pods`);
        for (const kind of ["startupProbe", "readinessProbe", "livenessProbe"]) {
            const pr = m.c[kind];
            if (!pr?.grpc) { errs.push(`${m.w.metadata.name}: no gRPC ${kind}`); continue; }
            if (pr.grpc.port !== port) errs.push(`${m.w.metadata.name}: ${kind} on port ${pr.grpc.port}, serving on ${port}`);
            if (pr.grpc.service && !grpcServices.has(pr.grpc.service)) errs.push(`${m.w.metadata.name}: ${kind} asks for unknown service ${pr.grpc.service}`);
        }
        if (!m.c.readinessProbe?.grpc?.service) errs.push(`${m.w.metadata.name}: readiness must name the service (the empty name is SERVING from the start)`);
    }
    check("ports", errs, "Service targetPorts, probe ports and config listen ports agree; gRPC probes name real services");
}

// ---- 3b. metrics and the HTTP API: config ports = named containerPorts = Service ports ------
// Every service pod serves GET /metrics on metrics_listen, exposed as containerPort "metrics"
// and a Service port "metrics", announced to Prometheus by the prometheus.io annotations of its
// pod template; the gateway serves the OpenAI-compatible API on http_listen, exposed as "http".
const portOfListen = (listen) => Number(String(listen || "").split(":").pop());
{
    const errs = [];
    const servicesOf = (w) => byKind("Service").filter((s) => ns(s) === ns(w) && subset(s.spec.selector, podLabels(w)));
    const exposes = (m, name, listen, key) => {
        const id = m.w.metadata.name;
        if (!listen) { errs.push(`${id}: no ${key} in ${m.cm.metadata.name}/${m.key}`); return undefined; }
        if (!/^(0\.0\.0\.0|\[::\]|::):/.test(listen)) errs.push(`${id}: ${key} ${listen} is not reachable from other pods`);
        const cp = (m.c.ports || []).find((p) => p.name === name);
        if (!cp || cp.containerPort !== portOfListen(listen)) errs.push(`${id}: ${key} is ${listen}, containerPort ${name} is ${cp?.containerPort}`);
        const svcs = servicesOf(m.w);
        for (const s of svcs) {
            const sp = s.spec.ports.find((p) => p.name === name);
            if (!sp) errs.push(`Service/${s.metadata.name}: no port ${name}`);
            else if (containerPort(m.w, sp.targetPort ?? sp.port) !== portOfListen(listen)) errs.push(`Service/${s.metadata.name} port ${name} reaches ${containerPort(m.w, sp.targetPort ?? sp.port)}, ${key} is ${listen}`);
        }
        if (!svcs.length) errs.push(`${id}: no Service`);
        return portOfListen(listen);
    };
    let n = 0;
    for (const m of mxContainers) {
        const section = m.service === "gateway" ? m.cfg.gateway : m.service === "attention-svc" ? m.cfg.stage : m.cfg;
        const port = exposes(m, "metrics", section?.metrics_listen, "metrics_listen");
        const a = m.w.spec.template.metadata?.annotations || {};
        if (a["prometheus.io/scrape"] !== "true") errs.push(`${m.w.metadata.name}: pod template without prometheus.io/scrape: "true"`);
        if (port !== undefined && a["prometheus.io/port"] !== String(port)) errs.push(`${m.w.metadata.name}: prometheus.io/port ${a["prometheus.io/port"]}, metrics_listen port ${port}`);
        if ((a["prometheus.io/path"] ?? "/metrics") !== "/metrics") errs.push(`${m.w.metadata.name}: prometheus.io/path ${a["prometheus.io/path"]}, the services serve /metrics`);
        if (m.service === "gateway") exposes(m, "http", section?.http_listen, "http_listen");
        n++;
    }
    check("metrics-http", errs, `${n} service pods expose metrics_listen as port "metrics" (container, Service, prometheus.io annotations); the gateway's http_listen as port "http"`);
}

// ---- 4. addresses in configs resolve to rendered Services -----------------------------------
// A name resolves the way cluster DNS does from a pod in the same namespace: "svc", "svc.ns",
// "svc.ns.svc[.cluster.local]", or "pod.svc..." for a StatefulSet pod behind a headless Service.
// A gRPC-style "dns:///name:port" target (an expert shard's replicas) must name a headless
// Service, whose DNS name resolves to every ready pod: it stands for all of them.
function resolve(addr, fromNs) {
    const d = /^dns:\/\/[^/]*\/(.*)$/.exec(addr || "");
    if (d) {
        const r = resolve(d[1], fromNs);
        if (r.error || r.ordinal !== undefined) return r.error ? r : { error: `${addr}: a DNS target names a Service, not a pod` };
        if (r.svc.spec.clusterIP !== "None") return { error: `${addr}: Service ${r.svc.metadata.name} is not headless (its DNS name would be one virtual IP, not the pods)` };
        return { ...r, dns: true };
    }
    const m = /^([a-z0-9.-]+):(\d+)$/.exec(addr || "");
    if (!m) return { error: `${addr}: not host:port` };
    const port = Number(m[2]);
    let parts = m[1].split(".");
    for (const suffix of [["svc", "cluster", "local"], ["svc"]]) {
        if (parts.length > suffix.length + 1 && parts.slice(-suffix.length).join(".") === suffix.join(".")) { parts = parts.slice(0, -suffix.length); break; }
    }
    const candidates = [];
    if (parts.length === 1) candidates.push({ svc: parts[0], ns: fromNs });
    if (parts.length === 2) { candidates.push({ svc: parts[0], ns: parts[1] }, { pod: parts[0], svc: parts[1], ns: fromNs }); }
    if (parts.length === 3) candidates.push({ pod: parts[0], svc: parts[1], ns: parts[2] });
    for (const cand of candidates) {
        const s = byKind("Service").find((o) => o.metadata.name === cand.svc && ns(o) === cand.ns);
        if (!s) continue;
        const sp = s.spec.ports.find((p) => p.port === port);
        if (!sp) return { error: `${addr}: Service ${cand.svc} has no port ${port}` };
        const w = workloads.find((o) => ns(o) === ns(s) && subset(s.spec.selector, podLabels(o)));
        if (cand.pod) {
            const ord = cand.pod.startsWith(`${w?.metadata.name}-`) ? Number(cand.pod.slice(w.metadata.name.length + 1)) : NaN;
            if (w?.kind !== "StatefulSet" || s.spec.clusterIP !== "None" || w.spec.serviceName !== s.metadata.name)
                return { error: `${addr}: per-pod names need a StatefulSet whose serviceName is the headless Service ${s.metadata.name}` };
            if (!(Number.isInteger(ord) && ord >= 0 && ord < (w.spec.replicas ?? 1))) return { error: `${addr}: ${w.metadata.name} has no pod ${cand.pod}` };
            return { w, ordinal: ord };
        }
        return { w, svc: s };
    }
    return { error: `${addr}: no rendered Service in namespace ${fromNs}` };
}
const comp = (w) => podLabels(w)["app.kubernetes.io/component"];
{
    const errs = [];
    let n = 0;
    const want = (m, addr, component) => {
        n++;
        const r = resolve(addr, ns(m.w));
        if (r.error) errs.push(`${m.cm.metadata.name}: ${r.error}`);
        else if (comp(r.w) !== component) errs.push(`${m.cm.metadata.name}: ${addr} reaches ${comp(r.w)}, not ${component}`);
        return r;
    };
    for (const g of gateways) for (const a of g.cfg.gateway?.stages || []) want(g, a, "attention-stage");
    for (const s of stages) {
        if (s.cfg.stage?.next) want(s, s.cfg.stage.next, "attention-stage");
        for (const sh of s.cfg.experts?.shards || []) for (const a of sh.replicas || []) want(s, a, "expert-shard");
    }
    check("addresses", errs, `${n} addresses in configs resolve to rendered Services / StatefulSet pods of the right component`);
}

// ---- 5. the pipeline covers the model's layers exactly once ---------------------------------
const stageByWorkload = new Map(stages.map((s) => [s.w, s]));
{
    const errs = [];
    if (gateways.length !== 1) errs.push(`${gateways.length} gateway workloads`);
    const g = gateways[0];
    const list = g?.cfg.gateway?.stages || [];
    const chain = list.map((a) => stageByWorkload.get(resolve(a, ns(g.w)).w));
    if (chain.some((s) => !s)) errs.push("a gateway stage address does not reach an attention-svc");
    else {
        if (new Set(chain).size !== chain.length) errs.push("the gateway lists a stage twice");
        if (chain.length !== stages.length) errs.push(`the gateway lists ${chain.length} stages, ${stages.length} are deployed`);
        let at = 0;
        chain.forEach((s, i) => {
            const c = s.cfg.stage;
            if (c.index !== i || c.count !== chain.length) errs.push(`${s.w.metadata.name}: index ${c.index}/${c.count}, gateway position ${i}/${chain.length}`);
            if (c.layer_begin !== at) errs.push(`${s.w.metadata.name}: layers start at ${c.layer_begin}, expected ${at}`);
            if (!(c.layer_end > c.layer_begin)) errs.push(`${s.w.metadata.name}: empty layer range`);
            at = c.layer_end;
            const next = c.next ? stageByWorkload.get(resolve(c.next, ns(s.w)).w) : undefined;
            if (i + 1 < chain.length && next !== chain[i + 1]) errs.push(`${s.w.metadata.name}: next is ${c.next}, the gateway's next stage is ${chain[i + 1].w.metadata.name}`);
            if (i + 1 === chain.length && c.next) errs.push(`${s.w.metadata.name}: the last stage has a next (${c.next})`);
            if ((s.w.spec.replicas ?? 1) !== 1 || s.w.spec.strategy?.type !== "Recreate") errs.push(`${s.w.metadata.name}: a stage holds sequence state: 1 replica, Recreate`);
        });
        if (at !== L) errs.push(`the stages end at layer ${at}, the model has ${L}`);
    }
    check("pipeline", errs, `${chain.length} stages cover layers [0, ${L}) once, in gateway order, chained by next`);
}

// ---- 6. expert shards cover every expert of every layer exactly once ------------------------
const layerSet = (c, lo, hi) => Array.isArray(c.layers) ? c.layers
    : (c.layer_begin !== undefined || c.layer_end !== undefined) ? range(c.layer_begin ?? 0, c.layer_end ?? L) : range(lo, hi);
function range(a, b) { const r = []; for (let i = a; i < b; i++) r.push(i); return r; }
{
    const errs = [];
    const expertByWorkload = new Map(experts.map((e) => [e.w, e]));
    const used = new Set();
    for (const s of stages) {
        const owner = new Map();
        for (const [k, sh] of (s.cfg.experts?.shards || []).entries()) {
            const targets = (sh.replicas || []).map((a) => resolve(a, ns(s.w)));
            const ws = new Set(targets.map((t) => t.w));
            if (ws.size !== 1) { errs.push(`${s.w.metadata.name} shard ${k}: replicas span ${ws.size} workloads`); continue; }
            const w = [...ws][0], e = expertByWorkload.get(w);
            if (!e) { errs.push(`${s.w.metadata.name} shard ${k}: not an expert-svc`); continue; }
            used.add(w);
            const ords = targets.map((t) => t.ordinal).sort((a, b) => a - b);
            const byDns = targets.length === 1 && targets[0].dns;   // every ready pod, whatever the count
            if (!byDns && ords.join() !== range(0, w.spec.replicas ?? 1).join()) errs.push(`${s.w.metadata.name} shard ${k}: lists replicas ${ords}, ${w.metadata.name} runs ${w.spec.replicas}`);
            const a = [...sh.experts].sort((x, y) => x - y).join(), b = [...e.cfg.experts].sort((x, y) => x - y).join();
            if (a !== b) errs.push(`${s.w.metadata.name} shard ${k}: experts [${a}], ${w.metadata.name} serves [${b}]`);
            if (layerSet(sh, 0, L).join() !== layerSet(e.cfg, 0, L).join()) errs.push(`${s.w.metadata.name} shard ${k}: layers differ from ${w.metadata.name}'s`);
            for (const l of layerSet(sh, 0, L)) for (const x of sh.experts) {
                const key = `${l}/${x}`;
                if (owner.has(key)) errs.push(`${s.w.metadata.name}: layer ${l} expert ${x} in shards ${owner.get(key)} and ${k}`);
                owner.set(key, k);
            }
        }
        const c = s.cfg.stage;
        for (let l = c.layer_begin; l < c.layer_end; l++) for (let x = 0; x < E; x++)
            if (!owner.has(`${l}/${x}`)) { errs.push(`${s.w.metadata.name}: no shard for layer ${l} expert ${x}`); l = c.layer_end; break; }
        for (const key of owner.keys()) { const x = Number(key.split("/")[1]); if (x >= E) errs.push(`${s.w.metadata.name}: expert ${x} >= ${E}`); }
    }
    for (const e of experts) if (!used.has(e.w)) errs.push(`${e.w.metadata.name} is deployed but no stage calls it`);
    check("experts", errs, `${experts.length} expert shards cover ${E} experts x ${L} layers once, replicas listed one by one or by a headless Service's DNS name`);
}

// ---- 7. the model volume --------------------------------------------------------------------
{
    const errs = [];
    const paths = new Set(mxContainers.map(modelOf));
    if (paths.size !== 1) errs.push(`configs name ${paths.size} model directories: ${[...paths]}`);
    const dir = [...paths][0] || "";
    const claims = new Set();
    for (const m of mxContainers) {
        const mount = (m.c.volumeMounts || []).find((v) => dir.startsWith(v.mountPath.replace(/\/?$/, "/")));
        const vol = mount && m.w.spec.template.spec.volumes.find((v) => v.name === mount.name);
        if (!vol?.persistentVolumeClaim) { errs.push(`${m.w.metadata.name}: ${dir} is not on a volume claim`); continue; }
        if (!mount.readOnly || !vol.persistentVolumeClaim.readOnly) errs.push(`${m.w.metadata.name}: the model is mounted writable`);
        claims.add(vol.persistentVolumeClaim.claimName);
        const wait = m.w.spec.template.spec.initContainers?.find((c) => /mx-model-ready/.test((c.command || []).join(" ")));
        if (!wait) errs.push(`${m.w.metadata.name}: no init container waiting for the model`);
    }
    const pvc = byKind("PersistentVolumeClaim").find((p) => claims.has(p.metadata.name));
    if (claims.size !== 1 || !pvc) errs.push(`model claims: ${[...claims]}`);
    if (pvc && !pvc.spec.storageClassName) errs.push("the model claim has no storageClassName");
    const jobs = byKind("Job").filter((j) => j.spec.template.spec.volumes?.some((v) => claims.has(v.persistentVolumeClaim?.claimName)));
    if (jobs.length !== 1) errs.push(`${jobs.length} Jobs fill the model volume`);
    for (const j of jobs) {
        const c = j.spec.template.spec.containers.map((x) => (x.command || []).concat(x.args || []).join(" ")).join(" ");
        const rel = dir.split("/").pop();
        if (!c.includes(rel)) errs.push(`Job ${j.metadata.name} does not write ${rel}`);
        if (!/touch \/models\/\.mx-model-ready/.test(c)) errs.push(`Job ${j.metadata.name} does not write the ready marker`);
    }
    check("model-volume", errs, `every service reads ${dir} read-only from claim ${[...claims]}, filled by one Job`);
}

// ---- 8. images, backends and GPUs -----------------------------------------------------------
{
    const errs = [];
    const tags = new Set();
    const versions = new Set(docs.map((o) => o.metadata.labels?.["app.kubernetes.io/version"]));
    for (const w of workloads) for (const c of [...w.spec.template.spec.containers, ...(w.spec.template.spec.initContainers || [])]) {
        const m = /^(.+)\/([^/:@]+):([^/:@]+)$/.exec(c.image);
        if (!m) { errs.push(`${w.metadata.name}/${c.name}: image ${c.image} has no registry or tag`); continue; }
        if (m[3] === "latest") errs.push(`${w.metadata.name}/${c.name}: image ${c.image} uses :latest`);
        if (targets[imageTarget(c.image)]) tags.add(m[3]);
    }
    if (tags.size !== 1) errs.push(`mx images use tags ${[...tags]}`);
    if (versions.size !== 1 || !tags.has([...versions][0])) errs.push(`version labels ${[...versions]} vs image tag ${[...tags]}`);
    for (const m of mxContainers) {
        const backend = m.service === "gateway" ? "cpu" : m.service === "attention-svc" ? m.cfg.stage.backend || "cpu" : m.cfg.backend || "cpu";
        const gpus = Number(m.c.resources?.limits?.["nvidia.com/gpu"] || 0);
        const cudaImage = /-cuda[:@]/.test(m.c.image);
        if (backend === "cuda" && (!cudaImage || gpus < 1)) errs.push(`${m.w.metadata.name}: backend cuda needs a -cuda image and a GPU (image ${m.c.image}, ${gpus} GPUs)`);
        if (backend !== "cuda" && (cudaImage || gpus > 0)) errs.push(`${m.w.metadata.name}: backend ${backend} with ${m.c.image} and ${gpus} GPUs`);
        if (gpus > 0) {
            const spec = m.w.spec.template.spec;
            if (!spec.nodeSelector || !Object.keys(spec.nodeSelector).some((k) => k.startsWith("nvidia.com/"))) errs.push(`${m.w.metadata.name}: GPU pod without a GPU node selector`);
            if (!(spec.tolerations || []).some((t) => t.key === "nvidia.com/gpu")) errs.push(`${m.w.metadata.name}: GPU pod without the nvidia.com/gpu toleration`);
            if (m.c.resources.requests?.["nvidia.com/gpu"] !== undefined && Number(m.c.resources.requests["nvidia.com/gpu"]) !== gpus) errs.push(`${m.w.metadata.name}: GPU request != limit`);
        }
        if (m.service === "expert-svc" && gpus > 0) {
            // bf16 SwiGLU experts: w1, w2, w3 of hidden x intermediate each, per layer
            const bytes = m.cfg.experts.length * layerSet(m.cfg, 0, L).length * 3 * model.hidden_size * model.intermediate_size * 2;
            if (bytes > 0.9 * H200_BYTES * gpus) errs.push(`${m.w.metadata.name}: ${(bytes / 1e9).toFixed(1)} GB of experts on ${gpus} GPU(s) of 141 GB`);
        }
    }
    check("images", errs, `one tag (${[...tags]}) = app.kubernetes.io/version; backend cuda <=> -cuda image <=> GPU; expert weights fit the GPU`);
}

// ---- 9. pod hygiene: restricted security, resources, probes, shutdown -----------------------
{
    const errs = [];
    for (const w of workloads) {
        const spec = w.spec.template.spec, psc = spec.securityContext || {};
        const id = `${w.kind}/${w.metadata.name}`;
        if (spec.hostNetwork || spec.hostPID || spec.hostIPC) errs.push(`${id}: host namespaces`);
        if ((spec.volumes || []).some((v) => v.hostPath)) errs.push(`${id}: hostPath volume`);
        if (spec.automountServiceAccountToken !== false) errs.push(`${id}: mounts a service account token it never uses`);
        for (const c of [...spec.containers, ...(spec.initContainers || [])]) {
            const sc = c.securityContext || {};
            const cid = `${id}/${c.name}`;
            if ((sc.runAsNonRoot ?? psc.runAsNonRoot) !== true) errs.push(`${cid}: runAsNonRoot not set`);
            if ((sc.runAsUser ?? psc.runAsUser) !== MX_USER) errs.push(`${cid}: runAsUser ${sc.runAsUser ?? psc.runAsUser}`);
            if ((sc.seccompProfile ?? psc.seccompProfile)?.type !== "RuntimeDefault") errs.push(`${cid}: seccomp not RuntimeDefault`);
            if (sc.allowPrivilegeEscalation !== false) errs.push(`${cid}: allowPrivilegeEscalation not false`);
            if (sc.privileged) errs.push(`${cid}: privileged`);
            if (sc.readOnlyRootFilesystem !== true) errs.push(`${cid}: root filesystem writable`);
            if (!(sc.capabilities?.drop || []).includes("ALL") || (sc.capabilities?.add || []).length) errs.push(`${cid}: capabilities not dropped`);
            for (const r of ["cpu", "memory"]) {
                if (!c.resources?.requests?.[r] || !c.resources?.limits?.[r]) errs.push(`${cid}: no ${r} request and limit`);
            }
            const tmp = (c.volumeMounts || []).find((m) => m.mountPath === "/tmp");
            if (!tmp || !spec.volumes.find((v) => v.name === tmp.name)?.emptyDir) if (spec.containers.includes(c)) errs.push(`${cid}: /tmp is not an emptyDir`);
        }
    }
    const budget = (p) => (p.periodSeconds ?? 10) * (p.failureThreshold ?? 3) + (p.initialDelaySeconds ?? 0);
    let gwBudget = 0, maxBudget = 0;
    for (const m of mxContainers) {
        const id = m.w.metadata.name;
        const sleep = m.c.lifecycle?.preStop?.exec?.command;
        const sleepS = sleep && /sleep$/.test(sleep[0]) ? Number(sleep[1]) : (m.c.lifecycle?.preStop?.sleep?.seconds ?? 0);
        if (!(sleepS >= 3)) errs.push(`${id}: no preStop sleep before SIGTERM`);
        // the drain on SIGTERM: drain_ms where the service has it (older expert-svc spelling:
        // shutdown_grace_ms), else the default
        const drainMs = m.service === "expert-svc" ? m.cfg.drain_ms ?? m.cfg.shutdown_grace_ms
            : m.service === "gateway" ? m.cfg.gateway?.drain_ms : m.cfg.stage?.drain_ms;
        const grace = drainMs !== undefined ? drainMs / 1000 : SERVICE_GRACE_S[m.service];
        const tgp = m.w.spec.template.spec.terminationGracePeriodSeconds ?? 30;
        if (tgp < sleepS + grace + 2) errs.push(`${id}: terminationGracePeriodSeconds ${tgp} < preStop ${sleepS} + shutdown grace ${grace} + 2`);
        const b = budget(m.c.startupProbe || {});
        if (m.service === "gateway") gwBudget = b; else maxBudget = Math.max(maxBudget, b);
        if (m.c.livenessProbe?.initialDelaySeconds) errs.push(`${id}: liveness initialDelaySeconds (the startup probe covers loading)`);
        // a pod must get at least 60 s, and GPU pods the time to read their weights at 1 GB/s
        const gpus = Number(m.c.resources?.limits?.["nvidia.com/gpu"] || 0);
        const need = m.service === "expert-svc" && gpus > 0
            ? m.cfg.experts.length * layerSet(m.cfg, 0, L).length * 3 * model.hidden_size * model.intermediate_size * 2 / 1e9 : 60;
        if (b < need) errs.push(`${id}: start-up budget ${b} s < ${need.toFixed(0)} s`);
    }
    if (gwBudget < maxBudget) errs.push(`the gateway's start-up budget (${gwBudget} s) is shorter than the stages' and shards' (${maxBudget} s), and it waits for them`);
    check("pod-hygiene", errs, `restricted security context, requests+limits, /tmp emptyDir, preStop + grace, start-up budgets (gateway ${gwBudget} s, others ${maxBudget} s)`);
}

// ---- 10. network policies -------------------------------------------------------------------
// Who may reach each named port of each pod: the gateway's gRPC and HTTP APIs anyone, a stage's
// gRPC the gateway and stages, a shard's gRPC only stages, every metrics port anyone (the
// scraper's namespace is the operator's), the model Job nothing.
{
    const errs = [];
    const pols = byKind("NetworkPolicy");
    if (!pols.some((p) => Object.keys(p.spec.podSelector || {}).length === 0 && p.spec.policyTypes?.includes("Ingress") && !p.spec.ingress?.length))
        errs.push("no default-deny ingress policy");
    const want = {
        gateway: { grpc: "world", http: "world", metrics: "world" },
        "attention-stage": { grpc: "attention-stage,gateway", metrics: "world" },
        "expert-shard": { grpc: "attention-stage", metrics: "world" },
        "model-fill": {},
    };
    const portNames = (w) => w.spec.template.spec.containers.flatMap((c) => (c.ports || []).map((p) => p.name || String(p.containerPort)));
    const nameOfPort = (w, port) => {
        for (const c of w.spec.template.spec.containers) for (const p of c.ports || []) if (p.containerPort === port) return p.name || String(port);
        return String(port);
    };
    for (const w of workloads) {
        const labels = podLabels(w), peers = {};
        for (const p of pols) {
            if (!matchesSel(p.spec.podSelector, labels) && Object.keys(p.spec.podSelector || {}).length) continue;
            for (const r of p.spec.ingress || []) {
                const from = new Set();
                if (!r.from?.length) from.add("world");
                for (const f of r.from || []) {
                    if (f.ipBlock || f.namespaceSelector) { from.add("world"); continue; }
                    for (const o of workloads) if (matchesSel(f.podSelector, podLabels(o))) from.add(comp(o));
                }
                for (const pt of r.ports || []) if (typeof pt.port === "string" && !containerPort(w, pt.port)) errs.push(`${p.metadata.name}: ${w.metadata.name} has no port ${pt.port}`);
                const names = r.ports?.length ? r.ports.map((pt) => typeof pt.port === "string" ? pt.port : nameOfPort(w, pt.port)) : portNames(w);
                for (const nm of names) for (const f of from) (peers[nm] ??= new Set()).add(f);
            }
        }
        const got = Object.fromEntries(Object.entries(peers).filter(([nm]) => containerPort(w, nm)).map(([nm, set]) => [nm, [...set].sort().join(",")]));
        const exp = want[comp(w)] || {};
        const show = (o) => JSON.stringify(Object.fromEntries(Object.entries(o).sort()));
        if (show(got) !== show(exp)) errs.push(`${w.metadata.name} (${comp(w)}) accepts ingress ${show(got)}, expected ${show(exp)}`);
    }
    check("network-policy", errs, "only the gateway's gRPC and HTTP ports are reachable from outside, and every metrics port; stages from gateway+stages, shards from stages");
}

// ---- 11. each config accepted by the service's own loader -----------------------------------
{
    const errs = [];
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "mx-k8s-cfg-"));
    try {
        for (const m of mxContainers) {
            const f = path.join(dir, `${m.cm.metadata.name}-${m.key}`);
            fs.writeFileSync(f, m.text);
            try {
                execFileSync(path.join(binDir, m.service), ["--check-config", f], { stdio: "pipe", timeout: 20000 });
            } catch (e) {
                errs.push(`${m.service} --check-config ${m.cm.metadata.name}/${m.key}: exit ${e.status}: ${String(e.stderr || e.message).trim().split("\n").pop()}`);
            }
        }
    } finally {
        fs.rmSync(dir, { recursive: true, force: true });
    }
    check("check-config", errs, `${mxContainers.length} configs accepted by gateway/attention-svc/expert-svc --check-config`);
}

console.log(`${passed} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);
