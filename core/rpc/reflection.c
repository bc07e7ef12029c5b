/* reflection.c - grpc.reflection.v1 / v1alpha ServerReflection on top of server.h: an index of
 * the embedded FileDescriptorSet (symbol -> file, file -> imports) built once at attach, and a
 * bidirectional stream handler that reads requests one by one (mx_rpc_call_read) and answers
 * each in order. The server's internals it still reads: the registered methods, and a hook
 * that frees the index with the server. */
#include "reflection.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "grpc/reflection/v1/reflection.pb-c.h"
#include "pb.h"
#include "server_internal.h"

/* The FileDescriptorSet of every .proto of the project, generated into $(BUILD)/gen by
 * proto/module.mk (protoc --descriptor_set_out --include_imports). */
extern const unsigned char mx_rpc_descriptor_set[];
extern const size_t mx_rpc_descriptor_set_len;

#define V1_METHOD "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"
#define V1ALPHA_METHOD "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"
#define IDLE_MS 30000      /* a stream with no request for this long is ended (it holds a worker) */

/* grpc status codes carried in ErrorResponse.error_code */
#define CODE_INVALID_ARGUMENT 3
#define CODE_NOT_FOUND 5
#define CODE_UNIMPLEMENTED 12

typedef struct refl_file {
    char *name;
    const uint8_t *data;            /* the serialized FileDescriptorProto, in the embedded set */
    size_t len;
    int *deps;                      /* indices of the files it imports */
    int n_deps;
} refl_file;

typedef struct refl_symbol {
    char *name;                     /* fully qualified, no leading dot */
    int file;
    int is_message;
} refl_symbol;

typedef struct mx_rpc_reflection {
    mx_rpc_server *srv;
    refl_file *files;
    int n_files;
    refl_symbol *symbols;           /* sorted by name after attach */
    int n_symbols, cap_symbols;
} mx_rpc_reflection;

/* ---- protobuf wire format, just what descriptor.proto needs ---- */

typedef struct wire {
    const uint8_t *p, *end;
} wire;

static int wire_varint(wire *w, uint64_t *v)
{
    *v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
        if (w->p >= w->end)
            return -1;
        uint8_t b = *w->p++;
        *v |= (uint64_t)(b & 0x7f) << shift;
        if (!(b & 0x80))
            return 0;
    }
    return -1;
}

/* Next field: 1 with its number; length-delimited fields also give their bytes (others are
 * skipped and give len 0). 0 at the end, -1 on malformed bytes. */
static int wire_next(wire *w, uint32_t *field, int *type, const uint8_t **data, size_t *len)
{
    if (w->p == w->end)
        return 0;
    uint64_t key, n;
    if (wire_varint(w, &key) || (key >> 3) == 0 || (key >> 3) > UINT32_MAX)
        return -1;
    *field = (uint32_t)(key >> 3);
    *type = (int)(key & 7);
    *data = NULL;
    *len = 0;
    switch (*type) {
    case 0:
        return wire_varint(w, &n) ? -1 : 1;
    case 1:
        n = 8;
        break;
    case 5:
        n = 4;
        break;
    case 2:
        if (wire_varint(w, &n) || n > (uint64_t)(w->end - w->p))
            return -1;
        *data = w->p;
        *len = (size_t)n;
        break;
    default:                        /* groups: not used by descriptor.proto */
        return -1;
    }
    if (n > (uint64_t)(w->end - w->p))
        return -1;
    w->p += n;
    return 1;
}

/* The string field `want` of a message (the first one), or "" when absent. */
static int wire_string(const uint8_t *msg, size_t msg_len, uint32_t want, char **out)
{
    wire w = {msg, msg + msg_len};
    uint32_t f;
    int t, rc;
    const uint8_t *d;
    size_t n;
    const uint8_t *found = (const uint8_t *)"";
    size_t found_len = 0;
    while ((rc = wire_next(&w, &f, &t, &d, &n)) == 1) {
        if (f == want && t == 2) {
            found = d;
            found_len = n;
            break;
        }
    }
    if (rc < 0)
        return -1;
    *out = strndup((const char *)found, found_len);
    return *out ? 0 : -2;
}

/* ---- the index ---- */

