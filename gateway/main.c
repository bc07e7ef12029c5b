/* main.c - the gateway process: `gateway --config FILE.cfg` (or --check-config; schema in
 * gw_config.h). The service skeleton (core/rpc/service.h) runs it; this file loads what the
 * handlers need (model config, limits, tokenizer, scheduler), waits for the stages' KV numbers
 * and hands generation_rpc.h's handlers to the skeleton. The only service clients talk to; it
 * holds no model weights. */
#include <inttypes.h>
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/clock.h"
#include "core/config.h"
#include "core/limits.h"
#include "core/protocol.h"
#include "core/rpc/service.h"
#include "core/rpc/signals.h"
#include "generation_rpc.h"
#include "gw_config.h"
#include "gw_metrics.h"
#include "micro_batch.h"
#include "openai_http.h"
#include "pipeline_health.h"
#include "scheduler.h"
#include "text.h"
#include "tokenize_rpc.h"
#include "validate.h"

typedef struct gateway {
    gw_config cfg;
    const mx_log *log;           /* the process's (core/rpc/service.h) */
    mx_config model;
    gw_limits lim;
    gw_scheduler *sched;
    gw_text text;
    gw_tokenize_ctx tok_ctx;
    gw_generation_ctx gen_ctx;
    gw_metrics metrics;          /* Prometheus (gw_metrics.h), served when metrics_listen */
    gw_pipeline_health *health;  /* owned by the gRPC server */
    gw_openai_http *http;        /* NULL unless gateway.http_listen */
} gateway;

/* The stages' KV numbers, before serving: asks until every stage answers (they may still be
 * loading), logging every 5 s, or until a stop signal (returned as 1). */
static int wait_for_stages(gateway *g, mx_error *err)
{
    double last_log = -1e9;
    for (int tries = 0;; tries++) {
        mx_error e = {0};
        if (!gw_scheduler_refresh_kv(g->sched, 2000, &e))
            break;
        double now = mx_now_ms();
        if (now - last_log >= 5000) {
            mx_logf(g->log, MX_LOG_INFO, NULL, "waiting for the stages (%s)", e.msg);
            last_log = now;
        }
        int sig = mx_rpc_wait_stop_signal(tries < 20 ? 100 : 500, err);
        if (sig)
            return sig < 0 ? sig : 1;
    }
    int64_t fit = gw_scheduler_max_context(g->sched, INT64_MAX);
    if (fit < g->lim.model_context_tokens)
        mx_logf(g->log, MX_LOG_WARN, NULL, "the stages' KV budgets fit %lld tokens per sequence: max_context_tokens %lld "
                "(of %d)", (long long)fit, (long long)fit, g->lim.model_context_tokens);
    return 0;
}

static int setup_limits(gateway *g, mx_error *err)
{
    char path[MX_PATH_BUF];
    snprintf(path, sizeof path, "%s/config.json", g->cfg.model);
    MX_TRY(mx_config_load(path, &g->model, err));
    g->lim.vocab_size = g->model.vocab_size;
    g->lim.max_new_tokens_limit = g->cfg.max_new_tokens_limit;
    /* the model's positions unless configured lower; the stages' KV budgets cap it further
     * per request (gw_scheduler_max_context) */
    int64_t ctx = g->model.max_position_embeddings > 0 ? g->model.max_position_embeddings : 32768;
    if (g->cfg.max_context_tokens && g->cfg.max_context_tokens < ctx)
        ctx = g->cfg.max_context_tokens;
    if (ctx > INT32_MAX)
        ctx = INT32_MAX;
    g->lim.model_context_tokens = (int)ctx;
    g->lim.max_context_tokens = (int)ctx;
    /* A step's rows (prompt chunks under max_step_tokens plus one per decode) travel between
     * stages as f32 hidden states, which stage.max_message_mb (256 by default) must hold. */
    uint64_t step_mib = ((uint64_t)g->cfg.max_step_tokens + (uint64_t)g->cfg.max_batch_sequences) *
                        (uint64_t)g->model.hidden_size * 4 / (1u << 20) + 1;
    if (step_mib >= MX_DEFAULT_MAX_MESSAGE_MB)
        mx_logf(g->log, MX_LOG_WARN, NULL, "a step of max_step_tokens = %d (+ %d decodes) carries up to %llu MiB of hidden "
                "states between stages: their stage.max_message_mb must be above that (default %d)",
                g->cfg.max_step_tokens, g->cfg.max_batch_sequences, (unsigned long long)step_mib,
                MX_DEFAULT_MAX_MESSAGE_MB);
    /* says how hard long prompts are held back next to decodes (micro_batch.h) */
    if (g->cfg.max_prefill_tokens_with_decodes > 0)
        mx_logf(g->log, MX_LOG_INFO, NULL, "while requests decode, a step carries at most %d prompt tokens, a token at "
                "position P counting 1 + P / %lld (max_prefill_tokens_with_decodes)",
                g->cfg.max_prefill_tokens_with_decodes, (long long)gw_attn_context_tokens(&g->model));
    if (g->cfg.n_eos >= 0) {
        g->lim.n_eos = g->cfg.n_eos;
        for (int i = 0; i < g->cfg.n_eos; i++)
            g->lim.eos[i] = (uint32_t)g->cfg.eos[i];
    } else if (g->model.eos_token_id >= 0) {
        g->lim.n_eos = 1;
        g->lim.eos[0] = (uint32_t)g->model.eos_token_id;
    }
    return 0;
}

