/* service.c - the service skeleton (service.h): one start-up and one shutdown for every mx
 * service process. Knows no service: everything specific comes through mx_service_def. */
#include "service.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../clock.h"
#include "health.h"
#include "metrics_http.h"
#include "reflection.h"
#include "signals.h"
#include "tune.h"

static int usage(const mx_service_def *d, FILE *f)
{
    fprintf(f, "usage: %s --config FILE | --check-config FILE\n%s\n"
               "  --config FILE        serve with this config\n"
               "  --check-config FILE  read and check the config (unknown keys included), load nothing;\n"
               "                       exit 0 when it is valid, 2 with the error otherwise\n",
            d->name, d->about);
    return f == stdout ? 0 : 2;
}

/* The metrics port next to the service's port file, in "<port_file>.metrics" (written before
 * the port file, so a reader that saw the port file finds it), atomically by rename. */
static int write_metrics_port(const char *port_file, int port, mx_error *err)
{
    char path[4200], tmp[4210];
    if (snprintf(path, sizeof path, "%s.metrics", port_file) >= (int)sizeof path)
        return mx_fail(err, MX_EINVAL, "port file path is too long: %s", port_file);
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *f = fopen(tmp, "w");
    if (!f)
        return mx_fail(err, MX_EIO, "cannot write the metrics port file %s", path);
    int bad = fprintf(f, "%d\n", port) < 0;
    bad |= fclose(f) != 0;
    if (bad || rename(tmp, path) != 0)
        return mx_fail(err, MX_EIO, "cannot write the metrics port file %s", path);
    return 0;
}

/* Serves until a stop signal, then drains. The server is destroyed here. */
static int serve(const mx_service_def *d, const void *config, void *state, const mx_log *log, mx_error *err)
{
    mx_service_listen l = {0};
    d->listen(config, state, &l);
    mx_rpc_server *srv = NULL;
    int rc = mx_rpc_server_create(&l.server, &srv, err);
    if (!rc)
        rc = mx_rpc_health_attach(srv, err);
    if (!rc) /* grpc.reflection.v1(alpha): lists every service registered on srv, this one included */
        rc = mx_rpc_reflection_attach(srv, err);
    if (!rc)
        rc = d->add_methods(state, srv, err);
    if (!rc)
        rc = mx_rpc_server_start(srv, err);
    if (!rc && l.health_service)
        rc = mx_rpc_health_set(srv, l.health_service, MX_RPC_SERVING, err);
    mx_metrics_http *mh = NULL;
    if (!rc && l.metrics_listen && l.metrics_listen[0]) {
        rc = l.metrics ? mx_metrics_http_start(l.metrics_listen, l.metrics, &mh, err)
                       : mx_fail(err, MX_EINVAL, "metrics_listen is set but %s keeps no metrics", d->name);
        if (!rc && l.port_file && l.port_file[0])
            rc = write_metrics_port(l.port_file, mx_metrics_http_port(mh), err);
    }
    if (!rc && l.port_file && l.port_file[0])
        rc = mx_rpc_server_write_port_file(srv, l.port_file, err);
    if (!rc) {
        char line[512] = "";
        d->ready_line(config, state, mx_rpc_server_port(srv), line, sizeof line);
        if (mh)
            mx_logf(log, MX_LOG_INFO, NULL, "metrics on port %d", mx_metrics_http_port(mh));
        mx_logf(log, MX_LOG_INFO, NULL, "%s", line);
        int sig = mx_rpc_wait_stop_signal(-1, err);
        if (sig < 0)
            rc = sig;
        else
            mx_logf(log, MX_LOG_INFO, NULL, "signal %d, draining (up to %lld ms)", sig, (long long)l.drain_ms);
        if (d->stop_watchers)
            d->stop_watchers(state);
        int64_t grace = l.drain_ms;
        if (sig >= 0 && d->drain_wait) {
            /* clients see NOT_SERVING while calls of work already started still come in */
            double start = mx_now_ms();
            mx_error herr = {0};
            if (l.health_service)
                (void)mx_rpc_health_set(srv, l.health_service, MX_RPC_NOT_SERVING, &herr);
            (void)mx_rpc_health_set(srv, "", MX_RPC_NOT_SERVING, &herr);
            d->drain_wait(state, start + (double)l.drain_ms);
            int64_t spent = (int64_t)(mx_now_ms() - start);
            grace = spent < l.drain_ms ? l.drain_ms - spent : 0;
        }
        mx_rpc_server_shutdown(srv, grace);
    }
    if (d->stop_watchers)
        d->stop_watchers(state);
    mx_rpc_server_destroy(srv);
    mx_metrics_http_stop(mh);
    return rc;
}

int mx_service_main(const mx_service_def *d, int argc, char **argv)
{
    const char *path = NULL;
    int check = 0;
    for (int i = 1; i < argc; i++) {
        if ((!strcmp(argv[i], "--config") || !strcmp(argv[i], "--check-config")) && i + 1 < argc && !path) {
            check = !strcmp(argv[i], "--check-config");
            path = argv[++i];
        } else if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            return usage(d, stdout);
        } else {
            return usage(d, stderr);
        }
    }
    if (!path)
        return usage(d, stderr);
    mx_error err = {0};
    mx_log log; /* MX_LOG_LEVEL or info until the config says */
    if (mx_log_init(&log, d->name, NULL, &err)) {
        fprintf(stderr, "%s: %s\n", d->name, err.msg);
        return 2;
    }
    if (!check) {
        mx_rpc_tune_malloc();
        /* before any thread exists, so every thread inherits the mask */
        if (mx_rpc_block_stop_signals(&err)) {
            mx_logf(&log, MX_LOG_ERROR, NULL, "%s", err.msg);
            return 1;
        }
    }
    void *config = calloc(1, d->config_size);
    if (!config) {
        mx_logf(&log, MX_LOG_ERROR, NULL, "out of memory");
        return 1;
    }
    int rc = d->config_load(path, config, &err);
    if (!rc && d->log_level)
        rc = mx_log_init(&log, d->name, d->log_level(config), &err);
    if (rc || check) {
        if (rc && check)
            fprintf(stderr, "%s: %s\n", d->name, err.msg); /* a command's answer, not a log line */
        else if (rc)
            mx_logf(&log, MX_LOG_ERROR, NULL, "%s", err.msg);
        else
            printf("%s: %s: config OK\n", d->name, path);
        d->config_free(config);
        free(config);
        return rc ? 2 : 0;
    }
    void *state = NULL;
    rc = d->open(config, &log, &state, &err);
    if (rc == MX_ECANCELLED) {
        rc = 0; /* stopped while waiting for peers: a clean exit */
    } else if (!rc) {
        rc = serve(d, config, state, &log, &err);
    }
    if (state)
        d->close(state);
    d->config_free(config);
    free(config);
    if (rc) {
        mx_logf(&log, MX_LOG_ERROR, NULL, "%s", err.msg);
        return 1;
    }
    return 0;
}
