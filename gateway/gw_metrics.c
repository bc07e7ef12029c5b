/* gw_metrics.c - the gateway's metric families and how a finished request is counted
 * (gw_metrics.h). Timings come from the request's own stamps (arrival, admission, first
 * token, done), the same ones its final response reports, whichever API it came through. */
#include "gw_metrics.h"

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
    static const char *const req_labels[] = {"api", "outcome", "finish_reason"};
    static const char *const code_labels[] = {"api", "code"};
    static const char *const api_label[] = {"api"};
    *m = (gw_metrics){.sched = sched};
    MX_TRY(mx_metrics_create("gateway", MX_VERSION, &m->reg, err));
    mx_metrics *r = m->reg;
    MX_TRY(mx_metrics_counter(r, "mx_gateway_requests_total",
                              "Generation requests that ended, by API (grpc, openai), outcome (ok, error, cancelled) "
                              "and finish reason.",
                              req_labels, 3, &m->requests, err));
    MX_TRY(mx_metrics_counter(r, "mx_gateway_rejected_total",
                              "Generation requests refused before being queued, by API and the status code the "
                              "client got (gRPC status name, or HTTP status).",
                              code_labels, 2, &m->rejected, err));
    MX_TRY(mx_metrics_counter(r, "mx_gateway_prompt_tokens_total", "Prompt tokens of requests that ended.", api_label,
                              1, &m->prompt_tokens, err));
    MX_TRY(mx_metrics_counter(r, "mx_gateway_generated_tokens_total", "Tokens generated for requests that ended.",
                              api_label, 1, &m->generated_tokens, err));
    MX_TRY(mx_metrics_gauge(r, "mx_gateway_queued_requests", "Requests waiting for admission to the running set.",
                            NULL, 0, &m->queued, err));
    MX_TRY(mx_metrics_gauge(r, "mx_gateway_running_sequences", "Sequences in the running set (batched every step).",
                            NULL, 0, &m->running, err));
    MX_TRY(mx_metrics_histogram(r, "mx_gateway_queue_time_seconds", "Time from arrival to admission.", api_label, 1,
                                mx_metrics_latency_buckets, mx_metrics_latency_n, &m->queue_time, err));
    MX_TRY(mx_metrics_histogram(r, "mx_gateway_time_to_first_token_seconds", "Time from arrival to the first token.",
                                api_label, 1, mx_metrics_latency_buckets, mx_metrics_latency_n, &m->ttft, err));
    MX_TRY(mx_metrics_histogram(r, "mx_gateway_inter_token_seconds",
                                "Time between consecutive tokens of a request as streamed to the client.", api_label,
                                1, mx_metrics_latency_buckets, mx_metrics_latency_n, &m->itl, err));
    MX_TRY(mx_metrics_histogram(r, "mx_gateway_request_duration_seconds",
                                "Time from arrival to the end of the request.", api_label, 1,
                                mx_metrics_latency_buckets, mx_metrics_latency_n, &m->e2e, err));
    /* every API's series exist from the start, so a scrape before traffic shows zeros */
    for (int a = 0; a < GW_API_N; a++) {
        const char *api = gw_api_name((gw_api)a);
        m->by_api[a].prompt_tokens = mx_metric_with(m->prompt_tokens, api);
        m->by_api[a].generated_tokens = mx_metric_with(m->generated_tokens, api);
        m->by_api[a].queue_time = mx_metric_with(m->queue_time, api);
        m->by_api[a].ttft = mx_metric_with(m->ttft, api);
        m->by_api[a].itl = mx_metric_with(m->itl, api);
        m->by_api[a].e2e = mx_metric_with(m->e2e, api);
    }
    return mx_metrics_on_render(r, collect, m, err);
}

void gw_metrics_free(gw_metrics *m)
{
    mx_metrics_destroy(m->reg);
    m->reg = NULL;
}

const char *gw_api_name(gw_api api)
{
    return api == GW_API_OPENAI ? "openai" : "grpc";
}

void gw_metrics_rejected(gw_metrics *m, gw_api api, const char *code)
{
    if (m && m->reg)
        mx_counter_add(mx_metric_with(m->rejected, gw_api_name(api), code), 1);
}

static const char *finish_name(Mx__V1__FinishReason f)
{
    switch (f) {
    case MX__V1__FINISH_REASON__FINISH_REASON_STOP: return "stop";
    case MX__V1__FINISH_REASON__FINISH_REASON_EOS: return "eos";
    case MX__V1__FINISH_REASON__FINISH_REASON_LENGTH: return "length";
    case MX__V1__FINISH_REASON__FINISH_REASON_CANCELLED: return "cancelled";
    case MX__V1__FINISH_REASON__FINISH_REASON_ERROR: return "error";
    default: return "unspecified";
    }
}

void gw_metrics_finished(gw_metrics *m, gw_api api, gw_request *r, bool client_gone)
{
    if (!m || !m->reg)
        return;
    pthread_mutex_lock(&r->mu);
    bool cancelled = client_gone && !r->done;
    const char *outcome = cancelled || r->finish == MX__V1__FINISH_REASON__FINISH_REASON_CANCELLED ? "cancelled"
                          : r->finish == MX__V1__FINISH_REASON__FINISH_REASON_ERROR                 ? "error"
                                                                                                   : "ok";
    mx_counter_add(mx_metric_with(m->requests, gw_api_name(api), outcome,
                                  cancelled ? "cancelled" : finish_name(r->finish)),
                   1);
    mx_counter_add(m->by_api[api].prompt_tokens, r->n_prompt);
    mx_counter_add(m->by_api[api].generated_tokens, r->n_out);
    if (r->t_scheduled_ms > 0)
        mx_histogram_observe(m->by_api[api].queue_time, (r->t_scheduled_ms - r->t_arrival_ms) / 1e3);
    if (r->t_first_ms > 0)
        mx_histogram_observe(m->by_api[api].ttft, (r->t_first_ms - r->t_arrival_ms) / 1e3);
    if (r->done && r->t_done_ms > 0)
        mx_histogram_observe(m->by_api[api].e2e, (r->t_done_ms - r->t_arrival_ms) / 1e3);
    pthread_mutex_unlock(&r->mu);
}

static void observe_gaps(gw_metrics *m, gw_api api, int n, double seconds)
{
    for (int i = 0; i < n; i++)
        mx_histogram_observe(m->by_api[api].itl, seconds);
}

void gw_metrics_streamed(gw_metrics *m, gw_api api, double *last_ms, int sent, int upto, double first_ms,
                         double now_ms)
{
    int n = upto - sent;
    if (n <= 0)
        return;
    if (m && m->reg) {
        if (sent > 0)
            observe_gaps(m, api, n, (now_ms - *last_ms) / n / 1e3);
        else if (n > 1)
            observe_gaps(m, api, n - 1, (now_ms - first_ms) / (n - 1) / 1e3);
    }
    *last_ms = now_ms;
}

void gw_metrics_answered(gw_metrics *m, gw_api api, gw_request *r)
{
    if (!m || !m->reg)
        return;
    pthread_mutex_lock(&r->mu);
    int n = r->n_out;
    double span = r->t_done_ms - r->t_first_ms;
    bool timed = r->t_first_ms > 0;
    pthread_mutex_unlock(&r->mu);
    if (n > 1 && timed)
        observe_gaps(m, api, n - 1, span / (n - 1) / 1e3);
}
