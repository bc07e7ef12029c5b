/* gemm_amx.c - the packed GEMM on AMX tiles for BF16 weights (contract in gemm_kernels.h; run
 * only after mx_cpu_amx_usable()). x is split exactly into three bf16 parts (x = hi + mid + lo:
 * 8 + 8 + 8 significand bits), so every product with a bf16 weight is exact and TDPBF16PS adds
 * it in fp32, as the fp32 FMA kernels do: the result keeps their accuracy (the fp32 golden tier)
 * at a third of AMX's bf16 rate. W is repacked per K block into pair-interleaved tiles. */
#include <immintrin.h>
#include <string.h>

#include "amx_tiles.h"
#include "gemm_kernels.h"

/* K per block (12 tile steps of 32) and rows of x per block: the packed W panel (NC x KC
 * bf16, 192 KiB), x's three parts (3 x MB x KC bf16, 144 KiB) and an edge tile fit the
 * MX_GEMM_SCRATCH_FLOATS scratch. */
#define KC 384
#define MB 64
#define PARTS 3

/* The 16 x 16 dword transpose: at s = 8, 4, 2, 1, rows i and i + s (bit s of i clear)
 * exchange their off-diagonal s-blocks; idx[level][0 / 1] selects the new rows i / i + s. */
static void swap_indices(__m512i idx[4][2])
{
    for (int lv = 0; lv < 4; lv++) {
        int s = 8 >> lv, lo[16], hi[16];
        for (int c = 0; c < 16; c++) {
            lo[c] = c & s ? 16 + c - s : c;
            hi[c] = c & s ? 16 + c : c + s;
        }
        idx[lv][0] = _mm512_loadu_si512(lo);
        idx[lv][1] = _mm512_loadu_si512(hi);
    }
}

/* Tile (kb, nb) of the panel: 16 rows (pairs of k: 2p, 2p + 1 from k0 + 32 kb) x 16 columns
 * (n0 + 16 nb + j) x 2 bf16 = W[n][k] pairs, i.e. the transpose of 16 W rows' 16 dwords. */
static void pack_w(const mx_gemm_args *a, int n0, int n1, int k0, int kc, uint16_t *wp, int nbs, int kbs)
{
    const uint16_t *w = a->w;
    __m512i idx[4][2];
    swap_indices(idx);
    for (int nb = 0; nb < nbs; nb++)
        for (int kb = 0; kb < kbs; kb++) {
            int k = k0 + 32 * kb, left = k0 + kc - k;
            __mmask32 km = left >= 32 ? ~(__mmask32)0 : (((__mmask32)1 << left) - 1);
            __m512i r[16];
            for (int j = 0; j < 16; j++) {
                int n = n0 + 16 * nb + j;
                r[j] = n < n1 ? _mm512_maskz_loadu_epi16(km, w + (size_t)n * a->K + k) : _mm512_setzero_si512();
            }
            for (int lv = 0; lv < 4; lv++) {
                int s = 8 >> lv;
                for (int i = 0; i < 16; i++)
                    if (!(i & s)) {
                        __m512i lo = _mm512_permutex2var_epi32(r[i], idx[lv][0], r[i + s]);
                        r[i + s] = _mm512_permutex2var_epi32(r[i], idx[lv][1], r[i + s]);
                        r[i] = lo;
                    }
            }
            uint16_t *t = wp + ((size_t)kb * nbs + nb) * 512;
            for (int p = 0; p < 16; p++)
                _mm512_storeu_si512(t + 32 * p, r[p]);
        }
}

/* Rows [m0, m0 + mb) x columns [k0, k0 + kc) of x as three bf16 parts xp[part][MB][kp], zero
 * past kc and past mb (to a whole 16-row tile). hi = bf16(x), mid = bf16(x - hi), lo = x - hi -
 * mid (exact: 8 bits are left). */
static void split_x(const mx_gemm_args *a, int m0, int mb, int k0, int kc, int kp, uint16_t *xp)
{
    size_t part = (size_t)MB * kp;
    int rows = (mb + 15) & ~15;
    for (int i = 0; i < rows; i++) {
        uint16_t *h = xp + (size_t)i * kp, *md = h + part, *l = md + part;
        for (int k = 0; k < kp; k += 16) {
            int left = kc - k;
            __mmask16 mk = i >= mb || left <= 0 ? 0 : left >= 16 ? 0xffff : (__mmask16)((1u << left) - 1);
            __m512 x = _mm512_maskz_loadu_ps(mk, a->x + (size_t)(m0 + i) * a->ldx + k0 + k);
            __m256bh b0 = _mm512_cvtneps_pbh(x);
            __m512 r0 = _mm512_sub_ps(x, _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32((__m256i)b0), 16)));
            __m256bh b1 = _mm512_cvtneps_pbh(r0);
            __m512 r1 = _mm512_sub_ps(r0, _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32((__m256i)b1), 16)));
            __m256bh b2 = _mm512_cvtneps_pbh(r1);
            _mm256_storeu_si256((__m256i *)(h + k), (__m256i)b0);
            _mm256_storeu_si256((__m256i *)(md + k), (__m256i)b1);
            _mm256_storeu_si256((__m256i *)(l + k), (__m256i)b2);
        }
    }
}

