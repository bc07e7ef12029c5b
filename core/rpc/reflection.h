/* reflection.h - gRPC server reflection (grpc.reflection.v1 and v1alpha ServerReflection,
 * the protocol grpcurl and other generic clients speak) as an add-on every mx server carries:
 * it lists the services registered on the server and answers with the FileDescriptorProtos of
 * the project's .proto files, embedded in libmx at build time (proto/module.mk). */
#ifndef MX_RPC_REFLECTION_H
#define MX_RPC_REFLECTION_H

#include "server.h"

/* Adds /grpc.reflection.v1.ServerReflection/ServerReflectionInfo and the v1alpha twin to srv
 * (before _start). list_services answers the services of every method registered on srv when
 * the request comes (the service's own, grpc.health.v1.Health, reflection itself), so attach
 * order does not matter. Symbols (services, methods, messages, fields, enums, enum values) and
 * file names resolve to their file plus its imports; extensions: mx declares none (a known
 * message type gets an empty list, anything else NOT_FOUND). Each stream holds a worker while
 * open; one idle for 30 s, or open when a shutdown begins, is ended.
 * Returns 0, MX_EINVAL (after start, attached twice), MX_EFORMAT (the embedded descriptor set
 * is broken: a build bug), MX_ENOMEM. */
int mx_rpc_reflection_attach(mx_rpc_server *srv, mx_error *err);

#endif
