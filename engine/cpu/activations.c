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
                b = cols + cols / 256 * 4 + cols / 16 * 4;
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
                for (uint64_t s = 0; s < cols / 16; s++) {
                        int sum = 0;
                        for (int i = 0; i < 16; i++)
                                sum += q[16 * s + i];
                        xs[s] = d[s / 16] * (float)sum;
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
        return fast && w == MX_DTYPE_Q4_0 && n >= MX_ACT_GROUP_MIN;
}

uint64_t mx_act_group_bytes(uint64_t cols) {
        return cols / 32 * MX_ACT_GROUP_BLOCK;
}

void mx_act_group(const uint8_t *xq, uint64_t ldxq, uint32_t n, uint64_t cols, uint8_t *dst) {
        for (uint64_t b = 0; b < cols / 32; b++) {
                uint8_t *q = dst + b * MX_ACT_GROUP_BLOCK;
                float d[MX_ACT_GROUP] = {0};
                memset(q, 128, 8 * 64);
                for (uint32_t j = 0; j < n; j++) {
                        const int8_t *x = (const int8_t *)(xq + j * ldxq) + 32 * b;
                        for (int m = 0; m < 8; m++)
                                for (int i = 0; i < 4; i++)
                                        q[64 * m + 4 * j + (uint32_t)i] = (uint8_t)(x[4 * m + i] + 128);
                        d[j] = mx_act_scales(xq + j * ldxq, cols)[b];
                }
                memcpy(q + 8 * 64, d, sizeof d);
        }
}
