/* flash_attention_avx512.c - AVX-512 tile kernels of the CPU flash attention (contract in
 * attention_cpu.h; compiled with AVX-512 flags, called only after the run-time check in
 * flash_attention_cpu.c, head_dim a multiple of 16). fp32 FMA throughout, but for the opt-in
 * VDPBF16PS P.V of bf16 decode at the end; exp2 is a degree-6 polynomial with vscalefps, so no
 * libm call per score. */
#include <immintrin.h>
#include <math.h>
#include <string.h>

#include "amx_tiles.h"
#include "attention_cpu.h"

#define INLINE static inline __attribute__((always_inline))
#define T MX_FA_KEY_TILE

/* rows x 64 keys: RB rows share each 4-vector load of a key row of kt (RB = 6: 24 accumulators). */
INLINE void qk_rows(const float *q, int d, const float *kt, float *s, const int RB)
{
    __m512 acc[6][4];
#pragma GCC unroll 6
    for (int r = 0; r < RB; r++)
#pragma GCC unroll 4
        for (int c = 0; c < 4; c++)
            acc[r][c] = _mm512_setzero_ps();
    for (int a = 0; a < d; a++) {
        const float *k = kt + (size_t)a * T;
        __m512 k0 = _mm512_load_ps(k), k1 = _mm512_load_ps(k + 16), k2 = _mm512_load_ps(k + 32),
               k3 = _mm512_load_ps(k + 48);
#pragma GCC unroll 6
        for (int r = 0; r < RB; r++) {
            __m512 b = _mm512_set1_ps(q[(size_t)r * d + a]);
            acc[r][0] = _mm512_fmadd_ps(b, k0, acc[r][0]);
            acc[r][1] = _mm512_fmadd_ps(b, k1, acc[r][1]);
            acc[r][2] = _mm512_fmadd_ps(b, k2, acc[r][2]);
            acc[r][3] = _mm512_fmadd_ps(b, k3, acc[r][3]);
        }
    }
#pragma GCC unroll 6
    for (int r = 0; r < RB; r++)
#pragma GCC unroll 4
        for (int c = 0; c < 4; c++)
            _mm512_store_ps(s + (size_t)r * T + 16 * c, acc[r][c]);
}

static void qk_avx512(const float *q, int m, int d, const float *kt, float *s)
{
    int i = 0;
    for (; i + 6 <= m; i += 6)
        qk_rows(q + (size_t)i * d, d, kt, s + (size_t)i * T, 6);
    switch (m - i) {
    case 5: qk_rows(q + (size_t)i * d, d, kt, s + (size_t)i * T, 5); break;
    case 4: qk_rows(q + (size_t)i * d, d, kt, s + (size_t)i * T, 4); break;
    case 3: qk_rows(q + (size_t)i * d, d, kt, s + (size_t)i * T, 3); break;
    case 2: qk_rows(q + (size_t)i * d, d, kt, s + (size_t)i * T, 2); break;
    case 1: qk_rows(q + (size_t)i * d, d, kt, s + (size_t)i * T, 1); break;
    default: break;
    }
}

/* 2^x for x in [-125, 0]: x = n + f with |f| <= 1/2, 2^f by the polynomial, scaled by 2^n. */
INLINE __m512 exp2v(__m512 x)
{
    x = _mm512_max_ps(x, _mm512_set1_ps(-125.f));
    __m512 n = _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 f = _mm512_sub_ps(x, n);
    __m512 p = _mm512_set1_ps(1.535336188319500e-4f);
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.339887440266574e-3f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(9.618437357674640e-3f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(5.550332471162809e-2f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(2.402264791363012e-1f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(6.931472028550421e-1f));
    p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f));
    return _mm512_scalef_ps(p, n);
}

