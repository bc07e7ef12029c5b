/* backend_cuda.cu - the CUDA backend's life cycle, memory ops and op table: creation (with a
 * clear MX_EDEVICE when no GPU is usable), device buffers, weight upload, host copies. The
 * scratch and params buffers and argument checks the ops share are in cuda_context.cu; the
 * math lives in the other .cu files. */
#include "cuda_internal.cuh"

extern "C" {
#include "core/cuda/expert_int8.h"
}

#include <stdlib.h>
#include <string.h>

static void cuda_destroy(mx_backend *be)
{
    if (!be)
        return;
    cuda_impl *im = impl_of(be);
    if (im) {
        cudaSetDevice(im->device);
        if (im->stream)
            cudaStreamSynchronize(im->stream);
        cuda_kv_pool_destroy(im);
        cudaFree(im->scratch);
        cudaFree(im->params);
        if (im->cublas)
            cublasDestroy(im->cublas);
        if (im->stream)
            cudaStreamDestroy(im->stream);
        free(im);
    }
    free(be);
}

static int shape_bytes(mx_dtype dtype, int ndim, const int64_t *shape, size_t *bytes, mx_error *err)
{
    if (ndim < 1 || ndim > MX_MAX_DIMS)
        return mx_fail(err, MX_EINVAL, "tensor rank %d outside 1..%d", ndim, MX_MAX_DIMS);
    if (mx_dtype_size(dtype) == 0)
        return mx_fail(err, MX_EINVAL, "unknown dtype %d", (int)dtype);
    size_t n = mx_dtype_size(dtype);
    for (int i = 0; i < ndim; i++) {
        if (shape[i] < 0 || (shape[i] > 0 && n > SIZE_MAX / 2 / (size_t)shape[i]))
            return mx_fail(err, MX_EINVAL, "tensor dimension %d (%lld) is negative or too large", i,
                           (long long)shape[i]);
        n *= (size_t)shape[i];
    }
    *bytes = n;
    return 0;
}

/* Activations come and go every layer, so they use the stream-ordered allocator: no device-wide
 * synchronisation on free, and the pool keeps memory cached (release threshold set at create). */
static int device_alloc(cudaStream_t stream, size_t bytes, void **out, mx_error *err)
{
    *out = NULL;
    if (bytes == 0)
        return 0;
    cudaError_t e = cudaMallocAsync(out, bytes, stream);
    if (e != cudaSuccess) {
        cudaGetLastError();
        *out = NULL;
        return mx_fail(err, e == cudaErrorMemoryAllocation ? MX_ENOMEM : MX_EDEVICE,
                       "cudaMallocAsync of %zu bytes: %s", bytes, cudaGetErrorString(e));
    }
    return 0;
}

static int cuda_alloc(mx_backend *be, mx_tensor *t, mx_dtype dtype, int ndim, const int64_t *shape,
                      mx_error *err)
{
    size_t bytes = 0;
    TRY(shape_bytes(dtype, ndim, shape, &bytes, err));
    TRY(cuda_enter(be, err));
    memset(t, 0, sizeof *t);
    void *p;
    TRY(device_alloc(impl_of(be)->stream, bytes, &p, err));
    if (bytes) {
        cudaError_t e = cudaMemsetAsync(p, 0, bytes, impl_of(be)->stream);
        if (e != cudaSuccess) {
            cudaFreeAsync(p, impl_of(be)->stream);
            return mx_fail(err, MX_EDEVICE, "cudaMemsetAsync: %s", cudaGetErrorString(e));
        }
    }
    t->data = p;
    t->dtype = dtype;
    t->device = MX_DEVICE_CUDA;
    t->ndim = ndim;
    for (int i = 0; i < ndim; i++)
        t->shape[i] = shape[i];
    return 0;
}

static void cuda_free(mx_backend *be, mx_tensor *t)
{
    if (!t || !t->data)
        return;
    cudaSetDevice(impl_of(be)->device);
    /* stream-ordered: released after the queued work that may still use it */
    cudaFreeAsync(t->data, impl_of(be)->stream);
    t->data = NULL;
}

