/* log.c - structured log lines (log.h): formatted into a stack buffer, written with one
 * write(2) so concurrent lines never interleave and nothing is allocated. */
#include "log.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

static const char *const level_names[] = {"error", "warn", "info", "debug"};

int mx_log_level_parse(const char *name, mx_log_level *out, mx_error *err)
{
    for (int i = 0; i <= MX_LOG_DEBUG; i++)
        if (name && strcasecmp(name, level_names[i]) == 0) {
            *out = (mx_log_level)i;
            return 0;
        }
    if (name && strcasecmp(name, "warning") == 0) {
        *out = MX_LOG_WARN;
        return 0;
    }
    return mx_fail(err, MX_EINVAL, "unknown log level \"%s\" (expected error, warn, info or debug)",
                   name ? name : "(null)");
}

const char *mx_log_level_name(mx_log_level level)
{
    return (unsigned)level <= MX_LOG_DEBUG ? level_names[level] : "?";
}

int mx_log_init(mx_log *log, const char *service, const char *config_level, mx_error *err)
{
    memset(log, 0, sizeof *log);
    snprintf(log->service, sizeof log->service, "%s", service ? service : "mx");
    log->fd = 2;
    log->level = MX_LOG_INFO;
    const char *env = getenv("MX_LOG_LEVEL");
    if (env && env[0]) {
        if (mx_log_level_parse(env, &log->level, err))
            return mx_fail(err, MX_EINVAL, "MX_LOG_LEVEL: unknown log level \"%s\" (expected error, warn, info or "
                           "debug)", env);
    } else if (config_level && config_level[0]) {
        if (mx_log_level_parse(config_level, &log->level, err))
            return mx_fail(err, MX_EINVAL, "log_level: unknown log level \"%s\" (expected error, warn, info or "
                           "debug)", config_level);
    }
    return 0;
}

int mx_log_enabled(const mx_log *log, mx_log_level level)
{
    return log && level <= log->level;
}

/* The line being built: appends stop at the end, keeping room for the newline. */
typedef struct line {
    char buf[MX_LOG_LINE_MAX];
    size_t n;
} line;

static void put(line *l, const char *s, size_t len)
{
    size_t room = sizeof l->buf - 1 - l->n;
    if (len > room)
        len = room;
    memcpy(l->buf + l->n, s, len);
    l->n += len;
}

static void puts_(line *l, const char *s)
{
    put(l, s, strlen(s));
}

/* s with control characters escaped (newlines as \n), so one event is one line; with quotes,
 * '"' and '\' too (values). A message keeps its quotes: people read it and grep for it as
 * written. */
static void put_escaped(line *l, const char *s, int quotes)
{
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        char e[8];
        if (c == '\n')
            put(l, "\\n", 2);
        else if (quotes && (c == '"' || c == '\\')) {
            e[0] = '\\', e[1] = (char)c;
            put(l, e, 2);
        } else if (c < 0x20 || c == 0x7f) {
            int k = snprintf(e, sizeof e, "\\x%02x", c);
            put(l, e, (size_t)k);
        } else
            put(l, (const char *)&c, 1);
    }
}

static void put_value(line *l, const char *v)
{
    if (v[0] && !strpbrk(v, " =\"\t\n\\")) {
        put_escaped(l, v, 1);
        return;
    }
    put(l, "\"", 1);
    put_escaped(l, v, 1);
    put(l, "\"", 1);
}

static void begin(line *l, const mx_log *log, mx_log_level level, const char *request_id)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct tm tm;
    gmtime_r(&ts.tv_sec, &tm);
    char t[48];
    size_t k = strftime(t, sizeof t, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(t + k, sizeof t - k, ".%03dZ ", (int)(ts.tv_nsec / 1000000));
    l->n = 0;
    puts_(l, t);
    puts_(l, mx_log_level_name(level));
    put(l, " ", 1);
    puts_(l, log->service);
    if (request_id && request_id[0]) {
        put(l, " req=", 5);
        put_escaped(l, request_id, 1);
    }
    put(l, ": ", 2);
}

static void finish(line *l, const mx_log *log)
{
    l->buf[l->n++] = '\n';
    size_t off = 0;
    while (off < l->n) {
        ssize_t w = write(log->fd, l->buf + off, l->n - off);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return; /* nowhere to report a failed log write */
        off += (size_t)w;
    }
}

static void put_fields(line *l, const mx_log_field *f, int n)
{
    for (int i = 0; i < n; i++) {
        char num[40];
        put(l, " ", 1);
        puts_(l, f[i].key);
        put(l, "=", 1);
        if (f[i].str) {
            put_value(l, f[i].str);
        } else {
            int k = f[i].is_real ? snprintf(num, sizeof num, "%.1f", f[i].real)
                                 : snprintf(num, sizeof num, "%lld", (long long)f[i].num);
            put(l, num, (size_t)k);
        }
    }
}

void mx_log_event(const mx_log *log, mx_log_level level, const char *request_id, const char *msg,
                  const mx_log_field *fields, int n_fields)
{
    if (!mx_log_enabled(log, level))
        return;
    line l;
    begin(&l, log, level, request_id);
    put_escaped(&l, msg, 0);
    put_fields(&l, fields, n_fields);
    finish(&l, log);
}

void mx_logf(const mx_log *log, mx_log_level level, const char *request_id, const char *fmt, ...)
{
    if (!mx_log_enabled(log, level))
        return;
    char msg[MX_LOG_LINE_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    mx_log_event(log, level, request_id, msg, NULL, 0);
}

void mx_log_access(const mx_log *log, const char *method, const char *status, int64_t prompt_tokens,
                   int64_t generated_tokens, double latency_ms, const char *request_id)
{
    mx_log_field f[] = {MX_LOG_STR("method", method), MX_LOG_STR("status", status),
                        MX_LOG_INT("prompt_tokens", prompt_tokens), MX_LOG_INT("generated_tokens", generated_tokens),
                        MX_LOG_REAL("latency_ms", latency_ms)};
    mx_log_event(log, MX_LOG_INFO, request_id, "access", f, (int)(sizeof f / sizeof f[0]));
}
