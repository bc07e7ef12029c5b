/* micro_batch.h - one micro-batch of the gateway's pipeline: the slices of some running
 * requests (a prompt chunk or one decode token each), sent as a RunBatch to the first stage
 * (each stage forwards it to its `next`, so the hidden states never come back here), and the
 * sampled tokens handed back to the requests. Which requests are
 * eligible, and when, is scheduler.c's business; how one step's token budget is shared
 * among them is gw_micro_batch_fill's. */
#ifndef MX_GW_MICRO_BATCH_H
#define MX_GW_MICRO_BATCH_H

#include "core/config.h"
#include "core/rpc/client.h"
#include "gw_config.h"
#include "mx/internal/v1/attention_stage.pb-c.h"
#include "request.h"

typedef struct gw_micro_batch {
    int cap, n;
    uint64_t batch_id;
    gw_request **members;                       /* [cap], each with a reference held */
    Mx__Internal__V1__SequenceInput *inputs;    /* [cap] */
    Mx__Internal__V1__SequenceInput **inptrs;   /* [cap] */
    Mx__Internal__V1__StageSampling *samp;      /* [cap] */
    /* Set by the scheduler: every stage says its steps are atomic (Info), so a RunBatch that
     * failed UNAVAILABLE changed nothing and gw_micro_batch_run sends it again (every
     * 250 ms, for up to retry_ms) once the cause may be gone. */
    bool retry_atomic;
    int64_t retry_ms;
    int retries;                                /* attempts beyond the first, last run */
    /* result of gw_micro_batch_run */
    int rc;
    mx_error err;
    Mx__Internal__V1__RunBatchResponse *resp;
    uint64_t *refused;                          /* [cap] sequences a stage's KV budget refused */
    int n_refused;
    char refused_msg[MX_ERROR_MSG_MAX];
} gw_micro_batch;

int gw_micro_batch_init(gw_micro_batch *b, int cap, mx_error *err);
void gw_micro_batch_free(gw_micro_batch *b);

/* Adds r's next slice: the rest of its prompt up to *budget tokens (nothing when *budget is
 * 0: returns false), or its last sampled token. Decode tokens always go in and still count
 * against *budget. Takes a reference and marks r in flight and on the stages. */
bool gw_micro_batch_add(gw_micro_batch *b, gw_request *r, int *budget);

/* How one step's tokens are shared among its requests (gw_micro_batch_fill). */
typedef struct gw_step_limits {
    int max_step_tokens;   /* tokens a step carries (gateway.max_step_tokens) */
    /* > 0: the prompt work a step may carry next to decodes, in tokens at short context
     * (gateway.max_prefill_tokens_with_decodes); 0 = prompts share max_step_tokens */
    int prefill_cap;
    /* the context at which a prompt token's softmax attention costs as much as the rest of
     * its work (gw_attn_context_tokens): under prefill_cap, a token at position P counts
     * 1 + P / attn_tokens, so a chunk deep into a long prompt is shorter; 0 = not weighted */
    int64_t attn_tokens;
} gw_step_limits;

/* attn_tokens of gw_step_limits for a model: its per-token work outside softmax attention
 * (projections, lightning attention, the top-k experts) over the work of attending to one
 * more key in its softmax layers, both in flops; 0 when it has no softmax layer. */
int64_t gw_attn_context_tokens(const mx_config *model);

/* Fills b for one step from the n eligible requests (oldest first; the array is reordered),
 * at most `target` of them. Decode tokens go first (one token of max_step_tokens each);
 * when a prompt waits, decodes leave it at least one seat. The prompts then share what is
 * left of max_step_tokens, and at most lim->prefill_cap of it (weighted by position, see
 * gw_step_limits) when that is set: shortest remainder first, each taking at most an equal
 * share of what is left, so a short prompt finishes in one step and a long one never takes
 * more than its share; when decodes used up the budget the oldest prompt still gets
 * max_step_tokens / 8 (at most prefill_cap; at least 1 token), so prefill never starves
 * behind a large decode batch. The scheduler sets prefill_cap while any request decodes and
 * leaves it 0 (the whole max_step_tokens) when none does. */
void gw_micro_batch_fill(gw_micro_batch *b, gw_request **eligible, int n, int target, const gw_step_limits *lim);

/* Runs the batch through the pipeline (blocking); fills rc/err/resp. Only reads the
 * members, which the scheduler leaves alone while the batch is in flight. */
void gw_micro_batch_run(gw_micro_batch *b, const gw_config *cfg, mx_rpc_channel *const *stages);

/* Hands the sampled tokens (or the error) to the members (those a stage's KV budget refused
 * end with RESOURCE_EXHAUSTED), clears their in-flight mark and empties the batch for reuse.
 * Members that got a token are appended to woken[*n_woken] (room for the batch's members)
 * with the batch's reference: their handlers are not woken yet, the caller wakes them
 * (gw_request_wake) and drops the reference once the next step is on its way. The batch's
 * references to the other members are dropped here. */
void gw_micro_batch_deliver(gw_micro_batch *b, double now_ms, gw_request **woken, int *n_woken);

#endif
