/* bench_util.h - small shared helpers of the benchmarks: a monotonic clock, a memory-read
 * bandwidth measurement over both cores (the yardstick for memory-bound kernels), an fp32 FMA
 * peak measurement (the yardstick for compute-bound ones) and random fills. Header-only so
 * every bench_*.c stays one self-contained binary. */
#ifndef MX_BENCH_UTIL_H
#define MX_BENCH_UTIL_H

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/cpu/cpu_features.h"
#include "core/cpu/threadpool.h"

static inline double bench_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

typedef struct {
    const uint64_t *buf;
    size_t words;
    uint64_t sums[256 * 8]; /* one cache line per task, so tasks never share a line */
} bench_read_job;

/* Sums a slice 256 bytes per step into four independent vector chains, so the loop is
 * limited by memory. The portable version uses GCC vector extensions (SSE2 at least); on a
 * CPU with AVX-512 a 64-byte-load version runs instead, because narrower loads cannot keep
 * enough reads in flight to reach the memory's limit (measured here: 16 vs 30 GB/s). */
typedef uint64_t bench_v8u __attribute__((vector_size(64)));

static void bench_read_task(void *ctx, int task, int n_tasks)
{
    bench_read_job *j = ctx;
    size_t lines = j->words / 32; /* 256-byte steps */
    size_t l0 = lines * (size_t)task / (size_t)n_tasks, l1 = lines * (size_t)(task + 1) / (size_t)n_tasks;
    const bench_v8u *v = (const bench_v8u *)(const void *)j->buf;
    bench_v8u s0 = {0}, s1 = {0}, s2 = {0}, s3 = {0};
    for (size_t i = l0; i < l1; i++) {
        s0 += v[4 * i];
        s1 += v[4 * i + 1];
        s2 += v[4 * i + 2];
        s3 += v[4 * i + 3];
    }
    bench_v8u s = s0 + s1 + s2 + s3;
    uint64_t t = 0;
    for (int u = 0; u < 8; u++)
        t += s[u];
    j->sums[(size_t)(task % 256) * 8] += t;
}

#if defined(__x86_64__)
#include <immintrin.h>
__attribute__((target("avx512f"))) static void bench_read_task_avx512(void *ctx, int task, int n_tasks)
{
    bench_read_job *j = ctx;
    size_t lines = j->words / 32;
    size_t l0 = lines * (size_t)task / (size_t)n_tasks, l1 = lines * (size_t)(task + 1) / (size_t)n_tasks;
    const __m512i *v = (const __m512i *)(const void *)j->buf;
    __m512i s0 = _mm512_setzero_si512(), s1 = s0, s2 = s0, s3 = s0;
    for (size_t i = l0; i < l1; i++) {
        s0 = _mm512_add_epi64(s0, _mm512_load_si512(v + 4 * i));
        s1 = _mm512_add_epi64(s1, _mm512_load_si512(v + 4 * i + 1));
        s2 = _mm512_add_epi64(s2, _mm512_load_si512(v + 4 * i + 2));
        s3 = _mm512_add_epi64(s3, _mm512_load_si512(v + 4 * i + 3));
    }
    __m512i s = _mm512_add_epi64(_mm512_add_epi64(s0, s1), _mm512_add_epi64(s2, s3));
    j->sums[(size_t)(task % 256) * 8] += (uint64_t)_mm512_reduce_add_epi64(s);
}

/* The slice as 8 interleaved streams, each load also prefetching 1 KiB further along its
 * stream: the hardware prefetcher alone stalls at every 4 KiB page, and this reads 5-10 %
 * faster than one plain stream here (31.5-32.9 vs 28.8-30.0 GB/s). The weight-streaming
 * kernels read this way, so the yardstick must too, or they would beat "the limit". */
__attribute__((target("avx512f"))) static void bench_read_task_avx512_prefetch(void *ctx,
                                                                                int task,
                                                                                int n_tasks)
{
    bench_read_job *j = ctx;
    size_t lines = j->words / 8; /* 64-byte lines */
    size_t l0 = lines * (size_t)task / (size_t)n_tasks, l1 = lines * (size_t)(task + 1) / (size_t)n_tasks;
    size_t seg = (l1 - l0) / 8;
    const __m512i *v = (const __m512i *)(const void *)j->buf + l0;
    __m512i s[8];
    for (int r = 0; r < 8; r++)
        s[r] = _mm512_setzero_si512();
    for (size_t i = 0; i < seg; i++)
        for (int r = 0; r < 8; r++) {
            _mm_prefetch((const char *)(v + (size_t)r * seg + i + 16), _MM_HINT_T0);
            s[r] = _mm512_add_epi64(s[r], _mm512_load_si512(v + (size_t)r * seg + i));
        }
    for (int r = 1; r < 8; r++)
        s[0] = _mm512_add_epi64(s[0], s[r]);
    j->sums[(size_t)(task % 256) * 8] += (uint64_t)_mm512_reduce_add_epi64(s[0]);
}
#endif

