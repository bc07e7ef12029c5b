/* tensor.h - dtypes, number conversions and the tensor view the model and backends share.
 * A tensor is a view: it never owns its data; whoever allocated data frees it
 * (the checkpoint for mapped weights, a backend for buffers it allocated). */
#ifndef MX_TENSOR_H
#define MX_TENSOR_H

#include <stdint.h>
#include <stddef.h>
#include <string.h>

typedef enum {
    MX_DTYPE_F32 = 0,
    MX_DTYPE_BF16,
    MX_DTYPE_F16,
    MX_DTYPE_F64,
    MX_DTYPE_I32,
    MX_DTYPE_I64,
    MX_DTYPE_U8,
    /* Weight-only int8, symmetric, one fp32 scale per row (mx_tensor.scale): w = q * scale. */
    MX_DTYPE_I8,
    MX_DTYPE_COUNT
} mx_dtype;

typedef enum { MX_DEVICE_CPU = 0, MX_DEVICE_CUDA = 1 } mx_device;

#define MX_MAX_DIMS 4

typedef struct mx_tensor {
    void *data;
    mx_dtype dtype;
    mx_device device;
    int ndim;
    int64_t shape[MX_MAX_DIMS];
    /* MX_DTYPE_I8 only: shape[0] fp32 scales, one per row (dimension 0); NULL otherwise. A
     * view as data is: whoever allocated data owns it. Kept in the tensor rather than in a
     * separate quantized-weight type so that weights flow through the model, the backends'
     * upload and matmul unchanged. */
    const float *scale;
} mx_tensor;

size_t mx_dtype_size(mx_dtype dtype);
/* Safetensors spelling: "F32", "BF16", "F16", "F64", "I32", "I64", "U8", "I8". */
const char *mx_dtype_name(mx_dtype dtype);
/* Returns 0 and sets *out for a known safetensors dtype name, -1 otherwise. */
int mx_dtype_from_name(const char *name, mx_dtype *out);

int64_t mx_tensor_numel(const mx_tensor *t);
size_t mx_tensor_nbytes(const mx_tensor *t);
/* A 2-D view [rows, cols] over data. */
mx_tensor mx_tensor_2d(void *data, mx_dtype dtype, mx_device device, int64_t rows, int64_t cols);
/* Rows [row0, row0+n) of a tensor whose first dimension is rows (a view, no copy). */
mx_tensor mx_tensor_rows(const mx_tensor *t, int64_t row0, int64_t n);

static inline float mx_bf16_to_f32(uint16_t h)
{
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* Round to nearest even; NaN stays NaN. */
static inline uint16_t mx_f32_to_bf16(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    if ((u & 0x7fffffffu) > 0x7f800000u)
        return (uint16_t)((u >> 16) | 0x40);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

float mx_f16_to_f32(uint16_t h);
uint16_t mx_f32_to_f16(float f);

/* Element i of a BF16/F16/F32/F64 buffer as float. */
float mx_load_as_f32(const void *data, mx_dtype dtype, int64_t i);

#endif
