/* cmd_cluster.c - `mx cluster`: a whole serving cluster on loopback for development and
 * tests. Writes config files into a temp dir, starts the expert shards (with replicas), the
 * attention stages and the gateway (binaries next to the mx binary), waits until every one
 * answers SERVING to grpc health, prints the addresses, and stops them all on SIGINT/SIGTERM.
 * If a child dies the rest are stopped and the exit status is non-zero (with
 * --allow-replica-loss, losing an expert replica is tolerated while its shard has another). */
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "cli_util.h"
#include "commands.h"
#include "core/config.h"
#include "core/cpus.h"
#include "core/kv_cache.h"
#include "core/rpc/client.h"
#include "core/rpc/pb.h"
#include "grpc/health/v1/health.pb-c.h"

#define MAX_PROCS 256

typedef enum { KIND_EXPERT, KIND_STAGE, KIND_GATEWAY } proc_kind;

typedef struct proc {
    proc_kind kind;
    int index, replica;      /* stage index / shard index and replica number */
    int port;
    int metrics_port;        /* its Prometheus GET /metrics (metrics_listen) */
    pid_t pid;
    bool alive;
    char name[32];
    char cfg_path[1100];
    char log_path[1100];
} proc;

typedef struct cluster {
    const char *model;
    int stages, shards, threads, max_batch;
    int pipeline_depth;         /* 0 until parsed: default_pipeline_depth */
    int pin_threads;            /* -1 until parsed: default_pin_threads; else 0/1 */
    int prefill_with_decodes;   /* gateway.max_prefill_tokens_with_decodes; -1 = its default */
    const char *replicas_text;  /* "R" for every shard or "R0,R1,..." per shard */
    const char *kv_dtype;       /* NULL = the stages' default (bf16) */
    const char *expert_dtype;   /* NULL = the shards' default (bf16, as stored) */
    const char *attn_dtype;     /* NULL = the stages' default (bf16, as stored) */
    unsigned long long kv_cache_bytes; /* per stage; 0 = the stages' default */
    int replicas[64];
    bool allow_replica_loss;
    char dir[1024];
    char bin_dir[PATH_MAX];
    mx_config cfg;
    int n;
    proc p[MAX_PROCS];
} cluster;

static void usage(FILE *f)
{
    fprintf(f, "usage: mx cluster --model DIR --stages S --expert-shards E [--replicas R|R0,R1,..] [--port P]\n"
               "         [--threads T] [--max-batch N] [--pipeline-depth D] [--pin-threads yes|no]\n"
               "         [--allow-replica-loss] [--workdir DIR] [--kv-dtype bf16|f32|fp8_e4m3|int8] [--kv-cache-bytes N[K|M|G]]\n"
               "         [--expert-dtype bf16|int8] [--attn-dtype bf16|int8] [--max-prefill-tokens-with-decodes N]\n"
               "Starts E*R expert-svc, S attention-svc and a gateway on 127.0.0.1 and prints, once all\n"
               "are SERVING, one line per process (\"<kind> <index> <address> pid <pid>\"), the gateway's\n"
               "OpenAI HTTP API (\"http http://127.0.0.1:PORT\"), each one's Prometheus endpoint\n"
               "(\"metrics <name> http://127.0.0.1:PORT/metrics\") and then \"gateway listening on\n"
               "127.0.0.1:PORT\". Stops everything on SIGINT/SIGTERM.\n"
               "Stages are chained (each forwards to the next); the gateway keeps up to D micro-batches\n"
               "in the pipeline (default: S when S x T threads fit the machine's cores, else 1, since\n"
               "micro-batches on shared cores only read every weight once more; 1 = one at a time).\n"
               "--pin-threads: keep each stage's and shard's threads on distinct CPUs (default: yes when T\n"
               "is 0 or the number of CPUs this command may use, so that every process spans them all).\n"
               "--kv-dtype and --kv-cache-bytes set every stage's KV cache element type and budget\n"
               "(binary units; default: half of free memory).\n"
               "--expert-dtype sets every expert shard's expert_dtype, --attn-dtype every stage's\n"
               "attn_dtype (int8: weights quantized at load, per-row scales).\n"
               "--max-prefill-tokens-with-decodes sets the gateway's cap on prompt tokens per step while\n"
               "requests decode (0 = no cap; default: the gateway's).\n");
}

