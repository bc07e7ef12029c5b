/* bench_cluster.c - decode throughput (tokens/s) at batch B, either of the single-process
 * engine (--model DIR: B sequences decoded together with mx_model_forward, greedy sampling
 * included) or of a running cluster (--addr HOST:PORT: B concurrent Generate streams through
 * the gateway). Both use B prompts of 4 tokens, so the first step is one batched prefill and
 * every later step decodes B tokens; only those decode steps are timed. Next to the wall time
 * each prints the CPU time a decode step took: the engine's own, or with --cpu-pids the sum
 * over the cluster's processes (the gateway, stages and shards; not this client), which on a
 * machine others load too is steadier than the wall time.
 * bench/bench_cluster.sh runs both on the same model and prints the ratio. */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "bench_util.h"
#include "core/config.h"
#include "core/model.h"
#include "core/protocol.h"
#include "core/rpc/client.h"
#include "core/rpc/pb.h"
#include "core/sampling.h"
#include "core/weights.h"
#include "mx/v1/generation.pb-c.h"

#define PROMPT 4

/* CPU time of the whole process (all threads): on a machine others load too, the CPU a decode
 * step costs is steadier than its wall time (compare with the cluster processes' /proc times). */
static double cpu_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int local_run(const char *dir, int batch, int steps, int threads)
{
    mx_error err = {0};
    mx_config cfg;
    mx_weights *w = NULL;
    mx_backend *be = NULL;
    mx_model *m = NULL;
    char path[4200];
    snprintf(path, sizeof path, "%s/config.json", dir);
    int rc = mx_config_load(path, &cfg, &err);
    mx_load_plan plan;
    if (!rc) {
        plan = mx_load_plan_full(&cfg);
        rc = mx_weights_load(dir, &plan, &w, &err);
    }
    if (!rc)
        rc = mx_backend_create("cpu", threads, &be, &err);
    if (!rc)
        rc = mx_model_create(w, be, &m, &err);
    int V = cfg.vocab_size;
    mx_sequence **seqs = calloc((size_t)batch, sizeof *seqs);
    mx_span *spans = calloc((size_t)batch, sizeof *spans);
    int32_t *tokens = calloc((size_t)batch * PROMPT, sizeof *tokens);
    float *logits = malloc((size_t)batch * V * sizeof *logits), *work = malloc((size_t)2 * V * sizeof *work);
    for (int i = 0; i < batch && !rc; i++) {
        rc = mx_sequence_create(m, 0, cfg.num_hidden_layers, &seqs[i], &err);
        spans[i] = (mx_span){i * PROMPT, PROMPT};
        for (int j = 0; j < PROMPT; j++)
            tokens[i * PROMPT + j] = (i * 7 + j * 13 + 1) % V;
    }
    mx_batch b = {batch, seqs, spans, batch * PROMPT};
    mx_sampling_params sp = mx_sampling_defaults();
    double t0 = 0, t_first = 0, cpu0 = 0;
    for (int s = 0; s <= steps && !rc; s++) {
        if (s == 1) {
            t0 = bench_now();
            cpu0 = cpu_seconds();
        }
        double ts = bench_now();
        rc = mx_model_forward(m, &b, tokens, logits, &err);
        for (int i = 0; i < batch && !rc; i++) {
            mx_sample smp;
            mx_rng rng;
            mx_rng_seed(&rng, 0);
            rc = mx_sample_token(logits + (size_t)i * V, V, &sp, NULL, 0, &rng, work, &smp, &err);
            tokens[i] = smp.token;
            spans[i] = (mx_span){i, 1};
        }
        b.n_tokens = batch;
        if (s == 1)
            t_first = bench_now() - ts;
    }
    if (!rc) {
        double dt = bench_now() - t0, cpu = cpu_seconds() - cpu0;
        printf("local   batch %d: %d decode steps in %.3f s, %.1f ms/step (first %.1f ms), cpu %.1f ms/step, "
               "%.1f tokens/s\n", batch, steps, dt, 1e3 * dt / steps, 1e3 * t_first, 1e3 * cpu / steps,
               batch * steps / dt);
    } else {
        fprintf(stderr, "bench_cluster: %s\n", err.msg);
    }
    for (int i = 0; i < batch && seqs; i++)
        if (seqs[i])
            mx_sequence_free(m, seqs[i]);
    free(seqs);
    free(spans);
    free(tokens);
    free(logits);
    free(work);
    mx_model_free(m);
    if (be)
        be->destroy(be);
    mx_weights_free(w);
    return rc ? 1 : 0;
}

/* CPU seconds the processes in pids ("12,34,56") used so far, from /proc/PID/stat (utime +
 * stime, fields 14 and 15); -1 when one cannot be read. */
