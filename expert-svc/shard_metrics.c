/* shard_metrics.c - the expert shard's metric families (shard_metrics.h); every series is
 * created up front, so the handler's updates are atomic adds only. */
#include "shard_metrics.h"

#include <stdio.h>
#include <stdlib.h>

#include "mx_version.h"

struct shard_metrics {
    mx_metrics *reg;
    mx_series *calls_ok, *calls_err, *rows_ok, *rows_err, *calls_now, *rows_now, *queue, *compute;
};

static int build(shard_metrics *m, int index, mx_error *err)
{
    char service[32];
    snprintf(service, sizeof service, "expert-%d", index);
    MX_TRY(mx_metrics_create(service, MX_VERSION, &m->reg, err));
    static const char *const outcome[] = {"outcome"};
    mx_metric *calls, *rows, *calls_now, *rows_now, *queue, *compute;
    MX_TRY(mx_metrics_counter(m->reg, "mx_expert_calls_total", "RunExperts calls that ended here, by outcome.", outcome,
                              1, &calls, err));
    MX_TRY(mx_metrics_counter(m->reg, "mx_expert_rows_total", "Token rows of RunExperts calls that ended, by outcome.",
                              outcome, 1, &rows, err));
    MX_TRY(mx_metrics_gauge(m->reg, "mx_expert_calls_in_flight", "RunExperts calls being handled now.", NULL, 0,
                            &calls_now, err));
    MX_TRY(mx_metrics_gauge(m->reg, "mx_expert_rows_in_flight", "Token rows of the calls being handled now.", NULL, 0,
                            &rows_now, err));
    MX_TRY(mx_metrics_histogram(m->reg, "mx_expert_queue_seconds",
                                "Time a RunExperts call waited for the compute (one call computes at a time).", NULL,
                                0, mx_metrics_fast_buckets, mx_metrics_fast_n, &queue, err));
    MX_TRY(mx_metrics_histogram(m->reg, "mx_expert_compute_seconds", "Time computing a RunExperts call's experts.",
                                NULL, 0, mx_metrics_fast_buckets, mx_metrics_fast_n, &compute, err));
    m->calls_ok = mx_metric_with(calls, "ok");
    m->calls_err = mx_metric_with(calls, "error");
    m->rows_ok = mx_metric_with(rows, "ok");
    m->rows_err = mx_metric_with(rows, "error");
    m->calls_now = mx_metric_with(calls_now);
    m->rows_now = mx_metric_with(rows_now);
    m->queue = mx_metric_with(queue);
    m->compute = mx_metric_with(compute);
    if (!m->calls_ok || !m->calls_err || !m->rows_ok || !m->rows_err || !m->calls_now || !m->rows_now || !m->queue ||
        !m->compute)
        return mx_fail(err, MX_ENOMEM, "out of memory creating the shard's metrics");
    return 0;
}

int shard_metrics_create(int shard_index, shard_metrics **out, mx_error *err)
{
    shard_metrics *m = calloc(1, sizeof *m);
    if (!m)
        return mx_fail(err, MX_ENOMEM, "out of memory creating the shard's metrics");
    int rc = build(m, shard_index, err);
    if (rc) {
        shard_metrics_destroy(m);
        return rc;
    }
    *out = m;
    return 0;
}

void shard_metrics_destroy(shard_metrics *m)
{
    if (!m)
        return;
    mx_metrics_destroy(m->reg);
    free(m);
}

mx_metrics *shard_metrics_registry(shard_metrics *m)
{
    return m ? m->reg : NULL;
}

void shard_metrics_enter(shard_metrics *m)
{
    if (m)
        mx_gauge_add(m->calls_now, 1);
}

void shard_metrics_rows(shard_metrics *m, uint64_t rows)
{
    if (m)
        mx_gauge_add(m->rows_now, (double)rows);
}

void shard_metrics_leave(shard_metrics *m, uint64_t rows, bool ok)
{
    if (!m)
        return;
    mx_gauge_add(m->calls_now, -1);
    mx_gauge_add(m->rows_now, -(double)rows);
    mx_counter_add(ok ? m->calls_ok : m->calls_err, 1);
    mx_counter_add(ok ? m->rows_ok : m->rows_err, (double)rows);
}

void shard_metrics_timing(shard_metrics *m, double queue_s, double compute_s)
{
    if (!m)
        return;
    mx_histogram_observe(m->queue, queue_s);
    mx_histogram_observe(m->compute, compute_s);
}
