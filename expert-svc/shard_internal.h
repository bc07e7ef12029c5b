/* shard_internal.h - the expert shard's private state, shared by shard.c (loading) and
 * shard_rpc.c (the handlers). Not for use outside expert-svc/. */
#ifndef MX_EXPERT_SHARD_INTERNAL_H
#define MX_EXPERT_SHARD_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>

#include "core/model.h"
#include "shard.h"
#include "shard_metrics.h"

struct mx_expert_shard {
    int shard_index;
    mx_config cfg;
    unsigned char *mask;        /* [layers * experts], 1 = held */
    int n_held;
    mx_weights *weights;
    mx_backend *be;
    mx_model *model;
    uint64_t weight_bytes;
    mx_dtype weight_dtype;
    /* Backends are not re-entrant (one thread pool / stream); calls compute one at a time,
     * each already using every core. */
    pthread_mutex_t compute_lock;
    /* Load accounting for Info: relaxed atomics, updated once per call without a lock. */
    atomic_ullong calls_total, rows_total;
    atomic_int in_flight;
    atomic_ullong *expert_rows;  /* [layers * experts] rows computed per pair */
    shard_metrics *metrics;      /* Prometheus (shard_metrics.h) */
};

#endif
