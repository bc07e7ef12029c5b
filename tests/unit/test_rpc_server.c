/* test_rpc_server.c - the RPC layer end to end: an mx server and mx clients in one process
 * over loopback on an ephemeral port (unary, streaming, unknown method, deadline,
 * cancellation and the handler it wakes, size limit, malformed protobuf, fan-out, health,
 * graceful shutdown, idle workers left asleep). */
#include <dirent.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "grpc/health/v1/health.pb-c.h"
#include "mx/v1/generation.pb-c.h"
#include "core/rpc/client.h"
#include "core/rpc/health.h"
#include "core/rpc/pb.h"
#include "core/rpc/server.h"

typedef struct fixture {
    mx_rpc_server *srv;
    mx_rpc_channel *ch;
    char address[64];
    atomic_int saw_cancel;     /* set by handlers that noticed cancellation */
    atomic_int handler_done;   /* set by the slow handler when it finishes */
    atomic_int woken;          /* h_block: 1 = its cancel callback woke it, 2 = also at once on
                                  a late registration, -1 = its wait ran out */
    _Atomic double woken_ms;   /* h_block: when it woke */
} fixture;

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

/* ---- handlers ---- */

static void h_echo(mx_rpc_call *call, const uint8_t *req, size_t len, void *user)
{
    (void)user;
    mx_error err;
    if (mx_rpc_call_write_copy(call, req, len, &err) != 0)
        mx_rpc_call_set_error(call, &err);
}

/* Request: a decimal count n; writes n messages "0", "1", ... */
static void h_count(mx_rpc_call *call, const uint8_t *req, size_t len, void *user)
{
    (void)user;
    char buf[32];
    snprintf(buf, sizeof buf, "%.*s", (int)len, (const char *)req);
    int n = atoi(buf);
    for (int i = 0; i < n; i++) {
        char msg[16];
        int m = snprintf(msg, sizeof msg, "%d", i);
        if (mx_rpc_call_write_copy(call, msg, (size_t)m, NULL) != 0)
            return;
    }
}

/* Writes a message every 10 ms until the client goes away. */
static void h_forever(mx_rpc_call *call, const uint8_t *req, size_t len, void *user)
{
    (void)req, (void)len;
    fixture *f = user;
    for (int i = 0; i < 1000; i++) {
        if (mx_rpc_call_cancelled(call) || mx_rpc_call_write_copy(call, "x", 1, NULL) != 0) {
            atomic_store(&f->saw_cancel, 1);
            return;
        }
        usleep(10000);
    }
}

/* Waits (up to 5 s) for cancellation and records that it saw it. */
static void h_wait_cancel(mx_rpc_call *call, const uint8_t *req, size_t len, void *user)
{
    (void)req, (void)len;
    fixture *f = user;
    for (int i = 0; i < 500 && !mx_rpc_call_cancelled(call); i++)
        usleep(10000);
    if (mx_rpc_call_cancelled(call))
        atomic_store(&f->saw_cancel, 1);
    mx_rpc_call_set_status(call, GRPC_STATUS_CANCELLED, "gave up");
}

/* What h_block sleeps on: its cancel callback sets fired and signals. */
typedef struct block_wait {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int fired;
} block_wait;

static void on_block_cancel(void *arg)
{
    block_wait *b = arg;
    pthread_mutex_lock(&b->mu);
    b->fired++;
    pthread_cond_signal(&b->cv);
    pthread_mutex_unlock(&b->mu);
}

/* Writes one message, then sleeps on its own condition variable (10 s at most, no polling)
 * until mx_rpc_call_on_cancel wakes it; then checks that a registration on a call already
 * cancelled runs the callback at once. */
