/* test_stage_zero_alloc.c - a decode step allocates no heap memory once warm: counts malloc-family
 * calls during steady-state decode steps of the golden tiny model, (1) in the single-process
 * engine (mx_model_forward, 4 sequences) and (2) as a stage computes them: the layers with the
 * MoE sent through the router to two in-process expert shards served by the real RPC layer.
 *
 * What is counted. Normal build: this binary defines malloc, calloc, realloc, aligned_alloc,
 * posix_memalign and memalign (forwarding to glibc's __libc_* functions) and counts a call
 * when its immediate caller lies in this executable's code (every mx library is linked in
 * statically) or in libprotobuf-c (messages our code packs and unpacks). Calls made inside
 * libgrpc / libgpr are gRPC's own and are not counted; neither are allocations glibc makes
 * inside its own functions. In (2) only the stepping thread is counted: the shards' handlers
 * run on the server's threads in this process and would be a shard's allocations, not the
 * stage's. AddressSanitizer replaces malloc, so there the counting uses its malloc hook
 * (every allocation of every thread, no caller attribution): part (1) runs (nothing else runs
 * in the process then), part (2) is skipped with a reason, since gRPC's own allocations
 * cannot be told apart without the caller. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <link.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libconfig.h>

#include "attention-svc/stage.h"
#include "core/model.h"
#include "core/safetensors.h"
#include "mx/internal/v1/attention_stage.pb-c.h"
#include "expert-svc/shard.h"
#include "router/router.h"
#include "golden_testutil.h"
#include "shard_testutil.h"
#include "stage_testutil.h"

#define N_SEQS 4
#define WARM_STEPS 4
#define COUNTED_STEPS 20

#include "asan_alloc_hooks.h"

static atomic_int counting;            /* 1: count (all threads), 2: count this thread only */
static _Thread_local int this_thread;  /* the stepping thread, in mode 2 */
static atomic_ullong counted;

#ifdef UNDER_ASAN

static void on_malloc(const volatile void *p, size_t n)
{
    (void)p;
    (void)n;
    if (atomic_load_explicit(&counting, memory_order_relaxed) == 1)
        atomic_fetch_add(&counted, 1);
}
static void counting_init(void) { asan_count_allocs(on_malloc); }
#else

/* Code ranges whose allocations are ours: this executable and libprotobuf-c. */
#define MAX_RANGES 16
static uintptr_t range_lo[MAX_RANGES], range_hi[MAX_RANGES];
static int n_ranges;

static int add_ranges(struct dl_phdr_info *info, size_t size, void *first)
{
    (void)size;
    bool exe = *(int *)first;
    *(int *)first = 0;
    if (!exe && !strstr(info->dlpi_name, "libprotobuf-c"))
        return 0;
    for (int i = 0; i < info->dlpi_phnum && n_ranges < MAX_RANGES; i++) {
        const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
        if (ph->p_type == PT_LOAD && (ph->p_flags & PF_X)) {
            range_lo[n_ranges] = info->dlpi_addr + ph->p_vaddr;
            range_hi[n_ranges++] = info->dlpi_addr + ph->p_vaddr + ph->p_memsz;
        }
    }
    return 0;
}

static void counting_init(void)
{
    int first = 1; /* dl_iterate_phdr lists the executable first */
    dl_iterate_phdr(add_ranges, &first);
}

static void note(const void *caller)
{
    int mode = atomic_load_explicit(&counting, memory_order_relaxed);
    if (!mode || (mode == 2 && !this_thread))
        return;
    uintptr_t a = (uintptr_t)caller;
    for (int i = 0; i < n_ranges; i++)
        if (a >= range_lo[i] && a < range_hi[i]) {
            atomic_fetch_add(&counted, 1);
            return;
        }
}

__attribute__((noinline)) void *malloc(size_t n)
{
    note(__builtin_return_address(0));
    return __libc_malloc(n);
}
__attribute__((noinline)) void *calloc(size_t n, size_t size)
{
    note(__builtin_return_address(0));
    return __libc_calloc(n, size);
}
__attribute__((noinline)) void *realloc(void *p, size_t n)
{
    note(__builtin_return_address(0));
    return __libc_realloc(p, n);
}
__attribute__((noinline)) void *aligned_alloc(size_t align, size_t n)
{
    note(__builtin_return_address(0));
    return __libc_memalign(align, n);
}
void *memalign(size_t align, size_t n);
__attribute__((noinline)) void *memalign(size_t align, size_t n)
{
    note(__builtin_return_address(0));
    return __libc_memalign(align, n);
}
__attribute__((noinline)) int posix_memalign(void **out, size_t align, size_t n)
{
    note(__builtin_return_address(0));
    void *p = __libc_memalign(align, n);
    if (!p)
        return 12; /* ENOMEM */
    *out = p;
    return 0;
}
void free(void *p) { __libc_free(p); }
#endif

