/* test_router_cluster.c - the MoE split end to end on the golden tiny fixture: expert shards
 * {0,1} and {2,3} (the second with two replicas) served in-process on loopback ports, the
 * whole model run through mx_router's executor and compared with the fixture's reference
 * logits (expected.safetensors, tolerances from cases.json) and with the all-local forward;
 * a replica killed mid-run; bad RunExperts requests; Info; unreachable shards; a layer's calls
 * go to shards at other hosts before the one at the stage's own host. */
#include <jansson.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "expert-svc/shard.h"
#include "mx/internal/v1/expert_shard.pb-c.h"
#include "core/protocol.h"
#include "router/router.h"
#include "core/rpc/client.h"
#include "core/safetensors.h"
#include "golden_testutil.h"
#include "shard_testutil.h"

typedef struct world {
    tiny_model t;
    test_shard a, b1, b2;       /* shard 0 = experts {0,1}; shard 1 = {2,3} on b1 and b2 */
    mx_st_file *expected;
    double max_abs, max_rel;    /* fp32 tolerances of cases.json */
} world;

static int setup(void **state)
{
    world *wd = calloc(1, sizeof *wd);
    mx_error err = {0};
    /* the fp32 tier needs an exact cache: f32 KV (the default bf16 moves the logits ~1e-3) */
    const mx_kv_options f32_kv = {.dtype = MX_KV_F32};
    if (!wd || tiny_model_load(&wd->t, &f32_kv, &err) ||
        mx_st_open(TINY_FIXTURE "/expected.safetensors", &wd->expected, &err) ||
        golden_fp32_tolerances(&wd->max_abs, &wd->max_rel))
        return -1;
    test_shard_start(&wd->a, "experts = [0, 1];", 0);
    test_shard_start(&wd->b1, "experts = [2, 3]; layer_begin = 0; layer_end = 8;", 1);
    test_shard_start(&wd->b2, "experts = [3, 2];", 1);
    *state = wd;
    return 0;
}

static int teardown(void **state)
{
    world *wd = *state;
    test_shard_stop(&wd->a);
    test_shard_stop(&wd->b1);
    test_shard_stop(&wd->b2);
    mx_st_close(wd->expected);
    tiny_model_free(&wd->t);
    free(wd);
    return 0;
}

/* The router for the current servers, from an attention-svc style config text. */
static mx_router *make_router(world *wd, int port_b1, int timeout_ms)
{
    char text[1024];
    snprintf(text, sizeof text,
             "experts = {\n"
             "  expert_timeout_ms = %d;\n"
             "  shards = (\n"
             "    { experts = [0, 1]; replicas = [\"127.0.0.1:%d\"]; },\n"
             "    { experts = [2, 3]; replicas = [\"127.0.0.1:%d\", \"127.0.0.1:%d\"]; }\n"
             "  );\n"
             "};\n",
             timeout_ms, wd->a.port, port_b1, wd->b2.port);
    const mx_config *mc = mx_model_config(wd->t.m);
    mx_router *r = test_router_from_text(text, mc->num_hidden_layers, mc->hidden_size, mc->num_local_experts, wd->t.be);
    mx_error err = {0};
    assert_int_equal(mx_router_check_coverage(r, 0, mc->num_hidden_layers, &err), 0);
    return r;
}

/* An executor that kills replica b1 at its n-th call, then forwards to the router. */
typedef struct killer {
    world *wd;
    mx_router *r;
    int calls, kill_at;
} killer;

static int killer_run(void *ctx, int layer, const mx_tensor *x2, const int32_t *ids, const float *weights, int k,
                      mx_tensor *out, mx_error *err)
{
    killer *kl = ctx;
    if (++kl->calls == kl->kill_at)
        test_shard_stop(&kl->wd->b1);
    return mx_router_run(kl->r, layer, x2, ids, weights, k, out, err);
}

