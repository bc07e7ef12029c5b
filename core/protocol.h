/* protocol.h - the names on the wire: every gRPC service and full method name mx serves or
 * calls, spelled once for clients, servers and tests. Names only; the messages live in proto/. */
#ifndef MX_PROTOCOL_H
#define MX_PROTOCOL_H

/* public API (proto/mx/v1/generation.proto) */
#define MX_GENERATION_SERVICE "mx.v1.Generation"
#define MX_GENERATION_GENERATE_METHOD "/mx.v1.Generation/Generate"
#define MX_GENERATION_COMPLETE_METHOD "/mx.v1.Generation/Complete"
#define MX_GENERATION_MODEL_INFO_METHOD "/mx.v1.Generation/ModelInfo"
#define MX_GENERATION_TOKENIZE_METHOD "/mx.v1.Generation/Tokenize"
#define MX_GENERATION_DETOKENIZE_METHOD "/mx.v1.Generation/Detokenize"

/* pipeline stages (proto/mx/internal/v1/attention_stage.proto) */
#define MX_STAGE_SERVICE "mx.internal.v1.AttentionStage"
#define MX_STAGE_RUN_BATCH_METHOD "/mx.internal.v1.AttentionStage/RunBatch"
#define MX_STAGE_RELEASE_METHOD "/mx.internal.v1.AttentionStage/Release"
#define MX_STAGE_INFO_METHOD "/mx.internal.v1.AttentionStage/Info"

/* expert shards (proto/mx/internal/v1/expert_shard.proto) */
#define MX_EXPERT_SERVICE "mx.internal.v1.ExpertShard"
#define MX_EXPERT_RUN_METHOD "/mx.internal.v1.ExpertShard/RunExperts"
#define MX_EXPERT_INFO_METHOD "/mx.internal.v1.ExpertShard/Info"

#endif
