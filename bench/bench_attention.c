/* bench_attention.c - the CPU backend's softmax attention op (be->softmax_attention, 2 threads)
 * on the real model's GQA group (8 query heads sharing 1 KV head, head_dim 128): causal prefill
 * GFLOP/s against the fp32 FMA peak measured next to each timing, and decode step time at 1K
 * and at long contexts (64K, 256K; 64 query heads / 8 KV heads as in the real layer, caches
 * filled through the page writer) against the KV bytes read over the memory bandwidth read
 * next to it. With bf16 KV (the default) and f32 KV. BENCH_LONG=1 adds a 256K prefill (minutes). */
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>

#include "bench_util.h"
#include "core/backend.h"
#include "core/cpu/attention_cpu.h"
#include "core/cpu/cpu_backend.h"
#include "core/kv_cache.h"

#define MAX_SIZES 16

typedef struct {
    int threads, heads, kv_heads, d, rotary;
    int sizes[MAX_SIZES], n_sizes;
    int decode_short;              /* context the long decodes are compared with */
    int decode_ctx[MAX_SIZES], n_decode_ctx; /* long decode contexts; none = no decode */
    int decode_heads, decode_kv_heads;
    int decode_steps;
    int fp32_only; /* the ISA's fp32 kernels only (no AMX): the comparison run */
    int bf16dot;   /* the default paths plus VDPBF16PS for P.V of bf16 decode (MX_FA_PATH_BF16DOT) */
    mx_kv_dtype dtypes[2];
    int n_dtypes;
    mx_threadpool *pool; /* the yardsticks' threads, as many as the backend's */
    bench_reader reader;
} bench;

static void die(const char *what, const mx_error *err)
{
    fprintf(stderr, "bench_attention: %s: %s\n", what, err ? err->msg : "out of memory");
    exit(1);
}

/* Attention flops of a causal prefill of n tokens: QK^T and PV, 2 flops per multiply-add,
 * over the n(n+1)/2 visible (query, key) pairs of every query head. */
static double prefill_flops(const bench *b, double n)
{
    return 4.0 * b->d * b->heads * n * (n + 1) / 2;
}

/* A CPU backend whose KV dtype is set before any cache exists (kv_configure's contract). */
static mx_backend *make_backend(const bench *b, mx_kv_dtype dt)
{
    mx_error err = {0};
    mx_backend *be = NULL;
    if (mx_backend_cpu_create(b->threads, &be, &err))
        die("backend", &err);
    mx_kv_options opt = {dt, 0};
    if (be->kv_configure(be, &opt, &err))
        die("kv_configure", &err);
    return be;
}

static void alloc_act(mx_backend *be, mx_tensor *t, int64_t rows, int64_t cols)
{
    mx_error err = {0};
    int64_t shape[2] = {rows, cols};
    if (be->alloc(be, t, be->act_dtype, 2, shape, &err))
        die("alloc", &err);
}

/* Fresh random values (uniform in [-1, 1)) in t through a host buffer of at least t's size. */
static void fill_act(mx_backend *be, mx_tensor *t, float *host, uint64_t seed)
{
    mx_error err = {0};
    bench_fill_f32(host, (size_t)(t->shape[0] * t->shape[1]), 1.f, seed);
    if (be->from_host_f32(be, t, host, &err))
        die("upload", &err);
}

/* The token-by-token tensors of one attention call: q, k, v in, o out. */
typedef struct {
    mx_tensor q, k, v, o;
} qkvo;

static void qkvo_alloc(mx_backend *be, const bench *b, qkvo *t, int n)
{
    alloc_act(be, &t->q, n, (int64_t)b->heads * b->d);
    alloc_act(be, &t->o, n, (int64_t)b->heads * b->d);
    alloc_act(be, &t->k, n, (int64_t)b->kv_heads * b->d);
    alloc_act(be, &t->v, n, (int64_t)b->kv_heads * b->d);
}

static void qkvo_free(mx_backend *be, qkvo *t)
{
    be->free(be, &t->q);
    be->free(be, &t->k);
    be->free(be, &t->v);
    be->free(be, &t->o);
}

