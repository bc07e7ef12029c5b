/* gw_metrics.c - the gateway's metric families and how a finished request is counted
 * (gw_metrics.h). Timings come from the request's own stamps (arrival, admission, first
 * token, done), the same ones its final response reports. */
#include "gw_metrics.h"

#include <grpc/status.h>

#include "core/rpc/status.h"
#include "mx_version.h"

static void collect(void *ctx)
{
    gw_metrics *m = ctx;
    int queued = 0, running = 0;
    if (m->sched)
        gw_scheduler_counts(m->sched, &queued, &running);
    mx_gauge_set(mx_metric_with(m->queued), queued);
    mx_gauge_set(mx_metric_with(m->running), running);
}

int gw_metrics_init(gw_metrics *m, gw_scheduler *sched, mx_error *err)
{
    static const char *const req_labels[] = {"outcome", "finish_reason"};
    static const char *const code_label[] = {"code"};
    *m = (gw_metrics){.sched = sched};
    MX_TRY(mx_metrics_create("gateway", MX_VERSION, &m->reg, err));
    mx_metrics *r = m->reg;
    MX_TRY(mx_metrics_counter(r, "mx_gateway_requests_total",
                              "Generation requests that ended, by outcome (ok, error, cancelled) and finish reason.",
                              req_labels, 2, &m->requests, err));
    MX_TRY(mx_metrics_counter(r, "mx_gateway_rejected_total",
                              "Generation requests refused before being queued, by gRPC status code.", code_label, 1,
                              &m->rejected, err));
    MX_TRY(mx_metrics_counter(r, "mx_gateway_prompt_tokens_total", "Prompt tokens of requests that ended.", NULL, 0,
                              &m->prompt_tokens, err));
    MX_TRY(mx_metrics_counter(r, "mx_gateway_generated_tokens_total", "Tokens generated for requests that ended.",
                              NULL, 0, &m->generated_tokens, err));
    MX_TRY(mx_metrics_gauge(r, "mx_gateway_queued_requests", "Requests waiting for admission to the running set.",
                            NULL, 0, &m->queued, err));
    MX_TRY(mx_metrics_gauge(r, "mx_gateway_running_sequences", "Sequences in the running set (batched every step).",
                            NULL, 0, &m->running, err));
    MX_TRY(mx_metrics_histogram(r, "mx_gateway_queue_time_seconds", "Time from arrival to admission.", NULL, 0,
                                mx_metrics_latency_buckets, mx_metrics_latency_n, &m->queue_time, err));
    MX_TRY(mx_metrics_histogram(r, "mx_gateway_time_to_first_token_seconds", "Time from arrival to the first token.",
                                NULL, 0, mx_metrics_latency_buckets, mx_metrics_latency_n, &m->ttft, err));
    MX_TRY(mx_metrics_histogram(r, "mx_gateway_inter_token_seconds",
                                "Time between consecutive tokens of a request as streamed to the client.", NULL, 0,
                                mx_metrics_latency_buckets, mx_metrics_latency_n, &m->itl, err));
    MX_TRY(mx_metrics_histogram(r, "mx_gateway_request_duration_seconds",
                                "Time from arrival to the end of the request.", NULL, 0, mx_metrics_latency_buckets,
                                mx_metrics_latency_n, &m->e2e, err));
    /* the unlabelled series exist from the start, so a scrape before traffic shows zeros */
    mx_metric_with(m->prompt_tokens);
    mx_metric_with(m->generated_tokens);
    mx_metric_with(m->queue_time);
    mx_metric_with(m->ttft);
    mx_metric_with(m->itl);
    mx_metric_with(m->e2e);
    return mx_metrics_on_render(r, collect, m, err);
}

void gw_metrics_free(gw_metrics *m)
{
    mx_metrics_destroy(m->reg);
    m->reg = NULL;
}

void gw_metrics_rejected(gw_metrics *m, mx_code code)
{
    if (m && m->reg)
        mx_counter_add(mx_metric_with(m->rejected, mx_rpc_status_name(mx_rpc_status_from_code(code))), 1);
}

static const char *finish_name(Mx__V1__FinishReason f)
{
    switch (f) {
    case MX__V1__FINISH_REASON__FINISH_REASON_STOP: return "stop";
    case MX__V1__FINISH_REASON__FINISH_REASON_LENGTH: return "length";
    case MX__V1__FINISH_REASON__FINISH_REASON_CANCELLED: return "cancelled";
    case MX__V1__FINISH_REASON__FINISH_REASON_ERROR: return "error";
    default: return "unspecified";
    }
}

void gw_metrics_finished(gw_metrics *m, const gw_request *r, bool cancelled)
{
    if (!m || !m->reg)
        return;
    const char *outcome = cancelled || r->finish == MX__V1__FINISH_REASON__FINISH_REASON_CANCELLED ? "cancelled"
                          : r->finish == MX__V1__FINISH_REASON__FINISH_REASON_ERROR                 ? "error"
                                                                                                   : "ok";
    mx_counter_add(mx_metric_with(m->requests, outcome, cancelled && !r->done ? "cancelled" : finish_name(r->finish)),
                   1);
    mx_counter_add(mx_metric_with(m->prompt_tokens), r->n_prompt);
    mx_counter_add(mx_metric_with(m->generated_tokens), r->n_out);
    if (r->t_scheduled_ms > 0)
        mx_histogram_observe(mx_metric_with(m->queue_time), (r->t_scheduled_ms - r->t_arrival_ms) / 1e3);
    if (r->t_first_ms > 0)
        mx_histogram_observe(mx_metric_with(m->ttft), (r->t_first_ms - r->t_arrival_ms) / 1e3);
    if (r->done && r->t_done_ms > 0)
        mx_histogram_observe(mx_metric_with(m->e2e), (r->t_done_ms - r->t_arrival_ms) / 1e3);
}

void gw_metrics_itl(gw_metrics *m, int n, double seconds)
{
    if (!m || !m->reg)
        return;
    mx_series *s = mx_metric_with(m->itl);
    for (int i = 0; i < n; i++)
        mx_histogram_observe(s, seconds);
}