/* (noinline above: inlined into a caller, __builtin_return_address would name the caller's
 * caller) */
static void count_resume(int mode)
{
    this_thread = 1;
    atomic_store(&counting, mode);
}

static void count_start(int mode)
{
    atomic_store(&counted, 0);
    count_resume(mode);
}

/* Stops counting, keeping the count (count_start resets it). */
static void count_pause(void)
{
    atomic_store(&counting, 0);
    this_thread = 0;
}

static unsigned long long count_stop(void)
{
    atomic_store(&counting, 0);
    this_thread = 0;
    return atomic_load(&counted);
}

/* ---------------------------------------------------------------- the decode driver */

/* the tiny model with the backend's default (bf16) KV pages */
typedef tiny_model world;

static int setup(void **state)
{
    counting_init();
    world *wd = calloc(1, sizeof *wd);
    mx_error err = {0};
    if (!wd)
        return -1;
    if (tiny_model_load(wd, NULL, &err)) {
        print_error("%s\n", err.msg);
        free(wd);
        return -1;
    }
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

typedef struct decoder {
    mx_sequence *seqs[N_SEQS];
    mx_span spans[N_SEQS];
    int32_t tokens[N_SEQS * 8];
    float *logits;
    mx_tensor h;
} decoder;

/* Greedy next token of each sequence (host argmax over the logits). */
static void next_tokens(const mx_config *c, decoder *d)
{
    for (int i = 0; i < N_SEQS; i++) {
        const float *row = d->logits + (size_t)i * c->vocab_size;
        int best = 0;
        for (int v = 1; v < c->vocab_size; v++)
            best = row[v] > row[best] ? v : best;
        d->tokens[i] = best;
        d->spans[i] = (mx_span){i, 1};
    }
}

/* One step through the model's layers with moe, the way a stage computes: embed into h,
 * layers, head. d->h is [N_SEQS, hidden], made before counting. */
static int layered_step(world *wd, decoder *d, const mx_moe_executor *moe, mx_error *err)
{
    const mx_config *c = mx_model_config(wd->m);
    mx_batch b = {N_SEQS, d->seqs, d->spans, N_SEQS};
    int32_t rows[N_SEQS];
    for (int i = 0; i < N_SEQS; i++)
        rows[i] = i;
    MX_TRY(mx_model_embed(wd->m, d->tokens, N_SEQS, &d->h, err));
    MX_TRY(mx_model_run_layers(wd->m, 0, c->num_hidden_layers, &b, &d->h, moe, err));
    mx_batch_advance(&b);
    return mx_model_head(wd->m, &d->h, rows, N_SEQS, d->logits, err);
}

/* Prefill of N_SEQS prompts of 3..6 tokens, then WARM_STEPS decode steps and COUNTED_STEPS
 * counted ones. moe NULL: mx_model_forward (the engine); else layered_step. Returns the
 * allocations counted over the counted steps. */
static unsigned long long decode(world *wd, const mx_moe_executor *moe, int mode)
{
    const mx_config *c = mx_model_config(wd->m);
    mx_error err = {0};
    decoder d = {0};
    d.logits = malloc((size_t)N_SEQS * c->vocab_size * sizeof *d.logits);
    assert_non_null(d.logits);
    int64_t shape[2] = {N_SEQS, c->hidden_size};
    assert_int_equal(wd->be->alloc(wd->be, &d.h, wd->be->act_dtype, 2, shape, &err), 0);
    int n = 0;
    for (int i = 0; i < N_SEQS; i++) {
        assert_int_equal(mx_sequence_create(wd->m, 0, c->num_hidden_layers, &d.seqs[i], &err), 0);
        d.spans[i] = (mx_span){n, 3 + i};
        for (int t = 0; t < 3 + i; t++)
            d.tokens[n + t] = (7 * i + 13 * t + 1) % c->vocab_size;
        n += 3 + i;
    }
    mx_batch pre = {N_SEQS, d.seqs, d.spans, n};
    assert_int_equal(mx_model_forward(wd->m, &pre, d.tokens, d.logits, &err), 0);
    unsigned long long total = 0;
    for (int step = 0; step < WARM_STEPS + COUNTED_STEPS; step++) {
        next_tokens(c, &d);
        if (step == WARM_STEPS)
            count_start(mode);
        mx_batch b = {N_SEQS, d.seqs, d.spans, N_SEQS};
        int rc = moe ? layered_step(wd, &d, moe, &err) : mx_model_forward(wd->m, &b, d.tokens, d.logits, &err);
        if (rc)
            fail_msg("decode step %d: %s", step, err.msg);
    }
    total = count_stop();
    for (int i = 0; i < N_SEQS; i++)
        mx_sequence_free(wd->m, d.seqs[i]);
    wd->be->free(wd->be, &d.h);
    free(d.logits);
    return total;
}

/* Allocations are counted at all: a malloc made by this file's own code is seen. */
static void test_counter_sees_allocations(void **state)
{
    (void)state;
    count_start(1);
    void *volatile p = malloc(100);
    unsigned long long n = count_stop();
    free(p);
    assert_true(n >= 1);
}

static void test_engine_decode(void **state)
{
    world *wd = *state;
    unsigned long long n = decode(wd, NULL, 1);
    print_message("engine: %llu allocations in %d decode steps of %d sequences\n", n, COUNTED_STEPS, N_SEQS);
    assert_int_equal(n, 0);
}

/* ---------------------------------------------------------------- through the router */

/* One RunBatch of N_SEQS greedy sequences at `step` (step 0: 4-token prompts) into a
 * request packed by this test (outside the count); returns the tokens in tok. */
static const uint32_t default_prompts[N_SEQS][8] = {{1, 4, 7, 10}, {6, 9, 12, 15}, {11, 14, 17, 20}, {16, 19, 22, 25}};
static const int default_lens[N_SEQS] = {4, 4, 4, 4};

static void stage_step_with(stage *s, int step, const uint32_t (*prompts)[8], const int *lens, uint32_t *tok,
                            uint8_t *buf, size_t cap, bool count);

static void stage_step(stage *s, int step, uint32_t *tok, uint8_t *buf, size_t cap, bool count)
{
    stage_step_with(s, step, default_prompts, default_lens, tok, buf, cap, count);
}

/* Sequences [first, first + n) as one RunBatch: prompts[i][0..lens[i]) at step 0, then
 * tok[i] at position lens[i] + step - 1; tok[i] gets the sampled token. No cmocka calls
 * (threads run it): returns 0, or -1 with a message in err. */
static int step_range(stage *s, int step, int first, int n_seqs, const uint32_t (*prompts)[8], const int *lens,
                      uint32_t *tok, uint8_t *buf, size_t cap, bool count, mx_error *err)
{
    uint32_t ids[N_SEQS][8];
    Mx__Internal__V1__StageSampling sp[N_SEQS];
    Mx__Internal__V1__SequenceInput q[N_SEQS], *qp[N_SEQS];
    for (int k = 0; k < n_seqs; k++) {
        int i = first + k, n = step == 0 ? lens[i] : 1;
        for (int j = 0; j < n; j++)
            ids[k][j] = step == 0 ? prompts[i][j] : tok[i];
        mx__internal__v1__stage_sampling__init(&sp[k]);
        sp[k].top_p = 1;
        sp[k].repetition_penalty = 1;
        sp[k].step = (uint32_t)step;
        test_seq_input(&q[k], 77 + (uint64_t)i, step == 0 ? 0 : (uint32_t)(lens[i] + step - 1), ids[k], (size_t)n,
                       &sp[k]);
        qp[k] = &q[k];
    }
    Mx__Internal__V1__RunBatchRequest rq = MX__INTERNAL__V1__RUN_BATCH_REQUEST__INIT;
    rq.batch_id = (uint64_t)step;
    rq.sequences = qp;
    rq.n_sequences = (size_t)n_seqs;
    size_t len = protobuf_c_message_get_packed_size(&rq.base);
    if (len > cap)
        return mx_fail(err, MX_EINVAL, "request of %zu bytes", len);
    protobuf_c_message_pack(&rq.base, buf);
    mx_rpc_payload out;
    if (count)
        count_resume(2);
    int rc = stage_run_batch(s, buf, len, 20000, &out, err);
    if (count)
        count_pause();
    if (rc)
        return -1;
    Mx__Internal__V1__RunBatchResponse *r = mx__internal__v1__run_batch_response__unpack(NULL, out.len, out.data);
    if (out.release)
        out.release(out.release_ctx);
    if (!r || r->n_sampled != (size_t)n_seqs) {
        if (r)
            mx__internal__v1__run_batch_response__free_unpacked(r, NULL);
        return mx_fail(err, MX_EINTERNAL, "answer without %d sampled tokens", n_seqs);
    }
    for (int k = 0; k < n_seqs; k++)
        tok[first + k] = r->sampled[k]->token_id;
    mx__internal__v1__run_batch_response__free_unpacked(r, NULL);
    return 0;
}

static void stage_step_with(stage *s, int step, const uint32_t (*prompts)[8], const int *lens, uint32_t *tok,
                            uint8_t *buf, size_t cap, bool count)
{
    mx_error err = {0};
    if (step_range(s, step, 0, N_SEQS, prompts, lens, tok, buf, cap, count, &err))
        fail_msg("step %d: %s", step, err.msg);
}

/* A whole stage (all 8 layers, samples) with overlap on, its MoE through two in-process
 * shards: RunBatch decode steps through stage_run_batch, the request unpacked and the answer
 * packed by the stage as for a real call (the request bytes and the answer's unpacking are
 * this test's, outside the count). */
/* A whole stage (all 8 layers, samples) with its MoE through the servers a and b. */
/* mode 0: no overlap; 1: overlap across micro-batches; 2: a batch in two halves */
static stage *make_stage(const test_shard *a, const test_shard *b, int mode)
{
    char text[512];
    snprintf(text, sizeof text,
             "experts = { expert_timeout_ms = 10000; shards = ( { experts = [0, 1]; replicas = [\"127.0.0.1:%d\"]; },"
             " { experts = [2, 3]; replicas = [\"127.0.0.1:%d\"]; } ); };",
             a->port, b->port);
    stage_config c;
    test_stage_config(&c, 0, 1, 0, 8, "", 8, 2, MX_KV_F32);
    test_router_config(text, &c.router);
    mx_error err = {0};
    c.remote_experts = true;
    c.overlap = mode == 1;
    c.overlap_halves = mode == 2;
    c.max_step_tokens = 64;
    stage *s = NULL;
    if (stage_create(&c, &s, &err))
        fail_msg("stage_create: %s", err.msg);
    mx_router_config_free(&c.router);
    return s;
}

static void test_stage_decode(void **state)
{
    (void)state;
#ifdef UNDER_ASAN
    skip(); /* see the file comment (skip does not return) */
#endif
    test_shard a, b;
    test_shard_start(&a, "experts = [0, 1];", 0);
    test_shard_start(&b, "experts = [2, 3];", 1);
    stage *s = make_stage(&a, &b, 1);
    uint8_t buf[4096];
    uint32_t tok[N_SEQS] = {0};
    atomic_store(&counted, 0);
    for (int step = 0; step <= WARM_STEPS + COUNTED_STEPS; step++)
        stage_step(s, step, tok, buf, sizeof buf, step > WARM_STEPS);
    unsigned long long n = atomic_load(&counted);
    print_message("stage_run_batch: %llu allocations by our code on the stepping thread in %d decode steps\n", n,
                  COUNTED_STEPS);
    stage_destroy(s);
    test_shard_stop(&a);
    test_shard_stop(&b);
    /* (before: 26 per step; the layers and expert calls alone: test_router_decode) */
    assert_int_equal(n, 0);
}

/* One driver of the overlap test: all four sequences (half -1), or sequences [0, 2) or
 * [2, 4) (half 0 or 1) as its own micro-batch, 12 steps, sequence 0 teacher-forced. */
typedef struct duo {
    stage *s;
    const uint32_t (*prompts)[8];
    const int *lens;
    const int32_t *greedy;
    int half;
    uint32_t got[12][N_SEQS];
    bool failed;
    mx_error err;
} duo;

static void *duo_main(void *arg)
{
    duo *d = arg;
    uint8_t buf[4096];
    uint32_t tok[N_SEQS] = {0};
    int first = d->half < 0 ? 0 : 2 * d->half, n = d->half < 0 ? N_SEQS : 2;
    for (int step = 0; step < 12 && !d->failed; step++) {
        if (step > 0)
            tok[0] = (uint32_t)d->greedy[step - 1]; /* teacher-forced like the fixture */
        d->failed = step_range(d->s, step, first, n, d->prompts, d->lens, tok, buf, sizeof buf, false, &d->err) != 0;
        memcpy(d->got[step], tok, sizeof tok);
    }
    return NULL;
}

/* Overlap on, both kinds: two micro-batches of two sequences sent at once by two threads
 * (the compute lock let go while one's expert calls are out), and one batch run as two
 * halves. Sequence 0 is the fixture's p5_s12 case, fed its own greedy tokens: the stage must
 * sample exactly those (the reference's, not ours); the three others must get the same
 * tokens as with overlap off. */
static void test_stage_overlap_tokens(void **state)
{
    (void)state;
    mx_st_file *exp = NULL;
    mx_error err = {0};
    assert_int_equal(mx_st_open(TINY_FIXTURE "/expected.safetensors", &exp, &err), 0);
    int32_t prompt[8], greedy[16];
    int np = golden_read_ids(exp, "p5_s12.prompt_ids", prompt, 8);
    int ng = golden_read_ids(exp, "p5_s12.greedy_ids", greedy, 16);
    mx_st_close(exp);
    assert_int_equal(np, 5);
    assert_true(ng >= 12);
    uint32_t prompts[N_SEQS][8] = {{0}, {3, 1, 4, 1, 5, 9, 2}, {2, 7}, {100, 200, 300}};
    int lens[N_SEQS] = {np, 7, 2, 3};
    for (int j = 0; j < np; j++)
        prompts[0][j] = (uint32_t)prompt[j];
    test_shard a, b;
    test_shard_start(&a, "experts = [0, 1];", 0);
    test_shard_start(&b, "experts = [2, 3];", 1);
    enum { STEPS = 12, MODES = 3 };
    uint32_t got[MODES][STEPS][N_SEQS];
    for (int mode = 0; mode < MODES; mode++) {
        stage *s = make_stage(&a, &b, mode);
        duo d = {.s = s, .prompts = (const uint32_t(*)[8])prompts, .lens = lens, .greedy = greedy};
        if (mode == 1) {
            /* two micro-batches of two sequences in flight at once, as pipeline_depth 2 sends */
            pthread_t t;
            d.half = 1;
            assert_int_equal(pthread_create(&t, NULL, duo_main, &d), 0);
            duo mine = d;
            mine.half = 0;
            duo_main(&mine);
            pthread_join(t, NULL);
            if (mine.failed || d.failed)
                fail_msg("%s", mine.failed ? mine.err.msg : d.err.msg);
            for (int step = 0; step < STEPS; step++)
                for (int i = 0; i < N_SEQS; i++)
                    got[mode][step][i] = (i < 2 ? mine.got : d.got)[step][i];
        } else {
            d.half = -1;
            duo_main(&d);
            if (d.failed)
                fail_msg("%s", d.err.msg);
            memcpy(got[mode], d.got, sizeof got[mode]);
        }
        stage_destroy(s);
    }
    test_shard_stop(&a);
    test_shard_stop(&b);
    for (int mode = 0; mode < MODES; mode++)
        for (int step = 0; step < STEPS; step++) {
            assert_int_equal(got[mode][step][0], (uint32_t)greedy[step]);
            for (int i = 0; i < N_SEQS; i++)
                assert_int_equal(got[mode][step][i], got[0][step][i]);
        }
}

static void test_router_decode(void **state)
{
#ifdef UNDER_ASAN
    (void)state;
    skip(); /* see the file comment: gRPC's allocations cannot be told from ours here */
#else
    world *wd = *state;
    test_shard a, b;
    test_shard_start(&a, "experts = [0, 1];", 0);
    test_shard_start(&b, "experts = [2, 3];", 1);
    char text[512];
    snprintf(text, sizeof text,
             "experts = { expert_timeout_ms = 10000; shards = ( { experts = [0, 1]; replicas = [\"127.0.0.1:%d\"]; },"
             " { experts = [2, 3]; replicas = [\"127.0.0.1:%d\"]; } ); };",
             a.port, b.port);
    const mx_config *mc = mx_model_config(wd->m);
    mx_router *r = test_router_from_text(text, mc->num_hidden_layers, mc->hidden_size, mc->num_local_experts, wd->be);
    mx_error err = {0};
    mx_router_dispatcher *d = NULL;
    assert_int_equal(mx_router_dispatcher_create(r, 64, &d, &err), 0);
    mx_moe_executor moe = mx_router_dispatcher_executor(d);
    unsigned long long n = decode(wd, &moe, 2);
    print_message("stage layers + router: %llu allocations by our code on the stepping thread in %d decode steps "
                  "(%d layers, 2 shards)\n",
                  n, COUNTED_STEPS, mc->num_hidden_layers);
    mx_router_dispatcher_free(d);
    mx_router_destroy(r);
    test_shard_stop(&a);
    test_shard_stop(&b);
    assert_int_equal(n, 0);
#endif
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_counter_sees_allocations),
        cmocka_unit_test(test_engine_decode),
        cmocka_unit_test(test_router_decode),
        cmocka_unit_test(test_stage_decode),
        cmocka_unit_test(test_stage_overlap_tokens),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
