/* scheduler.h - the gateway's continuous-batching loop: a thread that packs running requests
 * into micro-batches (prompt chunks and single decode tokens of different requests together),
 * keeps up to gateway.pipeline_depth of them in the pipeline at once (each sent to stage 0,
 * which chains through the others), hands the sampled tokens of each to its requests as it
 * comes back, and releases the stage state of requests that finished or were cancelled.
 * New requests join between micro-batches. It never talks to clients. */
#ifndef MX_GW_SCHEDULER_H
#define MX_GW_SCHEDULER_H

#include "core/config.h"
#include "gw_config.h"
#include "request.h"

typedef struct gw_scheduler gw_scheduler;

/* Where the scheduler thread reports the errors it has no caller to return to (a failed
 * micro-batch, refused sequences, a failed Release or KV refresh): one line each, already
 * prefixed "gateway: ". Called on the scheduler thread; fn NULL = dropped. */
typedef struct gw_log {
    void (*fn)(void *ctx, const char *line);
    void *ctx;
} gw_log;

/* Opens a channel per stage and starts the thread. cfg is copied; model gives the KV
 * geometry (kv heads, head_dim) of the stages' caches. No request is admitted before the
 * first successful gw_scheduler_refresh_kv. */
int gw_scheduler_create(const gw_config *cfg, const mx_config *model, gw_log log, gw_scheduler **out,
                        mx_error *err);

/* Asks every stage for its KV numbers (AttentionStage/Info, timeout_ms for all of them).
 * The gateway calls it at start until the stages answer; the scheduler calls it again after
 * a stage refused or failed a batch. */
int gw_scheduler_refresh_kv(gw_scheduler *s, int64_t timeout_ms, mx_error *err);

/* The longest prompt + output accepted now: min(context_limit, the longest sequence whose KV
 * cache fits every stage). */
int64_t gw_scheduler_max_context(gw_scheduler *s, int64_t context_limit);

/* Stops the thread; requests still queued or running end with FINISH_REASON_ERROR and their
 * stage state is released. NULL is fine. */
void gw_scheduler_destroy(gw_scheduler *s);

/* Queues r (taking a reference) and gives it a cluster-wide sequence id. MX_ENOMEM
 * (RESOURCE_EXHAUSTED) when max_queued requests already wait, or when prompt + max_new
 * tokens would not fit a stage's KV budget even with no other request running (the message
 * says how many tokens fit). A request that fits, but not next to those running, waits in
 * the queue: see admit_locked in scheduler.c for the order. */
int gw_scheduler_submit(gw_scheduler *s, gw_request *r, mx_error *err);

/* Requests waiting for admission and requests running now (for metrics; takes the lock). */
void gw_scheduler_counts(gw_scheduler *s, int *queued, int *running);

#endif
