/* gemm_int8_avx2.c - AVX2 + FMA kernel of mx_cpu_gemm_i8 for x86 CPUs without AVX-512
 * (compiled with AVX2 flags; called only after the run-time check in gemm_int8.c). One
 * streaming kernel for every M: int8 rows widened in registers, x in passes of up to 4 rows
 * over L1-sized windows of W, each row's scale applied once at the end. */
#include <immintrin.h>
#include <stdint.h>

#include "gemm_kernels.h"

#define INLINE static inline __attribute__((always_inline))

INLINE __m256 widen8(const int8_t *p)
{
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)p)));
}

INLINE float hsum8(__m256 v)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* Rows [n, n+R) x rows [m0, m0+M) over [k0, k1); R*M + R + 1 <= 16 registers. */
INLINE void i8_block(const mx_gemm_args *a, int n, const int R, const int M, int m0, int k0,
                     int k1)
{
    const size_t ld = (size_t)a->K;
    const int8_t *w = (const int8_t *)a->w + (size_t)n * ld;
    const int k8 = k0 + (k1 - k0) / 8 * 8;
    __m256 acc[6][4];
#pragma GCC unroll 6
    for (int r = 0; r < R; r++)
#pragma GCC unroll 4
        for (int m = 0; m < M; m++)
            acc[r][m] = _mm256_setzero_ps();
    for (int k = k0; k < k8; k += 8) {
        __m256 wv[6];
#pragma GCC unroll 6
        for (int r = 0; r < R; r++)
            wv[r] = widen8(w + r * ld + k);
#pragma GCC unroll 4
        for (int m = 0; m < M; m++) {
            __m256 xv = _mm256_loadu_ps(a->x + (size_t)(m0 + m) * a->ldx + k);
#pragma GCC unroll 6
            for (int r = 0; r < R; r++)
                acc[r][m] = _mm256_fmadd_ps(wv[r], xv, acc[r][m]);
        }
    }
#pragma GCC unroll 6
    for (int r = 0; r < R; r++)
#pragma GCC unroll 4
        for (int m = 0; m < M; m++) {
            const float *x = a->x + (size_t)(m0 + m) * a->ldx;
            float s = hsum8(acc[r][m]);
            for (int k = k8; k < k1; k++)
                s += x[k] * (float)w[r * ld + k];
            float *yp = a->y + (size_t)(m0 + m) * a->ldy + n + r;
            float v = a->scale[n + r] * s;
            *yp = k0 ? *yp + v : v;
        }
}

INLINE void i8_group(const mx_gemm_args *a, int n, const int R, int k0, int k1)
{
    int m0 = 0;
    for (; m0 + 4 <= a->M; m0 += 4)
        i8_block(a, n, R, 4, m0, k0, k1);
    switch (a->M - m0) {
    case 3: i8_block(a, n, R, 3, m0, k0, k1); break;
    case 2: i8_block(a, n, R, 2, m0, k0, k1); break;
    case 1: i8_block(a, n, R, 1, m0, k0, k1); break;
    default: break;
    }
}

/* x's slice of a K window within 32 KiB, and the R rows' window of W within 4 KiB of L1
 * when x takes several passes over it. */
void mx_gemv_i8_avx2(const mx_gemm_args *a, int n0, int n1)
{
    if (a->M == 0)
        return;
    const int R = a->M == 1 ? 6 : a->M == 2 ? 4 : 3;
    int kb = 8192 / a->M;
    if (a->M > 4 && kb > 4096 / R)
        kb = 4096 / R;
    kb = kb < 64 ? 64 : kb / 64 * 64;
    for (int k0 = 0; k0 < a->K; k0 += kb) {
        int k1 = a->K - k0 < kb ? a->K : k0 + kb;
        int n = n0;
        for (; n + R <= n1; n += R) {
            if (R == 6)
                i8_group(a, n, 6, k0, k1);
            else if (R == 4)
                i8_group(a, n, 4, k0, k1);
            else
                i8_group(a, n, 3, k0, k1);
        }
        for (; n < n1; n++)
            i8_group(a, n, 1, k0, k1);
    }
}
