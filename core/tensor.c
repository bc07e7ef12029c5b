/* tensor.c - dtype tables, half-precision conversion and tensor view helpers. */
#include "tensor.h"

#include <math.h>

static const struct { const char *name; size_t size; } dtype_info[MX_DTYPE_COUNT] = {
    [MX_DTYPE_F32] = {"F32", 4}, [MX_DTYPE_BF16] = {"BF16", 2}, [MX_DTYPE_F16] = {"F16", 2},
    [MX_DTYPE_F64] = {"F64", 8}, [MX_DTYPE_I32] = {"I32", 4},   [MX_DTYPE_I64] = {"I64", 8},
    [MX_DTYPE_U8] = {"U8", 1},   [MX_DTYPE_I8] = {"I8", 1},
};

size_t mx_dtype_size(mx_dtype dtype)
{
    return (unsigned)dtype < MX_DTYPE_COUNT ? dtype_info[dtype].size : 0;
}

const char *mx_dtype_name(mx_dtype dtype)
{
    return (unsigned)dtype < MX_DTYPE_COUNT ? dtype_info[dtype].name : "?";
}

int mx_dtype_from_name(const char *name, mx_dtype *out)
{
    for (int i = 0; i < MX_DTYPE_COUNT; i++) {
        if (strcmp(name, dtype_info[i].name) == 0) {
            *out = (mx_dtype)i;
            return 0;
        }
    }
    return -1;
}

int64_t mx_tensor_numel(const mx_tensor *t)
{
    int64_t n = 1;
    for (int i = 0; i < t->ndim; i++)
        n *= t->shape[i];
    return n;
}

size_t mx_tensor_nbytes(const mx_tensor *t)
{
    return (size_t)mx_tensor_numel(t) * mx_dtype_size(t->dtype);
}

mx_tensor mx_tensor_2d(void *data, mx_dtype dtype, mx_device device, int64_t rows, int64_t cols)
{
    mx_tensor t = {.data = data, .dtype = dtype, .device = device, .ndim = 2};
    t.shape[0] = rows;
    t.shape[1] = cols;
    return t;
}

mx_tensor mx_tensor_rows(const mx_tensor *t, int64_t row0, int64_t n)
{
    mx_tensor v = *t;
    int64_t row_elems = 1;
    for (int i = 1; i < t->ndim; i++)
        row_elems *= t->shape[i];
    v.data = (char *)t->data + (size_t)(row0 * row_elems) * mx_dtype_size(t->dtype);
    if (t->scale)
        v.scale = t->scale + row0;
    v.shape[0] = n;
    return v;
}

float mx_f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h >> 15) << 31, exp = (h >> 10) & 0x1f, mant = h & 0x3ff;
    float f;
    if (exp == 0) {
        f = ldexpf((float)mant, -24);
        return sign ? -f : f;
    }
    uint32_t u;
    if (exp == 31)
        u = sign | 0x7f800000u | (mant << 13);
    else
        u = sign | ((exp + 112) << 23) | (mant << 13);
    memcpy(&f, &u, sizeof f);
    return f;
}

uint16_t mx_f32_to_f16(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    uint32_t sign = (u >> 16) & 0x8000u;
    float a = fabsf(f);
    if (isnan(f))
        return (uint16_t)(sign | 0x7e00u);
    if (a >= 65520.0f)
        return (uint16_t)(sign | 0x7c00u);
    if (a < 6.103515625e-05f) /* subnormal: round a / 2^-24 to nearest even */
        return (uint16_t)(sign | (uint32_t)nearbyintf(a * 16777216.0f));
    uint32_t m = u & 0x7fffffffu;
    m += 0xfffu + ((m >> 13) & 1u);
    return (uint16_t)(sign | ((m >> 13) - (112u << 10)));
}

float mx_load_as_f32(const void *data, mx_dtype dtype, int64_t i)
{
    switch (dtype) {
    case MX_DTYPE_F32: return ((const float *)data)[i];
    case MX_DTYPE_BF16: return mx_bf16_to_f32(((const uint16_t *)data)[i]);
    case MX_DTYPE_F16: return mx_f16_to_f32(((const uint16_t *)data)[i]);
    case MX_DTYPE_F64: return (float)((const double *)data)[i];
    default: return NAN;
    }
}
