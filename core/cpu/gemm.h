/* gemm.h - the CPU matrix multiply every projection goes through:
 * y[M, N] = x[M, K] . W[N, K]^T with x, y fp32 and W in BF16, F16 or F32 as stored in the
 * checkpoint (never converted whole). fp32 accumulation. Kernels are chosen at run time
 * (AVX-512, AVX2+FMA, portable C) from what the CPU supports. */
#ifndef MX_GEMM_H
#define MX_GEMM_H

#include "../error.h"
#include "../tensor.h"
#include "threadpool.h"

/* ldx/ldy are row strides in elements (>= K and >= N). pool may be NULL (single thread). */
int mx_cpu_gemm(mx_threadpool *pool, float *y, int ldy, const float *x, int ldx, int M, int K,
                const void *w, mx_dtype wdtype, int N, mx_error *err);

/* Which kernel family mx_cpu_gemm uses on this CPU: "avx512", "avx2", "scalar". */
const char *mx_cpu_gemm_isa(void);

#endif
