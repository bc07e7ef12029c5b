/* backend_cuda_absent.c - the CUDA entry points for builds without the CUDA toolkit: every
 * constructor fails with MX_EDEVICE so callers get a clear error instead of a link failure.
 * Compiled only when nvcc is missing (see core/cuda/module.mk); it must not do anything else. */
#include "core/backend.h"
#include "core/cuda/mx_cuda.h"

#include <stddef.h>

int mx_backend_cuda_create(int device, mx_backend **out, mx_error *err)
{
    (void)device;
    if (out)
        *out = NULL;
    return mx_fail(err, MX_EDEVICE, "CUDA backend unavailable: mx was built without CUDA");
}

int mx_backend_cuda_create_ex(const mx_cuda_options *opt, mx_backend **out, mx_error *err)
{
    return mx_backend_cuda_create(opt ? opt->device : 0, out, err);
}

int mx_cuda_tp_create(int n_gpus, const int *devices, const mx_cuda_options *opt, mx_cuda_tp **out,
                      mx_error *err)
{
    (void)n_gpus, (void)devices, (void)opt;
    if (out)
        *out = NULL;
    return mx_fail(err, MX_EDEVICE, "CUDA tensor parallel unavailable: mx was built without CUDA");
}

void mx_cuda_tp_destroy(mx_cuda_tp *tp)
{
    (void)tp;
}

int mx_cuda_tp_size(const mx_cuda_tp *tp)
{
    (void)tp;
    return 0;
}

mx_backend *mx_cuda_tp_backend(mx_cuda_tp *tp, int rank)
{
    (void)tp, (void)rank;
    return NULL;
}

int mx_cuda_tp_allreduce(mx_cuda_tp *tp, mx_tensor *const *bufs, mx_error *err)
{
    (void)tp, (void)bufs;
    return mx_fail(err, MX_EDEVICE, "CUDA tensor parallel unavailable: mx was built without CUDA");
}

int mx_cuda_tp_rmsnorm(mx_cuda_tp *tp, mx_tensor *const *ys, const mx_tensor *const *xs,
                       const mx_tensor *const *ws, float eps, mx_error *err)
{
    (void)tp, (void)ys, (void)xs, (void)ws, (void)eps;
    return mx_fail(err, MX_EDEVICE, "CUDA tensor parallel unavailable: mx was built without CUDA");
}

int mx_cuda_grouped_swiglu(mx_backend *be, mx_tensor *out, const mx_tensor *x,
                           const mx_cuda_expert_group *groups, int n_groups, mx_error *err)
{
    (void)be, (void)out, (void)x, (void)groups, (void)n_groups;
    return mx_fail(err, MX_EDEVICE, "CUDA backend unavailable: mx was built without CUDA");
}

int mx_cuda_upload_weight_slice(mx_backend *be, mx_tensor *dst, const mx_tensor *host, int dim,
                                int64_t begin, int64_t count, mx_error *err)
{
    (void)be, (void)dst, (void)host, (void)dim, (void)begin, (void)count;
    return mx_fail(err, MX_EDEVICE, "CUDA backend unavailable: mx was built without CUDA");
}
