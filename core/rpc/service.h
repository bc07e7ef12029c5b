/* service.h - the one skeleton every mx service process runs: command line (--config,
 * --check-config, --help), malloc tuning, stop signals, config, loading, server + health,
 * port file, readiness, and a graceful drain on SIGTERM/SIGINT. A service supplies its config
 * reader and a few callbacks; its main() is one call to mx_service_main.
 *
 * Start-up: parse args -> tune malloc, block stop signals (before any thread) -> load the
 * config (--check-config stops here: exit 0, or 2 with the error) -> open (load the model;
 * may wait for peers) -> create the server, attach health and
 * reflection, register methods -> start ->
 * health_service SERVING -> port file -> the "serving" log line -> wait for a stop signal.
 * Drain: health NOT_SERVING everywhere, (drain_wait: the service's own work finishes while
 * calls are still accepted), no new calls, calls in flight may finish for what is left of
 * drain_ms, then the rest are cancelled; close; exit 0. Any failure: an error log line, exit 1.
 * This is the process's main: it owns the process's logger (core/log.h; level from MX_LOG_LEVEL,
 * else the config's log_level) and hands it to open; only the logger writes to stderr. */
#ifndef MX_RPC_SERVICE_H
#define MX_RPC_SERVICE_H

#include <stddef.h>
#include <stdint.h>

#include "../error.h"
#include "../log.h"
#include "server.h"

/* Where and how the service listens, read from its config by the `listen` callback. */
typedef struct mx_service_listen {
    mx_rpc_server_options server;  /* address, limits, workers */
    const char *health_service;    /* set SERVING once started (e.g. MX_STAGE_SERVICE) */
    const char *port_file;         /* NULL or "" = none */
    int64_t drain_ms;              /* graceful drain on a stop signal */
    /* Prometheus: with metrics_listen ("host:port", port 0 = pick one; NULL or "" = off) the
     * skeleton serves GET /metrics from `metrics` (the service's registry, owned by its state)
     * once the server started, prints "<name>: metrics on port N", writes N to
     * "<port_file>.metrics" when there is a port file, and stops it before close. */
    const char *metrics_listen;
    struct mx_metrics *metrics;
} mx_service_listen;

typedef struct mx_service_def {
    const char *name;              /* "gateway": usage, log prefix */
    const char *about;             /* one line for --help */
    size_t config_size;            /* the config struct the skeleton stores for the callbacks */
    /* Reads and fully checks the file (unknown keys included) without loading the model.
     * config_free is called after load, also after a failed load. */
    int (*config_load)(const char *path, void *config, mx_error *err);
    void (*config_free)(void *config);
    /* Optional: the config's log_level (NULL or "" = info); MX_LOG_LEVEL overrides it. */
    const char *(*log_level)(const void *config);
    /* Loads what the service serves. MX_ECANCELLED = a stop signal came while waiting (exit 0).
     * log is the process's logger: it outlives state, so the service may keep the pointer. */
    int (*open)(const void *config, const mx_log *log, void **state, mx_error *err);
    void (*close)(void *state);
    void (*listen)(const void *config, const void *state, mx_service_listen *out);
    int (*add_methods)(void *state, mx_rpc_server *srv, mx_error *err);
    /* Optional: stops the service's own threads that use the server (e.g. one that sets its
     * health), called once the stop signal came, before the drain, and again before the
     * server is destroyed (so it must be idempotent). */
    void (*stop_watchers)(void *state);
    /* Optional: on a stop signal, after health turned NOT_SERVING and while the server still
     * accepts calls, waits until the service's own work in flight is done (e.g. streams made of
     * many calls) or mx_now_ms() reaches deadline_ms. Its time counts against drain_ms; what is
     * left still bounds the server's shutdown. NULL: the server stops accepting at once. */
    void (*drain_wait)(void *state, double deadline_ms);
    /* The "serving" line's text after "<name>: " (port is the bound port). */
    void (*ready_line)(const void *config, const void *state, int port, char *buf, size_t cap);
} mx_service_def;

/* Runs the service; returns the process exit code (0, 1 failure, 2 usage / bad config). */
int mx_service_main(const mx_service_def *def, int argc, char **argv);

#endif