static double pids_cpu_seconds(const char *pids)
{
    double total = 0;
    const char *p = pids;
    while (*p) {
        char *end;
        long pid = strtol(p, &end, 10);
        if (end == p)
            return -1;
        char path[64], line[1024];
        snprintf(path, sizeof path, "/proc/%ld/stat", pid);
        FILE *f = fopen(path, "r");
        if (!f)
            return -1;
        size_t n = fread(line, 1, sizeof line - 1, f);
        fclose(f);
        line[n] = '\0';
        const char *q = strrchr(line, ')'); /* the command name may hold spaces */
        unsigned long ut, st;
        if (!q || sscanf(q + 1, " %*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &ut, &st) != 2)
            return -1;
        total += (double)(ut + st) / (double)sysconf(_SC_CLK_TCK);
        p = *end == ',' ? end + 1 : end;
    }
    return total;
}

/* What the streams share: how many got their first token, and the cluster's CPU time then. */
typedef struct stream_shared {
    int batch;
    const char *pids;
    atomic_int firsts;
    double cpu0;
} stream_shared;

typedef struct stream_job {
    stream_shared *sh;
    mx_rpc_channel *ch;
    int index, steps;
    double t_first, t_last;
    int n_tokens;
    int failed;
} stream_job;

static void *stream_one(void *arg)
{
    stream_job *j = arg;
    Mx__V1__GenerateRequest rq = MX__V1__GENERATE_REQUEST__INIT;
    Mx__V1__SamplingParams sp = MX__V1__SAMPLING_PARAMS__INIT;
    uint32_t prompt[PROMPT];
    for (int k = 0; k < PROMPT; k++)
        prompt[k] = (uint32_t)(j->index * 7 + k * 13 + 1);
    rq.prompt_ids = prompt;
    rq.n_prompt_ids = PROMPT;
    sp.max_new_tokens = (uint32_t)j->steps + 1;
    sp.ignore_eos = 1;
    rq.sampling = &sp;
    mx_error err = {0};
    mx_rpc_payload p;
    mx_rpc_stream *st = NULL;
    if (mx_rpc_pb_pack(&rq.base, &p, &err) ||
        mx_rpc_stream_open(j->ch, MX_GENERATION_GENERATE_METHOD, p, 600000, &st, &err)) {
        j->failed = 1;
        return NULL;
    }
    mx_rpc_bytes msg = {0};
    while (mx_rpc_stream_read(st, &msg) == 1) {
        ProtobufCMessage *m;
        if (!mx_rpc_pb_unpack(&mx__v1__generate_response__descriptor, msg.data, msg.len, &m, &err)) {
            size_t n = ((Mx__V1__GenerateResponse *)m)->n_token_ids;
            if (n && j->n_tokens == 0) {
                j->t_first = bench_now();
                /* the timed window opens when the last stream got its first token */
                if (j->sh->pids && atomic_fetch_add(&j->sh->firsts, 1) + 1 == j->sh->batch)
                    j->sh->cpu0 = pids_cpu_seconds(j->sh->pids);
            }
            if (n)
                j->t_last = bench_now();
            j->n_tokens += (int)n;
            protobuf_c_message_free_unpacked(m, NULL);
        }
        mx_rpc_bytes_free(&msg);
    }
    if (mx_rpc_stream_status(st)->code != GRPC_STATUS_OK) {
        fprintf(stderr, "bench_cluster: stream %d: %s\n", j->index, mx_rpc_stream_status(st)->message);
        j->failed = 1;
    }
    mx_rpc_stream_close(st);
    return NULL;
}

static int cluster_run(const char *addr, int batch, int steps, const char *pids)
{
    stream_shared sh = {.batch = batch, .pids = pids};
    atomic_init(&sh.firsts, 0);
    mx_error err = {0};
    mx_rpc_channel *ch;
    if (mx_rpc_channel_create(addr, NULL, &ch, &err)) {
        fprintf(stderr, "bench_cluster: %s\n", err.msg);
        return 1;
    }
    stream_job *jobs = calloc((size_t)batch, sizeof *jobs);
    pthread_t *th = calloc((size_t)batch, sizeof *th);
    for (int i = 0; i < batch; i++) {
        jobs[i] = (stream_job){.sh = &sh, .ch = ch, .index = i, .steps = steps};
        pthread_create(&th[i], NULL, stream_one, &jobs[i]);
    }
    int failed = 0, total = 0;
    double first = 0, last = 0;
    for (int i = 0; i < batch; i++) {
        pthread_join(th[i], NULL);
        failed |= jobs[i].failed;
        total += jobs[i].n_tokens - 1;
        if (jobs[i].t_first > first)
            first = jobs[i].t_first;
        if (jobs[i].t_last > last)
            last = jobs[i].t_last;
    }
    double cpu = pids ? pids_cpu_seconds(pids) - sh.cpu0 : 0;
    if (!failed && pids && sh.cpu0 >= 0 && cpu >= 0)
        printf("cluster batch %d: %d decode tokens in %.3f s, %.1f ms/step, cpu %.1f ms/step, %.1f tokens/s\n",
               batch, total, last - first, 1e3 * (last - first) / steps, 1e3 * cpu * batch / total,
               total / (last - first));
    else if (!failed)
        printf("cluster batch %d: %d decode tokens in %.3f s, %.1f ms/step, %.1f tokens/s\n", batch, total,
               last - first, 1e3 * (last - first) / steps, total / (last - first));
    free(jobs);
    free(th);
    mx_rpc_channel_destroy(ch);
    return failed;
}

int main(int argc, char **argv)
{
    const char *model = NULL, *addr = NULL, *pids = NULL;
    int batch = 32, steps = 32, threads = 0;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--model"))
            model = argv[i + 1];
        else if (!strcmp(argv[i], "--addr"))
            addr = argv[i + 1];
        else if (!strcmp(argv[i], "--batch"))
            batch = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--steps"))
            steps = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--threads"))
            threads = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--cpu-pids"))
            pids = argv[i + 1];
    }
    if ((!model == !addr) || batch < 1 || steps < 1) {
        fprintf(stderr, "usage: bench_cluster (--model DIR [--threads N] | --addr HOST:PORT [--cpu-pids P1,P2,..]) "
                        "[--batch B] [--steps S]\n");
        return 2;
    }
    return model ? local_run(model, batch, steps, threads) : cluster_run(addr, batch, steps, pids);
}
