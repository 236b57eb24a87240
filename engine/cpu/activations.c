/* The fast path's activations (kernels.h): each token rounded once, here,
 * by plain C that every instruction set shares, so the kernels of every
 * instruction set see the same integers. Called by matmul.c before a
 * product. */
#include <math.h>
#include <string.h>

#include "quant.h"
#include "kernels.h"

mx_act mx_act_for(mx_dtype w, bool fast) {
        if (!fast)
                return MX_ACT_F32;
        switch (w) {
        case MX_DTYPE_BF16:
                return MX_ACT_BF16;
        case MX_DTYPE_Q8_0:
        case MX_DTYPE_Q4_0:
                return MX_ACT_Q8;
        case MX_DTYPE_Q4_K:
        case MX_DTYPE_Q5_K:
        case MX_DTYPE_Q6_K:
                return MX_ACT_Q8K;
        default:
                return MX_ACT_F32;
        }
}

uint64_t mx_act_row_bytes(mx_act a, uint64_t cols) {
        uint64_t b;
        switch (a) {
        case MX_ACT_Q8:
                b = cols + cols / 32 * 4;
                break;
        case MX_ACT_Q8K:
                b = cols + cols / 256 * 4 + cols / 16 * 4 + cols / 16 * 2;
                break;
        case MX_ACT_BF16:
                b = cols * 2;
                break;
        default:
                b = cols * 4;
                break;
        }
        return (b + 63) / 64 * 64;
}

/* v rounded to the nearest integer, ties to even, within [-127, 127]
 * (NaN to -127): what lrintf and a clamp gave, for every float (checked
 * exhaustively) but +inf and those of 2^63 and more, which lrintf could
 * not represent and turned into -127 (a block whose scale is subnormal),
 * now 127; without a call to libm per value. Clamping first changes
 * nothing, the bounds being integers; then adding and subtracting
 * 1.5 * 2^23 rounds v to an integer in the default rounding mode, exactly,
 * as |v| < 2^22. */
static inline int8_t round_level(float v) {
        v = v >= -127.0f ? v : -127.0f;
        v = v <= 127.0f ? v : 127.0f;
        float r = (v + 12582912.0f) - 12582912.0f;
        return (int8_t)(int)r;
}

/* n values to int8 with the scale that puts the largest magnitude at 127,
 * rounded to nearest even; returns the scale. */
static float round_block(const float *x, int n, int8_t *q) {
        float amax = 0;
        for (int i = 0; i < n; i++)
                amax = fabsf(x[i]) > amax ? fabsf(x[i]) : amax;
        float d = amax / 127, id = d > 0 ? 1 / d : 0;
        for (int i = 0; i < n; i++)
                q[i] = round_level(x[i] * id);
        return d;
}

void mx_act_quantize(mx_act a, const float *x, uint64_t cols, uint8_t *dst) {
        int8_t *q = (int8_t *)dst;
        float *d = (float *)(dst + cols);
        switch (a) {
        case MX_ACT_Q8:
                for (uint64_t b = 0; b < cols / 32; b++)
                        d[b] = round_block(x + 32 * b, 32, q + 32 * b);
                break;
        case MX_ACT_Q8K: {
                float *xs = d + cols / 256;
                for (uint64_t b = 0; b < cols / 256; b++)
                        d[b] = round_block(x + 256 * b, 256, q + 256 * b);
                int16_t *bs = (int16_t *)(xs + cols / 16);
                for (uint64_t s = 0; s < cols / 16; s++) {
                        int sum = 0;
                        for (int i = 0; i < 16; i++)
                                sum += q[16 * s + i];
                        xs[s] = d[s / 16] * (float)sum;
                        bs[s] = (int16_t)sum;
                }
                break;
        }
        case MX_ACT_BF16:
                for (uint64_t i = 0; i < cols; i++) {
                        uint16_t h = mx_f32_to_bf16(x[i]);
                        memcpy(dst + 2 * i, &h, 2);
                }
                break;
        default:
                memcpy(dst, x, cols * sizeof(float));
                break;
        }
}

bool mx_act_grouped(mx_dtype w, bool fast, uint32_t n) {
        return fast && (w == MX_DTYPE_Q4_0 || w == MX_DTYPE_Q4_K || w == MX_DTYPE_Q6_K) && n >= MX_ACT_GROUP_MIN;
}

uint64_t mx_act_group_bytes(mx_act a, uint64_t cols) {
        return a == MX_ACT_Q8K ? cols / 256 * MX_ACT_GROUP_SUPER : cols / 32 * MX_ACT_GROUP_BLOCK;
}

/* Parts [0, parts) of the block at k of n tokens' values, then their
 * scales d (at index `at` of each token's scales) at dst + 64 x parts. */
static void group_parts(const uint8_t *xq, uint64_t ldxq, uint32_t n, uint64_t cols, uint64_t k, int parts,
                        uint64_t at, uint8_t *dst) {
        float d[MX_ACT_GROUP] = {0};
        memset(dst, 128, (size_t)parts * 64);
        for (uint32_t j = 0; j < n; j++) {
                const int8_t *x = (const int8_t *)(xq + j * ldxq) + k;
                for (int m = 0; m < parts; m++)
                        for (int i = 0; i < 4; i++)
                                dst[64 * m + 4 * j + (uint32_t)i] = (uint8_t)(x[4 * m + i] + 128);
                d[j] = mx_act_scales(xq + j * ldxq, cols)[at];
        }
        memcpy(dst + 64 * parts, d, sizeof d);
}

void mx_act_group(mx_act a, const uint8_t *xq, uint64_t ldxq, uint32_t n, uint64_t cols, uint8_t *dst) {
        if (a != MX_ACT_Q8K) {
                for (uint64_t b = 0; b < cols / 32; b++)
                        group_parts(xq, ldxq, n, cols, 32 * b, 8, b, dst + b * MX_ACT_GROUP_BLOCK);
                return;
        }
        for (uint64_t sb = 0; sb < cols / 256; sb++) {
                uint8_t *g = dst + sb * MX_ACT_GROUP_SUPER;
                group_parts(xq, ldxq, n, cols, 256 * sb, 64, sb, g);
                uint16_t bs[4][MX_ACT_GROUP][2] = {{{0}}};
                for (uint32_t j = 0; j < n; j++) {
                        const int16_t *s16 = mx_act_bsums(xq + j * ldxq, cols) + 16 * sb;
                        for (int s = 0; s < 8; s++)
                                bs[s / 2][j][s % 2] = (uint16_t)(s16[2 * s] + s16[2 * s + 1]);
                }
                memcpy(g + 64 * 64 + MX_ACT_GROUP * 4, bs, sizeof bs);
        }
}
