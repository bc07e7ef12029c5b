/* status.c - mapping between mx error classes and gRPC status codes.
 * Pure functions: no state, no I/O. */
#include "status.h"

#include <stdio.h>

grpc_status_code mx_rpc_status_from_code(mx_code code)
{
    switch (code) {
    case MX_OK: return GRPC_STATUS_OK;
    case MX_EINVAL: return GRPC_STATUS_INVALID_ARGUMENT;
    case MX_EFORMAT: return GRPC_STATUS_INVALID_ARGUMENT;
    case MX_EIO: return GRPC_STATUS_INTERNAL;
    case MX_ENOTFOUND: return GRPC_STATUS_NOT_FOUND;
    case MX_ENOMEM: return GRPC_STATUS_RESOURCE_EXHAUSTED;
    case MX_EUNSUPPORTED: return GRPC_STATUS_UNIMPLEMENTED;
    case MX_ERANGE: return GRPC_STATUS_OUT_OF_RANGE;
    case MX_EDEVICE: return GRPC_STATUS_UNAVAILABLE;
    case MX_ECANCELLED: return GRPC_STATUS_CANCELLED;
    case MX_ETIMEOUT: return GRPC_STATUS_DEADLINE_EXCEEDED;
    case MX_EUNAVAILABLE: return GRPC_STATUS_UNAVAILABLE;
    case MX_EINTERNAL: return GRPC_STATUS_INTERNAL;
    }
    return GRPC_STATUS_UNKNOWN;
}

mx_code mx_rpc_code_from_status(grpc_status_code status)
{
    switch (status) {
    case GRPC_STATUS_OK: return MX_OK;
    case GRPC_STATUS_CANCELLED: return MX_ECANCELLED;
    case GRPC_STATUS_INVALID_ARGUMENT: return MX_EINVAL;
    case GRPC_STATUS_FAILED_PRECONDITION: return MX_EINVAL;
    case GRPC_STATUS_DEADLINE_EXCEEDED: return MX_ETIMEOUT;
    case GRPC_STATUS_NOT_FOUND: return MX_ENOTFOUND;
    case GRPC_STATUS_RESOURCE_EXHAUSTED: return MX_ENOMEM;
    case GRPC_STATUS_UNIMPLEMENTED: return MX_EUNSUPPORTED;
    case GRPC_STATUS_OUT_OF_RANGE: return MX_ERANGE;
    case GRPC_STATUS_UNAVAILABLE: return MX_EUNAVAILABLE;
    case GRPC_STATUS_ABORTED: return MX_EUNAVAILABLE;
    default: return MX_EINTERNAL;
    }
}

const char *mx_rpc_status_name(grpc_status_code code)
{
    static const char *const names[] = {
        "OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
        "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION",
        "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS",
        "UNAUTHENTICATED",
    };
    if ((int)code >= 0 && (size_t)code < sizeof names / sizeof names[0])
        return names[code];
    return "UNKNOWN_STATUS";
}

int mx_rpc_status_to_error(const mx_rpc_status *st, const char *what, mx_error *err)
{
    if (st->code == GRPC_STATUS_OK)
        return MX_OK;
    return mx_fail(err, mx_rpc_code_from_status(st->code), "%s: %s: %s", what ? what : "rpc",
                   mx_rpc_status_name(st->code), st->message);
}
