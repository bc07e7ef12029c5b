/* health.h - the standard grpc.health.v1.Health service every mx server carries.
 * Check answers the current status of a service name ("" = the whole server, SERVING from
 * start); Watch streams it and every change. Status names are free-form, by convention the
 * full service name ("mx.v1.Generation"). On shutdown everything turns NOT_SERVING.
 * A Watch occupies a server worker while it lasts: at most worker_threads / 2 run at once,
 * more are refused with RESOURCE_EXHAUSTED (clients then poll with Check). */
#ifndef MX_RPC_HEALTH_H
#define MX_RPC_HEALTH_H

#include "server.h"

/* Values match grpc.health.v1.HealthCheckResponse.ServingStatus. */
typedef enum {
    MX_RPC_SERVING = 1,
    MX_RPC_NOT_SERVING = 2,
} mx_rpc_serving;

/* Adds the Health service to srv (before _start): Check and Watch, "" SERVING, everything
 * NOT_SERVING once a shutdown begins. Idempotent. Returns 0, MX_EINVAL after start, MX_ENOMEM. */
int mx_rpc_health_attach(mx_rpc_server *srv, mx_error *err);

/* Sets (or adds) the status of service; watchers are told. Thread-safe, any time after
 * attach. Returns 0, MX_EINVAL for a bad value or no health attached, MX_ENOMEM. */
int mx_rpc_health_set(mx_rpc_server *srv, const char *service, mx_rpc_serving status,
                      mx_error *err);

/* Waits until every Watch stream in progress has sent the current status of its service
 * (e.g. NOT_SERVING at the start of a drain), or mx_now_ms() reaches deadline_ms. Returns 1
 * when all were told (also with no health attached or no watcher), 0 at the deadline. */
int mx_rpc_health_wait_told(mx_rpc_server *srv, double deadline_ms);

#endif
