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

/* Whether AMX tiles with bf16 dot products can run in this process: the AVX-512 family, the
 * CPU's AMX-TILE and AMX-BF16 bits, the OS enabling tile state in XCR0, and (Linux) the
 * process holding permission for tile data, which this call requests (arch_prctl
 * ARCH_REQ_XCOMP_PERM; process-wide and permanent, so a granted request is remembered).
 * Kernels in *_amx.c run only after it returned 1. */
int mx_cpu_amx_usable(void);

#endif