static int cuda_upload_weight(mx_backend *be, mx_tensor *dst, const mx_tensor *host, mx_error *err)
{
    if (host && host->dtype == MX_DTYPE_I8) /* int8 rows + per-row scales in one device block */
        return mx_cuda_upload_i8(be, dst, host, err);
    if (!host || (mx_tensor_numel(host) > 0 && !host->data) || host->device != MX_DEVICE_CPU)
        return mx_fail(err, MX_EINVAL, "upload_weight: source must be a CPU tensor with data");
    TRY(cuda_alloc(be, dst, host->dtype, host->ndim, host->shape, err));
    size_t bytes = mx_tensor_nbytes(host);
    if (bytes) {
        cudaError_t e = cudaMemcpyAsync(dst->data, host->data, bytes, cudaMemcpyHostToDevice,
                                        impl_of(be)->stream);
        if (e == cudaSuccess)
            e = cudaStreamSynchronize(impl_of(be)->stream);
        if (e != cudaSuccess) {
            cuda_free(be, dst);
            return mx_fail(err, MX_EDEVICE, "upload_weight copy: %s", cudaGetErrorString(e));
        }
    }
    return 0;
}

/* I8 weights come from mx_cuda_upload_i8 (one block: values, then scales). */
static void cuda_free_weight(mx_backend *be, mx_tensor *t)
{
    if (t && t->dtype == MX_DTYPE_I8)
        mx_cuda_free_i8(be, t);
    else
        cuda_free(be, t);
}

extern "C" int mx_cuda_upload_weight_slice(mx_backend *be, mx_tensor *dst, const mx_tensor *host,
                                           int dim, int64_t begin, int64_t count, mx_error *err)
{
    if (!be || !be->name || strcmp(be->name, "cuda") != 0)
        return mx_fail(err, MX_EINVAL, "upload_weight_slice: not a CUDA backend");
    if (!host || !host->data || host->device != MX_DEVICE_CPU)
        return mx_fail(err, MX_EINVAL, "upload_weight_slice: source must be a CPU tensor with data");
    if (host->dtype == MX_DTYPE_I8) /* a slice would have to carry its rows' scales */
        return mx_fail(err, MX_EUNSUPPORTED, "upload_weight_slice: int8 weights are not split across GPUs");
    if (dim < 0 || dim > 1 || dim >= host->ndim || (dim == 1 && host->ndim != 2))
        return mx_fail(err, MX_EINVAL, "upload_weight_slice: dim %d of a rank-%d tensor", dim,
                       host->ndim);
    if (begin < 0 || count < 1 || begin + count > host->shape[dim])
        return mx_fail(err, MX_ERANGE, "upload_weight_slice: [%lld, +%lld) outside dimension %d (%lld)",
                       (long long)begin, (long long)count, dim, (long long)host->shape[dim]);
    int64_t shape[MX_MAX_DIMS];
    for (int i = 0; i < host->ndim; i++)
        shape[i] = host->shape[i];
    shape[dim] = count;
    TRY(cuda_alloc(be, dst, host->dtype, host->ndim, shape, err));
    size_t es = mx_dtype_size(host->dtype);
    cudaError_t e;
    if (dim == 0) {
        size_t row = (size_t)(mx_tensor_numel(host) / host->shape[0]) * es;
        e = cudaMemcpy(dst->data, (const char *)host->data + (size_t)begin * row, (size_t)count * row,
                       cudaMemcpyHostToDevice);
    } else {
        size_t pitch = (size_t)host->shape[1] * es;
        e = cudaMemcpy2D(dst->data, (size_t)count * es, (const char *)host->data + (size_t)begin * es,
                         pitch, (size_t)count * es, (size_t)host->shape[0], cudaMemcpyHostToDevice);
    }
    if (e != cudaSuccess) {
        cuda_free(be, dst);
        return mx_fail(err, MX_EDEVICE, "upload_weight_slice copy: %s", cudaGetErrorString(e));
    }
    return 0;
}

