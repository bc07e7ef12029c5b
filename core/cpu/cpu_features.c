/* cpu_features.c - ISA detection through the compiler's cpuid wrapper
 * (__builtin_cpu_supports also checks that the OS saves the wide registers). Nothing is
 * cached: the check is a few loads from libgcc's table, cheap next to any kernel call. */
#include "cpu_features.h"

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
