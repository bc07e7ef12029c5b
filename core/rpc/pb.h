/* pb.h - protobuf-c messages over the RPC layer: pack a message into a payload to send,
 * unpack received bytes with a clear INVALID_ARGUMENT-class error for malformed input
 * (protobuf-c validates every length and tag, so bad bytes never crash). */
#ifndef MX_RPC_PB_H
#define MX_RPC_PB_H

#include <protobuf-c/protobuf-c.h>

#include "../error.h"
#include "payload.h"
#include "server.h"

/* Packs msg into a malloc'd buffer handed over without a further copy (out->release frees
 * it). Returns 0 or MX_ENOMEM. */
int mx_rpc_pb_pack(const ProtobufCMessage *msg, mx_rpc_payload *out, mx_error *err);

/* Unpacks len bytes as a message of type desc. On success *out is owned by the caller and
 * freed with protobuf_c_message_free_unpacked(*out, NULL). Malformed bytes give MX_EINVAL
 * ("malformed mx.v1.GenerateRequest message (N bytes)"), which handlers pass to
 * mx_rpc_call_set_error to answer INVALID_ARGUMENT. */
int mx_rpc_pb_unpack(const ProtobufCMessageDescriptor *desc, const uint8_t *data, size_t len,
                     ProtobufCMessage **out, mx_error *err);

/* Packs msg and writes it on call (see mx_rpc_call_write). */
int mx_rpc_pb_write(mx_rpc_call *call, const ProtobufCMessage *msg, mx_error *err);

#endif
