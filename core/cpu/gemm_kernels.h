/* gemm_kernels.h - the internal contract between the gemm driver (gemm.c: threading and
 * scratch, shared by both weight families; gemm.c and gemm_int8.c: argument checks and
 * dispatch) and the per-ISA kernels (gemm_avx512.c, gemm_avx2.c, gemm_amx.c, gemm_int8_*.c,
 * scalar ones in gemm.c and gemm_int8.c). Kernels compute a range of output columns for all
 * rows and must not allocate or thread. */
#ifndef MX_GEMM_KERNELS_H
#define MX_GEMM_KERNELS_H

#include "../error.h"
#include "../tensor.h"
#include "cpu_features.h"
#include "threadpool.h"

/* One call's operands, already checked by the entry point. */
typedef struct mx_gemm_args {
    float *y;
    int ldy;
    const float *x;
    int ldx, M, K;
    const void *w; /* [N, K] row-major in wdtype */
    mx_dtype wdtype;
    int N;
    const float *scale; /* MX_DTYPE_I8 weights: [N] fp32, one per row of w; NULL otherwise */
} mx_gemm_args;

/* The two kernels of a family. gemv streams W: columns [n0, n1) of y, any range. gemm is
 * the packed kernel: n1 - n0 <= MX_GEMM_NC and a scratch panel of MX_GEMM_SCRATCH_FLOATS,
 * 64-byte aligned. */
typedef void (*mx_gemv_fn)(const mx_gemm_args *a, int n0, int n1);
typedef void (*mx_gemm_fn)(const mx_gemm_args *a, int n0, int n1, float *scratch);

/* Runs one checked product (M > 0) over the pool (NULL: on this thread): with gemm NULL, gemv
 * on many small column ranges (memory bound: the threads must finish together); else gemm
 * on panels of MX_GEMM_NC columns, each task with a scratch panel of the pool's scratch block
 * (nothing is allocated per call when pool is not NULL). `what` names the caller in errors
 * (MX_ENOMEM only). gemm.c; mx_cpu_gemm and mx_cpu_gemm_i8 both run on it. */
int mx_gemm_drive(mx_threadpool *pool, const mx_gemm_args *a, mx_gemv_fn gemv, mx_gemm_fn gemm,
                  const char *what, mx_error *err);

/* Up to this many rows of x the "gemv" kernels stream W once, widening it on the fly
 * (AVX-512 has the registers for 8 rows of x, AVX2 for 4). The AVX-512 BF16 kernel takes
 * more rows in passes of at most MX_GEMV_PASS_M over each window of W it has in L1. */
#define MX_GEMV_MAX_M 4
#define MX_GEMV_MAX_M_AVX512 8
#define MX_GEMV_PASS_M 8
#define MX_GEMV_MAX_M_AVX512_BF16 32
/* ... but mx_cpu_gemm streams only up to this M; above it the packed kernel is faster
 * (bench_gemm's small-M table on a 2-vCPU AVX-512 Xeon, GFLOP/s stream vs packed, from memory
 * on 2 threads / from L2 on 1: M = 16: 141-170 vs 77-119 / 106 vs 89; M = 20: 149-169 vs
 * 101-135 / 96 vs 93; M = 24: 131-149 vs 135-155 / 86 vs 105). */
#define MX_GEMV_AUTO_M_AVX512_BF16 20
/* Above it, the "gemm" kernels widen a panel of MX_GEMM_NC rows x MX_GEMM_KC columns of W to
 * fp32 in a scratch buffer (sized for L2) and reuse it across all rows of x. NC 256 rather
 * than 128 halves how often x is re-read per output column (2 threads, K = 6144, AVX-512,
 * GFLOP/s 128 -> 256: M = 64: 197-224 -> 226-233; M = 512: 237-277 -> 250-300); KC 384 rather
 * than 256 cuts y's read-modify-write passes by a third (N = 8192: M = 64:
 * 229-232 -> 232-239; M = 512: 267-297 -> 302-305). NC 512 was slower at M = 64. */
#define MX_GEMM_NC 256
#define MX_GEMM_KC 384
#define MX_GEMM_SCRATCH_FLOATS (MX_GEMM_NC * MX_GEMM_KC)

/* Columns [n0, n1) of y for rows [0, M). gemv: M <= MX_GEMV_MAX_M(_AVX512, _AVX512_BF16 for
 * BF16 weights), any range.
 * gemm: any M, n1 - n0 <= MX_GEMM_NC, scratch of MX_GEMM_SCRATCH_FLOATS 64-byte aligned. */
void mx_gemv_scalar(const mx_gemm_args *a, int n0, int n1);
void mx_gemm_scalar(const mx_gemm_args *a, int n0, int n1, float *scratch);
void mx_gemv_avx2(const mx_gemm_args *a, int n0, int n1);
void mx_gemm_avx2(const mx_gemm_args *a, int n0, int n1, float *scratch);
void mx_gemv_avx512(const mx_gemm_args *a, int n0, int n1);
void mx_gemm_avx512(const mx_gemm_args *a, int n0, int n1, float *scratch);
/* AMX tiles (gemm_amx.c), BF16 weights only, after mx_cpu_amx_usable(); as mx_gemm_avx512. */
void mx_gemm_amx(const mx_gemm_args *a, int n0, int n1, float *scratch);
/* From this M on mx_cpu_gemm takes the AMX kernel for BF16 weights where the CPU has it: W is
 * repacked per call, which pays off over enough rows (2 threads, K = 6144, N = 4096, GFLOP/s
 * packed fp32 vs AMX: M = 32: 108 vs 149; 128: 202 vs 236; 2048: 324 vs 421; M = 16: 78 vs 48). */
#define MX_GEMM_AMX_MIN_M 32

/* int8 weights (mx_cpu_gemm_i8, gemm_int8*.c): w is int8, scale set; the row's scale is applied
 * once to its fp32 dot product. AVX2 and scalar have only the streaming kernel (any M). */
void mx_gemv_i8_scalar(const mx_gemm_args *a, int n0, int n1);
void mx_gemv_i8_avx2(const mx_gemm_args *a, int n0, int n1);
void mx_gemv_i8_avx512(const mx_gemm_args *a, int n0, int n1);
void mx_gemm_i8_avx512(const mx_gemm_args *a, int n0, int n1, float *scratch);

/* Which of the two kernels of a family runs: chosen by M, or forced (tests, benchmarks). */
typedef enum { MX_GEMM_PATH_AUTO, MX_GEMM_PATH_STREAM, MX_GEMM_PATH_PACKED, MX_GEMM_PATH_AMX } mx_gemm_path;

/* Most rows of x the family's streaming kernel can take for this weight dtype. */
int mx_gemv_max_m(mx_cpu_isa isa, mx_dtype wdtype);

/* mx_cpu_gemm_with_isa with the path forced; MX_GEMM_PATH_STREAM fails with MX_EINVAL above
 * mx_gemv_max_m rows. */
int mx_cpu_gemm_with_path(mx_threadpool *pool, mx_cpu_isa isa, mx_gemm_path path, float *y,
                          int ldy, const float *x, int ldx, int M, int K, const void *w,
                          mx_dtype wdtype, int N, mx_error *err);

/* mx_cpu_gemm with the kernel family forced (tests and benchmarks compare every family the
 * CPU has). Fails with MX_EUNSUPPORTED if this CPU cannot run isa. */
int mx_cpu_gemm_with_isa(mx_threadpool *pool, mx_cpu_isa isa, float *y, int ldy, const float *x,
                         int ldx, int M, int K, const void *w, mx_dtype wdtype, int N,
                         mx_error *err);

#endif
