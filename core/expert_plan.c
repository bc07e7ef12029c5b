/* expert_plan.c - the expert placement planner of expert_plan.h: replicate hot experts,
 * pack copies into shards, spread replicas by load; and the contiguous baseline it is
 * measured against. */
#include "expert_plan.h"

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

static int plan_alloc(mx_expert_plan *p, int n_experts, int n_shards, int n_replicas, int slots, mx_error *err)
{
    memset(p, 0, sizeof *p);
    p->n_experts = n_experts;
    p->n_shards = n_shards;
    p->n_replicas = n_replicas;
    p->slots = slots;
    p->n_held = calloc((size_t)n_shards, sizeof *p->n_held);
    p->held = malloc((size_t)n_shards * slots * sizeof *p->held);
    p->replicas = calloc((size_t)n_shards, sizeof *p->replicas);
    p->copies = calloc((size_t)n_experts, sizeof *p->copies);
    p->shard_load = calloc((size_t)n_shards, sizeof *p->shard_load);
    if (!p->n_held || !p->held || !p->replicas || !p->copies || !p->shard_load)
        return mx_fail(err, MX_ENOMEM, "expert plan: out of memory");
    return 0;
}

void mx_expert_plan_free(mx_expert_plan *p)
{
    free(p->n_held);
    free(p->held);
    free(p->replicas);
    free(p->copies);
    free(p->shard_load);
    memset(p, 0, sizeof *p);
}

static int check_args(const double *load, int n_experts, int n_shards, int n_replicas, mx_error *err)
{
    if (n_experts < 1 || n_shards < 1 || n_shards > n_experts)
        return mx_fail(err, MX_EINVAL, "expert plan: %d shards for %d experts (need 1 <= shards <= experts)",
                       n_shards, n_experts);
    if (n_replicas < n_shards)
        return mx_fail(err, MX_EINVAL, "expert plan: %d replicas for %d shards (every shard needs one)", n_replicas,
                       n_shards);
    for (int e = 0; e < n_experts; e++)
        if (!(load[e] >= 0))
            return mx_fail(err, MX_EINVAL, "expert plan: load of expert %d is %g (must be >= 0)", e, load[e]);
    return 0;
}

static int cmp_int(const void *a, const void *b)
{
    int x = *(const int *)a, y = *(const int *)b;
    return (x > y) - (x < y);
}

/* Shard loads from the placement (an expert's load split evenly over its copies) and the
 * per-replica figures. */
static void finish(const double *load, mx_expert_plan *p)
{
    double total = 0;
    for (int e = 0; e < p->n_experts; e++) {
        p->copies[e] = 0;
        total += load[e];
    }
    for (int s = 0; s < p->n_shards; s++) {
        qsort(p->held + (size_t)s * p->slots, (size_t)p->n_held[s], sizeof *p->held, cmp_int);
        for (int i = 0; i < p->n_held[s]; i++)
            p->copies[p->held[(size_t)s * p->slots + i]]++;
    }
    p->max_per_replica = 0;
    for (int s = 0; s < p->n_shards; s++) {
        p->shard_load[s] = 0;
        for (int i = 0; i < p->n_held[s]; i++) {
            int e = p->held[(size_t)s * p->slots + i];
            p->shard_load[s] += load[e] / p->copies[e];
        }
        double per = p->shard_load[s] / p->replicas[s];
        if (per > p->max_per_replica)
            p->max_per_replica = per;
    }
    p->mean_per_replica = total / p->n_replicas;
}

/* Step 3: one replica each, then each further one to the highest load per replica (ties:
 * the lower shard). Greedy is optimal for minimising max(load_s / r_s). */
static void spread_replicas(const double *shard_load, int n_shards, int n_replicas, int *replicas)
{
    for (int s = 0; s < n_shards; s++)
        replicas[s] = 1;
    for (int k = n_shards; k < n_replicas; k++) {
        int best = 0;
        for (int s = 1; s < n_shards; s++)
            if (shard_load[s] * replicas[best] > shard_load[best] * replicas[s])
                best = s;
        replicas[best]++;
    }
}

static void contiguous_placement(const double *load, mx_expert_plan *p)
{
    int N = p->n_experts, S = p->n_shards;
    for (int s = 0; s < S; s++) {
        int e0 = s * N / S, e1 = (s + 1) * N / S;
        p->n_held[s] = e1 - e0;
        p->shard_load[s] = 0;
        for (int e = e0; e < e1; e++) {
            p->held[(size_t)s * p->slots + e - e0] = e;
            p->shard_load[s] += load[e];
        }
    }
}

int mx_expert_plan_contiguous(const double *load, int n_experts, int n_shards, int n_replicas,
                              mx_expert_plan *out, mx_error *err)
{
    memset(out, 0, sizeof *out);
    MX_TRY(check_args(load, n_experts, n_shards, n_replicas, err));
    MX_TRY(plan_alloc(out, n_experts, n_shards, n_replicas, (n_experts + n_shards - 1) / n_shards, err));
    contiguous_placement(load, out);
    for (int s = 0; s < n_shards; s++)
        out->replicas[s] = n_replicas / n_shards + (s < n_replicas % n_shards);
    finish(load, out);
    return 0;
}

typedef struct item {
    int expert;
    double w;
} item;

static int cmp_item(const void *a, const void *b)
{
    const item *x = a, *y = b;
    if (x->w != y->w)
        return x->w < y->w ? 1 : -1;
    return (x->expert > y->expert) - (x->expert < y->expert);
}

