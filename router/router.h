/* router.h - the MoE dispatch of an attention stage: sends each layer's routed tokens to the
 * expert shards (expert-svc) that own the chosen experts and combines the answers.
 * Plugs into mx_model_run_layers as an mx_moe_executor. Owns its gRPC channels; holds no
 * model weights and no per-request state between calls.
 *
 * Config: the "experts" group of the attention-svc config (libconfig):
 *     experts = {
 *       expert_timeout_ms = 10000;          # a layer's whole expert step on one shard, every
 *                                           #   attempt included (optional, default 10000)
 *       max_message_mb = 256;               # largest request/response (optional, default 256)
 *       attempt_timeout_floor_ms = 200;     # per-attempt deadline: p99 x factor of the measured
 *       attempt_timeout_factor = 4.0;       #   latency (per call size), at least the floor, at
 *       attempt_timeout_cap_ms = 2000;      #   most the cap (the cap until 20 samples exist)
 *       hedge = false;                      # also send a second copy after the p95 latency
 *       hedge_percent = 10;                 #   (at most this share of calls is hedged)
 *       eject_ms = 500;                     # a failing replica is skipped this long, doubling
 *       eject_max_ms = 5000;                #   per consecutive ejection up to this
 *       health_interval_ms = 1000;          # idle replicas get a health Check this often
 *       probe_timeout_ms = 500;             # deadline of one health Check
 *       resolve_interval_ms = 5000;         # DNS targets are resolved again this often
 *       shards = (
 *         { experts = [0, 1];               # same keys as expert-svc: experts + layers or
 *           layer_begin = 0; layer_end = 8; #   layer_begin/layer_end (or none = all layers)
 *           replicas = ["127.0.0.1:5001", "127.0.0.1:5002"]; },
 *         { experts = [2, 3];
 *           replicas = ["dns:///mx-expert-1.mx.svc.cluster.local:50071"]; }
 *       );
 *     };
 *
 * Replicas: each entry is "host:port" ("[ipv6]:port") or a gRPC-style DNS target
 * "dns:///name:port" (the system's resolver) or "dns://SERVER[:PORT]/name:port" (that DNS
 * server, an IP address). A DNS target stands for every address (A and AAAA) the name has:
 * it is resolved in the router's resolver thread every resolve_interval_ms and at once after
 * a replica of its shard failed (at most every 500 ms); a new address becomes a replica once
 * a health check says SERVING; an address that is gone drains (no new calls, calls in flight
 * finish) and its channel is closed expert_timeout_ms + 1 s later. A name that does not
 * resolve (yet) is no start-up error: the shard just has no live replica until it does
 * (mx_router_shards_live says 0). Mixed lists work; at most 64 replicas per shard at once.
 *
 * One run of a layer: tokens are grouped by expert (experts in ascending id, tokens in
 * ascending row), experts are mapped to shards, ONE ExpertShard.RunExperts call per shard
 * involved goes out in parallel (shards with a replica at the stage's own host last: such a
 * call may wake that shard on this thread's core, which would run it before the others are
 * sent), and out[t] = sum over t's top-k slots, in slot order, of w * y: the result does not
 * depend on which shard (or which replica) answers first.
 *
 * Failure semantics (expert calls are idempotent, so any copy of a call may be answered):
 * - Replica choice: active (not pending its first SERVING, not draining), not ejected, fewest
 *   calls in flight, ties rotate round-robin.
 * - A call failing with UNAVAILABLE, CANCELLED (by the peer: a draining or dying replica),
 *   RESOURCE_EXHAUSTED or DEADLINE_EXCEEDED is sent again to a replica not yet tried.
 * - Each attempt has its own deadline from the shard's measured latency (above). An attempt
 *   past it counts as a miss: the call is sent to another replica and whichever copy answers
 *   first wins (the slow one is cancelled); with no other replica it just goes on waiting,
 *   up to expert_timeout_ms. So a replica that dies or freezes costs a call one attempt
 *   deadline (at most attempt_timeout_cap_ms), not expert_timeout_ms; once ejected it costs
 *   nothing, and a killed one's broken connection ejects it at once.
 * - Health/Watch: the router holds a grpc.health.v1.Health/Watch stream to every replica; a
 *   replica that says NOT_SERVING (a draining expert-svc) or whose stream breaks (killed,
 *   unreachable) is ejected at once, before any call of it fails. A server that refuses the
 *   Watch (UNIMPLEMENTED, or no room: see core/rpc/health.h) is followed by Check alone.
 * - Outlier ejection: a replica that fails or misses a deadline is ejected (skipped) for
 *   eject_ms x 2^(n-1), then probed with grpc.health.v1.Health/Check (service
 *   mx.internal.v1.ExpertShard) by the router's prober thread, and taken back when SERVING.
 *   The prober also checks replicas that had no successful call for health_interval_ms, so a
 *   dead or draining (NOT_SERVING) replica is found without traffic.
 * - Hedging (hedge = true): once a call has waited the p95 latency of its size class, a copy
 *   goes to another replica (within the hedge_percent budget); the first answer wins.
 * Errors name the shard index and the endpoint (or the shard's targets while it has no
 * replica). Thread-safe: any number of threads may run
 * the executor at once. */
