/* metrics.c - the metrics registry and its Prometheus text rendering (metrics.h). Values are
 * doubles kept as their bit patterns in 64-bit atomics (compare-and-swap for adds); series
 * lists only grow, appended under the family's lock and read without one. */
#include "metrics.h"

#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <unistd.h>

#define MX_METRICS_MAX_COLLECTORS 8

const double mx_metrics_latency_buckets[] = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                                             0.5,   1,      2.5,   5,    10,    30,   60};
const int mx_metrics_latency_n = sizeof mx_metrics_latency_buckets / sizeof mx_metrics_latency_buckets[0];
const double mx_metrics_fast_buckets[] = {0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01,
                                          0.025,   0.05,   0.1,     0.25,   0.5,   1,      2.5,    10};
const int mx_metrics_fast_n = sizeof mx_metrics_fast_buckets / sizeof mx_metrics_fast_buckets[0];

struct mx_series {
    _Atomic(mx_series *) next;
    const mx_metric *family;
    char *values[MX_METRIC_MAX_LABELS];
    atomic_ullong v;          /* counter / gauge: double bits; histogram: the sum's bits */
    atomic_ullong *buckets;   /* histogram: [n_bounds + 1] per-bucket (not cumulative) counts */
};

struct mx_metric {
    _Atomic(mx_metric *) next;
    mx_metrics *owner;
    mx_metric_type type;
    char *name, *help;
    int n_labels;
    char *labels[MX_METRIC_MAX_LABELS];
    int n_bounds;
    double bounds[MX_METRIC_MAX_BUCKETS];
    pthread_mutex_t mu;       /* series creation */
    _Atomic(mx_series *) first;
    mx_series *last;          /* under mu */
};

struct mx_metrics {
    pthread_mutex_t mu;       /* registration, collectors, one render at a time */
    _Atomic(mx_metric *) first;
    mx_metric *last;
    int n_collectors;
    void (*collect[MX_METRICS_MAX_COLLECTORS])(void *);
    void *collect_ctx[MX_METRICS_MAX_COLLECTORS];
    mx_series *rss;
};

static uint64_t bits_of(double d)
{
    uint64_t u;
    memcpy(&u, &d, sizeof u);
    return u;
}

static double double_of(uint64_t u)
{
    double d;
    memcpy(&d, &u, sizeof d);
    return d;
}

static void atomic_add_double(atomic_ullong *a, double v)
{
    unsigned long long old = atomic_load_explicit(a, memory_order_relaxed);
    while (!atomic_compare_exchange_weak_explicit(a, &old, bits_of(double_of(old) + v), memory_order_relaxed,
                                                  memory_order_relaxed))
        ;
}

static bool valid_name(const char *s, bool colon)
{
    if (!s || !*s)
        return false;
    for (const char *p = s; *p; p++) {
        char c = *p;
        bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || (colon && c == ':') ||
                  (p > s && c >= '0' && c <= '9');
        if (!ok)
            return false;
    }
    return true;
}

static void series_free(mx_series *s)
{
    for (int i = 0; i < MX_METRIC_MAX_LABELS; i++)
        free(s->values[i]);
    free(s->buckets);
    free(s);
}

static void family_free(mx_metric *f)
{
    mx_series *s = atomic_load(&f->first);
    while (s) {
        mx_series *n = atomic_load(&s->next);
        series_free(s);
        s = n;
    }
    for (int i = 0; i < f->n_labels; i++)
        free(f->labels[i]);
    free(f->name);
    free(f->help);
    pthread_mutex_destroy(&f->mu);
    free(f);
}

