/* stage.h - one pipeline stage of the cluster: a contiguous layer range of the model, the
 * per-sequence state of every live sequence, and the AttentionStage RPC methods over them
 * (protobuf in, protobuf out). Binding them to a server is stage_rpc.c's business; the
 * process around it (signals, drain) is the service skeleton's (core/rpc/service.h). */
#ifndef MX_ATTN_STAGE_H
#define MX_ATTN_STAGE_H

#include <stddef.h>
#include <stdint.h>

#include "core/error.h"
#include "core/rpc/payload.h"
#include "core/rpc/server.h"
#include "stage_config.h"

typedef struct stage stage;

/* Loads the layers of cfg (attention, norms and gates; embedding on the first stage, final
 * norm + lm_head on the last; experts only when no "experts" group routes them elsewhere),
 * and connects the router. cfg is borrowed for the call only. */
int stage_create(const stage_config *cfg, stage **out, mx_error *err);
void stage_destroy(stage *s);

/* AttentionStage methods: request bytes in, packed response out (a payload the RPC layer
 * frees). Failures return an mx_code whose gRPC mapping is the answer: MX_EINVAL for bad
 * input (named), MX_ENOMEM when the live-sequence cap is hit, MX_ENOTFOUND for an unknown
 * sequence. Thread-safe: batches compute one at a time, but a batch waiting for the next
 * stage does not block the next one. timeout_ms bounds the call to the next stage (< 0 =
 * none); a failure there comes back with this stage and the next one named, its code kept. */
int stage_run_batch(stage *s, const uint8_t *req, size_t len, int64_t timeout_ms, mx_rpc_payload *resp,
                    mx_error *err);
int stage_release(stage *s, const uint8_t *req, size_t len, mx_rpc_payload *resp, mx_error *err);
int stage_info(stage *s, const uint8_t *req, size_t len, mx_rpc_payload *resp, mx_error *err);

/* Drain (the skeleton's drain_wait, on SIGTERM): from now on a RunBatch that would create a
 * sequence has it refused (per sequence, RESOURCE_EXHAUSTED at the gateway, the message says
 * the stage is draining), while live sequences keep running and Release keeps working.
 * Returns once no sequence is live (released, failed, or past its lease) or mx_now_ms()
 * reaches deadline_ms. */
void stage_drain_wait(stage *s, double deadline_ms);

/* Stage health ("can serve"): with remote experts, a thread sets srv's health of
 * MX_STAGE_SERVICE every 250 ms to NOT_SERVING while a shard of this stage's layers has no
 * live replica (the router's view) and back to SERVING when all have one. No thread without
 * remote experts. stage_stop_health stops it (idempotent; before srv goes away). */
int stage_watch_health(stage *s, mx_rpc_server *srv, mx_error *err);
void stage_stop_health(stage *s);

/* The stage's Prometheus registry (stage_metrics.h), for the skeleton's /metrics. */
struct mx_metrics *stage_metrics_reg(stage *s);

/* The stage's router (NULL when its experts are local): Info adds its expert load. */
struct mx_router *stage_router(stage *s);

/* Tests only (as the config key test_fail_expert_call_once_at_layer): the next MoE call of
 * `layer` fails with MX_EUNAVAILABLE, once, in the middle of whichever RunBatch makes it. */
void stage_test_fail_expert_once(stage *s, int layer);

#endif
