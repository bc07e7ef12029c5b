/* test_metrics.c - core/metrics.h and core/rpc/metrics_http.h: the text exposition format
 * (HELP/TYPE lines, escaping of help and label values, cumulative buckets, +Inf == _count,
 * number formatting) checked against literal expected text written from the format's
 * specification, exact totals under concurrent updates, the process metrics, and GET
 * /metrics (200 with the text, 404 elsewhere) over a real loopback socket. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <arpa/inet.h>
#include <math.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include "core/metrics.h"
#include "core/rpc/metrics_http.h"

/* The rendering after the three process families (build info, start time, RSS). */
static const char *after_process(const char *text)
{
    const char *p = strstr(text, "# HELP t_");
    assert_non_null(p);
    return p;
}

static void test_exposition_text(void **state)
{
    (void)state;
    mx_metrics *m;
    mx_error err = {0};
    assert_int_equal(mx_metrics_create("svc", "1.2.3", &m, &err), 0);
    mx_metric *c, *g, *h;
    static const char *const cl[] = {"outcome", "path"};
    assert_int_equal(mx_metrics_counter(m, "t_requests_total", "Requests with a \\ backslash\nand a newline.", cl, 2,
                                        &c, &err), 0);
    assert_int_equal(mx_metrics_gauge(m, "t_live", "Live things.", NULL, 0, &g, &err), 0);
    static const char *const hl[] = {"shard"};
    static const double b[] = {0.005, 0.5, 2};
    assert_int_equal(mx_metrics_histogram(m, "t_latency_seconds", "Latency.", hl, 1, b, 3, &h, &err), 0);
    mx_counter_add(mx_metric_with(c, "ok", "a\"b\\c\nd"), 3);
    mx_counter_add(mx_metric_with(c, "ok", "a\"b\\c\nd"), 2);
    mx_counter_add(mx_metric_with(c, "error", "x"), 1);
    mx_counter_add(mx_metric_with(c, "error", "x"), -5); /* counters never go down */
    mx_gauge_set(mx_metric_with(g), 7);
    mx_gauge_add(mx_metric_with(g), -2.5);
    mx_series *s0 = mx_metric_with(h, "0");
    double obs[] = {0.001, 0.005, 0.3, 1.5, 2, 100};  /* le is inclusive: 0.005 and 2 in their own */
    for (size_t i = 0; i < sizeof obs / sizeof *obs; i++)
        mx_histogram_observe(s0, obs[i]);
    mx_histogram_observe(mx_metric_with(h, "1"), 0.25);
    char *text;
    size_t len;
    assert_int_equal(mx_metrics_render(m, &text, &len, &err), 0);
    assert_int_equal(strlen(text), len);
    const char *expected =
        "# HELP t_requests_total Requests with a \\\\ backslash\\nand a newline.\n"
        "# TYPE t_requests_total counter\n"
        "t_requests_total{outcome=\"ok\",path=\"a\\\"b\\\\c\\nd\"} 5\n"
        "t_requests_total{outcome=\"error\",path=\"x\"} 1\n"
        "# HELP t_live Live things.\n"
        "# TYPE t_live gauge\n"
        "t_live 4.5\n"
        "# HELP t_latency_seconds Latency.\n"
        "# TYPE t_latency_seconds histogram\n"
        "t_latency_seconds_bucket{shard=\"0\",le=\"0.005\"} 2\n"
        "t_latency_seconds_bucket{shard=\"0\",le=\"0.5\"} 3\n"
        "t_latency_seconds_bucket{shard=\"0\",le=\"2\"} 5\n"
        "t_latency_seconds_bucket{shard=\"0\",le=\"+Inf\"} 6\n"
        "t_latency_seconds_sum{shard=\"0\"} 103.806\n"
        "t_latency_seconds_count{shard=\"0\"} 6\n"
        "t_latency_seconds_bucket{shard=\"1\",le=\"0.005\"} 0\n"
        "t_latency_seconds_bucket{shard=\"1\",le=\"0.5\"} 1\n"
        "t_latency_seconds_bucket{shard=\"1\",le=\"2\"} 1\n"
        "t_latency_seconds_bucket{shard=\"1\",le=\"+Inf\"} 1\n"
        "t_latency_seconds_sum{shard=\"1\"} 0.25\n"
        "t_latency_seconds_count{shard=\"1\"} 1\n";
    assert_string_equal(after_process(text), expected);
    /* the process families come first, with the labels given at creation */
    assert_non_null(strstr(text, "# TYPE mx_build_info gauge\nmx_build_info{version=\"1.2.3\",service=\"svc\"} 1\n"));
    assert_non_null(strstr(text, "# TYPE process_start_time_seconds gauge\n"));
    const char *rss = strstr(text, "\nprocess_resident_memory_bytes ");
    assert_non_null(rss);
    assert_true(strtod(rss + strlen("\nprocess_resident_memory_bytes "), NULL) > 1 << 20);
    const char *st = strstr(text, "\nprocess_start_time_seconds ");
    assert_non_null(st);
    struct timeval tv;
    gettimeofday(&tv, NULL);
    double start = strtod(st + strlen("\nprocess_start_time_seconds "), NULL);
    assert_true(start <= (double)tv.tv_sec + 1 && start > (double)tv.tv_sec - 60);
    assert_true(mx_series_value(s0) == 6);
    free(text);
    mx_metrics_destroy(m);
}

