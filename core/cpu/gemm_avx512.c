/* gemm_avx512.c - AVX-512 kernels of mx_cpu_gemm (compiled with AVX-512 flags; called only
 * after the run-time check in gemm.c). fp32 FMA only: x is never rounded to bf16, so the
 * bf16 dot-product instructions are deliberately not used. BF16 -> fp32 is a 16-bit shift. */
#include <immintrin.h>
#include <stdint.h>

#include "gemm_kernels.h"

#define INLINE static inline __attribute__((always_inline))

/* 16 weights starting at element i of a row, widened to fp32; lanes outside mask are 0. */
INLINE __m512 load16(const void *w, mx_dtype dt, size_t i, __mmask16 mask)
{
    if (dt == MX_DTYPE_BF16) {
        __m256i h = _mm256_maskz_loadu_epi16(mask, (const uint16_t *)w + i);
        return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
    }
    if (dt == MX_DTYPE_F16)
        return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(mask, (const uint16_t *)w + i));
    return _mm512_maskz_loadu_ps(mask, (const float *)w + i);
}

INLINE __m512 load16_full(const void *w, mx_dtype dt, size_t i)
{
    if (dt == MX_DTYPE_BF16) {
        __m256i h = _mm256_loadu_si256((const __m256i *)((const uint16_t *)w + i));
        return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
    }
    if (dt == MX_DTYPE_F16)
        return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)((const uint16_t *)w + i)));
    return _mm512_loadu_ps((const float *)w + i);
}

/* ---------------------------------------------------------------------------------------
 * GEMV (M <= 4): R rows of W at a time, each read once and widened in registers, dotted
 * with every row of x; R*M independent accumulators hide the FMA latency. */
INLINE void gemv_block(const mx_gemm_args *a, mx_dtype dt, int n, const int R, const int M,
                       int k0, int k1)
{
    const size_t ld = (size_t)a->K;
    __m512 acc[8][MX_GEMV_MAX_M_AVX512];
#pragma GCC unroll 8
    for (int r = 0; r < R; r++)
#pragma GCC unroll 8
        for (int m = 0; m < M; m++)
            acc[r][m] = _mm512_setzero_ps();
    int k = k0;
    for (; k + 16 <= k1; k += 16) {
        /* R weight vectors live in registers; each x vector is loaded once and used R times
         * (R*M accumulators + R + 1 <= 32 registers). */
        __m512 wv[8];
#pragma GCC unroll 8
        for (int r = 0; r < R; r++)
            wv[r] = load16_full(a->w, dt, (size_t)(n + r) * ld + k);
#pragma GCC unroll 8
        for (int m = 0; m < M; m++) {
            __m512 xv = _mm512_loadu_ps(a->x + (size_t)m * a->ldx + k);
#pragma GCC unroll 8
            for (int r = 0; r < R; r++)
                acc[r][m] = _mm512_fmadd_ps(wv[r], xv, acc[r][m]);
        }
    }
    if (k < k1) {
        __mmask16 mask = (__mmask16)((1u << (k1 - k)) - 1);
        __m512 wv[8];
#pragma GCC unroll 8
        for (int r = 0; r < R; r++)
            wv[r] = load16(a->w, dt, (size_t)(n + r) * ld + k, mask);
#pragma GCC unroll 8
        for (int m = 0; m < M; m++) {
            __m512 xv = _mm512_maskz_loadu_ps(mask, a->x + (size_t)m * a->ldx + k);
#pragma GCC unroll 8
            for (int r = 0; r < R; r++)
                acc[r][m] = _mm512_fmadd_ps(wv[r], xv, acc[r][m]);
        }
    }
#pragma GCC unroll 8
    for (int r = 0; r < R; r++)
#pragma GCC unroll 8
        for (int m = 0; m < M; m++) {
            float *yp = a->y + (size_t)m * a->ldy + n + r;
            *yp = (k0 ? *yp : 0.f) + _mm512_reduce_add_ps(acc[r][m]);
        }
}

