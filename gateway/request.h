/* request.h - one generation request as the gateway tracks it: the validated input, the
 * tokens produced so far and how it ended. Shared by the RPC handler that streams it out and
 * the scheduler that drives it; the fields under `mu` are the only ones both touch.
 * Reference-counted: whoever drops the last reference frees it. */
#ifndef MX_GW_REQUEST_H
#define MX_GW_REQUEST_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include "core/error.h"
#include "core/tokenizer/tokenizer.h"
#include "mx/v1/generation.pb-c.h"

#define GW_MAX_TOP 20

typedef struct gw_sampling {
    float temperature, top_p, min_p, repetition_penalty;
    uint32_t top_k;
    uint64_t seed;
    bool want_logprobs;
    uint32_t top_n;
} gw_sampling;

typedef struct gw_request {
    /* ---- set before submission, then read-only ---- */
    uint64_t seq_id;
    char request_id[136];
    uint32_t *prompt;          /* owned */
    int n_prompt;
    gw_sampling sampling;
    int max_new;               /* already capped by the limit and the context */
    uint32_t *stop_ids;        /* owned; ends generation (FINISH_REASON_STOP) */
    int n_stop;
    uint32_t eos[8];           /* empty when ignore_eos */
    int n_eos;
    double t_arrival_ms;
    double deadline_ms;        /* absolute (monotonic ms); 0 = none */
    const mx_tokenizer *tok;   /* not owned; NULL = no text in responses */
    char **stop_strs;          /* owned; matched on the streamed text (FINISH_REASON_STOP) */
    int n_stop_strs;

    /* ---- scheduler only ---- */
    int prefilled;             /* prompt tokens sent to the stages */
    bool on_stages;            /* some stage may hold state: Release on the way out */
    bool in_flight;            /* part of a micro-batch in the pipeline: not eligible, not
                                  released, until that batch comes back */
    uint64_t ready_seq;        /* when it last became eligible (older goes first) */
    int64_t kv_tokens;         /* tokens whose KV bytes it reserves on every stage (prompt +
                                  max_new) while running; 0 = none */
    int kv_overtaken;          /* while queued: requests admitted past it (kv_budget) */
    double t_scheduled_ms, t_first_ms;

    /* ---- shared, under mu ---- */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int refs;
    uint32_t *out_ids;         /* [max_new] */
    float *out_logprob;        /* [max_new] when want_logprobs */
    uint32_t *top_ids;         /* [max_new * top_n] */
    float *top_lp;
    int n_out;
    bool done;
    Mx__V1__FinishReason finish;
    uint32_t matched_stop;
    bool has_matched_stop;
    int matched_stop_str;      /* index into stop_strs, -1 = none */
    /* Text of the tokens so far (skip_special), minus what the stop matcher holds back: only
     * whole UTF-8 characters, and after a stop string exactly the text before it. Ids the
     * tokenizer does not define add no text. */
    mx_text text;
    mx_detok_stream detok;
    mx_stop_matcher *stops;    /* NULL when there are no stop strings */
    mx_text piece;             /* scratch for one token's text */
    mx_code error_code;
    char error[512];
    bool cancelled;            /* set by the handler: client gone or deadline passed */
    double t_done_ms;
} gw_request;

/* A request with one reference, out buffers sized for max_new. Takes ownership of prompt
 * and stop_ids (freed on failure too). */
int gw_request_new(uint32_t *prompt, int n_prompt, uint32_t *stop_ids, int n_stop, int max_new,
                   const gw_sampling *sp, gw_request **out, mx_error *err);
void gw_request_ref(gw_request *r);
void gw_request_unref(gw_request *r);

/* Before submission: turns on text for r (tok is borrowed and must outlive r) and matching
 * of the n stop strings (taken over; freed on failure too). Errors name sampling.stop. */
int gw_request_set_text(gw_request *r, const mx_tokenizer *tok, char **stops, int n, mx_error *err);

/* Scheduler side: appends one sampled token (with its logprobs) and decides whether the request
 * is finished (eos, stop id, max_new). Returns true when done. It does not wake the handler:
 * the scheduler launches the next step first and then calls gw_request_wake, so that the
 * handlers' writes do not delay the step. */
bool gw_request_push(gw_request *r, uint32_t token, float logprob, const uint32_t *top_ids,
                     const float *top_lp, int n_top, double now_ms);

/* Scheduler side: ends the request with a reason (flushing text held back) (and an error for FINISH_REASON_ERROR). */
void gw_request_finish(gw_request *r, Mx__V1__FinishReason why, mx_code code, const char *error,
                       double now_ms);

/* Handler side: marks the request cancelled (the scheduler drops it before the next step). */
void gw_request_cancel(gw_request *r);

/* Wakes r's waiting handler: for the scheduler once a step's tokens are pushed, and for whoever
 * learns of a cancellation (the RPC server's cancel callback, an HTTP server stopping), so the
 * handler asks again whether its client is gone. Takes r->mu. */
void gw_request_wake(gw_request *r);

/* How long gw_request_wait_progress sleeps without a wake-up before it asks gone(ctx) anyway:
 * a safety net for a disconnect nobody reports (an HTTP client that closed its socket while
 * no token flows), not the way cancellations are meant to arrive. */
#define GW_WAIT_SAFETY_MS 1000

/* Handler side, with r->mu held: waits until r has tokens beyond `sent` or is done. gone(ctx)
 * is asked before each sleep, so whoever learns that the client went away wakes the handler
 * with gw_request_wake (a waiter is not woken on a timer, bar the safety net above); when it
 * answers true, r is marked cancelled (the scheduler drops it and releases its stage state)
 * and false is returned. Progress wins over a client gone at the same time. */
bool gw_request_wait_progress(gw_request *r, int sent, bool (*gone)(void *ctx), void *ctx);

#endif
