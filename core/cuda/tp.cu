/* tp.cu - tensor parallelism over the GPUs of one pod with NCCL: one backend per rank, an
 * in-place sum all-reduce of per-rank partial results, and the RMSNorm whose row is split by
 * columns across ranks (lightning output norm over all heads). The sharding plan itself is
 * described in mx_cuda.h; the model code applies it with mx_cuda_upload_weight_slice. */
#include "cuda_internal.cuh"

#include <nccl.h>
#include <stdlib.h>
#include <string.h>

struct mx_cuda_tp {
    int n;
    mx_backend **be;
    ncclComm_t *comm;
};

#define NCCL_TRY(call)                                                                            \
    do {                                                                                          \
        ncclResult_t nc_r_ = (call);                                                              \
        if (nc_r_ != ncclSuccess)                                                                 \
            return mx_fail(err, MX_EDEVICE, "%s failed: %s", #call, ncclGetErrorString(nc_r_));   \
    } while (0)

extern "C" void mx_cuda_tp_destroy(mx_cuda_tp *tp)
{
    if (!tp)
        return;
    for (int r = 0; r < tp->n; r++) {
        if (tp->comm && tp->comm[r])
            ncclCommDestroy(tp->comm[r]);
        if (tp->be && tp->be[r])
            tp->be[r]->destroy(tp->be[r]);
    }
    free(tp->comm);
    free(tp->be);
    free(tp);
}

extern "C" int mx_cuda_tp_create(int n_gpus, const int *devices, const mx_cuda_options *opt,
                                 mx_cuda_tp **out, mx_error *err)
{
    if (!out)
        return mx_fail(err, MX_EINVAL, "mx_cuda_tp_create: out is NULL");
    *out = NULL;
    if (n_gpus < 1 || n_gpus > 64)
        return mx_fail(err, MX_EINVAL, "tensor parallel size %d outside 1..64", n_gpus);
    mx_cuda_tp *tp = (mx_cuda_tp *)calloc(1, sizeof *tp);
    int *devs = (int *)malloc((size_t)n_gpus * sizeof *devs);
    if (tp) {
        tp->be = (mx_backend **)calloc((size_t)n_gpus, sizeof *tp->be);
        tp->comm = (ncclComm_t *)calloc((size_t)n_gpus, sizeof *tp->comm);
    }
    if (!tp || !devs || !tp->be || !tp->comm) {
        free(devs);
        mx_cuda_tp_destroy(tp);
        return mx_fail(err, MX_ENOMEM, "mx_cuda_tp_create: out of memory");
    }
    tp->n = n_gpus;
    int rc = 0;
    for (int r = 0; r < n_gpus && !rc; r++) {
        devs[r] = devices ? devices[r] : r;
        for (int j = 0; j < r; j++)
            if (devs[j] == devs[r])
                rc = mx_fail(err, MX_EINVAL, "tensor parallel: device %d listed twice", devs[r]);
        if (rc)
            break;
        mx_cuda_options o = opt ? *opt : mx_cuda_options{0, 0, 0};
        o.device = devs[r];
        rc = mx_backend_cuda_create_ex(&o, &tp->be[r], err);
        if (rc)
            mx_error_prefix(err, "tensor parallel rank %d", r);
    }
    if (!rc) {
        ncclResult_t nr = ncclCommInitAll(tp->comm, n_gpus, devs);
        if (nr != ncclSuccess) {
            memset(tp->comm, 0, (size_t)n_gpus * sizeof *tp->comm);
            rc = mx_fail(err, MX_EDEVICE, "ncclCommInitAll over %d GPUs: %s", n_gpus,
                         ncclGetErrorString(nr));
        }
    }
    free(devs);
    if (rc) {
        mx_cuda_tp_destroy(tp);
        return rc;
    }
    *out = tp;
    return 0;
}

extern "C" int mx_cuda_tp_size(const mx_cuda_tp *tp)
{
    return tp ? tp->n : 0;
}

extern "C" mx_backend *mx_cuda_tp_backend(mx_cuda_tp *tp, int rank)
{
    return tp && rank >= 0 && rank < tp->n ? tp->be[rank] : NULL;
}

/* Sums n floats per rank in place. Each rank's stream orders the reduce after the ops that
 * produced its buffer and before the ops that read it; the host does not wait. */
static int allreduce_raw(mx_cuda_tp *tp, float *const *bufs, size_t n, mx_error *err)
{
    NCCL_TRY(ncclGroupStart());
    for (int r = 0; r < tp->n; r++) {
        ncclResult_t nr = ncclAllReduce(bufs[r], bufs[r], n, ncclFloat32, ncclSum, tp->comm[r],
                                        impl_of(tp->be[r])->stream);
        if (nr != ncclSuccess) {
            ncclGroupEnd();
            return mx_fail(err, MX_EDEVICE, "ncclAllReduce on rank %d: %s", r, ncclGetErrorString(nr));
        }
    }
    NCCL_TRY(ncclGroupEnd());
    return 0;
}

extern "C" int mx_cuda_tp_allreduce(mx_cuda_tp *tp, mx_tensor *const *bufs, mx_error *err)
{
    if (!tp || !bufs)
        return mx_fail(err, MX_EINVAL, "tp_allreduce: missing arguments");
    float *ptrs[64];
    for (int r = 0; r < tp->n; r++) {
        if (!bufs[r] || bufs[r]->device != MX_DEVICE_CUDA || bufs[r]->dtype != MX_DTYPE_F32 ||
            (mx_tensor_numel(bufs[r]) > 0 && !bufs[r]->data))
            return mx_fail(err, MX_EINVAL, "tp_allreduce: rank %d buffer is not an F32 CUDA tensor", r);
        if (mx_tensor_numel(bufs[r]) != mx_tensor_numel(bufs[0]))
            return mx_fail(err, MX_EINVAL, "tp_allreduce: rank %d has %lld values, rank 0 %lld", r,
                           (long long)mx_tensor_numel(bufs[r]), (long long)mx_tensor_numel(bufs[0]));
        ptrs[r] = (float *)bufs[r]->data;
    }
    if (mx_tensor_numel(bufs[0]) == 0 || tp->n == 1)
        return 0;
    return allreduce_raw(tp, ptrs, (size_t)mx_tensor_numel(bufs[0]), err);
}

/* grid (rows), block 256: ss[row] = sum of squares of the rank's columns. */
__global__ void row_sumsq_kernel(float *ss, const float *x, int64_t cols)
{
    __shared__ float part[8];
    const float *xr = x + blockIdx.x * cols;
    float s = 0.0f;
    for (int64_t c = threadIdx.x; c < cols; c += blockDim.x)
        s = fmaf(xr[c], xr[c], s);
    for (int o = 16; o > 0; o >>= 1)
        s += __shfl_xor_sync(0xffffffffu, s, o);
    if ((threadIdx.x & 31) == 0)
        part[threadIdx.x >> 5] = s;
    __syncthreads();
    if (threadIdx.x == 0) {
        float t = 0.0f;
        for (int w = 0; w < 8; w++)
            t += part[w];
        ss[blockIdx.x] = t;
    }
}

__global__ void row_scale_kernel(float *y, const float *x, const float *ss, const void *w,
                                 int is_bf16, int64_t cols, float total_cols, float eps)
{
    float inv = 1.0f / sqrtf(ss[blockIdx.x] / total_cols + eps);
    for (int64_t c = threadIdx.x; c < cols; c += blockDim.x)
        y[blockIdx.x * cols + c] = x[blockIdx.x * cols + c] * inv * load_w(w, is_bf16, c);
}

extern "C" int mx_cuda_tp_rmsnorm(mx_cuda_tp *tp, mx_tensor *const *ys, const mx_tensor *const *xs,
                                  const mx_tensor *const *ws, float eps, mx_error *err)
{
    if (!tp || !ys || !xs || !ws)
        return mx_fail(err, MX_EINVAL, "tp_rmsnorm: missing arguments");
    int64_t total = 0, rows = -1;
    for (int r = 0; r < tp->n; r++) {
        TRY(cuda_check_act(xs[r], "tp_rmsnorm x", err));
        TRY(cuda_check_act(ys[r], "tp_rmsnorm y", err));
        TRY(cuda_check_same(ys[r], xs[r], "tp_rmsnorm y", "tp_rmsnorm x", err));
        TRY(cuda_check_weight(ws[r], "tp_rmsnorm weight", err));
        if (mx_tensor_numel(ws[r]) != xs[r]->shape[1] || (rows >= 0 && xs[r]->shape[0] != rows))
            return mx_fail(err, MX_EINVAL, "tp_rmsnorm: rank %d shapes do not match", r);
        rows = xs[r]->shape[0];
        total += xs[r]->shape[1];
    }
    if (rows <= 0)
        return 0;
    if (rows > 0x7fffffff)
        return mx_fail(err, MX_ERANGE, "tp_rmsnorm: too many rows");
    float *ss[64];
    for (int r = 0; r < tp->n; r++) {
        mx_backend *be = tp->be[r];
        TRY(cuda_enter(be, err));
        TRY(cuda_scratch(be, (size_t)rows * sizeof(float), (void **)&ss[r], err));
        row_sumsq_kernel<<<(unsigned)rows, 256, 0, impl_of(be)->stream>>>(
            ss[r], (const float *)xs[r]->data, xs[r]->shape[1]);
        LAUNCH_CHECK();
    }
    if (tp->n > 1)
        TRY(allreduce_raw(tp, ss, (size_t)rows, err));
    for (int r = 0; r < tp->n; r++) {
        mx_backend *be = tp->be[r];
        TRY(cuda_enter(be, err));
        row_scale_kernel<<<(unsigned)rows, 256, 0, impl_of(be)->stream>>>(
            (float *)ys[r]->data, (const float *)xs[r]->data, ss[r], ws[r]->data,
            ws[r]->dtype == MX_DTYPE_BF16, xs[r]->shape[1], (float)total, eps);
        LAUNCH_CHECK();
    }
    return 0;
}
