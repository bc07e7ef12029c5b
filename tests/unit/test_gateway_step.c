/* test_gateway_step.c - the gateway's two scheduling policies on hand-built requests, without
 * threads or stages: admission under the KV budget (first come first served, smaller requests
 * passing one that waits for KV room up to kv_max_overtakes times, the running-set room) and
 * the sharing of one step's token budget (decodes first, prompt chunks in equal shares of what
 * is left, a floor so prefill never starves, the cap on prompt work next to decodes with its
 * weights by position, and the gateway.max_prefill_tokens_with_decodes key that sets it). Expected values are worked by
 * hand. */
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
#include "gateway/micro_batch.h"

/* A request of n_prompt prompt tokens and max_new; `decoding` makes it one whose prompt is
 * done and which has sampled a token (its next slice is a single decode token). */
static gw_request *req(int n_prompt, int max_new, bool decoding)
{
    uint32_t *prompt = calloc((size_t)n_prompt, sizeof *prompt), *stop = malloc(sizeof *stop);
    gw_sampling sp = {.top_p = 1, .repetition_penalty = 1};
    gw_request *r;
    mx_error err = {0};
    assert_int_equal(gw_request_new(prompt, n_prompt, stop, 0, max_new, &sp, &r, &err), 0);
    if (decoding) {
        r->prefilled = n_prompt;
        r->out_ids[0] = 7;
        r->n_out = 1;
    }
    return r;
}

/* One stage of the tiny fixture's geometry with 16 bf16 pages (256 KiB, 1024 tokens). */
static gw_kv one_stage(void)
{
    gw_kv kv;
    memset(&kv, 0, sizeof kv);
    kv.n_stages = 1;
    kv.kv_heads = 2;
    kv.head_dim = 32;
    kv.st[0] = (gw_stage_kv){.softmax_layers = 1, .dtype = MX_KV_BF16, .budget_bytes = 16 * 16384,
                             .tokens_fit = 1024};
    return kv;
}

static void test_admit_order(void **state)
{
    (void)state;
    gw_kv kv = one_stage();
    /* A and B: 600 + 50 = 650 tokens = 11 pages each; C: 15 tokens = 1 page */
    gw_request *a = req(600, 50, false), *b = req(600, 50, false), *c = req(5, 10, false), *d = req(5, 10, false);
    gw_request *q[4] = {a, b, c, d};
    bool take[4];
    assert_int_equal(gw_kv_admit(&kv, q, 3, 10, 2, take), 2);
    assert_true(take[0] && !take[1] && take[2]);
    assert_int_equal(b->kv_overtaken, 1);
    assert_int_equal(a->kv_tokens, 650);
    assert_int_equal(kv.st[0].reserved_bytes, 12 * 16384);
    /* B still waits; D passes it (second overtake = the limit of 2) */
    gw_request *q2[2] = {b, d};
    assert_int_equal(gw_kv_admit(&kv, q2, 2, 10, 2, take), 1);
    assert_true(!take[0] && take[1]);
    assert_int_equal(b->kv_overtaken, 2);
    /* now no one passes B, though a 1-page request would fit */
    gw_request *e = req(5, 10, false), *q3[2] = {b, e};
    assert_int_equal(gw_kv_admit(&kv, q3, 2, 10, 2, take), 0);
    assert_true(!take[0] && !take[1]);
    /* A and C end: B fits (11 + 1 pages of D), then E behind it */
    gw_kv_reserve(&kv, a->kv_tokens, -1);
    gw_kv_reserve(&kv, c->kv_tokens, -1);
    assert_int_equal(gw_kv_admit(&kv, q3, 2, 10, 2, take), 2);
    assert_int_equal(kv.st[0].reserved_bytes, 13 * 16384);
    /* room: only as many as the running set has seats for */
    gw_kv empty = one_stage();
    gw_request *f = req(5, 10, false), *g = req(5, 10, false), *q4[2] = {f, g};
    assert_int_equal(gw_kv_admit(&empty, q4, 2, 1, 2, take), 1);
    assert_true(take[0] && !take[1]);
    /* kv_max_overtakes = 0: strict first come, first served */
    gw_kv full = one_stage();
    gw_kv_reserve(&full, 650, +1);
    gw_request *h = req(600, 50, false), *i = req(5, 10, false), *q5[2] = {h, i};
    assert_int_equal(gw_kv_admit(&full, q5, 2, 10, 0, take), 0);
    gw_request *all[] = {a, b, c, d, e, f, g, h, i};
    for (size_t k = 0; k < sizeof all / sizeof *all; k++)
        gw_request_unref(all[k]);
}