static void softmax_avx512(float *s, int m, const int *nvalid, float *mx, float *l, float *corr)
{
    const __m512 ninf = _mm512_set1_ps(-INFINITY);
    for (int i = 0; i < m; i++) {
        float *r = s + (size_t)i * T;
        int n = nvalid[i];
        if (mx_fa_row_skip(r, n, &corr[i]))
            continue;
        __mmask16 mk[4];
        __m512 v[4], vmax = ninf;
        for (int c = 0; c < 4; c++) {
            int nc = n - 16 * c;
            nc = nc < 0 ? 0 : nc > 16 ? 16 : nc;
            mk[c] = (__mmask16)((1u << nc) - 1);
            v[c] = _mm512_mask_load_ps(ninf, mk[c], r + 16 * c);
            vmax = _mm512_max_ps(vmax, v[c]);
        }
        float mnew = mx_fa_row_max(_mm512_reduce_max_ps(vmax), &mx[i], &corr[i]);
        __m512 vm = _mm512_set1_ps(mnew), sum = _mm512_setzero_ps();
        for (int c = 0; c < 4; c++) {
            __m512 p = _mm512_maskz_mov_ps(mk[c], exp2v(_mm512_sub_ps(v[c], vm)));
            sum = _mm512_add_ps(sum, p);
            _mm512_store_ps(r + 16 * c, p);
        }
        mx_fa_row_done(_mm512_reduce_add_ps(sum), mnew, corr[i], &mx[i], &l[i]);
    }
}

/* RB rows x CB vectors of acc: scaled by corr, then nk keys of p . v accumulated. One function
 * per shape with arrays of exactly that size, so the accumulators stay in registers (a shared
 * [8][8] array made GCC spill them). RB * CB <= 24 leaves registers for RB broadcasts and one
 * row of v. */
#define DEF_PV(RB, CB)                                                                              \
    static inline __attribute__((always_inline)) void pv_##RB##x##CB(float *acc, const float *corr, \
                                                                      const float *p, int nk,       \
                                                                      const float *v, int d)        \
    {                                                                                               \
        __m512 o[RB][CB];                                                                           \
        _Pragma("GCC unroll 8") for (int r = 0; r < RB; r++)                                        \
        {                                                                                           \
            __m512 cr = _mm512_set1_ps(corr[r]);                                                    \
            _Pragma("GCC unroll 8") for (int c = 0; c < CB; c++) o[r][c] =                          \
                _mm512_mul_ps(_mm512_loadu_ps(acc + (size_t)r * d + 16 * c), cr);                   \
        }                                                                                           \
        for (int j = 0; j < nk; j++) {                                                              \
            __m512 b[RB];                                                                           \
            _Pragma("GCC unroll 8") for (int r = 0; r < RB; r++) b[r] =                             \
                _mm512_set1_ps(p[(size_t)r * T + j]);                                               \
            const float *vj = v + (size_t)j * d;                                                    \
            _Pragma("GCC unroll 8") for (int c = 0; c < CB; c++)                                    \
            {                                                                                       \
                __m512 vv = _mm512_loadu_ps(vj + 16 * c);                                           \
                _Pragma("GCC unroll 8") for (int r = 0; r < RB; r++) o[r][c] =                      \
                    _mm512_fmadd_ps(b[r], vv, o[r][c]);                                             \
            }                                                                                       \
        }                                                                                           \
        _Pragma("GCC unroll 8") for (int r = 0; r < RB; r++)                                        \
            _Pragma("GCC unroll 8") for (int c = 0; c < CB; c++)                                    \
                _mm512_storeu_ps(acc + (size_t)r * d + 16 * c, o[r][c]);                            \
    }
DEF_PV(3, 8)
DEF_PV(1, 8)
DEF_PV(6, 4)
DEF_PV(1, 4)
DEF_PV(8, 2)
DEF_PV(1, 2)
DEF_PV(8, 1)
DEF_PV(1, 1)

/* Rows [0, m) in blocks of RB, columns [c0, c0 + 16 CB). */
#define PV_COLUMNS(RB, CB)                                                                          \
    do {                                                                                            \
        int i = 0;                                                                                  \
        for (; i + (RB) <= m; i += (RB))                                                            \
            pv_##RB##x##CB(acc + (size_t)i * d + c0, corr + i, p + (size_t)i * T, nk, v + c0, d);   \
        for (; i < m; i++)                                                                          \
            pv_1x##CB(acc + (size_t)i * d + c0, corr + i, p + (size_t)i * T, nk, v + c0, d);        \
    } while (0)

