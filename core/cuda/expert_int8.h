/* expert_int8.h - int8 weight-only expert GEMM on the CUDA backend (expert_int8.cu): int8
 * weights with one fp32 scale per output row (MX_DTYPE_I8, as quantized at load for the CPU
 * backend, core/quantize.h) copied to the device, and one launch computing every expert's
 * token group. The backend's upload_weight hands I8 tensors to mx_cuda_upload_i8, free_weight
 * to mx_cuda_free_i8, and matmul on an I8 weight runs mx_cuda_gemm_i8_grouped with one group. */
#ifndef MX_CUDA_EXPERT_INT8_H
#define MX_CUDA_EXPERT_INT8_H

#include <stdint.h>

#include "core/backend.h"

/* Copies a host MX_DTYPE_I8 [N, K] tensor with its scales into one device block; dst is an
 * I8 device tensor whose data and scale point into it. Free with mx_cuda_free_i8. */
int mx_cuda_upload_i8(mx_backend *be, mx_tensor *dst, const mx_tensor *host, mx_error *err);
void mx_cuda_free_i8(mx_backend *be, mx_tensor *t);

/* One expert's token group: rows [row0, row0 + n_rows) of x and y, weights as uploaded. */
typedef struct mx_cuda_i8_group {
    int row0, n_rows;
    const mx_tensor *w; /* I8 [N, K] on the device (mx_cuda_upload_i8) */
} mx_cuda_i8_group;

/* For every group: y[r, :] = x[r, :] . (scale[n] * q[n, :])^T, fp32 accumulation on unrounded
 * fp32 x (int8 -> fp32 is exact; the scale is applied once per dot product). x [T, K], y [T, N]
 * F32 on the device; every group's weight is [N, K]; groups must not share rows. */
int mx_cuda_gemm_i8_grouped(mx_backend *be, mx_tensor *y, const mx_tensor *x,
                            const mx_cuda_i8_group *groups, int n_groups, mx_error *err);

#endif