/* CPU seconds every thread of this process has run. */
static double cpu_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Appends n = t->q.shape[0] tokens to kv and attends; returns the seconds the op took and, in
 * *cpu when not NULL, the CPU seconds its threads ran meanwhile. */
static double attend_cpu(mx_backend *be, const bench *b, qkvo *t, mx_kv_cache *kv, float *host, uint64_t seed,
                         double *cpu)
{
    mx_error err = {0};
    int n = (int)t->q.shape[0];
    fill_act(be, &t->q, host, seed);
    fill_act(be, &t->k, host, seed + 1);
    fill_act(be, &t->v, host, seed + 2);
    mx_span span = {0, n};
    mx_kv_cache *caches[1] = {kv};
    double c0 = cpu_now(), t0 = bench_now();
    int flags = b->bf16dot ? MX_FA_PATH_BF16DOT : 0;
    if (b->bf16dot && n * (b->heads / b->kv_heads) > MX_FA_DECODE_ROWS && mx_cpu_amx_usable())
        flags |= MX_FA_PATH_AMX; /* as the default op for prefill */
    int rc = b->fp32_only || b->bf16dot
                 ? mx_cpu_softmax_attention_path(be, mx_cpu_best_isa(), flags, &t->o, &t->q, &t->k, &t->v, &span, 1,
                                                 caches, b->heads, b->kv_heads, b->d, b->rotary, 1e7, &err)
                 : be->softmax_attention(be, &t->o, &t->q, &t->k, &t->v, &span, 1, caches, b->heads, b->kv_heads,
                                         b->d, b->rotary, 1e7, &err);
    if (rc || be->sync(be, &err))
        die("softmax_attention", &err);
    double wall = bench_now() - t0;
    if (cpu)
        *cpu = cpu_now() - c0;
    return wall;
}

static double attend(mx_backend *be, const bench *b, qkvo *t, mx_kv_cache *kv, float *host, uint64_t seed)
{
    return attend_cpu(be, b, t, kv, host, seed, NULL);
}

/* Prefill of every size: each timing between two FMA-peak readings, the ratio against their
 * mean. Leaves the cache of the last size filled in *kept (for the long decode). */
static void run_prefill(bench *b, mx_backend *be, mx_kv_dtype dt, mx_kv_cache *kept)
{
    /* the default op takes the AMX tiles for bf16 pages where the CPU has them, fp32 kernels else */
    const char *path = dt == MX_KV_BF16 && b->d % 32 == 0 && !b->fp32_only ? mx_cpu_attention_path()
                                                                            : mx_cpu_isa_name(mx_cpu_best_isa());
    printf("\nKV %s: causal prefill, one sequence, all n tokens in one call, kernel path %s%s\n", mx_kv_dtype_name(dt),
           path, strcmp(path, "amx") ? "" : " (bf16 tile products, fp32 accumulation and softmax)");
    printf("%8s %5s %10s %9s %9s %15s %8s %s\n", "n", "runs", "ms", "GFLOP", "GFLOP/s", "peak GFLOP/s", "of peak",
           "target");
    for (int si = 0; si < b->n_sizes; si++) {
        int n = b->sizes[si];
        int runs = n <= 16384 ? 3 : 1; /* the long ones take tens of seconds each */
        qkvo t;
        qkvo_alloc(be, b, &t, n);
        float *host = malloc(sizeof(float) * (size_t)n * b->heads * b->d);
        if (!host)
            die("host buffer", NULL);
        double flops = prefill_flops(b, n), best = 1e30, ratios[3], lo = 1e30, hi = 0;
        for (int r = 0; r < runs; r++) {
            mx_error err = {0};
            mx_kv_cache kv;
            if (be->kv_cache_init(be, &kv, b->kv_heads, b->d, &err))
                die("kv_cache_init", &err);
            double p0 = bench_fma_peak(b->pool, 3);
            double s = attend(be, b, &t, &kv, host, 1000 + (uint64_t)r);
            double p1 = bench_fma_peak(b->pool, 3);
            ratios[r] = flops / s / (0.5 * (p0 + p1));
            lo = p0 < lo ? p0 : lo;
            lo = p1 < lo ? p1 : lo;
            hi = p0 > hi ? p0 : hi;
            hi = p1 > hi ? p1 : hi;
            best = s < best ? s : best;
            if (si == b->n_sizes - 1 && r == runs - 1)
                *kept = kv;
            else
                be->kv_cache_free(be, &kv);
        }
        double ratio = bench_median(ratios, runs);
        char range[48];
        snprintf(range, sizeof range, "%.0f-%.0f", lo / 1e9, hi / 1e9);
        printf("%8d %5d %10.1f %9.1f %9.1f %15s %8.3f %s\n", n, runs, best * 1e3, flops / 1e9, flops / best / 1e9,
               range, ratio, n >= 16384 ? ">= 0.5" : "");
        /* one line per size for scripts: bench_long_context.sh projects prefill times with it */
        printf("result prefill n=%d kv=%s gflops=%.2f of_peak=%.4f path=%s\n", n, mx_kv_dtype_name(dt),
               flops / best / 1e9, ratio, path);
        fflush(stdout);
        free(host);
        qkvo_free(be, &t);
    }
}

