/* test_router_multiholder.c - experts held by several shards, and the load counters, on the
 * golden tiny fixture with real expert shards served in-process: shard A holds experts
 * {0,1,2}, shard B (two replicas) {1,2,3}. Every case of the fixture goes through a router
 * that sends experts 1 and 2 to either holder and through one with disjoint shards; the logits
 * must be bit-identical to each other and within the fixture's fp32 tolerance of its reference;
 * the routed-token counters must equal the fixture's own expert_use_per_layer (counted by the
 * reference implementation), and the shards' served rows must add up to the same. */
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

#define MAX_L 8
#define MAX_E 4

typedef struct world {
    tiny_model t;
    test_shard a, b1, b2;
    mx_st_file *expected;
    double max_abs, max_rel;
    int L, E, V;
    uint64_t use[MAX_L][MAX_E];  /* the fixture's expert_use_per_layer (all cases) */
    json_t *cases;
} world;

static int setup(void **state)
{
    world *wd = calloc(1, sizeof *wd);
    mx_error err = {0};
    const mx_kv_options f32_kv = {.dtype = MX_KV_F32};
    if (!wd || tiny_model_load(&wd->t, &f32_kv, &err) ||
        mx_st_open(TINY_FIXTURE "/expected.safetensors", &wd->expected, &err))
        return -1;
    wd->L = wd->t.cfg.num_hidden_layers;
    wd->E = wd->t.cfg.num_local_experts;
    wd->V = wd->t.cfg.vocab_size;
    if (wd->L > MAX_L || wd->E > MAX_E)
        return -1;
    json_error_t jerr;
    json_t *root = json_load_file(TINY_FIXTURE "/cases.json", 0, &jerr);
    if (!root)
        return -1;
    json_t *fp32 = json_object_get(json_object_get(root, "tolerances"), "fp32");
    json_t *use = json_object_get(json_object_get(root, "generation"), "expert_use_per_layer");
    if (!fp32 || json_array_size(use) != (size_t)wd->L)
        return -1;
    wd->max_abs = json_number_value(json_object_get(fp32, "max_abs"));
    wd->max_rel = json_number_value(json_object_get(fp32, "max_rel"));
    for (int l = 0; l < wd->L; l++)
        for (int e = 0; e < wd->E; e++)
            wd->use[l][e] = (uint64_t)json_integer_value(json_array_get(json_array_get(use, (size_t)l), (size_t)e));
    wd->cases = json_incref(json_object_get(root, "cases"));
    json_decref(root);
    test_shard_start(&wd->a, "experts = [0, 1, 2];", 0);
    test_shard_start(&wd->b1, "experts = [1, 2, 3];", 1);
    test_shard_start(&wd->b2, "experts = [1, 2, 3];", 1);
    *state = wd;
    return 0;
}

static int teardown(void **state)
{
    world *wd = *state;
    test_shard_stop(&wd->a);
    test_shard_stop(&wd->b1);
    test_shard_stop(&wd->b2);
    json_decref(wd->cases);
    mx_st_close(wd->expected);
    tiny_model_free(&wd->t);
    free(wd);
    return 0;
}

/* A router over the servers: shard 0 on A, shard 1 on B's two replicas, owning the given lists.
 * Each call waits for its answer: with the default per-attempt deadline (200 ms floor) a call
 * slowed down by a loaded machine (AddressSanitizer, other jobs) is sent again to another holder
 * and the first copy cancelled, so the router would count a call no shard counts as answered;
 * the counts compared below are the holders' choice, not deadlines. */
static mx_router *make_router(world *wd, const char *experts0, const char *experts1)
{
    char text[1024];
    snprintf(text, sizeof text,
             "experts = { expert_timeout_ms = 120000; attempt_timeout_floor_ms = 120000;\n"
             "  attempt_timeout_cap_ms = 120000; shards = (\n"
             "  { experts = [%s]; replicas = [\"127.0.0.1:%d\"]; },\n"
             "  { experts = [%s]; replicas = [\"127.0.0.1:%d\", \"127.0.0.1:%d\"]; } ); };\n",
             experts0, wd->a.port, experts1, wd->b1.port, wd->b2.port);
    mx_router *r = test_router_from_text(text, wd->L, (int)wd->t.cfg.hidden_size, wd->E, wd->t.be);
    mx_error err = {0};
    assert_int_equal(mx_router_check_coverage(r, 0, wd->L, &err), 0);
    return r;
}

/* What a shard served, from its Info over gRPC. */
typedef struct served {
    uint64_t calls, rows, in_flight;
    uint64_t rows_of[MAX_L][MAX_E];
} served;

static void shard_info(world *wd, const test_shard *s, served *out)
{
    char addr[64];
    snprintf(addr, sizeof addr, "127.0.0.1:%d", s->port);
    mx_rpc_channel *ch = NULL;
    mx_error err = {0};
    assert_int_equal(mx_rpc_channel_create(addr, NULL, &ch, &err), 0);
    mx_rpc_result res = {0};
    assert_int_equal(mx_rpc_unary(ch, MX_EXPERT_INFO_METHOD, mx_rpc_payload_copy("", 0), 5000, &res), 0);
    Mx__Internal__V1__ShardInfoResponse *info =
        mx__internal__v1__shard_info_response__unpack(NULL, res.response.len, res.response.data);
    assert_non_null(info);
    memset(out, 0, sizeof *out);
    out->calls = info->calls_total;
    out->rows = info->rows_total;
    out->in_flight = info->in_flight;
    for (size_t i = 0; i < info->n_expert_rows; i++) {
        const Mx__Internal__V1__ExpertRows *x = info->expert_rows[i];
        assert_true(x->layer < (uint32_t)wd->L && x->expert_id < (uint32_t)wd->E && x->rows > 0);
        out->rows_of[x->layer][x->expert_id] = x->rows;
    }
    mx__internal__v1__shard_info_response__free_unpacked(info, NULL);
    mx_rpc_result_free(&res);
    mx_rpc_channel_destroy(ch);
}

