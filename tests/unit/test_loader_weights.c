/* test_loader_weights.c - load plans on the golden fixtures: the full plan binds every tensor
 * (bytes equal the index's total_size), partial plans map only their layers, expert masks only
 * their experts, and progress reports reach the planned total. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <jansson.h>

#include "core/weights.h"
#include "loader_testutil.h"

static uint64_t index_total(const char *name)
{
    char p[256];
    snprintf(p, sizeof p, GOLDEN "/%s/model.safetensors.index.json", name);
    json_t *idx = json_load_file(p, 0, NULL);
    assert_non_null(idx);
    uint64_t t = (uint64_t)json_integer_value(json_object_get(json_object_get(idx, "metadata"), "total_size"));
    json_decref(idx);
    return t;
}

static mx_weights *load_ok(const char *dir, const mx_load_plan *plan)
{
    mx_weights *w;
    mx_error err = {0};
    if (mx_weights_load(dir, plan, &w, &err))
        fail_msg("%s", err.msg);
    return w;
}

static void assert_shape(const mx_tensor *t, int64_t r, int64_t c)
{
    assert_non_null(t->data);
    assert_int_equal(t->ndim, c ? 2 : 1);
    assert_int_equal(t->shape[0], r);
    if (c)
        assert_int_equal(t->shape[1], c);
}

typedef struct progress_log {
    int calls;
    uint64_t last_done, total;
    int monotonic;
} progress_log;

static void on_progress(void *ctx, const char *what, uint64_t done, uint64_t total)
{
    progress_log *p = ctx;
    assert_non_null(what);
    if (done < p->last_done)
        p->monotonic = 0;
    p->calls++;
    p->last_done = done;
    p->total = total;
}

static void full_plan_tiny(void **state)
{
    (void)state;
    mx_config dummy = {.num_hidden_layers = 8};
    mx_load_plan plan = mx_load_plan_full(&dummy);
    progress_log log = {.monotonic = 1};
    plan.progress = on_progress;
    plan.progress_ctx = &log;
    mx_weights *w = load_ok(GOLDEN "/tiny", &plan);
    assert_int_equal(w->bytes_mapped, index_total("tiny"));
    assert_int_equal(log.calls, 155); /* tensors in tiny's weight_map */
    assert_true(log.monotonic);
    assert_int_equal(log.last_done, log.total);
    assert_int_equal(log.total, index_total("tiny"));
    assert_shape(&w->embed, 512, 128);
    assert_shape(&w->lm_head, 512, 128);
    assert_shape(&w->final_norm, 128, 0);
    for (int l = 0; l < 8; l++) {
        const mx_layer_weights *L = &w->layers[l];
        assert_true(L->has_attention);
        assert_shape(&L->input_norm, 128, 0);
        assert_shape(&L->post_norm, 128, 0);
        assert_shape(&L->router, 4, 128);
        assert_int_equal(L->router.dtype, MX_DTYPE_F32);
        if (l == 3 || l == 7) {
            assert_int_equal(L->kind, MX_ATTN_SOFTMAX);
            assert_shape(&L->q_proj, 128, 128);
            assert_shape(&L->k_proj, 64, 128);
            assert_shape(&L->v_proj, 64, 128);
            assert_shape(&L->o_proj, 128, 128);
            assert_null(L->qkv.data);
        } else {
            assert_int_equal(L->kind, MX_ATTN_LIGHTNING);
            assert_shape(&L->qkv, 384, 128);
            assert_shape(&L->output_gate, 128, 128);
            assert_shape(&L->attn_norm, 128, 0);
            assert_shape(&L->out_proj, 128, 128);
            assert_null(L->q_proj.data);
        }
        for (int e = 0; e < 4; e++) {
            assert_true(L->experts[e].loaded);
            assert_shape(&L->experts[e].w1, 256, 128);
            assert_shape(&L->experts[e].w3, 256, 128);
            assert_shape(&L->experts[e].w2, 128, 256);
            assert_int_equal(L->experts[e].w2.dtype, MX_DTYPE_BF16);
        }
    }
    mx_weights_free(w);
}

