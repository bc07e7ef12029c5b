/* router_internal.h - the router's private state, shared by router.c (setup, counters),
 * replicas.c (per-replica health: latency percentiles, ejection, replica choice, liveness,
 * the replica slots of a shard), prober.c (the health-check thread and the Health/Watch
 * streams), resolver.c (targets, DNS discovery, drain and close of replicas that went away)
 * and dispatch.c (one layer's fan-out, retries, hedges and combine). Calls go one way only:
 * router.c -> resolver.c -> prober.c -> replicas.c <- dispatch.c. Not for use outside router/. */
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

/* A replica slot's life. Slots never move (a shard has ROUTER_MAX_REPLICAS of them, fixed),
 * so an index taken by a call stays valid; a slot is reused only after it was closed. */
typedef enum {
    ROUTER_SLOT_FREE = 0,       /* unused (or closed) */
    ROUTER_SLOT_PENDING,        /* a discovered address: no calls before a health check says SERVING */
    ROUTER_SLOT_ACTIVE,         /* may be picked (unless ejected) */
    ROUTER_SLOT_DRAINING,       /* its address went away: no new calls, nor probes; closed once its
                                 * calls are done and ROUTER_CLOSE_GRACE_MS past expert_timeout_ms */
    ROUTER_SLOT_CLOSING,        /* being closed by the resolver thread: nobody else touches it */
} router_slot_state;

#define ROUTER_CLOSE_GRACE_MS 1000  /* past expert_timeout_ms: no dispatch step refers to it */
#define ROUTER_ADDR_MAX 272         /* "[ipv6]:port" or "host:port" */

/* Guarded by the shard's mu, except the atomics. The channel of a slot in a state other than
 * FREE/CLOSING stays valid as long as the router lives (see ROUTER_SLOT_DRAINING). */
typedef struct router_replica {
    mx_rpc_channel *channel;
    _Atomic int state;          /* router_slot_state; written under the shard's mu */
    int target;                 /* index of the config entry it comes from */
    char address[ROUTER_ADDR_MAX]; /* "host:port": kept after close, for messages */
    double drain_since_ms;
    /* Health/Watch stream (prober.c): a thread per replica, stopped before the close */
    pthread_t watch_thread;
    bool watching, watch_stop;
    mx_rpc_stream *watch_stream;   /* set while open, for the stopper's cancel */
    atomic_int in_flight;       /* RunExperts calls outstanding on this replica */
    atomic_ullong calls_sent, rows_sent; /* load accounting (zero from calloc) */
    bool discovered;            /* from a DNS target (a failure asks for a fresh resolve) */
    bool local;                 /* at the stage's own host (mx_router_config.local_host) */
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
    _Atomic int n_replicas;     /* slots in use so far (high-water mark; some may be FREE) */
    router_replica *replicas;   /* [ROUTER_MAX_REPLICAS], fixed */
    pthread_cond_t watch_cv;    /* wakes Watch threads waiting to reconnect (with mu) */
    atomic_bool resolve_asap;   /* a replica failed: resolve its DNS targets now */
    char none_yet[320];         /* "no replica yet from <targets>", for messages */
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
    atomic_ullong resolves, resolve_errors, replicas_added, replicas_closed; /* resolver.c */
    mx_router_attempt_fn observe;   /* optional (mx_router_set_attempt_observer) */
    void *observe_ctx;
    /* prober thread (prober.c) */
    pthread_t prober;
    bool prober_started;
    pthread_mutex_t stop_mu;
    pthread_cond_t stop_cond;
    bool stop;
    struct router_resolver *resolver; /* resolver.c: DNS targets and their thread, or NULL */
};

/* replicas.c */
void router_shard_init(router_shard *sh);
void router_shard_destroy(router_shard *sh);
/* The replica for the next attempt: not in tried (bit i = replica i), not ejected, fewest
 * calls in flight (ties rotate). When every untried replica is ejected, the one that last
 * answered (a shard never refuses outright on its own say-so). -1 when all were tried. */
int router_pick_replica(router_shard *sh, uint64_t tried);
/* Whether an active replica outside tried is left (no side effect on the rotation). */
bool router_has_untried(const router_shard *sh, uint64_t tried);
/* Whether an active replica of the shard is at the stage's own host. */
bool router_shard_has_local(const router_shard *sh);
/* resolver.c, where replicas are added: whether "host:port" (or "[v6]:port") names the host
 * local_host ("" matches nothing). */
bool router_address_is_local(const char *address, const char *local_host);
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

/* Health/Watch news about a replica (prober.c's watch threads). */
typedef enum { ROUTER_WATCH_SERVING, ROUTER_WATCH_NOT_SERVING, ROUTER_WATCH_LOST } router_watch_news;
void router_watch_result(mx_router *r, router_shard *sh, int replica, router_watch_news news);
/* Replica slots (resolver.c): puts a new replica in a FREE slot (PENDING when pending, else
 * ACTIVE) and returns its index, -1 when all ROUTER_MAX_REPLICAS are in use. local: it is at
 * the stage's own host. */
int router_slot_add(router_shard *sh, int target, const char *address, mx_rpc_channel *ch, bool pending,
                    bool local);
/* After a resolve of target: its slots whose address is not in addrs[0..n) start draining;
 * a draining one whose address is back is PENDING again. found[k] says whether addrs[k]
 * already has a slot (else the caller adds one). */
void router_slot_sync(router_shard *sh, int target, const char (*addrs)[ROUTER_ADDR_MAX], int n, bool *found,
                      double now_ms);
/* A DRAINING slot that may be closed now (no call, no probe, past the grace): marked CLOSING
 * and returned; -1 when none. The caller stops its watch, destroys the channel, then
 * calls router_slot_release. */
int router_slot_reap(const mx_router *r, router_shard *sh, double now_ms);
void router_slot_release(router_shard *sh, int replica);

/* prober.c */
/* Starts / stops the Health/Watch thread of a replica (stop is idempotent; joins). */
int router_watch_start(mx_router *r, int shard, int replica, mx_error *err);
void router_watch_stop(mx_router *r, int shard, int replica);
int router_prober_start(mx_router *r, mx_error *err);
void router_prober_stop(mx_router *r);

/* resolver.c */
/* The shard's replica slots and its config entries: static ones get a replica now, DNS ones
 * are kept for the resolver thread. Errors name the entry. */
int router_targets_init(mx_router *r, int shard, const mx_router_shard_config *c, mx_error *err);
/* Starts the resolver thread when some entry is a DNS target. */
int router_resolver_start(mx_router *r, mx_error *err);
/* Stops the resolver thread and every watch thread (channels stay for the caller to destroy). */
void router_targets_close(mx_router *r);

#endif
