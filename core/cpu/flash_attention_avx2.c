/* flash_attention_avx2.c - AVX2 + FMA tile kernels of the CPU flash attention (contract in
 * attention_cpu.h; compiled with AVX2 flags, called only after the run-time check in
 * flash_attention_cpu.c, head_dim a multiple of 8). exp2 is a degree-6 polynomial with the
 * exponent added in the integer domain, so no libm call per score. */
#include <immintrin.h>
#include <math.h>
#include <string.h>

#include "attention_cpu.h"

#define INLINE static inline __attribute__((always_inline))
#define T MX_FA_KEY_TILE

/* RB rows x 16 keys starting at column c (8 accumulators of 16 ymm registers). */
INLINE void qk_rows(const float *q, int d, const float *kt, float *s, int c, const int RB)
{
    __m256 acc[4][2];
#pragma GCC unroll 4
    for (int r = 0; r < RB; r++)
        acc[r][0] = acc[r][1] = _mm256_setzero_ps();
    for (int a = 0; a < d; a++) {
        const float *k = kt + (size_t)a * T + c;
        __m256 k0 = _mm256_load_ps(k), k1 = _mm256_load_ps(k + 8);
#pragma GCC unroll 4
        for (int r = 0; r < RB; r++) {
            __m256 b = _mm256_broadcast_ss(q + (size_t)r * d + a);
            acc[r][0] = _mm256_fmadd_ps(b, k0, acc[r][0]);
            acc[r][1] = _mm256_fmadd_ps(b, k1, acc[r][1]);
        }
    }
#pragma GCC unroll 4
    for (int r = 0; r < RB; r++) {
        _mm256_store_ps(s + (size_t)r * T + c, acc[r][0]);
        _mm256_store_ps(s + (size_t)r * T + c + 8, acc[r][1]);
    }
}

static void qk_avx2(const float *q, int m, int d, const float *kt, float *s)
{
    int i = 0;
    for (; i + 4 <= m; i += 4)
        for (int c = 0; c < T; c += 16)
            qk_rows(q + (size_t)i * d, d, kt, s + (size_t)i * T, c, 4);
    for (; i < m; i++)
        for (int c = 0; c < T; c += 16)
            qk_rows(q + (size_t)i * d, d, kt, s + (size_t)i * T, c, 1);
}

INLINE __m256 exp2v(__m256 x)
{
    x = _mm256_max_ps(x, _mm256_set1_ps(-125.f));
    __m256 n = _mm256_round_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 f = _mm256_sub_ps(x, n);
    __m256 p = _mm256_set1_ps(1.535336188319500e-4f);
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(1.339887440266574e-3f));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(9.618437357674640e-3f));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(5.550332471162809e-2f));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(2.402264791363012e-1f));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(6.931472028550421e-1f));
    p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(1.0f));
    __m256i e = _mm256_slli_epi32(_mm256_cvtps_epi32(n), 23);
    return _mm256_castsi256_ps(_mm256_add_epi32(_mm256_castps_si256(p), e));
}

static void softmax_avx2(float *s, int m, const int *nvalid, float *mx, float *l, float *corr)
{
    const __m256 ninf = _mm256_set1_ps(-INFINITY);
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    for (int i = 0; i < m; i++) {
        float *r = s + (size_t)i * T;
        int n = nvalid[i];
        if (mx_fa_row_skip(r, n, &corr[i]))
            continue;
        __m256 mk[8], v[8], vmax = ninf;
        for (int c = 0; c < 8; c++) {
            mk[c] = _mm256_castsi256_ps(_mm256_cmpgt_epi32(_mm256_set1_epi32(n - 8 * c), lane));
            v[c] = _mm256_blendv_ps(ninf, _mm256_load_ps(r + 8 * c), mk[c]);
            vmax = _mm256_max_ps(vmax, v[c]);
        }
        __m128 h = _mm_max_ps(_mm256_castps256_ps128(vmax), _mm256_extractf128_ps(vmax, 1));
        h = _mm_max_ps(h, _mm_movehl_ps(h, h));
        h = _mm_max_ss(h, _mm_shuffle_ps(h, h, 1));
        float mnew = mx_fa_row_max(_mm_cvtss_f32(h), &mx[i], &corr[i]);
        __m256 vm = _mm256_set1_ps(mnew), sum = _mm256_setzero_ps();
        for (int c = 0; c < 8; c++) {
            __m256 p = _mm256_and_ps(mk[c], exp2v(_mm256_sub_ps(v[c], vm)));
            sum = _mm256_add_ps(sum, p);
            _mm256_store_ps(r + 8 * c, p);
        }
        __m128 t = _mm_add_ps(_mm256_castps256_ps128(sum), _mm256_extractf128_ps(sum, 1));
        t = _mm_add_ps(t, _mm_movehl_ps(t, t));
        t = _mm_add_ss(t, _mm_shuffle_ps(t, t, 1));
        mx_fa_row_done(_mm_cvtss_f32(t), mnew, corr[i], &mx[i], &l[i]);
    }
}

