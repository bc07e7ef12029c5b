/* flash_attention_amx.c - AMX tile kernels of the CPU flash attention for bf16 KV pages (prefill
 * rows): Q.K^T and P.V as bf16 tile dot products with fp32 accumulation (TDPBF16PS), the
 * online softmax between them in fp32 (the AVX-512 kernel). Called only after
 * mx_cpu_amx_usable(); head_dim a multiple of 32, row counts padded to 16 by the caller. q goes
 * in as two bf16 parts (hi + lo: 16 significand bits), p as one (P_PARTS). */
#include <immintrin.h>
#include <string.h>

#include "amx_tiles.h"
#include "attention_cpu.h"

#define T MX_FA_KEY_TILE
/* bf16 parts of p in P.V: 1 (p in [0, 1] rounded to bf16 moves each weight by at most 2^-9
 * relative: tiny p600_s4 max_rel 8.6e-4 against 5.9e-4 with fp32 kernels on the same bf16
 * pages) or 2 (hi + lo: 5.9e-4 too, at 0.85x the speed). q always takes two parts: rounding q
 * alone to bf16 moved large scores enough for max_rel 0.051 there. */
#define P_PARTS 1

void mx_fa_amx_begin(void)
{
    mx_amx_tiles_begin();
}

void mx_fa_amx_end(void)
{
    _tile_release();
}

/* 32 fp32 as two bf16 parts, hi = bf16(x) and lo = bf16(x - hi) (round to nearest even):
 * hi + lo carries 16 significand bits, so q and p lose ~2^-17 instead of bf16's 2^-9 and the
 * error left is the bf16 KV's own. */
static inline void split32(const float *x, __m512i *hi, __m512i *lo)
{
    __m512 a = _mm512_loadu_ps(x), b = _mm512_loadu_ps(x + 16);
    __m512i hw = (__m512i)_mm512_cvtne2ps_pbh(b, a);
    __m512 ha = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm512_castsi512_si256(hw)), 16));
    __m512 hb = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm512_extracti64x4_epi64(hw, 1)), 16));
    *hi = hw;
    *lo = (__m512i)_mm512_cvtne2ps_pbh(_mm512_sub_ps(b, hb), _mm512_sub_ps(a, ha));
}

void mx_fa_amx_q(const float *q, int m, int mp, int d, uint16_t *qb)
{
    uint16_t *lo = qb + (size_t)mp * d;
    for (int i = 0; i < m; i++)
        for (int a = 0; a < d; a += 32) {
            __m512i h, l;
            split32(q + (size_t)i * d + a, &h, &l);
            _mm512_storeu_si512(qb + (size_t)i * d + a, h);
            _mm512_storeu_si512(lo + (size_t)i * d + a, l);
        }
    memset(qb + (size_t)m * d, 0, (size_t)(mp - m) * d * sizeof *qb);
    memset(lo + (size_t)m * d, 0, (size_t)(mp - m) * d * sizeof *qb);
}

/* kt[d][T] -> kp[d/2][T][2]: dims paired, so a B tile row holds 16 keys x (dim 2p, 2p + 1). */
static void pack_k(const uint16_t *kt, int d, uint16_t *kp)
{
    for (int p = 0; p < d / 2; p++) {
        const uint16_t *r0 = kt + (size_t)2 * p * T, *r1 = r0 + T;
        uint16_t *o = kp + (size_t)p * T * 2;
        for (int j = 0; j < T; j += 32) {
            __m512i a = _mm512_loadu_si512(r0 + j), b = _mm512_loadu_si512(r1 + j);
            _mm512_storeu_si512(o + 2 * j, mx_bf16_pairs_lo(a, b));
            _mm512_storeu_si512(o + 2 * j + 32, mx_bf16_pairs_hi(a, b));
        }
    }
}

/* v[T][d] (first nk rows) -> vp[T/2][d][2]: keys paired, rows past nk as 0. */
static void pack_v(const uint16_t *v, int nk, int d, uint16_t *vp)
{
    const __m512i zero = _mm512_setzero_si512();
    for (int p = 0; p < T / 2; p++) {
        uint16_t *o = vp + (size_t)p * d * 2;
        for (int a = 0; a < d; a += 32) {
            __m512i x = 2 * p < nk ? _mm512_loadu_si512(v + (size_t)2 * p * d + a) : zero;
            __m512i y = 2 * p + 1 < nk ? _mm512_loadu_si512(v + (size_t)(2 * p + 1) * d + a) : zero;
            _mm512_storeu_si512(o + 2 * a, mx_bf16_pairs_lo(x, y));
            _mm512_storeu_si512(o + 2 * a + 32, mx_bf16_pairs_hi(x, y));
        }
    }
}

/* One 32-deep step of a 32 x 32 block of C tiles 0-3: B tiles 6 and 7 (16 pairs x 16 columns
 * each, the second starting 16 columns on) from b, rows `bs` bytes apart; then for each of
 * `parts` bf16 parts of A (part_stride elements apart) its rows r and r + 16 (A tiles 4 and 5,
 * `as` bytes apart, 16 rows on) times both B tiles. */
static inline __attribute__((always_inline)) void step_32x32(const uint16_t *b, size_t bs, const uint16_t *a,
                                                              size_t as, size_t part_stride, int parts)
{
    _tile_loadd(6, b, bs);
    _tile_loadd(7, b + 32, bs);
    for (int part = 0; part < parts; part++) {
        const uint16_t *ap = a + (size_t)part * part_stride;
        _tile_loadd(4, ap, as);
        _tile_loadd(5, ap + 16 * as / sizeof *ap, as);
        _tile_dpbf16ps(0, 4, 6);
        _tile_dpbf16ps(1, 4, 7);
        _tile_dpbf16ps(2, 5, 6);
        _tile_dpbf16ps(3, 5, 7);
    }
}

