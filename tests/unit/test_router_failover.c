/* test_router_failover.c - the router's failure handling against fake expert replicas served
 * in-process on loopback (the real RPC layer and health service): each fake answers
 * y = (e + 1) * x + layer for expert e, so every result is checked against a double-precision
 * sum computed here. A replica can fail with a chosen status, be slow, or freeze (its handler
 * blocks without looking at cancellation, holding its workers, as a SIGSTOPped process would).
 * Checked: retries on CANCELLED / UNAVAILABLE / RESOURCE_EXHAUSTED and none on
 * INVALID_ARGUMENT, ejection and probing back, a frozen replica costing one attempt deadline,
 * hedging, a graceful drain under load losing nothing, and shard liveness. */
#include <math.h>
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

#include <cmocka.h>

#include "core/clock.h"
#include "mx/internal/v1/expert_shard.pb-c.h"
#include "core/protocol.h"
#include "router/router.h"
#include "core/rpc/health.h"
#include "core/rpc/pb.h"
#include "core/rpc/server.h"
#include "shard_testutil.h"

#define H 8          /* hidden size */
#define E 4          /* experts: shard 0 = {0, 1}, shard 1 = {2, 3} */
#define L 2          /* layers */
#define T 6          /* tokens per run */
#define K 2

enum { NORMAL, FAIL, SLOW, FROZEN };

typedef struct fake {
    mx_rpc_server *srv;
    int port;
    atomic_int mode, code, delay_ms;
    atomic_int calls, completed, cancelled;
} fake;

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static void on_run(mx_rpc_call *call, const uint8_t *req, size_t len, void *user)
{
    fake *f = user;
    atomic_fetch_add(&f->calls, 1);
    while (atomic_load(&f->mode) == FROZEN) /* frozen: no progress, cancelled or not */
        sleep_ms(2);
    if (atomic_load(&f->mode) == FAIL) {
        mx_rpc_call_set_status(call, (grpc_status_code)atomic_load(&f->code), "fake failure");
        return;
    }
    if (atomic_load(&f->mode) == SLOW) {
        double until = mx_now_ms() + atomic_load(&f->delay_ms);
        while (mx_now_ms() < until && !mx_rpc_call_cancelled(call))
            sleep_ms(1);
        if (mx_rpc_call_cancelled(call)) {
            atomic_fetch_add(&f->cancelled, 1);
            mx_rpc_call_set_status(call, GRPC_STATUS_CANCELLED, "cancelled");
            return;
        }
    }
    Mx__Internal__V1__RunExpertsRequest *rq = mx__internal__v1__run_experts_request__unpack(NULL, len, req);
    assert_non_null(rq);
    size_t n = rq->hidden->data.len / sizeof(float);
    float *y = malloc(n * sizeof *y + 4);
    const float *x = (const float *)rq->hidden->data.data;
    size_t row = 0;
    for (size_t g = 0; g < rq->n_groups; g++)
        for (uint32_t i = 0; i < rq->groups[g]->num_rows; i++, row++)
            for (int c = 0; c < H; c++)
                y[row * H + c] = (float)(rq->groups[g]->expert_id + 1) * x[row * H + c] + (float)rq->layer;
    Mx__Internal__V1__Tensor t = MX__INTERNAL__V1__TENSOR__INIT;
    t.dtype = MX__INTERNAL__V1__DTYPE__DTYPE_F32;
    t.rows = rq->hidden->rows;
    t.cols = H;
    t.data.data = (uint8_t *)y;
    t.data.len = n * sizeof *y;
    Mx__Internal__V1__RunExpertsResponse resp = MX__INTERNAL__V1__RUN_EXPERTS_RESPONSE__INIT;
    resp.hidden = &t;
    mx_error err = {0};
    if (mx_rpc_pb_write(call, &resp.base, &err))
        mx_rpc_call_set_error(call, &err);
    free(y);
    protobuf_c_message_free_unpacked(&rq->base, NULL);
    atomic_fetch_add(&f->completed, 1);
}

