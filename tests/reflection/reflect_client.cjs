// reflect_client.cjs SPEC.json - an independent gRPC server reflection client against a running mx
// cluster, with no .proto file of mx: npm grpc-js-reflection-client (pinned in package-lock.json)
// lists services and fetches descriptors over grpc.reflection.v1 / v1alpha, protobufjs builds
// the types from them, @grpc/grpc-js calls Generate with those types only. SPEC (written by
// reflection_cluster.py) holds the addresses, what protoc's own descriptors say the Generation
// service looks like, and the greedy tokens a Python grpcio client got. Prints 'ok'/'FAIL' lines
// and 'N passed, N failed' last.
'use strict';
const fs = require('fs');
const grpc = require('@grpc/grpc-js');
const { GrpcReflection } = require('grpc-js-reflection-client');
const v1 = require('grpc-js-reflection-client/dist/Proto/v1').grpc.reflection.v1;
const v1alpha = require('grpc-js-reflection-client/dist/Proto/v1alpha').grpc.reflection.v1alpha;

const spec = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));
const creds = grpc.credentials.createInsecure();
const CALL_MS = 20000;
let passed = 0, failed = 0;
function check(ok, name, detail) {
    if (ok) { passed++; console.log('ok   ' + name); }
    else { failed++; console.log('FAIL ' + name + (detail ? ': ' + detail : '')); }
}
const deadline = () => ({ deadline: Date.now() + CALL_MS });
const same = (a, b) => JSON.stringify(a) === JSON.stringify(b);

// One ServerReflectionInfo stream carrying several requests, as grpcurl uses it: every request
// is written at once, the answers must come back one per request, in order, then status OK.
// Requests are ServerReflectionRequest objects or raw Buffers (sent as they are).
function oneStream(mod, pkg, addr, requests) {
    const Client = grpc.makeGenericClientConstructor({
        ServerReflectionInfo: {
            path: '/' + pkg + '.ServerReflection/ServerReflectionInfo',
            requestStream: true, responseStream: true,
            requestSerialize: (r) => Buffer.isBuffer(r) ? r : Buffer.from(r.serializeBinary()),
            responseDeserialize: (b) => mod.ServerReflectionResponse.deserializeBinary(b).toObject(),
        },
    }, 'ServerReflection', {});
    const client = new Client(addr, creds);
    return new Promise((resolve) => {
        const got = [];
        const call = client.ServerReflectionInfo(deadline());
        call.on('data', (d) => got.push(d));
        call.on('error', (e) => { client.close(); resolve({ got, status: e.code, details: e.details }); });
        call.on('status', (s) => { if (s.code === 0) { client.close(); resolve({ got, status: 0 }); } });
        for (const r of requests)
            call.write(Buffer.isBuffer(r) ? r : mod.ServerReflectionRequest.fromObject(r));
        call.end();
    });
}

// The file names of a FileDescriptorResponse (field 1 of each FileDescriptorProto), read by
// protobufjs's own descriptor.proto.
const descriptor = require('protobufjs/ext/descriptor');
function fileNames(resp) {
    const fdr = resp.fileDescriptorResponse;
    if (!fdr) return null;
    return fdr.fileDescriptorProto.map((b) => descriptor.FileDescriptorProto.decode(b).name);
}

async function listing(servers) {
    for (const [role, addr, own] of servers) {
        const want = ['grpc.health.v1.Health', 'grpc.reflection.v1.ServerReflection',
            'grpc.reflection.v1alpha.ServerReflection', own].sort();
        for (const version of ['v1', 'v1alpha']) {
            const c = new GrpcReflection(addr, creds, {}, version);
            let got;
            try { got = (await c.listServices('*', deadline())).slice().sort(); } catch (e) { got = 'error ' + e.message; }
            check(same(got, want), `${role}/${version} list_services`, `got ${JSON.stringify(got)} want ${JSON.stringify(want)}`);
        }
        // describe every service the server lists, as `grpcurl describe` does
        const c = new GrpcReflection(addr, creds, {}, 'v1');
        for (const svc of want) {
            let ok = false, detail = '';
            try {
                const d = await c.getDescriptorBySymbol(svc, deadline());
                const s = d.getProtobufJsRoot().lookupService(svc);
                ok = s.methodsArray.length > 0;
                detail = `${s.methodsArray.length} methods`;
            } catch (e) { detail = e.message; }
            check(ok, `${role} describe ${svc}`, detail);
        }
    }
}

