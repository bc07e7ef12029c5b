/* bench_gemm.c - GFLOP/s of mx_cpu_gemm (BF16 weights, as stored) next to OpenBLAS sgemm (the
 * same weights in fp32) on the projection shapes of MiniMax-Text-01 (K = 6144), in one run.
 * M = 1 is memory bound, so it is also given as a fraction of the read bandwidth measured
 * next to it. Timing rounds alternate between mx and OpenBLAS, because this VM's speed drifts
 * within a minute and two numbers taken far apart are not comparable. Weights are cycled through enough copies to exceed the last-level cache. A second table
 * covers the small M (2..32 rows: MoE experts and attention at batched decode) with no BLAS
 * comparison: from memory on all threads, and from cache on one thread (the kernel's compute
 * rate), each also with the streaming and the packed kernel forced. A third table sets int8
 * weights (quantized per row at load, as int8 experts are) against the bf16 path. */
#include <cblas.h>
#include <math.h>
#include <stdio.h>
#include <unistd.h>

#include "bench_util.h"
#include "core/cpu/gemm.h"
#include "core/cpu/gemm_kernels.h"
#include "core/quantize.h"

#define COPY_BYTES ((size_t)768 << 20) /* weights cycled per shape, > any L3 here */
#define MIN_SECONDS 0.15 /* per timing round */
#define ROUNDS 3

typedef struct {
    mx_threadpool *pool;
    mx_cpu_isa isa;
    mx_gemm_path path;
    int M, K, N, copies, fcopies; /* bf16 and fp32 copies of W */
    float *x, *y;
    uint16_t **wb; /* bf16 copies */
    float **wf;    /* fp32 copies */
} shape_run;

static void run_ours(shape_run *s, int c)
{
    mx_error err = {0};
    if (mx_cpu_gemm_with_path(s->pool, s->isa, s->path, s->y, s->N, s->x, s->K, s->M, s->K,
                              s->wb[c], MX_DTYPE_BF16, s->N, &err)) {
        fprintf(stderr, "bench_gemm: %s\n", err.msg);
        exit(1);
    }
}

static void run_blas(shape_run *s, int c)
{
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, s->M, s->N, s->K, 1.f, s->x, s->K,
                s->wf[c], s->K, 0.f, s->y, s->N);
}

/* Best time of one call: one warm-up, then calls cycling the copies for MIN_SECONDS. */
static double time_best(shape_run *s, void (*fn)(shape_run *, int), int copies)
{
    fn(s, 0);
    double best = 1e30, start = bench_now();
    int calls = 0;
    do {
        double t0 = bench_now();
        fn(s, (calls + 1) % copies);
        double t = bench_now() - t0;
        if (t < best)
            best = t;
        calls++;
    } while (bench_now() - start < MIN_SECONDS || calls < 2);
    return best;
}

/* Copies of one random BF16 W[N, K] (cycled so that they come from memory), x and y for up to
 * max_m rows. */
static shape_run small_setup(mx_threadpool *pool, int max_m, int K, int N, int copies)
{
    size_t wn = (size_t)N * K;
    shape_run s = {pool, mx_cpu_best_isa(), MX_GEMM_PATH_AUTO, max_m, K, N, copies, 0,
                   NULL, NULL, NULL, NULL};
    s.x = malloc(sizeof(float) * (size_t)max_m * K);
    s.y = malloc(sizeof(float) * (size_t)max_m * N);
    s.wb = calloc((size_t)copies, sizeof *s.wb);
    float *wf = malloc(wn * 4);
    if (!s.x || !s.y || !s.wb || !wf) {
        fprintf(stderr, "bench_gemm: out of memory\n");
        exit(1);
    }
    bench_fill_f32(s.x, (size_t)max_m * K, 1.f, 7);
    bench_fill_f32(wf, wn, 0.05f, 11);
    for (int c = 0; c < copies; c++) {
        s.wb[c] = malloc(wn * 2);
        if (!s.wb[c]) {
            fprintf(stderr, "bench_gemm: out of memory\n");
            exit(1);
        }
        for (size_t i = 0; i < wn; i++)
            s.wb[c][i] = mx_f32_to_bf16(wf[i]);
    }
    free(wf);
    return s;
}

static void small_free(shape_run *s)
{
    for (int c = 0; c < s->copies; c++)
        free(s->wb[c]);
    free(s->wb);
    free(s->x);
    free(s->y);
}

/* Best seconds of one call on M rows of s through path; 0 if the path cannot take M. */
static double time_path(shape_run *s, int M, mx_gemm_path path)
{
    if (path == MX_GEMM_PATH_STREAM && M > mx_gemv_max_m(s->isa, MX_DTYPE_BF16))
        return 0;
    s->M = M;
    s->path = path;
    return time_best(s, run_ours, s->copies);
}

