/* Choosing kernels at run time: the build compiles every instruction set
 * it can (each AVX family twice, without and with its dot-product
 * instructions); the CPU decides which may run. */
#include "kernels.h"

#ifdef MX_HAVE_X86_KERNELS
#include <cpuid.h>

/* Leaf 7's registers (sub-leaf `sub`); zeros where the CPU lacks the leaf. */
static void leaf7(unsigned sub, unsigned r[4]) {
        r[0] = r[1] = r[2] = r[3] = 0;
        if (__get_cpuid_max(0, NULL) >= 7)
                __cpuid_count(7, sub, r[0], r[1], r[2], r[3]);
}

/* Not every compiler knows these names for __builtin_cpu_supports. */
static bool has_f16c(void) {
        unsigned a, b, c, d;
        return __get_cpuid(1, &a, &b, &c, &d) && (c & bit_F16C);
}

static bool has_avx_vnni(void) {
        unsigned r[4];
        leaf7(1, r);
        return r[0] & (1u << 4);
}

static bool has_avx512_vnni_bf16(void) {
        unsigned r0[4], r1[4];
        leaf7(0, r0);
        leaf7(1, r1);
        return (r0[2] & (1u << 11)) && (r1[0] & (1u << 5));
}
#endif

bool mx_isa_supported(mx_isa isa) {
#ifdef MX_HAVE_X86_KERNELS
        switch (isa) {
        case MX_ISA_SCALAR:
                return true;
        case MX_ISA_AVX2:
                return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && has_f16c();
        case MX_ISA_AVX2_VNNI:
                return mx_isa_supported(MX_ISA_AVX2) && has_avx_vnni();
        case MX_ISA_AVX512:
                return mx_isa_supported(MX_ISA_AVX2) && __builtin_cpu_supports("avx512f") &&
                       __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl");
        case MX_ISA_AVX512_VNNI:
                return mx_isa_supported(MX_ISA_AVX512) && has_avx512_vnni_bf16();
        case MX_ISA_COUNT:
                break;
        }
        return false;
#else
        return isa == MX_ISA_SCALAR;
#endif
}

mx_isa mx_isa_best_of(mx_isa family) {
        mx_isa vnni = family == MX_ISA_AVX512 ? MX_ISA_AVX512_VNNI : MX_ISA_AVX2_VNNI;
        return mx_isa_supported(vnni) ? vnni : family;
}

mx_isa mx_isa_detect(void) {
        if (mx_isa_supported(MX_ISA_AVX512))
                return mx_isa_best_of(MX_ISA_AVX512);
        if (mx_isa_supported(MX_ISA_AVX2))
                return mx_isa_best_of(MX_ISA_AVX2);
        return MX_ISA_SCALAR;
}

const char *mx_isa_name(mx_isa isa) {
        static const char *const names[] = {"scalar", "avx2", "avx2-vnni", "avx512", "avx512-vnni"};
        return (unsigned)isa < MX_ISA_COUNT ? names[isa] : "?";
}

const mx_kernels *mx_kernels_for(mx_isa isa) {
#ifdef MX_HAVE_X86_KERNELS
        static const mx_kernels *const all[MX_ISA_COUNT] = {
                &mx_kernels_scalar, &mx_kernels_avx2, &mx_kernels_avx2_vnni, &mx_kernels_avx512,
                &mx_kernels_avx512_vnni,
        };
        if ((unsigned)isa < MX_ISA_COUNT)
                return all[isa];
#endif
        return &mx_kernels_scalar;
}
