/* expert_int8.cu - int8 weight-only grouped expert GEMM (expert_int8.h): each warp streams one
 * int8 weight row (16 bytes per lane per load), widens to fp32 in registers, dots it with up to
 * I8_MT rows of its group's x at a time and applies the row's scale once. Decode-sized groups
 * read every weight row once; larger groups re-read it per I8_MT rows (from L2). */
#include "cuda_internal.cuh"

extern "C" {
#include "core/cuda/expert_int8.h"
}

#include <climits>
#include <stdint.h>
#include <string.h>

#define I8_WARPS 8 /* warps (weight rows in flight) per block */
#define I8_MT 8    /* rows of x per pass over a weight row */

struct i8_job {
    const int8_t *q;
    const float *scale;
    int row0, n_rows;
};

static size_t round64(size_t n)
{
    return (n + 63) / 64 * 64;
}

/* grid: x = blocks over N (grid-stride), y = group. vec: K % 16 == 0 and every q row 16-byte
 * aligned (int4 weight loads, float4 x loads). */
__global__ void i8_grouped_kernel(const float *__restrict__ x, float *__restrict__ y, int K, int N,
                                  const i8_job *__restrict__ jobs, bool vec)
{
    const i8_job job = jobs[blockIdx.y];
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    for (int n = blockIdx.x * I8_WARPS + warp; n < N; n += gridDim.x * I8_WARPS) {
        const int8_t *qr = job.q + (size_t)n * K;
        const float s = job.scale[n];
        for (int m0 = 0; m0 < job.n_rows; m0 += I8_MT) {
            const int mt = min(I8_MT, job.n_rows - m0);
            const float *xb = x + (size_t)(job.row0 + m0) * K;
            float acc[I8_MT];
#pragma unroll
            for (int m = 0; m < I8_MT; m++)
                acc[m] = 0.f;
            int ktail = 0;
            if (vec) {
                for (int kk = lane * 16; kk + 16 <= K; kk += 32 * 16) {
                    const int4 raw = __ldg(reinterpret_cast<const int4 *>(qr + kk));
                    const char4 *c = reinterpret_cast<const char4 *>(&raw);
                    float w[16];
#pragma unroll
                    for (int j = 0; j < 4; j++) {
                        w[4 * j] = (float)c[j].x;
                        w[4 * j + 1] = (float)c[j].y;
                        w[4 * j + 2] = (float)c[j].z;
                        w[4 * j + 3] = (float)c[j].w;
                    }
#pragma unroll
                    for (int m = 0; m < I8_MT; m++) {
                        if (m < mt) {
                            const float4 *xv = reinterpret_cast<const float4 *>(xb + (size_t)m * K + kk);
#pragma unroll
                            for (int j = 0; j < 4; j++) {
                                const float4 v = xv[j];
                                acc[m] = fmaf(v.x, w[4 * j], acc[m]);
                                acc[m] = fmaf(v.y, w[4 * j + 1], acc[m]);
                                acc[m] = fmaf(v.z, w[4 * j + 2], acc[m]);
                                acc[m] = fmaf(v.w, w[4 * j + 3], acc[m]);
                            }
                        }
                    }
                }
                ktail = K / 16 * 16;
            }
            for (int kk = ktail + lane; kk < K; kk += 32) {
                const float w = (float)qr[kk];
#pragma unroll
                for (int m = 0; m < I8_MT; m++)
                    if (m < mt)
                        acc[m] = fmaf(xb[(size_t)m * K + kk], w, acc[m]);
            }
#pragma unroll
            for (int m = 0; m < I8_MT; m++) {
                float v = acc[m];
#pragma unroll
                for (int off = 16; off > 0; off /= 2)
                    v += __shfl_xor_sync(0xffffffffu, v, off);
                if (lane == 0 && m < mt)
                    y[(size_t)(job.row0 + m0 + m) * N + n] = s * v;
            }
        }
    }
}

extern "C" int mx_cuda_upload_i8(mx_backend *be, mx_tensor *dst, const mx_tensor *host, mx_error *err)
{
    if (!be || !be->name || strcmp(be->name, "cuda") != 0)
        return mx_fail(err, MX_EINVAL, "upload_i8: not a CUDA backend");
    if (!host || host->dtype != MX_DTYPE_I8 || host->ndim != 2 || !host->data || !host->scale)
        return mx_fail(err, MX_EINVAL, "upload_i8: expected a 2-D I8 host tensor with scales");
    TRY(cuda_enter(be, err));
    const size_t qbytes = (size_t)host->shape[0] * (size_t)host->shape[1];
    const size_t sbytes = (size_t)host->shape[0] * sizeof(float);
    void *mem = NULL;
    CU_TRY(cuda_malloc(&mem, round64(qbytes) + sbytes));
    cudaStream_t st = impl_of(be)->stream;
    cudaError_t e = cudaMemcpyAsync(mem, host->data, qbytes, cudaMemcpyHostToDevice, st);
    if (e == cudaSuccess)
        e = cudaMemcpyAsync((char *)mem + round64(qbytes), host->scale, sbytes, cudaMemcpyHostToDevice, st);
    if (e == cudaSuccess)
        e = cudaStreamSynchronize(st); /* the host buffers may go away after we return */
    if (e != cudaSuccess) {
        cudaFree(mem);
        return mx_fail(err, MX_EDEVICE, "upload_i8: copy failed: %s", cudaGetErrorString(e));
    }
    *dst = *host;
    dst->data = mem;
    dst->scale = (const float *)((char *)mem + round64(qbytes));
    dst->device = MX_DEVICE_CUDA;
    return 0;
}

