/* test_gateway_kv.c - the gateway's long-context limits without a cluster: the config keys
 * (max_request_kb default sized for a 4M-token request, kv_max_overtakes, max_context_tokens),
 * the KV reservation arithmetic against numbers worked by hand from the page format of
 * core/kv_cache.h, and request validation (the over-limit message names the real count; an
 * unset max_new_tokens fits the KV cap, a set one is left for the scheduler to refuse). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "gateway/gw_config.h"
#include "gateway/kv_budget.h"
#include "gateway/validate.h"

static int load_gw(const char *extra, gw_config *c, mx_error *err)
{
    char path[128];
    snprintf(path, sizeof path, "/tmp/mx-test-gw-%d-XXXXXX", (int)getpid());
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    FILE *f = fdopen(fd, "w");
    fprintf(f, "gateway = {\n  listen = \"127.0.0.1:0\";\n  model = \"m\";\n  stages = [\"h:1\"];\n%s\n};\n", extra);
    fclose(f);
    int rc = gw_config_load(path, c, err);
    unlink(path);
    return rc;
}

static void test_config_defaults(void **state)
{
    (void)state;
    gw_config c;
    mx_error err = {0};
    assert_int_equal(load_gw("", &c, &err), 0);
    /* 4,194,304 ids of up to 3 varint bytes (vocab 200064 < 2^21) plus framing fit 32 MiB */
    assert_int_equal(c.max_request_bytes, 32 << 20);
    assert_true((int64_t)4194304 * 3 + 64 < c.max_request_bytes);
    assert_int_equal(c.max_context_tokens, 0);
    assert_int_equal(c.kv_max_overtakes, 64);
    assert_int_equal(load_gw("max_request_kb = 65536; kv_max_overtakes = 0; max_context_tokens = 40960;", &c, &err),
                     0);
    assert_int_equal(c.max_request_bytes, 64 << 20);
    assert_int_equal(c.kv_max_overtakes, 0);
    assert_int_equal(c.max_context_tokens, 40960);
    assert_int_equal(load_gw("max_request_kb = 2097152;", &c, &err), MX_EINVAL); /* 2 GiB overflows int */
    assert_non_null(strstr(err.msg, "gateway.max_request_kb"));
    assert_int_equal(load_gw("kv_max_overtakes = -1;", &c, &err), MX_EINVAL);
    assert_non_null(strstr(err.msg, "gateway.kv_max_overtakes"));
}

/* Two stages of the tiny fixture's geometry (2 kv heads x 32): a bf16 page of one layer is
 * 2 (K and V) * 2 heads * 64 tokens * 32 * 2 bytes = 16384 bytes. */
static gw_kv tiny_kv(uint64_t budget0, uint64_t budget1)
{
    gw_kv kv;
    memset(&kv, 0, sizeof kv);
    kv.n_stages = 2;
    kv.kv_heads = 2;
    kv.head_dim = 32;
    kv.st[0] = (gw_stage_kv){.softmax_layers = 1, .dtype = MX_KV_BF16, .budget_bytes = budget0,
                             .tokens_fit = (int64_t)(budget0 / 16384) * 64};
    kv.st[1] = (gw_stage_kv){.softmax_layers = 2, .dtype = MX_KV_F32, .budget_bytes = budget1,
                             .tokens_fit = (int64_t)(budget1 / (2 * 32768)) * 64};
    return kv;
}