/* Columns [n0, n1) over the K range [k0, k1). */
INLINE void gemv_range(const mx_gemm_args *a, mx_dtype dt, int n0, int n1, int k0, int k1)
{
    int n = n0;
    switch (a->M) {
    case 1:
        for (; n + 8 <= n1; n += 8)
            gemv_block(a, dt, n, 8, 1, k0, k1);
        for (; n < n1; n++)
            gemv_block(a, dt, n, 1, 1, k0, k1);
        break;
    case 2:
        for (; n + 4 <= n1; n += 4)
            gemv_block(a, dt, n, 4, 2, k0, k1);
        for (; n < n1; n++)
            gemv_block(a, dt, n, 1, 2, k0, k1);
        break;
    case 3:
        for (; n + 4 <= n1; n += 4)
            gemv_block(a, dt, n, 4, 3, k0, k1);
        for (; n < n1; n++)
            gemv_block(a, dt, n, 1, 3, k0, k1);
        break;
    case 4:
        for (; n + 4 <= n1; n += 4)
            gemv_block(a, dt, n, 4, 4, k0, k1);
        for (; n < n1; n++)
            gemv_block(a, dt, n, 1, 4, k0, k1);
        break;
    case 5:
        for (; n + 4 <= n1; n += 4)
            gemv_block(a, dt, n, 4, 5, k0, k1);
        for (; n < n1; n++)
            gemv_block(a, dt, n, 1, 5, k0, k1);
        break;
    case 6:
        for (; n + 3 <= n1; n += 3)
            gemv_block(a, dt, n, 3, 6, k0, k1);
        for (; n < n1; n++)
            gemv_block(a, dt, n, 1, 6, k0, k1);
        break;
    case 7:
        for (; n + 3 <= n1; n += 3)
            gemv_block(a, dt, n, 3, 7, k0, k1);
        for (; n < n1; n++)
            gemv_block(a, dt, n, 1, 7, k0, k1);
        break;
    default:
        for (; n + 3 <= n1; n += 3)
            gemv_block(a, dt, n, 3, 8, k0, k1);
        for (; n < n1; n++)
            gemv_block(a, dt, n, 1, 8, k0, k1);
        break;
    }
}

/* With more than two rows of x, K is cut into blocks whose slice of x (M x GEMV_KB floats)
 * stays in L1 while every W row of the range passes by; W is still read exactly once. */
#define GEMV_KB 1024
INLINE void gemv_dt(const mx_gemm_args *a, mx_dtype dt, int n0, int n1)
{
    if (a->M <= 2) {
        gemv_range(a, dt, n0, n1, 0, a->K);
        return;
    }
    for (int k0 = 0; k0 < a->K; k0 += GEMV_KB)
        gemv_range(a, dt, n0, n1, k0, a->K - k0 < GEMV_KB ? a->K : k0 + GEMV_KB);
}

/* ---------------------------------------------------------------------------------------
 * BF16 GEMV with 64-byte weight loads. One 512-bit load holds 32 bf16 weights w[k..k+31];
 * as 16 dwords, lane i holds w[k+2i] in its low half and w[k+2i+1] in its high half, so
 *   even = v << 16            (lane i = w[k+2i] as fp32)
 *   odd  = v & 0xFFFF0000     (lane i = w[k+2i+1] as fp32)
 * widen 32 weights in 2 cheap uops (vs. 2 x (vpmovzxwd + vpslld) for 2 x 16 weights), and the
 * full-width loads are what it takes to reach the memory's read rate (32-byte loads cap well
 * below it). The weights come out even/odd permuted, so x is permuted the same way once per
 * K block into xs: for each 32-wide group g and row m, 16 even-indexed then 16 odd-indexed
 * floats. The dot products are the same sums in another order, still fp32 FMA on unrounded x.
 * The last K % 32 columns go through the 16-wide path above. */
