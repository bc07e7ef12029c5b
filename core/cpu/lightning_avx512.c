/* lightning_avx512.c - the fp32 block products of the CPU lightning attention's blocked form
 * (lightning_cpu.c drives; called only after the run-time AVX-512 check): one register-blocked
 * FMA kernel C (+)= A . B for row-major operands with any strides and a masked column tail. */
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
