/* elementwise.cu - the CUDA backend's row-wise and elementwise ops: embedding gather, RMSNorm,
 * alpha/beta residual, SiLU, SwiGLU, sigmoid gate, and the row gather/scatter used to group
 * tokens by expert. All arithmetic in fp32 with precise expf/sqrtf (no fast-math), so results
 * match the CPU backend to a few ulps. */
#include "cuda_internal.cuh"

#include <stdlib.h>

__device__ __forceinline__ float silu_f(float x)
{
    return x / (1.0f + expf(-x));
}

__global__ void embed_kernel(float *out, const int32_t *ids, const void *table, int is_bf16,
                             int64_t hidden)
{
    int64_t row = blockIdx.x;
    int64_t base = (int64_t)ids[row] * hidden;
    for (int64_t c = threadIdx.x; c < hidden; c += blockDim.x)
        out[row * hidden + c] = load_w(table, is_bf16, base + c);
}

int cuda_embed(mx_backend *be, mx_tensor *out, const int32_t *ids, int n, const mx_tensor *table,
               mx_error *err)
{
    TRY(cuda_check_act(out, "embed out", err));
    TRY(cuda_check_weight(table, "embedding table", err));
    if (table->ndim != 2)
        return mx_fail(err, MX_EINVAL, "embedding table must be 2-D");
    if (n < 0 || (n > 0 && !ids) || out->shape[0] != n || out->shape[1] != table->shape[1])
        return mx_fail(err, MX_EINVAL, "embed: out [%lld, %lld] does not fit %d ids x hidden %lld",
                       (long long)out->shape[0], (long long)out->shape[1], n,
                       (long long)table->shape[1]);
    for (int i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= table->shape[0])
            return mx_fail(err, MX_ERANGE, "embed: token id %d at %d outside vocab %lld", ids[i], i,
                           (long long)table->shape[0]);
    if (n == 0)
        return 0;
    TRY(cuda_enter(be, err));
    void *dids;
    TRY(cuda_params_reset(be, (size_t)n * 4, err));
    TRY(cuda_params_push(be, ids, (size_t)n * 4, &dids, err));
    embed_kernel<<<n, 256, 0, impl_of(be)->stream>>>((float *)out->data, (const int32_t *)dids,
                                                     table->data, table->dtype == MX_DTYPE_BF16,
                                                     table->shape[1]);
    LAUNCH_CHECK();
    return 0;
}

/* One block per row: sum of squares in fp32, then y = x * (1/sqrt(mean + eps)) * w. */
__global__ void rmsnorm_kernel(float *y, const float *x, const void *w, int is_bf16, int64_t cols,
                               float eps)
{
    __shared__ float part[32];
    const float *xr = x + blockIdx.x * cols;
    float *yr = y + blockIdx.x * cols;
    float ss = 0.0f;
    for (int64_t c = threadIdx.x; c < cols; c += blockDim.x)
        ss = fmaf(xr[c], xr[c], ss);
    for (int o = 16; o > 0; o >>= 1)
        ss += __shfl_xor_sync(0xffffffffu, ss, o);
    if ((threadIdx.x & 31) == 0)
        part[threadIdx.x >> 5] = ss;
    __syncthreads();
    if (threadIdx.x < 32) {
        float v = threadIdx.x < blockDim.x / 32 ? part[threadIdx.x] : 0.0f;
        for (int o = 16; o > 0; o >>= 1)
            v += __shfl_xor_sync(0xffffffffu, v, o);
        if (threadIdx.x == 0)
            part[0] = v;
    }
    __syncthreads();
    float inv = 1.0f / sqrtf(part[0] / (float)cols + eps);
    for (int64_t c = threadIdx.x; c < cols; c += blockDim.x)
        yr[c] = xr[c] * inv * load_w(w, is_bf16, c);
}