/* Keeps v in a register: without it GCC folds the x load into every one of the R FMAs that
 * use it, and the loads, not the FMAs, become the limit. */
INLINE void in_register(__m512 *v) { __asm__("" : "+v"(*v)); }

/* xs on the stack: 48 KiB, so M = 1 reads whole rows up to K = 12288 (the experts' down
 * projection has K = 9216; split 8192 + 1024 it ran 0.85-0.95 of the K = 6144 rate, whole
 * 0.97-1.02). */
#define SPLIT_FLOATS 12288
_Static_assert(SPLIT_FLOATS / MX_GEMV_MAX_M_AVX512_BF16 >= 64, "K blocks of >= 2 groups");
/* Memory, M > GEMV_WHOLE_ROWS_MAX_M: rows are read in K windows of GEMV_WINDOW_BYTES per
 * row group, so that x's slice for up to 8 rows stays in L1; windows are too short for the
 * hardware prefetcher to ramp up on, so every load also prefetches the same offset of the next
 * row group into L1, one window ahead. Measured (K = 6144, N = 4096, 2 threads, GB/s of
 * weights), for M = 1 / 2 / 4 / 8: whole rows, no prefetch 22 / 23 / 20 / 12; x-limited
 * blocks + prefetch 19 / 17 / 16 / 18; 4 KiB windows + prefetch 25 / 24 / 22 / 20. */
#define GEMV_WINDOW_BYTES 4096
/* ... and x's slice for all M rows at most 32 KiB: at 48 KiB (all of L1) M = 16 fell from
 * 140-178 to 73-75 GFLOP/s. */
#define GEMV_WINDOW_X_FLOATS 8192
_Static_assert(GEMV_WINDOW_X_FLOATS / MX_GEMV_MAX_M_AVX512_BF16 >= 64, "windows of >= 2 groups");
/* M <= GEMV_WHOLE_ROWS_MAX_M reads whole rows, or K blocks as long as xs allows (M = 6:
 * 2048), as R = 3..8 long streams, each load also prefetching GEMV_AHEAD weights further
 * along its own row into L1: the hardware prefetcher alone stops at every 4 KiB page of each
 * stream and ramps up again. Measured (M = 1, K = 6144, N = 4096, 2 threads, fraction of the
 * read bandwidth): no prefetch 0.72-0.85; ahead 256 0.91-0.97, 384 0.80-0.98, 512 0.89-0.96,
 * 1024 0.84-0.94; prefetching into L2 only (T1) 0.81-0.93; non-temporal 0.36-0.47. For M = 3
 * / 4 / 6 / 8 against 4 KiB windows: 0.83-0.85 vs 0.72, 0.79-0.81 vs 0.76, 0.67-0.80 vs 0.69,
 * 0.53-0.57 vs 0.59-0.64 (fewer horizontal sums, but x no longer in L1 at M = 8).
 * Prefetches may touch past the end of W: prefetches never fault. */
#define GEMV_WHOLE_ROWS_MAX_M 6
#define GEMV_AHEAD 256
enum { GEMV_PREFETCH_NONE, GEMV_PREFETCH_NEXT_WINDOW, GEMV_PREFETCH_AHEAD };

INLINE void split_x(const mx_gemm_args *a, int k0, int groups, float *xs)
{
    const __m512i ev = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    const __m512i od = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
    for (int g = 0; g < groups; g++)
        for (int m = 0; m < a->M; m++) {
            const float *x = a->x + (size_t)m * a->ldx + k0 + 32 * g;
            __m512 lo = _mm512_loadu_ps(x), hi = _mm512_loadu_ps(x + 16);
            float *d = xs + ((size_t)g * a->M + m) * 32;
            _mm512_store_ps(d, _mm512_permutex2var_ps(lo, ev, hi));
            _mm512_store_ps(d + 16, _mm512_permutex2var_ps(lo, od, hi));
        }
}

