/* test_stage_run.c - two attention stages of the golden tiny model in-process: stage 1
 * (layers [4, 8), samples) served by the real RPC layer on a loopback port, stage 0 (layers
 * [0, 4), next = stage 1) called directly. The greedy tokens of the fixture's p5_s12 case
 * (prompt, then decode steps feeding the stored tokens) must come back through the chain;
 * Info and Release report the live sequences; a full table answers RESOURCE_EXHAUSTED; a
 * token id outside the vocabulary is refused naming it. f32 KV: the fixture's fp32 tier. */
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
#include "core/rpc/pb.h"
#include "core/rpc/server.h"
#include "core/safetensors.h"
#include "mx/internal/v1/attention_stage.pb-c.h"

#include "golden_testutil.h"
#include "stage_testutil.h"

#define CASE "p5_s12"

typedef struct world {
    stage *s0, *s1;
    mx_rpc_server *srv1;
    int32_t prompt[8], greedy[16];
    int n_prompt, n_greedy;
} world;

static int setup(void **state)
{
    world *wd = calloc(1, sizeof *wd);
    mx_error err = {0};
    mx_st_file *exp;
    if (mx_st_open(TINY_FIXTURE "/expected.safetensors", &exp, &err))
        return -1;
    wd->n_prompt = golden_read_ids(exp, CASE ".prompt_ids", wd->prompt, 8);
    wd->n_greedy = golden_read_ids(exp, CASE ".greedy_ids", wd->greedy, 16);
    mx_st_close(exp);
    if (wd->n_prompt != 5 || wd->n_greedy != 13)
        return -1;
    stage_config c1, c0;
    test_stage_config(&c1, 1, 2, 4, 8, "", 4, 4, MX_KV_F32);
    if (stage_create(&c1, &wd->s1, &err))
        return -1;
    char next[64];
    if (test_stage_serve(wd->s1, 4, &wd->srv1, next, sizeof next, &err))
        return -1;
    test_stage_config(&c0, 0, 2, 0, 4, next, 1, 4, MX_KV_F32);
    if (stage_create(&c0, &wd->s0, &err))
        return -1;
    *state = wd;
    return 0;
}

static int teardown(void **state)
{
    world *wd = *state;
    stage_destroy(wd->s0);
    mx_rpc_server_shutdown(wd->srv1, 1000);
    mx_rpc_server_destroy(wd->srv1);
    stage_destroy(wd->s1);
    free(wd);
    return 0;
}

/* One RunBatch of one sequence on stage 0 (forwarded through stage 1); returns the mx code and
 * the sampled token in *tok. */
static int run(world *wd, uint64_t id, uint32_t start, const uint32_t *ids, size_t n, uint32_t *tok, mx_error *err)
{
    Mx__Internal__V1__StageSampling sp = MX__INTERNAL__V1__STAGE_SAMPLING__INIT;
    sp.top_p = 1;
    sp.repetition_penalty = 1;
    Mx__Internal__V1__SequenceInput q = MX__INTERNAL__V1__SEQUENCE_INPUT__INIT, *qp = &q;
    q.sequence_id = id;
    q.start_position = start;
    q.token_ids = (uint32_t *)ids;
    q.n_token_ids = n;
    q.num_tokens = (uint32_t)n;
    q.sampling = &sp;
    q.sample = 1;
    Mx__Internal__V1__RunBatchRequest rq = MX__INTERNAL__V1__RUN_BATCH_REQUEST__INIT;
    rq.batch_id = id;
    rq.sequences = &qp;
    rq.n_sequences = 1;
    rq.forward = 1;
    size_t len = protobuf_c_message_get_packed_size(&rq.base);
    uint8_t *buf = malloc(len);
    protobuf_c_message_pack(&rq.base, buf);
    mx_rpc_payload out;
    int rc = stage_run_batch(wd->s0, buf, len, 20000, &out, err);
    free(buf);
    if (rc)
        return rc;
    Mx__Internal__V1__RunBatchResponse *r =
        mx__internal__v1__run_batch_response__unpack(NULL, out.len, out.data);
    if (out.release)
        out.release(out.release_ctx);
    assert_non_null(r);
    assert_int_equal(r->stages_run, 2);
    assert_int_equal(r->n_sampled, 1);
    assert_int_equal(r->sampled[0]->sequence_id, id);
    *tok = r->sampled[0]->token_id;
    mx__internal__v1__run_batch_response__free_unpacked(r, NULL);
    return 0;
}