/* s[mp][T] = qb[mp][d] . kt: row blocks of 32 x key blocks of 32 (four C tiles), d in steps of 32. */
void mx_fa_amx_qk(const uint16_t *qb, int mp, int d, const uint16_t *kt, uint16_t *kpack, float *s)
{
    pack_k(kt, d, kpack);
    const size_t qs = (size_t)d * 2, ks = (size_t)T * 4, ss = (size_t)T * 4;
    int r = 0;
    for (; r + 32 <= mp; r += 32)
        for (int c = 0; c < T; c += 32) {
            _tile_zero(0);
            _tile_zero(1);
            _tile_zero(2);
            _tile_zero(3);
            for (int a = 0; a < d; a += 32)
                step_32x32(kpack + ((size_t)a / 2 * T + c) * 2, ks, qb + (size_t)r * d + a, qs, (size_t)mp * d, 2);
            _tile_stored(0, s + (size_t)r * T + c, ss);
            _tile_stored(1, s + (size_t)r * T + c + 16, ss);
            _tile_stored(2, s + (size_t)(r + 16) * T + c, ss);
            _tile_stored(3, s + (size_t)(r + 16) * T + c + 16, ss);
        }
    if (r < mp) /* one block of 16 rows left */
        for (int c = 0; c < T; c += 32) {
            _tile_zero(0);
            _tile_zero(1);
            for (int a = 0; a < d; a += 32) {
                _tile_loadd(6, kpack + ((size_t)a / 2 * T + c) * 2, ks);
                _tile_loadd(7, kpack + ((size_t)a / 2 * T + c + 16) * 2, ks);
                for (int part = 0; part < 2; part++) {
                    _tile_loadd(4, qb + (size_t)part * mp * d + (size_t)r * d + a, qs);
                    _tile_dpbf16ps(0, 4, 6);
                    _tile_dpbf16ps(1, 4, 7);
                }
            }
            _tile_stored(0, s + (size_t)r * T + c, ss);
            _tile_stored(1, s + (size_t)r * T + c + 16, ss);
        }
}

/* acc[mp][d] = acc * corr + p . v: p (fp32, rows [0, m); rows [m, mp) of acc are padding) is
 * rounded to bf16, acc rows rescaled in fp32 only where corr != 1, then loaded as C tiles. */
void mx_fa_amx_pv(float *acc, const float *corr, const float *p, int m, int mp, int nk, const uint16_t *v, int d,
                  uint16_t *pb, uint16_t *vpack)
{
    uint16_t *pl = pb + (size_t)mp * T;
    for (int i = 0; i < m; i++) {
        for (int j = 0; j < T; j += 32) {
            if (P_PARTS == 1) {
                _mm512_storeu_si512(pb + (size_t)i * T + j, (__m512i)_mm512_cvtne2ps_pbh(
                                                                  _mm512_loadu_ps(p + (size_t)i * T + j + 16),
                                                                  _mm512_loadu_ps(p + (size_t)i * T + j)));
                continue;
            }
            __m512i h, l;
            split32(p + (size_t)i * T + j, &h, &l);
            _mm512_storeu_si512(pb + (size_t)i * T + j, h);
            _mm512_storeu_si512(pl + (size_t)i * T + j, l);
        }
        if (corr[i] != 1.f) {
            __m512 cr = _mm512_set1_ps(corr[i]);
            float *o = acc + (size_t)i * d;
            for (int a = 0; a < d; a += 16)
                _mm512_storeu_ps(o + a, _mm512_mul_ps(_mm512_loadu_ps(o + a), cr));
        }
    }
    memset(pb + (size_t)m * T, 0, (size_t)(mp - m) * T * sizeof *pb);
    if (P_PARTS == 2)
        memset(pl + (size_t)m * T, 0, (size_t)(mp - m) * T * sizeof *pb);
    pack_v(v, nk, d, vpack);
    const size_t ps = (size_t)T * 2, vs = (size_t)d * 4, as = (size_t)d * 4;
    int r = 0;
    for (; r + 32 <= mp; r += 32)
        for (int c = 0; c < d; c += 32) {
            float *a0 = acc + (size_t)r * d + c, *a1 = acc + (size_t)(r + 16) * d + c;
            _tile_loadd(0, a0, as);
            _tile_loadd(1, a0 + 16, as);
            _tile_loadd(2, a1, as);
            _tile_loadd(3, a1 + 16, as);
            for (int k = 0; k < T; k += 32)
                step_32x32(vpack + ((size_t)k / 2 * d + c) * 2, vs, pb + (size_t)r * T + k, ps, (size_t)mp * T,
                           P_PARTS);
            _tile_stored(0, a0, as);
            _tile_stored(1, a0 + 16, as);
            _tile_stored(2, a1, as);
            _tile_stored(3, a1 + 16, as);
        }
    if (r < mp)
        for (int c = 0; c < d; c += 32) {
            float *a0 = acc + (size_t)r * d + c;
            _tile_loadd(0, a0, as);
            _tile_loadd(1, a0 + 16, as);
            for (int k = 0; k < T; k += 32) {
                _tile_loadd(6, vpack + ((size_t)k / 2 * d + c) * 2, vs);
                _tile_loadd(7, vpack + ((size_t)k / 2 * d + c + 16) * 2, vs);
                for (int part = 0; part < P_PARTS; part++) {
                    _tile_loadd(4, pb + (size_t)part * mp * T + (size_t)r * T + k, ps);
                    _tile_dpbf16ps(0, 4, 6);
                    _tile_dpbf16ps(1, 4, 7);
                }
            }
            _tile_stored(0, a0, as);
            _tile_stored(1, a0 + 16, as);
        }
}
