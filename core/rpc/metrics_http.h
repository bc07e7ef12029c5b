/* metrics_http.h - the /metrics endpoint of a service: a small HTTP server (libmicrohttpd,
 * its own thread) answering GET /metrics with the registry's Prometheus text and 404 for
 * anything else. The service skeleton (service.c) starts it when the config has
 * metrics_listen and stops it at close. */
#ifndef MX_RPC_METRICS_HTTP_H
#define MX_RPC_METRICS_HTTP_H

#include "../error.h"
#include "../metrics.h"

typedef struct mx_metrics_http mx_metrics_http;

/* Listens on address ("host:port", "[v6]:port"; port 0 picks a free one) and serves m (borrowed:
 * it must outlive the server). Errors name the address. */
int mx_metrics_http_start(const char *address, mx_metrics *m, mx_metrics_http **out, mx_error *err);
/* The bound port. */
int mx_metrics_http_port(const mx_metrics_http *h);
/* Stops the server (requests in progress end first) and frees it; NULL is a no-op. */
void mx_metrics_http_stop(mx_metrics_http *h);

#endif
