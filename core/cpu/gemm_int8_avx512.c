/* gemm_int8_avx512.c - AVX-512 kernels of mx_cpu_gemm_i8 (compiled with AVX-512 flags;
 * called only after the run-time check in gemm_int8.c). int8 weights are widened in
 * registers (sign-extend to int32, convert to fp32: exact) and multiplied with unrounded fp32
 * x; each row's scale is applied once to the finished dot product. */
#include <immintrin.h>
#include <stdint.h>

#include "gemm_kernels.h"

#define INLINE static inline __attribute__((always_inline))

INLINE __m512 widen16(const int8_t *p)
{
    return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)p)));
}

INLINE __m512 widen16_mask(const int8_t *p, __mmask16 m)
{
    return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_maskz_loadu_epi8(m, p)));
}

/* Keeps v in a register (GCC would otherwise fold the x load into each of the R FMAs). */
INLINE void in_register(__m512 *v) { __asm__("" : "+v"(*v)); }

/* ---------------------------------------------------------------------------------------
 * Streaming kernel. Rows [n, n+R) of W against rows [m0, m0+M) of x over [k0, k1): R*M
 * accumulators, every 64-byte line of a row loaded once and widened as 4 x 16 lanes.
 * Registers: R*M + R + 1 <= 32. prefetch as in the bf16 GEMV: AHEAD fetches I8_AHEAD bytes
 * further along each row (long whole-row streams; the hardware prefetcher stops at every
 * 4 KiB page), NEXT_WINDOW the same window of the next row group (short windows, x in
 * passes), NONE for later passes over a window already in L1. */
#define I8_AHEAD 512
enum { PF_NONE, PF_NEXT_WINDOW, PF_AHEAD };

INLINE void i8_block(const mx_gemm_args *a, int n, const int R, const int M, int m0, int k0,
                     int k1, const int prefetch)
{
    const size_t ld = (size_t)a->K;
    const int8_t *w = (const int8_t *)a->w + (size_t)n * ld;
    const size_t next_group = (size_t)R * ld;
    __m512 acc[8][8];
#pragma GCC unroll 8
    for (int r = 0; r < R; r++)
#pragma GCC unroll 8
        for (int m = 0; m < M; m++)
            acc[r][m] = _mm512_setzero_ps();
    int k = k0;
    for (; k + 64 <= k1; k += 64) {
#pragma GCC unroll 8
        for (int r = 0; r < R; r++) {
            if (prefetch == PF_AHEAD)
                _mm_prefetch((const char *)(w + r * ld + k + I8_AHEAD), _MM_HINT_T0);
            else if (prefetch == PF_NEXT_WINDOW)
                _mm_prefetch((const char *)(w + next_group + r * ld + k), _MM_HINT_T0);
        }
#pragma GCC unroll 4
        for (int j = 0; j < 4; j++) {
            __m512 wv[8];
#pragma GCC unroll 8
            for (int r = 0; r < R; r++)
                wv[r] = widen16(w + r * ld + k + 16 * j);
#pragma GCC unroll 8
            for (int m = 0; m < M; m++) {
                __m512 xv = _mm512_loadu_ps(a->x + (size_t)(m0 + m) * a->ldx + k + 16 * j);
                in_register(&xv);
#pragma GCC unroll 8
                for (int r = 0; r < R; r++)
                    acc[r][m] = _mm512_fmadd_ps(wv[r], xv, acc[r][m]);
            }
        }
    }
    for (; k < k1; k += 16) {
        int left = k1 - k;
        __mmask16 mask = left >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << left) - 1);
        __m512 wv[8];
#pragma GCC unroll 8
        for (int r = 0; r < R; r++)
            wv[r] = widen16_mask(w + r * ld + k, mask);
#pragma GCC unroll 8
        for (int m = 0; m < M; m++) {
            __m512 xv = _mm512_maskz_loadu_ps(mask, a->x + (size_t)(m0 + m) * a->ldx + k);
#pragma GCC unroll 8
            for (int r = 0; r < R; r++)
                acc[r][m] = _mm512_fmadd_ps(wv[r], xv, acc[r][m]);
        }
    }
