/* gw_metrics.h - the gateway's Prometheus metrics (core/metrics.h): requests by outcome and
 * finish reason, rejections by status code, queue and running gauges, token totals and the
 * latency histograms (queue time, time to first token, inter-token, end to end). Every
 * per-request family carries an `api` label: "grpc" (mx.v1.Generation) or "openai" (the HTTP
 * API, openai_http.h), both over the one scheduler. The handlers call the record functions;
 * the gauges are read from the scheduler at render. */
#ifndef MX_GW_METRICS_H
#define MX_GW_METRICS_H

#include "core/metrics.h"
#include "request.h"
#include "scheduler.h"

/* Which public API a request came through: the value of the `api` label. */
typedef enum { GW_API_GRPC = 0, GW_API_OPENAI, GW_API_N } gw_api;

typedef struct gw_metrics {
    mx_metrics *reg;              /* owned */
    gw_scheduler *sched;          /* borrowed: queue and running gauges */
    mx_metric *requests, *rejected, *prompt_tokens, *generated_tokens;
    mx_metric *queued, *running;
    mx_metric *queue_time, *ttft, *itl, *e2e;
    /* the series of each API, made at init: the hot paths find them without a lookup */
    struct {
        mx_series *prompt_tokens, *generated_tokens, *queue_time, *ttft, *itl, *e2e;
    } by_api[GW_API_N];
} gw_metrics;

/* Creates the registry (service "gateway") and registers every family. */
int gw_metrics_init(gw_metrics *m, gw_scheduler *sched, mx_error *err);
void gw_metrics_free(gw_metrics *m);

/* "grpc" / "openai". */
const char *gw_api_name(gw_api api);

/* A request refused before it was queued (validation, limits, queue full, draining). code is
 * the status its client got, in its API's terms: the gRPC status name ("INVALID_ARGUMENT"),
 * or the HTTP status ("400"). */
void gw_metrics_rejected(gw_metrics *m, gw_api api, const char *code);
/* A request that ended: counts it, its tokens and its latencies except the inter-token gaps
 * (gw_metrics_streamed / gw_metrics_answered). client_gone: its client went away before the
 * end (counted as cancelled). Takes r->mu. NULL m is fine. */
void gw_metrics_finished(gw_metrics *m, gw_api api, gw_request *r, bool client_gone);

/* A streamed request's tokens [sent, upto) were just written to its client at now_ms: they
 * share the time since the previous write (*last_ms, updated) as their gaps; the first
 * token's own time is time to first token (first_ms), not a gap. */
void gw_metrics_streamed(gw_metrics *m, gw_api api, double *last_ms, int sent, int upto, double first_ms,
                         double now_ms);
/* A request answered in one message once done: each of its n_out - 1 gaps is the mean gap
 * between its first and last token. Takes r->mu. */
void gw_metrics_answered(gw_metrics *m, gw_api api, gw_request *r);

#endif
