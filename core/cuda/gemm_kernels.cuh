/* gemm_kernels.cuh - the exact-fp32 GEMM kernels behind matmul and the grouped expert SwiGLU:
 * y[M, N] = x[M, K] . w[N, K]^T with x F32, w BF16 or F32 widened to fp32, fp32 FMA accumulate.
 * A tiled kernel for many rows and a weight-streaming "skinny" kernel for decode-sized M that
 * reads each weight row once per 8 rows (memory bound, like the decode it serves). */
#ifndef MX_CUDA_GEMM_KERNELS_CUH
#define MX_CUDA_GEMM_KERNELS_CUH

#include "cuda_internal.cuh"

/* Rows handled per pass of the skinny kernel, and the largest M it is used for. */
#define SKINNY_ROWS 8
#define SKINNY_MAX_M 32
#define SKINNY_WARPS 8

/* One matrix product of a batch of skinny products sharing N and K: y = x . w^T, or with w3
 * set, y = silu(x . w^T) * (x . w3^T) (the fused gate/up projection of an expert). */
struct skinny_job {
    const void *w;
    const void *w3;
    const float *x;
    float *y;
    int M;
};

__device__ __forceinline__ void bf16x8_to_f32(uint4 raw, float *f)
{
    const __nv_bfloat162 *h = (const __nv_bfloat162 *)&raw;
#pragma unroll
    for (int i = 0; i < 4; i++) {
        float2 v = __bfloat1622float2(h[i]);
        f[2 * i] = v.x;
        f[2 * i + 1] = v.y;
    }
}