static void print_gflops(int M, int K, int N, double t)
{
    if (t > 0)
        printf(" %9.1f", 2.0 * M * N * K / t / 1e9);
    else
        printf(" %9s", "-");
}

/* Small M: from memory (K = 6144, N = 4096, all threads; GB/s of W and fraction of bandwidth
 * of the automatic choice) and from cache (K = 1024, N = 512: 1 MiB of W that stays in L2,
 * one thread), each also through the streaming and the packed kernel forced (GFLOP/s), which
 * shows where the automatic choice should switch. */
static void small_m_table(mx_threadpool *pool, int threads, bench_reader *reader, int only_m,
                          int only_n)
{
    static const int Ms[] = {1, 2, 3, 4, 6, 8, 9, 10, 12, 14, 16, 20, 24, 28, 32};
    const int max_m = 32, K = 6144, N = 4096;
    if (only_n)
        return;
    mx_threadpool *one = NULL;
    mx_error err = {0};
    if (mx_threadpool_create(1, &one, &err)) {
        fprintf(stderr, "bench_gemm: %s\n", err.msg);
        exit(1);
    }
    shape_run mem = small_setup(pool, max_m, K, N, (int)(COPY_BYTES / ((size_t)N * K * 2)) + 1);
    shape_run cache = small_setup(one, max_m, 1024, 512, 1);
    printf("\nSmall M, BF16 weights, GFLOP/s. From memory: K = %d, N = %d, %d threads. "
           "From cache: K = 1024, N = 512, 1 thread.\n", K, N, threads);
    printf("%5s | %9s %7s %6s %9s %9s | %9s %9s %9s\n", "M", "mem", "GB/s", "of bw", "stream",
           "packed", "cache", "stream", "packed");
    for (size_t mi = 0; mi < sizeof Ms / sizeof *Ms; mi++) {
        int M = Ms[mi];
        if (only_m > 0 && M != only_m)
            continue;
        double bw = bench_reader_measure(reader, pool, 4); /* right next to the timing */
        double tm = time_path(&mem, M, MX_GEMM_PATH_AUTO);
        double gb = (double)N * K * 2 / tm;
        printf("%5d | %9.1f %7.1f %6.2f", M, 2.0 * M * N * K / tm / 1e9, gb / 1e9, gb / bw);
        print_gflops(M, K, N, time_path(&mem, M, MX_GEMM_PATH_STREAM));
        print_gflops(M, K, N, time_path(&mem, M, MX_GEMM_PATH_PACKED));
        printf(" |");
        print_gflops(M, 1024, 512, time_path(&cache, M, MX_GEMM_PATH_AUTO));
        print_gflops(M, 1024, 512, time_path(&cache, M, MX_GEMM_PATH_STREAM));
        print_gflops(M, 1024, 512, time_path(&cache, M, MX_GEMM_PATH_PACKED));
        printf("\n");
        fflush(stdout);
    }
    small_free(&mem);
    small_free(&cache);
    mx_threadpool_destroy(one);
}

/* int8 weights (quantized per row, as int8 experts are) against the bf16 path on the experts'
 * up/gate shape (K = 6144, N = 9216), from memory on all threads: rounds alternate between
 * bf16 and int8 so both see the same drift; each keeps its best time. GB/s counts each
 * path's own weight bytes (int8: + one fp32 scale per row); 'int8/bf16' is the speed ratio.
 * The stream/packed columns force the int8 kernels (where the automatic switch belongs). */
typedef struct {
    shape_run *s;
    int8_t **q;
    float *scale;
    mx_gemm_i8_path path;
} i8_run;

static i8_run *i8_cur; /* the run time_best's callback works on (set around each timing) */

static void run_i8(shape_run *s, int c)
{
    mx_error err = {0};
    if (mx_cpu_gemm_i8_with(s->pool, s->isa, i8_cur->path, s->y, s->N, s->x, s->K, s->M, s->K,
                            i8_cur->q[c], i8_cur->scale, s->N, &err)) {
        fprintf(stderr, "bench_gemm: %s\n", err.msg);
        exit(1);
    }
}

static double time_i8(i8_run *r, int M, mx_gemm_i8_path path)
{
    r->s->M = M;
    r->path = path;
    i8_cur = r;
    return time_best(r->s, run_i8, r->s->copies);
}