static void golden_case(world *wd, const char *name, int plen, int steps)
{
    const mx_config *c = mx_model_config(wd->t.m);
    int V = c->vocab_size;
    const int32_t *prompt = golden_tensor(wd->expected, name, "prompt_ids");
    const int32_t *greedy = golden_tensor(wd->expected, name, "greedy_ids");
    const float *want = golden_tensor(wd->expected, name, "logits");
    float *remote = calloc((size_t)(steps + 1) * V, sizeof(float));
    float *local = calloc((size_t)(steps + 1) * V, sizeof(float));
    mx_router *r = make_router(wd, wd->b1.port, 10000);
    mx_moe_executor ex = mx_router_executor(r);
    golden_run_case(&wd->t, &ex, prompt, plen, greedy, steps, remote);
    golden_run_case(&wd->t, NULL, prompt, plen, greedy, steps, local);
    golden_check_rows(want, remote, steps + 1, V, wd->max_abs, wd->max_rel);
    for (size_t i = 0; i < (size_t)(steps + 1) * V; i++)
        if (!(fabs(remote[i] - local[i]) <= 1e-5 * fmax(1.0, fabs(local[i]))))
            fail_msg("logit %zu: remote %g vs local %g", i, remote[i], local[i]);
    mx_router_stats st;
    mx_router_get_stats(r, &st);
    assert_true(st.calls >= (uint64_t)(steps + 1) * c->num_hidden_layers); /* went over the network */
    assert_int_equal(st.failures, 0);
    mx_router_destroy(r);
    free(remote);
    free(local);
}

static void test_golden_short(void **state)
{
    golden_case(*state, "p5_s12", 5, 12);
}

static void test_golden_block(void **state)
{
    golden_case(*state, "p37_s12", 37, 12);
}

/* Bad requests straight to shard 0; each answered with the right code and the field named,
 * and the shard still serves afterwards. */
static mx_rpc_status call_raw(world *wd, const void *bytes, size_t len, mx_rpc_bytes *resp)
{
    char addr[64];
    snprintf(addr, sizeof addr, "127.0.0.1:%d", wd->a.port);
    mx_rpc_channel *ch = NULL;
    mx_error err = {0};
    assert_int_equal(mx_rpc_channel_create(addr, NULL, &ch, &err), 0);
    mx_rpc_result res = {0};
    mx_rpc_unary(ch, MX_EXPERT_RUN_METHOD, mx_rpc_payload_copy(bytes, len), 5000, &res);
    mx_rpc_status st = res.status;
    if (resp) {
        *resp = res.response;
        res.response = (mx_rpc_bytes){0};
    }
    mx_rpc_result_free(&res);
    mx_rpc_channel_destroy(ch);
    return st;
}

static mx_rpc_status call_run(world *wd, int layer, uint32_t expert, uint32_t rows, int dtype, size_t data_len,
                              float fill, mx_rpc_bytes *resp)
{
    Mx__Internal__V1__ExpertGroup g = MX__INTERNAL__V1__EXPERT_GROUP__INIT;
    g.expert_id = expert;
    g.num_rows = rows;
    Mx__Internal__V1__ExpertGroup *gp = &g;
    float *data = malloc(data_len + 4);
    for (size_t i = 0; i < data_len / 4; i++)
        data[i] = fill;
    Mx__Internal__V1__Tensor t = MX__INTERNAL__V1__TENSOR__INIT;
    t.dtype = dtype;
    t.rows = rows;
    t.cols = 128;
    t.data.data = (uint8_t *)data;
    t.data.len = data_len;
    Mx__Internal__V1__RunExpertsRequest rq = MX__INTERNAL__V1__RUN_EXPERTS_REQUEST__INIT;
    rq.layer = (uint32_t)layer;
    rq.n_groups = 1;
    rq.groups = &gp;
    rq.hidden = &t;
    size_t n = protobuf_c_message_get_packed_size(&rq.base);
    uint8_t *buf = malloc(n);
    protobuf_c_message_pack(&rq.base, buf);
    mx_rpc_status st = call_raw(wd, buf, n, resp);
    free(buf);
    free(data);
    return st;
}

