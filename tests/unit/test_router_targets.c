/* test_router_targets.c - the syntax of an expert shard's replica entries: "host:port",
 * "[ipv6]:port", gRPC-style "dns:///name:port" and "dns://server[:port]/name:port", and the
 * config errors for bad ones (naming the key and the entry), and a router whose DNS target
 * does not resolve (its DNS server a closed loopback port): no start-up error, the shard not
 * live, a step failing with the target named. Expectations are written out by hand from the
 * gRPC naming document's target forms. No network beyond loopback. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>

#include "core/tensor.h"
#include "router/resolver.h"
#include "router/router.h"

static void expect_target(const char *s, bool dns, const char *server, const char *host, int port)
{
    mx_router_target t;
    mx_error err = {0};
    int rc = mx_router_target_parse(s, &t, &err);
    if (rc)
        fail_msg("\"%s\": unexpected error %s", s, err.msg);
    assert_int_equal(t.dns, dns);
    assert_string_equal(t.server, server);
    assert_string_equal(t.host, host);
    assert_int_equal(t.port, port);
}

static void expect_bad(const char *s, const char *needle)
{
    mx_router_target t;
    mx_error err = {0};
    int rc = mx_router_target_parse(s, &t, &err);
    if (rc != MX_EINVAL || !strstr(err.msg, needle))
        fail_msg("\"%s\": rc %d \"%s\", expected MX_EINVAL mentioning \"%s\"", s, rc, err.msg, needle);
}

static void test_static_targets(void **state)
{
    (void)state;
    expect_target("127.0.0.1:5001", false, "", "127.0.0.1", 5001);
    expect_target("expert-0:50071", false, "", "expert-0", 50071);
    expect_target("[::1]:5002", false, "", "::1", 5002);
    expect_target("[fe80::1:2]:65535", false, "", "fe80::1:2", 65535);
    expect_target("a.b_c-d.example:1", false, "", "a.b_c-d.example", 1);
}

static void test_dns_targets(void **state)
{
    (void)state;
    expect_target("dns:///mx-expert-0.mx.svc.cluster.local:50071", true, "", "mx-expert-0.mx.svc.cluster.local",
                  50071);
    expect_target("dns://127.0.0.1:5353/mx-expert-0:50071", true, "127.0.0.1:5353", "mx-expert-0", 50071);
    expect_target("dns://10.0.0.10/shard.test:7", true, "10.0.0.10:53", "shard.test", 7);
    expect_target("dns://[::1]:5353/shard.test:7", true, "[::1]:5353", "shard.test", 7);
    expect_target("dns://[2001:db8::5]/shard.test:7", true, "[2001:db8::5]:53", "shard.test", 7);
}

static void test_bad_targets(void **state)
{
    (void)state;
    expect_bad("", "empty");
    expect_bad("localhost", "no port");
    expect_bad("host:", "port");
    expect_bad(":5001", "no host");
    expect_bad("host:0", "[1, 65535]");
    expect_bad("host:65536", "[1, 65535]");
    expect_bad("host:50a", "[1, 65535]");
    expect_bad("::1:5001", "more than one ':'");
    expect_bad("[::1:5001", "without ']'");
    expect_bad("[::1]5001", "after ']'");
    expect_bad("[not-v6]:5001", "IPv6");
    expect_bad("ho st:1", "bad character");
    expect_bad("dns:/name:1", "dns:///name:port");
    expect_bad("dns:name:1", "dns:///name:port");
    expect_bad("dns://name:1", "dns:///name:port"); /* no '/' after the authority */
    expect_bad("dns:///name", "no port");
    expect_bad("dns:///:50071", "no host");
    expect_bad("dns://dns.example:53/name:1", "must be an IP address");
    expect_bad("dns://127.0.0.1:99999/name:1", "DNS server");
    expect_bad("http://host:80", "unknown scheme");
}

