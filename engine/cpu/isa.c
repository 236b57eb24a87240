/* Choosing kernels at run time: the build compiles every instruction set
 * it can; the CPU decides which may run. */
#include "kernels.h"

#ifdef MX_HAVE_X86_KERNELS
#include <cpuid.h>

/* Not every compiler knows "f16c" for __builtin_cpu_supports. */
static bool has_f16c(void) {
        unsigned a, b, c, d;
        return __get_cpuid(1, &a, &b, &c, &d) && (c & bit_F16C);
}
#endif

bool mx_isa_supported(mx_isa isa) {
#ifdef MX_HAVE_X86_KERNELS
        switch (isa) {
        case MX_ISA_SCALAR:
                return true;
        case MX_ISA_AVX2:
                return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && has_f16c();
        case MX_ISA_AVX512:
                return mx_isa_supported(MX_ISA_AVX2) && __builtin_cpu_supports("avx512f") &&
                       __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl");
        }
        return false;
#else
        return isa == MX_ISA_SCALAR;
#endif
}

mx_isa mx_isa_detect(void) {
        if (mx_isa_supported(MX_ISA_AVX512))
                return MX_ISA_AVX512;
        if (mx_isa_supported(MX_ISA_AVX2))
                return MX_ISA_AVX2;
        return MX_ISA_SCALAR;
}

const char *mx_isa_name(mx_isa isa) {
        static const char *const names[] = {"scalar", "avx2", "avx512"};
        return names[isa];
}

const mx_kernels *mx_kernels_for(mx_isa isa) {
#ifdef MX_HAVE_X86_KERNELS
        if (isa == MX_ISA_AVX512)
                return &mx_kernels_avx512;
        if (isa == MX_ISA_AVX2)
                return &mx_kernels_avx2;
#endif
        return &mx_kernels_scalar;
}