static int add_symbol(mx_rpc_reflection *r, const char *scope, const char *name, int file,
                      int is_message, char **full, mx_error *err)
{
    if (!name[0])
        return mx_fail(err, MX_EFORMAT, "reflection: a descriptor in %s has no name", r->files[file].name);
    if (r->n_symbols == r->cap_symbols) {
        int cap = r->cap_symbols ? 2 * r->cap_symbols : 256;
        refl_symbol *s = realloc(r->symbols, (size_t)cap * sizeof *s);
        if (!s)
            return mx_fail(err, MX_ENOMEM, "reflection: out of memory");
        r->symbols = s;
        r->cap_symbols = cap;
    }
    size_t n = strlen(scope) + strlen(name) + 2;
    char *s = malloc(n);
    if (!s)
        return mx_fail(err, MX_ENOMEM, "reflection: out of memory");
    snprintf(s, n, "%s%s%s", scope, scope[0] ? "." : "", name);
    r->symbols[r->n_symbols++] = (refl_symbol){s, file, is_message};
    if (full)
        *full = s;
    return 0;
}

/* Adds the name (field 1) of each child message in field `field` of msg, under scope. */
static int add_child_names(mx_rpc_reflection *r, const uint8_t *msg, size_t len, uint32_t field,
                           const char *scope, int file, mx_error *err)
{
    wire w = {msg, msg + len};
    uint32_t f;
    int t, rc;
    const uint8_t *d;
    size_t n;
    while ((rc = wire_next(&w, &f, &t, &d, &n)) == 1) {
        if (f != field || t != 2)
            continue;
        char *name;
        if (wire_string(d, n, 1, &name))
            return mx_fail(err, MX_EFORMAT, "reflection: malformed descriptor in %s", r->files[file].name);
        int arc = add_symbol(r, scope, name, file, 0, NULL, err);
        free(name);
        MX_TRY(arc);
    }
    return rc < 0 ? mx_fail(err, MX_EFORMAT, "reflection: malformed descriptor in %s", r->files[file].name) : 0;
}

/* An EnumDescriptorProto: the enum, and its values in the enum's own scope (protobuf's rule). */
static int index_enum(mx_rpc_reflection *r, const uint8_t *e, size_t len, const char *scope,
                      int file, mx_error *err)
{
    char *name;
    if (wire_string(e, len, 1, &name))
        return mx_fail(err, MX_EFORMAT, "reflection: malformed enum in %s", r->files[file].name);
    int rc = add_symbol(r, scope, name, file, 0, NULL, err);
    free(name);
    MX_TRY(rc);
    return add_child_names(r, e, len, 2, scope, file, err);
}

/* A DescriptorProto: the message, its fields, oneofs, extensions, nested messages and enums. */
static int index_message(mx_rpc_reflection *r, const uint8_t *m, size_t len, const char *scope,
                         int file, int depth, mx_error *err)
{
    if (depth > 32)
        return mx_fail(err, MX_EFORMAT, "reflection: messages nested too deep in %s", r->files[file].name);
    char *name, *full;
    if (wire_string(m, len, 1, &name))
        return mx_fail(err, MX_EFORMAT, "reflection: malformed message in %s", r->files[file].name);
    int rc = add_symbol(r, scope, name, file, 1, &full, err);
    free(name);
    MX_TRY(rc);
    MX_TRY(add_child_names(r, m, len, 2, full, file, err));   /* fields */
    MX_TRY(add_child_names(r, m, len, 6, full, file, err));   /* extensions */
    MX_TRY(add_child_names(r, m, len, 8, full, file, err));   /* oneofs */
    wire w = {m, m + len};
    uint32_t f;
    int t;
    const uint8_t *d;
    size_t n;
    while ((rc = wire_next(&w, &f, &t, &d, &n)) == 1) {
        if (t == 2 && f == 3)
            MX_TRY(index_message(r, d, n, full, file, depth + 1, err));
        else if (t == 2 && f == 4)
            MX_TRY(index_enum(r, d, n, full, file, err));
    }
    return rc < 0 ? mx_fail(err, MX_EFORMAT, "reflection: malformed message in %s", r->files[file].name) : 0;
}