/* Rows [n, n+R) of W against rows [m0, m0+M) of x over the K range [k0, k0 + 32*groups + tail):
 * R*M accumulators; registers: R*M + 2R (raw and widened weights) + x + mask <= 32. xs holds
 * the split x of all a->M rows (a->M * 32 floats per group). prefetch: NEXT_WINDOW also
 * fetches the next row group's window (only the first pass over a window reads W from
 * memory); AHEAD fetches GEMV_AHEAD weights further along each row. */
INLINE void gemv_bf16_block(const mx_gemm_args *a, int n, const int R, const int M, int m0,
                            int k0, int groups, int tail, const float *xs, const int prefetch)
{
    const uint16_t *w = (const uint16_t *)a->w + (size_t)n * a->K + k0;
    const size_t ld = (size_t)a->K;
    const __m512i hi_half = _mm512_set1_epi32((int)0xFFFF0000u);
    const size_t next_group = (size_t)R * ld; /* prefetched while this group is computed */
    __m512 acc[8][MX_GEMV_PASS_M];
#pragma GCC unroll 8
    for (int r = 0; r < R; r++)
#pragma GCC unroll 8
        for (int m = 0; m < M; m++)
            acc[r][m] = _mm512_setzero_ps();
    for (int g = 0; g < groups; g++) {
        const float *xg = xs + ((size_t)g * a->M + m0) * 32;
        __m512i raw[8];
        __m512 wv[8];
#pragma GCC unroll 8
        for (int r = 0; r < R; r++) {
            if (prefetch == GEMV_PREFETCH_NEXT_WINDOW)
                _mm_prefetch((const char *)(w + next_group + r * ld + 32 * g), _MM_HINT_T0);
            else if (prefetch == GEMV_PREFETCH_AHEAD)
                _mm_prefetch((const char *)(w + r * ld + 32 * g + GEMV_AHEAD), _MM_HINT_T0);
            raw[r] = _mm512_loadu_si512((const void *)(w + r * ld + 32 * g));
            wv[r] = _mm512_castsi512_ps(_mm512_slli_epi32(raw[r], 16));
        }
#pragma GCC unroll 8
        for (int m = 0; m < M; m++) {
            __m512 xv = _mm512_load_ps(xg + m * 32);
            in_register(&xv);
#pragma GCC unroll 8
            for (int r = 0; r < R; r++)
                acc[r][m] = _mm512_fmadd_ps(wv[r], xv, acc[r][m]);
        }
#pragma GCC unroll 8
        for (int r = 0; r < R; r++)
            wv[r] = _mm512_castsi512_ps(_mm512_and_si512(raw[r], hi_half));
#pragma GCC unroll 8
        for (int m = 0; m < M; m++) {
            __m512 xv = _mm512_load_ps(xg + m * 32 + 16);
            in_register(&xv);
#pragma GCC unroll 8
            for (int r = 0; r < R; r++)
                acc[r][m] = _mm512_fmadd_ps(wv[r], xv, acc[r][m]);
        }
    }
    for (int k = 32 * groups; k < 32 * groups + tail; k += 16) {
        int left = 32 * groups + tail - k;
        __mmask16 mask = left >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << left) - 1);
        __m512 wv[8];
#pragma GCC unroll 8
        for (int r = 0; r < R; r++)
            wv[r] = load16(w + r * ld, MX_DTYPE_BF16, (size_t)k, mask);
#pragma GCC unroll 8
        for (int m = 0; m < M; m++) {
            __m512 xv = _mm512_maskz_loadu_ps(mask, a->x + (size_t)(m0 + m) * a->ldx + k0 + k);
#pragma GCC unroll 8
            for (int r = 0; r < R; r++)
                acc[r][m] = _mm512_fmadd_ps(wv[r], xv, acc[r][m]);
        }
    }
#pragma GCC unroll 8
    for (int r = 0; r < R; r++)