static void pv_avx512(float *acc, const float *corr, const float *p, int m, int nk, const float *v, int d)
{
    int c0 = 0;
    for (; c0 + 128 <= d; c0 += 128)
        PV_COLUMNS(3, 8);
    if (c0 + 64 <= d) {
        PV_COLUMNS(6, 4);
        c0 += 64;
    }
    if (c0 + 32 <= d) {
        PV_COLUMNS(8, 2);
        c0 += 32;
    }
    if (c0 + 16 <= d)
        PV_COLUMNS(8, 1);
}

static void decode_avx512(mx_kv_dtype t, const void *src, float scale, int n, int d, float *dst)
{
    size_t count = (size_t)n * d;
    __m512 sc = _mm512_set1_ps(scale);
    if (t == MX_KV_F32) {
        memcpy(dst, src, count * sizeof(float));
    } else if (t == MX_KV_BF16) {
        const uint16_t *b = src;
        for (size_t e = 0; e < count; e += 16) {
            __m512i w = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(b + e)));
            _mm512_storeu_ps(dst + e, _mm512_castsi512_ps(_mm512_slli_epi32(w, 16)));
        }
    } else if (t == MX_KV_INT8) {
        const int8_t *b = src;
        for (size_t e = 0; e < count; e += 16) {
            __m512i w = _mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(b + e)));
            _mm512_storeu_ps(dst + e, _mm512_mul_ps(_mm512_cvtepi32_ps(w), sc));
        }
    } else {
        const uint8_t *b = src;
        for (size_t e = 0; e < count; e += 16) {
            __m512i idx = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(b + e)));
            _mm512_storeu_ps(dst + e, _mm512_mul_ps(_mm512_i32gather_ps(idx, mx_kv_fp8_table, 4), sc));
        }
    }
}

/* ---- decode kernels: page blocks read in their stored dtype, widened in registers ---- */

/* 16 elements of a block in dtype DT from element e, as f32 (8-bit: without the scale). fp8
 * e4m3: normal numbers by moving the bits into an f32 and multiplying by 2^120, subnormals
 * (exponent 0) as mantissa x 2^-9, so no table gather and no dependence on denormal modes. */
INLINE __m512 widen16(const int DT, const void *b, size_t e)
{
    if (DT == MX_KV_F32)
        return _mm512_loadu_ps((const float *)b + e);
    if (DT == MX_KV_BF16) {
        __m512i w = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)((const uint16_t *)b + e)));
        return _mm512_castsi512_ps(_mm512_slli_epi32(w, 16));
    }
    if (DT == MX_KV_INT8)
        return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)((const int8_t *)b + e))));
    __m512i x = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)((const uint8_t *)b + e)));
    __m512i mag = _mm512_and_si512(x, _mm512_set1_epi32(0x7f));
    __m512 nrm = _mm512_mul_ps(_mm512_castsi512_ps(_mm512_slli_epi32(mag, 20)), _mm512_set1_ps(0x1p120f));
    __m512 sub = _mm512_mul_ps(_mm512_cvtepi32_ps(mag), _mm512_set1_ps(0x1p-9f));
    __m512 val = _mm512_mask_blend_ps(_mm512_cmpgt_epi32_mask(mag, _mm512_set1_epi32(7)), sub, nrm);
    __m512i sign = _mm512_slli_epi32(_mm512_and_si512(x, _mm512_set1_epi32(0x80)), 24);
    return _mm512_castsi512_ps(_mm512_or_si512(_mm512_castps_si512(val), sign));
}