static void expect(mx_rpc_status st, grpc_status_code code, const char *needle)
{
    if (st.code != code || !strstr(st.message, needle))
        fail_msg("got %s \"%s\", expected %s mentioning \"%s\"", mx_rpc_status_name(st.code), st.message,
                 mx_rpc_status_name(code), needle);
}

static void test_bad_requests(void **state)
{
    world *wd = *state;
    size_t ok_len = 3 * 128 * 4;
    expect(call_run(wd, 0, 2, 3, 1, ok_len, 1.0f, NULL), GRPC_STATUS_NOT_FOUND, "groups[0].expert_id");
    expect(call_run(wd, 0, 9, 3, 1, ok_len, 1.0f, NULL), GRPC_STATUS_INVALID_ARGUMENT, "groups[0].expert_id");
    expect(call_run(wd, 8, 0, 3, 1, ok_len, 1.0f, NULL), GRPC_STATUS_INVALID_ARGUMENT, "layer");
    expect(call_run(wd, 0, 0, 3, 1, ok_len - 4, 1.0f, NULL), GRPC_STATUS_INVALID_ARGUMENT, "hidden.data");
    expect(call_run(wd, 0, 0, 3, 2, ok_len, 1.0f, NULL), GRPC_STATUS_INVALID_ARGUMENT, "hidden.dtype");
    expect(call_run(wd, 0, 0, 3, 0, ok_len, 1.0f, NULL), GRPC_STATUS_INVALID_ARGUMENT, "hidden.dtype");
    static const uint8_t garbage[] = {0x1a, 0xff, 0xff, 0xff, 0x0f, 0x01};
    expect(call_raw(wd, garbage, sizeof garbage, NULL), GRPC_STATUS_INVALID_ARGUMENT, "malformed");
    /* NaN input is arithmetic, not a request error */
    expect(call_run(wd, 0, 1, 3, 1, ok_len, NAN, NULL), GRPC_STATUS_OK, "");
    /* still serving: a good request answers rows of the right size */
    mx_rpc_bytes resp = {0};
    expect(call_run(wd, 7, 1, 3, 1, ok_len, 0.5f, &resp), GRPC_STATUS_OK, "");
    Mx__Internal__V1__RunExpertsResponse *r = mx__internal__v1__run_experts_response__unpack(NULL, resp.len, resp.data);
    assert_non_null(r);
    assert_non_null(r->hidden);
    assert_int_equal(r->hidden->rows, 3);
    assert_int_equal(r->hidden->data.len, ok_len);
    protobuf_c_message_free_unpacked(&r->base, NULL);
    mx_rpc_bytes_free(&resp);
}

static void test_info(void **state)
{
    world *wd = *state;
    char addr[64];
    snprintf(addr, sizeof addr, "127.0.0.1:%d", wd->b1.port);
    mx_rpc_channel *ch = NULL;
    mx_error err = {0};
    assert_int_equal(mx_rpc_channel_create(addr, NULL, &ch, &err), 0);
    mx_rpc_result res = {0};
    assert_int_equal(mx_rpc_unary(ch, MX_EXPERT_INFO_METHOD, mx_rpc_payload_copy("", 0), 5000, &res), 0);
    Mx__Internal__V1__ShardInfoResponse *info =
        mx__internal__v1__shard_info_response__unpack(NULL, res.response.len, res.response.data);
    assert_non_null(info);
    /* tiny (README): 8 layers, hidden 128, intermediate 256, BF16 weights */
    assert_int_equal(info->shard_index, 1);
    assert_int_equal(info->n_layers, 8);
    for (size_t i = 0; i < info->n_layers; i++) {
        assert_int_equal(info->layers[i]->layer, i);
        assert_int_equal(info->layers[i]->n_expert_ids, 2);
        assert_int_equal(info->layers[i]->expert_ids[0], 2);
        assert_int_equal(info->layers[i]->expert_ids[1], 3);
    }
    assert_int_equal(info->hidden_size, 128);
    assert_int_equal(info->intermediate_size, 256);
    assert_int_equal(info->weight_bytes, 8ull * 2 * 3 * 128 * 256 * 2);
    assert_string_equal(info->weight_dtype, "bf16");
    assert_string_equal(info->backend, "cpu");
    protobuf_c_message_free_unpacked(&info->base, NULL);
    mx_rpc_result_free(&res);
    mx_rpc_channel_destroy(ch);
}