#pragma GCC unroll 8
    for (int r = 0; r < R; r++) {
        const float s = a->scale[n + r];
#pragma GCC unroll 8
        for (int m = 0; m < M; m++) {
            float *yp = a->y + (size_t)(m0 + m) * a->ldy + n + r;
            float v = s * _mm512_reduce_add_ps(acc[r][m]);
            *yp = k0 ? *yp + v : v;
        }
    }
}

/* One row group (R rows, one K window) against every row of x, in passes of P or P-1 rows. */
INLINE void i8_group(const mx_gemm_args *a, int n, const int R, const int P, int passes,
                     int k0, int k1, int whole_rows)
{
    i8_block(a, n, R, P, 0, k0, k1, whole_rows ? PF_AHEAD : PF_NEXT_WINDOW);
    for (int m0 = P, left = passes - 1; left > 0; left--) {
        int mp = (a->M - m0 + left - 1) / left;
        if (mp == P)
            i8_block(a, n, R, P, m0, k0, k1, PF_NONE);
        else
            i8_block(a, n, R, P > 1 ? P - 1 : 1, m0, k0, k1, PF_NONE);
        m0 += mp;
    }
}

#define I8_ROWS(R, P)                                                                         \
    do {                                                                                      \
        for (; n + (R) <= n1; n += (R))                                                       \
            i8_group(a, n, (R), (P), passes, k0, k1, whole_rows);                             \
        for (; n < n1; n++)                                                                   \
            i8_group(a, n, 1, (P), passes, k0, k1, whole_rows);                               \
    } while (0)

/* Up to I8_WHOLE_ROWS_MAX_M rows of x, W's rows are read whole (or in equal K blocks when x's
 * slice would pass I8_WHOLE_X_FLOATS, 128 KiB, in L2) as long streams with prefetch ahead:
 * short blocks restart the hardware prefetcher, and an int8 row is half as long as a bf16 one.
 * bench_gemm's int8 table (K = 6144, N = 9216, 2 threads, GB/s of int8 weights), x budget
 * 32 KiB -> 48 KiB -> 128 KiB: M = 2: 12.3 -> 12.8-26 -> 26-27; M = 4: 8.8 -> 8.9 -> 10.7-20.9.
 * Whole rows at M = 8 ran 4.4 GB/s against 6.0 in windows. With more rows, x's slice stays in
 * 32 KiB of L1 and W goes by in windows of I8_WINDOW_BYTES per row group, read from memory by
 * the first pass over x, from L1 by the others. */
#define I8_WHOLE_ROWS_MAX_M 6
#define I8_WHOLE_X_FLOATS 32768
#define I8_X_FLOATS 8192
#define I8_WINDOW_BYTES 4096

void mx_gemv_i8_avx512(const mx_gemm_args *a, int n0, int n1)
{
    if (a->M == 0)
        return;
    const int passes = (a->M + 7) / 8;
    const int P = (a->M + passes - 1) / passes;
    static const int rows_of_p[9] = {0, 8, 6, 5, 4, 4, 3, 3, 3};
    const int whole_rows = a->M <= I8_WHOLE_ROWS_MAX_M;
    int kb = (whole_rows ? I8_WHOLE_X_FLOATS : I8_X_FLOATS) / a->M;
    if (!whole_rows && kb > I8_WINDOW_BYTES / rows_of_p[P])
        kb = I8_WINDOW_BYTES / rows_of_p[P];
    kb = kb < 64 ? 64 : kb / 64 * 64;
    if (a->K > kb) { /* equal blocks, not a full one and a stub */
        int blocks = (a->K + kb - 1) / kb;
        kb = ((a->K + blocks - 1) / blocks + 63) / 64 * 64;
    }
    for (int k0 = 0; k0 < a->K; k0 += kb) {
        int k1 = a->K - k0 < kb ? a->K : k0 + kb;
        int n = n0;
        switch (P) {
        case 1: I8_ROWS(8, 1); break;
        case 2: I8_ROWS(6, 2); break;
        case 3: I8_ROWS(5, 3); break;
        case 4: I8_ROWS(4, 4); break;
        case 5: I8_ROWS(4, 5); break;
        case 6: I8_ROWS(3, 6); break;
        case 7: I8_ROWS(3, 7); break;
        default: I8_ROWS(3, 8); break;
        }
    }
}

