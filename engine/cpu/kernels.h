/* Matrix kernels of the CPU backend, one set per instruction set.
 *
 * Every output is a dot product of one weight row and one activation row,
 * summed the same way everywhere: lane j of 16 accumulates k = j, j+16,
 * j+32, ... with fused multiply-adds, and the 16 lanes are added in one
 * fixed tree. So the scalar, AVX2 and AVX-512 kernels give bit-identical
 * results, and so do tiles of any shape: a token's logits do not depend on
 * which other tokens share its batch or which instructions ran. */
#pragma once

#include <stdbool.h>
#include <stdint.h>

#include "mixtral.h"

typedef struct mx_matmul_args {
        const uint8_t *w;    /* row 0 of the weight matrix, [rows][cols] */
        mx_dtype dtype;
        uint64_t cols;
        const float *x;      /* [n][ldx] activations */
        uint64_t ldx;
        float *out;          /* [n][ldo]; out[t][r] = dot(w[r], x[t]) */
        uint64_t ldo;
        uint32_t n;
        bool accumulate;     /* out[t][r] += dot instead of = */
} mx_matmul_args;

typedef enum mx_isa {
        MX_ISA_SCALAR,
        MX_ISA_AVX2,   /* AVX2 + FMA + F16C */
        MX_ISA_AVX512, /* AVX-512 F, BW, VL */
} mx_isa;

typedef struct mx_kernels {
        mx_isa isa;
        /* Rows [r0, r1) of the product, for all n tokens. */
        void (*matmul_rows)(const mx_matmul_args *a, uint64_t r0, uint64_t r1);
        /* The same 16-lane dot product over two fp32 vectors. */
        float (*dot)(const float *a, const float *b, uint64_t n);
        /* y[i] = fma(a, x[i], y[i]) */
        void (*axpy)(float a, const float *x, float *y, uint64_t n);
} mx_kernels;

extern const mx_kernels mx_kernels_scalar, mx_kernels_avx2, mx_kernels_avx512;

/* The lane order's final sum, shared by every kernel. */
static inline float mx_reduce16(const float l[16]) {
        float a[8], b[4];
        for (int j = 0; j < 8; j++)
                a[j] = l[j] + l[j + 8];
        for (int j = 0; j < 4; j++)
                b[j] = a[j] + a[j + 4];
        float c0 = b[0] + b[2], c1 = b[1] + b[3];
        return c0 + c1;
}

/* The best instruction set this CPU (and this build) has; whether it has
 * one; its kernels. */
mx_isa mx_isa_detect(void);
bool mx_isa_supported(mx_isa isa);
const char *mx_isa_name(mx_isa isa);
const mx_kernels *mx_kernels_for(mx_isa isa);