/* A shard with no reachable replica: the error names the shard and the endpoint. */
static void test_unreachable_shard(void **state)
{
    world *wd = *state;
    test_shard dead = {0};
    test_shard_start(&dead, "experts = [2, 3];", 1);
    int port = dead.port;
    test_shard_stop(&dead);
    char text[512];
    snprintf(text, sizeof text,
             "shards = ( { experts = [0, 1]; replicas = [\"127.0.0.1:%d\"]; },\n"
             "           { experts = [2, 3]; replicas = [\"127.0.0.1:%d\"]; } );\n"
             "expert_timeout_ms = 3000;\n",
             wd->a.port, port);
    config_t c;
    config_init(&c);
    assert_int_equal(config_read_string(&c, text), CONFIG_TRUE);
    mx_router_config rc;
    mx_error err = {0};
    assert_int_equal(mx_router_config_from_setting(config_root_setting(&c), &rc, &err), 0);
    mx_router *r = NULL;
    assert_int_equal(mx_router_create(&rc, 8, 128, 4, NULL, &r, &err), 0);
    float x[2 * 128] = {0}, out[2 * 128] = {0};
    int32_t ids[4] = {0, 2, 3, 1};
    float w[4] = {0.5f, 0.5f, 0.5f, 0.5f};
    mx_tensor xt = mx_tensor_2d(x, MX_DTYPE_F32, MX_DEVICE_CPU, 2, 128);
    mx_tensor ot = mx_tensor_2d(out, MX_DTYPE_F32, MX_DEVICE_CPU, 2, 128);
    int ret = mx_router_run(r, 4, &xt, ids, w, 2, &ot, &err);
    assert_int_equal(ret, MX_EUNAVAILABLE);
    char endpoint[64];
    snprintf(endpoint, sizeof endpoint, "127.0.0.1:%d", port);
    if (!strstr(err.msg, "expert shard 1") || !strstr(err.msg, endpoint))
        fail_msg("error does not name shard and endpoint: %s", err.msg);
    /* an expert id outside the model is refused before any call */
    ids[1] = 7;
    assert_int_equal(mx_router_run(r, 4, &xt, ids, w, 2, &ot, &err), MX_EINVAL);
    assert_non_null(strstr(err.msg, "expert id 7"));
    mx_router_destroy(r);
    mx_router_config_free(&rc);
    config_destroy(&c);
}

/* Killing replica b1 in the middle of a run: the router moves to b2 and the logits are
 * bit-identical to an undisturbed run. Runs last: it leaves b1 stopped. */
/* The shards each attempt went to, in order (the router's observer, on the dispatching thread). */
typedef struct sent_log {
    int shard[64];
    int n;
} sent_log;

static void record_sent(void *ctx, mx_router_attempt_event ev, int shard, int replica, bool retry, bool ok,
                        double seconds)
{
    (void)replica, (void)retry, (void)ok, (void)seconds;
    sent_log *log = ctx;
    if (ev == MX_ROUTER_ATTEMPT_SENT && log->n < 64)
        log->shard[log->n++] = shard;
}

/* Shard 0 at 127.0.0.1, shard 1 at ::ffff:127.0.0.1 (the same IPv4 server through an IPv4-mapped
 * IPv6 address: another host to the router, and no name to resolve): with
 * the stage's host 127.0.0.1 shard 1's call goes out first; with no host known, shard order. */
