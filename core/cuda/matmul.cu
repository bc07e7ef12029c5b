/* matmul.cu - dense projections y = x . w^T and the grouped expert SwiGLU of expert-svc.
 * Exact path (default): F32 activations times BF16 weights widened to fp32, fp32 accumulation,
 * in our own kernels (cuBLAS has no F32 x BF16 GEMM); F32 weights (the router gate) go to
 * cublasSgemm in default math mode, which never uses TF32. With bf16_tensor_cores the
 * activations are rounded to bf16 and cublasGemmEx runs on tensor cores (fp32 accumulate).
 * I8 weights (quantized at load, per-row scales) run the int8 kernel of expert_int8.cu. */
#include "gemm_kernels.cuh"

extern "C" {
#include "core/cuda/expert_int8.h"
}

#include <limits.h>
#include <stdlib.h>
#include <string.h>

int launch_tiled_gemm(cudaStream_t s, float *y, const float *x, const void *w, int w_bf16, int M,
                      int N, int K, mx_error *err)
{
    dim3 grid((unsigned)((N + TILE_N - 1) / TILE_N), (unsigned)((M + TILE_M - 1) / TILE_M));
    if (grid.y > 65535)
        return mx_fail(err, MX_ERANGE, "matmul: %d rows is too many for one launch", M);
    if (w_bf16)
        tiled_gemm_kernel<true><<<grid, 256, 0, s>>>(y, x, w, M, N, K);
    else
        tiled_gemm_kernel<false><<<grid, 256, 0, s>>>(y, x, w, M, N, K);
    LAUNCH_CHECK();
    return 0;
}

int launch_skinny_gemm(cudaStream_t s, const skinny_job *jobs_dev, int n_jobs, bool swiglu,
                       int w_bf16, bool vec, int N, int K, mx_error *err)
{
    if (n_jobs > 65535)
        return mx_fail(err, MX_ERANGE, "grouped gemm: %d groups is too many for one launch", n_jobs);
    dim3 grid((unsigned)((N + SKINNY_WARPS - 1) / SKINNY_WARPS), (unsigned)n_jobs);
    dim3 block(32 * SKINNY_WARPS);
    if (swiglu && vec)
        skinny_gemm_kernel<true, true><<<grid, block, 0, s>>>(jobs_dev, w_bf16, N, K);
    else if (swiglu)
        skinny_gemm_kernel<true, false><<<grid, block, 0, s>>>(jobs_dev, w_bf16, N, K);
    else if (vec)
        skinny_gemm_kernel<false, true><<<grid, block, 0, s>>>(jobs_dev, w_bf16, N, K);
    else
        skinny_gemm_kernel<false, false><<<grid, block, 0, s>>>(jobs_dev, w_bf16, N, K);
    LAUNCH_CHECK();
    return 0;
}

__global__ void f32_to_bf16_kernel(__nv_bfloat16 *dst, const float *src, int64_t n)
{
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x)
        dst[i] = __float2bfloat16_rn(src[i]);
}

static bool vec_ok(const void *w, const float *x, int w_bf16, int K)
{
    return w_bf16 && K % 8 == 0 && ((uintptr_t)w % 16) == 0 && ((uintptr_t)x % 16) == 0;
}