/* Fills out with the read loops this CPU can run; returns how many. */
static int bench_read_kernels(mx_task_fn out[2])
{
#if defined(__x86_64__)
    if (__builtin_cpu_supports("avx512f")) {
        out[0] = bench_read_task_avx512;
        out[1] = bench_read_task_avx512_prefetch;
        return 2;
    }
#endif
    out[0] = bench_read_task;
    return 1;
}

/* A buffer to measure read bandwidth with, kept between measurements so that a benchmark can
 * measure the machine's limit right next to each timing (this VM's bandwidth drifts by tens of
 * per cent within a minute; a ratio of two numbers taken seconds apart is what is stable). */
typedef struct {
    uint64_t *buf;
    size_t bytes;
    bench_read_job *job;
} bench_reader;

/* 0 on success; bytes should be well above the last-level cache. */
static inline int bench_reader_init(bench_reader *r, size_t bytes)
{
    r->bytes = bytes & ~(size_t)255;
    r->buf = aligned_alloc(64, r->bytes);
    r->job = calloc(1, sizeof *r->job);
    if (!r->buf || !r->job) {
        free(r->buf);
        free(r->job);
        return -1;
    }
    memset(r->buf, 1, r->bytes); /* touch every page before timing */
    r->job->buf = r->buf;
    r->job->words = r->bytes / 8;
    return 0;
}

static inline void bench_reader_free(bench_reader *r)
{
    free(r->buf);
    free(r->job);
}

/* Read bandwidth in bytes/s, every pool thread reading its own contiguous slice: the best of
 * `runs` rounds of every read loop this CPU has. */
static inline double bench_reader_measure(bench_reader *r, mx_threadpool *pool, int runs)
{
    double best = 1e30;
    int tasks = mx_threadpool_size(pool);
    mx_task_fn kernels[2];
    int n_kernels = bench_read_kernels(kernels);
    for (int i = 0; i < runs; i++)
        for (int k = 0; k < n_kernels; k++) {
            double t0 = bench_now();
            mx_threadpool_run(pool, kernels[k], r->job, tasks);
            double t = bench_now() - t0;
            if (t < best)
                best = t;
        }
    volatile uint64_t sink = r->job->sums[0];
    (void)sink;
    return (double)r->bytes / best;
}

/* Best-of-runs read bandwidth of a fresh buffer of `bytes`; 0 if it cannot be had. */
static inline double bench_read_bandwidth(mx_threadpool *pool, size_t bytes, int runs)
{
    bench_reader r;
    if (bench_reader_init(&r, bytes))
        return 0;
    double bw = bench_reader_measure(&r, pool, runs);
    bench_reader_free(&r);
    return bw;
}

/* ---- fp32 FMA peak ----
 * Each task runs BENCH_FMA_CHAINS independent multiply-add chains in registers: FMA latency
 * is 4 cycles on current x86 and two ports issue one each per cycle, so at least 8 chains
 * are needed to keep both ports busy; 16 (12 for the 16-register AVX2 file) leave margin.
 * s = s * a + b with a just below 1 stays finite however long it runs. Like the read loops
 * these use target attributes rather than a *_avx512.c file: every benchmark is one source
 * file linked against libmx, and the loop only runs after the run-time check below. */
typedef struct {
    long iters;
    float sums[256 * 16]; /* one cache line per task */
} bench_fma_job;

#define BENCH_FMA_CHAINS 16
#define BENCH_FMA_CHAINS_AVX2 12

#if defined(__x86_64__)
__attribute__((target("avx512f,fma"))) static void bench_fma_task_avx512(void *ctx, int task, int n_tasks)
{
    (void)n_tasks;
    bench_fma_job *j = ctx;
    __m512 a = _mm512_set1_ps(0.999999f), b = _mm512_set1_ps(1e-6f), s[BENCH_FMA_CHAINS];
    for (int r = 0; r < BENCH_FMA_CHAINS; r++)
        s[r] = _mm512_set1_ps((float)r);
    for (long i = 0; i < j->iters; i++) {
#pragma GCC unroll 16
        for (int r = 0; r < BENCH_FMA_CHAINS; r++)
            s[r] = _mm512_fmadd_ps(s[r], a, b);
    }
    for (int r = 1; r < BENCH_FMA_CHAINS; r++)
        s[0] = _mm512_add_ps(s[0], s[r]);
    j->sums[(size_t)(task % 256) * 16] += _mm512_reduce_add_ps(s[0]);
}

