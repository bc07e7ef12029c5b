/* quantize.c - per-row symmetric int8 quantization of weight matrices at load (quantize.h).
 * Runs once per tensor, in parallel over rows, so loading a checkpoint with int8 experts is
 * bounded by reading it, not by this arithmetic. */
#include "quantize.h"
#include "cpus.h"

#include <math.h>
#include <pthread.h>
#include <string.h>
#include <unistd.h>

int mx_weight_format_from_name(const char *name, mx_weight_format *out)
{
    if (!strcmp(name, "bf16"))
        *out = MX_WEIGHTS_AS_STORED;
    else if (!strcmp(name, "int8"))
        *out = MX_WEIGHTS_INT8;
    else
        return -1;
    return 0;
}

const char *mx_weight_format_name(mx_weight_format f)
{
    return f == MX_WEIGHTS_INT8 ? "int8" : "bf16";
}

static uint64_t round64(uint64_t n)
{
    return (n + 63) / 64 * 64;
}

uint64_t mx_quantized_i8_bytes(int64_t rows, int64_t cols)
{
    return round64((uint64_t)rows * (uint64_t)cols) + round64((uint64_t)rows * sizeof(float));
}

typedef struct {
    const mx_tensor *src;
    int8_t *q;
    float *scale;
    int64_t r0, r1, cols;
} quant_job;

/* n weights from element i of a BF16/F16/F32 buffer as fp32 (BF16 inline: it is what the
 * checkpoint holds, and a call per weight would dominate the load). */
static void widen(const mx_tensor *t, int64_t i, int64_t n, float *dst)
{
    if (t->dtype == MX_DTYPE_BF16) {
        const uint16_t *h = (const uint16_t *)t->data + i;
        for (int64_t c = 0; c < n; c++)
            dst[c] = mx_bf16_to_f32(h[c]);
    } else {
        for (int64_t c = 0; c < n; c++)
            dst[c] = mx_load_as_f32(t->data, t->dtype, i + c);
    }
}

static void quantize_rows(const quant_job *j)
{
    const mx_tensor *s = j->src;
    float row[1024];
    for (int64_t r = j->r0; r < j->r1; r++) {
        const int64_t base = r * j->cols;
        float amax = 0.f;
        for (int64_t c0 = 0; c0 < j->cols; c0 += 1024) {
            int64_t n = j->cols - c0 < 1024 ? j->cols - c0 : 1024;
            widen(s, base + c0, n, row);
            for (int64_t c = 0; c < n; c++) {
                float v = fabsf(row[c]);
                amax = v > amax ? v : amax;
            }
        }
        float scale = amax / 127.f;
        /* Multiply by the reciprocal of the scale (w * 127 / amax): one rounding instead of
         * a division per weight; |w| / scale <= 127 up to one ulp, clamped below. */
        float inv = amax > 0.f ? 127.f / amax : 0.f;
        int8_t *q = j->q + base;
        for (int64_t c0 = 0; c0 < j->cols; c0 += 1024) {
            int64_t n = j->cols - c0 < 1024 ? j->cols - c0 : 1024;
            widen(s, base + c0, n, row);
            for (int64_t c = 0; c < n; c++)
                row[c] *= inv;
            for (int64_t c = 0; c < n; c++) {
                float v = row[c] > 127.f ? 127.f : row[c] < -127.f ? -127.f : row[c];
                /* Round to nearest, ties to even, as nearbyintf in the default rounding mode:
                 * adding 1.5 * 2^23 leaves no fraction bits (|v| <= 127), subtracting it back is
                 * exact. Unlike nearbyintf it needs no library call per weight (no SSE4.1 in
                 * the baseline ISA). */
                v = (v + 12582912.f) - 12582912.f;
                q[c0 + c] = (int8_t)v;
            }
        }
        j->scale[r] = scale;
    }
}

static void *quantize_thread(void *arg)
{
    quantize_rows(arg);
    return NULL;
}

int mx_quantize_i8(const mx_tensor *src, void *mem, int threads, mx_tensor *dst, mx_error *err)
{
    if (src->ndim != 2 || (src->dtype != MX_DTYPE_BF16 && src->dtype != MX_DTYPE_F16 &&
                           src->dtype != MX_DTYPE_F32))
        return mx_fail(err, MX_EINVAL, "quantize: expected a 2-D BF16/F16/F32 matrix, got %d-D %s",
                       src->ndim, mx_dtype_name(src->dtype));
    if (!mem || ((uintptr_t)mem & 63))
        return mx_fail(err, MX_EINVAL, "quantize: destination must be 64-byte aligned");
    const int64_t rows = src->shape[0], cols = src->shape[1];
    int8_t *q = mem;
    float *scale = (float *)((char *)mem + round64((uint64_t)rows * (uint64_t)cols));
    if (threads < 1) /* 0: one per CPU this process may use */
        threads = mx_usable_cpus();
    if (threads > 64)
        threads = 64;
    if (rows < (int64_t)threads * 16)
        threads = 1; /* not worth a thread */
    quant_job jobs[64];
    pthread_t tid[64];
    int started = 0;
    for (int t = 0; t < threads; t++)
        jobs[t] = (quant_job){src, q, scale, rows * t / threads, rows * (t + 1) / threads, cols};
    for (int t = 1; t < threads; t++) {
        if (pthread_create(&tid[t], NULL, quantize_thread, &jobs[t]) != 0)
            break;
        started = t;
    }
    quantize_rows(&jobs[0]);
    for (int t = started + 1; t < threads; t++) /* threads that did not start: do their rows */
        quantize_rows(&jobs[t]);
    for (int t = 1; t <= started; t++)
        pthread_join(tid[t], NULL);
    *dst = mx_tensor_2d(q, MX_DTYPE_I8, MX_DEVICE_CPU, rows, cols);
    dst->scale = scale;
    return 0;
}