static void int8_table(mx_threadpool *pool, int threads, bench_reader *reader)
{
    static const int Ms[] = {1, 2, 4, 8, 16, 20, 24, 32, 64, 512};
    const int max_m = 512, K = 6144, N = 9216;
    int copies = (int)(COPY_BYTES / ((size_t)N * K * 2)) + 1;
    shape_run s = small_setup(pool, max_m, K, N, copies);
    i8_run r = {&s, calloc((size_t)copies, sizeof(int8_t *)), NULL, MX_GEMM_I8_AUTO};
    mx_tensor src = mx_tensor_2d(s.wb[0], MX_DTYPE_BF16, MX_DEVICE_CPU, N, K), qt;
    void *mem = aligned_alloc(64, (size_t)mx_quantized_i8_bytes(N, K));
    mx_error err = {0};
    if (!r.q || !mem || mx_quantize_i8(&src, mem, threads, &qt, &err)) {
        fprintf(stderr, "bench_gemm: quantize: %s\n", err.msg);
        exit(1);
    }
    r.scale = (float *)qt.scale;
    r.q[0] = qt.data;
    for (int c = 1; c < copies; c++) {
        r.q[c] = malloc((size_t)N * K);
        if (!r.q[c]) {
            fprintf(stderr, "bench_gemm: out of memory\n");
            exit(1);
        }
        memcpy(r.q[c], r.q[0], (size_t)N * K);
    }
    printf("\nint8 vs bf16 weights, K = %d, N = %d, %d threads, from memory; GFLOP/s unless "
           "noted.\n", K, N, threads);
    printf("%5s | %9s %7s | %9s %7s %6s | %9s | %9s %9s\n", "M", "bf16", "GB/s", "int8", "GB/s",
           "of bw", "int8/bf16", "i8 stream", "i8 packed");
    for (size_t mi = 0; mi < sizeof Ms / sizeof *Ms; mi++) {
        int M = Ms[mi];
        double tb = 1e30, ti = 1e30, bw = 0;
        for (int round = 0; round < ROUNDS; round++) {
            double b = bench_reader_measure(reader, pool, 2);
            bw = b > bw ? b : bw;
            double t = time_path(&s, M, MX_GEMM_PATH_AUTO);
            tb = t < tb ? t : tb;
            t = time_i8(&r, M, MX_GEMM_I8_AUTO);
            ti = t < ti ? t : ti;
        }
        double flops = 2.0 * M * (double)N * K;
        double gb_b = (double)N * K * 2 / tb, gb_i = ((double)N * K + 4.0 * N) / ti;
        printf("%5d | %9.1f %7.1f | %9.1f %7.1f %6.2f | %8.2fx |", M, flops / tb / 1e9, gb_b / 1e9,
               flops / ti / 1e9, gb_i / 1e9, gb_i / bw, tb / ti);
        print_gflops(M, K, N, time_i8(&r, M, MX_GEMM_I8_STREAM));
        print_gflops(M, K, N, time_i8(&r, M, MX_GEMM_I8_PACKED));
        printf("\n");
        fflush(stdout);
    }
    for (int c = 1; c < copies; c++)
        free(r.q[c]);
    free(r.q);
    free(mem);
    small_free(&s);
}