async function describeAndGenerate() {
    const c = new GrpcReflection(spec.gateway, creds, {}, 'v1');
    let d;
    try { d = await c.getDescriptorBySymbol(spec.service, deadline()); } catch (e) {
        check(false, `descriptor of ${spec.service}`, e.message); return;
    }
    const root = d.getProtobufJsRoot();
    const svc = root.lookupService(spec.service);
    const methods = svc.methodsArray.map((m) => {
        m.resolve();
        return { name: m.name, input: m.resolvedRequestType.fullName.replace(/^\./, ''),
            output: m.resolvedResponseType.fullName.replace(/^\./, ''),
            client_streaming: !!m.requestStream, server_streaming: !!m.responseStream };
    });
    check(same(methods, spec.methods), `describe ${spec.service}: methods and their types match protoc's`,
        `reflection ${JSON.stringify(methods)} protoc ${JSON.stringify(spec.methods)}`);
    const reqType = root.lookupType(spec.methods.find((m) => m.name === 'Generate').input);
    const fields = reqType.fieldsArray.map((f) => {
        f.resolve();
        return [f.name, f.id, f.resolvedType ? f.resolvedType.fullName.replace(/^\./, '') : f.type, !!f.repeated];
    });
    // protobufjs names fields in camelCase (prompt_ids -> promptIds)
    const camel = (n) => n.replace(/_([a-z0-9])/g, (_, c) => c.toUpperCase());
    const want = spec.request_fields.map(([n, ...rest]) => [camel(n), ...rest]);
    check(same(fields, want), `describe ${reqType.fullName}: fields match protoc's`,
        `reflection ${JSON.stringify(fields)} protoc ${JSON.stringify(want)}`);

    // Generate, typed only by what reflection returned
    const pkg = d.getPackageObject({ keepCase: true, longs: Number, enums: String, defaults: true, oneofs: true });
    const Generation = spec.service.split('.').reduce((o, k) => o[k], pkg);
    const client = new Generation(spec.gateway, creds);
    const req = { prompt_ids: spec.prompt_ids,
        sampling: { temperature: 0, max_new_tokens: spec.max_new_tokens, ignore_eos: true } };
    const ids = await new Promise((resolve) => {
        const out = [];
        const call = client.Generate(req, deadline());
        call.on('data', (m) => out.push(...m.token_ids));
        call.on('error', (e) => resolve('error ' + e.message));
        call.on('end', () => resolve(out));
    });
    client.close();
    check(same(ids, spec.want_ids), 'Generate through reflected descriptors: greedy tokens equal the Python client\'s',
        `got ${JSON.stringify(ids)} want ${JSON.stringify(spec.want_ids)}`);
}