INLINE void pv_rows(float *acc, const float *corr, const float *p, int nk, const float *v, int d, const int RB,
                    const int CB)
{
    __m256 o[4][4];
#pragma GCC unroll 4
    for (int r = 0; r < RB; r++) {
        __m256 cr = _mm256_set1_ps(corr[r]);
#pragma GCC unroll 4
        for (int c = 0; c < CB; c++)
            o[r][c] = _mm256_mul_ps(_mm256_loadu_ps(acc + (size_t)r * d + 8 * c), cr);
    }
    for (int j = 0; j < nk; j++) {
        const float *vj = v + (size_t)j * d;
#pragma GCC unroll 4
        for (int r = 0; r < RB; r++) {
            __m256 b = _mm256_broadcast_ss(p + (size_t)r * T + j);
#pragma GCC unroll 4
            for (int c = 0; c < CB; c++)
                o[r][c] = _mm256_fmadd_ps(b, _mm256_loadu_ps(vj + 8 * c), o[r][c]);
        }
    }
#pragma GCC unroll 4
    for (int r = 0; r < RB; r++)
#pragma GCC unroll 4
        for (int c = 0; c < CB; c++)
            _mm256_storeu_ps(acc + (size_t)r * d + 8 * c, o[r][c]);
}

static void pv_avx2(float *acc, const float *corr, const float *p, int m, int nk, const float *v, int d)
{
    int c0 = 0;
    for (; c0 + 32 <= d; c0 += 32) {
        int i = 0;
        for (; i + 3 <= m; i += 3)
            pv_rows(acc + (size_t)i * d + c0, corr + i, p + (size_t)i * T, nk, v + c0, d, 3, 4);
        for (; i < m; i++)
            pv_rows(acc + (size_t)i * d + c0, corr + i, p + (size_t)i * T, nk, v + c0, d, 1, 4);
    }
    for (; c0 < d; c0 += 8) {
        int i = 0;
        for (; i + 4 <= m; i += 4)
            pv_rows(acc + (size_t)i * d + c0, corr + i, p + (size_t)i * T, nk, v + c0, d, 4, 1);
        for (; i < m; i++)
            pv_rows(acc + (size_t)i * d + c0, corr + i, p + (size_t)i * T, nk, v + c0, d, 1, 1);
    }
}

static void decode_avx2(mx_kv_dtype t, const void *src, float scale, int n, int d, float *dst)
{
    size_t count = (size_t)n * d;
    __m256 sc = _mm256_set1_ps(scale);
    if (t == MX_KV_F32) {
        memcpy(dst, src, count * sizeof(float));
    } else if (t == MX_KV_BF16) {
        const uint16_t *b = src;
        for (size_t e = 0; e < count; e += 8) {
            __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(b + e)));
            _mm256_storeu_ps(dst + e, _mm256_castsi256_ps(_mm256_slli_epi32(w, 16)));
        }
    } else if (t == MX_KV_INT8) {
        const int8_t *b = src;
        for (size_t e = 0; e < count; e += 8) {
            __m256i w = _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(b + e)));
            _mm256_storeu_ps(dst + e, _mm256_mul_ps(_mm256_cvtepi32_ps(w), sc));
        }
    } else {
        const uint8_t *b = src;
        for (size_t e = 0; e < count; e += 8) {
            __m256i idx = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(b + e)));
            _mm256_storeu_ps(dst + e, _mm256_mul_ps(_mm256_i32gather_ps(mx_kv_fp8_table, idx, 4), sc));
        }
    }
}

const mx_fa_kernels mx_fa_kernels_avx2 = {MX_CPU_ISA_AVX2, qk_avx2, softmax_avx2, pv_avx2,
                                          decode_avx2, NULL, NULL};
