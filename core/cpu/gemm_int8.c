/* gemm_int8.c - mx_cpu_gemm_i8: int8-weight matrix multiply (weights quantized at load, one
 * fp32 scale per output row). Checks arguments, picks the kernel family and path at run time,
 * splits output columns over the thread pool as mx_cpu_gemm does; holds the scalar kernel. */
#include "gemm.h"

#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>

#include "gemm_kernels.h"

/* Up to this M the AVX-512 family streams int8 rows; above it the packed kernel (fp32
 * panels reused across rows of x) is faster. bench_gemm's int8 table (K = 6144, N = 9216, 2
 * vCPUs, GFLOP/s stream vs packed): M = 8: 83 vs 50; M = 16: 61 vs 80; M = 32: 68 vs 94. */
#define MX_GEMM_I8_AUTO_M_AVX512 8

/* ---- scalar: the portable fallback and the readable statement of the math ---- */

void mx_gemv_i8_scalar(const mx_gemm_i8_args *a, int n0, int n1)
{
    for (int n = n0; n < n1; n++) {
        const int8_t *q = a->q + (size_t)n * a->K;
        for (int m = 0; m < a->M; m++) {
            const float *x = a->x + (size_t)m * a->ldx;
            /* Four partial sums, as the bf16 scalar kernel: shorter chains, smaller error. */
            float s0 = 0.f, s1 = 0.f, s2 = 0.f, s3 = 0.f;
            int k = 0;
            for (; k + 4 <= a->K; k += 4) {
                s0 += x[k] * (float)q[k];
                s1 += x[k + 1] * (float)q[k + 1];
                s2 += x[k + 2] * (float)q[k + 2];
                s3 += x[k + 3] * (float)q[k + 3];
            }
            for (; k < a->K; k++)
                s0 += x[k] * (float)q[k];
            a->y[(size_t)m * a->ldy + n] = a->scale[n] * ((s0 + s1) + (s2 + s3));
        }
    }
}

/* ---- dispatch and threading ---- */

typedef void (*gemv_i8_fn)(const mx_gemm_i8_args *a, int n0, int n1);
typedef void (*gemm_i8_fn)(const mx_gemm_i8_args *a, int n0, int n1, float *scratch);

/* A panel's busy flag on its own cache line: claiming or freeing a panel does not disturb
 * the line another thread is reading. */
typedef struct {
    _Alignas(64) atomic_int busy;
} gemm_slot;

typedef struct {
    mx_gemm_i8_args args;
    gemv_i8_fn gemv;
    gemm_i8_fn gemm;
    int chunk;
    float *scratch; /* n_slots panels of MX_GEMM_SCRATCH_FLOATS, or NULL: streaming */
    gemm_slot *slots;      /* n_slots busy flags, in the same pool-owned block as the panels */
    int n_slots;
} gemm_i8_job;

static int claim_slot(gemm_i8_job *j)
{
    for (;;)
        for (int s = 0; s < j->n_slots; s++)
            if (atomic_load_explicit(&j->slots[s].busy, memory_order_relaxed) == 0 &&
                atomic_exchange(&j->slots[s].busy, 1) == 0)
                return s;
}

static void gemm_i8_task(void *ctx, int task, int n_tasks)
{
    (void)n_tasks;
    gemm_i8_job *j = ctx;
    int n0 = task * j->chunk;
    int n1 = n0 + j->chunk < j->args.N ? n0 + j->chunk : j->args.N;
    if (!j->scratch) {
        j->gemv(&j->args, n0, n1);
        return;
    }
    int s = claim_slot(j);
    j->gemm(&j->args, n0, n1, j->scratch + (size_t)s * MX_GEMM_SCRATCH_FLOATS);
    atomic_store(&j->slots[s].busy, 0);
}