int main(int argc, char **argv)
{
    /* Optional arguments: threads (0 = all cores), only this M (-1: only the small-M table,
     * -2: only the int8 table), only this N. */
    int threads = argc > 1 ? atoi(argv[1]) : 0;
    int only_m = argc > 2 ? atoi(argv[2]) : 0, only_n = argc > 3 ? atoi(argv[3]) : 0;
    mx_error err = {0};
    mx_threadpool *pool = NULL;
    if (mx_threadpool_create(threads, &pool, &err)) {
        fprintf(stderr, "bench_gemm: %s\n", err.msg);
        return 1;
    }
    threads = mx_threadpool_size(pool);
    openblas_set_num_threads(threads);
    bench_reader reader_store, *reader = &reader_store;
    if (bench_reader_init(reader, (size_t)512 << 20)) {
        fprintf(stderr, "bench_gemm: out of memory\n");
        return 1;
    }
    double bw = bench_reader_measure(reader, pool, 8);
    if (only_m == -2) { /* only the int8 table */
        int8_table(pool, threads, reader);
        bench_reader_free(reader);
        mx_threadpool_destroy(pool);
        return 0;
    }
    const int K = 6144;
    static const int Ms[] = {1, 8, 64, 512};
    static const int Ns[] = {1024, 8192, 9216, 24576};
    printf("GEMM y[M,N] = x[M,K] . W[N,K]^T, K = %d, %d threads, kernels: %s\n", K, threads,
           mx_cpu_gemm_isa());
    printf("mx: BF16 weights as stored; OpenBLAS: sgemm on fp32 weights. "
           "Read bandwidth at start %.1f GB/s.\n", bw / 1e9);
    printf("%5s %6s | %10s %10s %7s | %8s %8s | %9s\n", "M", "N", "mx GF/s", "BLAS GF/s",
           "ratio", "mx GB/s", "of bw", "max err");
    for (size_t mi = 0; mi < sizeof Ms / sizeof *Ms; mi++) {
        for (size_t ni = 0; ni < sizeof Ns / sizeof *Ns; ni++) {
            if (only_m < 0 || (only_m && Ms[mi] != only_m) || (only_n && Ns[ni] != only_n))
                continue;
            shape_run s = {pool, mx_cpu_best_isa(), MX_GEMM_PATH_AUTO, Ms[mi], K, Ns[ni], 0, 0,
                           NULL, NULL, NULL, NULL};
            size_t wn = (size_t)s.N * K;
            s.copies = (int)(COPY_BYTES / (wn * 2)) + 1;
            s.fcopies = (int)(COPY_BYTES / (wn * 4)) + 1;
            s.x = malloc(sizeof(float) * (size_t)s.M * K);
            s.y = malloc(sizeof(float) * (size_t)s.M * s.N);
            float *yref = malloc(sizeof(float) * (size_t)s.M * s.N);
            s.wb = calloc((size_t)s.copies, sizeof *s.wb);
            s.wf = calloc((size_t)s.copies, sizeof *s.wf);
            bench_fill_f32(s.x, (size_t)s.M * K, 1.f, 7);
            for (int c = 0; c < s.copies; c++) {
                s.wb[c] = malloc(wn * 2);
                if (c < s.fcopies)
                    s.wf[c] = malloc(wn * 4);
                if (!s.wb[c] || (c < s.fcopies && !s.wf[c])) {
                    fprintf(stderr, "bench_gemm: out of memory\n");
                    return 1;
                }
                if (c == 0) {
                    bench_fill_f32(s.wf[0], wn, 0.05f, 11);
                    for (size_t i = 0; i < wn; i++) {
                        s.wb[0][i] = mx_f32_to_bf16(s.wf[0][i]);
                        s.wf[0][i] = mx_bf16_to_f32(s.wb[0][i]); /* same values in both */
                    }
                } else {
                    memcpy(s.wb[c], s.wb[0], wn * 2);
                    if (c < s.fcopies)
                        memcpy(s.wf[c], s.wf[0], wn * 4);
                }
            }
            /* Rounds alternate between the two, so that both see the same drift of this VM;
             * each keeps its best time. M = 1 is also paired with the bandwidth read just
             * before each of its rounds. */
            double t_blas = 1e30, t_ours = 1e30, of_bw[ROUNDS];
            for (int r = 0; r < ROUNDS; r++) {
                double tb = time_best(&s, run_blas, s.fcopies);
                t_blas = tb < t_blas ? tb : t_blas;
                usleep(100000); /* let OpenBLAS's spinning workers go to sleep */
                double bw_now = s.M == 1 ? bench_reader_measure(reader, pool, 4) : 1;
                double to = time_best(&s, run_ours, s.copies);
                t_ours = to < t_ours ? to : t_ours;
                of_bw[r] = (double)wn * 2 / to / bw_now;
            }
            run_blas(&s, 0);
            memcpy(yref, s.y, sizeof(float) * (size_t)s.M * s.N);
            run_ours(&s, 0); /* the same copy as yref */
            double maxerr = 0, scale = 0;
            for (size_t i = 0; i < (size_t)s.M * s.N; i++) {
                double d = fabs((double)s.y[i] - yref[i]);
                if (d > maxerr)
                    maxerr = d;
                if (fabs(yref[i]) > scale)
                    scale = fabs(yref[i]);
            }
            double flops = 2.0 * s.M * (double)s.N * K;
            double gb = (double)wn * 2 / t_ours;
            char frac[16] = "";
            if (s.M == 1)
                snprintf(frac, sizeof frac, "%.2f", bench_median(of_bw, ROUNDS));
            printf("%5d %6d | %10.1f %10.1f %7.2f | %8.1f %8s | %9.1e\n", s.M, s.N,
                   flops / t_ours / 1e9, flops / t_blas / 1e9, t_blas / t_ours, gb / 1e9, frac,
                   scale > 0 ? maxerr / scale : maxerr);
            fflush(stdout);
            for (int c = 0; c < s.copies; c++) {
                free(s.wf[c]);
                free(s.wb[c]);
            }
            free(s.wf);
            free(s.wb);
            free(s.x);
            free(s.y);
            free(yref);
        }
    }
    small_m_table(pool, threads, reader, only_m, only_n);
    if (only_m <= 0 && !only_n)
        int8_table(pool, threads, reader);
    bench_reader_free(reader);
    mx_threadpool_destroy(pool);
    return 0;
}
