/* pb.c - protobuf-c packing and unpacking for RPC payloads. No state. */
#include "pb.h"

#include <stdlib.h>

int mx_rpc_pb_pack(const ProtobufCMessage *msg, mx_rpc_payload *out, mx_error *err)
{
    size_t len = protobuf_c_message_get_packed_size(msg);
    uint8_t *buf = malloc(len ? len : 1);
    if (!buf)
        return mx_fail(err, MX_ENOMEM, "cannot allocate %zu bytes for a %s message", len,
                       msg->descriptor->name);
    size_t packed = protobuf_c_message_pack(msg, buf);
    if (packed != len) {
        free(buf);
        return mx_fail(err, MX_EINTERNAL, "%s packed to %zu bytes, expected %zu",
                       msg->descriptor->name, packed, len);
    }
    *out = mx_rpc_payload_take_malloced(buf, len);
    return 0;
}

int mx_rpc_pb_unpack(const ProtobufCMessageDescriptor *desc, const uint8_t *data, size_t len,
                     ProtobufCMessage **out, mx_error *err)
{
    *out = protobuf_c_message_unpack(desc, NULL, len, data);
    if (!*out)
        return mx_fail(err, MX_EINVAL, "malformed %s message (%zu bytes)", desc->name, len);
    return 0;
}

int mx_rpc_pb_write(mx_rpc_call *call, const ProtobufCMessage *msg, mx_error *err)
{
    mx_rpc_payload p;
    int rc = mx_rpc_pb_pack(msg, &p, err);
    if (rc != 0)
        return rc;
    return mx_rpc_call_write(call, p, err);
}