static void h_block(mx_rpc_call *call, const uint8_t *req, size_t len, void *user)
{
    (void)req, (void)len;
    fixture *f = user;
    block_wait b = {.fired = 0};
    pthread_mutex_init(&b.mu, NULL);
    pthread_cond_init(&b.cv, NULL);
    mx_rpc_call_on_cancel(call, on_block_cancel, &b);
    if (mx_rpc_call_write_copy(call, "ready", 5, NULL) == 0) {
        struct timespec until;
        clock_gettime(CLOCK_REALTIME, &until);
        until.tv_sec += 10;
        pthread_mutex_lock(&b.mu);
        int rc = 0;
        while (!b.fired && rc == 0)
            rc = pthread_cond_timedwait(&b.cv, &b.mu, &until);
        int fired = b.fired;
        pthread_mutex_unlock(&b.mu);
        atomic_store(&f->woken_ms, now_ms());
        if (fired == 1 && mx_rpc_call_cancelled(call)) {
            mx_rpc_call_on_cancel(call, on_block_cancel, &b);   /* already cancelled: runs here */
            atomic_store(&f->woken, b.fired == 2 ? 2 : 1);
        } else {
            atomic_store(&f->woken, -1);
        }
    }
    mx_rpc_call_on_cancel(call, NULL, NULL);   /* b goes away with this frame */
    pthread_mutex_destroy(&b.mu);
    pthread_cond_destroy(&b.cv);
}

/* Takes 300 ms, then echoes. */
static void h_slow(mx_rpc_call *call, const uint8_t *req, size_t len, void *user)
{
    fixture *f = user;
    usleep(300000);
    mx_rpc_call_write_copy(call, req, len, NULL);
    atomic_store(&f->handler_done, 1);
}

/* Parses a GenerateRequest and answers a CompleteResponse counting its prompt ids. */
static void h_parse(mx_rpc_call *call, const uint8_t *req, size_t len, void *user)
{
    (void)user;
    ProtobufCMessage *m;
    mx_error err;
    if (mx_rpc_pb_unpack(&mx__v1__generate_request__descriptor, req, len, &m, &err) != 0) {
        mx_rpc_call_set_error(call, &err);
        return;
    }
    Mx__V1__GenerateRequest *r = (Mx__V1__GenerateRequest *)m;
    Mx__V1__Usage usage = MX__V1__USAGE__INIT;
    usage.prompt_tokens = (uint32_t)r->n_prompt_ids;
    Mx__V1__CompleteResponse resp = MX__V1__COMPLETE_RESPONSE__INIT;
    resp.usage = &usage;
    resp.request_id = r->request_id;
    if (mx_rpc_pb_write(call, &resp.base, &err) != 0)
        mx_rpc_call_set_error(call, &err);
    protobuf_c_message_free_unpacked(m, NULL);
}

/* ---- fixture ---- */

static int start_server(fixture *f, int max_message_bytes, int worker_threads)
{
    mx_error err;
    mx_rpc_server_options o = {.address = "127.0.0.1:0", .max_message_bytes = max_message_bytes,
                               .worker_threads = worker_threads};
    if (mx_rpc_server_create(&o, &f->srv, &err) != 0 || mx_rpc_health_attach(f->srv, &err) != 0)
        return -1;
    mx_rpc_server_add_unary(f->srv, "/test.Echo/Echo", h_echo, f, &err);
    mx_rpc_server_add_stream(f->srv, "/test.Echo/Count", h_count, f, &err);
    mx_rpc_server_add_stream(f->srv, "/test.Echo/Forever", h_forever, f, &err);
    mx_rpc_server_add_unary(f->srv, "/test.Echo/WaitCancel", h_wait_cancel, f, &err);
    mx_rpc_server_add_unary(f->srv, "/test.Echo/Slow", h_slow, f, &err);
    mx_rpc_server_add_stream(f->srv, "/test.Echo/Block", h_block, f, &err);
    mx_rpc_server_add_unary(f->srv, "/test.Echo/Parse", h_parse, f, &err);
    if (mx_rpc_server_start(f->srv, &err) != 0)
        return -1;
    snprintf(f->address, sizeof f->address, "127.0.0.1:%d", mx_rpc_server_port(f->srv));
    mx_rpc_channel_options co = {.max_message_bytes = 64 << 20};
    return mx_rpc_channel_create(f->address, &co, &f->ch, &err);
}

static void stop_server(fixture *f)
{
    mx_rpc_channel_destroy(f->ch);
    mx_rpc_server_destroy(f->srv);
}

static int setup(void **state)
{
    fixture *f = calloc(1, sizeof *f);
    if (!f || start_server(f, 1 << 20, 0) != 0)
        return -1;
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture *f = *state;
    stop_server(f);
    free(f);
    return 0;
}

/* ---- tests ---- */

