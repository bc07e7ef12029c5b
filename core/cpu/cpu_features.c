/* cpu_features.c - ISA detection through the compiler's cpuid wrapper
 * (__builtin_cpu_supports also checks that the OS saves the wide registers). Only the
 * AMX permission is remembered (see mx_cpu_amx_usable); the rest is a few loads from libgcc's
 * table, cheap next to any kernel call. */
#include "cpu_features.h"

#if defined(__linux__) && defined(__x86_64__)
#include <sys/syscall.h>
#include <unistd.h>
#endif

int mx_cpu_isa_supported(mx_cpu_isa isa)
{
#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
    __builtin_cpu_init();
    switch (isa) {
    case MX_CPU_ISA_SCALAR:
        return 1;
    case MX_CPU_ISA_AVX2:
        return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
               __builtin_cpu_supports("f16c");
    case MX_CPU_ISA_AVX512:
        return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
               __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
               __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
    default:
        return 0;
    }
#else
    return isa == MX_CPU_ISA_SCALAR;
#endif
}

mx_cpu_isa mx_cpu_best_isa(void)
{
    if (mx_cpu_isa_supported(MX_CPU_ISA_AVX512))
        return MX_CPU_ISA_AVX512;
    if (mx_cpu_isa_supported(MX_CPU_ISA_AVX2))
        return MX_CPU_ISA_AVX2;
    return MX_CPU_ISA_SCALAR;
}

const char *mx_cpu_isa_name(mx_cpu_isa isa)
{
    switch (isa) {
    case MX_CPU_ISA_SCALAR:
        return "scalar";
    case MX_CPU_ISA_AVX2:
        return "avx2";
    case MX_CPU_ISA_AVX512:
        return "avx512";
    default:
        return "?";
    }
}

/* XCR0 bits 17 (XTILECFG) and 18 (XTILEDATA); the arch_prctl request for XTILEDATA. */
#define XCR0_AMX ((1ull << 17) | (1ull << 18))
#define ARCH_REQ_XCOMP_PERM 0x1023
#define XFEATURE_XTILEDATA 18

int mx_cpu_amx_usable(void)
{
#if defined(__linux__) && defined(__x86_64__) && defined(__GNUC__)
    /* The kernel's grant is per process and permanent, so one successful request is remembered
     * here: this flag mirrors that process state (it is the only state in this file). Asking on
     * every call cost a syscall per GEMM; CPUID itself is avoided (it exits to the hypervisor
     * in a VM) by libgcc's table. */
    static _Atomic int granted;
    if (granted)
        return 1;
    __builtin_cpu_init();
    if (!mx_cpu_isa_supported(MX_CPU_ISA_AVX512) || !__builtin_cpu_supports("amx-tile") ||
        !__builtin_cpu_supports("amx-bf16") || !__builtin_cpu_supports("avx512bf16"))
        return 0;
    unsigned lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    if ((((unsigned long long)hi << 32 | lo) & XCR0_AMX) != XCR0_AMX)
        return 0;
    if (syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) != 0)
        return 0;
    granted = 1;
    return 1;
#else
    return 0;
#endif
}