/* A FileDescriptorProto: its name and package were read; index its top-level declarations. */
static int index_file(mx_rpc_reflection *r, int file, const char *package, mx_error *err)
{
    const refl_file *fd = &r->files[file];
    wire w = {fd->data, fd->data + fd->len};
    uint32_t f;
    int t, rc;
    const uint8_t *d;
    size_t n;
    while ((rc = wire_next(&w, &f, &t, &d, &n)) == 1) {
        if (t != 2)
            continue;
        if (f == 4) {
            MX_TRY(index_message(r, d, n, package, file, 0, err));
        } else if (f == 5) {
            MX_TRY(index_enum(r, d, n, package, file, err));
        } else if (f == 7) {                      /* an extension declared at file level */
            char *name;
            if (wire_string(d, n, 1, &name))
                return mx_fail(err, MX_EFORMAT, "reflection: malformed extension in %s", fd->name);
            int arc = add_symbol(r, package, name, file, 0, NULL, err);
            free(name);
            MX_TRY(arc);
        } else if (f == 6) {                      /* a service and its methods */
            char *name, *full;
            if (wire_string(d, n, 1, &name))
                return mx_fail(err, MX_EFORMAT, "reflection: malformed service in %s", fd->name);
            int arc = add_symbol(r, package, name, file, 0, &full, err);
            free(name);
            MX_TRY(arc);
            MX_TRY(add_child_names(r, d, n, 2, full, file, err));
        }
    }
    return rc < 0 ? mx_fail(err, MX_EFORMAT, "reflection: malformed file descriptor %s", fd->name) : 0;
}

static int find_file(const mx_rpc_reflection *r, const char *name)
{
    for (int i = 0; i < r->n_files; i++)
        if (strcmp(r->files[i].name, name) == 0)
            return i;
    return -1;
}

static int cmp_symbol(const void *a, const void *b)
{
    return strcmp(((const refl_symbol *)a)->name, ((const refl_symbol *)b)->name);
}

static const refl_symbol *find_symbol(const mx_rpc_reflection *r, const char *name)
{
    if (name[0] == '.')             /* a type reference as written inside descriptors */
        name++;
    refl_symbol key = {(char *)name, 0, 0};
    return bsearch(&key, r->symbols, (size_t)r->n_symbols, sizeof key, cmp_symbol);
}

/* The imports of every file, resolved to indices (the set holds them: --include_imports). */
static int resolve_deps(mx_rpc_reflection *r, mx_error *err)
{
    for (int i = 0; i < r->n_files; i++) {
        refl_file *fd = &r->files[i];
        wire w = {fd->data, fd->data + fd->len};
        uint32_t f;
        int t, rc;
        const uint8_t *d;
        size_t n;
        while ((rc = wire_next(&w, &f, &t, &d, &n)) == 1) {
            if (f != 3 || t != 2)
                continue;
            char dep[512];
            if (n >= sizeof dep)
                return mx_fail(err, MX_EFORMAT, "reflection: an import of %s is too long", fd->name);
            memcpy(dep, d, n);
            dep[n] = '\0';
            int k = find_file(r, dep);
            if (k < 0)
                return mx_fail(err, MX_EFORMAT, "reflection: %s imports %s, which is not in the "
                               "descriptor set", fd->name, dep);
            int *deps = realloc(fd->deps, (size_t)(fd->n_deps + 1) * sizeof *deps);
            if (!deps)
                return mx_fail(err, MX_ENOMEM, "reflection: out of memory");
            fd->deps = deps;
            fd->deps[fd->n_deps++] = k;
        }
        if (rc < 0)
            return mx_fail(err, MX_EFORMAT, "reflection: malformed file descriptor %s", fd->name);
    }
    return 0;
}

static int build_index(mx_rpc_reflection *r, const uint8_t *set, size_t set_len, mx_error *err)
{
    wire w = {set, set + set_len};
    uint32_t f;
    int t, rc;
    const uint8_t *d;
    size_t n;
    while ((rc = wire_next(&w, &f, &t, &d, &n)) == 1) {
        if (f != 1 || t != 2)       /* FileDescriptorSet.file */
            continue;
        refl_file *files = realloc(r->files, (size_t)(r->n_files + 1) * sizeof *files);
        if (!files)
            return mx_fail(err, MX_ENOMEM, "reflection: out of memory");
        r->files = files;
        refl_file *fd = &r->files[r->n_files];
        *fd = (refl_file){.data = d, .len = n};
        if (wire_string(d, n, 1, &fd->name))
            return mx_fail(err, MX_EFORMAT, "reflection: malformed file descriptor %d", r->n_files);
        r->n_files++;
        if (!fd->name[0] || find_file(r, fd->name) != r->n_files - 1)
            return mx_fail(err, MX_EFORMAT, "reflection: file descriptor %d has no or a repeated name",
                           r->n_files - 1);
        char *package;
        if (wire_string(d, n, 2, &package))
            return mx_fail(err, MX_EFORMAT, "reflection: malformed file descriptor %s", fd->name);
        int irc = index_file(r, r->n_files - 1, package, err);
        free(package);
        MX_TRY(irc);
    }
    if (rc < 0 || r->n_files == 0)
        return mx_fail(err, MX_EFORMAT, "reflection: the embedded descriptor set is malformed or empty");
    MX_TRY(resolve_deps(r, err));
    qsort(r->symbols, (size_t)r->n_symbols, sizeof *r->symbols, cmp_symbol);
    for (int i = 1; i < r->n_symbols; i++)
        if (strcmp(r->symbols[i - 1].name, r->symbols[i].name) == 0)
            return mx_fail(err, MX_EFORMAT, "reflection: %s is declared twice", r->symbols[i].name);
    return 0;
}