/* Reserves n distinct free loopback ports by binding them all at once, then closes them.
 * Another process could take one in between; the services then fail to bind and the
 * cluster stops with their error, which is acceptable for a development tool. */
static int pick_ports(int *ports, int n)
{
    int fds[2 * MAX_PROCS], rc = 0; /* a service port and a metrics port per process */
    for (int i = 0; i < n; i++)
        fds[i] = -1;
    for (int i = 0; i < n && !rc; i++) {
        if (ports[i] > 0)
            continue;
        struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
        socklen_t len = sizeof a;
        fds[i] = socket(AF_INET, SOCK_STREAM, 0);
        if (fds[i] < 0 || bind(fds[i], (struct sockaddr *)&a, sizeof a) || getsockname(fds[i], (struct sockaddr *)&a, &len))
            rc = -1;
        else
            ports[i] = ntohs(a.sin_port);
    }
    for (int i = 0; i < n; i++)
        if (fds[i] >= 0)
            close(fds[i]);
    return rc;
}

static proc *add_proc(cluster *c, proc_kind kind, int index, int replica)
{
    proc *p = &c->p[c->n++];
    memset(p, 0, sizeof *p);
    p->kind = kind;
    p->index = index;
    p->replica = replica;
    if (kind == KIND_EXPERT)
        snprintf(p->name, sizeof p->name, "expert-%d.%d", index, replica);
    else if (kind == KIND_STAGE)
        snprintf(p->name, sizeof p->name, "stage-%d", index);
    else
        snprintf(p->name, sizeof p->name, "gateway");
    char name[sizeof p->name];
    memcpy(name, p->name, sizeof name);
    snprintf(p->cfg_path, sizeof p->cfg_path, "%s/%s.cfg", c->dir, name);
    snprintf(p->log_path, sizeof p->log_path, "%s/%s.log", c->dir, name);
    return p;
}

/* Writes a libconfig string value (the paths we write never contain quotes or backslashes;
 * the model path is checked for them up front). */
static int write_expert_cfg(const cluster *c, const proc *p)
{
    FILE *f = fopen(p->cfg_path, "w");
    if (!f)
        return -1;
    int ne = c->cfg.num_local_experts;
    int e0 = p->index * ne / c->shards, e1 = (p->index + 1) * ne / c->shards;
    fprintf(f, "# expert shard %d replica %d (written by mx cluster)\n", p->index, p->replica);
    fprintf(f, "model_dir = \"%s\";\nlisten = \"127.0.0.1:%d\";\nthreads = %d;\nshard_index = %d;\nexperts = [",
            c->model, p->port, c->threads, p->index);
    for (int e = e0; e < e1; e++)
        fprintf(f, e > e0 ? ", %d" : "%d", e);
    fprintf(f, "];\n");
    fprintf(f, "metrics_listen = \"127.0.0.1:%d\";\n", p->metrics_port);
    if (c->pin_threads)
        fprintf(f, "pin_threads = true;\n");
    if (c->expert_dtype)
        fprintf(f, "expert_dtype = \"%s\";\n", c->expert_dtype);
    return fclose(f);
}

