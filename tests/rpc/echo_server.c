/* echo_server.c - a small server on the mx RPC layer for the Python client tests
 * (tests/suites/rpc_python_client.sh): raw-bytes echo and chunked stream, a health switch,
 * and mx.v1.Generation/Complete answering from the request alone (no model).
 * Prints "port N" once serving; stops cleanly on SIGTERM/SIGINT. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mx/v1/generation.pb-c.h"
#include "core/rpc/health.h"
#include "core/rpc/pb.h"
#include "core/rpc/server.h"
#include "core/rpc/signals.h"
#include "core/rpc/tune.h"

static void on_echo(mx_rpc_call *call, const uint8_t *req, size_t len, void *user)
{
    (void)user;
    mx_error err;
    if (mx_rpc_call_write_copy(call, req, len, &err) != 0)
        mx_rpc_call_set_error(call, &err);
}

/* Streams the request back in 3-byte chunks. */
static void on_chunks(mx_rpc_call *call, const uint8_t *req, size_t len, void *user)
{
    (void)user;
    for (size_t off = 0; off < len; off += 3) {
        size_t n = len - off < 3 ? len - off : 3;
        if (mx_rpc_call_write_copy(call, req + off, n, NULL) != 0)
            return;
    }
}

/* Request "service=SERVING" or "service=NOT_SERVING" (raw text). */
static void on_set_health(mx_rpc_call *call, const uint8_t *req, size_t len, void *user)
{
    (void)user;
    char buf[256];
    snprintf(buf, sizeof buf, "%.*s", (int)len, (const char *)req);
    char *eq = strchr(buf, '=');
    if (!eq) {
        mx_rpc_call_set_status(call, GRPC_STATUS_INVALID_ARGUMENT, "expected service=STATUS");
        return;
    }
    *eq = '\0';
    mx_rpc_serving st = strcmp(eq + 1, "SERVING") == 0 ? MX_RPC_SERVING : MX_RPC_NOT_SERVING;
    mx_error err;
    if (mx_rpc_health_set(mx_rpc_call_server(call), buf, st, &err) != 0)
        mx_rpc_call_set_error(call, &err);
    else
        mx_rpc_call_write_copy(call, "", 0, NULL);
}

/* Answers with the prompt ids reversed, the prompt text, and the token counts. */
static void on_complete(mx_rpc_call *call, const uint8_t *req, size_t len, void *user)
{
    (void)user;
    ProtobufCMessage *m;
    mx_error err;
    if (mx_rpc_pb_unpack(&mx__v1__generate_request__descriptor, req, len, &m, &err) != 0) {
        mx_rpc_call_set_error(call, &err);
        return;
    }
    Mx__V1__GenerateRequest *r = (Mx__V1__GenerateRequest *)m;
    uint32_t *ids = malloc((r->n_prompt_ids ? r->n_prompt_ids : 1) * sizeof *ids);
    if (!ids) {
        mx_rpc_call_set_status(call, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
        protobuf_c_message_free_unpacked(m, NULL);
        return;
    }
    for (size_t i = 0; i < r->n_prompt_ids; i++)
        ids[i] = r->prompt_ids[r->n_prompt_ids - 1 - i];
    Mx__V1__Usage usage = MX__V1__USAGE__INIT;
    usage.prompt_tokens = (uint32_t)r->n_prompt_ids;
    usage.completion_tokens = (uint32_t)r->n_prompt_ids;
    Mx__V1__CompleteResponse resp = MX__V1__COMPLETE_RESPONSE__INIT;
    resp.n_token_ids = r->n_prompt_ids;
    resp.token_ids = ids;
    resp.text = r->prompt;
    resp.finish_reason = MX__V1__FINISH_REASON__FINISH_REASON_LENGTH;
    resp.usage = &usage;
    resp.request_id = r->request_id;
    if (mx_rpc_pb_write(call, &resp.base, &err) != 0)
        mx_rpc_call_set_error(call, &err);
    free(ids);
    protobuf_c_message_free_unpacked(m, NULL);
}

int main(void)
{
    mx_error err;
    mx_rpc_tune_malloc();
    if (mx_rpc_block_stop_signals(&err) != 0) {
        fprintf(stderr, "echo_server: %s\n", err.msg);
        return 1;
    }
    mx_rpc_server_options o = {.address = "127.0.0.1:0", .max_message_bytes = 1 << 20,
                               .worker_threads = 4};
    mx_rpc_server *srv;
    if (mx_rpc_server_create(&o, &srv, &err) != 0 || mx_rpc_health_attach(srv, &err) != 0 ||
        mx_rpc_server_add_unary(srv, "/mx.test.Echo/Echo", on_echo, NULL, &err) != 0 ||
        mx_rpc_server_add_stream(srv, "/mx.test.Echo/Chunks", on_chunks, NULL, &err) != 0 ||
        mx_rpc_server_add_unary(srv, "/mx.test.Echo/SetHealth", on_set_health, NULL, &err) != 0 ||
        mx_rpc_server_add_unary(srv, "/mx.v1.Generation/Complete", on_complete, NULL, &err) != 0 ||
        mx_rpc_server_start(srv, &err) != 0) {
        fprintf(stderr, "echo_server: %s\n", err.msg);
        return 1;
    }
    printf("port %d\n", mx_rpc_server_port(srv));
    fflush(stdout);
    int sig = mx_rpc_wait_stop_signal(-1, &err);
    mx_rpc_server_shutdown(srv, 2000);
    mx_rpc_server_destroy(srv);
    printf("stopped on signal %d\n", sig);
    return sig > 0 ? 0 : 1;
}
