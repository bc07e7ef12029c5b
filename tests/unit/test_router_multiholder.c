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

#define FIXTURE "../shared/golden/tiny"
#define MAX_L 8
#define MAX_E 4

typedef struct server {
    mx_expert_shard *shard;
    mx_rpc_server *srv;
    int port;
} server;

typedef struct world {
    mx_weights *w;
    mx_backend *be;
    mx_model *m;
    server a, b1, b2;
    mx_st_file *expected;
    double max_abs, max_rel;
    int L, E, V;
    uint64_t use[MAX_L][MAX_E];  /* the fixture's expert_use_per_layer (all cases) */
    json_t *cases;
} world;

static void start_server(server *s, const char *experts_cfg, int index)
{
    mx_error err = {0};
    config_t c;
    config_init(&c);
    assert_int_equal(config_read_string(&c, experts_cfg), CONFIG_TRUE);
    mx_expert_set set;
    assert_int_equal(mx_expert_set_from_setting(config_root_setting(&c), &set, &err), 0);
    mx_expert_shard_options o = {.model_dir = FIXTURE, .backend = "cpu", .threads = 1, .shard_index = index,
                                 .owns = &set};
    int rc = mx_expert_shard_load(&o, &s->shard, &err);
    mx_expert_set_free(&set);
    config_destroy(&c);
    assert_int_equal(rc, 0);
    mx_rpc_server_options so = {.address = "127.0.0.1:0", .worker_threads = 2};
    assert_int_equal(mx_rpc_server_create(&so, &s->srv, &err), 0);
    assert_int_equal(mx_expert_shard_serve(s->shard, s->srv, &err), 0);
    assert_int_equal(mx_rpc_server_start(s->srv, &err), 0);
    s->port = mx_rpc_server_port(s->srv);
}

static void stop_server(server *s)
{
    if (s->srv) {
        mx_rpc_server_shutdown(s->srv, 0);
        mx_rpc_server_destroy(s->srv);
    }
    mx_expert_shard_free(s->shard);
}

static int setup(void **state)
{
    world *wd = calloc(1, sizeof *wd);
    mx_error err = {0};
    mx_config cfg;
    if (mx_config_load(FIXTURE "/config.json", &cfg, &err))
        return -1;
    mx_load_plan plan = mx_load_plan_full(&cfg);
    const mx_kv_options f32_kv = {.dtype = MX_KV_F32};
    if (mx_weights_load(FIXTURE, &plan, &wd->w, &err) || mx_backend_cpu_create(1, &wd->be, &err) ||
        wd->be->kv_configure(wd->be, &f32_kv, &err) || mx_model_create(wd->w, wd->be, &wd->m, &err) ||
        mx_st_open(FIXTURE "/expected.safetensors", &wd->expected, &err))
        return -1;
    wd->L = cfg.num_hidden_layers;
    wd->E = cfg.num_local_experts;
    wd->V = cfg.vocab_size;
    if (wd->L > MAX_L || wd->E > MAX_E)
        return -1;
    json_error_t jerr;
    json_t *root = json_load_file(FIXTURE "/cases.json", 0, &jerr);
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
    start_server(&wd->a, "experts = [0, 1, 2];", 0);
    start_server(&wd->b1, "experts = [1, 2, 3];", 1);
    start_server(&wd->b2, "experts = [1, 2, 3];", 1);
    *state = wd;
    return 0;
}

static int teardown(void **state)
{
    world *wd = *state;
    stop_server(&wd->a);
    stop_server(&wd->b1);
    stop_server(&wd->b2);
    json_decref(wd->cases);
    mx_st_close(wd->expected);
    mx_model_free(wd->m);
    wd->be->destroy(wd->be);
    mx_weights_free(wd->w);
    free(wd);
    return 0;
}