static void test_unary_echo(void **state)
{
    fixture *f = *state;
    mx_rpc_result res;
    assert_int_equal(mx_rpc_unary(f->ch, "/test.Echo/Echo", mx_rpc_payload_copy("hello", 5),
                                  5000, &res), 0);
    assert_int_equal(res.status.code, GRPC_STATUS_OK);
    assert_int_equal(res.response.len, 5);
    assert_memory_equal(res.response.data, "hello", 5);
    mx_rpc_result_free(&res);

    /* An empty message is a valid message. */
    assert_int_equal(mx_rpc_unary(f->ch, "/test.Echo/Echo", mx_rpc_payload_copy("", 0), 5000,
                                  &res), 0);
    assert_int_equal(res.response.len, 0);
    mx_rpc_result_free(&res);
}

static atomic_int released;
static void count_release(void *p)
{
    free(p);
    atomic_fetch_add(&released, 1);
}

static void test_unary_large_zero_copy(void **state)
{
    fixture *f = *state;
    size_t n = 900 * 1024;   /* under the 1 MiB limit */
    uint8_t *buf = malloc(n);
    for (size_t i = 0; i < n; i++)
        buf[i] = (uint8_t)(i * 7 + 3);
    uint8_t *expect = malloc(n);
    memcpy(expect, buf, n);
    atomic_store(&released, 0);
    mx_rpc_payload p = {buf, n, count_release, buf};
    mx_rpc_result res;
    assert_int_equal(mx_rpc_unary(f->ch, "/test.Echo/Echo", p, 5000, &res), 0);
    assert_int_equal(res.response.len, n);
    assert_memory_equal(res.response.data, expect, n);
    mx_rpc_result_free(&res);
    for (int i = 0; i < 100 && atomic_load(&released) == 0; i++)
        usleep(10000);
    assert_int_equal(atomic_load(&released), 1);
    free(expect);
}

static void test_stream(void **state)
{
    fixture *f = *state;
    mx_rpc_stream *s;
    assert_int_equal(mx_rpc_stream_open(f->ch, "/test.Echo/Count", mx_rpc_payload_copy("100", 3),
                                        5000, &s, NULL), 0);
    mx_rpc_bytes msg;
    int i = 0;
    while (mx_rpc_stream_read(s, &msg) == 1) {
        char expect[16];
        int m = snprintf(expect, sizeof expect, "%d", i++);
        assert_int_equal(msg.len, m);
        assert_memory_equal(msg.data, expect, (size_t)m);
        mx_rpc_bytes_free(&msg);
    }
    assert_int_equal(i, 100);
    assert_int_equal(mx_rpc_stream_status(s)->code, GRPC_STATUS_OK);
    mx_rpc_stream_close(s);

    /* Zero messages, then OK. */
    assert_int_equal(mx_rpc_stream_open(f->ch, "/test.Echo/Count", mx_rpc_payload_copy("0", 1),
                                        5000, &s, NULL), 0);
    assert_int_equal(mx_rpc_stream_read(s, &msg), 0);
    assert_int_equal(mx_rpc_stream_status(s)->code, GRPC_STATUS_OK);
    mx_rpc_stream_close(s);
}

static void test_unknown_method_fast(void **state)
{
    fixture *f = *state;
    mx_rpc_result res;
    double t0 = now_ms();
    int rc = mx_rpc_unary(f->ch, "/test.Echo/NoSuchMethod", mx_rpc_payload_copy("x", 1), 10000,
                          &res);
    double dt = now_ms() - t0;
    assert_int_equal(rc, MX_EUNSUPPORTED);
    assert_int_equal(res.status.code, GRPC_STATUS_UNIMPLEMENTED);
    assert_non_null(strstr(res.status.message, "NoSuchMethod"));
    assert_true(dt < 1000);
    mx_rpc_result_free(&res);

    /* Same for a streaming call to an unknown method. */
    mx_rpc_stream *s;
    assert_int_equal(mx_rpc_stream_open(f->ch, "/nope.Svc/M", mx_rpc_payload_copy("", 0), 10000,
                                        &s, NULL), 0);
    mx_rpc_bytes msg;
    assert_int_equal(mx_rpc_stream_read(s, &msg), 0);
    assert_int_equal(mx_rpc_stream_status(s)->code, GRPC_STATUS_UNIMPLEMENTED);
    mx_rpc_stream_close(s);
}

