/* mx_exp (kernels.h) over a vector layer (simd_avx2.h or simd_avx512.h,
 * included first), operation for operation, so every instruction set's
 * softmax gives the scalar kernel's bits. */
#pragma once

static inline vf vf_exp(vf x) {
        vf t = vf_fma(x, vf_set1(MX_EXP_LOG2E), vf_set1(MX_EXP_SHIFT));
        vf n = vf_sub(t, vf_set1(MX_EXP_SHIFT));
        vf r = vf_fma(n, vf_set1(-MX_EXP_LN2_HI), x);
        r = vf_fma(n, vf_set1(-MX_EXP_LN2_LO), r);
        vf u = vf_set1(MX_EXP_C5);
        u = vf_fma(u, r, vf_set1(MX_EXP_C4));
        u = vf_fma(u, r, vf_set1(MX_EXP_C3));
        u = vf_fma(u, r, vf_set1(MX_EXP_C2));
        u = vf_fma(u, r, vf_set1(MX_EXP_C1));
        u = vf_fma(u, r, vf_set1(MX_EXP_C0));
        u = vf_fma(vf_mul(r, r), u, vf_add(r, vf_set1(1.0f)));
        return vf_zero_below(x, MX_EXP_MIN, vf_mul(u, vf_pow2_bits(t)));
}
