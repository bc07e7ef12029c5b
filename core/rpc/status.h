/* status.h - gRPC status codes at the mx service edge, and the mx_code <-> status mapping.
 * The one place that decides which gRPC code an mx error becomes (and back, for clients).
 * Holds no state and does no I/O. */
#ifndef MX_RPC_STATUS_H
#define MX_RPC_STATUS_H

#include <grpc/status.h>

#include "../error.h"

/* The final status of a call as the client sees it (or a server handler sets it). */
typedef struct mx_rpc_status {
    grpc_status_code code;           /* GRPC_STATUS_OK on success */
    char message[MX_ERROR_MSG_MAX];  /* details, "" when OK */
} mx_rpc_status;

/* mx error class -> gRPC status code (MX_OK -> GRPC_STATUS_OK). */
grpc_status_code mx_rpc_status_from_code(mx_code code);

/* gRPC status code -> mx error class (GRPC_STATUS_OK -> MX_OK), for clients that turn a
 * failed call into an mx_error. */
mx_code mx_rpc_code_from_status(grpc_status_code status);

/* Fills err from a non-OK status ("<what>: <status name>: <message>") and returns the mapped
 * mx_code; returns MX_OK and leaves err alone when st is OK. */
int mx_rpc_status_to_error(const mx_rpc_status *st, const char *what, mx_error *err);

/* Upper-case canonical name of a gRPC status code ("UNAVAILABLE"). */
const char *mx_rpc_status_name(grpc_status_code code);

#endif
