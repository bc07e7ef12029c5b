/* lightning_avx512.c - AVX-512 kernels of the CPU lightning attention (lightning_cpu.c drives;
 * called only after the run-time AVX-512 check): the block products of the blocked form (one
 * register-blocked FMA kernel C (+)= A . B, any strides, masked column tail) and the one-token
 * recurrence step. */
#include <immintrin.h>

#include "lightning_cpu.h"

#define INLINE static inline __attribute__((always_inline))

/* R rows x 64 columns from column j0 (nleft columns left, masked past them) over k. */
INLINE void mm_rows(const int R, float *c, int ldc, const float *a, int lda, const float *b, int ldb, int k, int j0,
                    int nleft, int acc)
{
    __mmask16 mk[4];
    for (int v = 0; v < 4; v++) {
        int l = nleft - 16 * v;
        mk[v] = l >= 16 ? (__mmask16)0xffff : l <= 0 ? (__mmask16)0 : (__mmask16)((1u << l) - 1);
    }
    __m512 s[6][4];
#pragma GCC unroll 6
    for (int r = 0; r < R; r++)
#pragma GCC unroll 4
        for (int v = 0; v < 4; v++)
            s[r][v] = acc ? _mm512_maskz_loadu_ps(mk[v], c + (size_t)r * ldc + j0 + 16 * v) : _mm512_setzero_ps();
    for (int kk = 0; kk < k; kk++) {
        __m512 bv[4];
        const float *bk = b + (size_t)kk * ldb + j0;
#pragma GCC unroll 4
        for (int v = 0; v < 4; v++)
            bv[v] = _mm512_maskz_loadu_ps(mk[v], bk + 16 * v);
#pragma GCC unroll 6
        for (int r = 0; r < R; r++) {
            __m512 av = _mm512_set1_ps(a[(size_t)r * lda + kk]);
#pragma GCC unroll 4
            for (int v = 0; v < 4; v++)
                s[r][v] = _mm512_fmadd_ps(av, bv[v], s[r][v]);
        }
    }
#pragma GCC unroll 6
    for (int r = 0; r < R; r++)
#pragma GCC unroll 4
        for (int v = 0; v < 4; v++)
            _mm512_mask_storeu_ps(c + (size_t)r * ldc + j0 + 16 * v, mk[v], s[r][v]);
}

void mx_lightning_mm_avx512(float *c, int ldc, const float *a, int lda, const float *b, int ldb, int m, int k, int n,
                            int acc)
{
    for (int j0 = 0; j0 < n; j0 += 64) {
        int i = 0;
        for (; i + 6 <= m; i += 6)
            mm_rows(6, c + (size_t)i * ldc, ldc, a + (size_t)i * lda, lda, b, ldb, k, j0, n - j0, acc);
        switch (m - i) {
        case 5: mm_rows(5, c + (size_t)i * ldc, ldc, a + (size_t)i * lda, lda, b, ldb, k, j0, n - j0, acc); break;
        case 4: mm_rows(4, c + (size_t)i * ldc, ldc, a + (size_t)i * lda, lda, b, ldb, k, j0, n - j0, acc); break;
        case 3: mm_rows(3, c + (size_t)i * ldc, ldc, a + (size_t)i * lda, lda, b, ldb, k, j0, n - j0, acc); break;
        case 2: mm_rows(2, c + (size_t)i * ldc, ldc, a + (size_t)i * lda, lda, b, ldb, k, j0, n - j0, acc); break;
        case 1: mm_rows(1, c + (size_t)i * ldc, ldc, a + (size_t)i * lda, lda, b, ldb, k, j0, n - j0, acc); break;
        default: break;
        }
    }
}

void mx_lightning_step_avx512(const float *q, const float *k, const float *v, float *o, const float *S_in,
                              float *S_out, int d, float lam)
{
    const __m512 vl = _mm512_set1_ps(lam);
    for (int b0 = 0; b0 < d; b0 += 64) {
        __mmask16 mk[4];
        __m512 acc[4], vv[4];
        for (int c = 0; c < 4; c++) {
            int l = d - b0 - 16 * c;
            mk[c] = l >= 16 ? (__mmask16)0xffff : l <= 0 ? (__mmask16)0 : (__mmask16)((1u << l) - 1);
            acc[c] = _mm512_setzero_ps();
            vv[c] = _mm512_maskz_loadu_ps(mk[c], v + b0 + 16 * c);
        }
        for (int a = 0; a < d; a++) {
            const float *Si = S_in + (size_t)a * d + b0;
            float *So = S_out + (size_t)a * d + b0;
            __m512 ka = _mm512_set1_ps(k[a]), qa = _mm512_set1_ps(q[a]);
#pragma GCC unroll 4
            for (int c = 0; c < 4; c++) {
                /* S = lam S + k^T v, then o += q S: the scalar form's order, per element */
                __m512 sv = _mm512_maskz_loadu_ps(mk[c], Si + 16 * c);
                sv = _mm512_add_ps(_mm512_mul_ps(vl, sv), _mm512_mul_ps(ka, vv[c]));
                _mm512_mask_storeu_ps(So + 16 * c, mk[c], sv);
                acc[c] = _mm512_fmadd_ps(qa, sv, acc[c]);
            }
        }
        for (int c = 0; c < 4; c++)
            _mm512_mask_storeu_ps(o + b0 + 16 * c, mk[c], acc[c]);
    }
}