int cuda_matmul(mx_backend *be, mx_tensor *y, const mx_tensor *x, const mx_tensor *w, mx_error *err)
{
    TRY(cuda_check_act(y, "matmul y", err));
    TRY(cuda_check_act(x, "matmul x", err));
    if (w && w->dtype == MX_DTYPE_I8) { /* quantized at load: the int8 kernel, one group of all rows */
        if (w->ndim != 2 || w->shape[1] != x->shape[1] || y->shape[0] != x->shape[0] || y->shape[1] != w->shape[0])
            return mx_fail(err, MX_EINVAL, "matmul: int8 weight [%lld, %lld] does not fit x [%lld, %lld] -> y [%lld, %lld]",
                           (long long)w->shape[0], (long long)(w->ndim > 1 ? w->shape[1] : -1),
                           (long long)x->shape[0], (long long)x->shape[1], (long long)y->shape[0],
                           (long long)y->shape[1]);
        if (x->shape[0] > INT_MAX)
            return mx_fail(err, MX_ERANGE, "matmul: dimensions exceed 32 bits");
        if (x->shape[0] == 0 || w->shape[0] == 0)
            return 0;
        const mx_cuda_i8_group g = {0, (int)x->shape[0], w};
        return mx_cuda_gemm_i8_grouped(be, y, x, &g, 1, err);
    }
    TRY(cuda_check_weight(w, "matmul w", err));
    if (w->ndim != 2 || w->shape[1] != x->shape[1] || y->shape[0] != x->shape[0] ||
        y->shape[1] != w->shape[0])
        return mx_fail(err, MX_EINVAL, "matmul: y [%lld, %lld] != x [%lld, %lld] . w^T, w [%lld, %lld]",
                       (long long)y->shape[0], (long long)y->shape[1], (long long)x->shape[0],
                       (long long)x->shape[1], (long long)w->shape[0],
                       (long long)(w->ndim > 1 ? w->shape[1] : -1));
    if (x->shape[0] > INT_MAX || w->shape[0] > INT_MAX || w->shape[1] > INT_MAX)
        return mx_fail(err, MX_ERANGE, "matmul: dimensions exceed 32 bits");
    if (y->data == x->data && mx_tensor_numel(y) > 0)
        return mx_fail(err, MX_EINVAL, "matmul: y must not alias x");
    int M = (int)x->shape[0], N = (int)w->shape[0], K = (int)w->shape[1];
    if (M == 0 || N == 0)
        return 0;
    TRY(cuda_enter(be, err));
    cuda_impl *im = impl_of(be);
    if (K == 0) {
        CU_TRY(cudaMemsetAsync(y->data, 0, (size_t)M * N * sizeof(float), im->stream));
        return 0;
    }
    const float *xd = (const float *)x->data;
    float *yd = (float *)y->data;
    int bf16 = w->dtype == MX_DTYPE_BF16;
    const float one = 1.0f, zero = 0.0f;
    if (!bf16) {
        /* Row-major y = x w^T is column-major y^T = w x^T: w is K x N column-major, transposed. */
        CUBLAS_TRY(cublasSgemm(im->cublas, CUBLAS_OP_T, CUBLAS_OP_N, N, M, K, &one,
                               (const float *)w->data, K, xd, K, &zero, yd, N));
        return 0;
    }
    if (M <= SKINNY_MAX_M) {
        skinny_job job = {w->data, NULL, xd, yd, M};
        void *dj;
        TRY(cuda_params_reset(be, sizeof job, err));
        TRY(cuda_params_push(be, &job, sizeof job, &dj, err));
        return launch_skinny_gemm(im->stream, (const skinny_job *)dj, 1, false, 1,
                                  vec_ok(w->data, xd, 1, K), N, K, err);
    }
    if (im->opt.bf16_tensor_cores) {
        void *xb;
        int64_t n = (int64_t)M * K;
        TRY(cuda_scratch(be, (size_t)n * 2, &xb, err));
        f32_to_bf16_kernel<<<grid_for(n, 256), 256, 0, im->stream>>>((__nv_bfloat16 *)xb, xd, n);
        LAUNCH_CHECK();
        CUBLAS_TRY(cublasGemmEx(im->cublas, CUBLAS_OP_T, CUBLAS_OP_N, N, M, K, &one, w->data,
                                CUDA_R_16BF, K, xb, CUDA_R_16BF, K, &zero, yd, CUDA_R_32F, N,
                                CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
        return 0;
    }
    return launch_tiled_gemm(im->stream, yd, xd, w->data, 1, M, N, K, err);
}

static int check_expert_weight(const mx_tensor *w, int64_t rows, int64_t cols, const char *name,
                               int g, mx_error *err)
{
    TRY(cuda_check_weight(w, name, err));
    if (w->dtype != MX_DTYPE_BF16 || w->ndim != 2 || w->shape[0] != rows || w->shape[1] != cols)
        return mx_fail(err, MX_EINVAL, "grouped_swiglu: group %d %s must be BF16 [%lld, %lld]", g,
                       name, (long long)rows, (long long)cols);
    return 0;
}

/* Small groups (decode) are batched into one skinny launch per phase; larger groups run the tiled
 * kernel per group. Phase 1 writes h = silu(w1 x) * (w3 x) into scratch, phase 2 out = w2 h. */
extern "C" int mx_cuda_grouped_swiglu(mx_backend *be, mx_tensor *out, const mx_tensor *x,
                                      const mx_cuda_expert_group *groups, int n_groups,
                                      mx_error *err)
{
    if (!be || !be->name || strcmp(be->name, "cuda") != 0)
        return mx_fail(err, MX_EINVAL, "grouped_swiglu: not a CUDA backend");
    TRY(cuda_check_act(out, "grouped_swiglu out", err));
    TRY(cuda_check_act(x, "grouped_swiglu x", err));
    TRY(cuda_check_same(out, x, "grouped_swiglu out", "grouped_swiglu x", err));
    if (out->data == x->data && mx_tensor_numel(x) > 0)
        return mx_fail(err, MX_EINVAL, "grouped_swiglu: out must not alias x");
    if (n_groups < 0 || (n_groups > 0 && !groups))
        return mx_fail(err, MX_EINVAL, "grouped_swiglu: bad group list");
    if (n_groups == 0)
        return 0;
    int64_t T = x->shape[0], hidden = x->shape[1];
    if (!groups[0].w1 || groups[0].w1->ndim != 2)
        return mx_fail(err, MX_EINVAL, "grouped_swiglu: group 0 has no 2-D w1");
    int64_t inter = groups[0].w1->shape[0];
    if (hidden > INT_MAX || inter > INT_MAX || T > INT_MAX)
        return mx_fail(err, MX_ERANGE, "grouped_swiglu: dimensions exceed 32 bits");
    int64_t total = 0;
    for (int g = 0; g < n_groups; g++) {
        const mx_cuda_expert_group *gr = &groups[g];
        if (gr->n_rows < 0 || gr->row0 < 0 || (int64_t)gr->row0 + gr->n_rows > T)
            return mx_fail(err, MX_EINVAL, "grouped_swiglu: group %d rows [%d, +%d) outside %lld", g,
                           gr->row0, gr->n_rows, (long long)T);
        TRY(check_expert_weight(gr->w1, inter, hidden, "w1", g, err));
        TRY(check_expert_weight(gr->w3, inter, hidden, "w3", g, err));
        TRY(check_expert_weight(gr->w2, hidden, inter, "w2", g, err));
        total += gr->n_rows;
    }
    for (int g = 0; g < n_groups; g++) /* overlap check: rows must belong to one group */
        for (int j = 0; j < g; j++)
            if (groups[g].n_rows && groups[j].n_rows && groups[g].row0 < groups[j].row0 + groups[j].n_rows &&
                groups[j].row0 < groups[g].row0 + groups[g].n_rows)
                return mx_fail(err, MX_EINVAL, "grouped_swiglu: groups %d and %d share rows", j, g);
    if (total == 0)
        return 0;
    TRY(cuda_enter(be, err));
    cuda_impl *im = impl_of(be);
    /* h rows are laid out like x rows, so group g's h rows start at row0 too. */
    float *h;
    TRY(cuda_scratch(be, (size_t)T * (size_t)inter * sizeof(float), (void **)&h, err));
    skinny_job *jobs = (skinny_job *)malloc(2 * (size_t)n_groups * sizeof *jobs);
    if (!jobs)
        return mx_fail(err, MX_ENOMEM, "grouped_swiglu: out of memory");
    int n_small = 0;
    const float *xd = (const float *)x->data;
    float *od = (float *)out->data;
    bool vec1 = hidden % 8 == 0, vec2 = inter % 8 == 0;
    for (int g = 0; g < n_groups; g++) {
        const mx_cuda_expert_group *gr = &groups[g];
        if (gr->n_rows == 0 || gr->n_rows > SKINNY_MAX_M)
            continue;
        const float *xg = xd + (int64_t)gr->row0 * hidden;
        jobs[n_small] = {gr->w1->data, gr->w3->data, xg, h + (int64_t)gr->row0 * inter, gr->n_rows};
        jobs[n_groups + n_small] = {gr->w2->data, NULL, h + (int64_t)gr->row0 * inter,
                                    od + (int64_t)gr->row0 * hidden, gr->n_rows};
        vec1 = vec1 && vec_ok(gr->w1->data, xg, 1, (int)hidden) && vec_ok(gr->w3->data, xg, 1, (int)hidden);
        vec2 = vec2 && vec_ok(gr->w2->data, h, 1, (int)inter);
        n_small++;
    }
    int rc = 0;
    void *dj1 = NULL, *dj2 = NULL;
    if (n_small > 0) {
        size_t bytes = (size_t)n_small * sizeof *jobs;
        rc = cuda_params_reset(be, 2 * bytes, err);
        if (!rc)
            rc = cuda_params_push(be, jobs, bytes, &dj1, err);
        if (!rc)
            rc = cuda_params_push(be, jobs + n_groups, bytes, &dj2, err);
        if (!rc)
            rc = launch_skinny_gemm(im->stream, (const skinny_job *)dj1, n_small, true, 1, vec1,
                                    (int)inter, (int)hidden, err);
        if (!rc)
            rc = launch_skinny_gemm(im->stream, (const skinny_job *)dj2, n_small, false, 1, vec2,
                                    (int)hidden, (int)inter, err);
    }
    free(jobs);
    TRY(rc);
    /* Large groups (prefill): gate into h, up into a stream-ordered temporary, then SwiGLU and
     * the down projection, through the tiled kernel. */
    for (int g = 0; g < n_groups; g++) {
        const mx_cuda_expert_group *gr = &groups[g];
        if (gr->n_rows <= SKINNY_MAX_M)
            continue;
        int M = gr->n_rows;
        const float *xg = xd + (int64_t)gr->row0 * hidden;
        float *hg = h + (int64_t)gr->row0 * inter;
        float *ug;
        CU_TRY(cudaMallocAsync((void **)&ug, (size_t)M * inter * sizeof(float), im->stream));
        rc = launch_tiled_gemm(im->stream, hg, xg, gr->w1->data, 1, M, (int)inter, (int)hidden, err);
        if (!rc)
            rc = launch_tiled_gemm(im->stream, ug, xg, gr->w3->data, 1, M, (int)inter, (int)hidden, err);
        if (!rc) {
            mx_tensor hv = mx_tensor_2d(hg, MX_DTYPE_F32, MX_DEVICE_CUDA, M, inter);
            mx_tensor uv = mx_tensor_2d(ug, MX_DTYPE_F32, MX_DEVICE_CUDA, M, inter);
            rc = cuda_swiglu(be, &hv, &hv, &uv, err);
        }
        if (!rc)
            rc = launch_tiled_gemm(im->stream, od + (int64_t)gr->row0 * hidden, hg, gr->w2->data, 1, M,
                                   (int)hidden, (int)inter, err);
        cudaFreeAsync(ug, im->stream);
        TRY(rc);
    }
    return 0;
}
