/* test_rpc_admission.c - the RPC server's bounded admission, against real mx clients over
 * loopback: calls beyond workers + max_queued_calls are refused at once with
 * RESOURCE_EXHAUSTED and a retry hint; control methods (health Check) answer within 100 ms
 * while every worker is busy and the queue is full; a stream whose client never reads is
 * cancelled after write_timeout_ms instead of holding its worker. */
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
#include "core/rpc/client.h"
#include "core/rpc/health.h"
#include "core/rpc/pb.h"
#include "core/rpc/server.h"

#define WORKERS 2
#define QUEUED 3
#define EXTRA 4

typedef struct fixture {
    mx_rpc_server *srv;
    mx_rpc_channel *ch;
    atomic_int entered;      /* Block handlers that started */
    atomic_int gate;         /* 1 lets Block handlers return */
    atomic_int flood_writes, flood_failed;
    atomic_int flood_done;
    double flood_fail_ms;    /* time from the first blocked write to the failure */
} fixture;

typedef struct caller {
    fixture *f;
    pthread_t t;
    int rc;
    grpc_status_code code;
    char msg[MX_ERROR_MSG_MAX];
} caller;

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

/* Holds its worker until the gate opens (at most 20 s). */
static void h_block(mx_rpc_call *call, const uint8_t *req, size_t len, void *user)
{
    (void)req, (void)len;
    fixture *f = user;
    atomic_fetch_add(&f->entered, 1);
    for (int i = 0; i < 2000 && !atomic_load(&f->gate); i++)
        usleep(10000);
    mx_rpc_call_write_copy(call, "ok", 2, NULL);
}

/* Writes 1 MiB messages (at most 200) until a write fails. */
static void h_flood(mx_rpc_call *call, const uint8_t *req, size_t len, void *user)
{
    (void)req, (void)len;
    fixture *f = user;
    size_t n = 1 << 20;
    char *buf = calloc(1, n);
    for (int i = 0; buf && i < 200; i++) {
        double t0 = now_ms();
        if (mx_rpc_call_write_copy(call, buf, n, NULL) != 0) {
            f->flood_fail_ms = now_ms() - t0;
            atomic_store(&f->flood_failed, 1);
            break;
        }
        atomic_fetch_add(&f->flood_writes, 1);
    }
    free(buf);
    atomic_store(&f->flood_done, 1);
}

static void *call_block(void *arg)
{
    caller *c = arg;
    mx_rpc_result res;
    c->rc = mx_rpc_unary(c->f->ch, "/t.Svc/Block", mx_rpc_payload_copy("x", 1), 30000, &res);
    c->code = res.status.code;
    snprintf(c->msg, sizeof c->msg, "%s", res.status.message);
    mx_rpc_result_free(&res);
    return NULL;
}

static int setup(void **state)
{
    fixture *f = calloc(1, sizeof *f);
    mx_rpc_server_options o = {.address = "127.0.0.1:0", .worker_threads = WORKERS, .max_queued_calls = QUEUED,
                               .write_timeout_ms = 500};
    mx_error err = {0};
    if (mx_rpc_server_create(&o, &f->srv, &err) || mx_rpc_health_attach(f->srv, &err) ||
        mx_rpc_server_add_unary(f->srv, "/t.Svc/Block", h_block, f, &err) ||
        mx_rpc_server_add_stream(f->srv, "/t.Svc/Flood", h_flood, f, &err) || mx_rpc_server_start(f->srv, &err)) {
        fprintf(stderr, "setup: %s\n", err.msg);
        return -1;
    }
    char addr[64];
    snprintf(addr, sizeof addr, "127.0.0.1:%d", mx_rpc_server_port(f->srv));
    if (mx_rpc_channel_create(addr, NULL, &f->ch, &err))
        return -1;
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture *f = *state;
    atomic_store(&f->gate, 1);
    mx_rpc_channel_destroy(f->ch);
    mx_rpc_server_shutdown(f->srv, 2000);
    mx_rpc_server_destroy(f->srv);
    free(f);
    return 0;
}