static void test_deadline_exceeded(void **state)
{
    fixture *f = *state;
    atomic_store(&f->saw_cancel, 0);
    mx_rpc_result res;
    double t0 = now_ms();
    int rc = mx_rpc_unary(f->ch, "/test.Echo/WaitCancel", mx_rpc_payload_copy("", 0), 200, &res);
    double dt = now_ms() - t0;
    assert_int_equal(rc, MX_ETIMEOUT);
    assert_int_equal(res.status.code, GRPC_STATUS_DEADLINE_EXCEEDED);
    assert_true(dt >= 150 && dt < 2000);
    mx_rpc_result_free(&res);
    for (int i = 0; i < 200 && !atomic_load(&f->saw_cancel); i++)
        usleep(10000);
    assert_int_equal(atomic_load(&f->saw_cancel), 1);   /* the handler was told */
}

static void test_cancellation_seen_by_handler(void **state)
{
    fixture *f = *state;
    atomic_store(&f->saw_cancel, 0);
    mx_rpc_stream *s;
    assert_int_equal(mx_rpc_stream_open(f->ch, "/test.Echo/Forever", mx_rpc_payload_copy("", 0),
                                        10000, &s, NULL), 0);
    mx_rpc_bytes msg;
    for (int i = 0; i < 3; i++) {
        assert_int_equal(mx_rpc_stream_read(s, &msg), 1);
        mx_rpc_bytes_free(&msg);
    }
    mx_rpc_stream_cancel(s);
    while (mx_rpc_stream_read(s, &msg) == 1)
        mx_rpc_bytes_free(&msg);
    assert_int_equal(mx_rpc_stream_status(s)->code, GRPC_STATUS_CANCELLED);
    mx_rpc_stream_close(s);
    for (int i = 0; i < 200 && !atomic_load(&f->saw_cancel); i++)
        usleep(10000);
    assert_int_equal(atomic_load(&f->saw_cancel), 1);
}

/* A handler asleep on its own condition variable is woken by the cancel callback when the
 * client cancels: well before its 10 s wait runs out, with no polling on its side. */
static void test_cancel_wakes_blocked_handler(void **state)
{
    fixture *f = *state;
    atomic_store(&f->woken, 0);
    mx_rpc_stream *s;
    assert_int_equal(mx_rpc_stream_open(f->ch, "/test.Echo/Block", mx_rpc_payload_copy("", 0), 20000, &s, NULL),
                     0);
    mx_rpc_bytes msg;
    assert_int_equal(mx_rpc_stream_read(s, &msg), 1);   /* the handler is about to sleep */
    mx_rpc_bytes_free(&msg);
    usleep(100000);
    assert_int_equal(atomic_load(&f->woken), 0);       /* asleep until told */
    double t_cancel = now_ms();
    mx_rpc_stream_cancel(s);
    while (mx_rpc_stream_read(s, &msg) == 1)
        mx_rpc_bytes_free(&msg);
    mx_rpc_stream_close(s);
    for (int i = 0; i < 1000 && !atomic_load(&f->woken); i++)
        usleep(10000);
    assert_int_equal(atomic_load(&f->woken), 2);
    double waited = atomic_load(&f->woken_ms) - t_cancel;
    assert_true(waited >= 0 && waited < 2000);          /* not the 10 s timeout */
}

static void test_message_over_limit(void **state)
{
    fixture *f = *state;
    size_t n = 2 << 20;   /* server limit is 1 MiB */
    uint8_t *buf = calloc(1, n);
    mx_rpc_result res;
    int rc = mx_rpc_unary(f->ch, "/test.Echo/Echo", mx_rpc_payload_copy(buf, n), 5000, &res);
    assert_int_equal(rc, MX_ENOMEM);
    assert_int_equal(res.status.code, GRPC_STATUS_RESOURCE_EXHAUSTED);
    mx_rpc_result_free(&res);
    free(buf);
    /* The server keeps working afterwards. */
    assert_int_equal(mx_rpc_unary(f->ch, "/test.Echo/Echo", mx_rpc_payload_copy("ok", 2), 5000,
                                  &res), 0);
    mx_rpc_result_free(&res);
}

