/* test_router_config.c - the "experts" section of the attention-svc config (shard map and the
 * failure-handling knobs) and the shard map checks of mx_router_create: every error names the
 * key path and the line. No network (channels connect lazily; nothing answers). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "router/router.h"

/* Parses text's "experts" group; returns the rc and leaves the message in err. */
static int parse(const char *text, mx_router_config *rc, mx_error *err)
{
    config_t c;
    config_init(&c);
    assert_int_equal(config_read_string(&c, text), CONFIG_TRUE);
    int ret = mx_router_config_from_setting(config_lookup(&c, "experts"), rc, err);
    config_destroy(&c);
    return ret;
}

static void expect_error(const char *text, const char *needle)
{
    mx_router_config rc;
    mx_error err = {0};
    int ret = parse(text, &rc, &err);
    mx_router_config_free(&rc);
    if (ret == 0 || !strstr(err.msg, needle))
        fail_msg("config:\n%s\ngave rc %d \"%s\", expected an error mentioning \"%s\"", text, ret, err.msg, needle);
}

static void test_good_config(void **state)
{
    (void)state;
    mx_router_config rc;
    mx_error err = {0};
    assert_int_equal(parse("experts = { expert_timeout_ms = 250;\n"
                           "  shards = ( { experts = [1, 0]; layers = [3, 1]; replicas = [\"h:1\", \"h:2\"]; },\n"
                           "             { experts = [2, 3]; layer_begin = 0; layer_end = 8; replicas = [\"h:3\"]; } ); };",
                           &rc, &err),
                     0);
    assert_int_equal(rc.expert_timeout_ms, 250);
    assert_int_equal(rc.n_shards, 2);
    assert_int_equal(rc.shards[0].owns.experts[0], 0); /* sorted */
    assert_int_equal(rc.shards[0].owns.layers[0], 1);
    assert_int_equal(rc.shards[0].n_replicas, 2);
    assert_string_equal(rc.shards[0].replicas[1], "h:2");
    assert_int_equal(rc.shards[1].owns.n_layers, 8);
    assert_true(mx_expert_set_has(&rc.shards[1].owns, 7, 3));
    assert_false(mx_expert_set_has(&rc.shards[1].owns, 8, 3));
    mx_router *r = NULL;
    assert_int_equal(mx_router_create(&rc, 8, 16, 4, NULL, &r, &err), 0);
    /* layers 0, 2, 4.. have no shard for experts 0 and 1 */
    assert_int_equal(mx_router_check_coverage(r, 0, 8, &err), MX_ENOTFOUND);
    assert_non_null(strstr(err.msg, "layer 0 expert 0"));
    assert_int_equal(mx_router_check_coverage(r, 1, 2, &err), 0);
    mx_router_destroy(r);
    mx_router_config_free(&rc);
}

static void test_config_errors(void **state)
{
    (void)state;
    expect_error("x = 1;", "missing `experts`");
    expect_error("experts = {\n};", ":1: `experts.shards`: missing");
    expect_error("experts = { shards = (\n { experts = [0]; } ); };", "`experts.shards.[0].replicas`: missing");
    expect_error("experts = { shards = (\n { experts = [0]; replicas = [\"nohost\"]; } ); };", "host:port");
    expect_error("experts = { shards = (\n { experts = [0, 0]; replicas = [\"h:1\"]; } ); };",
                 ":2: `experts.shards.[0].experts`: 0 is listed twice");
    expect_error("experts = { shards = (\n { replicas = [\"h:1\"]; } ); };", "`experts.shards.[0].experts`: missing");
    expect_error("experts = { shards = (\n { experts = [-1]; replicas = [\"h:1\"]; } ); };", "out of range");
    expect_error("experts = { shards = (\n { experts = [1]; layers = [1];\n layer_begin = 0; layer_end = 2;"
                 " replicas = [\"h:1\"]; } ); };",
                 "not both");
    expect_error("experts = { shards = (\n { experts = [1]; layer_begin = 3; layer_end = 2; replicas = [\"h:1\"]; } ); };",
                 "layer_end");
    expect_error("experts = { expert_timeout_ms = \"10\"; shards = (); };", "`experts.expert_timeout_ms`: expected an integer");
    expect_error("experts = { shards = (); };", "must not be empty");
}