static int write_stage_cfg(const cluster *c, const proc *p)
{
    FILE *f = fopen(p->cfg_path, "w");
    if (!f)
        return -1;
    int L = c->cfg.num_hidden_layers, ne = c->cfg.num_local_experts;
    fprintf(f, "# attention stage %d of %d (written by mx cluster)\n", p->index, c->stages);
    fprintf(f,
            "stage = {\n  listen = \"127.0.0.1:%d\";\n  model = \"%s\";\n  index = %d;\n  count = %d;\n"
            "  layer_begin = %d;\n  layer_end = %d;\n  max_sequences = %d;\n  threads = %d;\n",
            p->port, c->model, p->index, c->stages, p->index * L / c->stages, (p->index + 1) * L / c->stages,
            c->max_batch * 2 + 16, c->threads);
    fprintf(f, "  metrics_listen = \"127.0.0.1:%d\";\n", p->metrics_port);
    /* chained: hidden states go straight to the next stage; the port is already reserved */
    for (int i = 0; i < c->n; i++)
        if (c->p[i].kind == KIND_STAGE && c->p[i].index == p->index + 1)
            fprintf(f, "  next = \"127.0.0.1:%d\";\n", c->p[i].port);
    if (c->pipeline_depth > c->stages)  /* one handler per batch in flight, plus control calls */
        fprintf(f, "  worker_threads = %d;\n", c->pipeline_depth + 4);
    if (c->pin_threads)
        fprintf(f, "  pin_threads = true;\n");
    if (c->kv_dtype)
        fprintf(f, "  kv_dtype = \"%s\";\n", c->kv_dtype);
    if (c->attn_dtype)
        fprintf(f, "  attn_dtype = \"%s\";\n", c->attn_dtype);
    if (c->kv_cache_bytes)
        fprintf(f, "  kv_cache_bytes = %lluL;\n", c->kv_cache_bytes);
    fprintf(f, "};\n");
    fprintf(f, "experts = {\n  shards = (\n");
    for (int s = 0; s < c->shards; s++) {
        int e0 = s * ne / c->shards, e1 = (s + 1) * ne / c->shards;
        fprintf(f, "    { experts = [");
        for (int e = e0; e < e1; e++)
            fprintf(f, e > e0 ? ", %d" : "%d", e);
        fprintf(f, "];\n      replicas = [");
        int k = 0;
        for (int i = 0; i < c->n; i++)
            if (c->p[i].kind == KIND_EXPERT && c->p[i].index == s)
                fprintf(f, k++ ? ", \"127.0.0.1:%d\"" : "\"127.0.0.1:%d\"", c->p[i].port);
        fprintf(f, "]; }%s\n", s + 1 < c->shards ? "," : "");
    }
    fprintf(f, "  );\n};\n");
    return fclose(f);
}

/* Pinning when --pin-threads is not given: when every stage and shard has a thread per usable
 * CPU (T = 0 or T = that count). Then each process spans every CPU and pinning thread i of
 * each to CPU i keeps a process's threads apart (measured on 2 vCPUs: the kernel left one idle
 * for milliseconds while a shard's two threads shared the other; cluster / single-process
 * decode 0.83-0.89 -> 0.89-1.02). With fewer threads the processes' pools would all pile
 * onto the first CPUs, so they are left to the kernel. */
static int default_pin_threads(const cluster *c)
{
    return c->threads == 0 || c->threads == mx_usable_cpus();
}

/* Micro-batches in flight when --pipeline-depth is not given: one per stage when the stages'
 * threads fit the machine's cores (S x T <= the CPUs it may use), else 1. Every process of this
 * cluster shares the machine: when the stages' threads already cover the cores, a second
 * micro-batch adds no hardware, only a second read of every weight per step (measured on 2
 * cores, batch 32, 2 stages of 2 threads: depth 2 at 0.60-0.66 of the single-process engine,
 * depth 1 at 0.83; an attention-heavy model gained 2-7 % from depth 2). */
static int default_pipeline_depth(const cluster *c)
{
    long cores = mx_usable_cpus();
    long threads = c->threads > 0 ? c->threads : cores; /* 0 = every core */
    return (long)c->stages * threads <= cores ? c->stages : 1;
}