__global__ void bf16_to_f32_kernel(float *dst, const __nv_bfloat16 *src, int64_t n)
{
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x)
        dst[i] = __bfloat162float(src[i]);
}

static int cuda_to_host_f32(mx_backend *be, float *dst, const mx_tensor *src, mx_error *err)
{
    if (!src || src->device != MX_DEVICE_CUDA || (mx_tensor_numel(src) > 0 && !src->data))
        return mx_fail(err, MX_EINVAL, "to_host_f32: source is not a CUDA tensor");
    TRY(cuda_enter(be, err));
    cuda_impl *im = impl_of(be);
    int64_t n = mx_tensor_numel(src);
    const void *from = src->data;
    if (src->dtype == MX_DTYPE_BF16 && n > 0) {
        void *tmp;
        TRY(cuda_scratch(be, (size_t)n * sizeof(float), &tmp, err));
        bf16_to_f32_kernel<<<grid_for(n, 256), 256, 0, im->stream>>>(
            (float *)tmp, (const __nv_bfloat16 *)src->data, n);
        LAUNCH_CHECK();
        from = tmp;
    } else if (src->dtype != MX_DTYPE_F32) {
        return mx_fail(err, MX_EUNSUPPORTED, "to_host_f32: dtype %s", mx_dtype_name(src->dtype));
    }
    if (n > 0)
        CU_TRY(cudaMemcpyAsync(dst, from, (size_t)n * sizeof(float), cudaMemcpyDeviceToHost,
                               im->stream));
    CU_TRY(cudaStreamSynchronize(im->stream));
    return 0;
}

static int cuda_from_host_f32(mx_backend *be, mx_tensor *dst, const float *src, mx_error *err)
{
    if (!dst || dst->device != MX_DEVICE_CUDA || dst->dtype != MX_DTYPE_F32)
        return mx_fail(err, MX_EINVAL, "from_host_f32: destination must be an F32 CUDA tensor");
    int64_t n = mx_tensor_numel(dst);
    if (n == 0)
        return 0;
    if (!dst->data || !src)
        return mx_fail(err, MX_EINVAL, "from_host_f32: missing buffer");
    TRY(cuda_enter(be, err));
    cuda_impl *im = impl_of(be);
    CU_TRY(cudaMemcpyAsync(dst->data, src, (size_t)n * sizeof(float), cudaMemcpyHostToDevice,
                           im->stream));
    CU_TRY(cudaStreamSynchronize(im->stream)); /* the caller may reuse src at once */
    return 0;
}

static int cuda_sync(mx_backend *be, mx_error *err)
{
    TRY(cuda_enter(be, err));
    CU_TRY(cudaStreamSynchronize(impl_of(be)->stream));
    return 0;
}