int cuda_rmsnorm(mx_backend *be, mx_tensor *y, const mx_tensor *x, const mx_tensor *w, float eps,
                 mx_error *err)
{
    TRY(cuda_check_act(y, "rmsnorm y", err));
    TRY(cuda_check_act(x, "rmsnorm x", err));
    TRY(cuda_check_same(y, x, "rmsnorm y", "rmsnorm x", err));
    TRY(cuda_check_weight(w, "rmsnorm weight", err));
    if (mx_tensor_numel(w) != x->shape[1])
        return mx_fail(err, MX_EINVAL, "rmsnorm: weight has %lld values for rows of %lld",
                       (long long)mx_tensor_numel(w), (long long)x->shape[1]);
    if (!(eps >= 0.0f))
        return mx_fail(err, MX_EINVAL, "rmsnorm: eps %g must be >= 0", (double)eps);
    if (x->shape[0] == 0 || x->shape[1] == 0)
        return 0;
    if (x->shape[0] > 0x7fffffff)
        return mx_fail(err, MX_ERANGE, "rmsnorm: too many rows");
    TRY(cuda_enter(be, err));
    rmsnorm_kernel<<<(unsigned)x->shape[0], 256, 0, impl_of(be)->stream>>>(
        (float *)y->data, (const float *)x->data, w->data, w->dtype == MX_DTYPE_BF16, x->shape[1], eps);
    LAUNCH_CHECK();
    return 0;
}

enum ew_op { EW_RESIDUAL, EW_SILU, EW_SWIGLU, EW_SIGMOID_MUL };

/* y = f(a, b) for the elementwise ops; y may alias a or b (each element is read, then written). */
__global__ void elementwise_kernel(int op, float *y, const float *a, const float *b, float alpha,
                                   float beta, int64_t n)
{
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x) {
        float r;
        switch (op) {
        case EW_RESIDUAL: r = a[i] * alpha + b[i] * beta; break;
        case EW_SILU: r = silu_f(a[i]); break;
        case EW_SWIGLU: r = silu_f(a[i]) * b[i]; break;
        default: r = b[i] / (1.0f + expf(-a[i])); break; /* sigmoid(g) * x */
        }
        y[i] = r;
    }
}

static int launch_ew(mx_backend *be, int op, mx_tensor *y, const mx_tensor *a, const mx_tensor *b,
                     float alpha, float beta, mx_error *err)
{
    int64_t n = mx_tensor_numel(y);
    if (n == 0)
        return 0;
    TRY(cuda_enter(be, err));
    elementwise_kernel<<<grid_for(n, 256), 256, 0, impl_of(be)->stream>>>(
        op, (float *)y->data, (const float *)a->data, b ? (const float *)b->data : NULL, alpha, beta,
        n);
    LAUNCH_CHECK();
    return 0;
}

int cuda_residual(mx_backend *be, mx_tensor *y, const mx_tensor *x, float alpha, const mx_tensor *a,
                  float beta, mx_error *err)
{
    TRY(cuda_check_act(y, "residual y", err));
    TRY(cuda_check_act(x, "residual x", err));
    TRY(cuda_check_act(a, "residual a", err));
    TRY(cuda_check_same(y, x, "residual y", "residual x", err));
    TRY(cuda_check_same(y, a, "residual y", "residual a", err));
    return launch_ew(be, EW_RESIDUAL, y, x, a, alpha, beta, err);
}

int cuda_silu(mx_backend *be, mx_tensor *x, mx_error *err)
{
    TRY(cuda_check_act(x, "silu x", err));
    return launch_ew(be, EW_SILU, x, x, NULL, 0.0f, 0.0f, err);
}

int cuda_swiglu(mx_backend *be, mx_tensor *y, const mx_tensor *g, const mx_tensor *u, mx_error *err)
{
    TRY(cuda_check_act(y, "swiglu y", err));
    TRY(cuda_check_act(g, "swiglu g", err));
    TRY(cuda_check_act(u, "swiglu u", err));
    TRY(cuda_check_same(y, g, "swiglu y", "swiglu g", err));
    TRY(cuda_check_same(y, u, "swiglu y", "swiglu u", err));
    return launch_ew(be, EW_SWIGLU, y, g, u, 0.0f, 0.0f, err);
}

int cuda_sigmoid_mul(mx_backend *be, mx_tensor *y, const mx_tensor *g, const mx_tensor *x,
                     mx_error *err)
{
    TRY(cuda_check_act(y, "sigmoid_mul y", err));
    TRY(cuda_check_act(g, "sigmoid_mul g", err));
    TRY(cuda_check_act(x, "sigmoid_mul x", err));
    TRY(cuda_check_same(y, g, "sigmoid_mul y", "sigmoid_mul g", err));
    TRY(cuda_check_same(y, x, "sigmoid_mul y", "sigmoid_mul x", err));
    return launch_ew(be, EW_SIGMOID_MUL, y, g, x, 0.0f, 0.0f, err);
}