/* Every case of the fixture through r; logits of all cases one after another into out. */
static size_t run_all(world *wd, mx_router *r, float *out)
{
    mx_moe_executor ex = mx_router_executor(r);
    size_t at = 0;
    for (size_t i = 0; i < json_array_size(wd->cases); i++) {
        json_t *cs = json_array_get(wd->cases, i);
        const char *name = json_string_value(json_object_get(cs, "name"));
        int plen = (int)json_integer_value(json_object_get(cs, "prompt_len"));
        int steps = (int)json_integer_value(json_object_get(cs, "steps"));
        float *logits = out + at;
        golden_run_case(&wd->t, &ex, golden_tensor(wd->expected, name, "prompt_ids"), plen,
                        golden_tensor(wd->expected, name, "greedy_ids"), steps, logits);
        golden_check_rows(golden_tensor(wd->expected, name, "logits"), logits, steps + 1, wd->V, wd->max_abs,
                          wd->max_rel);
        at += (size_t)(steps + 1) * wd->V;
    }
    return at;
}

static void check_router_tokens(world *wd, mx_router *r)
{
    uint64_t tokens[MAX_L * MAX_E];
    mx_router_expert_tokens(r, tokens);
    for (int l = 0; l < wd->L; l++)
        for (int e = 0; e < wd->E; e++)
            if (tokens[l * wd->E + e] != wd->use[l][e])
                fail_msg("layer %d expert %d: router counted %llu tokens, the fixture %llu", l, e,
                         (unsigned long long)tokens[l * wd->E + e], (unsigned long long)wd->use[l][e]);
}

static void test_multi_holder_exact_and_counted(void **state)
{
    world *wd = *state;
    size_t rows = 0;
    for (size_t i = 0; i < json_array_size(wd->cases); i++)
        rows += (size_t)json_integer_value(json_object_get(json_array_get(wd->cases, i), "steps")) + 1;
    float *multi = calloc(rows * wd->V, sizeof(float)), *single = calloc(rows * wd->V, sizeof(float));
    assert_non_null(multi);
    assert_non_null(single);

    mx_router *rm = make_router(wd, "0, 1, 2", "1, 2, 3"); /* experts 1, 2 on both shards */
    size_t n = run_all(wd, rm, multi);
    check_router_tokens(wd, rm);
    served a, b1, b2;
    shard_info(wd, &wd->a, &a);
    shard_info(wd, &wd->b1, &b1);
    shard_info(wd, &wd->b2, &b2);
    /* both holders of the shared experts got some of them; nobody got what it does not hold */
    uint64_t shared_a = 0, shared_b = 0;
    for (int l = 0; l < wd->L; l++) {
        shared_a += a.rows_of[l][1] + a.rows_of[l][2];
        shared_b += b1.rows_of[l][1] + b1.rows_of[l][2] + b2.rows_of[l][1] + b2.rows_of[l][2];
        assert_int_equal(a.rows_of[l][3], 0);
        assert_int_equal(b1.rows_of[l][0] + b2.rows_of[l][0], 0);
        for (int e = 0; e < wd->E; e++) /* rows served = tokens routed, pair by pair */
            assert_int_equal(a.rows_of[l][e] + b1.rows_of[l][e] + b2.rows_of[l][e], wd->use[l][e]);
    }
    assert_true(shared_a > 0);
    assert_true(shared_b > 0);
    /* the router's per-replica counts are the calls the shards answered (no retries here) */
    mx_router_replica_load ra, rb1, rb2;
    mx_router_replica_load_get(rm, 0, 0, &ra);
    mx_router_replica_load_get(rm, 1, 0, &rb1);
    mx_router_replica_load_get(rm, 1, 1, &rb2);
    assert_int_equal(ra.calls, a.calls);
    assert_int_equal(ra.rows, a.rows);
    assert_int_equal(rb1.calls + rb2.calls, b1.calls + b2.calls);
    assert_int_equal(rb1.rows + rb2.rows, b1.rows + b2.rows);
    assert_int_equal(ra.in_flight + rb1.in_flight + rb2.in_flight, 0);
    assert_int_equal(a.in_flight + b1.in_flight + b2.in_flight, 0);
    mx_router_stats st;
    mx_router_get_stats(rm, &st);
    assert_int_equal(st.failures, 0);
    assert_int_equal(st.retries, 0);
    mx_router_destroy(rm);

    mx_router *rs = make_router(wd, "0, 1", "2, 3"); /* one holder each */
    assert_int_equal(run_all(wd, rs, single), n);
    check_router_tokens(wd, rs);
    mx_router_destroy(rs);
    /* the holder never changes a bit of the result */
    for (size_t i = 0; i < n; i++)
        if (memcmp(&multi[i], &single[i], sizeof(float)))
            fail_msg("logit %zu: multi-holder %.9g vs single holder %.9g", i, multi[i], single[i]);
    free(multi);
    free(single);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_multi_holder_exact_and_counted),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
