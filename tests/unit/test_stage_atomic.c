/* test_stage_atomic.c - atomic RunBatch on a one-stage pipeline of the golden tiny model:
 * an expert call failing in the middle of a step (the stage's test-only fault switch), then
 * the same RunBatch sent again, must give exactly the tokens, logprobs and top logprobs of a
 * fault-free stage, with the KV pages of the failed step returned; greedy tokens are also
 * checked against the fixture's stored ones (an independent reference). A fault in the second
 * stage of a chain is undone on both stages. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "attention-svc/stage.h"
#include "attention-svc/stage_rpc.h"
#include "core/rpc/server.h"
#include "core/safetensors.h"
#include "mx/internal/v1/attention_stage.pb-c.h"

#include "golden_testutil.h"
#include "stage_testutil.h"

#define CASE "p5_s12"
#define N_SEQ 3
#define STEPS 8
#define LONG_PROMPT 61 /* decode steps cross the 64-token page boundary */
#define FAULT_LAYER 5  /* after lightning layers 0-2 and 4 and softmax layer 3 ran */
#define TOP 5

typedef struct out_tok {
    uint32_t token;
    float logprob;
    uint32_t top_ids[TOP];
    float top_lp[TOP];
} out_tok;

typedef struct world {
    int32_t prompt[8], greedy[16];
    int n_prompt, n_greedy;
} world;

static int setup(void **state)
{
    world *wd = calloc(1, sizeof *wd);
    mx_error err = {0};
    mx_st_file *exp;
    if (!wd || mx_st_open(TINY_FIXTURE "/expected.safetensors", &exp, &err))
        return -1;
    wd->n_prompt = golden_read_ids(exp, CASE ".prompt_ids", wd->prompt, 8);
    wd->n_greedy = golden_read_ids(exp, CASE ".greedy_ids", wd->greedy, 16);
    mx_st_close(exp);
    if (wd->n_prompt != 5 || wd->n_greedy < STEPS)
        return -1;
    *state = wd;
    return 0;
}

static int teardown(void **state)
{
    free(*state);
    return 0;
}

static stage *make_chain_stage(mx_kv_dtype kv, int index, const char *next);

static stage *make_stage(mx_kv_dtype kv)
{
    return make_chain_stage(kv, -1, "");
}

/* index -1: one stage of all 8 layers; 0 or 1: that half of a 2-stage chain */
static stage *make_chain_stage(mx_kv_dtype kv, int index, const char *next)
{
    stage_config c;
    test_stage_config(&c, index < 0 ? 0 : index, index < 0 ? 1 : 2, index == 1 ? 4 : 0, index == 0 ? 4 : 8, next, 4,
                      2, kv);
    stage *s = NULL;
    mx_error err = {0};
    if (stage_create(&c, &s, &err))
        fail_msg("stage_create: %s", err.msg);
    return s;
}

static uint64_t kv_used(stage *s)
{
    mx_rpc_payload out;
    mx_error err = {0};
    assert_int_equal(stage_info(s, (const uint8_t *)"", 0, &out, &err), 0);
    Mx__Internal__V1__StageInfoResponse *r = mx__internal__v1__stage_info_response__unpack(NULL, out.len, out.data);
    if (out.release)
        out.release(out.release_ctx);
    assert_non_null(r);
    assert_true(r->atomic_steps); /* what a gateway checks before it retries a step */
    uint64_t u = r->kv_used_bytes;
    mx__internal__v1__stage_info_response__free_unpacked(r, NULL);
    return u;
}

/* The prompts: the fixture's (greedy), a 61-token one and a 3-token one (both sampled). */
static int prompt_of(const world *wd, int i, uint32_t *ids)
{
    if (i == 0) {
        for (int j = 0; j < wd->n_prompt; j++)
            ids[j] = (uint32_t)wd->prompt[j];
        return wd->n_prompt;
    }
    int n = i == 1 ? LONG_PROMPT : 3;
    for (int j = 0; j < n; j++)
        ids[j] = (uint32_t)((j * 37 + 11 * i) % 512);
    return n;
}

/* Step `step` of all three sequences as one RunBatch: step 0 feeds the prompts, step j > 0
 * the token sampled at step j - 1. Fills got[i]; returns the stage's code. */