/* ms one health Check took; status through *st. */
static double timed_check(fixture *f, int *st)
{
    Grpc__Health__V1__HealthCheckRequest req = GRPC__HEALTH__V1__HEALTH_CHECK_REQUEST__INIT;
    mx_rpc_payload p;
    assert_int_equal(mx_rpc_pb_pack(&req.base, &p, NULL), 0);
    mx_rpc_result res;
    double t0 = now_ms();
    int rc = mx_rpc_unary(f->ch, "/grpc.health.v1.Health/Check", p, 5000, &res);
    double dt = now_ms() - t0;
    *st = -1;
    if (rc == 0) {
        ProtobufCMessage *m;
        assert_int_equal(mx_rpc_pb_unpack(&grpc__health__v1__health_check_response__descriptor, res.response.data,
                                          res.response.len, &m, NULL), 0);
        *st = ((Grpc__Health__V1__HealthCheckResponse *)m)->status;
        protobuf_c_message_free_unpacked(m, NULL);
    }
    mx_rpc_result_free(&res);
    return dt;
}

static void wait_entered(fixture *f, int n)
{
    for (int i = 0; i < 1000 && atomic_load(&f->entered) < n; i++)
        usleep(10000);
    assert_int_equal(atomic_load(&f->entered), n);
}

static void test_bounded_queue_and_control_path(void **state)
{
    fixture *f = *state;
    int st;
    timed_check(f, &st); /* connect */
    caller c[WORKERS + QUEUED + EXTRA];
    memset(c, 0, sizeof c);
    for (int i = 0; i < WORKERS; i++) {
        c[i].f = f;
        pthread_create(&c[i].t, NULL, call_block, &c[i]);
    }
    wait_entered(f, WORKERS);
    for (int i = WORKERS; i < WORKERS + QUEUED; i++) {
        c[i].f = f;
        pthread_create(&c[i].t, NULL, call_block, &c[i]);
    }
    usleep(300000); /* the queued calls have arrived */
    for (int i = WORKERS + QUEUED; i < WORKERS + QUEUED + EXTRA; i++) {
        c[i].f = f;
        pthread_create(&c[i].t, NULL, call_block, &c[i]);
    }
    /* the extra calls are answered at once, while the others still wait */
    for (int i = WORKERS + QUEUED; i < WORKERS + QUEUED + EXTRA; i++)
        pthread_join(c[i].t, NULL);
    for (int i = WORKERS + QUEUED; i < WORKERS + QUEUED + EXTRA; i++) {
        assert_int_equal(c[i].code, GRPC_STATUS_RESOURCE_EXHAUSTED);
        assert_non_null(strstr(c[i].msg, "retry after"));
    }
    assert_int_equal(atomic_load(&f->entered), WORKERS);
    /* health answers on its own path although every worker is busy and the queue is full */
    double worst = 0;
    for (int i = 0; i < 20; i++) {
        double dt = timed_check(f, &st);
        assert_int_equal(st, GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING);
        if (dt > worst)
            worst = dt;
    }
    print_message("health Check while saturated: worst %.1f ms of 20\n", worst);
    assert_true(worst < 100);
    atomic_store(&f->gate, 1);
    for (int i = 0; i < WORKERS + QUEUED; i++) {
        pthread_join(c[i].t, NULL);
        assert_int_equal(c[i].rc, 0);
    }
    assert_int_equal(atomic_load(&f->entered), WORKERS + QUEUED);
}

static void test_never_reading_client_is_cancelled(void **state)
{
    fixture *f = *state;
    mx_rpc_stream *s;
    assert_int_equal(mx_rpc_stream_open(f->ch, "/t.Svc/Flood", mx_rpc_payload_copy("x", 1), 60000, &s, NULL), 0);
    /* never read: the handler's writes stop being taken once the flow-control windows are full */
    for (int i = 0; i < 1500 && !atomic_load(&f->flood_done); i++)
        usleep(10000);
    assert_true(atomic_load(&f->flood_done));
    assert_true(atomic_load(&f->flood_failed));
    assert_true(atomic_load(&f->flood_writes) < 200);
    print_message("never-reading client: %d MiB taken, then the write failed after %.0f ms (timeout 500)\n",
                  atomic_load(&f->flood_writes), f->flood_fail_ms);
    assert_true(f->flood_fail_ms >= 400 && f->flood_fail_ms < 5000);
    mx_rpc_stream_close(s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_bounded_queue_and_control_path, setup, teardown),
        cmocka_unit_test_setup_teardown(test_never_reading_client_is_cancelled, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