static int add_family(mx_metrics *m, mx_metric_type type, const char *name, const char *help,
                      const char *const *labels, int n_labels, const double *bounds, int n_bounds, mx_metric **out,
                      mx_error *err)
{
    if (!valid_name(name, true))
        return mx_fail(err, MX_EINVAL, "metric name \"%s\" is not [a-zA-Z_:][a-zA-Z0-9_:]*", name ? name : "");
    if (n_labels < 0 || n_labels > MX_METRIC_MAX_LABELS)
        return mx_fail(err, MX_EINVAL, "metric %s: %d labels (at most %d)", name, n_labels, MX_METRIC_MAX_LABELS);
    for (int i = 0; i < n_labels; i++) {
        if (!valid_name(labels[i], false) || !strcmp(labels[i], "le") || !strncmp(labels[i], "__", 2))
            return mx_fail(err, MX_EINVAL, "metric %s: label name \"%s\" is not allowed", name,
                           labels[i] ? labels[i] : "");
        for (int j = 0; j < i; j++)
            if (!strcmp(labels[i], labels[j]))
                return mx_fail(err, MX_EINVAL, "metric %s: label \"%s\" given twice", name, labels[i]);
    }
    if (type == MX_METRIC_HISTOGRAM) {
        if (n_bounds < 1 || n_bounds > MX_METRIC_MAX_BUCKETS)
            return mx_fail(err, MX_EINVAL, "metric %s: %d buckets (1 to %d)", name, n_bounds, MX_METRIC_MAX_BUCKETS);
        for (int i = 0; i < n_bounds; i++)
            if (!isfinite(bounds[i]) || (i && bounds[i] <= bounds[i - 1]))
                return mx_fail(err, MX_EINVAL, "metric %s: bucket bounds must be finite and strictly increasing",
                               name);
    }
    for (mx_metric *f = atomic_load(&m->first); f; f = atomic_load(&f->next))
        if (!strcmp(f->name, name))
            return mx_fail(err, MX_EINVAL, "metric %s registered twice", name);
    mx_metric *f = calloc(1, sizeof *f);
    if (!f)
        return mx_fail(err, MX_ENOMEM, "out of memory registering metric %s", name);
    pthread_mutex_init(&f->mu, NULL);
    f->owner = m;
    f->type = type;
    f->name = strdup(name);
    f->help = strdup(help ? help : "");
    f->n_labels = n_labels;
    bool oom = !f->name || !f->help;
    for (int i = 0; i < n_labels; i++)
        oom |= !(f->labels[i] = strdup(labels[i]));
    if (type == MX_METRIC_HISTOGRAM) {
        f->n_bounds = n_bounds;
        memcpy(f->bounds, bounds, (size_t)n_bounds * sizeof *bounds);
    }
    if (oom) {
        family_free(f);
        return mx_fail(err, MX_ENOMEM, "out of memory registering metric %s", name);
    }
    pthread_mutex_lock(&m->mu);
    if (m->last)
        atomic_store_explicit(&m->last->next, f, memory_order_release);
    else
        atomic_store_explicit(&m->first, f, memory_order_release);
    m->last = f;
    pthread_mutex_unlock(&m->mu);
    if (out)
        *out = f;
    return 0;
}

int mx_metrics_counter(mx_metrics *m, const char *name, const char *help, const char *const *labels, int n_labels,
                       mx_metric **out, mx_error *err)
{
    return add_family(m, MX_METRIC_COUNTER, name, help, labels, n_labels, NULL, 0, out, err);
}

int mx_metrics_gauge(mx_metrics *m, const char *name, const char *help, const char *const *labels, int n_labels,
                     mx_metric **out, mx_error *err)
{
    return add_family(m, MX_METRIC_GAUGE, name, help, labels, n_labels, NULL, 0, out, err);
}

int mx_metrics_histogram(mx_metrics *m, const char *name, const char *help, const char *const *labels, int n_labels,
                         const double *bounds, int n_bounds, mx_metric **out, mx_error *err)
{
    return add_family(m, MX_METRIC_HISTOGRAM, name, help, labels, n_labels, bounds, n_bounds, out, err);
}

static bool same_values(const mx_metric *f, const mx_series *s, const char *const *values)
{
    for (int i = 0; i < f->n_labels; i++)
        if (strcmp(s->values[i], values[i] ? values[i] : ""))
            return false;
    return true;
}

static mx_series *find(const mx_metric *f, const char *const *values)
{
    for (mx_series *s = atomic_load_explicit(&f->first, memory_order_acquire); s;
         s = atomic_load_explicit(&s->next, memory_order_acquire))
        if (same_values(f, s, values))
            return s;
    return NULL;
}