/* The slice sizes of b's members, in batch order. */
static void slices(const gw_micro_batch *b, int *out)
{
    for (int i = 0; i < b->n; i++)
        out[i] = (int)b->inputs[i].num_tokens;
}

/* gw_micro_batch_fill without position weights. */
static void fill(gw_micro_batch *b, gw_request **pick, int n, int target, int max_step_tokens, int prefill_cap)
{
    gw_step_limits lim = {.max_step_tokens = max_step_tokens, .prefill_cap = prefill_cap};
    gw_micro_batch_fill(b, pick, n, target, &lim);
}

static void test_step_shares(void **state)
{
    (void)state;
    gw_micro_batch b;
    mx_error err = {0};
    assert_int_equal(gw_micro_batch_init(&b, 16, &err), 0);
    int got[16];

    /* prompts first in age, decodes later: decodes still go first; the 100-token prompt
     * finishes, the long one takes the rest (512 - 3 - 100) */
    gw_request *long1 = req(1000, 4, false), *short1 = req(100, 4, false);
    gw_request *d1 = req(3, 4, true), *d2 = req(3, 4, true), *d3 = req(3, 4, true);
    gw_request *pick[8] = {long1, short1, d1, d2, d3};
    fill(&b, pick, 5, 10, 512, 0);
    assert_int_equal(b.n, 5);
    slices(&b, got);
    assert_true(b.members[0] == d1 && b.members[1] == d2 && b.members[2] == d3);
    assert_true(got[0] == 1 && got[1] == 1 && got[2] == 1);
    assert_true(b.members[3] == short1 && got[3] == 100);
    assert_true(b.members[4] == long1 && got[4] == 409);
    gw_micro_batch_free(&b);

    /* three long prompts: equal shares 170 / 171 / 171 of 512 */
    assert_int_equal(gw_micro_batch_init(&b, 16, &err), 0);
    gw_request *p1 = req(1000, 4, false), *p2 = req(1000, 4, false), *p3 = req(1000, 4, false);
    gw_request *pick2[3] = {p1, p2, p3};
    fill(&b, pick2, 3, 10, 512, 0);
    slices(&b, got);
    assert_int_equal(b.n, 3);
    assert_true(got[0] == 170 && got[1] == 171 && got[2] == 171);
    gw_micro_batch_free(&b);

    /* target 2 with three decoders and a prompt: the prompt keeps a seat */
    assert_int_equal(gw_micro_batch_init(&b, 16, &err), 0);
    gw_request *pick3[4] = {d1, d2, d3, p1};
    p1->prefilled = 0;
    fill(&b, pick3, 4, 2, 512, 0);
    slices(&b, got);
    assert_int_equal(b.n, 2);
    assert_true(b.members[0] == d1 && got[0] == 1 && b.members[1] == p1 && got[1] == 511);
    gw_micro_batch_free(&b);

    /* decodes use up a budget of 4: the oldest prompt still gets max(1, 4 / 8) = 1 token */
    assert_int_equal(gw_micro_batch_init(&b, 16, &err), 0);
    gw_request *dd[6];
    gw_request *pick4[8];
    for (int i = 0; i < 6; i++)
        pick4[i] = dd[i] = req(2, 4, true);
    pick4[6] = p2;
    pick4[7] = p3;
    fill(&b, pick4, 8, 10, 4, 0);
    slices(&b, got);
    assert_int_equal(b.n, 7);
    assert_true(b.members[6] == p2 && got[6] == 1);
    gw_micro_batch_free(&b);
    gw_request *all[] = {long1, short1, d1, d2, d3, p1, p2, p3, dd[0], dd[1], dd[2], dd[3], dd[4], dd[5]};
    for (size_t k = 0; k < sizeof all / sizeof *all; k++)
        gw_request_unref(all[k]);
}