/* ---------------------------------------------------------------------------------------
 * Packed kernel (large M): the panel W[n0:n0+nc, k0:k0+kc] is dequantized (q * scale, fp32)
 * and transposed into scratch as strips of NR = 64 columns laid out [kc][64], then a 6 x 64
 * fp32 micro-kernel broadcasts x; the same layout and kernel as the bf16 packed GEMM, so the
 * int8 path costs one extra multiply per weight per panel, amortised over every row of x. */
#define NR 64
#define MR 6

INLINE void transpose16(__m512 r[16])
{
    __m512 t[16], u[16];
#pragma GCC unroll 8
    for (int i = 0; i < 8; i++) {
        t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
#pragma GCC unroll 4
    for (int i = 0; i < 4; i++) {
        u[4 * i + 0] = _mm512_shuffle_ps(t[4 * i], t[4 * i + 2], 0x44);
        u[4 * i + 1] = _mm512_shuffle_ps(t[4 * i], t[4 * i + 2], 0xEE);
        u[4 * i + 2] = _mm512_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0x44);
        u[4 * i + 3] = _mm512_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0xEE);
    }
#pragma GCC unroll 4
    for (int c = 0; c < 4; c++) {
        __m512 w0 = _mm512_shuffle_f32x4(u[c], u[4 + c], 0x88);
        __m512 w1 = _mm512_shuffle_f32x4(u[c], u[4 + c], 0xDD);
        __m512 w2 = _mm512_shuffle_f32x4(u[8 + c], u[12 + c], 0x88);
        __m512 w3 = _mm512_shuffle_f32x4(u[8 + c], u[12 + c], 0xDD);
        r[c] = _mm512_shuffle_f32x4(w0, w2, 0x88);
        r[4 + c] = _mm512_shuffle_f32x4(w1, w3, 0x88);
        r[8 + c] = _mm512_shuffle_f32x4(w0, w2, 0xDD);
        r[12 + c] = _mm512_shuffle_f32x4(w1, w3, 0xDD);
    }
}

static void pack_i8(const mx_gemm_args *a, int n0, int nc, int k0, int kc, float *dst)
{
    const size_t ld = (size_t)a->K;
    for (int nb = 0; nb < nc; nb += 16) {
        float *out = dst + (size_t)(nb / NR) * kc * NR + nb % NR;
        int rows = nc - nb < 16 ? nc - nb : 16;
        for (int kb = 0; kb < kc; kb += 16) {
            int cols = kc - kb < 16 ? kc - kb : 16;
            __mmask16 mask = (__mmask16)((1u << cols) - 1);
            __m512 r[16];
#pragma GCC unroll 16
            for (int i = 0; i < 16; i++) {
                if (i < rows) {
                    const int8_t *p = (const int8_t *)a->w + (size_t)(n0 + nb + i) * ld + k0 + kb;
                    __m512 v = cols == 16 ? widen16(p) : widen16_mask(p, mask);
                    r[i] = _mm512_mul_ps(v, _mm512_set1_ps(a->scale[n0 + nb + i]));
                } else {
                    r[i] = _mm512_setzero_ps();
                }
            }
            transpose16(r);
            for (int j = 0; j < cols; j++)
                _mm512_store_ps(out + (size_t)(kb + j) * NR, r[j]);
        }
    }
    /* zero the unused columns of a partial last strip so the kernel multiplies zeros */
    int tail = nc % NR;
    if (tail) {
        float *out = dst + (size_t)(nc / NR) * kc * NR;
        int from = (tail + 15) / 16 * 16;
        for (int k = 0; k < kc; k++)
            for (int j = from; j < NR; j += 16)
                _mm512_store_ps(out + (size_t)k * NR + j, _mm512_setzero_ps());
    }
}