static void test_other_hosts_first(void **state)
{
    world *wd = *state;
    const mx_config *c = mx_model_config(wd->t.m);
    int H = c->hidden_size, T = 4, k = 2;
    float *x = calloc((size_t)T * H, sizeof *x), *y = calloc((size_t)T * H, sizeof *y);
    int32_t ids[8];
    float w[8];
    for (int t = 0; t < T; t++) {
        ids[t * k] = 0; /* shard 0 */
        ids[t * k + 1] = 2; /* shard 1 */
        w[t * k] = w[t * k + 1] = 0.5f;
        for (int i = 0; i < H; i++)
            x[(size_t)t * H + i] = 0.01f * (float)((t * 7 + i) % 13);
    }
    mx_tensor x2 = mx_tensor_2d(x, MX_DTYPE_F32, MX_DEVICE_CPU, T, H);
    mx_tensor out = mx_tensor_2d(y, MX_DTYPE_F32, MX_DEVICE_CPU, T, H);
    for (int local = 0; local < 2; local++) {
        char text[512];
        snprintf(text, sizeof text,
                 "experts = { shards = ( { experts = [0, 1]; replicas = [\"127.0.0.1:%d\"]; },\n"
                 "  { experts = [2, 3]; replicas = [\"[::ffff:127.0.0.1]:%d\"]; } ); };\n",
                 wd->a.port, wd->b2.port);
        mx_router_config rc;
        test_router_config(text, &rc);
        if (local)
            snprintf(rc.local_host, sizeof rc.local_host, "127.0.0.1");
        mx_router *r = NULL;
        mx_error err = {0};
        int rc_create = mx_router_create(&rc, c->num_hidden_layers, H, c->num_local_experts, wd->t.be, &r, &err);
        mx_router_config_free(&rc);
        assert_int_equal(rc_create, 0);
        sent_log log = {.n = 0};
        mx_router_set_attempt_observer(r, record_sent, &log);
        for (int run = 0; run < 3; run++) {
            if (mx_router_run(r, 0, &x2, ids, w, k, &out, &err))
                fail_msg("run %d: %s", run, err.msg);
        }
        assert_int_equal(log.n, 6); /* one call per shard per run, no retries */
        for (int run = 0; run < 3; run++) {
            assert_int_equal(log.shard[2 * run], local ? 1 : 0);
            assert_int_equal(log.shard[2 * run + 1], local ? 0 : 1);
        }
        mx_router_destroy(r);
    }
    free(x);
    free(y);
}

static void test_kill_replica(void **state)
{
    world *wd = *state;
    const mx_config *c = mx_model_config(wd->t.m);
    int V = c->vocab_size, steps = 12, plen = 5;
    const int32_t *prompt = golden_tensor(wd->expected, "p5_s12", "prompt_ids");
    const int32_t *greedy = golden_tensor(wd->expected, "p5_s12", "greedy_ids");
    float *before = calloc((size_t)(steps + 1) * V, sizeof(float));
    float *after = calloc((size_t)(steps + 1) * V, sizeof(float));
    mx_router *r = make_router(wd, wd->b1.port, 10000);
    mx_moe_executor ex = mx_router_executor(r);
    golden_run_case(&wd->t, &ex, prompt, plen, greedy, steps, before);
    killer kl = {.wd = wd, .r = r, .kill_at = 3 * c->num_hidden_layers + 2};
    mx_moe_executor kex = {killer_run, &kl};
    golden_run_case(&wd->t, &kex, prompt, plen, greedy, steps, after);
    assert_null(wd->b1.srv);
    assert_memory_equal(before, after, (size_t)(steps + 1) * V * sizeof(float));
    mx_router_stats st;
    mx_router_get_stats(r, &st);
    /* the router noticed the kill: either a call to b1 failed and was retried on b2, or b1's
     * Health/Watch stream broke first and ejected it before the next call (a race both ways) */
    assert_true(st.retries + st.ejections >= 1);
    assert_int_equal(st.failures, 0);
    mx_router_destroy(r);
    free(before);
    free(after);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_golden_short),   cmocka_unit_test(test_golden_block),
        cmocka_unit_test(test_bad_requests),   cmocka_unit_test(test_info),
        cmocka_unit_test(test_unreachable_shard), cmocka_unit_test(test_other_hosts_first),
        cmocka_unit_test(test_kill_replica),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