/* Four full C tiles (rows r, r + 16; columns c, c + 16 of y) over kbs tile steps. */
static void block_2x2(const mx_gemm_args *a, int first, float *y, const uint16_t *xp, int kp, const uint16_t *wp,
                      int nbs, int nb, int kbs)
{
    const size_t ys = (size_t)a->ldy * 4, xs = (size_t)kp * 2, part = (size_t)MB * kp;
    float *y1 = y + (size_t)16 * a->ldy;
    if (first) {
        _tile_zero(0);
        _tile_zero(1);
        _tile_zero(2);
        _tile_zero(3);
    } else {
        _tile_loadd(0, y, ys);
        _tile_loadd(1, y + 16, ys);
        _tile_loadd(2, y1, ys);
        _tile_loadd(3, y1 + 16, ys);
    }
    for (int kb = 0; kb < kbs; kb++) {
        const uint16_t *t = wp + ((size_t)kb * nbs + nb) * 512;
        _tile_loadd(6, t, 64);
        _tile_loadd(7, t + 512, 64);
        for (int p = 0; p < PARTS; p++) {
            const uint16_t *x0 = xp + p * part + 32 * kb;
            _tile_loadd(4, x0, xs);
            _tile_loadd(5, x0 + 16 * (size_t)kp, xs);
            _tile_dpbf16ps(0, 4, 6);
            _tile_dpbf16ps(1, 4, 7);
            _tile_dpbf16ps(2, 5, 6);
            _tile_dpbf16ps(3, 5, 7);
        }
    }
    _tile_stored(0, y, ys);
    _tile_stored(1, y + 16, ys);
    _tile_stored(2, y1, ys);
    _tile_stored(3, y1 + 16, ys);
}

/* One C tile of rows [r, r + rows) and columns [c, c + cols) of y (any edge), through a
 * 16 x 16 buffer. */
static void block_edge(const mx_gemm_args *a, int first, float *y, int rows, int cols, const uint16_t *xp, int kp,
                       const uint16_t *wp, int nbs, int nb, int kbs, float *buf)
{
    const size_t xs = (size_t)kp * 2, part = (size_t)MB * kp;
    __mmask16 cm = (__mmask16)((1u << cols) - 1);
    for (int i = 0; i < 16; i++)
        _mm512_storeu_ps(buf + 16 * i, first || i >= rows ? _mm512_setzero_ps()
                                                           : _mm512_maskz_loadu_ps(cm, y + (size_t)i * a->ldy));
    _tile_loadd(0, buf, 64);
    for (int kb = 0; kb < kbs; kb++) {
        _tile_loadd(6, wp + ((size_t)kb * nbs + nb) * 512, 64);
        for (int p = 0; p < PARTS; p++) {
            _tile_loadd(4, xp + p * part + 32 * kb, xs);
            _tile_dpbf16ps(0, 4, 6);
        }
    }
    _tile_stored(0, buf, 64);
    for (int i = 0; i < rows; i++)
        _mm512_mask_storeu_ps(y + (size_t)i * a->ldy, cm, _mm512_loadu_ps(buf + 16 * i));
}

void mx_gemm_amx(const mx_gemm_args *a, int n0, int n1, float *scratch)
{
    uint16_t *wp = (uint16_t *)scratch;                          /* NC x KC */
    uint16_t *xp = wp + (size_t)MX_GEMM_NC * KC;                 /* PARTS x MB x KC */
    float *buf = (float *)(xp + (size_t)PARTS * MB * KC);        /* 16 x 16 */
    int nbs = (n1 - n0 + 15) / 16;
    mx_amx_tiles_begin();
    for (int k0 = 0; k0 < a->K; k0 += KC) {
        int kc = a->K - k0 < KC ? a->K - k0 : KC, kbs = (kc + 31) / 32, kp = 32 * kbs;
        pack_w(a, n0, n1, k0, kc, wp, nbs, kbs);
        for (int m0 = 0; m0 < a->M; m0 += MB) {
            int mb = a->M - m0 < MB ? a->M - m0 : MB;
            split_x(a, m0, mb, k0, kc, kp, xp);
            for (int r = 0; r < mb; r += 32)
                for (int nb = 0; nb < nbs; nb += 2) {
                    int c = 16 * nb, rows = mb - r, cols = n1 - n0 - c;
                    float *y = a->y + (size_t)(m0 + r) * a->ldy + n0 + c;
                    const uint16_t *x = xp + (size_t)r * kp;
                    if (rows >= 32 && cols >= 32) {
                        block_2x2(a, k0 == 0, y, x, kp, wp, nbs, nb, kbs);
                        continue;
                    }
                    for (int rr = 0; rr < 32 && rr < rows; rr += 16)
                        for (int cc = 0; cc < 32 && cc < cols; cc += 16)
                            block_edge(a, k0 == 0, y + (size_t)rr * a->ldy + cc, rows - rr < 16 ? rows - rr : 16,
                                       cols - cc < 16 ? cols - cc : 16, x + (size_t)rr * kp, kp, wp, nbs,
                                       nb + cc / 16, kbs, buf);
                }
        }
    }
    _tile_release();
}
