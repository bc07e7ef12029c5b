/* router_internal.h - the router's private state, shared by router.c (setup, counters),
 * replicas.c (per-replica health: latency percentiles, ejection, replica choice, liveness),
 * prober.c (the health-check thread) and dispatch.c (one layer's fan-out, retries, hedges
 * and combine). Calls go one way only: router.c -> prober.c -> replicas.c <- dispatch.c.
 * Not for use outside router/. */
#ifndef MX_ROUTER_INTERNAL_H
#define MX_ROUTER_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>

#include "router.h"
#include "core/rpc/client.h"

#define ROUTER_MAX_REPLICAS 64   /* per shard: a job's tried set is one 64-bit mask */
#define ROUTER_SIZE_CLASSES 5    /* latency kept apart for 1-2, 3-8, 9-32, 33-128, 129+ rows */
#define ROUTER_LAT_SAMPLES 256   /* last successful calls per size class */
#define ROUTER_LAT_MIN 20        /* samples before a class's percentiles are used */

/* Guarded by the shard's mu, except in_flight (atomic, read on the pick path). */
typedef struct router_replica {
    mx_rpc_channel *channel;
    atomic_int in_flight;       /* RunExperts calls outstanding on this replica */
    atomic_ullong calls_sent, rows_sent; /* load accounting (zero from calloc) */
    bool confirmed;             /* has answered a call or a health check */
    bool ejected;               /* skipped by the pick until a probe says SERVING */
    bool probing;               /* a health check is in flight */
    int n_ejections;            /* consecutive ejections: the backoff doubles with each */
    double eject_until_ms;      /* next probe of an ejected replica */
    double last_ok_ms;          /* last successful call or SERVING probe */
    double last_probe_ms;
} router_replica;

typedef struct router_latency {
    float ms[ROUTER_LAT_SAMPLES];
    int n, pos, fresh;          /* fresh: samples since p95/p99 were computed */
    float p95, p99;
} router_latency;

typedef struct router_shard {
    mx_expert_set owns;
    int n_replicas;
    router_replica *replicas;
    atomic_uint next;           /* rotates ties between equally loaded replicas */
    atomic_llong rows_in_flight; /* rows of calls outstanding on any replica: picks the holder
                                  * of an expert several shards hold (zero from calloc) */
    pthread_mutex_t mu;
    router_latency lat[ROUTER_SIZE_CLASSES];
} router_shard;

/* Why a replica is being ejected (counted apart). */
typedef enum { ROUTER_FAILED, ROUTER_MISSED_DEADLINE } router_fault;

struct mx_router {
    int num_layers, hidden, num_experts;
    int n_shards;
    router_shard *shards;
    int *owner;                 /* [num_layers * num_experts]: first holding shard or -1 */
    int *hold_off, *hold;       /* holders of (l, e): hold[hold_off[i] .. hold_off[i + 1]),
                                 * i = l * num_experts + e, shards ascending */
    atomic_ullong *expert_tokens; /* [num_layers * num_experts]: routed slots counted */
    mx_router_config cfg;       /* timing knobs (shards not copied here: see shards) */
    mx_backend *be;             /* borrowed; for x2/out not on the CPU */
    atomic_ullong calls, retries, failures, hedges, ejections, deadline_misses, probes;
    /* prober thread (prober.c) */
    pthread_t prober;
    bool prober_started;
    pthread_mutex_t stop_mu;
    pthread_cond_t stop_cond;
    bool stop;
};

/* replicas.c */
void router_shard_init(router_shard *sh);
void router_shard_destroy(router_shard *sh);
/* The replica for the next attempt: not in tried (bit i = replica i), not ejected, fewest
 * calls in flight (ties rotate). When every untried replica is ejected, the one that last
 * answered (a shard never refuses outright on its own say-so). -1 when all were tried. */
int router_pick_replica(router_shard *sh, uint64_t tried);
/* Whether a replica outside tried is left (no side effect on the rotation). */
bool router_has_untried(const router_shard *sh, uint64_t tried);
/* An attempt's own deadline for a call of rows rows: p99 x factor of the smallest size class
 * >= this one with enough samples, within [floor, cap]; the cap without samples. */
double router_attempt_ms(const mx_router *r, router_shard *sh, int rows);
/* Delay before a hedge (the p95 of the same classes); < 0 when unknown. */
double router_hedge_ms(router_shard *sh, int rows);
void router_record_ok(mx_router *r, router_shard *sh, int replica, int rows, double latency_ms);
void router_record_fault(mx_router *r, router_shard *sh, int replica, router_fault why);
/* prober side: claims replicas due for a health check (sets probing), and takes results */
bool router_probe_due(mx_router *r, router_shard *sh, int replica, double now_ms);
void router_probe_result(mx_router *r, router_shard *sh, int replica, bool serving);

/* prober.c */
int router_prober_start(mx_router *r, mx_error *err);
void router_prober_stop(mx_router *r);

#endif
