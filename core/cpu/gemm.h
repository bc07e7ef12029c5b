/* gemm.h - the CPU matrix multiply every projection goes through:
 * y[M, N] = x[M, K] . W[N, K]^T with x, y fp32 and W in BF16, F16 or F32 as stored in the
 * checkpoint (never converted whole). fp32 accumulation. Kernels are chosen at run time
 * (AVX-512, AVX2+FMA, portable C) from what the CPU supports. */
#ifndef MX_GEMM_H
#define MX_GEMM_H

#include "../error.h"
#include "../tensor.h"
#include "cpu_features.h"
#include "threadpool.h"

/* ldx/ldy are row strides in elements (>= K and >= N). pool may be NULL (single thread). */
int mx_cpu_gemm(mx_threadpool *pool, float *y, int ldy, const float *x, int ldx, int M, int K,
                const void *w, mx_dtype wdtype, int N, mx_error *err);

/* Which kernel family mx_cpu_gemm uses on this CPU: "avx512", "avx2", "scalar". */
const char *mx_cpu_gemm_isa(void);

/* ---- int8 weights (MX_DTYPE_I8, quantized at load): y = x . (scale[n] * q[n, :])^T ----
 * x and y fp32, q [N, K] int8 row-major, scale [N] fp32; int8 is widened to fp32 in
 * registers (exact) and each row's scale is applied once to its fp32 dot product, so the
 * only error against the bf16 weights is the quantization itself. gemm_int8*.c. */
int mx_cpu_gemm_i8(mx_threadpool *pool, float *y, int ldy, const float *x, int ldx, int M, int K,
                   const int8_t *q, const float *scale, int N, mx_error *err);

/* Which int8 kernel runs: by M (AUTO), the streaming kernel (any M: rows of W read once,
 * x in passes over L1-sized windows) or the packed one (AVX-512 only; W dequantized to fp32
 * panels reused across all rows of x; other families stream). */
typedef enum { MX_GEMM_I8_AUTO, MX_GEMM_I8_STREAM, MX_GEMM_I8_PACKED } mx_gemm_i8_path;

/* mx_cpu_gemm_i8 with the kernel family (MX_EUNSUPPORTED if this CPU lacks it) and path
 * forced: tests and benchmarks compare every family the CPU has. */
int mx_cpu_gemm_i8_with(mx_threadpool *pool, mx_cpu_isa isa, mx_gemm_i8_path path, float *y,
                        int ldy, const float *x, int ldx, int M, int K, const int8_t *q,
                        const float *scale, int N, mx_error *err);

#endif
