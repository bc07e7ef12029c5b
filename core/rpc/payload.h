/* payload.h - message bytes going into and coming out of the RPC layer.
 * A payload to send either is copied (release == NULL) or is handed over without a copy
 * (release != NULL: gRPC sends straight from that memory and calls release when done). */
#ifndef MX_RPC_PAYLOAD_H
#define MX_RPC_PAYLOAD_H

#include <stddef.h>
#include <stdint.h>

/* Bytes to send. With release == NULL the bytes are copied before the sending function
 * returns, so the caller may reuse them. With release != NULL ownership passes to the RPC
 * layer even on failure: it calls release(release_ctx) exactly once, on any thread, after
 * gRPC no longer needs the bytes (possibly after the sending function returned). Use that
 * for multi-MiB tensors (e.g. release = free for a malloc'd buffer). */
typedef struct mx_rpc_payload {
    const void *data;
    size_t len;
    void (*release)(void *release_ctx);
    void *release_ctx;
} mx_rpc_payload;

/* A payload that is copied: the caller keeps ownership of data. */
static inline mx_rpc_payload mx_rpc_payload_copy(const void *data, size_t len)
{
    mx_rpc_payload p = {data, len, NULL, NULL};
    return p;
}

/* A malloc'd buffer handed over without a copy; the RPC layer frees it. */
mx_rpc_payload mx_rpc_payload_take_malloced(void *data, size_t len);

/* Received message bytes (contiguous). Owned by whoever received them: free with
 * mx_rpc_bytes_free. data stays valid until then. */
typedef struct mx_rpc_bytes {
    const uint8_t *data;
    size_t len;
    void *owner; /* internal: keeps the underlying gRPC slice alive */
} mx_rpc_bytes;

/* Frees b's storage and zeroes it; safe on a zeroed or already freed value. */
void mx_rpc_bytes_free(mx_rpc_bytes *b);

#endif
