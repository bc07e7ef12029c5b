/* test_gateway_scheduler.c - the gateway's scheduler and micro-batches in-process, against a
 * fake AttentionStage served by the real RPC layer (core/rpc/server.h) on a loopback port. The
 * fake "samples" by a fixed rule, next = (7 * last input token + 3) mod 1000, so every
 * expected token is worked out here from the prompt, never taken from the gateway. Checks:
 * prefill chunking under max_step_tokens (positions, tokens, sample flag), decode steps, the
 * LENGTH and stop-token ends, two requests sharing a step, the cap on prompt tokens while
 * another request decodes (max_prefill_tokens_with_decodes), a stage error ending the requests,
 * and Release of every finished sequence (retried until the stage acknowledges it, or until
 * its lease would have freed the sequence). Waits are on the request's condition variable,
 * bounded at 20 s each; nothing depends on how fast the machine is. */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>

#include "core/protocol.h"
#include "core/rpc/pb.h"
#include "core/rpc/server.h"
#include "gateway/scheduler.h"
#include "mx/internal/v1/attention_stage.pb-c.h"

#define MAX_LOG 256

typedef struct seen_input {
    uint64_t batch, seq;
    uint32_t start, n_tokens;
    uint32_t first_token, last_token;
    int sample;
} seen_input;

/* The fake stage: everything it was sent, under mu. */
typedef struct fake_stage {
    pthread_mutex_t mu;
    seen_input log[MAX_LOG];
    int n_log;
    uint64_t batches[MAX_LOG];     /* sequences per RunBatch, in arrival order */
    int n_batches;
    uint64_t released[64];
    int n_released;
    int fail_runs;                 /* answer RunBatch with UNAVAILABLE while set */
    int fail_releases;             /* answer this many Release calls with UNAVAILABLE */
    int release_calls;
    uint64_t lease_ms;             /* reported by Info */
    mx_rpc_server *srv;
} fake_stage;

static uint32_t rule(uint32_t last) { return (7 * last + 3) % 1000; }

static void on_info(mx_rpc_call *call, const uint8_t *req, size_t len, void *user)
{
    (void)req;
    (void)len;
    fake_stage *f = user;
    Mx__Internal__V1__StageInfoResponse r = MX__INTERNAL__V1__STAGE_INFO_RESPONSE__INIT;
    pthread_mutex_lock(&f->mu);
    r.sequence_lease_ms = f->lease_ms;
    pthread_mutex_unlock(&f->mu);
    r.stage_index = 0;
    r.num_stages = 1;
    r.is_first = r.is_last = 1;
    r.kv_dtype = "bf16";
    r.kv_budget_bytes = 1ull << 30;
    r.kv_tokens_fit = 1ull << 20;
    r.softmax_layers = 1;
    mx_error err = {0};
    if (mx_rpc_pb_write(call, &r.base, &err))
        mx_rpc_call_set_error(call, &err);
}

static void on_run(mx_rpc_call *call, const uint8_t *req, size_t len, void *user)
{
    fake_stage *f = user;
    mx_error err = {0};
    ProtobufCMessage *m;
    if (mx_rpc_pb_unpack(&mx__internal__v1__run_batch_request__descriptor, req, len, &m, &err)) {
        mx_rpc_call_set_error(call, &err);
        return;
    }
    const Mx__Internal__V1__RunBatchRequest *rq = (const Mx__Internal__V1__RunBatchRequest *)m;
    pthread_mutex_lock(&f->mu);
    int failing = f->fail_runs;
    if (f->n_batches < MAX_LOG)
        f->batches[f->n_batches++] = rq->n_sequences;
    Mx__Internal__V1__SampledToken toks[64], *tp[64];
    size_t n_out = 0;
    for (size_t i = 0; i < rq->n_sequences && i < 64; i++) {
        const Mx__Internal__V1__SequenceInput *q = rq->sequences[i];
        if (f->n_log < MAX_LOG && q->n_token_ids > 0)
            f->log[f->n_log++] = (seen_input){rq->batch_id, q->sequence_id, q->start_position,
                                              (uint32_t)q->n_token_ids, q->token_ids[0],
                                              q->token_ids[q->n_token_ids - 1], q->sample};
        if (q->sample && q->n_token_ids > 0) {
            mx__internal__v1__sampled_token__init(&toks[n_out]);
            toks[n_out].sequence_id = q->sequence_id;
            toks[n_out].token_id = rule(q->token_ids[q->n_token_ids - 1]);
            toks[n_out].logprob = -0.5f;
            tp[n_out] = &toks[n_out];
            n_out++;
        }
    }
    pthread_mutex_unlock(&f->mu);
    if (failing) {
        mx_rpc_call_set_status(call, GRPC_STATUS_UNAVAILABLE, "fake stage: down");
    } else {
        Mx__Internal__V1__RunBatchResponse r = MX__INTERNAL__V1__RUN_BATCH_RESPONSE__INIT;
        r.batch_id = rq->batch_id;
        r.sampled = tp;
        r.n_sampled = n_out;
        r.stages_run = 1;
        if (mx_rpc_pb_write(call, &r.base, &err))
            mx_rpc_call_set_error(call, &err);
    }
    protobuf_c_message_free_unpacked(m, NULL);
}

