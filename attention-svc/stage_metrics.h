/* stage_metrics.h - an attention stage's Prometheus metrics (core/metrics.h): live sequences,
 * KV bytes used and budget, step time and tokens per step, and with remote experts the
 * router's view: expert-call latency, calls and retries per shard and replica, routed tokens
 * per (layer, expert). Step values come from stage.c after each RunBatch; router values from
 * an attempt observer (latency, retries) and from the router's counters at render. */
#ifndef MX_ATTN_STAGE_METRICS_H
#define MX_ATTN_STAGE_METRICS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/metrics.h"
#include "router/router.h"

typedef struct stage_metrics stage_metrics;

/* router may be NULL (local experts); layers [layer_begin, layer_end) are this stage's. */
int stage_metrics_create(int index, mx_router *router, int layer_begin, int layer_end, stage_metrics **out,
                         mx_error *err);
void stage_metrics_destroy(stage_metrics *m);
mx_metrics *stage_metrics_registry(stage_metrics *m);

/* After a RunBatch's own compute (lock held by the caller, so the gauges are consistent): ok,
 * its wall time, its tokens, and the stage's live sequences and KV bytes now. */
void stage_metrics_step(stage_metrics *m, bool ok, double seconds, uint64_t tokens, int live, uint64_t kv_used,
                        uint64_t kv_budget);
/* After a Release or lease expiry changed the live set. */
void stage_metrics_live(stage_metrics *m, int live, uint64_t kv_used);

#endif