static void test_kv_arithmetic(void **state)
{
    (void)state;
    gw_kv kv = tiny_kv(1 << 20, 2 << 20); /* stage 0: 64 pages = 4096 tokens; stage 1: 32 f32 pages x 2 layers */
    assert_int_equal(gw_kv_bytes(&kv, 0, 1), 16384);
    assert_int_equal(gw_kv_bytes(&kv, 0, 64), 16384);
    assert_int_equal(gw_kv_bytes(&kv, 0, 65), 32768);
    assert_int_equal(gw_kv_bytes(&kv, 1, 65), 2 * 2 * 32768); /* f32 page 32768, two layers, two pages */
    int at;
    assert_int_equal(gw_kv_tokens_fit(&kv, &at), 2048);
    assert_int_equal(at, 1);
    mx_error err = {0};
    assert_int_equal(gw_kv_check_ever(&kv, 2048, &err), 0);
    assert_int_equal(gw_kv_check_ever(&kv, 2049, &err), MX_ENOMEM);
    assert_non_null(strstr(err.msg, "prompt + max_new_tokens = 2049 tokens do not fit the KV cache"));
    assert_non_null(strstr(err.msg, "at most 2048 tokens fit"));
    assert_non_null(strstr(err.msg, "stage 1"));
    /* two 1024-token sequences fill stage 1 exactly; a third page does not fit */
    assert_true(gw_kv_fits_now(&kv, 1024));
    gw_kv_reserve(&kv, 1024, +1);
    assert_true(gw_kv_fits_now(&kv, 1024));
    assert_false(gw_kv_fits_now(&kv, 1025));
    gw_kv_reserve(&kv, 1024, +1);
    assert_int_equal(kv.st[1].reserved_bytes, 2 << 20);
    assert_int_equal(kv.st[0].reserved_bytes, 2 * 16 * 16384);
    assert_false(gw_kv_fits_now(&kv, 1));
    gw_kv_reserve(&kv, 1024, -1);
    assert_true(gw_kv_fits_now(&kv, 1024));
    /* no budget (or no softmax layer): no limit */
    gw_kv free_kv = tiny_kv(0, 0);
    free_kv.st[0].tokens_fit = free_kv.st[1].tokens_fit = INT64_MAX;
    assert_true(gw_kv_tokens_fit(&free_kv, &at) == INT64_MAX && at == -1);
    assert_int_equal(gw_kv_check_ever(&free_kv, 10000000, &err), 0);
    assert_true(gw_kv_fits_now(&free_kv, 10000000));
}

static Mx__V1__GenerateRequest *request(int n_ids, uint32_t max_new, Mx__V1__SamplingParams *sp)
{
    static uint32_t ids[64];
    static Mx__V1__GenerateRequest rq;
    mx__v1__generate_request__init(&rq);
    mx__v1__sampling_params__init(sp);
    for (int i = 0; i < n_ids; i++)
        ids[i] = (uint32_t)i + 1;
    rq.prompt_ids = ids;
    rq.n_prompt_ids = (size_t)n_ids;
    sp->max_new_tokens = max_new;
    rq.sampling = sp;
    return &rq;
}

static void test_validate_limits(void **state)
{
    (void)state;
    gw_limits lim = {.vocab_size = 512, .max_new_tokens_limit = 4096, .model_context_tokens = 1000,
                     .max_context_tokens = 100};
    gw_text tx;
    memset(&tx, 0, sizeof tx);
    Mx__V1__SamplingParams sp;
    gw_request *r = NULL;
    mx_error err = {0};
    lim.model_context_tokens = 12;
    assert_int_equal(gw_validate(&lim, &tx, request(40, 1, &sp), &r, &err), MX_EINVAL);
    assert_non_null(strstr(err.msg, "prompt_ids has 40 tokens; the context limit is 12"));
    lim.model_context_tokens = 1000;
    /* unset max_new_tokens: up to the KV-capped context */
    assert_int_equal(gw_validate(&lim, &tx, request(10, 0, &sp), &r, &err), 0);
    assert_int_equal(r->max_new, 90);
    gw_request_unref(r);
    /* set: only the model's context caps it; the KV check is the scheduler's */
    assert_int_equal(gw_validate(&lim, &tx, request(10, 500, &sp), &r, &err), 0);
    assert_int_equal(r->max_new, 500);
    gw_request_unref(r);
    assert_int_equal(gw_validate(&lim, &tx, request(10, 4000, &sp), &r, &err), 0);
    assert_int_equal(r->max_new, 990);
    gw_request_unref(r);
    /* a prompt past the KV cap but within the model: one token asked, refused later */
    lim.max_context_tokens = 5;
    assert_int_equal(gw_validate(&lim, &tx, request(10, 0, &sp), &r, &err), 0);
    assert_int_equal(r->max_new, 1);
    gw_request_unref(r);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_config_defaults),
        cmocka_unit_test(test_kv_arithmetic),
        cmocka_unit_test(test_validate_limits),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