/* The cap on prompt tokens (max_prefill_tokens_with_decodes, passed while requests decode):
 * the prompts share at most the cap, the decodes are untouched, a step of prompts alone or of
 * decodes alone is what it is without the cap, and the starvation floor stays under the cap. */
static void test_step_prefill_cap(void **state)
{
    (void)state;
    gw_micro_batch b;
    mx_error err = {0};
    int got[32];

    /* three decodes and two long prompts, cap 64: decodes as before, the prompts share 64
     * (32 each) instead of the 509 left of 512 */
    assert_int_equal(gw_micro_batch_init(&b, 16, &err), 0);
    gw_request *d1 = req(3, 4, true), *d2 = req(3, 4, true), *d3 = req(3, 4, true);
    gw_request *p1 = req(1000, 4, false), *p2 = req(2000, 4, false);
    gw_request *pick[8] = {p1, d1, p2, d2, d3};
    fill(&b, pick, 5, 10, 512, 64);
    assert_int_equal(b.n, 5);
    slices(&b, got);
    assert_true(b.members[0] == d1 && b.members[1] == d2 && b.members[2] == d3);
    assert_true(got[0] == 1 && got[1] == 1 && got[2] == 1);
    assert_true(b.members[3] == p1 && got[3] == 32 && b.members[4] == p2 && got[4] == 32);
    int prompt_tokens = got[3] + got[4];
    assert_int_equal(prompt_tokens, 64);
    gw_micro_batch_free(&b);

    /* a short prompt under the cap finishes in the step; the long one takes the rest of it */
    assert_int_equal(gw_micro_batch_init(&b, 16, &err), 0);
    gw_request *s1 = req(10, 4, false);
    gw_request *pick2[4] = {p1, s1, d1};
    fill(&b, pick2, 3, 10, 512, 64);
    slices(&b, got);
    assert_int_equal(b.n, 3);
    assert_true(b.members[0] == d1 && got[0] == 1);
    assert_true(b.members[1] == s1 && got[1] == 10 && b.members[2] == p1 && got[2] == 54);
    gw_micro_batch_free(&b);

    /* decodes alone: the cap changes nothing (every decoder gets its token) */
    assert_int_equal(gw_micro_batch_init(&b, 16, &err), 0);
    gw_request *pick3[4] = {d1, d2, d3};
    fill(&b, pick3, 3, 10, 512, 2);
    slices(&b, got);
    assert_int_equal(b.n, 3);
    assert_true(got[0] == 1 && got[1] == 1 && got[2] == 1);
    gw_micro_batch_free(&b);

    /* a prompt alone with no cap (the scheduler passes 0 when nothing decodes): the whole
     * max_step_tokens, as it was */
    assert_int_equal(gw_micro_batch_init(&b, 16, &err), 0);
    gw_request *pick4[2] = {p2};
    fill(&b, pick4, 1, 10, 512, 0);
    slices(&b, got);
    assert_int_equal(b.n, 1);
    assert_int_equal(got[0], 512);
    gw_micro_batch_free(&b);

    /* a cap above what decodes leave: the budget still rules (512 - 3 = 509 < 600) */
    assert_int_equal(gw_micro_batch_init(&b, 16, &err), 0);
    gw_request *pick5[4] = {d1, d2, d3, p2};
    fill(&b, pick5, 4, 10, 512, 600);
    slices(&b, got);
    assert_int_equal(b.n, 4);
    assert_int_equal(got[3], 509);
    gw_micro_batch_free(&b);

    /* decodes use up a budget of 16: the floor (16 / 8 = 2) is cut to the cap of 1 */
    assert_int_equal(gw_micro_batch_init(&b, 32, &err), 0);
    gw_request *dd[16], *pick6[18];
    for (int i = 0; i < 16; i++)
        pick6[i] = dd[i] = req(2, 4, true);
    pick6[16] = p1;
    fill(&b, pick6, 17, 20, 16, 1);
    slices(&b, got);
    assert_int_equal(b.n, 17);
    assert_true(b.members[16] == p1 && got[16] == 1);
    gw_micro_batch_free(&b);
    /* the same without the cap: the floor of 2 (fill reordered pick6: set it again) */
    for (int i = 0; i < 16; i++)
        pick6[i] = dd[i];
    pick6[16] = p1;
    assert_int_equal(gw_micro_batch_init(&b, 32, &err), 0);
    fill(&b, pick6, 17, 20, 16, 0);
    slices(&b, got);
    assert_true(b.members[16] == p1 && got[16] == 2);
    gw_micro_batch_free(&b);

    gw_request *all[] = {d1, d2, d3, p1, p2, s1};
    for (size_t k = 0; k < sizeof all / sizeof *all; k++)
        gw_request_unref(all[k]);
    for (int i = 0; i < 16; i++)
        gw_request_unref(dd[i]);
}

