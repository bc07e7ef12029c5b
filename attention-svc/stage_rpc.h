/* stage_rpc.h - the AttentionStage gRPC methods (RunBatch, Release, Info) bound to a stage on
 * an RPC server. The glue between core/rpc and stage.h; no model code, no process set-up. */
#ifndef MX_ATTN_STAGE_RPC_H
#define MX_ATTN_STAGE_RPC_H

#include "core/error.h"
#include "core/rpc/server.h"
#include "stage.h"

/* Registers the three methods on srv (before mx_rpc_server_start) and starts the stage's health
 * watcher on it (stage_watch_health): call stage_stop_health before destroying srv. */
int stage_add_methods(stage *s, mx_rpc_server *srv, mx_error *err);

#endif