/* Serves a fake on port (0 = any); two workers, like a small replica. */
static void fake_start(fake *f, int port)
{
    char addr[64];
    snprintf(addr, sizeof addr, "127.0.0.1:%d", port);
    mx_error err = {0};
    mx_rpc_server_options o = {.address = addr, .worker_threads = 2};
    assert_int_equal(mx_rpc_server_create(&o, &f->srv, &err), 0);
    assert_int_equal(mx_rpc_health_attach(f->srv, &err), 0);
    assert_int_equal(mx_rpc_server_add_unary(f->srv, MX_EXPERT_RUN_METHOD, on_run, f, &err), 0);
    assert_int_equal(mx_rpc_server_start(f->srv, &err), 0);
    assert_int_equal(mx_rpc_health_set(f->srv, MX_EXPERT_SERVICE, MX_RPC_SERVING, &err), 0);
    f->port = mx_rpc_server_port(f->srv);
}

static void fake_stop(fake *f, int64_t grace_ms)
{
    if (!f->srv)
        return;
    atomic_store(&f->mode, NORMAL); /* frozen handlers must return before the server can go */
    mx_rpc_server_shutdown(f->srv, grace_ms);
    mx_rpc_server_destroy(f->srv);
    f->srv = NULL;
}

typedef struct world {
    fake a, b1, b2;      /* shard 0 on a; shard 1 on b1 and b2 */
} world;

static int setup(void **state)
{
    world *w = calloc(1, sizeof *w);
    fake_start(&w->a, 0);
    fake_start(&w->b1, 0);
    fake_start(&w->b2, 0);
    *state = w;
    return 0;
}

static int teardown(void **state)
{
    world *w = *state;
    fake_stop(&w->a, 0);
    fake_stop(&w->b1, 0);
    fake_stop(&w->b2, 0);
    free(w);
    return 0;
}

static void reset(world *w)
{
    fake *fs[3] = {&w->a, &w->b1, &w->b2};
    for (int i = 0; i < 3; i++) {
        atomic_store(&fs[i]->mode, NORMAL);
        atomic_store(&fs[i]->calls, 0);
        atomic_store(&fs[i]->completed, 0);
        atomic_store(&fs[i]->cancelled, 0);
    }
}

static mx_router *make_router(world *w, const char *extra)
{
    char text[1024];
    snprintf(text, sizeof text,
             "experts = { %s\n"
             "  shards = ( { experts = [0, 1]; replicas = [\"127.0.0.1:%d\"]; },\n"
             "             { experts = [2, 3]; layers = [0]; replicas = [\"127.0.0.1:%d\", \"127.0.0.1:%d\"]; },\n"
             "             { experts = [2, 3]; layers = [1]; replicas = [\"127.0.0.1:%d\"]; } ); };\n",
             extra, w->a.port, w->b1.port, w->b2.port, w->a.port);
    mx_router *r = test_router_from_text(text, L, H, E, NULL);
    mx_error err = {0};
    assert_int_equal(mx_router_check_coverage(r, 0, L, &err), 0);
    return r;
}

/* One layer-0 run whose every token uses shard 1 (experts 2 and 3) and shard 0; checks the
 * output against the double-precision sum. Returns the router's rc; err keeps the message. */
static int run_once(mx_router *r, int seed, mx_error *err)
{
    float x[T * H], out[T * H];
    int32_t ids[T * K];
    float wts[T * K];
    for (int t = 0; t < T; t++) {
        for (int c = 0; c < H; c++)
            x[t * H + c] = (float)((seed * 31 + t * 7 + c * 3) % 17) / 8.0f - 1.0f;
        ids[t * K] = 2 + (t + seed) % 2;
        ids[t * K + 1] = (t + seed) % 2;
        wts[t * K] = 0.625f;
        wts[t * K + 1] = 0.375f;
    }
    memset(out, 0, sizeof out);
    mx_tensor xt = mx_tensor_2d(x, MX_DTYPE_F32, MX_DEVICE_CPU, T, H);
    mx_tensor ot = mx_tensor_2d(out, MX_DTYPE_F32, MX_DEVICE_CPU, T, H);
    int rc = mx_router_run(r, 0, &xt, ids, wts, K, &ot, err);
    if (rc)
        return rc;
    for (int t = 0; t < T; t++)
        for (int c = 0; c < H; c++) {
            double want = 0;
            for (int j = 0; j < K; j++)
                want += (double)wts[t * K + j] * ((ids[t * K + j] + 1) * (double)x[t * H + c] + 0);
            if (fabs(out[t * H + c] - want) > 1e-5)
                fail_msg("token %d col %d: %g, expected %g", t, c, out[t * H + c], want);
        }
    return 0;
}

