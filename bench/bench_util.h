/* bench_util.h - small shared helpers of the benchmarks: a monotonic clock, a memory-read
 * bandwidth measurement over both cores (the yardstick for memory-bound kernels) and random
 * fills. Header-only so every bench_*.c stays one self-contained binary. */
#ifndef MX_BENCH_UTIL_H
#define MX_BENCH_UTIL_H

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

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
#endif

static mx_task_fn bench_read_kernel(void)
{
#if defined(__x86_64__)
    if (__builtin_cpu_supports("avx512f"))
        return bench_read_task_avx512;
#endif
    return bench_read_task;
}

/* Best-of-runs read bandwidth in bytes/s of a buffer of `bytes` (make it >> last-level cache),
 * every pool thread reading its own contiguous slice. Returns 0 if the buffer cannot be had. */
static inline double bench_read_bandwidth(mx_threadpool *pool, size_t bytes, int runs)
{
    bytes &= ~(size_t)255;
    uint64_t *buf = aligned_alloc(64, bytes);
    if (!buf)
        return 0;
    memset(buf, 1, bytes); /* touch every page before timing */
    bench_read_job *j = calloc(1, sizeof *j);
    if (!j) {
        free(buf);
        return 0;
    }
    j->buf = buf;
    j->words = bytes / 8;
    double best = 1e30;
    int tasks = mx_threadpool_size(pool);
    for (int r = 0; r < runs; r++) {
        double t0 = bench_now();
        mx_threadpool_run(pool, bench_read_kernel(), j, tasks);
        double t = bench_now() - t0;
        if (t < best)
            best = t;
    }
    volatile uint64_t sink = j->sums[0];
    (void)sink;
    free(j);
    free(buf);
    return (double)bytes / best;
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
