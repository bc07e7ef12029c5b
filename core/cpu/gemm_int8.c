/* gemm_int8.c - mx_cpu_gemm_i8: int8-weight matrix multiply (weights quantized at load, one
 * fp32 scale per output row). Checks arguments, picks the kernel family and path at run time
 * and runs them on mx_cpu_gemm's driver (gemm.c: threads, scratch); holds the scalar kernel. */
#include "gemm.h"

#include <stdint.h>

#include "gemm_kernels.h"

/* Up to this M the AVX-512 family streams int8 rows; above it the packed kernel (fp32
 * panels reused across rows of x) is faster. bench_gemm's int8 table (K = 6144, N = 9216, 2
 * vCPUs, GFLOP/s stream vs packed): M = 8: 83 vs 50; M = 16: 61 vs 80; M = 32: 68 vs 94. */
#define MX_GEMM_I8_AUTO_M_AVX512 8

/* ---- scalar: the portable fallback and the readable statement of the math ---- */

void mx_gemv_i8_scalar(const mx_gemm_args *a, int n0, int n1)
{
    for (int n = n0; n < n1; n++) {
        const int8_t *q = (const int8_t *)a->w + (size_t)n * a->K;
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

/* ---- dispatch: the kernels run on the driver of gemm.c ---- */

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
    mx_gemm_args args = {.y = y, .ldy = ldy, .x = x, .ldx = ldx, .M = M, .K = K, .w = q,
                         .wdtype = MX_DTYPE_I8, .N = N, .scale = scale};
    mx_gemv_fn gemv;
    mx_gemm_fn gemm = NULL; /* the packed kernel, where the family has one and M wants it */
    switch (isa) {
    case MX_CPU_ISA_AVX512:
        gemv = mx_gemv_i8_avx512;
        if (path == MX_GEMM_I8_PACKED || (path == MX_GEMM_I8_AUTO && M > MX_GEMM_I8_AUTO_M_AVX512))
            gemm = mx_gemm_i8_avx512;
        break;
    case MX_CPU_ISA_AVX2:
        gemv = mx_gemv_i8_avx2;
        break;
    default:
        gemv = mx_gemv_i8_scalar;
        break;
    }
    return mx_gemm_drive(pool, &args, gemv, gemm, "gemm int8", err);
}

int mx_cpu_gemm_i8(mx_threadpool *pool, float *y, int ldy, const float *x, int ldx, int M, int K,
                   const int8_t *q, const float *scale, int N, mx_error *err)
{
    return mx_cpu_gemm_i8_with(pool, mx_cpu_best_isa(), MX_GEMM_I8_AUTO, y, ldy, x, ldx, M, K, q,
                               scale, N, err);
}