static void test_bad_registrations(void **state)
{
    (void)state;
    mx_metrics *m;
    mx_error err = {0};
    assert_int_equal(mx_metrics_create("svc", "v", &m, &err), 0);
    static const char *const le[] = {"le"};
    static const char *const dash[] = {"a-b"};
    static const char *const twice[] = {"a", "a"};
    static const double down[] = {1, 0.5};
    assert_int_equal(mx_metrics_counter(m, "1bad", "x", NULL, 0, NULL, &err), MX_EINVAL);
    assert_int_equal(mx_metrics_counter(m, "t_x_total", "x", le, 1, NULL, &err), MX_EINVAL);
    assert_int_equal(mx_metrics_counter(m, "t_x_total", "x", dash, 1, NULL, &err), MX_EINVAL);
    assert_int_equal(mx_metrics_counter(m, "t_x_total", "x", twice, 2, NULL, &err), MX_EINVAL);
    assert_int_equal(mx_metrics_histogram(m, "t_h", "x", NULL, 0, down, 2, NULL, &err), MX_EINVAL);
    assert_int_equal(mx_metrics_counter(m, "t_x_total", "x", NULL, 0, NULL, &err), 0);
    assert_int_equal(mx_metrics_gauge(m, "t_x_total", "x", NULL, 0, NULL, &err), MX_EINVAL);
    assert_non_null(strstr(err.msg, "twice"));
    mx_metrics_destroy(m);
}

/* 4 threads x 20000 updates on shared series, some created by the race itself. */
typedef struct worker {
    mx_metric *c, *h;
    int id;
} worker;

static void *work(void *arg)
{
    worker *w = arg;
    char label[8];
    for (int i = 0; i < 20000; i++) {
        snprintf(label, sizeof label, "%d", i % 3);
        mx_counter_add(mx_metric_with(w->c, label), 1);
        mx_histogram_observe(mx_metric_with(w->h), (i % 4) * 0.5);
    }
    return NULL;
}