/* Steps 1 and 2 into p (held, n_held, shard_load). The shard for a copy is the one whose
 * load per replica (p->replicas, all 1 for plain EPLB) grows least, so a shard that will get
 * more replicas takes more load. */
static int eplb_placement(const double *load, int extra, mx_expert_plan *p, mx_error *err)
{
    int N = p->n_experts, S = p->n_shards, K = p->slots;
    int *copies = malloc((size_t)N * sizeof *copies);
    item *items = malloc((size_t)S * K * sizeof *items);
    if (!copies || !items) {
        free(copies);
        free(items);
        return mx_fail(err, MX_ENOMEM, "expert plan: out of memory");
    }
    for (int e = 0; e < N; e++)
        copies[e] = 1;
    /* step 1: `extra` spare slots to the highest load per copy; an unloaded expert gains nothing */
    for (int k = N; k < N + extra && k < S * K; k++) {
        int best = -1;
        for (int e = 0; e < N; e++)
            if (copies[e] < S && load[e] > 0 && (best < 0 || load[e] * copies[best] > load[best] * copies[e]))
                best = e;
        if (best < 0)
            break;
        copies[best]++;
    }
    int n = 0;
    for (int e = 0; e < N; e++)
        for (int c = 0; c < copies[e]; c++)
            items[n++] = (item){e, load[e] / copies[e]};
    qsort(items, (size_t)n, sizeof *items, cmp_item);
    /* step 2: heaviest copy first, into the lightest shard with room that lacks the expert */
    for (int s = 0; s < S; s++) {
        p->n_held[s] = 0;
        p->shard_load[s] = 0;
    }
    for (int i = 0; i < n; i++) {
        int best = -1;
        for (int s = 0; s < S; s++) {
            if (p->n_held[s] >= K)
                continue;
            bool has = false;
            for (int j = 0; j < p->n_held[s] && !has; j++)
                has = p->held[(size_t)s * K + j] == items[i].expert;
            if (!has && (best < 0 || (p->shard_load[s] + items[i].w) * p->replicas[best] <
                                         (p->shard_load[best] + items[i].w) * p->replicas[s]))
                best = s;
        }
        /* no room outside the shards that already hold it: the copy is dropped (its load
         * goes to the other copies, see finish); the first copy always finds room, as
         * S * K >= N and every expert's copies are at most S */
        if (best < 0)
            continue;
        p->held[(size_t)best * K + p->n_held[best]++] = items[i].expert;
        p->shard_load[best] += items[i].w;
    }
    free(copies);
    free(items);
    /* every expert placed (the comment above says why; checked, not assumed) */
    for (int e = 0; e < N; e++) {
        bool found = false;
        for (int s = 0; s < S && !found; s++)
            for (int j = 0; j < p->n_held[s] && !found; j++)
                found = p->held[(size_t)s * K + j] == e;
        if (!found)
            return mx_fail(err, MX_EINTERNAL, "expert plan: expert %d could not be placed", e);
    }
    return 0;
}

int mx_expert_plan_make(const double *load, int n_experts, int n_shards, int n_replicas, int max_per_shard,
                        mx_expert_plan *out, mx_error *err)
{
    memset(out, 0, sizeof *out);
    MX_TRY(check_args(load, n_experts, n_shards, n_replicas, err));
    int min_slots = (n_experts + n_shards - 1) / n_shards;
    int K = max_per_shard ? max_per_shard : min_slots;
    if (K < min_slots || K > n_experts)
        return mx_fail(err, MX_EINVAL,
                       "expert plan: %d experts per shard is outside [%d, %d] for %d experts on %d shards", K,
                       min_slots, n_experts, n_experts, n_shards);
    /* candidates: the contiguous split, then packings weighted by the replica counts the
     * previous packing led to (equal weights first, as EPLB), each with step 3's replicas;
     * the first with the lowest busiest replica wins */
    mx_expert_plan alt;
    MX_TRY(plan_alloc(out, n_experts, n_shards, n_replicas, K, err));
    int rc = plan_alloc(&alt, n_experts, n_shards, n_replicas, K, err);
    if (!rc) {
        contiguous_placement(load, out);
        spread_replicas(out->shard_load, n_shards, n_replicas, out->replicas);
        finish(load, out);
    }
    /* every number of extra copies, fewest first: filling every slot with copies can leave a
     * shard with few replicas no slot for a light expert, and at an equal busiest replica
     * fewer copies win (less memory; the router sends a token group whole to one holder, so
     * copies even out load across calls, not within one) */
    for (int extra = 0; extra <= n_shards * K - n_experts && !rc; extra++) {
        for (int s = 0; s < n_shards; s++)
            alt.replicas[s] = 1;
        for (int round = 0; round < 4 && !rc; round++) {
            rc = eplb_placement(load, extra, &alt, err);
            if (rc)
                break;
            finish(load, &alt); /* shard loads with dropped copies accounted for */
            spread_replicas(alt.shard_load, n_shards, n_replicas, alt.replicas);
            finish(load, &alt);
            if (alt.max_per_replica < out->max_per_replica) {
                mx_expert_plan t = *out;
                *out = alt;
                alt = t;
                memcpy(alt.replicas, out->replicas, (size_t)n_shards * sizeof *alt.replicas);
            }
        }
    }
    mx_expert_plan_free(&alt);
    return rc;
}