/* Prefetches bytes [off, off + n) of a block into L2 (one line per 64 bytes). The decode
 * kernels spread the next block's lines evenly over every pass they make over the current
 * one, so a few lines are in flight all the time: issued in bursts (one pass's worth), they
 * filled the miss queue, stalled the loop and left the rest of the block's compute without
 * reads in flight (measured: a (page, head) took its compute time plus its read time). */
INLINE void prefetch_span(const void *next, size_t off, size_t n)
{
    if (!next)
        return;
    for (size_t b = 0; b < n; b += 64)
        _mm_prefetch((const char *)next + off + b, _MM_HINT_T1);
}

/* R rows x C vectors of 16 keys from key c0 of a K block kt[d][T]: per dim, C widened key
 * vectors meet R broadcast q values, so scores need no horizontal sums (R * C <= 16). Each dim
 * prefetches pstep bytes from next (NULL: none). */
INLINE void qkp_rows(const int DT, const int R, const int C, const void *kt, const void *next, size_t pstep,
                     const float *q, int d, float scale, int c0, float *s)
{
    __m512 acc[8][4];
#pragma GCC unroll 8
    for (int r = 0; r < R; r++)
#pragma GCC unroll 4
        for (int c = 0; c < C; c++)
            acc[r][c] = _mm512_setzero_ps();
    for (int a = 0; a < d; a++) {
        prefetch_span(next, (size_t)a * pstep, pstep);
        __m512 k[4];
#pragma GCC unroll 4
        for (int c = 0; c < C; c++)
            k[c] = widen16(DT, kt, (size_t)a * T + (size_t)c0 + 16 * (size_t)c);
#pragma GCC unroll 8
        for (int r = 0; r < R; r++) {
            __m512 b = _mm512_set1_ps(q[(size_t)r * d + a]);
#pragma GCC unroll 4
            for (int c = 0; c < C; c++)
                acc[r][c] = _mm512_fmadd_ps(b, k[c], acc[r][c]);
        }
    }
    __m512 sc = _mm512_set1_ps(scale);
#pragma GCC unroll 8
    for (int r = 0; r < R; r++)
#pragma GCC unroll 4
        for (int c = 0; c < C; c++)
            _mm512_store_ps(s + (size_t)r * T + c0 + 16 * c,
                            DT == MX_KV_INT8 || DT == MX_KV_FP8_E4M3 ? _mm512_mul_ps(acc[r][c], sc) : acc[r][c]);
}

/* Rows in blocks of 8 (8 x 32 keys), then 4, 2, 1 (x 64 keys). The first block's passes
 * prefetch the next K block (T * eb bytes per dim), half each when there are two. */
INLINE void qk_page_dt(const int DT, const void *kt, float scale, const void *next, const float *q, int m, int d,
                       float *s)
{
    const size_t eb = DT == MX_KV_F32 ? 4 : DT == MX_KV_BF16 ? 2 : 1, half = T * eb / 2;
    int i = 0;
    for (; i + 8 <= m; i += 8, next = NULL) {
        qkp_rows(DT, 8, 2, kt, next, half, q + (size_t)i * d, d, scale, 0, s + (size_t)i * T);
        qkp_rows(DT, 8, 2, kt, next ? (const char *)next + half * d : NULL, half, q + (size_t)i * d, d, scale, 32,
                 s + (size_t)i * T);
    }
    if (m - i >= 4) {
        qkp_rows(DT, 4, 4, kt, next, 2 * half, q + (size_t)i * d, d, scale, 0, s + (size_t)i * T);
        i += 4;
        next = NULL;
    }
    if (m - i >= 2) {
        qkp_rows(DT, 2, 4, kt, next, 2 * half, q + (size_t)i * d, d, scale, 0, s + (size_t)i * T);
        i += 2;
        next = NULL;
    }
    if (m - i >= 1)
        qkp_rows(DT, 1, 4, kt, next, 2 * half, q + (size_t)i * d, d, scale, 0, s + (size_t)i * T);
}

