/* amx_tiles.h - what the bf16 dot-product kernels share: the one AMX tile configuration the
 * tile kernels use (gemm_amx.c, flash_attention_amx.c), and the interleave that pairs two bf16
 * rows into the (element 2i, element 2i + 1) dword lanes TDPBF16PS and VDPBF16PS multiply
 * (flash_attention_amx.c, flash_attention_avx512.c). Included only by *_amx.c and *_avx512.c
 * files, which are compiled with the instructions these inline functions use. */
#ifndef MX_AMX_TILES_H
#define MX_AMX_TILES_H

#include <immintrin.h>
#include <stdint.h>
#include <string.h>

/* The 64-byte operand of LDTILECFG. */
typedef struct mx_amx_tile_config {
    uint8_t palette, start_row, reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} mx_amx_tile_config;

/* Configures tiles 0-7 of this thread as 16 rows x 64 bytes: A (16 rows x 32 bf16), B (16
 * pairs x 16 columns x 2 bf16) and C (16 x 16 fp32) all take that shape, so one configuration
 * serves every product. Not _tile_loadconfig: GCC 12 declares only 8 of its 64 bytes as read
 * and drops the stores of the rest. */
static inline void mx_amx_tiles_begin(void)
{
    mx_amx_tile_config c;
    memset(&c, 0, sizeof c);
    c.palette = 1;
    for (int t = 0; t < 8; t++) {
        c.colsb[t] = 64;
        c.rows[t] = 16;
    }
    __asm__ volatile("ldtilecfg %0" : : "m"(*(const char(*)[64]) & c));
}

/* 32 bf16 interleaving a[0..15] and b[0..15]: dword lane i = (a[i], b[i]). */
static inline __m512i mx_bf16_pairs_lo(__m512i a, __m512i b)
{
    const __m512i idx = _mm512_set_epi16(47, 15, 46, 14, 45, 13, 44, 12, 43, 11, 42, 10, 41, 9, 40, 8, 39, 7, 38,
                                         6, 37, 5, 36, 4, 35, 3, 34, 2, 33, 1, 32, 0);
    return _mm512_permutex2var_epi16(a, idx, b);
}

/* The same for a[16..31] and b[16..31]. */
static inline __m512i mx_bf16_pairs_hi(__m512i a, __m512i b)
{
    const __m512i idx = _mm512_set_epi16(63, 31, 62, 30, 61, 29, 60, 28, 59, 27, 58, 26, 57, 25, 56, 24, 55, 23,
                                         54, 22, 53, 21, 52, 20, 51, 19, 50, 18, 49, 17, 48, 16);
    return _mm512_permutex2var_epi16(a, idx, b);
}

#endif