static void reflection_free(mx_rpc_reflection *r)
{
    if (!r)
        return;
    for (int i = 0; i < r->n_files; i++) {
        free(r->files[i].name);
        free(r->files[i].deps);
    }
    free(r->files);
    for (int i = 0; i < r->n_symbols; i++)
        free(r->symbols[i].name);
    free(r->symbols);
    free(r);
}

/* ---- answers ---- */

typedef Grpc__Reflection__V1__ServerReflectionRequest refl_request;
typedef Grpc__Reflection__V1__ServerReflectionResponse refl_response;

/* Sends answer as the response to req, in the member of the response's oneof its type names
 * (original_request echoes req, as the protocol asks). */
static int send_response(mx_rpc_call *call, refl_request *req, ProtobufCMessage *answer, mx_error *err)
{
    refl_response res = GRPC__REFLECTION__V1__SERVER_REFLECTION_RESPONSE__INIT;
    const ProtobufCMessageDescriptor *d = answer->descriptor;
    if (d == &grpc__reflection__v1__error_response__descriptor) {
        res.message_response_case = GRPC__REFLECTION__V1__SERVER_REFLECTION_RESPONSE__MESSAGE_RESPONSE_ERROR_RESPONSE;
        res.error_response = (Grpc__Reflection__V1__ErrorResponse *)answer;
    } else if (d == &grpc__reflection__v1__file_descriptor_response__descriptor) {
        res.message_response_case = GRPC__REFLECTION__V1__SERVER_REFLECTION_RESPONSE__MESSAGE_RESPONSE_FILE_DESCRIPTOR_RESPONSE;
        res.file_descriptor_response = (Grpc__Reflection__V1__FileDescriptorResponse *)answer;
    } else if (d == &grpc__reflection__v1__list_service_response__descriptor) {
        res.message_response_case = GRPC__REFLECTION__V1__SERVER_REFLECTION_RESPONSE__MESSAGE_RESPONSE_LIST_SERVICES_RESPONSE;
        res.list_services_response = (Grpc__Reflection__V1__ListServiceResponse *)answer;
    } else if (d == &grpc__reflection__v1__extension_number_response__descriptor) {
        res.message_response_case =
            GRPC__REFLECTION__V1__SERVER_REFLECTION_RESPONSE__MESSAGE_RESPONSE_ALL_EXTENSION_NUMBERS_RESPONSE;
        res.all_extension_numbers_response = (Grpc__Reflection__V1__ExtensionNumberResponse *)answer;
    } else {
        return mx_fail(err, MX_EINTERNAL, "reflection: no response member for %s", d->name);
    }
    if (req) {
        res.valid_host = req->host;
        res.original_request = req;
    }
    return mx_rpc_pb_write(call, &res.base, err);
}

static int send_error(mx_rpc_call *call, refl_request *req, int code, const char *msg, mx_error *err)
{
    Grpc__Reflection__V1__ErrorResponse e = GRPC__REFLECTION__V1__ERROR_RESPONSE__INIT;
    e.error_code = code;
    e.error_message = (char *)msg;
    return send_response(call, req, &e.base, err);
}

