/* stage_config.h - the libconfig file of an attention-svc process: which layers it serves,
 * where it listens, its limits, and (group "experts", parsed by router/router.h) where the
 * expert shards are. Parsing only: nothing is loaded or connected here. Unknown keys are errors.
 *
 *     stage = {
 *       listen = "127.0.0.1:50061";   # host:port; port 0 picks a free one. Expert replicas
 *                                     # at this host (not a wildcard) get a layer's call last
 *       model = "/models/minimax";    # checkpoint directory (config.json + shards)
 *       index = 0; count = 2;         # this stage's index in a pipeline of `count`
 *       layer_begin = 0; layer_end = 4;  # layers [begin, end) held here
 *       max_sequences = 256;          # live sequences; more -> RESOURCE_EXHAUSTED (default 256)
 *       backend = "cpu"; threads = 0; # engine backend and its threads (0 = all cores)
 *       pin_threads = false;          # thread i on the i-th allowed CPU (cpu backend; for
 *                                     # threads = every allowed CPU, as `mx cluster` sets when
 *                                     # processes share the machine's cores; default false)
 *       max_message_mb = 256;         # largest RunBatch request/response (default 256)
 *       port_file = "/tmp/s0.port";   # optional: the bound port is written here once serving
 *       log_level = "info";           # error | warn | info (default) | debug; the environment
 *                                     # variable MX_LOG_LEVEL overrides it (core/log.h)
 *       metrics_listen = "0.0.0.0:9090";  # optional: Prometheus GET /metrics here (port 0
 *                                     # picks one: written to "<port_file>.metrics")
 *       next = "10.0.0.2:50061";      # the next stage, where every RunBatch goes on: required
 *                                     # on every stage but the last, absent on the last
 *       drain_ms = 2000;              # on SIGTERM: health NOT_SERVING, no new calls, calls in
 *                                     # flight may finish for this long (default 2000)
 *       worker_threads = 6;           # RPC handlers at once (default count + 4): one per
 *                                     # micro-batch in flight plus Info/Release/health
 *       kv_dtype = "bf16";            # KV cache element type: bf16 (default), f32, fp8_e4m3, int8
 *       attn_dtype = "bf16";          # attention projections: bf16 (as stored, default) or int8
 *                                     # (quantized at load, per-row scales)
 *       kv_cache_bytes = "8GiB";      # KV budget of all live sequences on this stage: bytes as
 *                                     # an integer, or a string with a binary unit (K/KiB, M/MiB,
 *                                     # G/GiB, T/TiB); default 0 = the backend's default
 *                                     # (CPU: half of MemAvailable at start)
 *       sequence_lease_ms = 60000;    # a sequence no RunBatch touched for this long is
 *                                     # released (a gateway that died leaks nothing); 0 = never
 *       max_step_tokens = 512;        # a RunBatch's tokens the step buffers are made for at
 *                                     # start (the gateway's max_step_tokens; larger steps grow
 *                                     # them once); a decode step then allocates nothing
 *       overlap = false;              # with remote experts: while a micro-batch's expert calls
 *                                     # are out, the next micro-batch (gateway pipeline_depth
 *                                     # >= 2) computes its attention here (default false: see
 *                                     # the README's numbers)
 *       overlap_halves = false;       # with remote experts: a batch of 2+ sequences runs as two
 *                                     # halves, one's attention while the other's expert calls
 *                                     # are out, within one RunBatch (default false: each half
 *                                     # reads the weights again; see the README's numbers)
 *       test_fail_expert_call_once_at_layer = -1;  # tests only: the first MoE call of this
 *                                     # layer fails once (UNAVAILABLE), mid-RunBatch; -1 = off
 *     };
 *     experts = { ... };              # optional; absent = this stage loads its own experts
 */
#ifndef MX_ATTN_STAGE_CONFIG_H
#define MX_ATTN_STAGE_CONFIG_H

#define STAGE_DEFAULT_DRAIN_MS 2000
#define STAGE_DEFAULT_LEASE_MS 60000

#include <stdbool.h>
#include <stdint.h>

#include "core/error.h"
#include "core/kv_cache.h"
#include "core/quantize.h"
#include "router/router.h"

typedef struct stage_config {
    char listen[256];
    char model[4096];
    char port_file[4096];     /* "" = none */
    char log_level[16];       /* "" = info */
    char metrics_listen[256]; /* "" = no /metrics endpoint */
    char next[256];           /* "" on the last stage only */
    int64_t drain_ms;         /* graceful drain on SIGTERM */
    int index, count;
    int layer_begin, layer_end;
    int max_sequences;
    char backend[16];
    int threads;
    bool pin_threads;         /* the backend's threads on distinct CPUs (mx_backend_cpu_pin_threads) */
    int max_message_bytes;
    int worker_threads;
    mx_kv_dtype kv_dtype;
    mx_weight_format attn_dtype; /* the load plan's attn_format */
    uint64_t kv_cache_bytes;  /* 0 = the backend's default */
    bool remote_experts;      /* an "experts" group was given */
    mx_router_config router;  /* valid when remote_experts */
    int64_t sequence_lease_ms;    /* 0 = sequences never expire */
    bool test_fail_expert_once;   /* tests only: fail one MoE call of test_fail_expert_layer */
    int test_fail_expert_layer;
    int max_step_tokens;      /* tokens of a RunBatch the step buffers are sized for */
    bool overlap;             /* the compute lock is let go while a batch's expert calls are out */
    bool overlap_halves;      /* a batch of 2+ sequences as two halves interleaved per layer */
} stage_config;

/* Reads and checks the file (ranges against each other; layers against the model later).
 * Errors name the file, line and key. Free with stage_config_free (also after a failure). */
int stage_config_load(const char *path, stage_config *out, mx_error *err);
void stage_config_free(stage_config *c);

/* "1073741824", "512M", "512MiB", "8G", "8GiB", "64K" (binary units, 1M = 2^20) -> bytes.
 * MX_EINVAL naming `what` for anything else (negative, fractional, overflowing, "MB"). */
int stage_parse_bytes(const char *text, const char *what, uint64_t *out, mx_error *err);

#endif