static void on_release(mx_rpc_call *call, const uint8_t *req, size_t len, void *user)
{
    fake_stage *f = user;
    mx_error err = {0};
    ProtobufCMessage *m;
    if (mx_rpc_pb_unpack(&mx__internal__v1__release_request__descriptor, req, len, &m, &err)) {
        mx_rpc_call_set_error(call, &err);
        return;
    }
    const Mx__Internal__V1__ReleaseRequest *rq = (const Mx__Internal__V1__ReleaseRequest *)m;
    pthread_mutex_lock(&f->mu);
    f->release_calls++;
    if (f->fail_releases > 0) {
        f->fail_releases--;
        pthread_mutex_unlock(&f->mu);
        protobuf_c_message_free_unpacked(m, NULL);
        mx_rpc_call_set_status(call, GRPC_STATUS_UNAVAILABLE, "fake stage: release refused");
        return;
    }
    for (size_t i = 0; i < rq->n_sequence_ids && f->n_released < 64; i++)
        f->released[f->n_released++] = rq->sequence_ids[i];
    pthread_mutex_unlock(&f->mu);
    Mx__Internal__V1__ReleaseResponse r = MX__INTERNAL__V1__RELEASE_RESPONSE__INIT;
    r.released_sequences = (uint32_t)rq->n_sequence_ids;
    protobuf_c_message_free_unpacked(m, NULL);
    if (mx_rpc_pb_write(call, &r.base, &err))
        mx_rpc_call_set_error(call, &err);
}

typedef struct fixture {
    fake_stage fake;
    char log[1024];            /* the scheduler's log lines, under fake.mu */
    gw_config cfg;
    mx_config model;
    gw_scheduler *sched;
} fixture;

static void log_line(void *ctx, const char *line)
{
    fixture *f = ctx;
    pthread_mutex_lock(&f->fake.mu);
    size_t used = strlen(f->log);
    snprintf(f->log + used, sizeof f->log - used, "%s\n", line);
    pthread_mutex_unlock(&f->fake.mu);
}

static int setup(void **state)
{
    fixture *f = calloc(1, sizeof *f);
    pthread_mutex_init(&f->fake.mu, NULL);
    mx_error err = {0};
    mx_rpc_server_options o = {.address = "127.0.0.1:0", .worker_threads = 4};
    assert_int_equal(mx_rpc_server_create(&o, &f->fake.srv, &err), 0);
    assert_int_equal(mx_rpc_server_add_unary(f->fake.srv, MX_STAGE_INFO_METHOD, on_info, &f->fake, &err), 0);
    assert_int_equal(mx_rpc_server_add_unary(f->fake.srv, MX_STAGE_RUN_BATCH_METHOD, on_run, &f->fake, &err), 0);
    assert_int_equal(mx_rpc_server_add_unary(f->fake.srv, MX_STAGE_RELEASE_METHOD, on_release, &f->fake, &err), 0);
    assert_int_equal(mx_rpc_server_start(f->fake.srv, &err), 0);
    gw_config *c = &f->cfg;
    c->n_stages = 1;
    snprintf(c->stages[0], sizeof c->stages[0], "127.0.0.1:%d", mx_rpc_server_port(f->fake.srv));
    c->max_new_tokens_limit = 100;
    c->max_batch_sequences = 8;
    c->max_step_tokens = 4;
    /* the gateway's default (64) would never bind in steps of 4 tokens: 2 makes the cap seen */
    c->max_prefill_tokens_with_decodes = 2;
    c->pipeline_depth = 1;
    c->max_queued = 16;
    c->kv_max_overtakes = 4;
    c->stage_timeout_ms = 20000;
    f->model.num_key_value_heads = 2;
    f->model.head_dim = 32;
    f->model.vocab_size = 1000;
    assert_int_equal(gw_scheduler_create(&f->cfg, &f->model, (gw_log){log_line, f}, &f->sched, &err), 0);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture *f = *state;
    gw_scheduler_destroy(f->sched);
    mx_rpc_server_shutdown(f->fake.srv, 1000);
    mx_rpc_server_destroy(f->fake.srv);
    pthread_mutex_destroy(&f->fake.mu);
    free(f);
    return 0;
}

