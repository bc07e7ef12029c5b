/* gemm.c - mx_cpu_gemm: checks arguments and picks the kernel family for this CPU at run time;
 * and the driver it shares with mx_cpu_gemm_i8 (gemm_int8.c), which splits the output columns
 * into tasks for the thread pool and hands each packed task a scratch panel. Also holds the
 * portable scalar kernels (the fallback and the readable reference). */
#include "gemm.h"

#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>

#include "gemm_kernels.h"

/* ---- scalar kernels: one row of W widened into a small stack buffer at a time ---- */

static void widen_row(const mx_gemm_args *a, int n, int k0, int kc, float *dst)
{
    const size_t base = (size_t)n * (size_t)a->K + (size_t)k0;
    if (a->wdtype == MX_DTYPE_BF16) {
        const uint16_t *w = (const uint16_t *)a->w + base;
        for (int k = 0; k < kc; k++)
            dst[k] = mx_bf16_to_f32(w[k]);
    } else if (a->wdtype == MX_DTYPE_F16) {
        const uint16_t *w = (const uint16_t *)a->w + base;
        for (int k = 0; k < kc; k++)
            dst[k] = mx_f16_to_f32(w[k]);
    } else {
        const float *w = (const float *)a->w + base;
        for (int k = 0; k < kc; k++)
            dst[k] = w[k];
    }
}

void mx_gemv_scalar(const mx_gemm_args *a, int n0, int n1)
{
    float row[MX_GEMM_KC];
    for (int n = n0; n < n1; n++) {
        for (int k0 = 0; k0 < a->K; k0 += MX_GEMM_KC) {
            int kc = a->K - k0 < MX_GEMM_KC ? a->K - k0 : MX_GEMM_KC;
            widen_row(a, n, k0, kc, row);
            for (int m = 0; m < a->M; m++) {
                const float *x = a->x + (size_t)m * a->ldx + k0;
                /* Four partial sums: shorter dependency chains, and a smaller rounding error. */
                float s0 = 0.f, s1 = 0.f, s2 = 0.f, s3 = 0.f;
                int k = 0;
                for (; k + 4 <= kc; k += 4) {
                    s0 += x[k] * row[k];
                    s1 += x[k + 1] * row[k + 1];
                    s2 += x[k + 2] * row[k + 2];
                    s3 += x[k + 3] * row[k + 3];
                }
                for (; k < kc; k++)
                    s0 += x[k] * row[k];
                float *yp = a->y + (size_t)m * a->ldy + n;
                float s = (s0 + s1) + (s2 + s3);
                *yp = k0 ? *yp + s : s;
            }
        }
    }
}

void mx_gemm_scalar(const mx_gemm_args *a, int n0, int n1, float *scratch)
{
    (void)scratch;
    mx_gemv_scalar(a, n0, n1);
}

/* ---- the driver both weight families run on ---- */

/* A panel's busy flag on its own cache line: claiming or freeing a panel does not disturb
 * the line another thread is reading. */
typedef struct {
    _Alignas(64) atomic_int busy;
} gemm_slot;

typedef struct {
    mx_gemm_args args;
    mx_gemv_fn gemv;
    mx_gemm_fn gemm;
    int chunk;            /* columns per task */
    float *scratch;       /* n_slots panels of MX_GEMM_SCRATCH_FLOATS, or NULL: streaming */
    gemm_slot *slots;     /* n_slots busy flags, in the same block as the panels */
    int n_slots;
} gemm_job;

/* At most one task per pool thread runs at a time, so n_slots = threads panels suffice;
 * a task claims a free one for its duration. */
static int claim_slot(gemm_job *j)
{
    for (;;)
        for (int s = 0; s < j->n_slots; s++)
            if (atomic_load_explicit(&j->slots[s].busy, memory_order_relaxed) == 0 &&
                atomic_exchange(&j->slots[s].busy, 1) == 0)
                return s;
}

