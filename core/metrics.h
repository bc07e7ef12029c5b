/* metrics.h - a service's Prometheus metrics: a registry (one per service, owned by its state;
 * no globals) of counter, gauge and histogram families with a fixed small set of label names,
 * updated with atomics from any thread, rendered in the text exposition format 0.0.4.
 *
 * Families are registered at start-up. A family's series (one per combination of label
 * values) is created on first use, under the family's lock, and then found again without a
 * lock: after the first use of a combination, updates allocate nothing and take no lock. Hot
 * paths may also keep the series pointer (valid while the registry lives). Every update
 * accepts a NULL series (what mx_metric_with returns when out of memory) and does nothing.
 *
 * Every registry also carries the process metrics: mx_build_info{version, service} 1,
 * process_start_time_seconds (the process's start: /proc/stat btime + /proc/self/stat starttime)
 * and process_resident_memory_bytes (read from /proc/self/statm at each render).
 * Values that live elsewhere (a table's size, a router's counters) are copied in by
 * collectors the service registers; they run at the start of every render. */
#ifndef MX_METRICS_H
#define MX_METRICS_H

#include <stddef.h>

#include "error.h"

#define MX_METRIC_MAX_LABELS 4
#define MX_METRIC_MAX_BUCKETS 32

typedef struct mx_metrics mx_metrics;
typedef struct mx_metric mx_metric;   /* one family: name, help, type, label names */
typedef struct mx_series mx_series;   /* one combination of label values of a family */

typedef enum { MX_METRIC_COUNTER, MX_METRIC_GAUGE, MX_METRIC_HISTOGRAM } mx_metric_type;

/* service and version go into mx_build_info's labels. */
int mx_metrics_create(const char *service, const char *version, mx_metrics **out, mx_error *err);
void mx_metrics_destroy(mx_metrics *m);

/* Registers a family. name: [a-zA-Z_:][a-zA-Z0-9_:]* (counters should end in _total; base
 * units: seconds, bytes); label names: [a-zA-Z_][a-zA-Z0-9_]*, not "le", at most
 * MX_METRIC_MAX_LABELS. Histograms take their finite upper bounds, strictly increasing (the
 * +Inf bucket is implicit), at most MX_METRIC_MAX_BUCKETS. A name registered twice is an
 * error. The family lives as long as m. Not for concurrent use with other registrations. */
int mx_metrics_counter(mx_metrics *m, const char *name, const char *help, const char *const *labels, int n_labels,
                       mx_metric **out, mx_error *err);
int mx_metrics_gauge(mx_metrics *m, const char *name, const char *help, const char *const *labels, int n_labels,
                     mx_metric **out, mx_error *err);
int mx_metrics_histogram(mx_metrics *m, const char *name, const char *help, const char *const *labels, int n_labels,
                         const double *bounds, int n_bounds, mx_metric **out, mx_error *err);

/* The series of these label values (as many as the family has label names; none for an
 * unlabelled family). NULL when f is NULL or memory ran out. Thread-safe. */
mx_series *mx_metric_with(mx_metric *f, ...);
mx_series *mx_metric_withv(mx_metric *f, const char *const *values);

/* Updates (thread-safe, lock-free; NULL s = no-op). */
void mx_counter_add(mx_series *s, double v);        /* v >= 0 */
void mx_counter_set(mx_series *s, double v);        /* collectors mirroring a count kept elsewhere */
void mx_gauge_set(mx_series *s, double v);
void mx_gauge_add(mx_series *s, double v);          /* v may be negative */
void mx_histogram_observe(mx_series *s, double v);
/* Reads back (tests, collectors): a counter's / gauge's value, a histogram's count. */
double mx_series_value(const mx_series *s);

/* Adds a collector: fn(ctx) runs at the start of every render (on the rendering thread),
 * typically setting gauges from state kept elsewhere. At most 8. */
int mx_metrics_on_render(mx_metrics *m, void (*fn)(void *ctx), void *ctx, mx_error *err);

/* The whole registry in the text exposition format 0.0.4: per family "# HELP", "# TYPE" and
 * its series (histograms: cumulative _bucket{le=...} up to le="+Inf", then _sum and _count,
 * _count equal to the +Inf bucket). Families in registration order, series in order of first
 * use. *out is malloc'd and NUL-terminated, *len excludes the NUL. Thread-safe. */
int mx_metrics_render(mx_metrics *m, char **out, size_t *len, mx_error *err);

/* Bucket lists in base units, for the services' histograms. */
extern const double mx_metrics_latency_buckets[];   /* 1 ms .. 60 s */
extern const int mx_metrics_latency_n;
extern const double mx_metrics_fast_buckets[];      /* 50 us .. 10 s (per-call, per-step) */
extern const int mx_metrics_fast_n;

#endif
