/* scheduler.h - the gateway's continuous-batching loop: a thread that packs running requests
 * into micro-batches (prompt chunks and single decode tokens of different requests together),
 * keeps up to gateway.pipeline_depth of them in the pipeline at once (each sent to stage 0,
 * which chains through the others), hands the sampled tokens of each to its requests as it
 * comes back, and releases the stage state of requests that finished or were cancelled.
 * New requests join between micro-batches. It never talks to clients. */
#ifndef MX_GW_SCHEDULER_H
#define MX_GW_SCHEDULER_H

#include "gw_config.h"
#include "request.h"

typedef struct gw_scheduler gw_scheduler;

/* Opens a channel per stage and starts the thread. cfg is copied. */
int gw_scheduler_create(const gw_config *cfg, gw_scheduler **out, mx_error *err);

/* Stops the thread; requests still queued or running end with FINISH_REASON_ERROR and their
 * stage state is released. NULL is fine. */
void gw_scheduler_destroy(gw_scheduler *s);

/* Queues r (taking a reference) and gives it a cluster-wide sequence id. MX_ENOMEM
 * (RESOURCE_EXHAUSTED) when max_queued requests already wait. */
int gw_scheduler_submit(gw_scheduler *s, gw_request *r, mx_error *err);

#endif