static void gemm_task(void *ctx, int task, int n_tasks)
{
    (void)n_tasks;
    gemm_job *j = ctx;
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

int mx_gemm_drive(mx_threadpool *pool, const mx_gemm_args *a, mx_gemv_fn gemv, mx_gemm_fn gemm,
                  const char *what, mx_error *err)
{
    gemm_job j = {.args = *a, .gemv = gemv, .gemm = gemm};
    int threads = mx_threadpool_size(pool);
    char *own = NULL; /* the scratch block when there is no pool */
    if (!gemm) {
        /* Memory bound: many small tasks (32 per thread, each a multiple of 8 rows of W), so the
         * threads finish together; with 8 per thread the last task left one core idle (measured:
         * 0.70-0.78 -> 0.81-0.84 of bandwidth for a full-width layer at batch 1). */
        int chunk = (a->N + threads * 32 - 1) / (threads * 32);
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
            return mx_fail(err, MX_ENOMEM, "%s: out of memory for %zu bytes of scratch", what, bytes);
        j.slots = (gemm_slot *)block;
        for (int s = 0; s < threads; s++)
            atomic_init(&j.slots[s].busy, 0);
        j.scratch = (float *)(block + flags); /* 64-byte aligned: flags are whole lines */
        if (!pool)
            own = block;
    }
    mx_threadpool_run(pool, gemm_task, &j, (a->N + j.chunk - 1) / j.chunk);
    free(own);
    return 0;
}

/* ---- bf16 / f16 / f32 weights: dispatch ---- */

int mx_gemv_max_m(mx_cpu_isa isa, mx_dtype wdtype)
{
    if (isa == MX_CPU_ISA_AVX512)
        return wdtype == MX_DTYPE_BF16 ? MX_GEMV_MAX_M_AVX512_BF16 : MX_GEMV_MAX_M_AVX512;
    if (isa == MX_CPU_ISA_AVX2)
        return MX_GEMV_MAX_M;
    return INT32_MAX; /* the scalar "gemm" is its gemv */
}

/* Up to which M the automatic choice streams W. */
static int gemv_auto_m(mx_cpu_isa isa, mx_dtype wdtype)
{
    if (isa == MX_CPU_ISA_AVX512 && wdtype == MX_DTYPE_BF16)
        return MX_GEMV_AUTO_M_AVX512_BF16;
    return mx_gemv_max_m(isa, wdtype);
}

int mx_cpu_gemm_with_path(mx_threadpool *pool, mx_cpu_isa isa, mx_gemm_path path, float *y,
                          int ldy, const float *x, int ldx, int M, int K, const void *w,
                          mx_dtype wdtype, int N, mx_error *err)
{
    if (M < 0 || K <= 0 || N <= 0)
        return mx_fail(err, MX_EINVAL, "gemm: bad shape M=%d K=%d N=%d", M, K, N);
    if (ldx < K || ldy < N)
        return mx_fail(err, MX_EINVAL, "gemm: row stride ldx=%d < K=%d or ldy=%d < N=%d", ldx, K,
                       ldy, N);
    if (wdtype != MX_DTYPE_BF16 && wdtype != MX_DTYPE_F16 && wdtype != MX_DTYPE_F32)
        return mx_fail(err, MX_EUNSUPPORTED, "gemm: weight dtype %s", mx_dtype_name(wdtype));
    if (M == 0)
        return 0;
    if (!y || !x || !w)
        return mx_fail(err, MX_EINVAL, "gemm: NULL %s", !y ? "y" : !x ? "x" : "w");
    if (!mx_cpu_isa_supported(isa))
        return mx_fail(err, MX_EUNSUPPORTED, "gemm: this CPU cannot run %s kernels",
                       mx_cpu_isa_name(isa));

    mx_gemm_args args = {.y = y, .ldy = ldy, .x = x, .ldx = ldx, .M = M, .K = K, .w = w,
                         .wdtype = wdtype, .N = N};
    mx_gemv_fn gemv;
    mx_gemm_fn gemm;
    switch (isa) {
    case MX_CPU_ISA_AVX512:
        gemv = mx_gemv_avx512;
        gemm = mx_gemm_avx512;
        break;
    case MX_CPU_ISA_AVX2:
        gemv = mx_gemv_avx2;
        gemm = mx_gemm_avx2;
        break;
    default:
        gemv = mx_gemv_scalar;
        gemm = mx_gemm_scalar;
        break;
    }
    if (path != MX_GEMM_PATH_AUTO && path != MX_GEMM_PATH_STREAM && path != MX_GEMM_PATH_PACKED &&
        path != MX_GEMM_PATH_AMX)
        return mx_fail(err, MX_EINVAL, "gemm: unknown kernel path %d", (int)path);
    if (path == MX_GEMM_PATH_AMX) { /* the packed path on AMX tiles (AVX-512 family, BF16) */
        if (isa != MX_CPU_ISA_AVX512 || wdtype != MX_DTYPE_BF16 || !mx_cpu_amx_usable())
            return mx_fail(err, MX_EUNSUPPORTED, "gemm: no AMX kernel for %s weights on this CPU (%s)",
                           mx_dtype_name(wdtype), mx_cpu_isa_name(isa));
        gemm = mx_gemm_amx;
    }
    if (path == MX_GEMM_PATH_STREAM && M > mx_gemv_max_m(isa, wdtype))
        return mx_fail(err, MX_EINVAL, "gemm: the %s streaming kernel takes at most %d rows, "
                       "not M=%d", mx_cpu_isa_name(isa), mx_gemv_max_m(isa, wdtype), M);
    int stream = path == MX_GEMM_PATH_STREAM || /* AMX and PACKED: the packed kernel */
                 (path == MX_GEMM_PATH_AUTO && M <= gemv_auto_m(isa, wdtype));
    return mx_gemm_drive(pool, &args, gemv, stream ? NULL : gemm, "gemm", err);
}

int mx_cpu_gemm_with_isa(mx_threadpool *pool, mx_cpu_isa isa, float *y, int ldy, const float *x,
                         int ldx, int M, int K, const void *w, mx_dtype wdtype, int N,
                         mx_error *err)
{
    return mx_cpu_gemm_with_path(pool, isa, MX_GEMM_PATH_AUTO, y, ldy, x, ldx, M, K, w, wdtype, N,
                                 err);
}

int mx_cpu_gemm(mx_threadpool *pool, float *y, int ldy, const float *x, int ldx, int M, int K,
                const void *w, mx_dtype wdtype, int N, mx_error *err)
{
    mx_cpu_isa isa = mx_cpu_best_isa();
    /* AMX for prefill-sized BF16 products; its exact 3-way split of x keeps fp32 accuracy */
    mx_gemm_path path = isa == MX_CPU_ISA_AVX512 && wdtype == MX_DTYPE_BF16 && M >= MX_GEMM_AMX_MIN_M &&
                                mx_cpu_amx_usable()
                            ? MX_GEMM_PATH_AMX
                            : MX_GEMM_PATH_AUTO;
    return mx_cpu_gemm_with_path(pool, isa, path, y, ldy, x, ldx, M, K, w, wdtype, N, err);
}

const char *mx_cpu_gemm_isa(void)
{
    return mx_cpu_isa_name(mx_cpu_best_isa());
}