/* The file, then every file it imports, transitively, each once (breadth first). */
static int send_file(const mx_rpc_reflection *r, mx_rpc_call *call, refl_request *req, int file,
                     mx_error *err)
{
    int *order = malloc((size_t)r->n_files * sizeof *order);
    char *seen = calloc((size_t)r->n_files, 1);
    ProtobufCBinaryData *bytes = malloc((size_t)r->n_files * sizeof *bytes);
    int rc;
    if (!order || !seen || !bytes) {
        rc = mx_fail(err, MX_ENOMEM, "reflection: out of memory");
        goto out;
    }
    int n = 0;
    order[n++] = file;
    seen[file] = 1;
    for (int i = 0; i < n; i++) {
        const refl_file *fd = &r->files[order[i]];
        bytes[i] = (ProtobufCBinaryData){fd->len, (uint8_t *)fd->data};
        for (int k = 0; k < fd->n_deps; k++) {
            if (!seen[fd->deps[k]]) {
                seen[fd->deps[k]] = 1;
                order[n++] = fd->deps[k];
            }
        }
    }
    Grpc__Reflection__V1__FileDescriptorResponse fdr = GRPC__REFLECTION__V1__FILE_DESCRIPTOR_RESPONSE__INIT;
    fdr.n_file_descriptor_proto = (size_t)n;
    fdr.file_descriptor_proto = bytes;
    rc = send_response(call, req, &fdr.base, err);
out:
    free(order);
    free(seen);
    free(bytes);
    return rc;
}

