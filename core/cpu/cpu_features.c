/* cpu_features.c - ISA detection through the compiler's cpuid wrapper
 * (__builtin_cpu_supports also checks that the OS saves the wide registers). Nothing is
 * cached: the check is a few loads from libgcc's table, cheap next to any kernel call. */
#include "cpu_features.h"

#if defined(__linux__) && defined(__x86_64__)
#include <cpuid.h>
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
    if (!mx_cpu_isa_supported(MX_CPU_ISA_AVX512))
        return 0;
    unsigned a, b, c, d;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d))
        return 0;
    if (!(d & (1u << 24)) || !(d & (1u << 22))) /* AMX-TILE, AMX-BF16 (xgetbv: AVX-512 implies OSXSAVE) */
        return 0;
    unsigned lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    if ((((unsigned long long)hi << 32 | lo) & XCR0_AMX) != XCR0_AMX)
        return 0;
    return syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0;
#else
    return 0;
#endif
}