static gw_request *request(const uint32_t *prompt, int n, int max_new, uint32_t stop)
{
    uint32_t *p = malloc((size_t)n * sizeof *p), *s = malloc(sizeof *s);
    memcpy(p, prompt, (size_t)n * sizeof *p);
    s[0] = stop;
    gw_sampling sp = {.top_p = 1, .repetition_penalty = 1};
    gw_request *r;
    mx_error err = {0};
    assert_int_equal(gw_request_new(p, n, s, stop ? 1 : 0, max_new, &sp, &r, &err), 0);
    return r;
}

/* Waits (bounded) until r is done. */
static void wait_done(gw_request *r)
{
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += 20;
    pthread_mutex_lock(&r->mu);
    while (!r->done)
        if (pthread_cond_timedwait(&r->cv, &r->mu, &until))
            break;
    bool done = r->done;
    pthread_mutex_unlock(&r->mu);
    assert_true(done);
}

/* Waits (bounded) until the fake saw a Release of id. */
static bool released(fake_stage *f, uint64_t id)
{
    for (int tries = 0; tries < 400; tries++) {
        pthread_mutex_lock(&f->mu);
        bool hit = false;
        for (int i = 0; i < f->n_released; i++)
            hit |= f->released[i] == id;
        pthread_mutex_unlock(&f->mu);
        if (hit)
            return true;
        struct timespec ts = {0, 50 * 1000000L};
        nanosleep(&ts, NULL);
    }
    return false;
}

static void test_chunks_and_decode(void **state)
{
    fixture *f = *state;
    mx_error err = {0};
    const uint32_t prompt[10] = {11, 12, 13, 14, 15, 16, 17, 18, 19, 20};
    gw_request *r = request(prompt, 10, 3, 0);
    assert_int_equal(gw_scheduler_submit(f->sched, r, &err), 0);
    assert_int_equal(gw_scheduler_refresh_kv(f->sched, 10000, &err), 0);
    wait_done(r);
    /* tokens by the rule from the last prompt token */
    uint32_t t1 = rule(20), t2 = rule(t1), t3 = rule(t2);
    assert_int_equal(r->n_out, 3);
    assert_int_equal(r->out_ids[0], t1);
    assert_int_equal(r->out_ids[1], t2);
    assert_int_equal(r->out_ids[2], t3);
    assert_int_equal(r->finish, MX__V1__FINISH_REASON__FINISH_REASON_LENGTH);
    /* max_step_tokens = 4: chunks [0,4) [4,8) [8,10), only the last samples; then decodes of
     * t1 and t2 at positions 10 and 11 (t3 is the last: never sent back) */
    pthread_mutex_lock(&f->fake.mu);
    const seen_input want[5] = {{0, r->seq_id, 0, 4, 11, 14, 0}, {0, r->seq_id, 4, 4, 15, 18, 0},
                                {0, r->seq_id, 8, 2, 19, 20, 1}, {0, r->seq_id, 10, 1, t1, t1, 1},
                                {0, r->seq_id, 11, 1, t2, t2, 1}};
    int n_log = f->fake.n_log;
    seen_input got[5];
    memcpy(got, f->fake.log, sizeof got);
    pthread_mutex_unlock(&f->fake.mu);
    assert_int_equal(n_log, 5);
    for (int i = 0; i < 5; i++) {
        assert_int_equal(got[i].seq, want[i].seq);
        assert_int_equal(got[i].start, want[i].start);
        assert_int_equal(got[i].n_tokens, want[i].n_tokens);
        assert_int_equal(got[i].first_token, want[i].first_token);
        assert_int_equal(got[i].last_token, want[i].last_token);
        assert_int_equal(!!got[i].sample, want[i].sample);
    }
    assert_true(released(&f->fake, r->seq_id));
    gw_request_unref(r);
}

