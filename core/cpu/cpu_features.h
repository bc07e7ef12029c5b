/* cpu_features.h - run-time detection of the SIMD instruction sets our kernels use, so one
 * binary runs everywhere and picks the fastest kernel the CPU can execute. Detection only:
 * it must not choose kernels itself (gemm.c does that). */
#ifndef MX_CPU_FEATURES_H
#define MX_CPU_FEATURES_H

/* Kernel families, slowest to fastest. */
typedef enum {
    MX_CPU_ISA_SCALAR = 0, /* portable C */
    MX_CPU_ISA_AVX2,       /* AVX2 + FMA + F16C */
    MX_CPU_ISA_AVX512,     /* AVX-512 F/BW/VL/DQ (+F16C, FMA) */
    MX_CPU_ISA_COUNT
} mx_cpu_isa;

/* Whether this CPU (and OS) can run kernels of family isa. */
int mx_cpu_isa_supported(mx_cpu_isa isa);
/* The fastest family this CPU supports. */
mx_cpu_isa mx_cpu_best_isa(void);
/* "scalar", "avx2", "avx512"; "?" for an unknown value. */
const char *mx_cpu_isa_name(mx_cpu_isa isa);

#endif
