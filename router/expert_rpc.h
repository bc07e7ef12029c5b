/* expert_rpc.h - the full gRPC method names of the ExpertShard service
 * (proto/mx/internal/v1/expert_shard.proto), shared by the router (client) and expert-svc. */
#ifndef MX_ROUTER_EXPERT_RPC_H
#define MX_ROUTER_EXPERT_RPC_H

#define MX_EXPERT_SERVICE "mx.internal.v1.ExpertShard"
#define MX_EXPERT_RUN_METHOD "/mx.internal.v1.ExpertShard/RunExperts"
#define MX_EXPERT_INFO_METHOD "/mx.internal.v1.ExpertShard/Info"

#endif