static void run_ok(mx_router *r, int seed)
{
    mx_error err = {0};
    int rc = run_once(r, seed, &err);
    if (rc)
        fail_msg("run %d failed: %s", seed, err.msg);
}

/* Waits up to ms for the router's view of shards to become want (1 live, 0 not). */
static int wait_live(mx_router *r, int want, int ms, int *dead)
{
    double until = mx_now_ms() + ms;
    do {
        if (mx_router_shards_live(r, 0, L, dead) == want)
            return 1;
        sleep_ms(10);
    } while (mx_now_ms() < until);
    return 0;
}

/* CANCELLED / UNAVAILABLE / RESOURCE_EXHAUSTED from b1 (a draining or overloaded peer): every
 * run succeeds on b2, b1 is ejected at once (it then gets no calls) and comes back through a
 * health probe once it answers again. INVALID_ARGUMENT is not retried. */
static void test_retry_codes(void **state)
{
    world *w = *state;
    static const grpc_status_code codes[] = {GRPC_STATUS_CANCELLED, GRPC_STATUS_UNAVAILABLE,
                                             GRPC_STATUS_RESOURCE_EXHAUSTED};
    for (int i = 0; i < 3; i++) {
        reset(w);
        mx_router *r = make_router(w, "eject_ms = 200; eject_max_ms = 400;");
        assert_true(wait_live(r, 1, 3000, NULL));
        atomic_store(&w->b1.code, codes[i]);
        atomic_store(&w->b1.mode, FAIL);
        for (int k = 0; k < 20; k++)
            run_ok(r, k);
        mx_router_stats st;
        mx_router_get_stats(r, &st);
        assert_int_equal(st.failures, 0);
        /* ejected after its first failure; its health still says SERVING, so each probe
         * (after 200, then 400 ms) lets one more call through */
        int b1_calls = atomic_load(&w->b1.calls);
        if (b1_calls < 1 || b1_calls > 5)
            fail_msg("%s: b1 got %d calls", mx_rpc_status_name(codes[i]), b1_calls);
        assert_true(st.retries >= 1);
        assert_true(st.ejections >= 1);
        /* the health service still says SERVING, so a probe takes b1 back */
        atomic_store(&w->b1.mode, NORMAL);
        sleep_ms(700);
        int before = atomic_load(&w->b1.calls);
        for (int k = 0; k < 20; k++)
            run_ok(r, k);
        if (atomic_load(&w->b1.calls) - before < 3)
            fail_msg("b1 was not taken back: %d calls of 20", atomic_load(&w->b1.calls) - before);
        mx_router_destroy(r);
    }
    /* a request the replica refuses would be refused everywhere: no retry, the error names it */
    reset(w);
    mx_router *r = make_router(w, "");
    atomic_store(&w->b1.code, GRPC_STATUS_INVALID_ARGUMENT);
    atomic_store(&w->b2.code, GRPC_STATUS_INVALID_ARGUMENT);
    atomic_store(&w->b1.mode, FAIL);
    atomic_store(&w->b2.mode, FAIL);
    mx_error err = {0};
    assert_int_equal(run_once(r, 1, &err), MX_EINVAL);
    assert_non_null(strstr(err.msg, "expert shard 1"));
    assert_non_null(strstr(err.msg, "INVALID_ARGUMENT"));
    assert_int_equal(atomic_load(&w->b1.calls) + atomic_load(&w->b2.calls), 1);
    mx_router_destroy(r);
    reset(w);
}

/* A frozen replica: each run waits at most about one attempt deadline (here the cap, 300 ms,
 * before enough samples; then p99 x 4 floored at 50 ms), the replica is ejected and stays out
 * while frozen (its health checks time out), and is taken back after it thaws. */
