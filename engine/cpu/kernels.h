/* Matrix kernels of the CPU backend, one set per instruction set.
 *
 * Two ways to compute a product, chosen per engine (mx_engine_opts.
 * activations):
 *
 * - The f32 path: fp32 activations, weights decoded to exactly the floats
 *   of mx_dequant_row. Every output is a dot product summed the same way
 *   everywhere: lane j of 16 accumulates k = j, j+16, j+32, ... with fused
 *   multiply-adds, and the 16 lanes are added in one fixed tree
 *   (mx_reduce16).
 *
 * - The fast path (bf16 and block weights): each token's activations are
 *   first rounded to the weight's partner format (mx_act_for), as llama.cpp
 *   does: int8 blocks of 32 with a float scale for Q8_0 and Q4_0, of 256 for
 *   the K-quants (whose integer sub-block scales then apply before any
 *   float), bf16 for BF16 weights. Integer products are exact, so only the
 *   float steps are fixed:
 *     Q8_0: 16 lanes; each 64 activations (two blocks of 32) give lane l
 *       the exact sum P of weight level q x activation over values
 *       4l..4l+3; lane l accumulates fma(dw * dx, P) with the scales of its
 *       block; a row of an odd number of blocks ends on a pair whose second
 *       half counts with zeros;
 *     Q4_0: one chain per output, block by block: S = the exact sum over
 *       the block of (q - 8) x activation, then acc = fma(dw * dx, S, acc).
 *       A chain per output lets a kernel put 16 rows (decode) or 16 tokens
 *       (prefill, from the activations' token groups below) in the lanes
 *       of one register, where 16 lanes per output made it pay a float
 *       multiply, a conversion and a fused multiply-add per 64 values;
 *     Q4_K: one chain per output (as Q4_0), per super-block: S = the
 *       exact sum over its sub-blocks of scale x the sum of level x
 *       activation, M = the exact sum of min x the activations' sum bs;
 *       acc = fma(d * dx, S, acc), then acc = fma(-dmin * dx, M, acc);
 *     Q6_K: one chain per output, per super-block: S = the exact sum over
 *       its 16 sub-blocks of scale x the sum of (q - 32) x activation;
 *       acc = fma(d * dx, S, acc);
 *     Q5_K: per super-block, S[l] = the exact sum over its four 64-value
 *       chunks of sub-block scale x unsigned level x activation over values
 *       4l..4l+3 of the chunk; lane l accumulates fma(d * dx, S[l]); and 16
 *       lanes G, lane s accumulating fma(w_s, xs_s) with xs_s the
 *       activations' dx x the sum of levels s*16..s*16+15 and w_s the
 *       weights' offset there (Q4_K, Q5_K: dmin * m of the sub-block; Q6_K:
 *       d * (32 * scale), its levels being q - 32); the output is
 *       mx_reduce16(lanes) - mx_reduce16(G);
 *     BF16: lane i accumulates, per 32 values, pair 2i+1 then pair 2i with
 *       fused multiply-adds of exact bf16 products (what AVX512-BF16's
 *       vdpbf16ps does for normal numbers; where a product or a partial
 *       sum falls under 2^-126 the instruction flushes it to zero and the
 *       other kernels do not).
 *
 * Either way the scalar, AVX2 and AVX-512 kernels (with or without the
 * dot-product instructions) give bit-identical results, and so do tiles
 * of any shape: a token's outputs do not depend on which other tokens
 * share its batch or which instructions ran (tests/quant/test_kernels.c,
 * tests/engine/test_forward.c). */
#pragma once

#include <stdbool.h>
#include <stdint.h>

#include "mixtral.h"

/* Activations as the fast path hands them to the kernels, per token. */
typedef enum mx_act {
        MX_ACT_F32,  /* fp32 as they are (the f32 path; F32 and F16 weights) */
        MX_ACT_Q8,   /* int8 q[cols], then float d[cols/32]: x ~ d * q per 32 values */
        /* int8 q[cols], then float d[cols/256], then float xs[cols/16]:
         * each 16 levels' sum times their d, rounded; then int16
         * bs[cols/16]: each 16 levels' sum */
        MX_ACT_Q8K,
        MX_ACT_BF16, /* uint16 bf16[cols], rounded to nearest even */
} mx_act;

/* MX_BF16P: BF16 rows with their exponents coded, for the fast path on
 * AVX2 and AVX-512 (bf16_packed.c). A row of cols values (a multiple of
 * MX_BF16P_BLOCK) takes `stride` bytes, the same for every row of a
 * matrix (a multiple of 64):
 * - a table of MX_BF16P_TABLE uint16, entry c = exponent field << 7 of
 *   code c (c < MX_BF16P_CODES; unused ones 0), and last the row's count
 *   of exceptions;
 * - per block of 64 values, MX_BF16P_BLOCK_BYTES: 64 bytes of sign << 7 |
 *   the 7 mantissa bits, then 32 bytes of codes: byte i holds value i's
 *   code in its low 4 bits and value 32 + i's in its high 4 bits;
 * - then the row's exceptions, in order: the whole bf16 word of each value
 *   whose code is MX_BF16P_CODES (its sign and mantissa byte is 0); zeros
 *   to the stride.
 * Value v = sign << 15 | table[code] | mantissa, or the next exception. */
