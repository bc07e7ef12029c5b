/* lightning_cpu.h - internals of the CPU lightning attention: the AVX-512 block-product kernel
 * (lightning_avx512.c) that the blocked form in lightning_cpu.c runs on. */
#ifndef MX_LIGHTNING_CPU_H
#define MX_LIGHTNING_CPU_H

/* c[m][n] = (acc ? c : 0) + a[m][k] . b[k][n], fp32, row-major with row strides ldc / lda /
 * ldb in floats; any m, k, n. Only after mx_cpu_isa_supported(MX_CPU_ISA_AVX512). */
void mx_lightning_mm_avx512(float *c, int ldc, const float *a, int lda, const float *b, int ldb, int m, int k, int n,
                            int acc);
/* One token of one head: S_out = lam S_in + k^T v, o = q S_out (S [d][d]; S_out may be S_in);
 * only after the AVX-512 check. */
void mx_lightning_step_avx512(const float *q, const float *k, const float *v, float *o, const float *S_in,
                              float *S_out, int d, float lam);

#endif