static void test_protobuf_roundtrip_and_malformed(void **state)
{
    fixture *f = *state;
    uint32_t ids[] = {1, 2, 3, 70000};
    Mx__V1__GenerateRequest req = MX__V1__GENERATE_REQUEST__INIT;
    req.n_prompt_ids = 4;
    req.prompt_ids = ids;
    req.request_id = "r-1";
    mx_rpc_payload p;
    assert_int_equal(mx_rpc_pb_pack(&req.base, &p, NULL), 0);
    mx_rpc_result res;
    assert_int_equal(mx_rpc_unary(f->ch, "/test.Echo/Parse", p, 5000, &res), 0);
    ProtobufCMessage *m;
    assert_int_equal(mx_rpc_pb_unpack(&mx__v1__complete_response__descriptor, res.response.data,
                                      res.response.len, &m, NULL), 0);
    Mx__V1__CompleteResponse *r = (Mx__V1__CompleteResponse *)m;
    assert_non_null(r->usage);
    assert_int_equal(r->usage->prompt_tokens, 4);
    assert_string_equal(r->request_id, "r-1");
    protobuf_c_message_free_unpacked(m, NULL);
    mx_rpc_result_free(&res);

    /* Field 1 (packed uint32) claiming 100 bytes with 2 present; then random garbage. */
    static const uint8_t truncated[] = {0x0a, 0x64, 0x01, 0x02};
    static const uint8_t garbage[] = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
                                      0xff, 0x01};
    const uint8_t *bad[] = {truncated, garbage};
    size_t bad_len[] = {sizeof truncated, sizeof garbage};
    for (int i = 0; i < 2; i++) {
        int rc = mx_rpc_unary(f->ch, "/test.Echo/Parse", mx_rpc_payload_copy(bad[i], bad_len[i]),
                              5000, &res);
        assert_int_equal(rc, MX_EINVAL);
        assert_int_equal(res.status.code, GRPC_STATUS_INVALID_ARGUMENT);
        assert_non_null(strstr(res.status.message, "malformed mx.v1.GenerateRequest"));
        mx_rpc_result_free(&res);
    }
}

static void test_fanout(void **state)
{
    fixture *f = *state;
    fixture g = {0};
    assert_int_equal(start_server(&g, 0, 0), 0);   /* a second peer */
    enum { N = 8 };
    mx_rpc_fanout_call calls[N];
    char payload[N][16];
    for (int i = 0; i < N; i++) {
        snprintf(payload[i], sizeof payload[i], "c%d", i);
        calls[i] = (mx_rpc_fanout_call){i % 2 ? g.ch : f->ch, "/test.Echo/Slow",
                                        mx_rpc_payload_copy(payload[i], strlen(payload[i])),
                                        {{0}, {0}}};
    }
    double t0 = now_ms();
    assert_int_equal(mx_rpc_fanout(calls, N, 5000, NULL), 0);
    double dt = now_ms() - t0;
    for (int i = 0; i < N; i++) {
        assert_int_equal(calls[i].result.status.code, GRPC_STATUS_OK);
        assert_int_equal(calls[i].result.response.len, strlen(payload[i]));
        assert_memory_equal(calls[i].result.response.data, payload[i], strlen(payload[i]));
        mx_rpc_result_free(&calls[i].result);
    }
    assert_true(dt < 3 * 300);   /* 8 x 300 ms handlers ran in parallel, not one by one */

    /* One failing call: the others still succeed; the error names the failed one. */
    calls[0].method = "/test.Echo/Echo";
    calls[1].method = "/test.Echo/Missing";
    calls[2].method = "/test.Echo/Echo";
    mx_error err;
    assert_int_equal(mx_rpc_fanout(calls, 3, 5000, &err), MX_EUNSUPPORTED);
    assert_non_null(strstr(err.msg, "call 1"));
    assert_int_equal(calls[0].result.status.code, GRPC_STATUS_OK);
    assert_int_equal(calls[1].result.status.code, GRPC_STATUS_UNIMPLEMENTED);
    assert_int_equal(calls[2].result.status.code, GRPC_STATUS_OK);
    for (int i = 0; i < 3; i++)
        mx_rpc_result_free(&calls[i].result);
    stop_server(&g);
}

static int health_check(fixture *f, const char *service, int *status)
{
    Grpc__Health__V1__HealthCheckRequest req = GRPC__HEALTH__V1__HEALTH_CHECK_REQUEST__INIT;
    req.service = (char *)service;
    mx_rpc_payload p;
    mx_rpc_pb_pack(&req.base, &p, NULL);
    mx_rpc_result res;
    int rc = mx_rpc_unary(f->ch, "/grpc.health.v1.Health/Check", p, 5000, &res);
    if (rc == 0) {
        ProtobufCMessage *m;
        assert_int_equal(mx_rpc_pb_unpack(&grpc__health__v1__health_check_response__descriptor,
                                          res.response.data, res.response.len, &m, NULL), 0);
        *status = ((Grpc__Health__V1__HealthCheckResponse *)m)->status;
        protobuf_c_message_free_unpacked(m, NULL);
    }
    mx_rpc_result_free(&res);
    return rc;
}