#define MX_BF16P_BLOCK 64
#define MX_BF16P_BLOCK_BYTES 96
#define MX_BF16P_CODES 15
#define MX_BF16P_TABLE 16
/* Products unpack a tile of rows on the stack to run prefill's BF16
 * tiles; this bounds it (4 rows of 16384 values: 128 KiB). */
#define MX_BF16P_MAX_COLS 16384

/* How many of a row's values would be exceptions. */
uint64_t mx_bf16p_exceptions(const uint16_t *w, uint64_t cols);
/* Whether a matrix of cols columns whose worst row has max_exceptions
 * packs (cols a multiple of the block, up to MX_BF16P_MAX_COLS; at most
 * one value in 16 an exception; fewer bytes than plain: 256 columns and
 * more), and its stride. */
bool mx_bf16p_fits(uint64_t cols, uint64_t max_exceptions, uint64_t *stride);
/* One row into stride bytes: a stride from mx_bf16p_fits for at least
 * the row's exceptions (a shorter one loses the last of them). */
void mx_bf16p_pack_row(const uint16_t *w, uint64_t cols, uint8_t *dst, uint64_t stride);
/* The row's bf16 words again, exactly. */
void mx_bf16p_unpack_row(const uint8_t *row, uint64_t cols, uint16_t *out);

/* Products of MX_ACT_GROUP_MIN tokens and more with Q4_0, Q4_K or Q6_K weights
 * also get their activations in groups of MX_ACT_GROUP tokens, so that a
 * register holds the same 4 values of 16 tokens. Part m of a block: token
 * j's values 4m..4m+3 at bytes 4j..4j+3, each as q + 128, unsigned.
 * - MX_ACT_Q8, per block of 32 values: 8 parts, then the 16 tokens' float
 *   scales (MX_ACT_GROUP_BLOCK bytes);
 * - MX_ACT_Q8K, per super-block of 256 values: 64 parts, the 16 tokens'
 *   float scales, then 4 x 64 bytes: at 4j in the p-th, token j's int16
 *   sums bs of sub-blocks 2p and 2p + 1 (MX_ACT_GROUP_SUPER bytes).
 * Tokens past the last are zeros (128, and scale and sums 0). */
#define MX_ACT_GROUP 16
#define MX_ACT_GROUP_MIN 4
#define MX_ACT_GROUP_BLOCK (8 * 64 + MX_ACT_GROUP * 4)
#define MX_ACT_GROUP_SUPER (64 * 64 + MX_ACT_GROUP * 4 + 4 * 64)

/* Whether products of n tokens with weights w get token groups. */
bool mx_act_grouped(mx_dtype w, bool fast, uint32_t n);
/* Bytes one group of format a takes. */
uint64_t mx_act_group_bytes(mx_act a, uint64_t cols);
/* Tokens [0, n) (n <= MX_ACT_GROUP) of rows of format a, ldxq bytes apart,
 * as one group at dst. */
void mx_act_group(mx_act a, const uint8_t *xq, uint64_t ldxq, uint32_t n, uint64_t cols, uint8_t *dst);

/* The activation format weights of type w get; F32 unless fast. */
mx_act mx_act_for(mx_dtype w, bool fast);
/* Bytes one token's activations take in format a (a multiple of 64). */
uint64_t mx_act_row_bytes(mx_act a, uint64_t cols);
/* One token: cols floats into format a at dst (mx_act_row_bytes). */
void mx_act_quantize(mx_act a, const float *x, uint64_t cols, uint8_t *dst);
/* Where the scales of an MX_ACT_Q8 or MX_ACT_Q8K row are, and the scaled
 * sums of an MX_ACT_Q8K row. */
static inline const float *mx_act_scales(const uint8_t *row, uint64_t cols) {
        return (const float *)(row + cols);
}
static inline const float *mx_act_sums(const uint8_t *row, uint64_t cols) {
        return (const float *)(row + cols) + cols / 256;
}
static inline const int16_t *mx_act_bsums(const uint8_t *row, uint64_t cols) {
        return (const int16_t *)(mx_act_sums(row, cols) + cols / 16);
}

typedef struct mx_matmul_args {
        const uint8_t *w;    /* row 0 of the weight matrix, [rows][cols] */
        mx_dtype dtype;
        uint64_t packed;     /* BF16 rows packed (MX_BF16P): their stride in bytes; 0: the dtype's rows */
        uint64_t cols;
        const float *x;      /* [n][ldx] fp32 activations (the f32 path) */
        uint64_t ldx;
        const uint8_t *xq;   /* [n][ldxq bytes] in mx_act_for(dtype, true); NULL: the f32 path */
        uint64_t ldxq;
        const uint8_t *xg;   /* [n / MX_ACT_GROUP rounded up][ldxg bytes] token groups, or NULL */
        uint64_t ldxg;
        float *out;          /* [n][ldo]; out[t][r] = dot(w[r], x[t]) */
        uint64_t ldo;
        uint32_t n;
        bool accumulate;     /* out[t][r] += dot instead of = */
} mx_matmul_args;

