/* pipeline_health.h - the gateway's health means "can serve": a watcher thread asks every
 * stage's grpc.health.v1 Check (service mx.internal.v1.AttentionStage) every interval and sets
 * the gateway's own mx.v1.Generation status NOT_SERVING while any stage is not SERVING:
 * answers NOT_SERVING, refuses the connection, or has left two checks in a row unanswered
 * (one late answer from a busy stage is not an outage); SERVING again once all are. "" (liveness) is left alone, so a gateway waiting for
 * its stages is not restarted. During a drain the health add-on ignores the watcher. */
#ifndef MX_GW_PIPELINE_HEALTH_H
#define MX_GW_PIPELINE_HEALTH_H

#include <stdint.h>

#include "core/error.h"
#include "core/rpc/server.h"

typedef struct gw_pipeline_health gw_pipeline_health;

/* Starts watching the n stage addresses before srv starts (srv must have health attached).
 * The server owns the watcher: it stops when a shutdown begins (so the drain's NOT_SERVING
 * stays) and is freed with the server. interval_ms <= 0 = 500. *out (may be NULL) is for
 * tests, valid until the server is destroyed. Returns 0, MX_ENOMEM, MX_EINVAL (server
 * started or out of hooks), or a channel error. */
int gw_pipeline_health_attach(const char (*stages)[256], int n, mx_rpc_server *srv, int interval_ms,
                              gw_pipeline_health **out, mx_error *err);

/* 1 when the last round found every stage SERVING, 0 when not, -1 before the first round. */
int gw_pipeline_health_ok(gw_pipeline_health *w);

#endif