static void test_frozen_replica(void **state)
{
    world *w = *state;
    reset(w);
    mx_router *r = make_router(w, "attempt_timeout_floor_ms = 50; attempt_timeout_cap_ms = 300;"
                                  " eject_ms = 100; eject_max_ms = 400; probe_timeout_ms = 100;");
    assert_true(wait_live(r, 1, 3000, NULL));
    for (int k = 0; k < 40; k++) /* latency samples: the deadline falls to the floor */
        run_ok(r, k);
    int b1_warm = atomic_load(&w->b1.calls);
    assert_true(b1_warm >= 10); /* both replicas served the warm-up */
    atomic_store(&w->b1.mode, FROZEN);
    double worst = 0, t_all = mx_now_ms();
    for (int k = 0; k < 30; k++) {
        double t0 = mx_now_ms();
        run_ok(r, k);
        worst = fmax(worst, mx_now_ms() - t0);
    }
    t_all = mx_now_ms() - t_all;
    mx_router_stats st;
    mx_router_get_stats(r, &st);
    print_message("frozen replica: 30 runs in %.0f ms, slowest %.0f ms, %llu deadline misses, %llu ejections\n", t_all,
                  worst, (unsigned long long)st.deadline_misses, (unsigned long long)st.ejections);
    assert_true(st.deadline_misses >= 1);
    assert_int_equal(st.failures, 0);
    if (worst > 1500)
        fail_msg("a run waited %.0f ms with one replica frozen (attempt deadline 50 ms)", worst);
    /* only its first call(s) and the probes' doubling schedule reach it */
    if (atomic_load(&w->b1.calls) - b1_warm > 4)
        fail_msg("the frozen replica got %d calls", atomic_load(&w->b1.calls) - b1_warm);
    /* shard 1 still has b2: live */
    assert_int_equal(mx_router_shards_live(r, 0, L, NULL), 1);
    atomic_store(&w->b1.mode, NORMAL);
    sleep_ms(900); /* eject_max 400 + probe */
    int before = atomic_load(&w->b1.completed);
    for (int k = 0; k < 20; k++)
        run_ok(r, k);
    if (atomic_load(&w->b1.completed) - before < 3)
        fail_msg("thawed replica not taken back: %d calls", atomic_load(&w->b1.completed) - before);
    mx_router_destroy(r);
    reset(w);
}

/* Hedging: with b1 slow (400 ms) and hedge = true, a copy goes to b2 after the p95 of the fast
 * calls, so no run waits for b1; b1's slow calls are cancelled. Without hedging (and with
 * attempt deadlines out of the way) runs that hit b1 wait the whole 400 ms. */
static void test_hedge(void **state)
{
    world *w = *state;
    for (int hedge = 1; hedge >= 0; hedge--) {
        reset(w);
        mx_router *r = make_router(w, hedge ? "hedge = true; hedge_percent = 100; attempt_timeout_floor_ms = 2000;"
                                            : "attempt_timeout_floor_ms = 2000;");
        assert_true(wait_live(r, 1, 3000, NULL));
        for (int k = 0; k < 40; k++)
            run_ok(r, k);
        atomic_store(&w->b1.delay_ms, 400);
        atomic_store(&w->b1.mode, SLOW);
        double worst = 0;
        int b1_before = atomic_load(&w->b1.calls);
        for (int k = 0; k < 10; k++) {
            double t0 = mx_now_ms();
            run_ok(r, k);
            worst = fmax(worst, mx_now_ms() - t0);
        }
        mx_router_stats st;
        mx_router_get_stats(r, &st);
        print_message("hedge %d: slowest run %.0f ms, %llu hedges, b1 got %d calls\n", hedge, worst,
                      (unsigned long long)st.hedges, atomic_load(&w->b1.calls) - b1_before);
        /* the rotation sends about half of the first copies to b1 */
        assert_true(atomic_load(&w->b1.calls) - b1_before >= 2);
        if (hedge) {
            assert_true(st.hedges >= 1);
            if (worst > 300)
                fail_msg("a hedged run waited %.0f ms for the slow replica", worst);
        } else {
            assert_int_equal(st.hedges, 0);
            if (atomic_load(&w->b1.calls) > b1_before)
                assert_true(worst >= 390);
        }
        atomic_store(&w->b1.mode, NORMAL);
        mx_router_destroy(r);
    }
    reset(w);
}

/* A graceful drain of b1 (health NOT_SERVING, no new calls, in-flight ones finish) while four
 * threads keep running: no run fails, and every call b1 started it also finished. */