/* Under the cap, a prompt token at position P counts 1 + P / attn_tokens: deeper chunks are
 * shorter, never empty; without the cap (nothing decodes) positions do not matter. */
static void test_step_prefill_cap_weighted(void **state)
{
    (void)state;
    gw_micro_batch b;
    mx_error err = {0};
    int got[8];
    gw_request *d1 = req(3, 4, true), *p = req(300000, 4, false);
    gw_step_limits lim = {.max_step_tokens = 512, .prefill_cap = 64, .attn_tokens = 1000};
    const int at[4] = {0, 1000, 3000, 200000}, want[4] = {64, 32, 16, 1}; /* 64 / (1 + P / 1000) */
    for (int i = 0; i < 4; i++) {
        assert_int_equal(gw_micro_batch_init(&b, 8, &err), 0);
        p->prefilled = at[i];
        gw_request *pick[2] = {d1, p};
        gw_micro_batch_fill(&b, pick, 2, 10, &lim);
        slices(&b, got);
        assert_int_equal(b.n, 2);
        assert_true(b.members[1] == p);
        assert_int_equal(got[1], want[i]);
        assert_int_equal(b.inputs[1].start_position, at[i]);
        gw_micro_batch_free(&b);
    }
    /* two prompts: the one at 0 takes its equal share (32 tokens), the one at 3000 what is
     * left, 32, at weight 4: 8 tokens */
    gw_request *q = req(100000, 4, false);
    p->prefilled = 3000;
    assert_int_equal(gw_micro_batch_init(&b, 8, &err), 0);
    gw_request *pick2[3] = {d1, p, q};
    gw_micro_batch_fill(&b, pick2, 3, 10, &lim);
    slices(&b, got);
    assert_int_equal(b.n, 3);
    assert_true(b.members[1] == q && got[1] == 32 && b.members[2] == p && got[2] == 8);
    gw_micro_batch_free(&b);
    /* no cap: the whole rest of max_step_tokens, wherever the prompt is */
    lim.prefill_cap = 0;
    p->prefilled = 200000;
    assert_int_equal(gw_micro_batch_init(&b, 8, &err), 0);
    gw_request *pick3[2] = {d1, p};
    gw_micro_batch_fill(&b, pick3, 2, 10, &lim);
    slices(&b, got);
    assert_int_equal(got[1], 511);
    gw_micro_batch_free(&b);
    gw_request_unref(d1);
    gw_request_unref(p);
    gw_request_unref(q);
}

