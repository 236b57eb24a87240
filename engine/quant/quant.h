/* The quant module: weight formats and their conversion to and from float;
 * private to the engine.
 *
 * The block formats are ggml's, byte for byte (the GGUF file format is the
 * contract), and so are their values: mx_dequant_* give exactly what the
 * reference reader gguf-py (gguf.quants.dequantize) gives, and
 * mx_quantize_row's Q8_0 and Q4_0 are bit for bit gguf-py's quantizer
 * (tests/quant). Everything above the row functions is static inline and
 * compiles as C17 (gcc, clang) and as CUDA C++ (nvcc), where it runs on host
 * and device alike, so the GPU decodes blocks exactly as the CPU does.
 *
 * Bit-exactness needs each product and difference rounded on its own: a
 * compiler that fuses d * q - m into one FMA changes the last bit. Host
 * files that include this are built with -ffp-contract=off; device code uses
 * the _rn intrinsics, which nvcc never fuses. */
#pragma once

#include <stdint.h>
#include <string.h>

#include "mixtral.h"

#ifdef __CUDACC__
#define MX_QFN static inline __host__ __device__
#else
#define MX_QFN static inline
#endif

#if defined(__CUDA_ARCH__)
#define MX_FMUL(a, b) __fmul_rn((a), (b))
#define MX_FSUB(a, b) __fsub_rn((a), (b))
#else
#define MX_FMUL(a, b) ((a) * (b))
#define MX_FSUB(a, b) ((a) - (b))
#endif

/* Weights per block: 32 for Q8_0 and Q4_0, 256 (a super-block) for the
 * K-quants. */
#define MX_QK 32
#define MX_QK_K 256

/* ---- bf16 and IEEE half ------------------------------------------------------- */

MX_QFN float mx_bits_f32(uint32_t u) {
        float f;
        memcpy(&f, &u, 4);
        return f;
}

MX_QFN uint32_t mx_f32_bits(float f) {
        uint32_t u;
        memcpy(&u, &f, 4);
        return u;
}

MX_QFN float mx_bf16_to_f32(uint16_t h) {
        return mx_bits_f32((uint32_t)h << 16);
}

/* Round to nearest, ties to even, as PyTorch (and gguf-py) do; NaN stays a
 * quiet NaN. */
MX_QFN uint16_t mx_f32_to_bf16(float f) {
        uint32_t u = mx_f32_bits(f);
        if ((u & 0x7fffffffu) > 0x7f800000u)
                return (uint16_t)((u >> 16) | 0x40);
        u += 0x7fffu + ((u >> 16) & 1);
        return (uint16_t)(u >> 16);
}

/* IEEE half to float, exactly (subnormals, infinities and NaN included). */
MX_QFN float mx_f16_to_f32(uint16_t h) {
        uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1f, man = h & 0x3ff, u;
        if (exp == 0x1f) {
                u = sign | 0x7f800000u | (man << 13);
        } else if (exp != 0) {
                u = sign | ((exp + 112) << 23) | (man << 13);
        } else if (man == 0) {
                u = sign;
        } else {
                int e = -1;
                do {
                        man <<= 1;
                        e++;
                } while (!(man & 0x400));
                u = sign | ((uint32_t)(112 - e) << 23) | ((man & 0x3ff) << 13);
        }
        return mx_bits_f32(u);
}

/* Float to IEEE half, round to nearest even, as numpy's astype(float16):
 * overflow to infinity, subnormals rounded. */
MX_QFN uint16_t mx_f32_to_f16(float f) {
        uint32_t u = mx_f32_bits(f), sign = (u >> 16) & 0x8000, a = u & 0x7fffffffu;
        if (a > 0x7f800000u) { /* NaN: numpy keeps the payload's top bits */
                uint32_t h = 0x7c00u + ((a & 0x7fffffu) >> 13);
                return (uint16_t)(sign | (h == 0x7c00u ? h + 1 : h));
        }
        if (a >= 0x477ff000u) /* rounds to 65536 or more: infinity */
                return (uint16_t)(sign | 0x7c00);
        if (a >= 0x38800000u) { /* normal half: drop 13 bits, ties to even */
                uint32_t r = a - 0x38000000u;
                r += 0xfffu + ((r >> 13) & 1);
                return (uint16_t)(sign | (r >> 13));
        }
        if (a < 0x33000000u) /* under half the smallest subnormal */
                return (uint16_t)sign;
        /* Subnormal half: the implicit bit made explicit, then shifted. */
        uint32_t e = a >> 23, man = (a & 0x7fffffu) | 0x800000u, shift = 126 - e;
        uint32_t half = 1u << (shift - 1), rest = man & ((1u << shift) - 1), q = man >> shift;
        if (rest > half || (rest == half && (q & 1)))
                q++;
        return (uint16_t)(sign | q);
}

/* Element i of a row stored as F32, F16 or BF16 (block formats go through
 * mx_dequant_row). */