typedef struct load {
    mx_router *r;
    atomic_int stop, runs, failed;
    char msg[MX_ERROR_MSG_MAX];
} load;

static void *load_main(void *arg)
{
    load *ld = arg;
    for (int k = 0; !atomic_load(&ld->stop) && k < 100000; k++) {
        mx_error err = {0};
        if (run_once(ld->r, k, &err)) {
            if (atomic_fetch_add(&ld->failed, 1) == 0)
                snprintf(ld->msg, sizeof ld->msg, "%s", err.msg);
        }
        atomic_fetch_add(&ld->runs, 1);
    }
    return NULL;
}

static void test_drain_under_load(void **state)
{
    world *w = *state;
    reset(w);
    atomic_store(&w->b1.delay_ms, 20);
    atomic_store(&w->b1.mode, SLOW); /* calls in flight at the moment of the drain */
    load ld = {.r = make_router(w, "")};
    assert_true(wait_live(ld.r, 1, 3000, NULL));
    pthread_t th[4];
    for (int i = 0; i < 4; i++)
        pthread_create(&th[i], NULL, load_main, &ld);
    sleep_ms(300);
    int port = w->b1.port;
    double t0 = mx_now_ms();
    mx_rpc_server_shutdown(w->b1.srv, 5000);
    double drain_ms = mx_now_ms() - t0;
    mx_rpc_server_destroy(w->b1.srv);
    w->b1.srv = NULL;
    sleep_ms(300);
    atomic_store(&ld.stop, 1);
    for (int i = 0; i < 4; i++)
        pthread_join(th[i], NULL);
    print_message("drain: %d runs, %d failed, b1 drained in %.0f ms after %d calls (%d completed, %d cancelled)\n",
                  atomic_load(&ld.runs), atomic_load(&ld.failed), drain_ms, atomic_load(&w->b1.calls),
                  atomic_load(&w->b1.completed), atomic_load(&w->b1.cancelled));
    if (atomic_load(&ld.failed))
        fail_msg("%d runs failed during the drain: %s", atomic_load(&ld.failed), ld.msg);
    assert_true(atomic_load(&ld.runs) > 20);
    assert_int_equal(atomic_load(&w->b1.cancelled), 0);
    assert_int_equal(atomic_load(&w->b1.calls), atomic_load(&w->b1.completed));
    assert_true(drain_ms < 4000);
    mx_router_destroy(ld.r);
    fake_start(&w->b1, port);
    reset(w);
}

/* Liveness: shard 1 (layer 0) with both replicas gone is found dead without any traffic, only
 * for a layer range that uses it, and live again once one replica returns. */
static void test_liveness(void **state)
{
    world *w = *state;
    reset(w);
    mx_router *r = make_router(w, "health_interval_ms = 100; probe_timeout_ms = 100; eject_ms = 100; eject_max_ms = 200;");
    assert_true(wait_live(r, 1, 3000, NULL));
    int p1 = w->b1.port, p2 = w->b2.port;
    fake_stop(&w->b1, 0);
    fake_stop(&w->b2, 0);
    int dead = -1;
    double t0 = mx_now_ms();
    assert_true(wait_live(r, 0, 3000, &dead));
    print_message("liveness: a shard with no replica found in %.0f ms\n", mx_now_ms() - t0);
    assert_int_equal(dead, 1);
    assert_int_equal(mx_router_shards_live(r, 1, 2, NULL), 1); /* layer 1 does not use shard 1 */
    mx_error err = {0};
    assert_int_equal(run_once(r, 1, &err), MX_EUNAVAILABLE);
    assert_non_null(strstr(err.msg, "expert shard 1"));
    fake_start(&w->b2, p2);
    t0 = mx_now_ms();
    assert_true(wait_live(r, 1, 3000, NULL));
    print_message("liveness: back in %.0f ms\n", mx_now_ms() - t0);
    run_ok(r, 2);
    fake_start(&w->b1, p1);
    mx_router_destroy(r);
    reset(w);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_retry_codes),  cmocka_unit_test(test_frozen_replica),
        cmocka_unit_test(test_hedge),        cmocka_unit_test(test_drain_under_load),
        cmocka_unit_test(test_liveness),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