/* Appends `tokens` tokens of random K and V to kv through the page writer, without attention:
 * a 256K-token prefill through the op takes hours, and decode time depends only on the pages.
 * A few pages of values are reused, which changes nothing the step reads from memory. */
static void fill_cache(mx_backend *be, const bench *b, mx_kv_cache *kv, int64_t tokens)
{
    enum { VARIANTS = 4 };
    size_t row = (size_t)b->kv_heads * b->d, page = (size_t)MX_KV_PAGE_TOKENS * row;
    float *host = malloc(sizeof(float) * 2 * VARIANTS * page);
    if (!host)
        die("host buffer", NULL);
    bench_fill_f32(host, 2 * VARIANTS * page, 1.f, 99);
    mx_kv_pool *pool = ((mx_cpu_impl *)be->impl)->kv_pool;
    for (int64_t i = 0; kv->len < tokens; i++) {
        mx_error err = {0};
        int64_t n = tokens - kv->len < MX_KV_PAGE_TOKENS - kv->len % MX_KV_PAGE_TOKENS
                        ? tokens - kv->len
                        : MX_KV_PAGE_TOKENS - kv->len % MX_KV_PAGE_TOKENS;
        if (mx_kv_reserve(pool, &kv, &n, 1, &err))
            die("kv reserve", &err);
        const float *k = host + (size_t)(i % VARIANTS) * 2 * page;
        mx_kv_write_page(kv, kv->len, (int)n, k, k + page, row);
        kv->len += n;
    }
    free(host);
}

/* bench_reader_init with the buffer on huge pages where the kernel gives them (2 MiB aligned,
 * advised before the first touch), as the KV slabs are: on 4 KiB pages the yardstick itself
 * reads ~1.6x slower here (TLB misses, the prefetcher stopping at each page), and the decode
 * would be judged against a limit it can beat. */
static int reader_init_huge(bench_reader *r, size_t bytes)
{
    const size_t huge = (size_t)2 << 20;
    r->bytes = (bytes + huge - 1) & ~(huge - 1);
    r->buf = aligned_alloc(huge, r->bytes);
    r->job = calloc(1, sizeof *r->job);
    if (!r->buf || !r->job) {
        free(r->buf);
        free(r->job);
        return -1;
    }
#ifdef MADV_HUGEPAGE
    (void)madvise(r->buf, r->bytes, MADV_HUGEPAGE); /* advice only */
#endif
    memset(r->buf, 1, r->bytes);
    r->job->buf = r->buf;
    r->job->words = r->bytes / 8;
    return 0;
}

/* A read-bandwidth reading (bytes/s, the best round) and, in *per_cpu, the bytes the reader
 * read per second of its threads' CPU time over the threads: what it streams while it runs, which
 * a busy machine (other processes taking the cores) does not lower the way it lowers the wall
 * clock reading. */
static double read_bw(bench *b, double *per_cpu)
{
    mx_task_fn kernels[2];
    int n_kernels = bench_read_kernels(kernels);
    double c0 = cpu_now();
    double bw = bench_reader_measure(&b->reader, b->pool, 1);
    double cpu = cpu_now() - c0;
    *per_cpu = (double)n_kernels * (double)b->reader.bytes / (cpu / b->threads);
    return bw;
}