MX_QFN float mx_element_f32(const uint8_t *row, mx_dtype dt, uint64_t i) {
        uint16_t h;
        float f;
        switch (dt) {
        case MX_DTYPE_BF16:
                memcpy(&h, row + 2 * i, 2);
                return mx_bf16_to_f32(h);
        case MX_DTYPE_F16:
                memcpy(&h, row + 2 * i, 2);
                return mx_f16_to_f32(h);
        default:
                memcpy(&f, row + 4 * i, 4);
                return f;
        }
}

/* ---- ggml's blocks ------------------------------------------------------------- */

/* w = d * q */
typedef struct mx_block_q8_0 {
        uint16_t d;         /* fp16 scale */
        int8_t qs[MX_QK];   /* [32] */
} mx_block_q8_0;

/* w = d * (q - 8); element i < 16 is the low nibble of qs[i], element
 * 16 + i its high nibble. */
typedef struct mx_block_q4_0 {
        uint16_t d;
        uint8_t qs[MX_QK / 2]; /* [16] */
} mx_block_q4_0;

/* 8 sub-blocks of 32, each with a 6-bit scale sc and min m:
 * w = d * sc * q - dmin * m, q in [0, 15]. Sub-blocks 2i and 2i+1 share
 * qs[32i .. 32i+31]: low nibbles, then high nibbles. */
typedef struct mx_block_q4_k {
        uint16_t d, dmin;   /* fp16 */
        uint8_t scales[12]; /* 8 scales and 8 mins of 6 bits (mx_q4k_scale) */
        uint8_t qs[MX_QK_K / 2]; /* [128] */
} mx_block_q4_k;

/* As Q4_K with a fifth bit: q in [0, 31], bit 4 of element 64i + l of
 * sub-block 2i is bit 2i of qh[l], of sub-block 2i+1 bit 2i+1. */
typedef struct mx_block_q5_k {
        uint16_t d, dmin;
        uint8_t scales[12];
        uint8_t qh[MX_QK_K / 8]; /* [32] */
        uint8_t qs[MX_QK_K / 2]; /* [128] */
} mx_block_q5_k;

/* 16 sub-blocks of 16 with signed 8-bit scales: w = d * sc * (q - 32),
 * q in [0, 63]: low 4 bits in ql, high 2 in qh (see mx_dequant_q6_k). */
typedef struct mx_block_q6_k {
        uint8_t ql[MX_QK_K / 2];     /* [128] */
        uint8_t qh[MX_QK_K / 4];     /* [64] */
        int8_t scales[MX_QK_K / 16]; /* [16] */
        uint16_t d;
} mx_block_q6_k;

#ifndef __cplusplus
_Static_assert(sizeof(mx_block_q8_0) == 34, "ggml's block_q8_0");
_Static_assert(sizeof(mx_block_q4_0) == 18, "ggml's block_q4_0");
_Static_assert(sizeof(mx_block_q4_k) == 144, "ggml's block_q4_K");
_Static_assert(sizeof(mx_block_q5_k) == 176, "ggml's block_q5_K");
_Static_assert(sizeof(mx_block_q6_k) == 210, "ggml's block_q6_K");
#endif

/* Scale and min of sub-block j (0..7) of a Q4_K or Q5_K block: the first
 * four in the low 6 bits of bytes 0-3 and 4-7, the last four split between
 * the nibbles of bytes 8-11 and the top 2 bits of bytes 0-7. */
MX_QFN void mx_q4k_scale(const uint8_t *s, int j, uint8_t *sc, uint8_t *m) {
        if (j < 4) {
                *sc = s[j] & 63;
                *m = s[j + 4] & 63;
        } else {
                *sc = (uint8_t)((s[j + 4] & 0xf) | ((s[j - 4] >> 6) << 4));
                *m = (uint8_t)((s[j + 4] >> 4) | ((s[j] >> 6) << 4));
        }
}

MX_QFN void mx_dequant_q8_0(const mx_block_q8_0 *b, float *y) {
        float d = mx_f16_to_f32(b->d);
        for (int i = 0; i < MX_QK; i++)
                y[i] = MX_FMUL(d, (float)b->qs[i]);
}

MX_QFN void mx_dequant_q4_0(const mx_block_q4_0 *b, float *y) {
        float d = mx_f16_to_f32(b->d);
        for (int i = 0; i < MX_QK / 2; i++) {
                y[i] = MX_FMUL(d, (float)((b->qs[i] & 0xf) - 8));
                y[i + MX_QK / 2] = MX_FMUL(d, (float)((b->qs[i] >> 4) - 8));
        }
}

/* The quant of element e (0..255) of a Q4_K or Q5_K block. */
MX_QFN uint8_t mx_q4k_quant(const mx_block_q4_k *b, int e) {
        return (uint8_t)((b->qs[32 * (e / 64) + e % 32] >> (4 * ((e / 32) & 1))) & 0xf);
}

MX_QFN uint8_t mx_q5k_quant(const mx_block_q5_k *b, int e) {
        uint8_t lo = (uint8_t)((b->qs[32 * (e / 64) + e % 32] >> (4 * ((e / 32) & 1))) & 0xf);
        return (uint8_t)(lo | ((b->qh[e % 32] >> (e / 32)) & 1) << 4);
}