/* gw_attn_context_tokens, worked by hand for the bench's "long" model: hidden 512, 8 heads of
 * 64 (1 KV head), 8 layers of which the last is softmax, 32 experts top-2 of width 512.
 * Lightning layer: 2*5*512*512 + 4*8*64*64 = 2,752,512 flops a token; softmax layer:
 * 2*(2*512*512 + 2*64*512) = 1,179,648; experts and router, every layer: 2*32*512 +
 * 2*3*2*512*512 = 3,178,496; in all 45,875,200. One more key: 4*512*1 = 2048 -> 22,400. */
static void test_attn_context_tokens(void **state)
{
    (void)state;
    mx_config c;
    memset(&c, 0, sizeof c);
    c.hidden_size = 512;
    c.num_attention_heads = 8;
    c.head_dim = 64;
    c.num_key_value_heads = 1;
    c.num_hidden_layers = 8;
    c.num_local_experts = 32;
    c.num_experts_per_tok = 2;
    c.intermediate_size = 512;
    for (int l = 0; l < 8; l++)
        c.attn_type[l] = l == 7 ? MX_ATTN_SOFTMAX : MX_ATTN_LIGHTNING;
    assert_int_equal(gw_attn_context_tokens(&c), 22400);
    c.attn_type[7] = MX_ATTN_LIGHTNING; /* no softmax layer: no weighting */
    assert_int_equal(gw_attn_context_tokens(&c), 0);
}

/* The config key: its default, a value, 0 (no cap) and the range. */
static int load_gw(const char *extra, gw_config *c, mx_error *err)
{
    char path[128];
    snprintf(path, sizeof path, "/tmp/mx-test-gwstep-%d-XXXXXX", (int)getpid());
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    FILE *f = fdopen(fd, "w");
    assert_non_null(f);
    fprintf(f, "gateway = {\n  listen = \"127.0.0.1:0\";\n  model = \"m\";\n  stages = [\"h:1\"];\n%s\n};\n", extra);
    fclose(f);
    int rc = gw_config_load(path, c, err);
    unlink(path);
    return rc;
}

static void test_prefill_cap_config(void **state)
{
    (void)state;
    gw_config c;
    mx_error err = {0};
    assert_int_equal(load_gw("", &c, &err), 0);
    assert_int_equal(c.max_prefill_tokens_with_decodes, GW_DEFAULT_PREFILL_WITH_DECODES);
    assert_true(c.max_prefill_tokens_with_decodes > 0 &&
                c.max_prefill_tokens_with_decodes < c.max_step_tokens); /* on by default */
    assert_int_equal(load_gw("max_prefill_tokens_with_decodes = 128;", &c, &err), 0);
    assert_int_equal(c.max_prefill_tokens_with_decodes, 128);
    assert_int_equal(load_gw("max_prefill_tokens_with_decodes = 0;", &c, &err), 0);
    assert_int_equal(c.max_prefill_tokens_with_decodes, 0);
    assert_int_equal(load_gw("max_prefill_tokens_with_decodes = -1;", &c, &err), MX_EINVAL);
    assert_non_null(strstr(err.msg, "gateway.max_prefill_tokens_with_decodes"));
    assert_int_equal(load_gw("max_prefill_tokens_with_decode = 64;", &c, &err), MX_EINVAL); /* a typo */
    assert_non_null(strstr(err.msg, "unknown key"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_admit_order),
        cmocka_unit_test(test_step_shares),
        cmocka_unit_test(test_step_prefill_cap),
        cmocka_unit_test(test_step_prefill_cap_weighted),
        cmocka_unit_test(test_attn_context_tokens),
        cmocka_unit_test(test_prefill_cap_config),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
