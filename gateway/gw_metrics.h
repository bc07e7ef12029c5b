/* gw_metrics.h - the gateway's Prometheus metrics (core/metrics.h): requests by outcome and
 * finish reason, rejections by gRPC code, queue and running gauges, token totals and the
 * latency histograms (queue time, time to first token, inter-token, end to end). The
 * handlers call the two record functions; the gauges are read from the scheduler at render. */
#ifndef MX_GW_METRICS_H
#define MX_GW_METRICS_H

#include "core/metrics.h"
#include "request.h"
#include "scheduler.h"

typedef struct gw_metrics {
    mx_metrics *reg;              /* owned */
    gw_scheduler *sched;          /* borrowed: queue and running gauges */
    mx_metric *requests, *rejected, *prompt_tokens, *generated_tokens;
    mx_metric *queued, *running;
    mx_metric *queue_time, *ttft, *itl, *e2e;
} gw_metrics;

/* Creates the registry (service "gateway") and registers every family. */
int gw_metrics_init(gw_metrics *m, gw_scheduler *sched, mx_error *err);
void gw_metrics_free(gw_metrics *m);

/* A request refused before it was queued (validation, limits, queue full): err->code. */
void gw_metrics_rejected(gw_metrics *m, mx_code code);
/* A request that ended (r->done, or cancelled by its client: cancelled = true; r->mu held):
 * counts it, its tokens and its latencies except the inter-token gaps (gw_metrics_itl). */
void gw_metrics_finished(gw_metrics *m, const gw_request *r, bool cancelled);
/* n inter-token gaps of seconds each. */
void gw_metrics_itl(gw_metrics *m, int n, double seconds);

#endif