static int run_step(stage *s, const world *wd, int step, out_tok got[][STEPS], mx_error *err)
{
    uint32_t ids[N_SEQ][LONG_PROMPT];
    Mx__Internal__V1__StageSampling sp[N_SEQ];
    Mx__Internal__V1__SequenceInput q[N_SEQ], *qp[N_SEQ];
    for (int i = 0; i < N_SEQ; i++) {
        int n = prompt_of(wd, i, ids[i]);
        mx__internal__v1__stage_sampling__init(&sp[i]);
        sp[i].top_p = 1;
        sp[i].repetition_penalty = 1;
        if (i > 0) {
            sp[i].temperature = 1.3f;
            sp[i].top_k = 40;
            sp[i].repetition_penalty = 1.1f;
            sp[i].seed = 1000 + (uint64_t)i;
        }
        sp[i].top_logprobs = TOP;
        sp[i].step = (uint32_t)step;
        uint32_t start = step == 0 ? 0 : (uint32_t)(n + step - 1);
        if (step > 0) {
            ids[i][0] = got[i][step - 1].token;
            n = 1;
        }
        test_seq_input(&q[i], 0x9000000000000000ull + (uint64_t)i /* 64-bit ids */, start, ids[i], (size_t)n, &sp[i]);
        qp[i] = &q[i];
    }
    Mx__Internal__V1__RunBatchRequest rq = MX__INTERNAL__V1__RUN_BATCH_REQUEST__INIT;
    rq.batch_id = (uint64_t)step;
    rq.sequences = qp;
    rq.n_sequences = N_SEQ;
    size_t len = protobuf_c_message_get_packed_size(&rq.base);
    uint8_t *buf = malloc(len);
    assert_non_null(buf);
    protobuf_c_message_pack(&rq.base, buf);
    mx_rpc_payload out;
    int rc = stage_run_batch(s, buf, len, 20000, &out, err);
    free(buf);
    if (rc)
        return rc;
    Mx__Internal__V1__RunBatchResponse *r = mx__internal__v1__run_batch_response__unpack(NULL, out.len, out.data);
    if (out.release)
        out.release(out.release_ctx);
    assert_non_null(r);
    assert_int_equal(r->n_sampled, N_SEQ);
    for (int i = 0; i < N_SEQ; i++) {
        const Mx__Internal__V1__SampledToken *t = r->sampled[i];
        assert_int_equal(t->sequence_id, q[i].sequence_id);
        assert_int_equal(t->n_top_logprobs, TOP);
        out_tok *o = &got[i][step];
        memset(o, 0, sizeof *o);
        o->token = t->token_id;
        o->logprob = t->logprob;
        memcpy(o->top_ids, t->top_token_ids, sizeof o->top_ids);
        memcpy(o->top_lp, t->top_logprobs, sizeof o->top_lp);
    }
    mx__internal__v1__run_batch_response__free_unpacked(r, NULL);
    return 0;
}

/* A fault-free stage and a stage whose expert call at FAULT_LAYER fails once in the prefill
 * and once in each of the steps at positions 63 -> 64 and 64 -> 65 of the long sequence
 * (a page ends, a page starts); each failed RunBatch is sent again unchanged. */
static void check_dtype(world *wd, mx_kv_dtype kv)
{
    static out_tok want[N_SEQ][STEPS], got[N_SEQ][STEPS];
    memset(want, 0, sizeof want);
    memset(got, 0, sizeof got);
    mx_error err = {0};
    stage *ref = make_stage(kv), *s = make_stage(kv);
    for (int j = 0; j < STEPS; j++)
        if (run_step(ref, wd, j, want, &err))
            fail_msg("reference step %d: %s", j, err.msg);
    int faults = 0;
    for (int j = 0; j < STEPS; j++) {
        bool fault = j == 0 || j == 3 || j == 4;
        uint64_t before = kv_used(s);
        if (fault) {
            stage_test_fail_expert_once(s, FAULT_LAYER);
            err = (mx_error){0};
            int rc = run_step(s, wd, j, got, &err);
            assert_int_equal(rc, MX_EUNAVAILABLE); /* retryable, not INVALID_ARGUMENT */
            assert_non_null(strstr(err.msg, "test_fail_expert_call_once_at_layer"));
            assert_int_equal(kv_used(s), before); /* the failed step's pages went back */
            faults++;
        }
        err = (mx_error){0};
        if (run_step(s, wd, j, got, &err))
            fail_msg("step %d after %s: %s", j, fault ? "a fault" : "no fault", err.msg);
    }
    assert_int_equal(faults, 3);
    for (int i = 0; i < N_SEQ; i++)
        for (int j = 0; j < STEPS; j++) {
            if (memcmp(&want[i][j], &got[i][j], sizeof want[i][j]) != 0)
                fail_msg("sequence %d step %d: token %u logprob %.9g after faults, %u %.9g without", i, j,
                         got[i][j].token, (double)got[i][j].logprob, want[i][j].token, (double)want[i][j].logprob);
            if (i == 0 && kv == MX_KV_F32) /* greedy on f32 KV: the fixture's tokens */
                assert_int_equal(got[i][j].token, (uint32_t)wd->greedy[j]);
        }
    stage_destroy(ref);
    stage_destroy(s);
}

static void test_fault_then_retry_f32_kv(void **state)
{
    check_dtype(*state, MX_KV_F32);
}

static void test_fault_then_retry_bf16_kv(void **state)
{
    check_dtype(*state, MX_KV_BF16);
}

/* A sampling setting the stage refuses is refused before any state changes: the same
 * sequence then starts at position 0 with valid settings and gives the fixture's token. */