static int write_gateway_cfg(const cluster *c, const proc *p)
{
    FILE *f = fopen(p->cfg_path, "w");
    if (!f)
        return -1;
    /* the OpenAI HTTP API on a port the gateway picks and reports in gateway.http_port */
    fprintf(f, "# gateway (written by mx cluster)\ngateway = {\n  listen = \"127.0.0.1:%d\";\n  model = \"%s\";\n"
               "  num_expert_shards = %d;\n  max_batch_sequences = %d;\n  pipeline_depth = %d;\n"
               "  http_listen = \"127.0.0.1:0\";\n  http_port_file = \"%s/gateway.http_port\";\n  stages = [",
            p->port, c->model, c->shards, c->max_batch, c->pipeline_depth, c->dir);
    int k = 0;
    for (int i = 0; i < c->n; i++)
        if (c->p[i].kind == KIND_STAGE)
            fprintf(f, k++ ? ", \"127.0.0.1:%d\"" : "\"127.0.0.1:%d\"", c->p[i].port);
    fprintf(f, "];\n  metrics_listen = \"127.0.0.1:%d\";\n", p->metrics_port);
    if (c->prefill_with_decodes >= 0)
        fprintf(f, "  max_prefill_tokens_with_decodes = %d;\n", c->prefill_with_decodes);
    fprintf(f, "};\n");
    return fclose(f);
}

static int spawn(cluster *c, proc *p)
{
    const char *bin = p->kind == KIND_EXPERT ? "expert-svc" : p->kind == KIND_STAGE ? "attention-svc" : "gateway";
    char path[PATH_MAX + 32];
    snprintf(path, sizeof path, "%s/%s", c->bin_dir, bin);
    pid_t pid = fork();
    if (pid < 0)
        return -1;
    if (pid == 0) {
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        FILE *log = freopen(p->log_path, "w", stderr);
        if (log)
            dup2(fileno(stderr), STDOUT_FILENO);
        char *args[] = {path, "--config", p->cfg_path, NULL};
        execv(path, args);
        fprintf(stderr, "mx cluster: cannot run %s: %s\n", path, strerror(errno));
        _exit(127);
    }
    p->pid = pid;
    p->alive = true;
    return 0;
}

static void print_log_tail(const proc *p)
{
    FILE *f = fopen(p->log_path, "r");
    if (!f)
        return;
    char lines[8][512];
    int n = 0;
    while (fgets(lines[n % 8], sizeof lines[0], f))
        n++;
    fclose(f);
    for (int i = n > 8 ? n - 8 : 0; i < n; i++)
        fprintf(stderr, "  %s| %s", p->name, lines[i % 8]);
}

/* Reaps exited children. Returns 1 if the cluster must stop (with a message). */
static int reap(cluster *c)
{
    int status, fatal = 0;
    pid_t pid;
    while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
        for (int i = 0; i < c->n; i++) {
            proc *p = &c->p[i];
            if (p->pid != pid)
                continue;
            p->alive = false;
            fprintf(stderr, "mx cluster: %s (pid %d) %s %d\n", p->name, (int)pid,
                    WIFSIGNALED(status) ? "was killed by signal" : "exited with status",
                    WIFSIGNALED(status) ? WTERMSIG(status) : WEXITSTATUS(status));
            bool survivor = false;
            for (int j = 0; j < c->n; j++)
                if (c->p[j].alive && c->p[j].kind == KIND_EXPERT && p->kind == KIND_EXPERT &&
                    c->p[j].index == p->index)
                    survivor = true;
            if (!(c->allow_replica_loss && survivor)) {
                print_log_tail(p);
                fatal = 1;
            } else {
                fprintf(stderr, "mx cluster: shard %d still has a live replica; going on\n", p->index);
            }
        }
    }
    return fatal;
}