/* The failure-handling knobs: values, defaults, bounds. */
static void test_timing_keys(void **state)
{
    (void)state;
    mx_router_config rc;
    mx_error err = {0};
    assert_int_equal(parse("experts = { attempt_timeout_floor_ms = 30; attempt_timeout_cap_ms = 900;\n"
                           "  attempt_timeout_factor = 2.5; hedge = true; hedge_percent = 20; eject_ms = 100;\n"
                           "  eject_max_ms = 800; health_interval_ms = 300; probe_timeout_ms = 150;\n"
                           "  shards = ( { experts = [0]; replicas = [\"h:1\"]; } ); };",
                           &rc, &err),
                     0);
    assert_int_equal(rc.attempt_floor_ms, 30);
    assert_int_equal(rc.attempt_cap_ms, 900);
    assert_true(rc.attempt_factor == 2.5);
    assert_true(rc.hedge);
    assert_int_equal(rc.hedge_percent, 20);
    assert_int_equal(rc.eject_ms, 100);
    assert_int_equal(rc.eject_max_ms, 800);
    assert_int_equal(rc.health_interval_ms, 300);
    assert_int_equal(rc.probe_timeout_ms, 150);
    mx_router_config_free(&rc);
    assert_int_equal(parse("experts = { attempt_timeout_factor = 3;\n"
                           "  shards = ( { experts = [0]; replicas = [\"h:1\"]; } ); };", &rc, &err), 0);
    assert_true(rc.attempt_factor == 3.0); /* an integer is a number too */
    assert_int_equal(rc.attempt_floor_ms, 200);
    assert_int_equal(rc.attempt_cap_ms, 2000);
    assert_false(rc.hedge);
    assert_int_equal(rc.eject_ms, 500);
    assert_int_equal(rc.eject_max_ms, 5000);
    mx_router_config_free(&rc);
    expect_error("experts = { hedge = 1; shards = ( { experts = [0]; replicas = [\"h:1\"]; } ); };",
                 "`experts.hedge`: expected true or false");
    expect_error("experts = { attempt_timeout_factor = 0.5; shards = ( { experts = [0]; replicas = [\"h:1\"]; } ); };",
                 "`experts.attempt_timeout_factor`: 0.5 is outside");
    expect_error("experts = { attempt_timeout_floor_ms = 3000; shards = ( { experts = [0]; replicas = [\"h:1\"]; } ); };",
                 "above attempt_timeout_cap_ms");
    expect_error("experts = { eject_ms = 9000; shards = ( { experts = [0]; replicas = [\"h:1\"]; } ); };",
                 "above eject_max_ms");
    expect_error("experts = { hedge_percent = 0; shards = ( { experts = [0]; replicas = [\"h:1\"]; } ); };",
                 "hedge_percent");
    expect_error("experts = { eject_msec = 1; shards = ( { experts = [0]; replicas = [\"h:1\"]; } ); };", "eject_msec");
}

static void test_map_errors(void **state)
{
    (void)state;
    mx_router_config rc;
    mx_error err = {0};
    mx_router *r = NULL;
    assert_int_equal(parse("experts = { shards = ( { experts = [0, 1]; replicas = [\"h:1\"]; },\n"
                           "  { experts = [1, 2]; layers = [5]; replicas = [\"h:2\"]; } ); };",
                           &rc, &err),
                     0);
    /* layer 5 expert 1 held by both shards: allowed (a hot expert placed twice) */
    assert_int_equal(mx_router_create(&rc, 8, 16, 4, NULL, &r, &err), 0);
    assert_int_equal(mx_router_check_coverage(r, 0, 8, &err), MX_ENOTFOUND);
    assert_non_null(strstr(err.msg, "layer 0 expert 2"));
    mx_router_destroy(r);
    r = NULL;
    assert_int_equal(mx_router_create(&rc, 8, 16, 2, NULL, &r, &err), MX_ERANGE);
    assert_non_null(strstr(err.msg, "expert shard 1"));
    assert_non_null(strstr(err.msg, "expert 2 does not exist"));
    assert_null(r);
    mx_router_config_free(&rc);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_good_config),
        cmocka_unit_test(test_config_errors),
        cmocka_unit_test(test_timing_keys),
        cmocka_unit_test(test_map_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