/* Bad entries in a config are config errors naming the key and the entry. */
static void test_config_errors(void **state)
{
    (void)state;
    static const struct {
        const char *entry, *needle;
    } cases[] = {
        {"\"dns:///name\"", "no port"},
        {"\"dns://resolver.local/n:1\"", "must be an IP address"},
        {"\"h:1:2\"", "more than one ':'"},
        {"5", "expected a \"host:port\""},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        char text[512];
        snprintf(text, sizeof text, "experts = { shards = ( { experts = [0]; replicas = (\"h:1\", %s); } ); };",
                 cases[i].entry);
        config_t c;
        config_init(&c);
        assert_int_equal(config_read_string(&c, text), CONFIG_TRUE);
        mx_router_config rc;
        mx_error err = {0};
        int ret = mx_router_config_from_setting(config_lookup(&c, "experts"), &rc, &err);
        mx_router_config_free(&rc);
        config_destroy(&c);
        if (ret == 0 || !strstr(err.msg, cases[i].needle) || !strstr(err.msg, "replicas") ||
            !strstr(err.msg, "element 1"))
            fail_msg("entry %s gave rc %d \"%s\"", cases[i].entry, ret, err.msg);
    }
    /* good mixed list, and the resolve interval */
    config_t c;
    config_init(&c);
    assert_int_equal(config_read_string(&c, "experts = { resolve_interval_ms = 750; shards = ( { experts = [0]; "
                                            "replicas = [\"127.0.0.1:1\", \"dns://127.0.0.1:5353/a.test:2\"]; } ); };"),
                     CONFIG_TRUE);
    mx_router_config rc;
    mx_error err = {0};
    assert_int_equal(mx_router_config_from_setting(config_lookup(&c, "experts"), &rc, &err), 0);
    assert_int_equal(rc.resolve_interval_ms, 750);
    assert_int_equal(rc.shards[0].n_replicas, 2);
    mx_router_config_free(&rc);
    config_destroy(&c);
}

/* A DNS name that does not resolve is no start-up error: the router is created and the
 * shard is simply not live. The DNS server is a closed loopback port (nothing answers). */
static void test_unresolved_is_not_fatal(void **state)
{
    (void)state;
    config_t c;
    config_init(&c);
    assert_int_equal(config_read_string(&c, "experts = { resolve_interval_ms = 100; shards = ( { experts = [0, 1]; "
                                            "replicas = [\"dns://127.0.0.1:9/nothing.test:2\"]; } ); };"),
                     CONFIG_TRUE);
    mx_router_config rc;
    mx_error err = {0};
    assert_int_equal(mx_router_config_from_setting(config_lookup(&c, "experts"), &rc, &err), 0);
    config_destroy(&c);
    mx_router *r = NULL;
    if (mx_router_create(&rc, 2, 8, 2, NULL, &r, &err))
        fail_msg("create: %s", err.msg);
    mx_router_config_free(&rc);
    int dead = -1;
    assert_int_equal(mx_router_shards_live(r, 0, 2, &dead), 0);
    assert_int_equal(dead, 0);
    /* the resolver keeps asking (every 100 ms) and counts the failures; nothing was added */
    mx_router_stats st = {0};
    for (int i = 0; i < 100 && st.resolve_errors == 0; i++) {
        struct timespec ts = {0, 50 * 1000000L};
        nanosleep(&ts, NULL);
        mx_router_get_stats(r, &st);
    }
    assert_true(st.resolve_errors >= 1);
    assert_int_equal(st.replicas_added, 0);
    /* a step meanwhile fails cleanly, naming the shard: no replica to try */
    float x[2 * 8] = {0}, out[2 * 8] = {0}, w[2] = {1, 1};
    int32_t ids[2] = {0, 1};
    mx_tensor xt = mx_tensor_2d(x, MX_DTYPE_F32, MX_DEVICE_CPU, 2, 8);
    mx_tensor ot = mx_tensor_2d(out, MX_DTYPE_F32, MX_DEVICE_CPU, 2, 8);
    int ret = mx_router_run(r, 0, &xt, ids, w, 1, &ot, &err);
    if (ret != MX_EUNAVAILABLE || !strstr(err.msg, "expert shard 0") ||
        !strstr(err.msg, "dns://127.0.0.1:9/nothing.test:2"))
        fail_msg("run with no replica: rc %d \"%s\"", ret, err.msg);
    mx_router_destroy(r);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_static_targets),
        cmocka_unit_test(test_dns_targets),
        cmocka_unit_test(test_bad_targets),
        cmocka_unit_test(test_config_errors),
        cmocka_unit_test(test_unresolved_is_not_fatal),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