static void stop_all(cluster *c)
{
    for (int i = c->n - 1; i >= 0; i--)
        if (c->p[i].alive)
            kill(c->p[i].pid, SIGTERM);
    for (int tries = 0; tries < 100; tries++) {
        bool any = false;
        for (int i = 0; i < c->n; i++) {
            if (!c->p[i].alive)
                continue;
            if (waitpid(c->p[i].pid, NULL, WNOHANG) == c->p[i].pid)
                c->p[i].alive = false;
            else
                any = true;
        }
        if (!any)
            return;
        struct timespec ts = {0, 50 * 1000000L};
        nanosleep(&ts, NULL);
    }
    for (int i = 0; i < c->n; i++)
        if (c->p[i].alive) {
            kill(c->p[i].pid, SIGKILL);
            waitpid(c->p[i].pid, NULL, 0);
            c->p[i].alive = false;
        }
}

/* 1 when the process answers SERVING to grpc.health.v1.Health/Check for "". */
static int is_serving(const proc *p)
{
    char addr[64];
    snprintf(addr, sizeof addr, "127.0.0.1:%d", p->port);
    mx_rpc_channel *ch;
    mx_error err = {0};
    if (mx_rpc_channel_create(addr, NULL, &ch, &err))
        return 0;
    Grpc__Health__V1__HealthCheckRequest rq = GRPC__HEALTH__V1__HEALTH_CHECK_REQUEST__INIT;
    mx_rpc_payload pl;
    mx_rpc_result res = {0};
    int serving = 0;
    if (!mx_rpc_pb_pack(&rq.base, &pl, &err) &&
        !mx_rpc_unary(ch, "/grpc.health.v1.Health/Check", pl, 500, &res)) {
        ProtobufCMessage *m;
        if (!mx_rpc_pb_unpack(&grpc__health__v1__health_check_response__descriptor, res.response.data,
                              res.response.len, &m, &err)) {
            serving = ((Grpc__Health__V1__HealthCheckResponse *)m)->status ==
                      GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING;
            protobuf_c_message_free_unpacked(m, NULL);
        }
    }
    mx_rpc_result_free(&res);
    mx_rpc_channel_destroy(ch);
    return serving;
}

/* Starts procs [from, to) and waits until all of them serve (or one dies / 120 s pass). */
static int start_group(cluster *c, int from, int to)
{
    for (int i = from; i < to; i++)
        if (spawn(c, &c->p[i])) {
            fprintf(stderr, "mx cluster: cannot start %s: %s\n", c->p[i].name, strerror(errno));
            return -1;
        }
    for (int i = from; i < to; i++) {
        double waited = 0;
        while (!is_serving(&c->p[i])) {
            if (reap(c))
                return -1;
            if (!c->p[i].alive) {
                fprintf(stderr, "mx cluster: %s stopped before serving\n", c->p[i].name);
                return -1;
            }
            if ((waited += 0.05) > 120) {
                fprintf(stderr, "mx cluster: %s did not become SERVING within 120 s\n", c->p[i].name);
                print_log_tail(&c->p[i]);
                return -1;
            }
            struct timespec ts = {0, 50 * 1000000L};
            nanosleep(&ts, NULL);
        }
    }
    return 0;
}

/* --replicas: one count for every shard, or one per shard ("2,1"). */
static int parse_replicas(cluster *c)
{
    int32_t *ids = NULL;
    int n = c->replicas_text ? cli_parse_ids("--replicas", c->replicas_text, &ids) : 0;
    int rc = 0;
    if (n < 0)
        rc = -1;
    else if (n > 1 && n != c->shards) {
        fprintf(stderr, "mx cluster: --replicas lists %d counts for %d shards\n", n, c->shards);
        rc = -1;
    }
    for (int s = 0; s < c->shards && !rc; s++) {
        c->replicas[s] = n == 0 ? 1 : ids[n == 1 ? 0 : s];
        if (c->replicas[s] < 1 || c->replicas[s] > 8) {
            fprintf(stderr, "mx cluster: --replicas: %d is not in [1, 8]\n", c->replicas[s]);
            rc = -1;
        }
    }
    free(ids);
    return rc;
}