int mx_cpu_gemm_i8_with(mx_threadpool *pool, mx_cpu_isa isa, mx_gemm_i8_path path, float *y,
                        int ldy, const float *x, int ldx, int M, int K, const int8_t *q,
                        const float *scale, int N, mx_error *err)
{
    if (M < 0 || K <= 0 || N <= 0)
        return mx_fail(err, MX_EINVAL, "gemm int8: bad shape M=%d K=%d N=%d", M, K, N);
    if (ldx < K || ldy < N)
        return mx_fail(err, MX_EINVAL, "gemm int8: row stride ldx=%d < K=%d or ldy=%d < N=%d", ldx,
                       K, ldy, N);
    if (path != MX_GEMM_I8_AUTO && path != MX_GEMM_I8_STREAM && path != MX_GEMM_I8_PACKED)
        return mx_fail(err, MX_EINVAL, "gemm int8: unknown kernel path %d", (int)path);
    if (M == 0)
        return 0;
    if (!y || !x || !q || !scale)
        return mx_fail(err, MX_EINVAL, "gemm int8: NULL %s",
                       !y ? "y" : !x ? "x" : !q ? "weights" : "scales");
    if (!mx_cpu_isa_supported(isa))
        return mx_fail(err, MX_EUNSUPPORTED, "gemm int8: this CPU cannot run %s kernels",
                       mx_cpu_isa_name(isa));
    gemm_i8_job j = {.args = {y, ldy, x, ldx, M, K, q, scale, N}};
    int packed = 0;
    switch (isa) {
    case MX_CPU_ISA_AVX512:
        j.gemv = mx_gemv_i8_avx512;
        j.gemm = mx_gemm_i8_avx512;
        packed = path == MX_GEMM_I8_PACKED ||
                 (path == MX_GEMM_I8_AUTO && M > MX_GEMM_I8_AUTO_M_AVX512);
        break;
    case MX_CPU_ISA_AVX2:
        j.gemv = mx_gemv_i8_avx2;
        break;
    default:
        j.gemv = mx_gemv_i8_scalar;
        break;
    }
    int threads = mx_threadpool_size(pool);
    char *own = NULL; /* the scratch block when there is no pool */
    if (!packed) {
        /* Memory bound: many small tasks (32 per thread, multiples of 8 rows), as for bf16. */
        int chunk = (N + threads * 32 - 1) / (threads * 32);
        chunk = (chunk + 7) / 8 * 8;
        j.chunk = chunk < 8 ? 8 : chunk;
    } else {
        j.chunk = MX_GEMM_NC;
        j.n_slots = threads;
        /* Flags and panels come from the pool, kept between calls: nothing is allocated per
         * call (a fresh 0.8 MB block would be mapped and faulted in page by page, as glibc
         * serves blocks this size with mmap). Without a pool (one thread) the block is the
         * call's own. */
        size_t flags = (size_t)threads * sizeof(gemm_slot);
        size_t bytes = flags + (size_t)threads * MX_GEMM_SCRATCH_FLOATS * sizeof(float);
        char *block = pool ? mx_threadpool_scratch(pool, bytes) : aligned_alloc(64, bytes);
        if (!block)
            return mx_fail(err, MX_ENOMEM, "gemm int8: out of memory for %zu bytes of scratch", bytes);
        j.slots = (gemm_slot *)block;
        for (int s = 0; s < threads; s++)
            atomic_init(&j.slots[s].busy, 0);
        j.scratch = (float *)(block + flags); /* 64-byte aligned: flags are whole lines */
        if (!pool)
            own = block;
    }
    mx_threadpool_run(pool, gemm_i8_task, &j, (N + j.chunk - 1) / j.chunk);
    free(own);
    return 0;
}

int mx_cpu_gemm_i8(mx_threadpool *pool, float *y, int ldy, const float *x, int ldx, int M, int K,
                   const int8_t *q, const float *scale, int N, mx_error *err)
{
    return mx_cpu_gemm_i8_with(pool, mx_cpu_best_isa(), MX_GEMM_I8_AUTO, y, ldy, x, ldx, M, K, q,
                               scale, N, err);
}