static int load_config(const char *path, void *config, mx_error *err) { return gw_config_load(path, config, err); }
static void free_config(void *config) { (void)config; }

static void close_gateway(void *state)
{
    gateway *g = state;
    gw_openai_http_stop(g->http); /* before the scheduler: it cancels the HTTP requests left */
    gw_scheduler_destroy(g->sched);
    gw_metrics_free(&g->metrics);
    gw_text_free(&g->text);
    free(g);
}

/* The scheduler's errors that have no caller: warnings in the process's log (the lines come
 * prefixed "gateway: ", which the log's service column already says). */
static void log_line(void *ctx, const char *line)
{
    if (!strncmp(line, "gateway: ", 9))
        line += 9;
    mx_logf(ctx, MX_LOG_WARN, NULL, "%s", line);
}

static const char *log_level(const void *config) { return ((const gw_config *)config)->log_level; }

/* Loads the model's config, the tokenizer and the scheduler, then waits for the stages. */
static int open_gateway(const void *config, const mx_log *log, void **state, mx_error *err)
{
    gateway *g = calloc(1, sizeof *g);
    if (!g)
        return mx_fail(err, MX_ENOMEM, "out of memory");
    *state = g;
    g->cfg = *(const gw_config *)config;
    g->log = log;
    MX_TRY(setup_limits(g, err));
    MX_TRY(gw_text_load(&g->cfg, g->model.vocab_size, &g->text, err));
    g->tok_ctx.text = &g->text;
    g->tok_ctx.bos_id = g->model.bos_token_id;
    g->tok_ctx.log = log;
    if (!g->text.tok)
        mx_logf(log, MX_LOG_INFO, NULL, "text features off: %s", g->text.no_tok);
    else if (!g->text.chat)
        mx_logf(log, MX_LOG_INFO, NULL, "chat off: %s", g->text.no_chat);
    MX_TRY(gw_scheduler_create(&g->cfg, &g->model, (gw_log){log_line, (void *)log}, &g->sched, err));
    MX_TRY(gw_metrics_init(&g->metrics, g->sched, err));
    g->gen_ctx = (gw_generation_ctx){.cfg = &g->cfg, .model = &g->model, .lim = &g->lim, .sched = g->sched,
                                     .text = &g->text, .log = log};
    g->gen_ctx.metrics = &g->metrics;
    int rc = wait_for_stages(g, err);
    return rc == 1 ? MX_ECANCELLED : rc;
}

static void listen_on(const void *config, const void *state, mx_service_listen *l)
{
    (void)config;
    const gateway *g = state;
    l->server = (mx_rpc_server_options){.address = g->cfg.listen, .max_message_bytes = g->cfg.max_request_bytes,
                                        .worker_threads = g->cfg.max_batch_sequences + 16,
                                        .max_queued_calls = g->cfg.max_queued,
                                        .write_timeout_ms = g->cfg.stream_write_timeout_ms};
    l->health_service = MX_GENERATION_SERVICE;
    l->port_file = g->cfg.port_file;
    l->drain_ms = g->cfg.drain_ms;
    l->metrics_listen = g->cfg.metrics_listen;
    l->metrics = g->metrics.reg;
}

static int add_methods(void *state, mx_rpc_server *srv, mx_error *err)
{
    gateway *g = state;
    MX_TRY(gw_pipeline_health_attach((const char(*)[256])g->cfg.stages, g->cfg.n_stages, srv, 500, &g->health, err));
    MX_TRY(gw_add_methods(&g->gen_ctx, &g->tok_ctx, srv, err));
    /* the OpenAI HTTP API serves from here on, over the same scheduler */
    if (g->cfg.http_listen[0])
        MX_TRY(gw_openai_http_start(&g->gen_ctx, &g->health, &g->http, err));
    return 0;
}

/* A stop signal: the HTTP API turns 503 for new requests (before the gRPC server, and with it
 * the pipeline-health watcher /health reads, goes away); its requests in flight go on. */
static void stop_watchers(void *state)
{
    gw_openai_http_drain(((gateway *)state)->http);
}

static void ready_line(const void *config, const void *state, int port, char *buf, size_t cap)
{
    (void)config;
    const gateway *g = state;
    int n = snprintf(buf, cap, "%d stages, pipeline_depth %d, serving mx.v1.Generation on port %d", g->cfg.n_stages,
                     g->cfg.pipeline_depth, port);
    if (g->http && n > 0 && (size_t)n < cap)
        snprintf(buf + n, cap - (size_t)n, ", OpenAI HTTP API on port %d", gw_openai_http_port(g->http));
}

int main(int argc, char **argv)
{
    /* One malloc arena: a burst of large requests parsed on many worker threads otherwise
     * spreads over one arena per thread, whose freed middles malloc_trim does not hand back
     * (measured, 300 requests of 1.2 MB from 14 MiB: default arenas 96 MiB left after, two
     * arenas 30 MiB, one 15 MiB). The gateway only parses, tokenizes and forwards, so the
     * shared arena's lock is not what limits it. */
    mallopt(M_ARENA_MAX, 1);
    static const mx_service_def def = {
        .name = "gateway",
        .about = "Serves the public mx.v1.Generation API over a pipeline of attention stages (config: gw_config.h).",
        .config_size = sizeof(gw_config),
        .config_load = load_config,
        .config_free = free_config,
        .log_level = log_level,
        .open = open_gateway,
        .close = close_gateway,
        .listen = listen_on,
        .add_methods = add_methods,
        .stop_watchers = stop_watchers,
        .ready_line = ready_line,
    };
    return mx_service_main(&def, argc, argv);
}
