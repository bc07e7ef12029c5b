/* openai_http.h - the gateway's OpenAI-compatible HTTP API (gateway.http_listen): POST
 * /v1/completions and /v1/chat/completions (plain JSON or server-sent events), GET /v1/models
 * and GET /health, served by libmicrohttpd with a thread per connection. Requests go through
 * gw_validate and the same gw_scheduler as the gRPC API; a client that disconnects cancels its
 * request, which releases its sequence on every stage. */
#ifndef MX_GW_OPENAI_HTTP_H
#define MX_GW_OPENAI_HTTP_H

#include <stdint.h>

#include "core/error.h"
#include "generation_rpc.h"
#include "pipeline_health.h"

typedef struct gw_openai_http gw_openai_http;

/* Binds cfg->http_listen ("host:port", port 0 picks one), writes the bound port to
 * cfg->http_port_file when set, and starts serving. g (and what it points to) and *health
 * (filled in by gw_pipeline_health_attach, may stay NULL: /health is then 503) must outlive the
 * server; *health is read only until gw_openai_http_drain. */
int gw_openai_http_start(const gw_generation_ctx *g, gw_pipeline_health *const *health, gw_openai_http **out,
                         mx_error *err);

/* The bound port. */
int gw_openai_http_port(const gw_openai_http *h);

/* Drain begins: new generation requests and /health answer 503; requests in flight go on.
 * Idempotent; NULL is fine. */
void gw_openai_http_drain(gw_openai_http *h);

/* Waits until the requests in flight end or drain_ms after gw_openai_http_drain (called here if
 * it was not) has passed, cancels those left, closes every connection and frees h. Must be
 * called before the scheduler is destroyed. NULL is fine. */
void gw_openai_http_stop(gw_openai_http *h);

#endif