static void test_bad_sampling_changes_nothing(void **state)
{
    world *wd = *state;
    stage *s = make_stage(MX_KV_F32);
    uint32_t ids[8];
    for (int j = 0; j < wd->n_prompt; j++)
        ids[j] = (uint32_t)wd->prompt[j];
    for (int attempt = 0; attempt < 2; attempt++) {
        Mx__Internal__V1__StageSampling sp = MX__INTERNAL__V1__STAGE_SAMPLING__INIT;
        sp.temperature = attempt == 0 ? -1.0f : 0.0f;
        Mx__Internal__V1__SequenceInput q = MX__INTERNAL__V1__SEQUENCE_INPUT__INIT, *qp = &q;
        q.sequence_id = 77;
        q.token_ids = ids;
        q.n_token_ids = q.num_tokens = (uint32_t)wd->n_prompt;
        q.sampling = &sp;
        q.sample = 1;
        Mx__Internal__V1__RunBatchRequest rq = MX__INTERNAL__V1__RUN_BATCH_REQUEST__INIT;
        rq.sequences = &qp;
        rq.n_sequences = 1;
        uint8_t buf[256];
        size_t len = protobuf_c_message_pack(&rq.base, buf);
        mx_rpc_payload out;
        mx_error err = {0};
        int rc = stage_run_batch(s, buf, len, 20000, &out, &err);
        if (attempt == 0) {
            assert_int_equal(rc, MX_EINVAL);
            assert_non_null(strstr(err.msg, "sequences[0].sampling"));
            assert_int_equal(kv_used(s), 0);
            continue;
        }
        assert_int_equal(rc, 0);
        Mx__Internal__V1__RunBatchResponse *r = mx__internal__v1__run_batch_response__unpack(NULL, out.len, out.data);
        if (out.release)
            out.release(out.release_ctx);
        assert_non_null(r);
        assert_int_equal(r->n_sampled, 1);
        assert_int_equal(r->sampled[0]->token_id, (uint32_t)wd->greedy[0]);
        mx__internal__v1__run_batch_response__free_unpacked(r, NULL);
    }
    stage_destroy(s);
}

/* Through a chain (stage 0 called here, forwarding to stage 1 on the real RPC layer): an
 * expert fault inside stage 1 fails the forwarded call; stage 1 undid its part, and stage 0
 * undoes its own, so the same RunBatch sent again gives the fixture's greedy tokens. */
static void test_fault_down_the_chain(void **state)
{
    world *wd = *state;
    mx_error err = {0};
    stage *s1 = make_chain_stage(MX_KV_F32, 1, "");
    mx_rpc_server *srv = NULL;
    char next[64];
    assert_int_equal(test_stage_serve(s1, 2, &srv, next, sizeof next, &err), 0);
    stage *s0 = make_chain_stage(MX_KV_F32, 0, next);
    uint32_t ids[8], tok = 0;
    int n = wd->n_prompt;
    for (int j = 0; j < n; j++)
        ids[j] = (uint32_t)wd->prompt[j];
    for (int step = 0; step < STEPS; step++) {
        Mx__Internal__V1__StageSampling sp = MX__INTERNAL__V1__STAGE_SAMPLING__INIT;
        sp.step = (uint32_t)step;
        Mx__Internal__V1__SequenceInput q = MX__INTERNAL__V1__SEQUENCE_INPUT__INIT, *qp = &q;
        q.sequence_id = 0xfedcba9876543210ull;
        q.start_position = step == 0 ? 0 : (uint32_t)(wd->n_prompt + step - 1);
        if (step > 0) {
            ids[0] = tok;
            n = 1;
        }
        q.token_ids = ids;
        q.n_token_ids = q.num_tokens = (uint32_t)n;
        q.sampling = &sp;
        q.sample = 1;
        Mx__Internal__V1__RunBatchRequest rq = MX__INTERNAL__V1__RUN_BATCH_REQUEST__INIT;
        rq.sequences = &qp;
        rq.n_sequences = 1;
        rq.forward = 1;
        uint8_t buf[256];
        size_t len = protobuf_c_message_pack(&rq.base, buf);
        mx_rpc_payload out;
        if (step == 0 || step == 3) {
            stage_test_fail_expert_once(s1, FAULT_LAYER);
            err = (mx_error){0};
            assert_int_equal(stage_run_batch(s0, buf, len, 20000, &out, &err), MX_EUNAVAILABLE);
        }
        err = (mx_error){0};
        if (stage_run_batch(s0, buf, len, 20000, &out, &err))
            fail_msg("step %d: %s", step, err.msg);
        Mx__Internal__V1__RunBatchResponse *r = mx__internal__v1__run_batch_response__unpack(NULL, out.len, out.data);
        if (out.release)
            out.release(out.release_ctx);
        assert_non_null(r);
        assert_int_equal(r->n_sampled, 1);
        tok = r->sampled[0]->token_id;
        mx__internal__v1__run_batch_response__free_unpacked(r, NULL);
        assert_int_equal(tok, (uint32_t)wd->greedy[step]);
    }
    stage_destroy(s0);
    mx_rpc_server_shutdown(srv, 1000);
    mx_rpc_server_destroy(srv);
    stage_destroy(s1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fault_then_retry_f32_kv),
        cmocka_unit_test(test_fault_then_retry_bf16_kv),
        cmocka_unit_test(test_bad_sampling_changes_nothing),
        cmocka_unit_test(test_fault_down_the_chain),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