#pragma GCC unroll 8
        for (int m = 0; m < M; m++) {
            float *yp = a->y + (size_t)(m0 + m) * a->ldy + n + r;
            *yp = (k0 ? *yp : 0.f) + _mm512_reduce_add_ps(acc[r][m]);
        }
}

/* One window (rows [n, n+R) x the K block) against every row of x. More than
 * MX_GEMV_PASS_M rows of x go in passes of P or P-1 rows (P = the first pass's size): the
 * first pass reads the window from memory (and prefetches the next one), the later ones find
 * it in L1, so W still crosses the memory bus once. */
INLINE void gemv_bf16_group(const mx_gemm_args *a, int n, const int R, const int P, int passes,
                            int k0, int groups, int tail, const float *xs)
{
    gemv_bf16_block(a, n, R, P, 0, k0, groups, tail, xs,
                    a->M > GEMV_WHOLE_ROWS_MAX_M ? GEMV_PREFETCH_NEXT_WINDOW : GEMV_PREFETCH_AHEAD);
    for (int m0 = P, left = passes - 1; left > 0; left--) {
        int mp = (a->M - m0 + left - 1) / left; /* P or P - 1 */
        if (mp == P)
            gemv_bf16_block(a, n, R, P, m0, k0, groups, tail, xs, GEMV_PREFETCH_NONE);
        else
            gemv_bf16_block(a, n, R, P > 1 ? P - 1 : 1, m0, k0, groups, tail, xs,
                            GEMV_PREFETCH_NONE);
        m0 += mp;
    }
}

/* R rows per window, then single rows for the remainder. R is the most rows whose R*P
 * accumulators and 2R weight vectors fit the 32 registers (more rows = more independent
 * reads in flight for M = 1, fewer x loads per FMA for larger M). */
#define GEMV_BF16_ROWS(R, P)                                                                  \
    do {                                                                                      \
        for (; n + (R) <= n1; n += (R))                                                       \
            gemv_bf16_group(a, n, (R), (P), passes, k0, groups, tail, xs);                            \
        for (; n < n1; n++)                                                                   \
            gemv_bf16_group(a, n, 1, (P), passes, k0, groups, tail, xs);                              \
    } while (0)

static void gemv_bf16(const mx_gemm_args *a, int n0, int n1)
{
    float xs[SPLIT_FLOATS] __attribute__((aligned(64)));
    /* Rows of x per pass: at most MX_GEMV_PASS_M, the passes as even as they come. */
    const int passes = (a->M + MX_GEMV_PASS_M - 1) / MX_GEMV_PASS_M;
    const int P = (a->M + passes - 1) / passes;
    /* rows of W per window for each pass size P (must match the switch below) */
    static const int rows_of_p[MX_GEMV_PASS_M + 1] = {0, 8, 6, 5, 4, 4, 3, 3, 2};
    /* K block: x's split slice fills at most xs (the whole K for M = 1 on this model).
     * Whole-row reads split a longer K into equal blocks, not a full one and a stub whose
     * short segments are hard on the prefetchers. */
    int kb = SPLIT_FLOATS / a->M;
    if (a->M > GEMV_WHOLE_ROWS_MAX_M) {
        /* windows: x's slice must leave L1 room for the window and the next one */
        if (kb > GEMV_WINDOW_X_FLOATS / a->M)
            kb = GEMV_WINDOW_X_FLOATS / a->M;
        if (kb > GEMV_WINDOW_BYTES / 2 / rows_of_p[P])
            kb = GEMV_WINDOW_BYTES / 2 / rows_of_p[P];
    }
    kb = kb / 32 * 32;
    if (a->M <= GEMV_WHOLE_ROWS_MAX_M && a->K > kb) {
        int blocks = (a->K + kb - 1) / kb;
        kb = ((a->K + blocks - 1) / blocks + 31) / 32 * 32;
    }
    for (int k0 = 0; k0 < a->K; k0 += kb) {
        int kc = a->K - k0 < kb ? a->K - k0 : kb;
        int groups = kc / 32, tail = kc % 32;
        split_x(a, k0, groups, xs);
        int n = n0;
        switch (P) {
        case 1: GEMV_BF16_ROWS(8, 1); break;
        case 2: GEMV_BF16_ROWS(6, 2); break;
        case 3: GEMV_BF16_ROWS(5, 3); break;
        case 4: GEMV_BF16_ROWS(4, 4); break;
        case 5: GEMV_BF16_ROWS(4, 5); break;
        case 6: GEMV_BF16_ROWS(3, 6); break;
        case 7: GEMV_BF16_ROWS(3, 7); break;
        default: GEMV_BF16_ROWS(2, 8); break;
        }
    }
}