mx_series *mx_metric_withv(mx_metric *f, const char *const *values)
{
    if (!f)
        return NULL;
    mx_series *s = find(f, values);
    if (s)
        return s;
    pthread_mutex_lock(&f->mu);
    s = find(f, values);
    if (!s && (s = calloc(1, sizeof *s))) {
        s->family = f;
        bool oom = false;
        for (int i = 0; i < f->n_labels; i++)
            oom |= !(s->values[i] = strdup(values[i] ? values[i] : ""));
        if (f->type == MX_METRIC_HISTOGRAM)
            oom |= !(s->buckets = calloc((size_t)f->n_bounds + 1, sizeof *s->buckets));
        if (oom) {
            series_free(s);
            s = NULL;
        } else {
            if (f->last)
                atomic_store_explicit(&f->last->next, s, memory_order_release);
            else
                atomic_store_explicit(&f->first, s, memory_order_release);
            f->last = s;
        }
    }
    pthread_mutex_unlock(&f->mu);
    return s;
}

mx_series *mx_metric_with(mx_metric *f, ...)
{
    if (!f)
        return NULL;
    const char *values[MX_METRIC_MAX_LABELS] = {0};
    va_list ap;
    va_start(ap, f);
    for (int i = 0; i < f->n_labels; i++)
        values[i] = va_arg(ap, const char *);
    va_end(ap);
    return mx_metric_withv(f, values);
}

void mx_counter_add(mx_series *s, double v)
{
    if (s && v > 0)
        atomic_add_double(&s->v, v);
}

void mx_counter_set(mx_series *s, double v)
{
    if (s)
        atomic_store_explicit(&s->v, bits_of(v), memory_order_relaxed);
}

void mx_gauge_set(mx_series *s, double v)
{
    if (s)
        atomic_store_explicit(&s->v, bits_of(v), memory_order_relaxed);
}

void mx_gauge_add(mx_series *s, double v)
{
    if (s)
        atomic_add_double(&s->v, v);
}

void mx_histogram_observe(mx_series *s, double v)
{
    if (!s || !s->buckets || isnan(v))
        return;
    const mx_metric *f = s->family;
    /* first bucket whose upper bound holds v (le is inclusive); n_bounds = +Inf */
    int lo = 0, hi = f->n_bounds;
    while (lo < hi) {
        int mid = (lo + hi) / 2;
        if (v <= f->bounds[mid])
            hi = mid;
        else
            lo = mid + 1;
    }
    atomic_fetch_add_explicit(&s->buckets[lo], 1, memory_order_relaxed);
    atomic_add_double(&s->v, v);
}

double mx_series_value(const mx_series *s)
{
    if (!s)
        return 0;
    if (s->buckets) {
        unsigned long long n = 0;
        for (int i = 0; i <= s->family->n_bounds; i++)
            n += atomic_load_explicit(&s->buckets[i], memory_order_relaxed);
        return (double)n;
    }
    return double_of(atomic_load_explicit(&s->v, memory_order_relaxed));
}

int mx_metrics_on_render(mx_metrics *m, void (*fn)(void *ctx), void *ctx, mx_error *err)
{
    pthread_mutex_lock(&m->mu);
    int rc = 0;
    if (m->n_collectors >= MX_METRICS_MAX_COLLECTORS) {
        rc = mx_fail(err, MX_ENOMEM, "at most %d metrics collectors", MX_METRICS_MAX_COLLECTORS);
    } else {
        m->collect[m->n_collectors] = fn;
        m->collect_ctx[m->n_collectors++] = ctx;
    }
    pthread_mutex_unlock(&m->mu);
    return rc;
}

/* --- rendering ----------------------------------------------------------------------------- */

typedef struct text {
    char *p;
    size_t len, cap;
    bool oom;
} text;

static void put(text *t, const char *s, size_t n)
{
    if (t->oom)
        return;
    if (t->len + n + 1 > t->cap) {
        size_t cap = t->cap ? t->cap : 4096;
        while (cap < t->len + n + 1)
            cap *= 2;
        char *p = realloc(t->p, cap);
        if (!p) {
            t->oom = true;
            return;
        }
        t->p = p;
        t->cap = cap;
    }
    memcpy(t->p + t->len, s, n);
    t->len += n;
    t->p[t->len] = 0;
}