static void test_health_check(void **state)
{
    fixture *f = *state;
    int st = -1;
    assert_int_equal(health_check(f, "", &st), 0);
    assert_int_equal(st, GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING);
    assert_int_equal(health_check(f, "mx.v1.Generation", &st), MX_ENOTFOUND);
    assert_int_equal(mx_rpc_health_set(f->srv, "mx.v1.Generation", MX_RPC_NOT_SERVING, NULL), 0);
    assert_int_equal(health_check(f, "mx.v1.Generation", &st), 0);
    assert_int_equal(st, GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__NOT_SERVING);
    assert_int_equal(mx_rpc_health_set(f->srv, "mx.v1.Generation", MX_RPC_SERVING, NULL), 0);
    assert_int_equal(health_check(f, "mx.v1.Generation", &st), 0);
    assert_int_equal(st, GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING);
    assert_int_equal(mx_rpc_health_set(f->srv, "x", (mx_rpc_serving)7, NULL), MX_EINVAL);
}

static void test_unreachable_peer(void **state)
{
    (void)state;
    mx_rpc_channel *ch;
    assert_int_equal(mx_rpc_channel_create("127.0.0.1:1", NULL, &ch, NULL), 0);
    mx_rpc_result res;
    int rc = mx_rpc_unary(ch, "/test.Echo/Echo", mx_rpc_payload_copy("x", 1), 2000, &res);
    assert_true(rc == MX_EUNAVAILABLE || rc == MX_ETIMEOUT);
    assert_int_not_equal(res.status.code, GRPC_STATUS_OK);
    mx_rpc_result_free(&res);
    mx_rpc_channel_destroy(ch);
}

/* Voluntary context switches (sleeps) of this process's threads named `name`, summed from
 * /proc/self/task; *n_threads gets how many there are. */
static long sleeps_of_threads(const char *name, int *n_threads)
{
    DIR *d = opendir("/proc/self/task");
    assert_non_null(d);
    long sum = 0;
    *n_threads = 0;
    for (struct dirent *e; (e = readdir(d));) {
        if (e->d_name[0] == '.')
            continue;
        char path[300], comm[64] = "", line[128];
        snprintf(path, sizeof path, "/proc/self/task/%s/comm", e->d_name);
        FILE *fp = fopen(path, "r");
        if (!fp)
            continue;   /* the thread ended */
        if (!fgets(comm, sizeof comm, fp))
            comm[0] = '\0';
        fclose(fp);
        comm[strcspn(comm, "\n")] = '\0';
        if (strcmp(comm, name) != 0)
            continue;
        snprintf(path, sizeof path, "/proc/self/task/%s/status", e->d_name);
        if (!(fp = fopen(path, "r")))
            continue;
        while (fgets(line, sizeof line, fp))
            if (strncmp(line, "voluntary_ctxt_switches:", 24) == 0)
                sum += atol(line + 24);
        fclose(fp);
        (*n_threads)++;
    }
    closedir(d);
    return sum;
}

/* A call wakes one worker: with 8 idle workers, the old broadcast woke all of them for every
 * queued call and again for every freed one (about 20 sleeps per call, each a trip through
 * the scheduler on the core the handler needs). */
static void test_idle_workers_stay_asleep(void **state)
{
    (void)state;
    fixture f = {0};
    assert_int_equal(start_server(&f, 0, 8), 0);
    mx_rpc_result res;
    assert_int_equal(mx_rpc_unary(f.ch, "/test.Echo/Echo", mx_rpc_payload_copy("w", 1), 5000, &res), 0);
    mx_rpc_result_free(&res);   /* the connection is up before counting */
    usleep(100 * 1000);         /* and every worker asleep */

    int workers = 0;
    long before = sleeps_of_threads("mx-rpc-worker", &workers);
    assert_int_equal(workers, 8);
    const int calls = 100;
    for (int i = 0; i < calls; i++) {
        assert_int_equal(mx_rpc_unary(f.ch, "/test.Echo/Echo", mx_rpc_payload_copy("w", 1), 5000, &res), 0);
        assert_int_equal(res.status.code, GRPC_STATUS_OK);
        mx_rpc_result_free(&res);
    }
    usleep(100 * 1000);         /* the last call's worker back asleep */
    long slept = sleeps_of_threads("mx-rpc-worker", &workers) - before;
    /* the worker that ran a call sleeps about twice (waiting for work, waiting for its reply
     * to go out); 5 per call leaves room for lock contention, none for waking the pool */
    assert_true(slept >= calls);
    assert_true(slept <= 5 * calls);
    stop_server(&f);
}