/* One block per listed row: out[i] = x[rows[i]] (gather) or out[rows[i]] += s[i] * y[i]. */
__global__ void gather_kernel(float *out, const float *x, const int32_t *rows, int64_t cols)
{
    const float *src = x + (int64_t)rows[blockIdx.x] * cols;
    float *dst = out + (int64_t)blockIdx.x * cols;
    for (int64_t c = threadIdx.x; c < cols; c += blockDim.x)
        dst[c] = src[c];
}

__global__ void scatter_add_kernel(float *out, const float *y, const int32_t *rows,
                                   const float *scale, int64_t cols)
{
    float *dst = out + (int64_t)rows[blockIdx.x] * cols;
    const float *src = y + (int64_t)blockIdx.x * cols;
    float s = scale[blockIdx.x];
    for (int64_t c = threadIdx.x; c < cols; c += blockDim.x)
        dst[c] += s * src[c];
}

static int check_rows(const int32_t *rows, int n, int64_t limit, bool unique, const char *op,
                      mx_error *err)
{
    unsigned char *seen = unique ? (unsigned char *)calloc((size_t)limit + 1, 1) : NULL;
    if (unique && !seen)
        return mx_fail(err, MX_ENOMEM, "%s: out of memory", op);
    for (int i = 0; i < n; i++) {
        if (rows[i] < 0 || rows[i] >= limit) {
            free(seen);
            return mx_fail(err, MX_ERANGE, "%s: row %d at %d outside [0, %lld)", op, rows[i], i,
                           (long long)limit);
        }
        if (unique && seen[rows[i]]++) {
            free(seen);
            return mx_fail(err, MX_EINVAL, "%s: row %d listed twice", op, rows[i]);
        }
    }
    free(seen);
    return 0;
}

int cuda_gather_rows(mx_backend *be, mx_tensor *out, const mx_tensor *x, const int32_t *rows, int n,
                     mx_error *err)
{
    TRY(cuda_check_act(out, "gather_rows out", err));
    TRY(cuda_check_act(x, "gather_rows x", err));
    if (n < 0 || (n > 0 && !rows) || out->shape[0] < n || out->shape[1] != x->shape[1])
        return mx_fail(err, MX_EINVAL, "gather_rows: out [%lld, %lld] cannot hold %d rows of %lld",
                       (long long)out->shape[0], (long long)out->shape[1], n, (long long)x->shape[1]);
    TRY(check_rows(rows, n, x->shape[0], false, "gather_rows", err));
    if (n == 0 || x->shape[1] == 0)
        return 0;
    TRY(cuda_enter(be, err));
    void *drows;
    TRY(cuda_params_reset(be, (size_t)n * 4, err));
    TRY(cuda_params_push(be, rows, (size_t)n * 4, &drows, err));
    gather_kernel<<<n, 256, 0, impl_of(be)->stream>>>((float *)out->data, (const float *)x->data,
                                                      (const int32_t *)drows, x->shape[1]);
    LAUNCH_CHECK();
    return 0;
}

int cuda_scatter_add_rows(mx_backend *be, mx_tensor *out, const mx_tensor *y, const int32_t *rows,
                          const float *scale, int n, mx_error *err)
{
    TRY(cuda_check_act(out, "scatter_add_rows out", err));
    TRY(cuda_check_act(y, "scatter_add_rows y", err));
    if (n < 0 || (n > 0 && (!rows || !scale)) || y->shape[0] < n || out->shape[1] != y->shape[1])
        return mx_fail(err, MX_EINVAL, "scatter_add_rows: y [%lld, %lld] does not fit %d rows of out "
                       "[%lld, %lld]", (long long)y->shape[0], (long long)y->shape[1], n,
                       (long long)out->shape[0], (long long)out->shape[1]);
    TRY(check_rows(rows, n, out->shape[0], true, "scatter_add_rows", err));
    if (n == 0 || y->shape[1] == 0)
        return 0;
    TRY(cuda_enter(be, err));
    void *drows, *dscale;
    TRY(cuda_params_reset(be, (size_t)n * 8, err));
    TRY(cuda_params_push(be, rows, (size_t)n * 4, &drows, err));
    TRY(cuda_params_push(be, scale, (size_t)n * 4, &dscale, err));
    scatter_add_kernel<<<n, 256, 0, impl_of(be)->stream>>>(
        (float *)out->data, (const float *)y->data, (const int32_t *)drows, (const float *)dscale,
        y->shape[1]);
    LAUNCH_CHECK();
    return 0;
}