/* Decode steps alternating between a short and a long cache of the same backend, each step
 * after a read-bandwidth reading (which also evicts the caches from the last-level cache, so
 * each step reads its KV from memory as a long context must). The extra time of the long step
 * is compared with its KV bytes over 0.8 x that bandwidth, pair by pair: by the wall clock, and
 * by the CPU time of the step's and the reader's threads (the same comparison with the time
 * other processes held the cores taken out of both sides). */
static void run_decode(bench *b, mx_backend *be, mx_kv_dtype dt, mx_kv_cache *long_kv)
{
    mx_error err = {0};
    int steps = b->decode_steps;
    mx_kv_cache short_kv;
    if (be->kv_cache_init(be, &short_kv, b->kv_heads, b->d, &err))
        die("kv_cache_init", &err);
    qkvo pre;
    qkvo_alloc(be, b, &pre, b->decode_short);
    float *host = malloc(sizeof(float) * (size_t)b->decode_short * b->heads * b->d);
    if (!host)
        die("host buffer", NULL);
    attend(be, b, &pre, &short_kv, host, 7);
    qkvo_free(be, &pre);
    qkvo t;
    qkvo_alloc(be, b, &t, 1);
    double *ts = malloc(sizeof(double) * 9 * (size_t)steps);
    if (!ts)
        die("step times", NULL);
    double *tl = ts + steps, *bw = ts + 2 * steps, *ratio = ts + 3 * steps, *extra = ts + 4 * steps;
    double *share = ts + 5 * steps, *cbw = ts + 6 * steps, *cextra = ts + 7 * steps, *cratio = ts + 8 * steps;
    for (int i = -1; i < steps; i++) { /* step -1 warms up both */
        double cbw0, cbw1, cpu_s, cpu_l;
        double bw0 = read_bw(b, &cbw0);
        double s = attend_cpu(be, b, &t, &short_kv, host, 50 + 3 * (uint64_t)(i + 1), &cpu_s);
        double bw1 = read_bw(b, &cbw1);
        double l = attend_cpu(be, b, &t, long_kv, host, 5000 + 3 * (uint64_t)(i + 1), &cpu_l);
        if (i < 0)
            continue;
        share[i] = cpu_l / (l * b->threads);
        cbw[i] = 0.5 * (cbw0 + cbw1);
        cextra[i] = (cpu_l - cpu_s) / b->threads;
        /* the pages the step read: every token so far, its own included, in whole pages */
        double bytes = (double)mx_kv_bytes_for_tokens(dt, b->kv_heads, b->d, 1, long_kv->len);
        ts[i] = s;
        tl[i] = l;
        bw[i] = 0.5 * (bw0 + bw1);
        extra[i] = l - s;
        ratio[i] = (l - s) / (bytes / (0.8 * bw1));
        cratio[i] = cextra[i] / (bytes / (0.8 * cbw1));
    }
    double bytes = (double)mx_kv_bytes_for_tokens(dt, b->kv_heads, b->d, 1, long_kv->len);
    double ms_s = bench_median(ts, steps) * 1e3, ms_l = bench_median(tl, steps) * 1e3;
    double bw_m = bench_median(bw, steps), ex = bench_median(extra, steps);
    printf("\nKV %s: decode, one sequence, %d query / %d KV heads, %d steps alternating %d and %lld tokens of\n"
           "context, each after a bandwidth reading; bound = KV bytes at the long context / (0.8 x bandwidth\n"
           "read just before); extra = long step - short step; cpu = CPU time the long step's threads ran\n"
           "over threads x its wall time (below 1: the threads waited for a core, on a busy machine)\n",
           mx_kv_dtype_name(dt), b->heads, b->kv_heads, steps, b->decode_short, (long long)long_kv->len);
    printf("%12s %12s %10s %10s %10s %10s %12s %12s %6s\n", "ms short", "ms long", "extra ms", "KV MB", "bw GB/s",
           "bound ms", "extra/bound", "of bw", "cpu");
    printf("%12.3f %12.3f %10.3f %10.1f %10.1f %10.3f %12.2f %12.2f %6.2f   target: extra/bound <= 1\n", ms_s,
           ms_l, ex * 1e3, bytes / 1e6, bw_m / 1e9, bytes / (0.8 * bw_m) * 1e3, bench_median(ratio, steps),
           bytes / ex / bw_m, bench_median(share, steps));
    double cbw_m = bench_median(cbw, steps), cex = bench_median(cextra, steps);
    printf("%12s %12s %10.3f %10s %10.1f %10.3f %12.2f %12.2f   by CPU time (threads' own time / threads)\n", "",
           "", cex * 1e3, "", cbw_m / 1e9, bytes / (0.8 * cbw_m) * 1e3, bench_median(cratio, steps),
           bytes / cex / cbw_m);
    printf("result decode ctx=%lld kv=%s extra_ms=%.4f bound_ms=%.4f cpu_extra_ms=%.4f cpu_bound_ms=%.4f\n",
           (long long)long_kv->len, mx_kv_dtype_name(dt), ex * 1e3, bytes / (0.8 * bw_m) * 1e3, cex * 1e3,
           bytes / (0.8 * cbw_m) * 1e3);
    fflush(stdout);
    free(ts);
    free(host);
    qkvo_free(be, &t);
    be->kv_cache_free(be, &short_kv);
}

