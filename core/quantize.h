/* quantize.h - weight-only int8 quantization of BF16/F16/F32 weight matrices, done once at
 * load: symmetric, one fp32 scale per output row (scale = max|w| / 127, q = round(w / scale),
 * round to nearest, ties to even; a zero row gets scale 0 and q = 0). See gemm.h for the
 * kernels that multiply with the result. */
#ifndef MX_QUANTIZE_H
#define MX_QUANTIZE_H

#include <stdint.h>

#include "error.h"
#include "tensor.h"

/* How expert weights are held after loading. */
typedef enum {
    MX_WEIGHTS_AS_STORED = 0, /* the checkpoint's dtype (bf16), read in place */
    MX_WEIGHTS_INT8,          /* MX_DTYPE_I8 copies with per-row scales, owned by mx_weights */
} mx_weight_format;

/* "bf16" (as stored) or "int8"; -1 for anything else. */
int mx_weight_format_from_name(const char *name, mx_weight_format *out);
const char *mx_weight_format_name(mx_weight_format f);

/* Bytes an I8 copy of a [rows, cols] matrix takes: rows * cols int8 + rows fp32 scales,
 * each part rounded up to 64 bytes (what mx_quantize_i8 lays out). */
uint64_t mx_quantized_i8_bytes(int64_t rows, int64_t cols);

/* Quantizes the 2-D float tensor src into dst, an I8 tensor over mem (at least
 * mx_quantized_i8_bytes, 64-byte aligned): int8 values first, then the scales. The rows are
 * split over `threads` threads (0 = one per CPU this process may use). */
int mx_quantize_i8(const mx_tensor *src, void *mem, int threads, mx_tensor *dst, mx_error *err);

#endif