static void puts_(text *t, const char *s) { put(t, s, strlen(s)); }

/* HELP text escapes backslash and newline; label values also the double quote. */
static void put_escaped(text *t, const char *s, bool quote)
{
    for (; *s; s++) {
        if (*s == '\\')
            puts_(t, "\\\\");
        else if (*s == '\n')
            puts_(t, "\\n");
        else if (quote && *s == '"')
            puts_(t, "\\\"");
        else
            put(t, s, 1);
    }
}

/* A sample value or bound: integers exactly, others in the shortest %g that reads back. */
static void format_number(char *b, size_t cap, double v)
{
    if (isnan(v))
        snprintf(b, cap, "NaN");
    else if (isinf(v))
        snprintf(b, cap, v > 0 ? "+Inf" : "-Inf");
    else if (v == floor(v) && fabs(v) < 1e15)
        snprintf(b, cap, "%.0f", v);
    else
        for (int prec = 6; prec <= 17; prec++) {
            snprintf(b, cap, "%.*g", prec, v);
            if (strtod(b, NULL) == v)
                break;
        }
}

static void put_number(text *t, double v)
{
    char b[64];
    format_number(b, sizeof b, v);
    puts_(t, b);
}

/* name{l1="v1",...,extra_name="extra"} value */
static void put_sample(text *t, const mx_metric *f, const mx_series *s, const char *suffix, const char *extra_name,
                       const char *extra, double v)
{
    puts_(t, f->name);
    puts_(t, suffix);
    if (f->n_labels || extra_name) {
        puts_(t, "{");
        for (int i = 0; i < f->n_labels; i++) {
            if (i)
                puts_(t, ",");
            puts_(t, f->labels[i]);
            puts_(t, "=\"");
            put_escaped(t, s->values[i], true);
            puts_(t, "\"");
        }
        if (extra_name) {
            if (f->n_labels)
                puts_(t, ",");
            puts_(t, extra_name);
            puts_(t, "=\"");
            puts_(t, extra);
            puts_(t, "\"");
        }
        puts_(t, "}");
    }
    puts_(t, " ");
    put_number(t, v);
    puts_(t, "\n");
}

static void render_family(text *t, const mx_metric *f)
{
    static const char *const type_name[] = {"counter", "gauge", "histogram"};
    puts_(t, "# HELP ");
    puts_(t, f->name);
    puts_(t, " ");
    put_escaped(t, f->help, false);
    puts_(t, "\n# TYPE ");
    puts_(t, f->name);
    puts_(t, " ");
    puts_(t, type_name[f->type]);
    puts_(t, "\n");
    for (const mx_series *s = atomic_load_explicit(&f->first, memory_order_acquire); s;
         s = atomic_load_explicit(&s->next, memory_order_acquire)) {
        if (f->type != MX_METRIC_HISTOGRAM) {
            put_sample(t, f, s, "", NULL, NULL, double_of(atomic_load_explicit(&s->v, memory_order_relaxed)));
            continue;
        }
        /* one read per bucket; the cumulative counts and _count come from the same reads, so
         * +Inf always equals _count even while observations race the render */
        unsigned long long cum = 0;
        char le[64];
        for (int i = 0; i <= f->n_bounds; i++) {
            cum += atomic_load_explicit(&s->buckets[i], memory_order_relaxed);
            format_number(le, sizeof le, i < f->n_bounds ? f->bounds[i] : INFINITY);
            put_sample(t, f, s, "_bucket", "le", le, (double)cum);
        }
        put_sample(t, f, s, "_sum", NULL, NULL, double_of(atomic_load_explicit(&s->v, memory_order_relaxed)));
        put_sample(t, f, s, "_count", NULL, NULL, (double)cum);
    }
}

/* Resident set size: statm's second field, in pages. */
static double resident_bytes(void)
{
    FILE *fp = fopen("/proc/self/statm", "r");
    if (!fp)
        return 0;
    unsigned long long size = 0, rss = 0;
    int n = fscanf(fp, "%llu %llu", &size, &rss);
    fclose(fp);
    return n == 2 ? (double)rss * (double)sysconf(_SC_PAGESIZE) : 0;
}