static void test_concurrent_updates(void **state)
{
    (void)state;
    mx_metrics *m;
    mx_error err = {0};
    assert_int_equal(mx_metrics_create("svc", "v", &m, &err), 0);
    static const char *const l[] = {"k"};
    static const double b[] = {0.5, 1};
    worker w[4];
    pthread_t t[4];
    assert_int_equal(mx_metrics_counter(m, "t_n_total", "n", l, 1, &w[0].c, &err), 0);
    assert_int_equal(mx_metrics_histogram(m, "t_h_seconds", "h", NULL, 0, b, 2, &w[0].h, &err), 0);
    for (int i = 0; i < 4; i++) {
        w[i] = w[0];
        w[i].id = i;
        assert_int_equal(pthread_create(&t[i], NULL, work, &w[i]), 0);
    }
    for (int i = 0; i < 4; i++)
        pthread_join(t[i], NULL);
    /* i % 3 == 0 for 6667 of 20000 values of i, 1 and 2 for 6667 and 6666 */
    assert_true(mx_series_value(mx_metric_with(w[0].c, "0")) == 4 * 6667);
    assert_true(mx_series_value(mx_metric_with(w[0].c, "1")) == 4 * 6667);
    assert_true(mx_series_value(mx_metric_with(w[0].c, "2")) == 4 * 6666);
    char *text;
    size_t len;
    assert_int_equal(mx_metrics_render(m, &text, &len, &err), 0);
    /* values 0, 0.5, 1, 1.5 each 20000 times: le 0.5 holds 40000, le 1 60000, sum 60000 */
    assert_non_null(strstr(text, "t_h_seconds_bucket{le=\"0.5\"} 40000\n"
                                 "t_h_seconds_bucket{le=\"1\"} 60000\n"
                                 "t_h_seconds_bucket{le=\"+Inf\"} 80000\n"
                                 "t_h_seconds_sum 60000\n"
                                 "t_h_seconds_count 80000\n"));
    free(text);
    mx_metrics_destroy(m);
}

/* One HTTP/1.0 request over loopback; returns the whole answer (malloc'd). */
static char *http_get(int port, const char *path)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    struct timeval tv = {5, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    assert_int_equal(connect(fd, (struct sockaddr *)&a, sizeof a), 0);
    char req[256];
    int n = snprintf(req, sizeof req, "GET %s HTTP/1.0\r\nHost: localhost\r\n\r\n", path);
    assert_int_equal(write(fd, req, (size_t)n), n);
    size_t cap = 1 << 16, len = 0;
    char *buf = malloc(cap);
    ssize_t got;
    while (len + 1 < cap && (got = read(fd, buf + len, cap - 1 - len)) > 0)
        len += (size_t)got;
    buf[len] = 0;
    close(fd);
    return buf;
}

static void test_http_endpoint(void **state)
{
    (void)state;
    mx_metrics *m;
    mx_error err = {0};
    assert_int_equal(mx_metrics_create("svc", "v9", &m, &err), 0);
    mx_metric *c;
    assert_int_equal(mx_metrics_counter(m, "t_hits_total", "Hits.", NULL, 0, &c, &err), 0);
    mx_counter_add(mx_metric_with(c), 42);
    mx_metrics_http *h;
    assert_int_equal(mx_metrics_http_start("127.0.0.1:0", m, &h, &err), 0);
    int port = mx_metrics_http_port(h);
    assert_true(port > 0);
    char *ok = http_get(port, "/metrics");
    assert_true(!strncmp(ok, "HTTP/1.", 7) && strstr(ok, " 200 "));
    assert_non_null(strstr(ok, "text/plain; version=0.0.4"));
    assert_non_null(strstr(ok, "\r\n\r\n# HELP mx_build_info "));
    assert_non_null(strstr(ok, "\nt_hits_total 42\n"));
    char *missing = http_get(port, "/other");
    assert_non_null(strstr(missing, " 404 "));
    free(ok);
    free(missing);
    /* a second server on the same port is refused with the address named */
    char addr[32];
    snprintf(addr, sizeof addr, "127.0.0.1:%d", port);
    mx_metrics_http *h2 = NULL;
    assert_int_equal(mx_metrics_http_start(addr, m, &h2, &err), MX_EIO);
    assert_non_null(strstr(err.msg, addr));
    assert_int_equal(mx_metrics_http_start("nonsense", m, &h2, &err), MX_EINVAL);
    mx_metrics_http_stop(h);
    mx_metrics_destroy(m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_exposition_text),
        cmocka_unit_test(test_bad_registrations),
        cmocka_unit_test(test_concurrent_updates),
        cmocka_unit_test(test_http_endpoint),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