static int cmp_name(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* The services of the methods registered on the server ("/pkg.Service/Method"), sorted, once
 * each. The method table does not change after start. */
static int send_services(const mx_rpc_reflection *r, mx_rpc_call *call, refl_request *req, mx_error *err)
{
    const mx_rpc_server *srv = r->srv;
    char **names = calloc((size_t)srv->n_methods + 1, sizeof *names);
    Grpc__Reflection__V1__ServiceResponse *svc = calloc((size_t)srv->n_methods + 1, sizeof *svc);
    Grpc__Reflection__V1__ServiceResponse **ptrs = calloc((size_t)srv->n_methods + 1, sizeof *ptrs);
    int n = 0, rc = 0;
    if (!names || !svc || !ptrs) {
        rc = mx_fail(err, MX_ENOMEM, "reflection: out of memory");
        goto out;
    }
    for (int i = 0; i < srv->n_methods; i++) {
        const char *m = srv->methods[i].name + 1;   /* registration checked "/x/y" */
        const char *slash = strchr(m, '/');
        char *name = strndup(m, (size_t)(slash - m));
        if (!name) {
            rc = mx_fail(err, MX_ENOMEM, "reflection: out of memory");
            goto out;
        }
        int dup = 0;
        for (int k = 0; k < n && !dup; k++)
            dup = strcmp(names[k], name) == 0;
        if (dup)
            free(name);
        else
            names[n++] = name;
    }
    qsort(names, (size_t)n, sizeof *names, cmp_name);
    for (int i = 0; i < n; i++) {
        svc[i] = (Grpc__Reflection__V1__ServiceResponse)GRPC__REFLECTION__V1__SERVICE_RESPONSE__INIT;
        svc[i].name = names[i];
        ptrs[i] = &svc[i];
    }
    Grpc__Reflection__V1__ListServiceResponse list = GRPC__REFLECTION__V1__LIST_SERVICE_RESPONSE__INIT;
    list.n_service = (size_t)n;
    list.service = ptrs;
    rc = send_response(call, req, &list.base, err);
out:
    for (int i = 0; names && i < n; i++)
        free(names[i]);
    free(names);
    free(svc);
    free(ptrs);
    return rc;
}

/* Answers one request; an error return means the stream is gone (nothing more to send). */
static int answer(const mx_rpc_reflection *r, mx_rpc_call *call, const uint8_t *data, size_t len,
                  mx_error *err)
{
    ProtobufCMessage *m;
    mx_error perr = {0};
    if (mx_rpc_pb_unpack(&grpc__reflection__v1__server_reflection_request__descriptor, data, len, &m, &perr))
        return send_error(call, NULL, CODE_INVALID_ARGUMENT, perr.msg, err);
    refl_request *req = (refl_request *)m;
    char msg[MX_ERROR_MSG_MAX];
    int rc;
    const refl_symbol *s;
    int file;
    switch (req->message_request_case) {
    case GRPC__REFLECTION__V1__SERVER_REFLECTION_REQUEST__MESSAGE_REQUEST_LIST_SERVICES:
        rc = send_services(r, call, req, err);
        break;
    case GRPC__REFLECTION__V1__SERVER_REFLECTION_REQUEST__MESSAGE_REQUEST_FILE_BY_FILENAME:
        file = find_file(r, req->file_by_filename);
        if (file >= 0) {
            rc = send_file(r, call, req, file, err);
        } else {
            snprintf(msg, sizeof msg, "no file named '%s' (files are named like 'mx/v1/generation.proto')",
                     req->file_by_filename);
            rc = send_error(call, req, CODE_NOT_FOUND, msg, err);
        }
        break;
    case GRPC__REFLECTION__V1__SERVER_REFLECTION_REQUEST__MESSAGE_REQUEST_FILE_CONTAINING_SYMBOL:
        s = find_symbol(r, req->file_containing_symbol);
        if (s) {
            rc = send_file(r, call, req, s->file, err);
        } else {
            snprintf(msg, sizeof msg, "no symbol named '%s' (give a fully qualified name, e.g. "
                     "'mx.v1.Generation' or 'mx.v1.Generation.Generate')", req->file_containing_symbol);
            rc = send_error(call, req, CODE_NOT_FOUND, msg, err);
        }
        break;
    case GRPC__REFLECTION__V1__SERVER_REFLECTION_REQUEST__MESSAGE_REQUEST_FILE_CONTAINING_EXTENSION:
        snprintf(msg, sizeof msg, "no extension %d of '%s': this server declares no extensions",
                 req->file_containing_extension ? req->file_containing_extension->extension_number : 0,
                 req->file_containing_extension ? req->file_containing_extension->containing_type : "");
        rc = send_error(call, req, CODE_NOT_FOUND, msg, err);
        break;
    case GRPC__REFLECTION__V1__SERVER_REFLECTION_REQUEST__MESSAGE_REQUEST_ALL_EXTENSION_NUMBERS_OF_TYPE:
        s = find_symbol(r, req->all_extension_numbers_of_type);
        if (s && s->is_message) {   /* a known message type: none of its numbers are extended */
            Grpc__Reflection__V1__ExtensionNumberResponse en = GRPC__REFLECTION__V1__EXTENSION_NUMBER_RESPONSE__INIT;
            en.base_type_name = s->name;
            rc = send_response(call, req, &en.base, err);
        } else {
            snprintf(msg, sizeof msg, "no message type named '%s'", req->all_extension_numbers_of_type);
            rc = send_error(call, req, CODE_NOT_FOUND, msg, err);
        }
        break;
    default:
        rc = send_error(call, req, CODE_UNIMPLEMENTED,
                        "the request sets none of list_services, file_by_filename, "
                        "file_containing_symbol, file_containing_extension, "
                        "all_extension_numbers_of_type", err);
        break;
    }
    protobuf_c_message_free_unpacked(m, NULL);
    return rc;
}

/* ---- the stream ---- */

static void on_info(mx_rpc_call *call, const uint8_t *req, size_t len, void *user)
{
    mx_rpc_reflection *r = user;
    mx_error err = {0};
    if (answer(r, call, req, len, &err))
        return;                     /* the client is gone */
    for (;;) {
        mx_rpc_bytes next = {0};
        int rc = mx_rpc_call_read(call, IDLE_MS, &next);
        if (rc <= 0)
            return;                 /* 0: the client is done, OK; -1: the call already ended */
        rc = answer(r, call, next.data, next.len, &err);
        mx_rpc_bytes_free(&next);
        if (rc)
            return;
    }
}

/* ---- attach ---- */

static void on_destroy(void *ctx)
{
    reflection_free(ctx);
}

int mx_rpc_reflection_attach(mx_rpc_server *srv, mx_error *err)
{
    if (srv->started)
        return mx_fail(err, MX_EINVAL, "reflection: attached after the server started");
    mx_rpc_reflection *r = calloc(1, sizeof *r);
    if (!r)
        return mx_fail(err, MX_ENOMEM, "reflection: out of memory");
    r->srv = srv;
    int rc = build_index(r, mx_rpc_descriptor_set, mx_rpc_descriptor_set_len, err);
    if (!rc)
        rc = mx_rpc_server_add_hook(srv, (mx_rpc_server_hook){NULL, on_destroy, r}, err);
    if (rc) {
        reflection_free(r);
        return rc;
    }
    /* From here r belongs to the server (freed by on_destroy), registered or not. */
    MX_TRY(mx_rpc_server_add_stream(srv, V1_METHOD, on_info, r, err));
    return mx_rpc_server_add_stream(srv, V1ALPHA_METHOD, on_info, r, err);
}