int mx_metrics_render(mx_metrics *m, char **out, size_t *len, mx_error *err)
{
    text t = {0};
    pthread_mutex_lock(&m->mu);
    mx_gauge_set(m->rss, resident_bytes());
    for (int i = 0; i < m->n_collectors; i++)
        m->collect[i](m->collect_ctx[i]);
    for (const mx_metric *f = atomic_load_explicit(&m->first, memory_order_acquire); f;
         f = atomic_load_explicit(&f->next, memory_order_acquire))
        render_family(&t, f);
    pthread_mutex_unlock(&m->mu);
    if (t.oom || !t.p) {
        free(t.p);
        if (!t.oom && (t.p = calloc(1, 1))) { /* an empty registry renders as "" */
            *out = t.p;
            *len = 0;
            return 0;
        }
        return mx_fail(err, MX_ENOMEM, "out of memory rendering metrics");
    }
    *out = t.p;
    *len = t.len;
    return 0;
}

/* When the process started, in seconds since the epoch: boot time (/proc/stat btime) plus
 * the process's start in clock ticks after boot (/proc/self/stat field 22); now when either
 * is unreadable. The registry may be made long after start (a service loads its model first). */
static double process_start_seconds(void)
{
    struct timeval tv;
    gettimeofday(&tv, NULL);
    double now = (double)tv.tv_sec + (double)tv.tv_usec / 1e6;
    char buf[1024];
    unsigned long long btime = 0, ticks = 0;
    FILE *f = fopen("/proc/stat", "r");
    if (f) {
        while (fgets(buf, sizeof buf, f))
            if (sscanf(buf, "btime %llu", &btime) == 1)
                break;
        fclose(f);
    }
    f = fopen("/proc/self/stat", "r");
    size_t n = f ? fread(buf, 1, sizeof buf - 1, f) : 0;
    if (f)
        fclose(f);
    buf[n] = 0;
    /* the command name (field 2) may hold spaces and parentheses: fields count from the last ')' */
    const char *p = strrchr(buf, ')');
    long hz = sysconf(_SC_CLK_TCK);
    if (!btime || !p || hz <= 0 ||
        sscanf(p + 1, " %*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %*u %*u %*d %*d %*d %*d %*d %*d %llu", &ticks) != 1)
        return now;
    double start = (double)btime + (double)ticks / (double)hz;
    return start <= now + 1 ? start : now;
}

int mx_metrics_create(const char *service, const char *version, mx_metrics **out, mx_error *err)
{
    mx_metrics *m = calloc(1, sizeof *m);
    if (!m)
        return mx_fail(err, MX_ENOMEM, "out of memory creating the metrics registry");
    pthread_mutex_init(&m->mu, NULL);
    static const char *const build_labels[] = {"version", "service"};
    mx_metric *build, *start, *rss;
    int rc = mx_metrics_gauge(m, "mx_build_info", "Always 1; the labels say which mx build and service this is.",
                              build_labels, 2, &build, err);
    if (!rc)
        rc = mx_metrics_gauge(m, "process_start_time_seconds", "Start time of the process since the Unix epoch in seconds.",
                              NULL, 0, &start, err);
    if (!rc)
        rc = mx_metrics_gauge(m, "process_resident_memory_bytes", "Resident memory size in bytes.", NULL, 0, &rss,
                              err);
    if (!rc) {
        mx_gauge_set(mx_metric_with(build, version ? version : "", service ? service : ""), 1);
        mx_gauge_set(mx_metric_with(start), process_start_seconds());
        m->rss = mx_metric_with(rss);
        if (!m->rss)
            rc = mx_fail(err, MX_ENOMEM, "out of memory creating the metrics registry");
    }
    if (rc) {
        mx_metrics_destroy(m);
        return rc;
    }
    *out = m;
    return 0;
}

void mx_metrics_destroy(mx_metrics *m)
{
    if (!m)
        return;
    mx_metric *f = atomic_load(&m->first);
    while (f) {
        mx_metric *n = atomic_load(&f->next);
        family_free(f);
        f = n;
    }
    pthread_mutex_destroy(&m->mu);
    free(m);
}