/* --kv-cache-bytes: bytes, or a count with a binary unit (K/KiB, M/MiB, G/GiB, T/TiB). */
static int parse_bytes(const char *text, unsigned long long *out)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(text, &end, 10);
    int shift = -1;
    const char *units = "KMGT";
    if (end == text || text[0] == '-' || errno)
        shift = -1;
    else if (!*end)
        shift = 0;
    else if (strchr(units, *end) && (!end[1] || strcmp(end + 1, "iB") == 0))
        shift = 10 * (int)(strchr(units, *end) - units + 1);
    if (shift < 0 || (shift && v > (~0ull >> shift))) {
        fprintf(stderr, "mx cluster: --kv-cache-bytes %s: expected bytes, e.g. 1073741824, 512M or 8GiB\n", text);
        return -1;
    }
    *out = v << shift;
    return 0;
}

static int bin_dir_of_self(char *out, size_t cap)
{
    char self[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    if (n <= 0)
        return -1;
    self[n] = 0;
    char *slash = strrchr(self, '/');
    if (!slash)
        return -1;
    *slash = 0;
    snprintf(out, cap, "%s", self);
    return 0;
}

static int run(cluster *c, int gateway_port)
{
    /* experts first (stages need their addresses), then stages, then the gateway */
    int ports[2 * MAX_PROCS] = {0};
    int n_exp = 0;
    for (int s = 0; s < c->shards; s++)
        for (int r = 0; r < c->replicas[s]; r++, n_exp++)
            add_proc(c, KIND_EXPERT, s, r);
    for (int s = 0; s < c->stages; s++)
        add_proc(c, KIND_STAGE, s, 0);
    add_proc(c, KIND_GATEWAY, 0, 0);
    ports[c->n - 1] = gateway_port;
    if (pick_ports(ports, 2 * c->n)) {
        fprintf(stderr, "mx cluster: cannot reserve loopback ports: %s\n", strerror(errno));
        return 1;
    }
    for (int i = 0; i < c->n; i++) {
        c->p[i].port = ports[i];
        c->p[i].metrics_port = ports[c->n + i];
    }
    for (int i = 0; i < c->n; i++) {
        proc *p = &c->p[i];
        int rc = p->kind == KIND_EXPERT ? write_expert_cfg(c, p)
                 : p->kind == KIND_STAGE ? write_stage_cfg(c, p)
                                         : write_gateway_cfg(c, p);
        if (rc) {
            fprintf(stderr, "mx cluster: cannot write %s: %s\n", p->cfg_path, strerror(errno));
            return 1;
        }
    }
    int rc = start_group(c, 0, n_exp);
    if (!rc)
        rc = start_group(c, n_exp, n_exp + c->stages);
    if (!rc)
        rc = start_group(c, c->n - 1, c->n);
    if (rc) {
        stop_all(c);
        return 1;
    }
    for (int i = 0; i < c->n; i++) {
        const proc *p = &c->p[i];
        const char *kind = p->kind == KIND_EXPERT ? "expert" : p->kind == KIND_STAGE ? "stage" : "gateway";
        if (p->kind == KIND_EXPERT)
            printf("%s %d.%d 127.0.0.1:%d pid %d\n", kind, p->index, p->replica, p->port, (int)p->pid);
        else
            printf("%s %d 127.0.0.1:%d pid %d\n", kind, p->index, p->port, (int)p->pid);
    }
    for (int i = 0; i < c->n; i++)
        printf("metrics %s http://127.0.0.1:%d/metrics\n", c->p[i].name, c->p[i].metrics_port);
    printf("configs and logs in %s\n", c->dir);
    /* written by the gateway before it turned SERVING */
    char http_path[sizeof c->dir + 32];
    snprintf(http_path, sizeof http_path, "%s/gateway.http_port", c->dir);
    FILE *hf = fopen(http_path, "r");
    int http_port = 0;
    if (hf && fscanf(hf, "%d", &http_port) == 1 && http_port > 0)
        printf("http http://127.0.0.1:%d\n", http_port);
    if (hf)
        fclose(hf);
    printf("gateway listening on 127.0.0.1:%d\n", c->p[c->n - 1].port);
    fflush(stdout);
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGCHLD);
    int status = 0;
    for (;;) {
        struct timespec ts = {1, 0};
        int sig = sigtimedwait(&set, NULL, &ts);
        if (sig == SIGINT || sig == SIGTERM) {
            fprintf(stderr, "mx cluster: stopping (signal %d)\n", sig);
            break;
        }
        if (reap(c)) {
            status = 1;
            break;
        }
    }
    stop_all(c);
    return status;
}

