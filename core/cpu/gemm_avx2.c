/* gemm_avx2.c - AVX2 + FMA + F16C kernels of mx_cpu_gemm, for x86 CPUs without AVX-512
 * (compiled with AVX2 flags; called only after the run-time check in gemm.c). Same design as
 * gemm_avx512.c with 8-wide vectors: a streaming gemv and a packed 6x16 micro-kernel. */
#include <immintrin.h>
#include <stdint.h>

#include "gemm_kernels.h"

#define INLINE static inline __attribute__((always_inline))

/* 8 weights starting at element i, widened to fp32. */
INLINE __m256 load8(const void *w, mx_dtype dt, size_t i)
{
    if (dt == MX_DTYPE_BF16) {
        __m128i h = _mm_loadu_si128((const __m128i *)((const uint16_t *)w + i));
        return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
    }
    if (dt == MX_DTYPE_F16)
        return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((const uint16_t *)w + i)));
    return _mm256_loadu_ps((const float *)w + i);
}

INLINE float load1(const void *w, mx_dtype dt, size_t i)
{
    if (dt == MX_DTYPE_BF16)
        return mx_bf16_to_f32(((const uint16_t *)w)[i]);
    if (dt == MX_DTYPE_F16)
        return _cvtsh_ss(((const uint16_t *)w)[i]);
    return ((const float *)w)[i];
}

INLINE float hsum8(__m256 v)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* ---- GEMV (M <= 4): R rows of W streamed once, R*M accumulators ---- */
INLINE void gemv_block(const mx_gemm_args *a, mx_dtype dt, int n, const int R, const int M)
{
    const int K = a->K, K8 = K & ~7;
    const size_t ld = (size_t)K;
    __m256 acc[8][MX_GEMV_MAX_M];
#pragma GCC unroll 8
    for (int r = 0; r < R; r++)
#pragma GCC unroll 4
        for (int m = 0; m < M; m++)
            acc[r][m] = _mm256_setzero_ps();
    for (int k = 0; k < K8; k += 8) {
        __m256 xv[MX_GEMV_MAX_M];
#pragma GCC unroll 4
        for (int m = 0; m < M; m++)
            xv[m] = _mm256_loadu_ps(a->x + (size_t)m * a->ldx + k);
#pragma GCC unroll 8
        for (int r = 0; r < R; r++) {
            __m256 wv = load8(a->w, dt, (size_t)(n + r) * ld + k);
#pragma GCC unroll 4
            for (int m = 0; m < M; m++)
                acc[r][m] = _mm256_fmadd_ps(wv, xv[m], acc[r][m]);
        }
    }
#pragma GCC unroll 8
    for (int r = 0; r < R; r++)
#pragma GCC unroll 4
        for (int m = 0; m < M; m++) {
            const float *x = a->x + (size_t)m * a->ldx;
            float s = hsum8(acc[r][m]);
            for (int k = K8; k < K; k++)
                s += x[k] * load1(a->w, dt, (size_t)(n + r) * ld + k);
            a->y[(size_t)m * a->ldy + n + r] = s;
        }
}

INLINE void gemv_dt(const mx_gemm_args *a, mx_dtype dt, int n0, int n1)
{
    int n = n0;
    switch (a->M) {
    case 1:
        for (; n + 8 <= n1; n += 8)
            gemv_block(a, dt, n, 8, 1);
        for (; n < n1; n++)
            gemv_block(a, dt, n, 1, 1);
        break;
    case 2:
        for (; n + 4 <= n1; n += 4)
            gemv_block(a, dt, n, 4, 2);
        for (; n < n1; n++)
            gemv_block(a, dt, n, 1, 2);
        break;
    case 3:
        for (; n + 2 <= n1; n += 2)
            gemv_block(a, dt, n, 2, 3);
        for (; n < n1; n++)
            gemv_block(a, dt, n, 1, 3);
        break;
    default:
        for (; n + 2 <= n1; n += 2)
            gemv_block(a, dt, n, 2, 4);
        for (; n < n1; n++)
            gemv_block(a, dt, n, 1, 4);
        break;
    }
}

void mx_gemv_avx2(const mx_gemm_args *a, int n0, int n1)
{
    if (a->M == 0)
        return;
    if (a->wdtype == MX_DTYPE_BF16)
        gemv_dt(a, MX_DTYPE_BF16, n0, n1);
    else if (a->wdtype == MX_DTYPE_F16)
        gemv_dt(a, MX_DTYPE_F16, n0, n1);
    else
        gemv_dt(a, MX_DTYPE_F32, n0, n1);
}

/* ---- GEMM: panel packed as strips of NR = 16 columns laid out [kc][16] ---- */
#define NR 16
#define MR 6

