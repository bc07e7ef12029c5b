/* cuda_context.cu - what every op of the CUDA backend uses: making the backend's device
 * current, long-lived device allocation, the scratch buffer and params arena, and the argument
 * checks. Its own file so that the op table (backend_cuda.cu) and the op files it wires in
 * (elementwise.cu, matmul.cu, ...) both call down into it, never into each other. */
#include "cuda_internal.cuh"

cudaError_t cuda_malloc(void **p, size_t bytes)
{
    cudaError_t e = cudaMalloc(p, bytes);
    if (e != cudaErrorMemoryAllocation)
        return e;
    cudaGetLastError();
    int dev;
    cudaMemPool_t pool;
    if (cudaGetDevice(&dev) != cudaSuccess || cudaDeviceGetDefaultMemPool(&pool, dev) != cudaSuccess)
        return e;
    cudaDeviceSynchronize(); /* pending stream-ordered frees land in the pool first */
    cudaMemPoolTrimTo(pool, 0);
    e = cudaMalloc(p, bytes);
    if (e != cudaSuccess)
        cudaGetLastError();
    return e;
}

int cuda_enter(mx_backend *be, mx_error *err)
{
    CU_TRY(cudaSetDevice(impl_of(be)->device));
    return 0;
}

int cuda_scratch(mx_backend *be, size_t bytes, void **out, mx_error *err)
{
    cuda_impl *im = impl_of(be);
    if (bytes > im->scratch_bytes) {
        size_t want = bytes + bytes / 4;
        CU_TRY(cudaStreamSynchronize(im->stream)); /* the old buffer may still be in use */
        CU_TRY(cudaFree(im->scratch));
        im->scratch = NULL;
        im->scratch_bytes = 0;
        if (cuda_malloc(&im->scratch, want) != cudaSuccess) {
            cudaGetLastError();
            return mx_fail(err, MX_ENOMEM, "CUDA scratch of %zu bytes: out of device memory", want);
        }
        im->scratch_bytes = want;
    }
    *out = im->scratch;
    return 0;
}

int cuda_params_reset(mx_backend *be, size_t total, mx_error *err)
{
    cuda_impl *im = impl_of(be);
    size_t want = total + 16 * 256; /* room for aligning up to 16 arrays */
    if (want > im->params_bytes) {
        want += want / 2;
        CU_TRY(cudaStreamSynchronize(im->stream));
        CU_TRY(cudaFree(im->params));
        im->params = NULL;
        im->params_bytes = 0;
        if (cuda_malloc(&im->params, want) != cudaSuccess) {
            cudaGetLastError();
            return mx_fail(err, MX_ENOMEM, "CUDA params buffer of %zu bytes: out of device memory",
                           want);
        }
        im->params_bytes = want;
    }
    im->params_used = 0;
    return 0;
}

int cuda_params_push(mx_backend *be, const void *src, size_t bytes, void **dev, mx_error *err)
{
    cuda_impl *im = impl_of(be);
    size_t off = (im->params_used + 255) & ~(size_t)255;
    if (off + bytes > im->params_bytes)
        return mx_fail(err, MX_EINTERNAL, "CUDA params arena overflow (%zu + %zu > %zu)", off, bytes,
                       im->params_bytes);
    *dev = (char *)im->params + off;
    if (bytes)
        CU_TRY(cudaMemcpyAsync(*dev, src, bytes, cudaMemcpyHostToDevice, im->stream));
    im->params_used = off + bytes;
    return 0;
}

int cuda_check_act(const mx_tensor *t, const char *name, mx_error *err)
{
    if (!t)
        return mx_fail(err, MX_EINVAL, "%s: missing tensor", name);
    if (t->device != MX_DEVICE_CUDA)
        return mx_fail(err, MX_EINVAL, "%s: tensor is not on the CUDA device", name);
    if (t->dtype != MX_DTYPE_F32)
        return mx_fail(err, MX_EINVAL, "%s: activations must be F32, got %s", name,
                       mx_dtype_name(t->dtype));
    if (t->ndim != 2 || t->shape[0] < 0 || t->shape[1] < 0)
        return mx_fail(err, MX_EINVAL, "%s: activations must be 2-D [rows, cols]", name);
    if (mx_tensor_numel(t) > 0 && !t->data)
        return mx_fail(err, MX_EINVAL, "%s: tensor has no data", name);
    return 0;
}

int cuda_check_weight(const mx_tensor *t, const char *name, mx_error *err)
{
    if (!t || !t->data)
        return mx_fail(err, MX_EINVAL, "%s: missing weight", name);
    if (t->device != MX_DEVICE_CUDA)
        return mx_fail(err, MX_EINVAL, "%s: weight was not uploaded to the CUDA device", name);
    if (t->dtype != MX_DTYPE_BF16 && t->dtype != MX_DTYPE_F32)
        return mx_fail(err, MX_EUNSUPPORTED, "%s: weight dtype %s (BF16 or F32 expected)", name,
                       mx_dtype_name(t->dtype));
    return 0;
}

int cuda_check_same(const mx_tensor *a, const mx_tensor *b, const char *an, const char *bn,
                    mx_error *err)
{
    if (a->shape[0] != b->shape[0] || a->shape[1] != b->shape[1])
        return mx_fail(err, MX_EINVAL, "%s [%lld, %lld] and %s [%lld, %lld] differ in shape", an,
                       (long long)a->shape[0], (long long)a->shape[1], bn, (long long)b->shape[0],
                       (long long)b->shape[1]);
    return 0;
}

int cuda_check_spans(const mx_span *spans, int n_spans, int64_t T, mx_error *err)
{
    if (n_spans < 0 || (n_spans > 0 && !spans))
        return mx_fail(err, MX_EINVAL, "bad span list (%d spans)", n_spans);
    int64_t covered = 0;
    for (int i = 0; i < n_spans; i++) {
        if (spans[i].len < 1 || spans[i].start < 0 || (int64_t)spans[i].start + spans[i].len > T)
            return mx_fail(err, MX_EINVAL, "span %d [%d, +%d) is empty or outside the %lld rows", i,
                           spans[i].start, spans[i].len, (long long)T);
        for (int j = 0; j < i; j++)
            if (spans[i].start < spans[j].start + spans[j].len &&
                spans[j].start < spans[i].start + spans[i].len)
                return mx_fail(err, MX_EINVAL, "spans %d and %d overlap", j, i);
        covered += spans[i].len;
    }
    (void)covered;
    return 0;
}
