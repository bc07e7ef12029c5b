/* test_stage_seq_table.c - the attention stage's sequence table on the golden tiny model:
 * capacity (RESOURCE_EXHAUSTED naming the live sequences), find/add/remove with entries kept
 * intact when another is removed, the sampling history, and the state bytes of fresh
 * sequences against the spec's arithmetic (one fp32 heads x head_dim x head_dim lightning
 * state per lightning layer; an empty KV cache holds no pages). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "attention-svc/seq_table.h"
#include "core/backend.h"
#include "core/config.h"
#include "core/weights.h"

#include "golden_testutil.h"

/* the tiny model with the backend's default KV pages */
typedef tiny_model world;

static int setup(void **state)
{
    world *wd = calloc(1, sizeof *wd);
    mx_error err = {0};
    if (!wd || tiny_model_load(wd, NULL, &err))
        return -1;
    *state = wd;
    return 0;
}

static int teardown(void **state)
{
    world *wd = *state;
    tiny_model_free(wd);
    free(wd);
    return 0;
}

static void test_capacity_find_remove(void **state)
{
    world *wd = *state;
    seq_table t;
    mx_error err = {0};
    assert_int_equal(seq_table_init(&t, wd->m, 0, 4, 3, &err), 0);
    seq_entry *e;
    for (uint64_t id = 10; id < 13; id++) {
        assert_int_equal(seq_table_add(&t, id, &e, &err), 0);
        assert_int_equal(e->id, id);
        assert_non_null(e->seq);
    }
    assert_int_equal(t.count, 3);
    assert_int_equal(seq_table_add(&t, 13, &e, &err), MX_ENOMEM);
    assert_non_null(strstr(err.msg, "live sequences"));
    assert_null(seq_table_find(&t, 13));
    /* removing the first entry keeps the others findable with their own ids */
    assert_int_equal(seq_table_remove(&t, 10), 1);
    assert_int_equal(seq_table_remove(&t, 10), 0);
    assert_null(seq_table_find(&t, 10));
    for (uint64_t id = 11; id < 13; id++) {
        seq_entry *f = seq_table_find(&t, id);
        assert_non_null(f);
        assert_int_equal(f->id, id);
    }
    assert_int_equal(seq_table_add(&t, 13, &e, &err), 0);
    assert_int_equal(t.count, 3);
    assert_int_equal(seq_table_remove(&t, 99), 0);
    seq_table_destroy(&t);
}

static void test_history(void **state)
{
    world *wd = *state;
    seq_table t;
    mx_error err = {0};
    assert_int_equal(seq_table_init(&t, wd->m, 4, 8, 2, &err), 0);
    seq_entry *e;
    assert_int_equal(seq_table_add(&t, 1, &e, &err), 0);
    uint32_t ids[300];
    for (int i = 0; i < 300; i++)
        ids[i] = (uint32_t)(i * 3 % 512);
    /* in pieces that make the history grow several times */
    assert_int_equal(seq_entry_append_history(e, ids, 5, &err), 0);
    assert_int_equal(seq_entry_append_history(e, ids + 5, 1, &err), 0);
    assert_int_equal(seq_entry_append_history(e, ids + 6, 294, &err), 0);
    e = seq_table_find(&t, 1);
    assert_int_equal(e->n_history, 300);
    for (int i = 0; i < 300; i++)
        assert_int_equal(e->history[i], ids[i]);
    seq_table_destroy(&t);
}

static void test_state_bytes(void **state)
{
    world *wd = *state;
    const mx_config *c = &wd->cfg;
    /* lightning layers of [0, 8) from attn_type_list; a stage's sequence holds two states per
     * lightning layer (the current one and the buffer a step advances into, its undo) */
    int lightning = 0;
    for (int l = 0; l < c->num_hidden_layers; l++)
        lightning += c->attn_type[l] == MX_ATTN_LIGHTNING;
    uint64_t one = 2 * (uint64_t)lightning * (uint64_t)c->num_attention_heads * (uint64_t)c->head_dim *
                   (uint64_t)c->head_dim * sizeof(float);
    assert_int_equal(lightning, 6);
    seq_table t;
    mx_error err = {0};
    assert_int_equal(seq_table_init(&t, wd->m, 0, c->num_hidden_layers, 4, &err), 0);
    assert_int_equal(seq_table_state_bytes(&t), 0);
    seq_entry *e;
    assert_int_equal(seq_table_add(&t, 1, &e, &err), 0);
    assert_int_equal(seq_table_state_bytes(&t), one);
    assert_int_equal(seq_table_add(&t, 2, &e, &err), 0);
    assert_int_equal(seq_table_state_bytes(&t), 2 * one);
    assert_int_equal(seq_table_remove(&t, 1), 1);
    assert_int_equal(seq_table_state_bytes(&t), one);
    seq_table_destroy(&t);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_capacity_find_remove),
        cmocka_unit_test(test_history),
        cmocka_unit_test(test_state_bytes),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