__device__ __forceinline__ float warp_sum(float v)
{
#pragma unroll
    for (int o = 16; o > 0; o >>= 1)
        v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

/* grid (ceil(N / SKINNY_WARPS), n_jobs), block 32 * SKINNY_WARPS. One warp per output column.
 * VEC: K % 8 == 0 and BF16 weights: lanes read 8 bf16 (16 bytes) at a time. */
template <bool SWIGLU, bool VEC>
__global__ void skinny_gemm_kernel(const skinny_job *jobs, int is_bf16, int N, int K)
{
    const skinny_job job = jobs[blockIdx.y];
    int lane = threadIdx.x & 31;
    int n = blockIdx.x * SKINNY_WARPS + (threadIdx.x >> 5);
    if (n >= N)
        return;
    for (int r0 = 0; r0 < job.M; r0 += SKINNY_ROWS) {
        int rows = min(SKINNY_ROWS, job.M - r0);
        const float *x = job.x + (int64_t)r0 * K;
        float acc[SKINNY_ROWS], acc3[SKINNY_ROWS];
#pragma unroll
        for (int r = 0; r < SKINNY_ROWS; r++)
            acc[r] = acc3[r] = 0.0f;
        if (VEC) {
            const uint4 *wr = (const uint4 *)((const __nv_bfloat16 *)job.w + (int64_t)n * K);
            const uint4 *wr3 = SWIGLU ? (const uint4 *)((const __nv_bfloat16 *)job.w3 + (int64_t)n * K)
                                      : NULL;
            for (int k8 = lane; k8 < K / 8; k8 += 32) {
                float wv[8], wv3[8];
                bf16x8_to_f32(wr[k8], wv);
                if (SWIGLU)
                    bf16x8_to_f32(wr3[k8], wv3);
#pragma unroll
                for (int r = 0; r < SKINNY_ROWS; r++) {
                    if (r >= rows)
                        break;
                    const float4 *xr = (const float4 *)(x + (int64_t)r * K) + 2 * k8;
                    float4 a = xr[0], b = xr[1];
                    float xv[8] = {a.x, a.y, a.z, a.w, b.x, b.y, b.z, b.w};
#pragma unroll
                    for (int i = 0; i < 8; i++) {
                        acc[r] = fmaf(wv[i], xv[i], acc[r]);
                        if (SWIGLU)
                            acc3[r] = fmaf(wv3[i], xv[i], acc3[r]);
                    }
                }
            }
        } else {
            for (int k = lane; k < K; k += 32) {
                float wv = load_w(job.w, is_bf16, (int64_t)n * K + k);
                float wv3 = SWIGLU ? load_w(job.w3, is_bf16, (int64_t)n * K + k) : 0.0f;
#pragma unroll
                for (int r = 0; r < SKINNY_ROWS; r++) {
                    if (r >= rows)
                        break;
                    float xv = x[(int64_t)r * K + k];
                    acc[r] = fmaf(wv, xv, acc[r]);
                    if (SWIGLU)
                        acc3[r] = fmaf(wv3, xv, acc3[r]);
                }
            }
        }
#pragma unroll
        for (int r = 0; r < SKINNY_ROWS; r++) {
            float s = warp_sum(acc[r]);
            float s3 = SWIGLU ? warp_sum(acc3[r]) : 0.0f;
            if (lane == 0 && r < rows) {
                float out = SWIGLU ? s / (1.0f + expf(-s)) * s3 : s;
                job.y[(int64_t)(r0 + r) * N + n] = out;
            }
        }
    }
}

/* Tiled fp32 GEMM: 64 x 64 output tile per block of 256 threads, each thread 4 x 4 outputs at
 * stride 16 (conflict-free shared reads), K in steps of 16 staged in shared memory. */
#define TILE_M 64
#define TILE_N 64
#define TILE_K 16

template <bool BF16>
__global__ void tiled_gemm_kernel(float *y, const float *x, const void *w, int M, int N, int K)
{
    __shared__ float xs[TILE_K][TILE_M + 4];
    __shared__ float ws[TILE_K][TILE_N + 4];
    int tid = threadIdx.x, tx = tid % 16, ty = tid / 16;
    int m0 = blockIdx.y * TILE_M, n0 = blockIdx.x * TILE_N;
    float acc[4][4] = {};
    for (int k0 = 0; k0 < K; k0 += TILE_K) {
        for (int i = tid; i < TILE_M * TILE_K; i += 256) {
            int r = i / TILE_K, c = i % TILE_K;
            int gm = m0 + r, gk = k0 + c;
            xs[c][r] = (gm < M && gk < K) ? x[(int64_t)gm * K + gk] : 0.0f;
            int gn = n0 + r;
            float wv = 0.0f;
            if (gn < N && gk < K)
                wv = BF16 ? __bfloat162float(((const __nv_bfloat16 *)w)[(int64_t)gn * K + gk])
                          : ((const float *)w)[(int64_t)gn * K + gk];
            ws[c][r] = wv;
        }
        __syncthreads();
#pragma unroll
        for (int c = 0; c < TILE_K; c++) {
            float a[4], b[4];
#pragma unroll
            for (int i = 0; i < 4; i++) {
                a[i] = xs[c][ty + 16 * i];
                b[i] = ws[c][tx + 16 * i];
            }
#pragma unroll
            for (int i = 0; i < 4; i++)
#pragma unroll
                for (int j = 0; j < 4; j++)
                    acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
        }
        __syncthreads();
    }
#pragma unroll
    for (int i = 0; i < 4; i++) {
        int gm = m0 + ty + 16 * i;
        if (gm >= M)
            continue;
#pragma unroll
        for (int j = 0; j < 4; j++) {
            int gn = n0 + tx + 16 * j;
            if (gn < N)
                y[(int64_t)gm * N + gn] = acc[i][j];
        }
    }
}

/* Launchers (matmul.cu). */
int launch_tiled_gemm(cudaStream_t s, float *y, const float *x, const void *w, int w_bf16, int M,
                      int N, int K, mx_error *err);
/* jobs_dev: n_jobs jobs already on the device. vec: BF16 weights, K % 8 == 0, 16-byte aligned. */
int launch_skinny_gemm(cudaStream_t s, const skinny_job *jobs_dev, int n_jobs, bool swiglu,
                       int w_bf16, bool vec, int N, int K, mx_error *err);

#endif