__attribute__((target("avx2,fma"))) static void bench_fma_task_avx2(void *ctx, int task, int n_tasks)
{
    (void)n_tasks;
    bench_fma_job *j = ctx;
    __m256 a = _mm256_set1_ps(0.999999f), b = _mm256_set1_ps(1e-6f), s[BENCH_FMA_CHAINS_AVX2];
    for (int r = 0; r < BENCH_FMA_CHAINS_AVX2; r++)
        s[r] = _mm256_set1_ps((float)r);
    for (long i = 0; i < j->iters; i++) {
#pragma GCC unroll 12
        for (int r = 0; r < BENCH_FMA_CHAINS_AVX2; r++)
            s[r] = _mm256_fmadd_ps(s[r], a, b);
    }
    for (int r = 1; r < BENCH_FMA_CHAINS_AVX2; r++)
        s[0] = _mm256_add_ps(s[0], s[r]);
    float t[8];
    _mm256_storeu_ps(t, s[0]);
    j->sums[(size_t)(task % 256) * 16] += t[0] + t[1] + t[2] + t[3] + t[4] + t[5] + t[6] + t[7];
}
#endif

/* Portable: 4-lane multiply then add (two flops, no fused instruction guaranteed). */
typedef float bench_v4f __attribute__((vector_size(16)));
static void bench_fma_task_scalar(void *ctx, int task, int n_tasks)
{
    (void)n_tasks;
    bench_fma_job *j = ctx;
    bench_v4f a = {0.999999f, 0.999999f, 0.999999f, 0.999999f}, b = {1e-6f, 1e-6f, 1e-6f, 1e-6f};
    bench_v4f s[BENCH_FMA_CHAINS];
    for (int r = 0; r < BENCH_FMA_CHAINS; r++)
        s[r] = (bench_v4f){(float)r, (float)r, (float)r, (float)r};
    for (long i = 0; i < j->iters; i++) {
#pragma GCC unroll 16
        for (int r = 0; r < BENCH_FMA_CHAINS; r++)
            s[r] = s[r] * a + b;
    }
    for (int r = 1; r < BENCH_FMA_CHAINS; r++)
        s[0] += s[r];
    j->sums[(size_t)(task % 256) * 16] += s[0][0] + s[0][1] + s[0][2] + s[0][3];
}

/* The FMA loop of the widest ISA this CPU runs: its kernel and flops per iteration. */
static inline mx_task_fn bench_fma_kernel(mx_cpu_isa *isa, double *flops_per_iter)
{
    *isa = mx_cpu_best_isa();
#if defined(__x86_64__)
    if (*isa == MX_CPU_ISA_AVX512) {
        *flops_per_iter = 2.0 * 16 * BENCH_FMA_CHAINS;
        return bench_fma_task_avx512;
    }
    if (*isa == MX_CPU_ISA_AVX2) {
        *flops_per_iter = 2.0 * 8 * BENCH_FMA_CHAINS_AVX2;
        return bench_fma_task_avx2;
    }
#endif
    *isa = MX_CPU_ISA_SCALAR;
    *flops_per_iter = 2.0 * 4 * BENCH_FMA_CHAINS;
    return bench_fma_task_scalar;
}

/* "avx512", "avx2" or "scalar": the ISA the FMA peak is measured with. */
static inline const char *bench_fma_isa_name(void)
{
    mx_cpu_isa isa;
    double f;
    bench_fma_kernel(&isa, &f);
    return mx_cpu_isa_name(isa);
}

/* fp32 peak in flop/s over every thread of the pool: the best of `runs` rounds, each round
 * 4 tasks per thread of about 2 M iterations (a few ms each), so a thread that the shared
 * machine delays leaves its tasks to the others, as it would in the kernels measured against
 * this. Take it right next to the timing it is compared with: the clock drifts. */
static inline double bench_fma_peak(mx_threadpool *pool, int runs)
{
    mx_cpu_isa isa;
    double flops_per_iter;
    mx_task_fn fn = bench_fma_kernel(&isa, &flops_per_iter);
    static const long iters = 1L << 21;
    int tasks = 4 * mx_threadpool_size(pool);
    bench_fma_job *j = calloc(1, sizeof *j);
    if (!j)
        return 0;
    j->iters = iters;
    double best = 1e30;
    for (int i = 0; i < runs; i++) {
        double t0 = bench_now();
        mx_threadpool_run(pool, fn, j, tasks);
        double t = bench_now() - t0;
        best = t < best ? t : best;
    }
    volatile float sink = j->sums[0];
    (void)sink;
    free(j);
    return (double)tasks * (double)iters * flops_per_iter / best;
}

static int bench_cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* Median of n values (sorts them). */
static inline double bench_median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, bench_cmp_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

static inline uint64_t bench_rng(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

/* Uniform in [-scale, scale). */
static inline void bench_fill_f32(float *p, size_t n, float scale, uint64_t seed)
{
    uint64_t s = seed | 1;
    for (size_t i = 0; i < n; i++)
        p[i] = scale * (float)((double)(bench_rng(&s) >> 40) / 8388608.0 - 1.0);
}

#endif