static void test_bad_options(void **state)
{
    (void)state;
    mx_rpc_server *srv;
    mx_error err;
    mx_rpc_server_options o = {0};
    assert_int_equal(mx_rpc_server_create(&o, &srv, &err), MX_EINVAL);
    o.address = "256.0.0.1:99999";
    assert_int_equal(mx_rpc_server_create(&o, &srv, &err), MX_EUNAVAILABLE);
    assert_non_null(strstr(err.msg, "256.0.0.1"));
    o.address = "127.0.0.1:0";
    o.worker_threads = -1;
    assert_int_equal(mx_rpc_server_create(&o, &srv, &err), MX_EINVAL);
    o.worker_threads = 1;
    assert_int_equal(mx_rpc_server_create(&o, &srv, &err), 0);
    assert_int_equal(mx_rpc_server_add_unary(srv, "NoSlash", h_echo, NULL, &err), MX_EINVAL);
    assert_int_equal(mx_rpc_server_add_unary(srv, "/a.B/C", h_echo, NULL, &err), 0);
    assert_int_equal(mx_rpc_server_add_unary(srv, "/a.B/C", h_echo, NULL, &err), MX_EINVAL);
    /* health is an add-on: absent until attached, and attaching twice is harmless */
    assert_int_equal(mx_rpc_health_set(srv, "a.B", MX_RPC_SERVING, &err), MX_EINVAL);
    assert_non_null(strstr(err.msg, "not attached"));
    assert_int_equal(mx_rpc_health_attach(srv, &err), 0);
    assert_int_equal(mx_rpc_health_attach(srv, &err), 0);
    assert_int_equal(mx_rpc_health_set(srv, "a.B", MX_RPC_SERVING, &err), 0);
    mx_rpc_server_destroy(srv);   /* never started */
    mx_rpc_channel *ch;
    assert_int_equal(mx_rpc_channel_create("", NULL, &ch, &err), MX_EINVAL);
}

typedef struct call_thread {
    fixture *f;
    const char *method;
    int rc;
    grpc_status_code code;
} call_thread;

static void *call_main(void *arg)
{
    call_thread *t = arg;
    mx_rpc_result res;
    t->rc = mx_rpc_unary(t->f->ch, t->method, mx_rpc_payload_copy("in-flight", 9), 10000, &res);
    t->code = res.status.code;
    mx_rpc_result_free(&res);
    return NULL;
}

static void test_graceful_shutdown_finishes_inflight(void **state)
{
    (void)state;
    fixture f = {0};
    assert_int_equal(start_server(&f, 0, 0), 0);
    call_thread t = {&f, "/test.Echo/Slow", -99, GRPC_STATUS_UNKNOWN};
    pthread_t th;
    pthread_create(&th, NULL, call_main, &t);
    usleep(100000);   /* the call is in its 300 ms handler */
    double t0 = now_ms();
    mx_rpc_server_shutdown(f.srv, 5000);
    double dt = now_ms() - t0;
    pthread_join(th, NULL);
    assert_int_equal(t.rc, 0);
    assert_int_equal(t.code, GRPC_STATUS_OK);
    assert_int_equal(atomic_load(&f.handler_done), 1);
    assert_true(dt < 2000);   /* did not wait for the whole grace period */

    /* New calls are refused once shut down. */
    mx_rpc_result res;
    assert_int_not_equal(mx_rpc_unary(f.ch, "/test.Echo/Echo", mx_rpc_payload_copy("x", 1), 1000,
                                      &res), 0);
    mx_rpc_result_free(&res);
    stop_server(&f);
}

