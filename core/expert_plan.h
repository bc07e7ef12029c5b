/* expert_plan.h - expert placement planner (after DeepSeek's EPLB): from measured per-expert
 * load, decides which experts each expert shard holds (a hot expert may be held by several
 * shards) and how many replicas each shard gets, to minimise the load of the busiest replica.
 * Pure arithmetic: no I/O, no model.
 *
 * Steps (each greedy step is the one EPLB uses):
 * 1. Copies: every expert once, then each spare slot (shards x slots - experts) goes to the
 *    expert with the highest load per copy (at most one copy per shard).
 * 2. Packing: copies in descending load-per-copy order, each into the shard with a free slot,
 *    not holding that expert yet, whose load per replica grows least (EPLB's least-loaded
 *    shard when replica counts are equal).
 * 3. Replicas: every shard one, each further replica to the shard with the highest load per
 *    replica (optimal for this min-max problem).
 * Steps 1-3 are tried with every number of extra copies (none up to every spare slot), and
 * steps 2-3 run a few rounds, each packing with the replica counts the previous round chose;
 * the contiguous split (shard s holds experts [s*N/S, (s+1)*N/S)) with step 3's replicas
 * is a candidate too: the best is returned (ties: the contiguous split, then fewer copies,
 * then the earlier round), so the plan's busiest replica is never more loaded than the contiguous split's with
 * its replicas spread evenly. Load of an expert held by c shards counts load/c on each (the
 * router balances between holders). */
#ifndef MX_EXPERT_PLAN_H
#define MX_EXPERT_PLAN_H

#include "error.h"

typedef struct mx_expert_plan {
    int n_experts, n_shards, n_replicas;
    int slots;                 /* most experts one shard holds */
    int *n_held;               /* [n_shards] experts held by each shard */
    int *held;                 /* [n_shards * slots] expert ids, ascending within a shard */
    int *replicas;             /* [n_shards] replicas of each shard (sum n_replicas) */
    int *copies;               /* [n_experts] shards holding each expert (>= 1) */
    double *shard_load;        /* [n_shards] load the shard is expected to take */
    double max_per_replica;    /* max over shards of shard_load / replicas */
    double mean_per_replica;   /* total load / n_replicas */
} mx_expert_plan;

/* The planned placement. load[e] >= 0 (e.g. routed tokens summed over layers);
 * n_replicas >= n_shards >= 1, n_shards <= n_experts; max_per_shard = 0 means
 * ceil(n_experts / n_shards), else it must be in [ceil(n_experts / n_shards), n_experts].
 * *out is owned by the caller: mx_expert_plan_free (also after a failure). */
int mx_expert_plan_make(const double *load, int n_experts, int n_shards, int n_replicas, int max_per_shard,
                        mx_expert_plan *out, mx_error *err);

/* The baseline: contiguous split, replicas spread evenly (the first n_replicas % n_shards
 * shards get one more), as `mx cluster --replicas` lays out a uniform tier. */
int mx_expert_plan_contiguous(const double *load, int n_experts, int n_shards, int n_replicas,
                              mx_expert_plan *out, mx_error *err);

void mx_expert_plan_free(mx_expert_plan *p);

#endif