static void test_stop_token_and_shared_step(void **state)
{
    fixture *f = *state;
    mx_error err = {0};
    /* a: 1 prompt token, stops at its second token; b: 2 prompt tokens, 2 tokens */
    const uint32_t pa[1] = {5}, pb[2] = {40, 41};
    uint32_t a1 = rule(5), a2 = rule(a1);
    gw_request *a = request(pa, 1, 10, a2), *b = request(pb, 2, 2, 0);
    /* both wait in the queue until the KV numbers are known, so they are admitted together
     * and their prompts (1 + 2 tokens <= max_step_tokens) share the first step */
    assert_int_equal(gw_scheduler_submit(f->sched, a, &err), 0);
    assert_int_equal(gw_scheduler_submit(f->sched, b, &err), 0);
    assert_int_equal(gw_scheduler_refresh_kv(f->sched, 10000, &err), 0);
    wait_done(a);
    wait_done(b);
    assert_int_equal(a->n_out, 2);
    assert_int_equal(a->out_ids[0], a1);
    assert_int_equal(a->out_ids[1], a2);
    assert_int_equal(a->finish, MX__V1__FINISH_REASON__FINISH_REASON_STOP);
    assert_int_equal(b->n_out, 2);
    assert_int_equal(b->out_ids[0], rule(41));
    assert_int_equal(b->out_ids[1], rule(rule(41)));
    assert_int_equal(b->finish, MX__V1__FINISH_REASON__FINISH_REASON_LENGTH);
    pthread_mutex_lock(&f->fake.mu);
    uint64_t first_batch = f->fake.batches[0];
    pthread_mutex_unlock(&f->fake.mu);
    assert_int_equal(first_batch, 2);
    assert_true(released(&f->fake, a->seq_id));
    assert_true(released(&f->fake, b->seq_id));
    gw_request_unref(a);
    gw_request_unref(b);
}

/* While a request decodes, a long prompt beside it is prefilled at most
 * max_prefill_tokens_with_decodes (2) tokens a step; before it decodes and once it is gone,
 * the prompt takes the whole max_step_tokens (4). */
static void test_prefill_capped_while_decoding(void **state)
{
    fixture *f = *state;
    mx_error err = {0};
    const uint32_t pd[1] = {9};
    uint32_t pl[20];
    for (int i = 0; i < 20; i++)
        pl[i] = 100 + (uint32_t)i;
    gw_request *d = request(pd, 1, 4, 0), *l = request(pl, 20, 1, 0);
    /* admitted together (the KV numbers come after both), so they share the first step */
    assert_int_equal(gw_scheduler_submit(f->sched, d, &err), 0);
    assert_int_equal(gw_scheduler_submit(f->sched, l, &err), 0);
    assert_int_equal(gw_scheduler_refresh_kv(f->sched, 10000, &err), 0);
    wait_done(d);
    wait_done(l);
    assert_int_equal(d->n_out, 4);
    assert_int_equal(l->n_out, 1);
    assert_int_equal(l->out_ids[0], rule(119));
    /* step 1: nothing decodes yet: d's 1-token prompt and 3 of l's (4 in all); steps 2-4: d
     * decodes (tokens 2-4), l gets 2 a step; then d is done: chunks of 4, the last 3 sampled */
    const uint32_t want_start[7] = {0, 3, 5, 7, 9, 13, 17}, want_n[7] = {3, 2, 2, 2, 4, 4, 3};
    pthread_mutex_lock(&f->fake.mu);
    int n_log = f->fake.n_log, k = 0, n_d = 0;
    seen_input got[MAX_LOG];
    memcpy(got, f->fake.log, sizeof got);
    pthread_mutex_unlock(&f->fake.mu);
    for (int i = 0; i < n_log; i++) {
        if (got[i].seq == d->seq_id) {
            assert_int_equal(got[i].n_tokens, 1);
            assert_int_equal(got[i].start, n_d++);
            continue;
        }
        assert_int_equal(got[i].seq, l->seq_id);
        assert_true(k < 7);
        assert_int_equal(got[i].start, want_start[k]);
        assert_int_equal(got[i].n_tokens, want_n[k]);
        assert_int_equal(got[i].first_token, pl[want_start[k]]);
        assert_int_equal(!!got[i].sample, k == 6);
        k++;
    }
    assert_int_equal(k, 7);
    assert_int_equal(n_d, 4); /* its prompt and the decodes of tokens 1-3 */
    /* the capped chunks rode with d's decodes: steps 2-4 carried both */
    pthread_mutex_lock(&f->fake.mu);
    uint64_t b0 = f->fake.batches[0], b1 = f->fake.batches[1], b3 = f->fake.batches[3], b4 = f->fake.batches[4];
    pthread_mutex_unlock(&f->fake.mu);
    assert_int_equal(b0, 2);
    assert_int_equal(b1, 2);
    assert_int_equal(b3, 2);
    assert_int_equal(b4, 1);
    gw_request_unref(d);
    gw_request_unref(l);
}