extern "C" void mx_cuda_free_i8(mx_backend *be, mx_tensor *t)
{
    mx_error err{};
    if (!t || !t->data || cuda_enter(be, &err))
        return;
    cudaStreamSynchronize(impl_of(be)->stream); /* no queued kernel may still read it */
    cudaFree(t->data);
    t->data = NULL;
    t->scale = NULL;
}

extern "C" int mx_cuda_gemm_i8_grouped(mx_backend *be, mx_tensor *y, const mx_tensor *x,
                                       const mx_cuda_i8_group *groups, int n_groups, mx_error *err)
{
    if (!be || !be->name || strcmp(be->name, "cuda") != 0)
        return mx_fail(err, MX_EINVAL, "gemm_i8_grouped: not a CUDA backend");
    TRY(cuda_check_act(x, "gemm_i8_grouped x", err));
    TRY(cuda_check_act(y, "gemm_i8_grouped y", err));
    if (n_groups < 0 || (n_groups > 0 && !groups))
        return mx_fail(err, MX_EINVAL, "gemm_i8_grouped: bad group list");
    if (n_groups == 0)
        return 0;
    const int64_t T = x->shape[0], K = x->shape[1], N = y->shape[1];
    if (y->shape[0] != T)
        return mx_fail(err, MX_EINVAL, "gemm_i8_grouped: x has %lld rows, y %lld", (long long)T,
                       (long long)y->shape[0]);
    if (K > INT_MAX || N > INT_MAX || T > INT_MAX || n_groups > 65535)
        return mx_fail(err, MX_ERANGE, "gemm_i8_grouped: dimensions exceed the launch limits");
    i8_job *jobs = (i8_job *)malloc((size_t)n_groups * sizeof *jobs);
    if (!jobs)
        return mx_fail(err, MX_ENOMEM, "gemm_i8_grouped: out of memory");
    bool vec = K % 16 == 0;
    int rc = 0;
    for (int g = 0; g < n_groups && !rc; g++) {
        const mx_cuda_i8_group *gr = &groups[g];
        const mx_tensor *w = gr->w;
        if (!w || w->dtype != MX_DTYPE_I8 || w->device != MX_DEVICE_CUDA || w->ndim != 2 ||
            w->shape[0] != N || w->shape[1] != K || !w->scale)
            rc = mx_fail(err, MX_EINVAL, "gemm_i8_grouped: group %d weight must be a device I8 [%lld, %lld]",
                         g, (long long)N, (long long)K);
        else if (gr->n_rows < 0 || gr->row0 < 0 || (int64_t)gr->row0 + gr->n_rows > T)
            rc = mx_fail(err, MX_EINVAL, "gemm_i8_grouped: group %d rows [%d, +%d) outside %lld", g,
                         gr->row0, gr->n_rows, (long long)T);
        else
            jobs[g] = {(const int8_t *)w->data, w->scale, gr->row0, gr->n_rows};
        vec = vec && w && ((uintptr_t)w->data % 16 == 0);
    }
    for (int g = 0; g < n_groups && !rc; g++) /* rows must belong to one group */
        for (int j = 0; j < g && !rc; j++)
            if (groups[g].n_rows && groups[j].n_rows && groups[g].row0 < groups[j].row0 + groups[j].n_rows &&
                groups[j].row0 < groups[g].row0 + groups[g].n_rows)
                rc = mx_fail(err, MX_EINVAL, "gemm_i8_grouped: groups %d and %d share rows", j, g);
    void *dj = NULL;
    if (!rc)
        rc = cuda_enter(be, err);
    if (!rc)
        rc = cuda_params_reset(be, (size_t)n_groups * sizeof *jobs, err);
    if (!rc)
        rc = cuda_params_push(be, jobs, (size_t)n_groups * sizeof *jobs, &dj, err);
    free(jobs);
    if (rc)
        return rc;
    dim3 grid((unsigned)((N + I8_WARPS - 1) / I8_WARPS < 4096 ? (N + I8_WARPS - 1) / I8_WARPS : 4096),
              (unsigned)n_groups);
    i8_grouped_kernel<<<grid, I8_WARPS * 32, 0, impl_of(be)->stream>>>(
        (const float *)x->data, (float *)y->data, (int)K, (int)N, (const i8_job *)dj, vec);
    LAUNCH_CHECK();
    return 0;
}
