/* log.h - structured log lines of the service processes: one line per event,
 *   2026-12-02T19:20:31.123Z info gateway req=req-00ab: message key=value key="two words"
 * i.e. an RFC 3339 UTC timestamp with milliseconds, the level (error, warn, info, debug), the
 * service, "req=ID" when the event belongs to a request, ": ", the message, then optional
 * key=value fields (values quoted when they hold a space, '=', '"' or nothing, with '"' and '\'
 * escaped). Control characters are escaped everywhere (a newline as \n), so an event never
 * spans two lines; the message keeps its quotes as written.
 *
 * No global state: a logger is a small value the process owns. The service skeleton
 * (core/rpc/service.c) makes one per process from the service name and its config's
 * `log_level` and hands it to the service's open callback; the service keeps a pointer in its
 * state for its own threads. The level comes from the environment variable MX_LOG_LEVEL when
 * it is set (an operator's override, e.g. debug for one pod, without editing the config),
 * else from the config's `log_level`, else info.
 *
 * Each line is formatted on the stack and written with one write(2) (no allocation, no lock,
 * no stdio buffer): lines from several threads never interleave, and a line is cut at
 * MX_LOG_LINE_MAX bytes. A NULL logger drops everything, so library code that may run without
 * one (unit tests) can call these freely. Library code still returns errors through mx_error;
 * logging is for processes and for threads with no caller to return an error to. */
#ifndef MX_LOG_H
#define MX_LOG_H

#include <stdint.h>

#include "error.h"

typedef enum { MX_LOG_ERROR = 0, MX_LOG_WARN, MX_LOG_INFO, MX_LOG_DEBUG } mx_log_level;

#define MX_LOG_LINE_MAX 2048

typedef struct mx_log {
    char service[32];   /* the third column */
    mx_log_level level; /* events less severe than this are dropped */
    int fd;             /* where lines go: 2 (stderr) unless a test points it elsewhere */
} mx_log;

/* A key=value field: a string (str != NULL), else an integer, else (is_real) a number. */
typedef struct mx_log_field {
    const char *key;
    const char *str;
    int64_t num;
    double real;
    int is_real;
} mx_log_field;
#define MX_LOG_STR(k, v) ((mx_log_field){.key = (k), .str = (v) ? (v) : ""})
#define MX_LOG_INT(k, v) ((mx_log_field){.key = (k), .num = (int64_t)(v)})
#define MX_LOG_REAL(k, v) ((mx_log_field){.key = (k), .real = (double)(v), .is_real = 1})

/* "error", "warn" (or "warning"), "info", "debug", any case -> 0; else MX_EINVAL. */
int mx_log_level_parse(const char *name, mx_log_level *out, mx_error *err);
const char *mx_log_level_name(mx_log_level level);

/* A logger writing to stderr. Level: $MX_LOG_LEVEL if set and not empty, else config_level
 * (NULL or "" = info). An unknown name is MX_EINVAL naming where it came from. */
int mx_log_init(mx_log *log, const char *service, const char *config_level, mx_error *err);

/* Whether an event of this level would be written (to skip building expensive fields). */
int mx_log_enabled(const mx_log *log, mx_log_level level);

/* One event; request_id NULL or "" when the event belongs to no request. */
void mx_logf(const mx_log *log, mx_log_level level, const char *request_id, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
void mx_log_event(const mx_log *log, mx_log_level level, const char *request_id, const char *msg,
                  const mx_log_field *fields, int n_fields);

/* The access line of one public call (gRPC Generation methods, the HTTP API): an info event
 *   ... info gateway req=ID: access method=Generate status=OK prompt_tokens=12
 *       generated_tokens=64 latency_ms=812.4
 * status is the gRPC status name (OK, INVALID_ARGUMENT, ...) or an HTTP code as text; token
 * counts are -1 when the call has none (ModelInfo). */
void mx_log_access(const mx_log *log, const char *method, const char *status, int64_t prompt_tokens,
                   int64_t generated_tokens, double latency_ms, const char *request_id);

#endif