INLINE void transpose8(__m256 r[8])
{
    __m256 t[8], u[8];
#pragma GCC unroll 4
    for (int i = 0; i < 4; i++) {
        t[2 * i] = _mm256_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm256_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
#pragma GCC unroll 2
    for (int i = 0; i < 2; i++) {
        u[4 * i + 0] = _mm256_shuffle_ps(t[4 * i], t[4 * i + 2], 0x44);
        u[4 * i + 1] = _mm256_shuffle_ps(t[4 * i], t[4 * i + 2], 0xEE);
        u[4 * i + 2] = _mm256_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0x44);
        u[4 * i + 3] = _mm256_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0xEE);
    }
#pragma GCC unroll 4
    for (int c = 0; c < 4; c++) {
        r[c] = _mm256_permute2f128_ps(u[c], u[4 + c], 0x20);
        r[4 + c] = _mm256_permute2f128_ps(u[c], u[4 + c], 0x31);
    }
}

INLINE void pack_dt(const mx_gemm_args *a, mx_dtype dt, int n0, int nc, int k0, int kc,
                    float *dst)
{
    const size_t ld = (size_t)a->K;
    for (int nb = 0; nb < nc; nb += 8) {
        float *out = dst + (size_t)(nb / NR) * kc * NR + nb % NR;
        int rows = nc - nb < 8 ? nc - nb : 8;
        for (int kb = 0; kb < kc; kb += 8) {
            int cols = kc - kb < 8 ? kc - kb : 8;
            __m256 r[8];
            if (rows == 8 && cols == 8) {
#pragma GCC unroll 8
                for (int i = 0; i < 8; i++)
                    r[i] = load8(a->w, dt, (size_t)(n0 + nb + i) * ld + k0 + kb);
            } else {
                /* Edge block: widen element by element, zeros outside the matrix. */
                float tmp[8][8] __attribute__((aligned(32)));
                for (int i = 0; i < 8; i++)
                    for (int c = 0; c < 8; c++)
                        tmp[i][c] = i < rows && c < cols
                                        ? load1(a->w, dt, (size_t)(n0 + nb + i) * ld + k0 + kb + c)
                                        : 0.f;
                for (int i = 0; i < 8; i++)
                    r[i] = _mm256_load_ps(tmp[i]);
            }
            transpose8(r);
            for (int j = 0; j < cols; j++)
                _mm256_store_ps(out + (size_t)(kb + j) * NR, r[j]);
        }
    }
    int tail = nc % NR;
    if (tail && tail <= 8) {
        float *out = dst + (size_t)(nc / NR) * kc * NR;
        for (int k = 0; k < kc; k++)
            _mm256_store_ps(out + (size_t)k * NR + 8, _mm256_setzero_ps());
    }
}

INLINE void micro(const int MRr, int kc, const float *x, int ldx, const float *b, float *y,
                  int ldy, int ncols, int accumulate)
{
    __m256 acc[MR][2];
#pragma GCC unroll 6
    for (int m = 0; m < MRr; m++) {
        acc[m][0] = _mm256_setzero_ps();
        acc[m][1] = _mm256_setzero_ps();
    }
    for (int k = 0; k < kc; k++) {
        __m256 b0 = _mm256_load_ps(b + (size_t)k * NR), b1 = _mm256_load_ps(b + (size_t)k * NR + 8);
#pragma GCC unroll 6
        for (int m = 0; m < MRr; m++) {
            __m256 xv = _mm256_broadcast_ss(x + (size_t)m * ldx + k);
            acc[m][0] = _mm256_fmadd_ps(xv, b0, acc[m][0]);
            acc[m][1] = _mm256_fmadd_ps(xv, b1, acc[m][1]);
        }
    }
#pragma GCC unroll 6
    for (int m = 0; m < MRr; m++) {
        float *yp = y + (size_t)m * ldy;
        if (ncols == NR) {
            __m256 v0 = acc[m][0], v1 = acc[m][1];
            if (accumulate) {
                v0 = _mm256_add_ps(v0, _mm256_loadu_ps(yp));
                v1 = _mm256_add_ps(v1, _mm256_loadu_ps(yp + 8));
            }
            _mm256_storeu_ps(yp, v0);
            _mm256_storeu_ps(yp + 8, v1);
        } else {
            float tmp[NR] __attribute__((aligned(32)));
            _mm256_store_ps(tmp, acc[m][0]);
            _mm256_store_ps(tmp + 8, acc[m][1]);
            for (int j = 0; j < ncols; j++)
                yp[j] = accumulate ? yp[j] + tmp[j] : tmp[j];
        }
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

void mx_gemm_avx2(const mx_gemm_args *a, int n0, int n1, float *scratch)
{
    const int nc = n1 - n0;
    for (int k0 = 0; k0 < a->K; k0 += MX_GEMM_KC) {
        int kc = a->K - k0 < MX_GEMM_KC ? a->K - k0 : MX_GEMM_KC;
        if (a->wdtype == MX_DTYPE_BF16)
            pack_dt(a, MX_DTYPE_BF16, n0, nc, k0, kc, scratch);
        else if (a->wdtype == MX_DTYPE_F16)
            pack_dt(a, MX_DTYPE_F16, n0, nc, k0, kc, scratch);
        else
            pack_dt(a, MX_DTYPE_F32, n0, nc, k0, kc, scratch);
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