/* Removes the temp dir and the files this run wrote in it (kept after a failure, for the
 * logs, and always kept with --workdir). */
static void clean_dir(const cluster *c)
{
    for (int i = 0; i < c->n; i++) {
        unlink(c->p[i].cfg_path);
        unlink(c->p[i].log_path);
    }
    char http_path[sizeof c->dir + 32];
    snprintf(http_path, sizeof http_path, "%s/gateway.http_port", c->dir);
    unlink(http_path);
    rmdir(c->dir);
}

int mx_cmd_cluster(int argc, char **argv)
{
    cluster *c = calloc(1, sizeof *c);
    if (!c) {
        fprintf(stderr, "mx cluster: out of memory\n");
        return 1;
    }
    c->max_batch = 64;
    c->prefill_with_decodes = -1;
    c->pin_threads = -1;
    long v, port = 0;
    const char *workdir = NULL;
    static const struct option opts[] = {
        {"model", required_argument, 0, 'm'},     {"stages", required_argument, 0, 's'},
        {"expert-shards", required_argument, 0, 'e'}, {"replicas", required_argument, 0, 'r'},
        {"port", required_argument, 0, 'p'},      {"threads", required_argument, 0, 't'},
        {"max-batch", required_argument, 0, 'b'}, {"allow-replica-loss", no_argument, 0, 'a'},
        {"workdir", required_argument, 0, 'w'},   {"pipeline-depth", required_argument, 0, 'd'},
        {"kv-dtype", required_argument, 0, 'k'},  {"kv-cache-bytes", required_argument, 0, 'c'},
        {"expert-dtype", required_argument, 0, 'x'}, {"attn-dtype", required_argument, 0, 'A'},
        {"max-prefill-tokens-with-decodes", required_argument, 0, 'P'},
        {"pin-threads", required_argument, 0, 'T'},
        {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0}};
    int ch, bad = 0;
    optind = 1;
    while (!bad && (ch = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (ch) {
        case 'm': c->model = optarg; break;
        case 's': bad = cli_parse_int("--stages", optarg, 1, 64, &v); c->stages = (int)v; break;
        case 'e': bad = cli_parse_int("--expert-shards", optarg, 1, 64, &v); c->shards = (int)v; break;
        case 'r': c->replicas_text = optarg; break;
        case 'p': bad = cli_parse_int("--port", optarg, 0, 65535, &port); break;
        case 't': bad = cli_parse_int("--threads", optarg, 0, 256, &v); c->threads = (int)v; break;
        case 'b': bad = cli_parse_int("--max-batch", optarg, 1, 4096, &v); c->max_batch = (int)v; break;
        case 'd': bad = cli_parse_int("--pipeline-depth", optarg, 1, 64, &v); c->pipeline_depth = (int)v; break;
        case 'a': c->allow_replica_loss = true; break;
        case 'P':
            bad = cli_parse_int("--max-prefill-tokens-with-decodes", optarg, 0, 1 << 24, &v);
            c->prefill_with_decodes = (int)v;
            break;
        case 'w': workdir = optarg; break;
        case 'T':
            if ((bad = strcmp(optarg, "yes") && strcmp(optarg, "no")))
                fprintf(stderr, "mx cluster: --pin-threads: \"%s\" is not yes or no\n", optarg);
            c->pin_threads = !strcmp(optarg, "yes");
            break;
        case 'k': {
            mx_kv_dtype t;
            mx_error e = {0};
            if ((bad = mx_kv_dtype_parse(optarg, "--kv-dtype", &t, &e) != 0))
                fprintf(stderr, "mx cluster: %s\n", e.msg);
            c->kv_dtype = optarg;
            break;
        }
        case 'c': bad = parse_bytes(optarg, &c->kv_cache_bytes) != 0; break;
        case 'x':
        case 'A': {
            mx_weight_format f;
            if ((bad = mx_weight_format_from_name(optarg, &f) != 0))
                fprintf(stderr, "mx cluster: %s: \"%s\" is not bf16 or int8\n",
                        ch == 'x' ? "--expert-dtype" : "--attn-dtype", optarg);
            *(ch == 'x' ? &c->expert_dtype : &c->attn_dtype) = optarg;
            break;
        }
        case 'h': usage(stdout); free(c); return 0;
        default: bad = 1;
        }
    }
    if (bad || !c->model || !c->stages || !c->shards || optind != argc) {
        usage(stderr);
        free(c);
        return 2;
    }
    if (parse_replicas(c)) {
        free(c);
        return 2;
    }
    if (!c->pipeline_depth)
        c->pipeline_depth = default_pipeline_depth(c);
    if (c->pin_threads < 0)
        c->pin_threads = default_pin_threads(c);
    int rc = 1;
    char cfg_path[PATH_MAX + 16], model_abs[PATH_MAX];
    mx_error err = {0};
    if (!realpath(c->model, model_abs) || strpbrk(model_abs, "\"\\")) {
        fprintf(stderr, "mx cluster: --model %s: not a usable directory\n", c->model);
        goto out;
    }
    c->model = model_abs;
    snprintf(cfg_path, sizeof cfg_path, "%s/config.json", c->model);
    if (mx_config_load(cfg_path, &c->cfg, &err)) {
        fprintf(stderr, "mx cluster: %s\n", err.msg);
        goto out;
    }
    if (c->stages > c->cfg.num_hidden_layers || c->shards > c->cfg.num_local_experts ||
        c->shards * 8 + c->stages + 1 > MAX_PROCS) {
        fprintf(stderr, "mx cluster: %d stages / %d expert shards do not fit a model of %d layers and %d experts\n",
                c->stages, c->shards, c->cfg.num_hidden_layers, c->cfg.num_local_experts);
        goto out;
    }
    if (bin_dir_of_self(c->bin_dir, sizeof c->bin_dir)) {
        fprintf(stderr, "mx cluster: cannot find the directory of the mx binary\n");
        goto out;
    }
    if (workdir) {
        if (mkdir(workdir, 0700) && errno != EEXIST) {
            fprintf(stderr, "mx cluster: --workdir %s: %s\n", workdir, strerror(errno));
            goto out;
        }
        snprintf(c->dir, sizeof c->dir, "%s", workdir);
    } else {
        const char *tmp = getenv("TMPDIR");
        snprintf(c->dir, sizeof c->dir, "%s/mx-cluster-XXXXXX", tmp && *tmp ? tmp : "/tmp");
        if (!mkdtemp(c->dir)) {
            fprintf(stderr, "mx cluster: cannot create a temp dir: %s\n", strerror(errno));
            goto out;
        }
    }
    /* Signals are taken synchronously (sigtimedwait); children get them unblocked. */
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGCHLD);
    sigprocmask(SIG_BLOCK, &set, NULL);
    rc = run(c, (int)port);
    if (rc == 0 && !workdir)
        clean_dir(c);
    else
        fprintf(stderr, "mx cluster: configs and logs kept in %s\n", c->dir);
out:
    free(c);
    return rc;
}
