/* golden_testutil.h - the golden tiny fixture as the test_router_* and test_stage_* unit tests
 * use it: its model loaded in-process, the reference tensors of expected.safetensors, the fp32
 * tolerances of cases.json, one case run through an MoE executor and its logits checked
 * against the reference. Header-only (static inline, like loader_testutil.h): a test links
 * only what it calls. Include <cmocka.h> (with setjmp.h, stdarg.h, stddef.h) first. */
#ifndef GOLDEN_TESTUTIL_H
#define GOLDEN_TESTUTIL_H

#include <jansson.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "core/backend.h"
#include "core/config.h"
#include "core/model.h"
#include "core/safetensors.h"
#include "core/weights.h"

/* Relative to the repo root, where the test runner starts the binaries. */
#define TINY_FIXTURE "../shared/golden/tiny"

/* The tiny fixture's model on a one-thread CPU backend. */
typedef struct tiny_model {
    mx_config cfg;
    mx_weights *w;
    mx_backend *be;
    mx_model *m;
} tiny_model;

/* Loads the model; kv (NULL = the backend's default KV pages) configures the cache before the
 * model is made: the fixture's fp32 tier needs f32 KV (bf16 moves the logits ~1e-3). On
 * failure err says why and what was loaded is freed. */
static inline int tiny_model_load(tiny_model *t, const mx_kv_options *kv, mx_error *err)
{
    memset(t, 0, sizeof *t);
    if (mx_config_load(TINY_FIXTURE "/config.json", &t->cfg, err))
        return -1;
    mx_load_plan plan = mx_load_plan_full(&t->cfg);
    if (mx_weights_load(TINY_FIXTURE, &plan, &t->w, err) || mx_backend_cpu_create(1, &t->be, err) ||
        (kv && t->be->kv_configure(t->be, kv, err)) || mx_model_create(t->w, t->be, &t->m, err)) {
        if (t->be)
            t->be->destroy(t->be);
        mx_weights_free(t->w);
        memset(t, 0, sizeof *t);
        return -1;
    }
    return 0;
}

static inline void tiny_model_free(tiny_model *t)
{
    mx_model_free(t->m);
    if (t->be)
        t->be->destroy(t->be);
    mx_weights_free(t->w);
    memset(t, 0, sizeof *t);
}

/* The fp32 tolerances of cases.json (tolerances.fp32.max_abs / max_rel); -1 if absent. */
static inline int golden_fp32_tolerances(double *max_abs, double *max_rel)
{
    json_error_t jerr;
    json_t *root = json_load_file(TINY_FIXTURE "/cases.json", 0, &jerr);
    json_t *fp32 = json_object_get(json_object_get(root, "tolerances"), "fp32");
    int rc = fp32 ? 0 : -1;
    if (fp32) {
        *max_abs = json_number_value(json_object_get(fp32, "max_abs"));
        *max_rel = json_number_value(json_object_get(fp32, "max_rel"));
    }
    json_decref(root);
    return rc;
}

/* The data of tensor "<casename>.<suffix>" of expected.safetensors (mapped: valid while f is
 * open); fails the test if it is missing. */
static inline const void *golden_tensor(mx_st_file *f, const char *casename, const char *suffix)
{
    char name[128];
    snprintf(name, sizeof name, "%s.%s", casename, suffix);
    const mx_st_entry *e = mx_st_find(f, name);
    assert_non_null(e);
    mx_tensor t;
    mx_error err = {0};
    assert_int_equal(mx_st_map(f, e, &t, &err), 0);
    return t.data;
}

/* Copies the 1-D int32 tensor `name` (at most cap ids) into out; its length, or -1. No cmocka
 * calls: setup functions use it. */
static inline int golden_read_ids(mx_st_file *f, const char *name, int32_t *out, int cap)
{
    const mx_st_entry *e = mx_st_find(f, name);
    mx_tensor t;
    mx_error err = {0};
    if (!e || e->dtype != MX_DTYPE_I32 || e->ndim != 1 || e->shape[0] > cap || mx_st_map(f, e, &t, &err))
        return -1;
    memcpy(out, t.data, (size_t)e->shape[0] * sizeof *out);
    return (int)e->shape[0];
}

/* Runs a golden case (the prompt, then decode steps feeding the reference's greedy tokens)
 * through moe (NULL = the model's own experts); logits [steps+1, vocab]. */
static inline void golden_run_case(const tiny_model *t, const mx_moe_executor *moe, const int32_t *prompt, int plen,
                                   const int32_t *greedy, int steps, float *logits)
{
    const mx_config *c = mx_model_config(t->m);
    mx_error err = {0};
    mx_sequence *seq = NULL;
    assert_int_equal(mx_sequence_create(t->m, 0, c->num_hidden_layers, &seq, &err), 0);
    for (int step = 0; step <= steps; step++) {
        const int32_t *tok = step == 0 ? prompt : &greedy[step - 1];
        int n = step == 0 ? plen : 1;
        mx_span span = {0, n};
        mx_batch b = {.n_seqs = 1, .seqs = &seq, .spans = &span, .n_tokens = n};
        mx_tensor h = {0};
        int64_t shape[2] = {n, c->hidden_size};
        assert_int_equal(t->be->alloc(t->be, &h, t->be->act_dtype, 2, shape, &err), 0);
        int rc = mx_model_embed(t->m, tok, n, &h, &err);
        if (!rc)
            rc = mx_model_run_layers(t->m, 0, c->num_hidden_layers, &b, &h, moe, &err);
        if (rc)
            print_error("step %d: %s\n", step, err.msg);
        assert_int_equal(rc, 0);
        mx_batch_advance(&b);
        int32_t last = n - 1;
        assert_int_equal(mx_model_head(t->m, &h, &last, 1, logits + (size_t)step * c->vocab_size, &err), 0);
        t->be->free(t->be, &h);
    }
    mx_sequence_free(t->m, seq);
}

/* Checks got against the reference rows [rows, vocab] with the given tolerances: per row, the
 * largest absolute difference and that over the row's largest reference magnitude. */
static inline void golden_check_rows(const float *want, const float *got, int rows, int vocab, double max_abs,
                                     double max_rel)
{
    for (int r = 0; r < rows; r++) {
        double row_abs = 0, ref_max = 0;
        for (int v = 0; v < vocab; v++) {
            double d = fabs((double)got[(size_t)r * vocab + v] - want[(size_t)r * vocab + v]);
            if (!(d <= row_abs))
                row_abs = d;
            ref_max = fmax(ref_max, fabs((double)want[(size_t)r * vocab + v]));
        }
        if (!(row_abs <= max_abs) || !(row_abs / ref_max <= max_rel))
            fail_msg("row %d: max_abs %g, rel %g (tolerance %g / %g)", r, row_abs, row_abs / ref_max, max_abs,
                     max_rel);
    }
}

#endif