static int parse_sizes(const char *s, int *out)
{
    int n = 0;
    for (const char *p = s; *p && n < MAX_SIZES;) {
        char *end;
        long v = strtol(p, &end, 10);
        if (end == p || v < 1 || v > (1 << 24))
            return -1;
        if (*end == 'K' || *end == 'k')
            v *= 1024, end++;
        out[n++] = (int)v;
        p = *end == ',' ? end + 1 : end;
        if (*end && *end != ',')
            return -1;
    }
    return n;
}

static void usage(void)
{
    fprintf(stderr, "usage: bench_attention [--sizes 4K,16K,64K] [--kv-dtype bf16|f32|all] [--heads 8] [--kv-heads 1]\n"
                    "         [--head-dim 128] [--threads 2] [--decode-steps 8] [--no-decode] [--fp32-kernels | --bf16dot]\n"
                    "         [--decode-contexts 64K,256K] [--decode-heads 64] [--decode-kv-heads 8]\n"
                    "Decode steps at 1K alternate with steps at each decode context.\n"
                    "BENCH_LONG=1 adds 256K to the prefill sizes. --fp32-kernels: the ISA's fp32 kernels only\n"
                    "(no AMX tiles), to compare with. --bf16dot: VDPBF16PS for P.V of bf16 decode too.\n");
    exit(2);
}