typedef enum mx_isa {
        MX_ISA_SCALAR,
        MX_ISA_AVX2,        /* AVX2 + FMA + F16C */
        MX_ISA_AVX2_VNNI,   /* ... and AVX-VNNI (vpdpbusd on 256 bits) */
        MX_ISA_AVX512,      /* AVX-512 F, BW, VL */
        MX_ISA_AVX512_VNNI, /* ... and AVX512-VNNI and AVX512-BF16 */
        MX_ISA_COUNT
} mx_isa;

typedef struct mx_kernels {
        mx_isa isa;
        /* Rows [r0, r1) of the product, for all n tokens. */
        void (*matmul_rows)(const mx_matmul_args *a, uint64_t r0, uint64_t r1);
        /* The f32 path's 16-lane dot product over two fp32 vectors. */
        float (*dot)(const float *a, const float *b, uint64_t n);
        /* y[i] = fma(a, x[i], y[i]) */
        void (*axpy)(float a, const float *x, float *y, uint64_t n);
        /* Attention's two passes over n rows of the KV pool, `step` elements
         * apart, of fp32 or bf16 (widened exactly, in registers), for the
         * nq query heads that share them (q and o: nq rows of hd floats;
         * out and w: nq rows `ld` floats apart): scores out[h][i] =
         * dot(q_h, k_i, hd) / scale, each dot summed as `dot` sums; mix
         * o_h[d] = fma(w[h][i], v_i[d], o_h[d]) for i = 0 .. n-1 in order,
         * the additions of n axpy calls. One call per block of keys and
         * group of heads instead of one per key and head: a row is loaded
         * and widened once for several heads (AVX-512 four, AVX2 two),
         * with no widened copy. */
        void (*scores)(const float *q, uint32_t nq, const void *k, uint64_t step, bool bf16, uint32_t n,
                       uint32_t hd, float scale, float *out, uint64_t ld);
        void (*mix)(const float *w, uint64_t ld, uint32_t nq, const void *v, uint64_t step, bool bf16, uint32_t n,
                    uint32_t hd, float *o);
        /* Attention's softmax of n scores, in place: m = their maximum;
         * e_i = mx_exp(p_i - m); lane i % 16 of 16 adds e_i in key order
         * and mx_reduce16 sums the lanes; p_i = e_i / that sum. */
        void (*softmax)(float *p, uint32_t n);
} mx_kernels;

extern const mx_kernels mx_kernels_scalar, mx_kernels_avx2, mx_kernels_avx2_vnni, mx_kernels_avx512,
        mx_kernels_avx512_vnni;

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

/* exp(x) for the softmax, where x <= 0, in float operations every kernel
 * does alike (libm's expf differs between builds and is one call a
 * value): t = fma(x, MX_EXP_LOG2E, MX_EXP_SHIFT) rounds x / ln 2 to the
 * integer n in t's low mantissa bits; n = t - MX_EXP_SHIFT; r = fma(n,
 * -MX_EXP_LN2_HI, x), r = fma(n, -MX_EXP_LN2_LO, r); u = MX_EXP_C5, then u
 * = fma(u, r, c) for c = MX_EXP_C4 .. MX_EXP_C0; u = fma(r * r, u, r + 1);
 * the result u * 2^n, 2^n's bits being (bits(t) << 23) + bits(1.0f) in
 * uint32 arithmetic (t's bits are MX_EXP_SHIFT's plus n, and the shift
 * leaves n << 23). Below MX_EXP_MIN (where 2^n would not be a normal
 * float) it is 0; NaN stays NaN. Within 2 ulp of exp (tests/quant/
 * test_kernels.c); the polynomial is SLEEF's expf. */
#define MX_EXP_MIN (-87.0f)
#define MX_EXP_LOG2E 1.44269504088896341f
#define MX_EXP_SHIFT 0x1.8p23f
#define MX_EXP_LN2_HI 0.693145751953125f
#define MX_EXP_LN2_LO 1.428606765330187045e-06f
#define MX_EXP_C5 0.000198527617612853646278381f
#define MX_EXP_C4 0.00139304355252534151077271f
#define MX_EXP_C3 0.00833336077630519866943359f
#define MX_EXP_C2 0.0416664853692054748535156f
#define MX_EXP_C1 0.166666671633720397949219f
#define MX_EXP_C0 0.5f

/* The scalar reference of that exp. */
float mx_exp(float x);

/* The best instruction set this CPU (and this build) has; whether it has
 * one; its name ("avx512-vnni"); its kernels. */
mx_isa mx_isa_detect(void);
bool mx_isa_supported(mx_isa isa);
const char *mx_isa_name(mx_isa isa);
const mx_kernels *mx_kernels_for(mx_isa isa);
/* The best variant of a family (MX_ISA_AVX2 or MX_ISA_AVX512) this CPU runs. */
mx_isa mx_isa_best_of(mx_isa family);
