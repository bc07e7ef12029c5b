/* gw_config.h - the gateway's libconfig file: where it listens, which stages form the
 * pipeline (in order), and the limits every request is checked against. Parsing only;
 * unknown keys are errors.
 *
 *     gateway = {
 *       listen = "0.0.0.0:50051";         # host:port; port 0 picks a free one
 *       model = "/models/minimax";        # config.json is read for vocab, eos, layers
 *       stages = ["10.0.0.1:50061", "10.0.0.2:50061"];   # pipeline order
 *       num_expert_shards = 2;            # reported by ModelInfo only (default 0)
 *       model_name = "MiniMax-Text-01";   # reported by ModelInfo (default)
 *       max_new_tokens_limit = 4096;      # largest max_new_tokens accepted (default 4096)
 *       max_context_tokens = 32768;       # prompt + output (default: the model's
 *                                         # max_position_embeddings); capped by the longest
 *                                         # sequence whose KV cache fits every stage (Info)
 *       max_batch_sequences = 64;         # sequences per step (default 64)
 *       max_step_tokens = 512;            # prompt tokens per micro-batch, prefill chunking (default 512)
 *       max_prefill_tokens_with_decodes = 32;   # while any request is decoding, a step carries
 *                                         # at most this many prompt tokens, so decodes are not
 *                                         # stalled behind a long prefill; a token at position P
 *                                         # counts 1 + P / (the model's attn_tokens, micro_batch.h),
 *                                         # as softmax attention makes it dearer; with nothing
 *                                         # decoding a prompt takes the whole max_step_tokens
 *                                         # (default 32; 0 = no limit: prompts share
 *                                         # max_step_tokens with decodes)
 *       pipeline_depth = 2;               # micro-batches in the pipeline at once (default: the
 *                                         # number of stages; 1 = one batch at a time)
 *       max_queued = 1024;                # waiting requests, both those waiting for a worker
 *                                         # thread and those waiting for the scheduler; more ->
 *                                         # RESOURCE_EXHAUSTED at once, with a retry hint. Request
 *                                         # memory is bounded by (max_batch_sequences + 16 +
 *                                         # max_queued) x max_request_kb
 *       stream_write_timeout_ms = 10000;  # a Generate stream whose client does not take a
 *                                         # message within this is cancelled (0 = never)
 *       max_request_kb = 32768;           # largest request message (default 32 MiB: a
 *                                         # GenerateRequest of 4,194,304 prompt ids as packed
 *                                         # varints is 12-16 MiB); larger -> RESOURCE_EXHAUSTED
 *       kv_max_overtakes = 64;            # a request waiting for KV room lets at most this many
 *                                         # later (smaller) requests be admitted before it;
 *                                         # then admission waits for it (default 64;
 *                                         # 0 = strict first come, first served)
 *       stage_timeout_ms = 60000;         # per RunBatch call, which on chained stages covers
 *                                         # the whole chain (default 60000)
 *       eos_token_ids = [2];              # optional; default config.json's eos_token_id
 *       drain_ms = 2000;                  # on SIGTERM: health NOT_SERVING, no new calls, calls in
 *                                         # flight may finish for this long, then are cancelled
 *                                         # (default 2000)
 *       port_file = "/tmp/gw.port";       # optional: bound port written here once serving
 *       log_level = "info";               # error | warn | info (default) | debug; the environment
 *                                         # variable MX_LOG_LEVEL overrides it (core/log.h)
 *       metrics_listen = "0.0.0.0:9090";  # optional: Prometheus GET /metrics here (port 0
 *                                         # picks one: written to "<port_file>.metrics")
 *       tokenizer = "/models/minimax/tokenizer.json";   # default <model>/tokenizer.json; when
 *                                         # the default is absent, text features are off
 *       chat_format = "auto";             # "auto" (recognise tokenizer_config.json's
 *                                         # chat_template), "minimax-text-01", "minimax-m1", "none"
 *       http_listen = "0.0.0.0:8000";     # optional: the OpenAI-compatible HTTP API
 *                                         # (openai_http.h); port 0 picks one; "" = off (default)
 *       http_port_file = "/tmp/gw.http";  # optional: its bound port written here before serving
 *     };
 */
#ifndef MX_GW_CONFIG_H
#define MX_GW_CONFIG_H

#include <stdint.h>

#include "core/error.h"

#define GW_MAX_STAGES 64
#define GW_MAX_EOS 8
#define GW_DEFAULT_DRAIN_MS 2000
/* max_prefill_tokens_with_decodes when not given, from bench_long_context.sh on the 7:1 bench
 * model (8 streams next to a 32K-token prefill): 32 kept their p99 inter-token latency at 2.6x
 * of theirs alone (p50 1.9x) for 2x the long prompt's first-token time; 64 left p50 at 3.1x */
#define GW_DEFAULT_PREFILL_WITH_DECODES 32

typedef struct gw_config {
    char listen[256];
    char model[4096];
    char model_name[128];
    char port_file[4096];
    char log_level[16];           /* "" = info */
    char tokenizer[4096];         /* "" = <model>/tokenizer.json if present */
    char chat_format[32];
    char metrics_listen[256];     /* "" = no /metrics endpoint */
    char http_listen[256];        /* "" = no HTTP API */
    char http_port_file[4096];
    int n_stages;
    char stages[GW_MAX_STAGES][256];
    int num_expert_shards;
    int max_new_tokens_limit;
    int max_context_tokens;       /* 0 = from the model */
    int max_batch_sequences;
    int max_step_tokens;
    int max_prefill_tokens_with_decodes; /* 0 = no limit beyond max_step_tokens */
    int pipeline_depth;
    int max_queued;
    int max_request_bytes;
    int kv_max_overtakes;
    int64_t stage_timeout_ms;
    int64_t drain_ms;             /* graceful drain on SIGTERM */
    int64_t stream_write_timeout_ms;
    int n_eos;                    /* -1 = not given (use the model's) */
    int eos[GW_MAX_EOS];
} gw_config;

/* Reads and checks the file; errors name the file, line and key. */
int gw_config_load(const char *path, gw_config *out, mx_error *err);

#endif