#ifndef MX_ROUTER_H
#define MX_ROUTER_H

#include <libconfig.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/error.h"
#include "core/model.h"
#include "core/expert_set.h"

/* One shard: the experts it owns and the endpoints serving it (each a full replica). */
typedef struct mx_router_shard_config {
    mx_expert_set owns;
    int n_replicas;
    char **replicas;      /* "host:port" or "dns://..." targets (see above), owned */
} mx_router_shard_config;

typedef struct mx_router_config {
    int n_shards;
    mx_router_shard_config *shards;  /* owned */
    int64_t expert_timeout_ms;       /* a shard call, all attempts; default 10000 */
    int max_message_bytes;           /* default 256 MiB */
    /* zero fields take the defaults named in the config comment above */
    int64_t attempt_floor_ms, attempt_cap_ms;
    double attempt_factor;
    bool hedge;
    int hedge_percent;
    int64_t eject_ms, eject_max_ms;
    int64_t health_interval_ms, probe_timeout_ms;
    int64_t resolve_interval_ms;
    /* The stage's own host: its listen address without the port (mx_router_host_of), set by
     * the stage, not read from the config ("" or a wildcard = unknown). Replicas at that host
     * are sent a layer's call last, see calls_start in dispatch.c. */
    char local_host[64];
} mx_router_config;

/* Parses the "experts" group s (see above). Errors name the key, the file and the line.
 * *out is owned by the caller: free with mx_router_config_free (also after a failure). */
int mx_router_config_from_setting(const config_setting_t *s, mx_router_config *out, mx_error *err);
void mx_router_config_free(mx_router_config *cfg);

typedef struct mx_router mx_router;

/* The host of "host:port" ("[v6]:port" without the brackets) into out; "" when the address has
 * no port or the host does not fit in cap. */
void mx_router_host_of(const char *address, char *out, size_t cap);

/* Creates channels to every replica (connecting lazily), starts the prober thread (health
 * checks of every replica at once, then as described above) and checks the shard map against
 * the model: layers < num_layers, experts < num_experts. A (layer, expert) may be held by
 * several shards: each token group then goes to the holder with the fewest rows in flight
 * per replica (ties: the lower shard index), counting the rows this same call already gave
 * it (groups with one holder are placed first, then the others, largest first); a group is
 * never split, so results do not depend on the holder. cfg is copied; the caller may free
 * it afterwards. be (borrowed, may be NULL) is the stage's backend: x2 and out tensors not
 * on the CPU are copied through it. */
int mx_router_create(const mx_router_config *cfg, int num_layers, int hidden_size, int num_experts,
                     mx_backend *be, mx_router **out, mx_error *err);

/* Checks every expert of every layer in [layer_begin, layer_end) has a shard (call at stage
 * start-up so a gap in the map is a start-up error, not a first-request error). */
int mx_router_check_coverage(const mx_router *r, int layer_begin, int layer_end, mx_error *err);

/* The executor to pass to mx_model_run_layers (ctx = r; valid while r lives). */
mx_moe_executor mx_router_executor(mx_router *r);

/* A dispatcher: what one MoE step over the network needs (a call set with its completion
 * queue, grouping arrays, per-shard request buffers the rows are gathered into, an arena for
 * the answers), kept between steps so a step in steady state allocates nothing of its own.
 * One step at a time per dispatcher, on one thread at a time; a stage that overlaps two
 * micro-batches holds two. Free it before the router. */
typedef struct mx_router_dispatcher mx_router_dispatcher;
/* max_tokens: the largest step expected; buffers grow (to twice what a step needed, at most
 * what a max_tokens step needs) during the first steps, a prefill's before the decodes'. */