static void qk_page_avx512(mx_kv_dtype t, const void *kt, float scale, const void *next, const float *q, int m,
                           int d, float *s)
{
    switch (t) {
    case MX_KV_F32: qk_page_dt(MX_KV_F32, kt, scale, next, q, m, d, s); break;
    case MX_KV_BF16: qk_page_dt(MX_KV_BF16, kt, scale, next, q, m, d, s); break;
    case MX_KV_INT8: qk_page_dt(MX_KV_INT8, kt, scale, next, q, m, d, s); break;
    default: qk_page_dt(MX_KV_FP8_E4M3, kt, scale, next, q, m, d, s); break;
    }
}

/* R rows x C vectors of acc from column c0: scaled by corr, then nk keys of p . v with each
 * row of v widened once per pass (R * C <= 16; the 8-bit scale folds into p). Each key
 * prefetches pstep bytes from next (NULL: none). */
INLINE void pvp_rows(const int DT, const int R, const int C, const void *v, const void *next, size_t pstep,
                     float scale, float *acc, const float *corr, const float *p, int nk, int d, int c0)
{
    const int eight = DT == MX_KV_INT8 || DT == MX_KV_FP8_E4M3;
    __m512 o[8][8];
#pragma GCC unroll 8
    for (int r = 0; r < R; r++) {
        __m512 cr = _mm512_set1_ps(corr[r]);
#pragma GCC unroll 8
        for (int c = 0; c < C; c++)
            o[r][c] = _mm512_mul_ps(_mm512_loadu_ps(acc + (size_t)r * d + c0 + 16 * c), cr);
    }
    for (int j = 0; j < nk; j++) {
        prefetch_span(next, (size_t)j * pstep, pstep);
        __m512 vv[8];
#pragma GCC unroll 8
        for (int c = 0; c < C; c++)
            vv[c] = widen16(DT, v, (size_t)j * d + (size_t)c0 + 16 * (size_t)c);
#pragma GCC unroll 8
        for (int r = 0; r < R; r++) {
            float w = p[(size_t)r * T + j];
            __m512 b = _mm512_set1_ps(eight ? w * scale : w);
#pragma GCC unroll 8
            for (int c = 0; c < C; c++)
                o[r][c] = _mm512_fmadd_ps(b, vv[c], o[r][c]);
        }
    }
#pragma GCC unroll 8
    for (int r = 0; r < R; r++)
#pragma GCC unroll 8
        for (int c = 0; c < C; c++)
            _mm512_storeu_ps(acc + (size_t)r * d + c0 + 16 * c, o[r][c]);
}

/* The slice of a block of `bytes` each of `passes` passes prefetches (whole lines), as bytes
 * per step of a pass of `steps` steps. */
INLINE size_t slice_of(size_t bytes, int passes)
{
    return (bytes / (size_t)passes + 63) & ~(size_t)63;
}

/* Rows [i, i + R) over every column: C vectors at a time, then single vectors; the passes
 * share the prefetch of the next V block. */
INLINE void pvp_block(const int DT, const int R, const int C, const void *v, const void *next, float scale,
                      float *acc, const float *corr, const float *p, int nk, int d)
{
    const size_t eb = DT == MX_KV_F32 ? 4 : DT == MX_KV_BF16 ? 2 : 1;
    size_t slice = slice_of((size_t)T * d * eb, d / (16 * C) + d % (16 * C) / 16), pstep = (slice + T - 1) / T;
    const char *pf = next;
    int c0 = 0;
    for (; c0 + 16 * C <= d; c0 += 16 * C, pf = pf ? pf + slice : NULL)
        pvp_rows(DT, R, C, v, pf, pstep, scale, acc, corr, p, nk, d, c0);
    for (; c0 < d; c0 += 16, pf = pf ? pf + slice : NULL)
        pvp_rows(DT, R, 1, v, pf, pstep, scale, acc, corr, p, nk, d, c0);
}

