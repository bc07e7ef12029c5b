/* generation_rpc.h - the public mx.v1.Generation handlers of the gateway: Generate
 * (streaming), Complete and ModelInfo over the scheduler, plus registering them (and
 * tokenize_rpc.h's Tokenize/Detokenize) on a server. Handlers only: start-up is main.c's. */
#ifndef MX_GW_GENERATION_RPC_H
#define MX_GW_GENERATION_RPC_H

#include <stddef.h>
#include <stdint.h>

#include "core/config.h"
#include "core/rpc/server.h"
#include "gw_config.h"
#include "scheduler.h"
#include "text.h"
#include "core/log.h"
#include "tokenize_rpc.h"
#include "validate.h"

/* What the handlers read; everything outlives the server. */
typedef struct gw_generation_ctx {
    const gw_config *cfg;
    const mx_config *model;      /* the model's config.json */
    const gw_limits *lim;        /* request limits (validate.h) */
    gw_scheduler *sched;
    const gw_text *text;
    struct gw_metrics *metrics;  /* NULL = none (gw_metrics.h) */
    const mx_log *log;           /* access lines (core/log.h); NULL = none */
} gw_generation_ctx;

/* user is a gw_generation_ctx. */
void gw_on_generate(mx_rpc_call *call, const uint8_t *req, size_t len, void *user);
void gw_on_complete(mx_rpc_call *call, const uint8_t *req, size_t len, void *user);
void gw_on_model_info(mx_rpc_call *call, const uint8_t *req, size_t len, void *user);

/* Registers the five mx.v1.Generation methods on srv (before mx_rpc_server_start). */
int gw_add_methods(gw_generation_ctx *g, gw_tokenize_ctx *tok, mx_rpc_server *srv, mx_error *err);

#endif