void mx_gemv_avx512(const mx_gemm_args *a, int n0, int n1)
{
    if (a->M == 0)
        return;
    if (a->wdtype == MX_DTYPE_BF16)
        gemv_bf16(a, n0, n1);
    else if (a->wdtype == MX_DTYPE_F16)
        gemv_dt(a, MX_DTYPE_F16, n0, n1);
    else
        gemv_dt(a, MX_DTYPE_F32, n0, n1);
}

/* ---------------------------------------------------------------------------------------
 * GEMM: the panel W[n0:n0+nc, k0:k0+kc] is widened and transposed into scratch as strips of
 * NR = 64 columns, each laid out [kc][64], so the micro-kernel reads 4 vectors per k and
 * broadcasts x; rows of a partial last strip are zero. */
#define NR 64
#define MR 6

/* In-register transpose of a 16x16 fp32 block: r[i] = row i in, r[j] = column j out. */
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

INLINE void pack_dt(const mx_gemm_args *a, mx_dtype dt, int n0, int nc, int k0, int kc,
                    float *dst)
{
    const size_t ld = (size_t)a->K;
    for (int nb = 0; nb < nc; nb += 16) {
        float *out = dst + (size_t)(nb / NR) * kc * NR + nb % NR;
        int rows = nc - nb < 16 ? nc - nb : 16;
        for (int kb = 0; kb < kc; kb += 16) {
            int cols = kc - kb < 16 ? kc - kb : 16;
            __mmask16 mask = (__mmask16)((1u << cols) - 1);
            __m512 r[16];
            if (cols == 16) {
#pragma GCC unroll 16
                for (int i = 0; i < 16; i++)
                    r[i] = i < rows ? load16_full(a->w, dt, (size_t)(n0 + nb + i) * ld + k0 + kb)
                                    : _mm512_setzero_ps();
            } else {
#pragma GCC unroll 16
                for (int i = 0; i < 16; i++)
                    r[i] = i < rows ? load16(a->w, dt, (size_t)(n0 + nb + i) * ld + k0 + kb, mask)
                                    : _mm512_setzero_ps();
            }
            transpose16(r);
            for (int j = 0; j < cols; j++)
                _mm512_store_ps(out + (size_t)(kb + j) * NR, r[j]);
        }
    }
    /* Zero the unused columns of a partial last strip so the kernel multiplies zeros. */
    int tail = nc % NR;
    if (tail && tail % 16 == 0) {
        float *out = dst + (size_t)(nc / NR) * kc * NR;
        for (int k = 0; k < kc; k++)
            for (int j = tail; j < NR; j += 16)
                _mm512_store_ps(out + (size_t)k * NR + j, _mm512_setzero_ps());
    } else if (tail) {
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
    if (ncols == NR) {
#pragma GCC unroll 6
        for (int m = 0; m < MRr; m++)
#pragma GCC unroll 4
            for (int j = 0; j < 4; j++) {
                float *yp = y + (size_t)m * ldy + 16 * j;
                __m512 v = acc[m][j];
                if (accumulate)
                    v = _mm512_add_ps(v, _mm512_loadu_ps(yp));
                _mm512_storeu_ps(yp, v);
            }
    } else {
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

void mx_gemm_avx512(const mx_gemm_args *a, int n0, int n1, float *scratch)
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