/* y[0:MRr, 0:ncols] (+)= x[0:MRr, 0:kc] . B[kc][64] */
INLINE void micro(const int MRr, int kc, const float *x, int ldx, const float *b, float *y,
                  int ldy, int ncols, int accumulate)
{
    __m512 acc[MR][4];
#pragma GCC unroll 6
    for (int m = 0; m < MRr; m++)
#pragma GCC unroll 4
        for (int j = 0; j < 4; j++)
            acc[m][j] = _mm512_setzero_ps();
    for (int k = 0; k < kc; k++) {
        const float *bk = b + (size_t)k * NR;
        __m512 b0 = _mm512_load_ps(bk), b1 = _mm512_load_ps(bk + 16);
        __m512 b2 = _mm512_load_ps(bk + 32), b3 = _mm512_load_ps(bk + 48);
#pragma GCC unroll 6
        for (int m = 0; m < MRr; m++) {
            __m512 xv = _mm512_set1_ps(x[(size_t)m * ldx + k]);
            acc[m][0] = _mm512_fmadd_ps(xv, b0, acc[m][0]);
            acc[m][1] = _mm512_fmadd_ps(xv, b1, acc[m][1]);
            acc[m][2] = _mm512_fmadd_ps(xv, b2, acc[m][2]);
            acc[m][3] = _mm512_fmadd_ps(xv, b3, acc[m][3]);
        }
    }
#pragma GCC unroll 6
    for (int m = 0; m < MRr; m++)
#pragma GCC unroll 4
        for (int j = 0; j < 4; j++) {
            int left = ncols - 16 * j;
            if (left <= 0)
                break;
            __mmask16 mask = left >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << left) - 1);
            float *yp = y + (size_t)m * ldy + 16 * j;
            __m512 v = acc[m][j];
            if (accumulate)
                v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(mask, yp));
            _mm512_mask_storeu_ps(yp, mask, v);
        }
}

static void micro_any(int mr, int kc, const float *x, int ldx, const float *b, float *y, int ldy,
                      int ncols, int accumulate)
{
    switch (mr) {
    case 6: micro(6, kc, x, ldx, b, y, ldy, ncols, accumulate); break;
    case 5: micro(5, kc, x, ldx, b, y, ldy, ncols, accumulate); break;
    case 4: micro(4, kc, x, ldx, b, y, ldy, ncols, accumulate); break;
    case 3: micro(3, kc, x, ldx, b, y, ldy, ncols, accumulate); break;
    case 2: micro(2, kc, x, ldx, b, y, ldy, ncols, accumulate); break;
    default: micro(1, kc, x, ldx, b, y, ldy, ncols, accumulate); break;
    }
}

void mx_gemm_i8_avx512(const mx_gemm_args *a, int n0, int n1, float *scratch)
{
    const int nc = n1 - n0;
    for (int k0 = 0; k0 < a->K; k0 += MX_GEMM_KC) {
        int kc = a->K - k0 < MX_GEMM_KC ? a->K - k0 : MX_GEMM_KC;
        pack_i8(a, n0, nc, k0, kc, scratch);
        for (int m = 0; m < a->M; m += MR) {
            int mr = a->M - m < MR ? a->M - m : MR;
            for (int s = 0; s < nc; s += NR) {
                int ncols = nc - s < NR ? nc - s : NR;
                micro_any(mr, kc, a->x + (size_t)m * a->ldx + k0, a->ldx,
                          scratch + (size_t)(s / NR) * kc * NR, a->y + (size_t)m * a->ldy + n0 + s,
                          a->ldy, ncols, k0 > 0);
            }
        }
    }
}