int mx_router_dispatcher_create(mx_router *r, int max_tokens, mx_router_dispatcher **out, mx_error *err);
void mx_router_dispatcher_free(mx_router_dispatcher *d);
/* The step in two halves: start groups and sends the calls (x2, ids, weights, out stay the
 * caller's until finish), finish waits for the answers (retries, hedges) and combines into
 * out. After a successful start, finish must be called once. */
int mx_router_dispatch_start(mx_router_dispatcher *d, int layer, const mx_tensor *x2, const int32_t *ids,
                             const float *weights, int k, mx_tensor *out, mx_error *err);
int mx_router_dispatch_finish(mx_router_dispatcher *d, mx_error *err);
/* An executor over d (its run: start, then finish). */
mx_moe_executor mx_router_dispatcher_executor(mx_router_dispatcher *d);

/* The executor's run function, callable directly: x2 [T, hidden], ids/weights [T*k] on the
 * host, out [T, hidden] zeroed by the caller (out += sum of weighted expert outputs). */
int mx_router_run(mx_router *r, int layer, const mx_tensor *x2, const int32_t *ids,
                  const float *weights, int k, mx_tensor *out, mx_error *err);

/* Counters since creation, for logs and metrics. */
typedef struct mx_router_stats {
    uint64_t calls;        /* RunExperts calls sent (including retries) */
    uint64_t retries;      /* calls retried on another replica */
    uint64_t failures;     /* executor runs that returned an error */
    uint64_t hedges;       /* hedged copies sent */
    uint64_t ejections;    /* replicas ejected (failures, missed deadlines, failed probes) */
    uint64_t deadline_misses; /* attempts past their own deadline */
    uint64_t probes;       /* health checks sent */
    uint64_t resolves;     /* DNS targets resolved (answers applied) */
    uint64_t resolve_errors; /* DNS queries that failed (timeout, refused, ...): set kept */
    uint64_t replicas_added; /* replicas a DNS answer added */
    uint64_t replicas_closed; /* drained replicas closed (their address left DNS) */
} mx_router_stats;
void mx_router_get_stats(const mx_router *r, mx_router_stats *out);

/* Load accounting (atomic counters since creation, no lock on the dispatch path):
 * tokens[l * num_experts + e] = slots routed to expert e of layer l (a token counts once per
 * top-k expert), for every layer of the model; out must hold num_layers * num_experts. */
void mx_router_expert_tokens(const mx_router *r, uint64_t *tokens);
void mx_router_dims(const mx_router *r, int *num_layers, int *num_experts);
int mx_router_num_shards(const mx_router *r);
int mx_router_num_replicas(const mx_router *r, int shard);
typedef struct mx_router_replica_load {
    const char *address;   /* "host:port", valid while r lives */
    uint64_t calls, rows;  /* RunExperts calls sent (retries, hedges included), their rows */
    int in_flight;         /* calls outstanding now */
} mx_router_replica_load;
void mx_router_replica_load_get(const mx_router *r, int shard, int replica, mx_router_replica_load *out);

/* Optional observer of expert-call attempts, for metrics: called on the dispatching thread
 * when an attempt goes out (event SENT; retry = it is a retry on another replica, not the
 * first copy or a hedge) and when its answer comes back (event DONE; ok, seconds since it was
 * sent). Must be cheap and thread-safe. Set before traffic starts (NULL fn = none). */
typedef enum { MX_ROUTER_ATTEMPT_SENT, MX_ROUTER_ATTEMPT_DONE } mx_router_attempt_event;
typedef void (*mx_router_attempt_fn)(void *ctx, mx_router_attempt_event ev, int shard, int replica, bool retry,
                                     bool ok, double seconds);
void mx_router_set_attempt_observer(mx_router *r, mx_router_attempt_fn fn, void *ctx);

/* Whether every shard owning an expert of a layer in [layer_begin, layer_end) has a live
 * replica: one that has answered (a call or a health check) and is not ejected. For the
 * stage's health ("can serve"). Returns 1 (all live) or 0 (then *dead_shard, when not NULL,
 * is the first shard without one). Cheap and non-blocking: reads the prober's view, which
 * follows a replica's loss within about health_interval_ms + probe_timeout_ms (at once on a
 * failed call) and its return within eject_max_ms. */
int mx_router_shards_live(mx_router *r, int layer_begin, int layer_end, int *dead_shard);

void mx_router_destroy(mx_router *r);

#endif
