/* stage_testutil.h - what the test_stage_* unit tests repeat when they drive attention stages
 * of the golden tiny fixture in-process: a stage config of layers [begin, end) with the
 * settings those tests share, a stage served on a loopback port, and one sequence of a
 * RunBatch request. Header-only (static inline, like loader_testutil.h). Include <cmocka.h>
 * (with setjmp.h, stdarg.h, stddef.h) first. */
#ifndef STAGE_TESTUTIL_H
#define STAGE_TESTUTIL_H

#include <stdio.h>
#include <string.h>

#include "attention-svc/stage.h"
#include "attention-svc/stage_rpc.h"
#include "core/rpc/server.h"
#include "mx/internal/v1/attention_stage.pb-c.h"

#ifndef TINY_FIXTURE
#define TINY_FIXTURE "../shared/golden/tiny"
#endif

/* Stage `index` of `count` over layers [begin, end) of the tiny fixture on the CPU backend
 * (one thread), forwarding to next ("" = the last stage, which samples), listening on
 * 127.0.0.1:0, 64 MiB messages; the rest zero (no remote experts, no lease, no overlap). */
static inline void test_stage_config(stage_config *c, int index, int count, int begin, int end, const char *next,
                                     int max_sequences, int worker_threads, mx_kv_dtype kv)
{
    memset(c, 0, sizeof *c);
    snprintf(c->listen, sizeof c->listen, "127.0.0.1:0");
    snprintf(c->model, sizeof c->model, TINY_FIXTURE);
    snprintf(c->backend, sizeof c->backend, "cpu");
    snprintf(c->next, sizeof c->next, "%s", next);
    c->index = index;
    c->count = count;
    c->layer_begin = begin;
    c->layer_end = end;
    c->max_sequences = max_sequences;
    c->threads = 1;
    c->max_message_bytes = 64 << 20;
    c->worker_threads = worker_threads;
    c->kv_dtype = kv;
}

/* Serves stage s on a loopback port with `workers` RPC workers; *srv is the server (shut it
 * down before stage_destroy), next the "127.0.0.1:port" another stage forwards to. No cmocka
 * calls: setup functions use it. */
static inline int test_stage_serve(stage *s, int workers, mx_rpc_server **srv, char *next, size_t next_cap,
                                   mx_error *err)
{
    mx_rpc_server_options o = {.address = "127.0.0.1:0", .worker_threads = workers};
    *srv = NULL;
    if (mx_rpc_server_create(&o, srv, err) || stage_add_methods(s, *srv, err) || mx_rpc_server_start(*srv, err))
        return -1;
    snprintf(next, next_cap, "127.0.0.1:%d", mx_rpc_server_port(*srv));
    return 0;
}

/* q as sequence `id` of a RunBatch: n ids (borrowed) at position start, sampled with sp. */
static inline void test_seq_input(Mx__Internal__V1__SequenceInput *q, uint64_t id, uint32_t start, uint32_t *ids,
                                  size_t n, Mx__Internal__V1__StageSampling *sp)
{
    mx__internal__v1__sequence_input__init(q);
    q->sequence_id = id;
    q->start_position = start;
    q->token_ids = ids;
    q->n_token_ids = n;
    q->num_tokens = (uint32_t)n;
    q->sampling = sp;
    q->sample = 1;
}

#endif