/* Sub-block j of a Q4_K or Q5_K block: d * sc and dmin * m. */
MX_QFN void mx_kmin_scales(float d, float dmin, const uint8_t *scales, int j, float *d1, float *m1) {
        uint8_t sc, m;
        mx_q4k_scale(scales, j, &sc, &m);
        *d1 = MX_FMUL(d, (float)sc);
        *m1 = MX_FMUL(dmin, (float)m);
}

/* Q4_K and Q5_K: a super-block's 256 values from their levels q. */
MX_QFN void mx_dequant_kmin(uint16_t d, uint16_t dmin, const uint8_t *scales, const uint8_t *q, float *y) {
        float df = mx_f16_to_f32(d), mf = mx_f16_to_f32(dmin), d1, m1;
        for (int j = 0; j < 8; j++) {
                mx_kmin_scales(df, mf, scales, j, &d1, &m1);
                for (int e = 32 * j; e < 32 * j + 32; e++)
                        y[e] = MX_FSUB(MX_FMUL(d1, (float)q[e]), m1);
        }
}

MX_QFN void mx_dequant_q4_k(const mx_block_q4_k *b, float *y) {
        uint8_t q[MX_QK_K];
        for (int e = 0; e < MX_QK_K; e++)
                q[e] = mx_q4k_quant(b, e);
        mx_dequant_kmin(b->d, b->dmin, b->scales, q, y);
}

MX_QFN void mx_dequant_q5_k(const mx_block_q5_k *b, float *y) {
        uint8_t q[MX_QK_K];
        for (int e = 0; e < MX_QK_K; e++)
                q[e] = mx_q5k_quant(b, e);
        mx_dequant_kmin(b->d, b->dmin, b->scales, q, y);
}

/* Q6_K's quant of element e (0..255), in [0, 63]: each half of 128 has 64
 * bytes of ql (elements l and l + 64 in the low and high nibbles of ql[l],
 * l + 32 and l + 96 of ql[l + 32]) and 32 of qh (two bits per element, in
 * the order l, l + 32, l + 64, l + 96). */
MX_QFN uint8_t mx_q6k_quant(const mx_block_q6_k *b, int e) {
        int h = e / 128, r = e % 128, l = r % 32, part = r / 32;
        uint8_t lo = b->ql[64 * h + l + 32 * (part & 1)] >> (4 * (part >> 1));
        uint8_t hi = b->qh[32 * h + l] >> (2 * part);
        return (uint8_t)((lo & 0xf) | ((hi & 3) << 4));
}

MX_QFN void mx_dequant_q6_k(const mx_block_q6_k *b, float *y) {
        float d = mx_f16_to_f32(b->d);
        for (int s = 0; s < 16; s++) {
                float ds = MX_FMUL(d, (float)b->scales[s]);
                for (int l = 0; l < 16; l++)
                        y[16 * s + l] = MX_FMUL(ds, (float)((int)mx_q6k_quant(b, 16 * s + l) - 32));
        }
}

/* One block of any block format (src at its start) into y[block elems]. */
MX_QFN void mx_dequant_block(mx_dtype t, const void *src, float *y) {
        switch (t) {
        case MX_DTYPE_Q8_0:
                mx_dequant_q8_0((const mx_block_q8_0 *)src, y);
                break;
        case MX_DTYPE_Q4_0:
                mx_dequant_q4_0((const mx_block_q4_0 *)src, y);
                break;
        case MX_DTYPE_Q4_K:
                mx_dequant_q4_k((const mx_block_q4_k *)src, y);
                break;
        case MX_DTYPE_Q5_K:
                mx_dequant_q5_k((const mx_block_q5_k *)src, y);
                break;
        case MX_DTYPE_Q6_K:
                mx_dequant_q6_k((const mx_block_q6_k *)src, y);
                break;
        default:
                break;
        }
}

/* ---- rows (dequant.c, quantize.c, quantize_k.c) ------------------------------------ */

/* n values of any mx_dtype starting at src (a whole number of blocks) into
 * dst; -EINVAL for a partial block or an unknown type. */
int mx_dequant_row(mx_dtype t, const void *src, float *dst, uint64_t n);

/* n floats into type t (F32, F16, BF16 and every block format): Q8_0 and
 * Q4_0 exactly as gguf-py's quantizer (ggml's reference), the K-quants by
 * our own search (quantize_k.c), within the bounds of mx_quant_bound.
 * -EINVAL for a partial block or an unknown type. */
int mx_quantize_row(mx_dtype t, const float *src, void *dst, uint64_t n);

/* One K-quant block (quantize_k.c) of 256 floats; -EINVAL for another type. */
int mx_quantize_k_block(mx_dtype t, const float *x, void *dst);

/* The K-quants' promise, checked by tests/quant: every value of a
 * super-block dequantizes to within mx_quant_bound(t) * amax of itself,
 * amax the largest magnitude in its super-block (its sub-block for the
 * 32-weight formats). */
float mx_quant_bound(mx_dtype t);