int main(int argc, char **argv)
{
    bench b = {.threads = 2, .heads = 8, .kv_heads = 1, .d = 128, .decode_short = 1024, .decode_heads = 64,
               .decode_kv_heads = 8, .decode_steps = 8};
    const char *long_env = getenv("BENCH_LONG");
    int is_long = long_env && strcmp(long_env, "1") == 0;
    b.n_sizes = parse_sizes(is_long ? "4K,16K,64K,256K" : "4K,16K,64K", b.sizes);
    b.n_decode_ctx = parse_sizes("64K,256K", b.decode_ctx);
    const char *dtypes = "all";
    int decode = 1;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(a, "--no-decode") == 0) {
            decode = 0;
            continue;
        }
        if (strcmp(a, "--fp32-kernels") == 0) {
            b.fp32_only = 1;
            continue;
        }
        if (strcmp(a, "--bf16dot") == 0) {
            b.bf16dot = 1;
            continue;
        }
        if (!v)
            usage();
        i++;
        if (strcmp(a, "--sizes") == 0) {
            if ((b.n_sizes = parse_sizes(v, b.sizes)) <= 0)
                usage();
        } else if (strcmp(a, "--kv-dtype") == 0) {
            dtypes = v;
        } else if (strcmp(a, "--heads") == 0) {
            b.heads = atoi(v);
        } else if (strcmp(a, "--kv-heads") == 0) {
            b.kv_heads = atoi(v);
        } else if (strcmp(a, "--head-dim") == 0) {
            b.d = atoi(v);
        } else if (strcmp(a, "--threads") == 0) {
            b.threads = atoi(v);
        } else if (strcmp(a, "--decode-steps") == 0) {
            b.decode_steps = atoi(v);
        } else if (strcmp(a, "--decode-contexts") == 0) {
            if ((b.n_decode_ctx = parse_sizes(v, b.decode_ctx)) <= 0)
                usage();
        } else if (strcmp(a, "--decode-heads") == 0) {
            b.decode_heads = atoi(v);
        } else if (strcmp(a, "--decode-kv-heads") == 0) {
            b.decode_kv_heads = atoi(v);
        } else {
            usage();
        }
    }
    if (b.heads < 1 || b.kv_heads < 1 || b.heads % b.kv_heads || b.d < 2 || b.d % 2 || b.threads < 1 ||
        b.decode_steps < 1 || b.decode_kv_heads < 1 || b.decode_heads % b.decode_kv_heads)
        usage();
    b.rotary = b.d / 2; /* the real model rotates 64 of 128 dims */
    if (strcmp(dtypes, "all") == 0) {
        b.dtypes[0] = MX_KV_BF16;
        b.dtypes[1] = MX_KV_F32;
        b.n_dtypes = 2;
    } else {
        mx_error err = {0};
        if (mx_kv_dtype_parse(dtypes, "--kv-dtype", &b.dtypes[0], &err))
            die("arguments", &err);
        b.n_dtypes = 1;
    }
    if (!decode)
        b.n_decode_ctx = 0;
    mx_error err = {0};
    if (mx_threadpool_create(b.threads, &b.pool, &err))
        die("pool", &err);
    if (b.n_decode_ctx && reader_init_huge(&b.reader, (size_t)512 << 20))
        die("bandwidth buffer", NULL);

    if (b.fp32_only && b.bf16dot)
        usage();
    if (b.bf16dot && !mx_fa_bf16dot_usable()) {
        fprintf(stderr, "bench_attention: --bf16dot: this CPU has no AVX512-BF16\n");
        return 2;
    }
    int amx = !b.fp32_only && mx_cpu_amx_usable(), dot = b.bf16dot;
    printf("Softmax attention op (%s), CPU backend, %d threads, kernel ISA %s, AMX %s,\n"
           "VDPBF16PS %s\n",
           b.fp32_only ? "fp32 kernels only" : b.bf16dot ? "default paths + VDPBF16PS" : "be->softmax_attention", b.threads, mx_cpu_isa_name(mx_cpu_best_isa()),
           amx ? "yes (bf16 prefill tiles)" : "no", dot ? "yes (P.V of bf16 decode)" : "no");
    printf("%d query heads sharing %d KV head(s), head_dim %d, rotary %d. Attention flops = 4 x head_dim x heads x\n"
           "n(n+1)/2 (QK^T and PV, causal). 'of peak' = GFLOP/s over the fp32 FMA peak (%s, %d threads) measured\n"
           "just before and just after each timing (median over runs); 'peak' shows the readings' range.\n",
           b.heads, b.kv_heads, b.d, b.rotary, bench_fma_isa_name(), b.threads);
    for (int di = 0; di < b.n_dtypes; di++) {
        mx_backend *be = make_backend(&b, b.dtypes[di]);
        mx_kv_cache kept = {0};
        run_prefill(&b, be, b.dtypes[di], &kept);
        be->kv_cache_free(be, &kept);
        bench db = b; /* decode on the real layer's heads */
        db.heads = b.decode_heads;
        db.kv_heads = b.decode_kv_heads;
        for (int ci = 0; ci < b.n_decode_ctx; ci++) {
            mx_kv_cache kv;
            if (be->kv_cache_init(be, &kv, db.kv_heads, db.d, &err))
                die("kv_cache_init", &err);
            fill_cache(be, &db, &kv, b.decode_ctx[ci]);
            run_decode(&db, be, b.dtypes[di], &kv);
            be->kv_cache_free(be, &kv);
        }
        be->destroy(be);
    }
    if (b.n_decode_ctx)
        bench_reader_free(&b.reader);
    mx_threadpool_destroy(b.pool);
    return 0;
}