static void test_shutdown_cancels_after_grace(void **state)
{
    (void)state;
    fixture f = {0};
    assert_int_equal(start_server(&f, 0, 0), 0);
    call_thread t = {&f, "/test.Echo/WaitCancel", -99, GRPC_STATUS_UNKNOWN};
    pthread_t th;
    pthread_create(&th, NULL, call_main, &t);
    usleep(100000);
    double t0 = now_ms();
    mx_rpc_server_shutdown(f.srv, 200);
    double dt = now_ms() - t0;
    pthread_join(th, NULL);
    assert_true(dt >= 150 && dt < 2000);
    assert_int_equal(atomic_load(&f.saw_cancel), 1);
    assert_int_not_equal(t.code, GRPC_STATUS_OK);
    stop_server(&f);
}

static void test_status_mapping(void **state)
{
    (void)state;
    /* The table in core/error.h's comments. */
    assert_int_equal(mx_rpc_status_from_code(MX_OK), GRPC_STATUS_OK);
    assert_int_equal(mx_rpc_status_from_code(MX_EINVAL), GRPC_STATUS_INVALID_ARGUMENT);
    assert_int_equal(mx_rpc_status_from_code(MX_EFORMAT), GRPC_STATUS_INVALID_ARGUMENT);
    assert_int_equal(mx_rpc_status_from_code(MX_ENOTFOUND), GRPC_STATUS_NOT_FOUND);
    assert_int_equal(mx_rpc_status_from_code(MX_ENOMEM), GRPC_STATUS_RESOURCE_EXHAUSTED);
    assert_int_equal(mx_rpc_status_from_code(MX_EUNSUPPORTED), GRPC_STATUS_UNIMPLEMENTED);
    assert_int_equal(mx_rpc_status_from_code(MX_ERANGE), GRPC_STATUS_OUT_OF_RANGE);
    assert_int_equal(mx_rpc_status_from_code(MX_EDEVICE), GRPC_STATUS_UNAVAILABLE);
    assert_int_equal(mx_rpc_status_from_code(MX_ECANCELLED), GRPC_STATUS_CANCELLED);
    assert_int_equal(mx_rpc_status_from_code(MX_ETIMEOUT), GRPC_STATUS_DEADLINE_EXCEEDED);
    assert_int_equal(mx_rpc_status_from_code(MX_EUNAVAILABLE), GRPC_STATUS_UNAVAILABLE);
    assert_int_equal(mx_rpc_status_from_code(MX_EINTERNAL), GRPC_STATUS_INTERNAL);
    assert_int_equal(mx_rpc_code_from_status(GRPC_STATUS_DEADLINE_EXCEEDED), MX_ETIMEOUT);
    assert_string_equal(mx_rpc_status_name(GRPC_STATUS_UNAVAILABLE), "UNAVAILABLE");
    mx_rpc_status st = {GRPC_STATUS_NOT_FOUND, "no such expert"};
    mx_error err;
    assert_int_equal(mx_rpc_status_to_error(&st, "shard 3", &err), MX_ENOTFOUND);
    assert_string_equal(err.msg, "shard 3: NOT_FOUND: no such expert");
}

int main(void)
{
    const struct CMUnitTest shared[] = {
        cmocka_unit_test(test_unary_echo),
        cmocka_unit_test(test_unary_large_zero_copy),
        cmocka_unit_test(test_stream),
        cmocka_unit_test(test_unknown_method_fast),
        cmocka_unit_test(test_deadline_exceeded),
        cmocka_unit_test(test_cancellation_seen_by_handler),
        cmocka_unit_test(test_cancel_wakes_blocked_handler),
        cmocka_unit_test(test_message_over_limit),
        cmocka_unit_test(test_protobuf_roundtrip_and_malformed),
        cmocka_unit_test(test_fanout),
        cmocka_unit_test(test_health_check),
    };
    const struct CMUnitTest own[] = {
        cmocka_unit_test(test_unreachable_peer),
        cmocka_unit_test(test_bad_options),
        cmocka_unit_test(test_idle_workers_stay_asleep),
        cmocka_unit_test(test_graceful_shutdown_finishes_inflight),
        cmocka_unit_test(test_shutdown_cancels_after_grace),
        cmocka_unit_test(test_status_mapping),
    };
    int failed = cmocka_run_group_tests_name("rpc shared server", shared, setup, teardown);
    failed += cmocka_run_group_tests_name("rpc own servers", own, NULL, NULL);
    return failed;
}