extern "C" int mx_backend_cuda_create_ex(const mx_cuda_options *opt_in, mx_backend **out,
                                         mx_error *err)
{
    if (!out)
        return mx_fail(err, MX_EINVAL, "mx_backend_cuda_create: out is NULL");
    *out = NULL;
    mx_cuda_options opt = {0, 0, 0};
    if (opt_in)
        opt = *opt_in;
    if (opt.kv_page_tokens == 0)
        opt.kv_page_tokens = MX_KV_PAGE_TOKENS;
    if (opt.kv_page_tokens != MX_KV_PAGE_TOKENS) /* the page format is shared by every backend */
        return mx_fail(err, MX_EINVAL, "kv_page_tokens %d: KV pages hold %d tokens on every backend",
                       opt.kv_page_tokens, MX_KV_PAGE_TOKENS);
    int count = 0;
    cudaError_t e = cudaGetDeviceCount(&count);
    if (e != cudaSuccess) {
        cudaGetLastError();
        return mx_fail(err, MX_EDEVICE, "no usable CUDA device: %s (is an NVIDIA GPU with its driver present?)",
                       cudaGetErrorString(e));
    }
    if (count == 0)
        return mx_fail(err, MX_EDEVICE, "no usable CUDA device: none present");
    if (opt.device < 0 || opt.device >= count)
        return mx_fail(err, MX_EDEVICE, "CUDA device %d does not exist (%d present)", opt.device,
                       count);
    CU_TRY(cudaSetDevice(opt.device));

    mx_backend *be = (mx_backend *)calloc(1, sizeof *be);
    cuda_impl *im = (cuda_impl *)calloc(1, sizeof *im);
    if (!be || !im) {
        free(be);
        free(im);
        return mx_fail(err, MX_ENOMEM, "out of memory creating the CUDA backend");
    }
    be->impl = im;
    im->device = opt.device;
    im->opt = opt;
    int rc = 0;
    if ((e = cudaStreamCreateWithFlags(&im->stream, cudaStreamNonBlocking)) != cudaSuccess) {
        im->stream = NULL;
        rc = mx_fail(err, MX_EDEVICE, "cudaStreamCreate: %s", cudaGetErrorString(e));
    } else if (cublasCreate(&im->cublas) != CUBLAS_STATUS_SUCCESS) {
        im->cublas = NULL;
        rc = mx_fail(err, MX_EDEVICE, "cublasCreate failed");
    } else if (cublasSetStream(im->cublas, im->stream) != CUBLAS_STATUS_SUCCESS ||
               /* default math: fp32 GEMMs stay fp32 (no TF32 unless asked for) */
               cublasSetMathMode(im->cublas, CUBLAS_DEFAULT_MATH) != CUBLAS_STATUS_SUCCESS) {
        rc = mx_fail(err, MX_EDEVICE, "cuBLAS stream/math-mode setup failed");
    }
    cudaMemPool_t pool;
    if (!rc && cudaDeviceGetDefaultMemPool(&pool, opt.device) == cudaSuccess) {
        uint64_t keep = UINT64_MAX; /* keep freed blocks cached in the pool */
        cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &keep);
    }
    cudaGetLastError();
    if (rc) {
        cuda_destroy(be);
        return rc;
    }
    be->name = "cuda";
    be->device = MX_DEVICE_CUDA;
    be->act_dtype = MX_DTYPE_F32;
    be->destroy = cuda_destroy;
    be->alloc = cuda_alloc;
    be->free = cuda_free;
    be->upload_weight = cuda_upload_weight;
    be->free_weight = cuda_free_weight;
    be->to_host_f32 = cuda_to_host_f32;
    be->from_host_f32 = cuda_from_host_f32;
    be->sync = cuda_sync;
    be->embed = cuda_embed;
    be->matmul = cuda_matmul;
    be->rmsnorm = cuda_rmsnorm;
    be->residual = cuda_residual;
    be->silu = cuda_silu;
    be->swiglu = cuda_swiglu;
    be->sigmoid_mul = cuda_sigmoid_mul;
    be->lightning = cuda_lightning;
    be->lightning_state_init = cuda_lightning_state_init;
    be->lightning_state_free = cuda_lightning_state_free;
    be->softmax_attention = cuda_softmax_attention;
    be->kv_cache_init = cuda_kv_cache_init;
    be->kv_cache_free = cuda_kv_cache_free;
    be->kv_cache_truncate = cuda_kv_cache_truncate;
    be->kv_configure = cuda_kv_configure;
    be->kv_usage = cuda_kv_usage;
    be->moe_route = cuda_moe_route;
    be->gather_rows = cuda_gather_rows;
    be->scatter_add_rows = cuda_scatter_add_rows;
    *out = be;
    return 0;
}

extern "C" int mx_backend_cuda_create(int device, mx_backend **out, mx_error *err)
{
    mx_cuda_options opt = {device, 0, 0};
    return mx_backend_cuda_create_ex(&opt, out, err);
}
