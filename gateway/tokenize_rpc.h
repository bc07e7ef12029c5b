/* tokenize_rpc.h - the gateway's Tokenize and Detokenize handlers (mx.v1.Generation): text or
 * a chat to ids with the served tokenizer and template, and ids back to text. They never touch
 * the cluster. Without a tokenizer both answer UNIMPLEMENTED naming the missing file. */
#ifndef MX_GW_TOKENIZE_RPC_H
#define MX_GW_TOKENIZE_RPC_H

#include <stddef.h>
#include <stdint.h>

#include "core/log.h"
#include "core/rpc/server.h"
#include "text.h"

typedef struct gw_tokenize_ctx {
    const gw_text *text;
    int32_t bos_id;           /* prepended when add_special_tokens; -1 = the model has none */
    const mx_log *log;        /* access lines (core/log.h); NULL = none */
} gw_tokenize_ctx;

/* user is a gw_tokenize_ctx that outlives the server. */
void gw_on_tokenize(mx_rpc_call *call, const uint8_t *req, size_t len, void *user);
void gw_on_detokenize(mx_rpc_call *call, const uint8_t *req, size_t len, void *user);

#endif
