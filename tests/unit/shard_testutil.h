/* shard_testutil.h - expert shards served in-process for the unit tests that run the MoE over
 * the network (test_router_*, test_stage_*; they link libexpert-svc.a): a shard of the golden
 * tiny fixture on a loopback port picked by the kernel, and a router made from an
 * attention-svc style `experts = { ... }` config text. Header-only (static inline, like
 * loader_testutil.h). Include <cmocka.h> (with setjmp.h, stdarg.h, stddef.h) first. */
#ifndef SHARD_TESTUTIL_H
#define SHARD_TESTUTIL_H

#include <libconfig.h>
#include <stdio.h>

#include "core/expert_set.h"
#include "core/rpc/server.h"
#include "expert-svc/shard.h"
#include "router/router.h"

#ifndef TINY_FIXTURE
#define TINY_FIXTURE "../shared/golden/tiny"
#endif

typedef struct test_shard {
    mx_expert_shard *shard;
    mx_rpc_server *srv;
    int port;
} test_shard;

/* Loads shard `index` of the tiny fixture owning the experts of experts_cfg (an expert-svc
 * config fragment: "experts = [0, 1];", optionally layer_begin / layer_end) on one backend
 * thread, and serves it on 127.0.0.1 with 2 RPC workers; s->port is the port it got. */
static inline void test_shard_start(test_shard *s, const char *experts_cfg, int index)
{
    mx_error err = {0};
    config_t c;
    config_init(&c);
    assert_int_equal(config_read_string(&c, experts_cfg), CONFIG_TRUE);
    mx_expert_set set;
    assert_int_equal(mx_expert_set_from_setting(config_root_setting(&c), &set, &err), 0);
    mx_expert_shard_options o = {.model_dir = TINY_FIXTURE, .backend = "cpu", .threads = 1, .shard_index = index,
                                 .owns = &set};
    int rc = mx_expert_shard_load(&o, &s->shard, &err);
    mx_expert_set_free(&set);
    config_destroy(&c);
    if (rc)
        print_error("%s\n", err.msg);
    assert_int_equal(rc, 0);
    mx_rpc_server_options so = {.address = "127.0.0.1:0", .worker_threads = 2};
    assert_int_equal(mx_rpc_server_create(&so, &s->srv, &err), 0);
    assert_int_equal(mx_expert_shard_serve(s->shard, s->srv, &err), 0);
    assert_int_equal(mx_rpc_server_start(s->srv, &err), 0);
    s->port = mx_rpc_server_port(s->srv);
}

/* Stops serving at once (no grace) and frees the shard; a stopped shard may be stopped again
 * (a test that kills a replica mid-run, then its teardown). */
static inline void test_shard_stop(test_shard *s)
{
    if (s->srv) {
        mx_rpc_server_shutdown(s->srv, 0);
        mx_rpc_server_destroy(s->srv);
    }
    mx_expert_shard_free(s->shard);
    s->srv = NULL;
    s->shard = NULL;
}

/* Parses the `experts` group of text into *rc (the caller frees it with
 * mx_router_config_free); fails the test on a parse error. */
static inline void test_router_config(const char *text, mx_router_config *rc)
{
    config_t c;
    config_init(&c);
    assert_int_equal(config_read_string(&c, text), CONFIG_TRUE);
    mx_error err = {0};
    int ret = mx_router_config_from_setting(config_lookup(&c, "experts"), rc, &err);
    if (ret)
        print_error("%s\n", err.msg);
    assert_int_equal(ret, 0);
    config_destroy(&c);
}

/* A router from the `experts` group of text, for a model of `layers` layers, hidden size and
 * experts per layer (be may be NULL where the test hands the router host tensors). */
static inline mx_router *test_router_from_text(const char *text, int layers, int hidden, int experts, mx_backend *be)
{
    mx_router_config rc;
    test_router_config(text, &rc);
    mx_router *r = NULL;
    mx_error err = {0};
    int ret = mx_router_create(&rc, layers, hidden, experts, be, &r, &err);
    if (ret)
        print_error("%s\n", err.msg);
    mx_router_config_free(&rc);
    assert_int_equal(ret, 0);
    return r;
}

#endif
