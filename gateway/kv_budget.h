/* kv_budget.h - what the gateway knows about the stages' KV caches (from AttentionStage/Info)
 * and the bookkeeping of admission: each admitted request reserves, on every stage, the KV
 * bytes of its whole sequence (prompt + max_new_tokens, whole pages), and a request is only
 * admitted while its reservation fits every stage's budget. Arithmetic and one fetch; the
 * scheduler owns the locking and the policy. */
#ifndef MX_GW_KV_BUDGET_H
#define MX_GW_KV_BUDGET_H

#include <stdbool.h>
#include <stdint.h>

#include "core/error.h"
#include "core/kv_cache.h"
#include "core/rpc/client.h"
#include "gw_config.h"
#include "request.h"

typedef struct gw_stage_kv {
    int softmax_layers;
    mx_kv_dtype dtype;
    uint64_t budget_bytes;     /* 0 = the stage enforces no budget */
    int64_t tokens_fit;        /* longest sequence on the empty stage; INT64_MAX = no limit */
    uint64_t reserved_bytes;   /* sum over admitted requests */
    int64_t lease_ms;          /* the stage expires sequences idle this long; 0 = never (Info) */
    bool atomic_steps;         /* a failed RunBatch changed nothing: it may be sent again (Info) */
} gw_stage_kv;

typedef struct gw_kv {
    int n_stages;
    int kv_heads, head_dim;    /* from the model's config.json */
    gw_stage_kv st[GW_MAX_STAGES];
} gw_kv;

/* Asks every stage for Info at once (timeout_ms for all) and fills kv's per-stage numbers,
 * keeping reserved_bytes (recompute them with gw_kv_bytes if the numbers changed). Errors
 * name the stage. */
int gw_kv_fetch(gw_kv *kv, mx_rpc_channel *const *stages, const gw_config *cfg, int64_t timeout_ms, mx_error *err);

/* Bytes a sequence of `tokens` tokens takes on stage i (whole pages over its softmax layers). */
uint64_t gw_kv_bytes(const gw_kv *kv, int i, int64_t tokens);

/* The longest sequence that fits every stage when empty (INT64_MAX = no KV limit), and the
 * stage that sets it (-1 when none does). */
int64_t gw_kv_tokens_fit(const gw_kv *kv, int *stage);

/* Whether a sequence of `tokens` fits next to what is reserved now, on every stage. */
bool gw_kv_fits_now(const gw_kv *kv, int64_t tokens);

/* MX_ENOMEM (RESOURCE_EXHAUSTED) when `tokens` (prompt + max_new_tokens) would not fit even
 * on empty stages, saying how many tokens fit and naming the stage that limits; 0 otherwise. */
int gw_kv_check_ever(const gw_kv *kv, int64_t tokens, mx_error *err);

/* Adds (sign = +1) or removes (-1) the reservation of a `tokens`-token sequence. */
void gw_kv_reserve(gw_kv *kv, int64_t tokens, int sign);

/* Admission order over the n queued requests (oldest first), at most `room` admitted: a
 * request goes in when its reservation (prompt + max_new tokens) fits next to those already
 * made. One that does not fit yet does not block the smaller ones behind it, which go ahead
 * while they fit; each one that does counts as an overtake of every request it passed
 * (r->kv_overtaken), and once a waiting request has been overtaken max_overtakes times no
 * one passes it any more, so the running requests drain until it fits (it fits on empty
 * stages: gw_kv_check_ever turned it away otherwise). Sets take[i], reserves the admitted
 * requests' KV (r->kv_tokens) and returns how many were admitted. */
int gw_kv_admit(gw_kv *kv, gw_request *const *queue, int n, int room, int max_overtakes, bool *take);

#endif
