/* router_internal.h - the router's private state, shared by router.c (setup, counters)
 * and dispatch.c (replica choice, one layer's fan-out and combine). Not for use outside router/. */
#ifndef MX_ROUTER_INTERNAL_H
#define MX_ROUTER_INTERNAL_H

#include <stdatomic.h>

#include "router.h"
#include "rpc/client.h"

typedef struct router_replica {
    mx_rpc_channel *channel;
    atomic_int in_flight;       /* RunExperts calls outstanding on this replica */
} router_replica;

typedef struct router_shard {
    mx_expert_set owns;
    int n_replicas;
    router_replica *replicas;
    atomic_uint next;           /* rotates ties between equally loaded replicas */
} router_shard;

struct mx_router {
    int num_layers, hidden, num_experts;
    int n_shards;
    router_shard *shards;
    int *owner;                 /* [num_layers * num_experts]: shard index or -1 */
    int64_t timeout_ms;
    int max_message_bytes;
    mx_backend *be;             /* borrowed; for x2/out not on the CPU */
    atomic_ullong calls, retries, failures;
};

#endif