static void test_stage_error_ends_requests(void **state)
{
    fixture *f = *state;
    mx_error err = {0};
    pthread_mutex_lock(&f->fake.mu);
    f->fake.fail_runs = 1;
    pthread_mutex_unlock(&f->fake.mu);
    const uint32_t p[3] = {1, 2, 3};
    gw_request *r = request(p, 3, 4, 0);
    assert_int_equal(gw_scheduler_submit(f->sched, r, &err), 0);
    assert_int_equal(gw_scheduler_refresh_kv(f->sched, 10000, &err), 0);
    wait_done(r);
    assert_int_equal(r->finish, MX__V1__FINISH_REASON__FINISH_REASON_ERROR);
    assert_int_equal(r->n_out, 0);
    assert_int_equal(r->error_code, MX_EUNAVAILABLE);
    assert_non_null(strstr(r->error, "stage 0"));
    assert_non_null(strstr(r->error, "fake stage: down"));
    /* the scheduler thread has no caller: the failure goes to the log sink, not to stderr */
    pthread_mutex_lock(&f->fake.mu);
    bool logged = strstr(f->log, "gateway: micro-batch") && strstr(f->log, "failed: stage 0");
    pthread_mutex_unlock(&f->fake.mu);
    assert_true(logged);
    gw_request_unref(r);
}

static int release_calls(fake_stage *f)
{
    pthread_mutex_lock(&f->mu);
    int n = f->release_calls;
    pthread_mutex_unlock(&f->mu);
    return n;
}

/* A Release the stage does not answer is sent again until it is acknowledged. */
static void test_release_retried_until_acknowledged(void **state)
{
    fixture *f = *state;
    mx_error err = {0};
    pthread_mutex_lock(&f->fake.mu);
    f->fake.fail_releases = 3;
    pthread_mutex_unlock(&f->fake.mu);
    assert_int_equal(gw_scheduler_refresh_kv(f->sched, 10000, &err), 0);
    const uint32_t p[3] = {1, 2, 3};
    gw_request *r = request(p, 3, 2, 0);
    assert_int_equal(gw_scheduler_submit(f->sched, r, &err), 0);
    wait_done(r);
    assert_true(released(&f->fake, r->seq_id));
    assert_int_equal(release_calls(&f->fake), 4);
    /* acknowledged: no more Releases */
    struct timespec ts = {1, 200 * 1000000L};
    nanosleep(&ts, NULL);
    assert_int_equal(release_calls(&f->fake), 4);
    pthread_mutex_lock(&f->fake.mu);
    bool logged = strstr(f->log, "(retrying)") && strstr(f->log, "acknowledged 1 pending");
    pthread_mutex_unlock(&f->fake.mu);
    assert_true(logged);
    gw_request_unref(r);
}

/* A stage that never answers is asked until its lease would have freed the sequence anyway. */
static void test_release_retries_end_with_the_lease(void **state)
{
    fixture *f = *state;
    mx_error err = {0};
    pthread_mutex_lock(&f->fake.mu);
    f->fake.fail_releases = 1000;
    f->fake.lease_ms = 1500;
    pthread_mutex_unlock(&f->fake.mu);
    assert_int_equal(gw_scheduler_refresh_kv(f->sched, 10000, &err), 0);
    const uint32_t p[3] = {1, 2, 3};
    gw_request *r = request(p, 3, 2, 0);
    assert_int_equal(gw_scheduler_submit(f->sched, r, &err), 0);
    wait_done(r);
    struct timespec ts = {3, 0};
    nanosleep(&ts, NULL);
    int n = release_calls(&f->fake);
    assert_true(n >= 3); /* the first try and retries every 500 ms for 1.5 s */
    nanosleep(&ts, NULL);
    assert_int_equal(release_calls(&f->fake), n);
    gw_request_unref(r);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_chunks_and_decode, setup, teardown),
        cmocka_unit_test_setup_teardown(test_stop_token_and_shared_step, setup, teardown),
        cmocka_unit_test_setup_teardown(test_prefill_capped_while_decoding, setup, teardown),
        cmocka_unit_test_setup_teardown(test_stage_error_ends_requests, setup, teardown),
        cmocka_unit_test_setup_teardown(test_release_retried_until_acknowledged, setup, teardown),
        cmocka_unit_test_setup_teardown(test_release_retries_end_with_the_lease, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