INLINE void pv_page_dt(const int DT, const void *v, float scale, const void *next, float *acc, const float *corr,
                       const float *p, int m, int nk, int d)
{
    int i = 0;
    for (; i + 8 <= m; i += 8, next = NULL)
        pvp_block(DT, 8, 2, v, next, scale, acc + (size_t)i * d, corr + i, p + (size_t)i * T, nk, d);
    if (m - i >= 4) {
        pvp_block(DT, 4, 4, v, next, scale, acc + (size_t)i * d, corr + i, p + (size_t)i * T, nk, d);
        i += 4;
        next = NULL;
    }
    if (m - i >= 2) {
        pvp_block(DT, 2, 8, v, next, scale, acc + (size_t)i * d, corr + i, p + (size_t)i * T, nk, d);
        i += 2;
        next = NULL;
    }
    if (m - i >= 1)
        pvp_block(DT, 1, 8, v, next, scale, acc + (size_t)i * d, corr + i, p + (size_t)i * T, nk, d);
}

static void pv_page_avx512(mx_kv_dtype t, const void *v, float scale, const void *next, float *acc,
                           const float *corr, const float *p, int m, int nk, int d)
{
    switch (t) {
    case MX_KV_F32: pv_page_dt(MX_KV_F32, v, scale, next, acc, corr, p, m, nk, d); break;
    case MX_KV_BF16: pv_page_dt(MX_KV_BF16, v, scale, next, acc, corr, p, m, nk, d); break;
    case MX_KV_INT8: pv_page_dt(MX_KV_INT8, v, scale, next, acc, corr, p, m, nk, d); break;
    default: pv_page_dt(MX_KV_FP8_E4M3, v, scale, next, acc, corr, p, m, nk, d); break;
    }
}

/* ---- bf16 pages on AVX512-BF16 (VDPBF16PS; only after the run-time check in
 * flash_attention_cpu.c): P.V with p rounded to one bf16 part, as the AMX kernels do (each
 * weight moves by at most 2^-9 relative; products with the bf16 V are exact, sums fp32). One
 * VDPBF16PS adds two keys' products, so the decode step's P.V takes half the multiply-add
 * instructions, and V needs no widening: two V rows are interleaved into key pairs in
 * registers, the page keeps its layout. Q.K keeps the fp32 kernel (q in one bf16 part moves
 * large scores too far; two parts would cost as many instructions as fp32). */
#define BF16DOT static inline __attribute__((always_inline, target("avx512bf16")))

/* R rows x 2 C2 vectors of acc from column c0 (R * 2 C2 <= 16): scaled by corr, then nk keys
 * of p . v two keys per step; pb[r][j / 2] holds bf16 (p[r][j], p[r][j + 1]). Rows of v past
 * nk are never read (slots not yet written may hold anything): an odd last key pairs with 0. */
BF16DOT void pvb_rows(const int R, const int C2, const uint16_t *v, const void *next, size_t pstep, float *acc,
                      const float *corr, const uint32_t *pb, int nk, int d, int c0)
{
    __m512 o[8][8];
#pragma GCC unroll 8
    for (int r = 0; r < R; r++) {
        __m512 cr = _mm512_set1_ps(corr[r]);
#pragma GCC unroll 8
        for (int c = 0; c < 2 * C2; c++)
            o[r][c] = _mm512_mul_ps(_mm512_loadu_ps(acc + (size_t)r * d + c0 + 16 * c), cr);
    }
    for (int j = 0; j < nk; j += 2) {
        prefetch_span(next, (size_t)j / 2 * pstep, pstep);
        const uint16_t *v0 = v + (size_t)j * d + c0, *v1 = v0 + d;
        __m512i vp[8];
#pragma GCC unroll 4
        for (int c = 0; c < C2; c++) {
            __m512i x = _mm512_loadu_si512(v0 + 32 * c);
            __m512i y = j + 1 < nk ? _mm512_loadu_si512(v1 + 32 * c) : _mm512_setzero_si512();
            vp[2 * c] = mx_bf16_pairs_lo(x, y);
            vp[2 * c + 1] = mx_bf16_pairs_hi(x, y);
        }
#pragma GCC unroll 8
        for (int r = 0; r < R; r++) {
            __m512bh b = (__m512bh)_mm512_set1_epi32((int)pb[(size_t)r * (T / 2) + j / 2]);
#pragma GCC unroll 8
            for (int c = 0; c < 2 * C2; c++)
                o[r][c] = _mm512_dpbf16_ps(o[r][c], (__m512bh)vp[c], b);
        }
    }
#pragma GCC unroll 8
    for (int r = 0; r < R; r++)
#pragma GCC unroll 8
        for (int c = 0; c < 2 * C2; c++)
            _mm512_storeu_ps(acc + (size_t)r * d + c0 + 16 * c, o[r][c]);
}