static void full_plan_small(void **state)
{
    (void)state;
    mx_config dummy = {.num_hidden_layers = 16};
    mx_load_plan plan = mx_load_plan_full(&dummy);
    mx_weights *w = load_ok(GOLDEN "/small", &plan);
    assert_int_equal(w->bytes_mapped, index_total("small"));
    assert_shape(&w->layers[0].qkv, 768, 128);     /* 3 x 8 heads x 32 */
    assert_shape(&w->layers[0].out_proj, 128, 256);
    assert_shape(&w->layers[15].o_proj, 128, 256);
    mx_weights_free(w);
}

/* Layers [2, 5) without experts: norms, attention and router only. Sizes from the README table. */
static void partial_plan(void **state)
{
    (void)state;
    mx_load_plan plan = {.layer_begin = 2, .layer_end = 5, .attention = true};
    mx_weights *w = load_ok(GOLDEN "/tiny", &plan);
    const uint64_t norms = 2 * 128 * 2, router = 4 * 128 * 4;
    const uint64_t lightning = (384 * 128 + 128 * 128 + 128 + 128 * 128) * 2;
    const uint64_t softmax = (128 * 128 + 2 * 64 * 128 + 128 * 128) * 2;
    assert_int_equal(w->bytes_mapped, 3 * (norms + router) + 2 * lightning + softmax);
    assert_null(w->embed.data);
    assert_null(w->lm_head.data);
    assert_null(w->final_norm.data);
    for (int l = 0; l < 8; l++) {
        assert_int_equal(w->layers[l].has_attention, l >= 2 && l < 5);
        assert_null(w->layers[l].experts);
    }
    assert_shape(&w->layers[3].q_proj, 128, 128);
    assert_null(w->layers[1].input_norm.data);
    assert_int_equal(w->layers[6].kind, MX_ATTN_LIGHTNING); /* kind is known for every layer */
    assert_int_equal(w->layers[7].kind, MX_ATTN_SOFTMAX);
    mx_weights_free(w);
}

static void expert_mask(void **state)
{
    (void)state;
    uint8_t mask[8 * 4] = {0};
    mask[2 * 4 + 1] = 1;
    mask[4 * 4 + 3] = 1;
    mask[6 * 4 + 0] = 1; /* outside the plan's layer range: ignored */
    mx_load_plan plan = {.layer_begin = 2, .layer_end = 5, .expert_mask = mask};
    mx_weights *w = load_ok(GOLDEN "/tiny", &plan);
    assert_int_equal(w->bytes_mapped, 2 * 3 * 256 * 128 * 2);
    assert_null(w->plan.expert_mask);
    assert_false(w->layers[2].has_attention);
    assert_non_null(w->layers[2].experts);
    assert_true(w->layers[2].experts[1].loaded);
    assert_false(w->layers[2].experts[0].loaded);
    assert_null(w->layers[2].experts[0].w1.data);
    assert_shape(&w->layers[4].experts[3].w2, 128, 256);
    assert_null(w->layers[3].experts);
    assert_null(w->layers[6].experts);
    mx_weights_free(w);
}

static void bad_plans(void **state)
{
    (void)state;
    mx_weights *w = (mx_weights *)0x1;
    mx_error err = {0};
    mx_load_plan plan = {.layer_begin = 3, .layer_end = 9, .attention = true};
    assert_int_equal(mx_weights_load(GOLDEN "/tiny", &plan, &w, &err), MX_ERANGE);
    assert_non_null(strstr(err.msg, "[3, 9)"));
    assert_null(w);
    plan.layer_begin = 5;
    plan.layer_end = 4;
    assert_int_equal(mx_weights_load(GOLDEN "/tiny", &plan, &w, &err), MX_ERANGE);
    assert_int_equal(mx_weights_load("/nonexistent-dir", &plan, &w, &err), MX_ENOTFOUND);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(full_plan_tiny),
        cmocka_unit_test(full_plan_small),
        cmocka_unit_test(partial_plan),
        cmocka_unit_test(expert_mask),
        cmocka_unit_test(bad_plans),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