async function streams() {
    // several requests on one stream, each answered in order, with its request echoed
    const reqs = [
        { listServices: '' },
        { fileByFilename: 'mx/v1/generation.proto' },
        { fileContainingSymbol: 'mx.v1.Generation.Generate' },
        { fileContainingSymbol: 'mx.v1.FinishReason' },
        { fileContainingSymbol: 'mx.v1.GenerateRequest.prompt_ids' },
        { fileContainingSymbol: 'mx.v1.NoSuchThing' },
        { fileByFilename: 'no/such.proto' },
        { fileContainingExtension: { containingType: 'mx.v1.GenerateRequest', extensionNumber: 100 } },
        { allExtensionNumbersOfType: 'mx.v1.GenerateRequest' },
        { allExtensionNumbersOfType: 'mx.v1.NoSuchThing' },
        {},
    ];
    const r = await oneStream(v1, 'grpc.reflection.v1', spec.gateway, reqs);
    check(r.status === 0 && r.got.length === reqs.length, `gateway/v1: ${reqs.length} requests on one stream, ${reqs.length} answers, status OK`,
        `status ${r.status} ${r.details || ''}, ${r.got.length} answers`);
    if (r.got.length !== reqs.length) return;
    const g = r.got;
    check(g.every((x, i) => same(v1.ServerReflectionRequest.fromObject(reqs[i]).toObject(), x.originalRequest)),
        'each answer echoes its request (original_request)');
    check(g[0].listServicesResponse && g[0].listServicesResponse.service.some((s) => s.name === spec.service),
        'list_services on a stream', JSON.stringify(g[0]));
    check(same(fileNames(g[1]), ['mx/v1/generation.proto']), 'file_by_filename', JSON.stringify(fileNames(g[1])));
    check(same(fileNames(g[2]), ['mx/v1/generation.proto']), 'file_containing_symbol: a method', JSON.stringify(fileNames(g[2])));
    check(same(fileNames(g[3]), ['mx/v1/generation.proto']), 'file_containing_symbol: an enum', JSON.stringify(fileNames(g[3])));
    check(same(fileNames(g[4]), ['mx/v1/generation.proto']), 'file_containing_symbol: a field', JSON.stringify(fileNames(g[4])));
    const err = (x, code) => x.errorResponse && x.errorResponse.errorCode === code && x.errorResponse.errorMessage.length > 0;
    check(err(g[5], 5) && g[5].errorResponse.errorMessage.includes('mx.v1.NoSuchThing'),
        'unknown symbol: error_response NOT_FOUND naming it', JSON.stringify(g[5]));
    check(err(g[6], 5), 'unknown file: error_response NOT_FOUND', JSON.stringify(g[6]));
    check(err(g[7], 5), 'file_containing_extension: error_response NOT_FOUND (no extensions)', JSON.stringify(g[7]));
    check(g[8].allExtensionNumbersResponse && g[8].allExtensionNumbersResponse.baseTypeName === 'mx.v1.GenerateRequest'
        && g[8].allExtensionNumbersResponse.extensionNumber.length === 0,
        'all_extension_numbers_of_type of a message: none', JSON.stringify(g[8]));
    check(err(g[9], 5), 'all_extension_numbers_of_type of an unknown type: NOT_FOUND', JSON.stringify(g[9]));
    check(err(g[10], 12), 'a request setting nothing: error_response UNIMPLEMENTED', JSON.stringify(g[10]));

    // a malformed request gets an error_response and the stream goes on
    const bad = await oneStream(v1alpha, 'grpc.reflection.v1alpha', spec.gateway, [Buffer.from([0x1a, 0x7f, 0x41]), { listServices: '' }]);
    check(bad.status === 0 && bad.got.length === 2 && err(bad.got[0], 3) && bad.got[1].listServicesResponse,
        'v1alpha: malformed bytes get error_response INVALID_ARGUMENT, the next request is answered',
        `status ${bad.status} ${bad.details || ''} ${JSON.stringify(bad.got)}`);

    // a file and its imports, transitively (attention_stage.proto imports tensor.proto)
    const st = await oneStream(v1alpha, 'grpc.reflection.v1alpha', spec.stage, [{ fileContainingSymbol: 'mx.internal.v1.RunBatchRequest' }]);
    check(st.status === 0 && same(fileNames(st.got[0] || {}), ['mx/internal/v1/attention_stage.proto', 'mx/internal/v1/tensor.proto']),
        'stage/v1alpha: a message\'s file comes with its import', JSON.stringify(st.got.map(fileNames)));
}

(async () => {
    await listing([['gateway', spec.gateway, spec.service], ['stage', spec.stage, 'mx.internal.v1.AttentionStage'],
        ['expert', spec.expert, 'mx.internal.v1.ExpertShard']]);
    await describeAndGenerate();
    await streams();
})().catch((e) => check(false, 'client', e.stack)).finally(() => {
    console.log(`${passed} passed, ${failed} failed`);
    process.exit(failed ? 1 : 0);
});