static uint32_t live(stage *s)
{
    uint8_t empty[1] = {0};
    mx_rpc_payload out;
    mx_error err = {0};
    assert_int_equal(stage_info(s, empty, 0, &out, &err), 0);
    Mx__Internal__V1__StageInfoResponse *r = mx__internal__v1__stage_info_response__unpack(NULL, out.len, out.data);
    if (out.release)
        out.release(out.release_ctx);
    assert_non_null(r);
    uint32_t n = r->live_sequences;
    mx__internal__v1__stage_info_response__free_unpacked(r, NULL);
    return n;
}

static uint32_t release(stage *s, uint64_t id)
{
    Mx__Internal__V1__ReleaseRequest rq = MX__INTERNAL__V1__RELEASE_REQUEST__INIT;
    rq.sequence_ids = &id;
    rq.n_sequence_ids = 1;
    uint8_t buf[32];
    size_t len = protobuf_c_message_pack(&rq.base, buf);
    mx_rpc_payload out;
    mx_error err = {0};
    assert_int_equal(stage_release(s, buf, len, &out, &err), 0);
    Mx__Internal__V1__ReleaseResponse *r = mx__internal__v1__release_response__unpack(NULL, out.len, out.data);
    if (out.release)
        out.release(out.release_ctx);
    assert_non_null(r);
    uint32_t n = r->released_sequences;
    mx__internal__v1__release_response__free_unpacked(r, NULL);
    return n;
}

static void test_greedy_through_the_chain(void **state)
{
    world *wd = *state;
    mx_error err = {0};
    uint32_t prompt[8], tok;
    for (int i = 0; i < wd->n_prompt; i++)
        prompt[i] = (uint32_t)wd->prompt[i];
    assert_int_equal(run(wd, 7, 0, prompt, (size_t)wd->n_prompt, &tok, &err), 0);
    assert_int_equal(tok, (uint32_t)wd->greedy[0]);
    /* decode steps feed the stored tokens (README of the fixtures) */
    for (int j = 1; j <= 4; j++) {
        uint32_t fed = (uint32_t)wd->greedy[j - 1];
        assert_int_equal(run(wd, 7, (uint32_t)(wd->n_prompt + j - 1), &fed, 1, &tok, &err), 0);
        assert_int_equal(tok, (uint32_t)wd->greedy[j]);
    }
    assert_int_equal(live(wd->s0), 1);
    assert_int_equal(live(wd->s1), 1);
    /* stage 0 holds one sequence at most: another is refused while 7 lives */
    uint32_t one = 1;
    assert_int_equal(run(wd, 8, 0, &one, 1, &tok, &err), MX_ENOMEM);
    assert_int_equal(release(wd->s0, 7), 1);
    assert_int_equal(release(wd->s0, 7), 0);
    assert_int_equal(release(wd->s1, 7), 1);
    assert_int_equal(live(wd->s0), 0);
    assert_int_equal(live(wd->s1), 0);
    /* room again: the same prompt gives the same first token from a fresh state */
    assert_int_equal(run(wd, 9, 0, prompt, (size_t)wd->n_prompt, &tok, &err), 0);
    assert_int_equal(tok, (uint32_t)wd->greedy[0]);
    assert_int_equal(release(wd->s0, 9), 1);
    assert_int_equal(release(wd->s1, 9), 1);
}

static void test_bad_token(void **state)
{
    world *wd = *state;
    mx_error err = {0};
    uint32_t bad = 512, tok; /* vocab_size of tiny */
    assert_int_equal(run(wd, 11, 0, &bad, 1, &tok, &err), MX_EINVAL);
    assert_non_null(strstr(err.msg, "512"));
    assert_int_equal(live(wd->s0), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_greedy_through_the_chain),
        cmocka_unit_test(test_bad_token),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