/* Rows [i, i + R) over every column, 32 C2 at a time (d % 32 == 0 here, see pv_page); the
 * passes share the prefetch of the next V block. */
BF16DOT void pvb_block(const int R, const int C2, const uint16_t *v, const void *next, float *acc,
                       const float *corr, const uint32_t *pb, int nk, int d)
{
    size_t slice = slice_of((size_t)T * d * 2, d / (32 * C2) + d % (32 * C2) / 32), pstep = (slice + T / 2 - 1) / (T / 2);
    const char *pf = next;
    int c0 = 0;
    for (; c0 + 32 * C2 <= d; c0 += 32 * C2, pf = pf ? pf + slice : NULL)
        pvb_rows(R, C2, v, pf, pstep, acc, corr, pb, nk, d, c0);
    for (; c0 < d; c0 += 32, pf = pf ? pf + slice : NULL)
        pvb_rows(R, 1, v, pf, pstep, acc, corr, pb, nk, d, c0);
}

__attribute__((target("avx512bf16"))) static void pv_page_avx512bf16(mx_kv_dtype t, const void *v, float scale,
                                                                       const void *next, float *acc,
                                                                       const float *corr, const float *p, int m,
                                                                       int nk, int d)
{
    if (t != MX_KV_BF16 || d % 32 || m > MX_FA_DECODE_ROWS) {
        pv_page_avx512(t, v, scale, next, acc, corr, p, m, nk, d);
        return;
    }
    /* p as bf16 key pairs, rounded to nearest even (p past nvalid is 0 from the softmax) */
    uint32_t pb[MX_FA_DECODE_ROWS * (T / 2)] __attribute__((aligned(64)));
    for (int r = 0; r < m; r++)
        for (int j = 0; j < T; j += 32)
            _mm512_store_si512(pb + (size_t)r * (T / 2) + j / 2,
                               (__m512i)_mm512_cvtne2ps_pbh(_mm512_loadu_ps(p + (size_t)r * T + j + 16),
                                                            _mm512_loadu_ps(p + (size_t)r * T + j)));
    const uint16_t *vb = v;
    int i = 0;
    for (; i + 8 <= m; i += 8, next = NULL)
        pvb_block(8, 1, vb, next, acc + (size_t)i * d, corr + i, pb + (size_t)i * (T / 2), nk, d);
    if (m - i >= 4) {
        pvb_block(4, 2, vb, next, acc + (size_t)i * d, corr + i, pb + (size_t)i * (T / 2), nk, d);
        i += 4;
        next = NULL;
    }
    if (m - i >= 2) {
        pvb_block(2, 4, vb, next, acc + (size_t)i * d, corr + i, pb + (size_t)i * (T / 2), nk, d);
        i += 2;
        next = NULL;
    }
    if (m - i >= 1)
        pvb_block(1, 4, vb, next, acc + (size_t)i * d, corr + i, pb + (size_t)i * (T / 2), nk, d);
}

const mx_fa_kernels mx_fa_kernels_avx512 = {MX_CPU_ISA_AVX512, qk_avx512, softmax_avx512, pv_avx512,
                                            decode_avx512, qk_page_avx512, pv_page_avx512};

const mx_fa_kernels mx_fa_kernels_avx512bf16 = {MX_CPU_ISA_AVX512, qk_avx512,      softmax_avx512,
                                                pv_avx512,         decode_avx512,  qk_page_avx512,
                                                pv_page_avx512bf16};