/* A router over the servers: shard 0 on A, shard 1 on B's two replicas, owning the given lists. */
static mx_router *make_router(world *wd, const char *experts0, const char *experts1)
{
    char text[1024];
    snprintf(text, sizeof text,
             "experts = { shards = (\n"
             "  { experts = [%s]; replicas = [\"127.0.0.1:%d\"]; },\n"
             "  { experts = [%s]; replicas = [\"127.0.0.1:%d\", \"127.0.0.1:%d\"]; } ); };\n",
             experts0, wd->a.port, experts1, wd->b1.port, wd->b2.port);
    config_t c;
    config_init(&c);
    assert_int_equal(config_read_string(&c, text), CONFIG_TRUE);
    mx_router_config rc;
    mx_error err = {0};
    assert_int_equal(mx_router_config_from_setting(config_lookup(&c, "experts"), &rc, &err), 0);
    mx_router *r = NULL;
    int ret = mx_router_create(&rc, wd->L, (int)mx_model_config(wd->m)->hidden_size, wd->E, wd->be, &r, &err);
    if (ret)
        print_error("%s\n", err.msg);
    assert_int_equal(ret, 0);
    assert_int_equal(mx_router_check_coverage(r, 0, wd->L, &err), 0);
    mx_router_config_free(&rc);
    config_destroy(&c);
    return r;
}

static const void *expected_tensor(world *wd, const char *casename, const char *suffix)
{
    char name[128];
    snprintf(name, sizeof name, "%s.%s", casename, suffix);
    const mx_st_entry *e = mx_st_find(wd->expected, name);
    assert_non_null(e);
    mx_tensor t;
    mx_error err = {0};
    assert_int_equal(mx_st_map(wd->expected, e, &t, &err), 0);
    return t.data;
}

/* A golden case through moe: the prompt, then each reference greedy token; logits [steps+1, V]. */
static void run_case(world *wd, const mx_moe_executor *moe, const int32_t *prompt, int plen, const int32_t *greedy,
                     int steps, float *logits)
{
    const mx_config *c = mx_model_config(wd->m);
    mx_error err = {0};
    mx_sequence *seq = NULL;
    assert_int_equal(mx_sequence_create(wd->m, 0, c->num_hidden_layers, &seq, &err), 0);
    for (int step = 0; step <= steps; step++) {
        const int32_t *tok = step == 0 ? prompt : &greedy[step - 1];
        int n = step == 0 ? plen : 1;
        mx_span span = {0, n};
        mx_batch b = {.n_seqs = 1, .seqs = &seq, .spans = &span, .n_tokens = n};
        mx_tensor h = {0};
        int64_t shape[2] = {n, c->hidden_size};
        assert_int_equal(wd->be->alloc(wd->be, &h, wd->be->act_dtype, 2, shape, &err), 0);
        int rc = mx_model_embed(wd->m, tok, n, &h, &err);
        if (!rc)
            rc = mx_model_run_layers(wd->m, 0, c->num_hidden_layers, &b, &h, moe, &err);
        if (rc)
            print_error("step %d: %s\n", step, err.msg);
        assert_int_equal(rc, 0);
        mx_batch_advance(&b);
        int32_t last = n - 1;
        assert_int_equal(mx_model_head(wd->m, &h, &last, 1, logits + (size_t)step * c->vocab_size, &err), 0);
        wd->be->free(wd->be, &h);
    }
    mx_sequence_free(wd->m, seq);
}

static void check_reference(world *wd, const float *want, const float *got, int rows)
{
    for (int r = 0; r < rows; r++) {
        double row_abs = 0, ref_max = 0;
        for (int v = 0; v < wd->V; v++) {
            double d = fabs((double)got[(size_t)r * wd->V + v] - want[(size_t)r * wd->V + v]);
            if (!(d <= row_abs))
                row_abs = d;
            ref_max = fmax(ref_max, fabs((double)want[(size_t)r * wd->V + v]));
        }
        if (!(row_abs <= wd->max_abs) || !(row_abs / ref_max <= wd->max_rel))
            fail_msg("row %d: max_abs %g, rel %g", r, row_abs, row_abs / ref_max);
    }
}

/* What a shard served, from its Info over gRPC. */
typedef struct served {
    uint64_t calls, rows, in_flight;
    uint64_t rows_of[MAX_L][MAX_E];
} served;

static void shard_info(world *wd, const server *s, served *out)
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
        run_case(wd, &ex, expected_tensor(wd, name, "prompt_ids"), plen, expected_tensor(wd, name, "greedy_ids"),
                 steps, logits);
        check_reference(wd, expected_tensor(wd, name, "logits"), logits, steps + 1);
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
