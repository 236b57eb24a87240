/* The quant module: weight formats (bf16, fp16, fp32) to float; private to
 * the engine. */
#pragma once

#include <stdint.h>
#include <string.h>

#include "mixtral.h"

static inline float mx_bf16_to_f32(uint16_t h) {
        uint32_t u = (uint32_t)h << 16;
        float f;
        memcpy(&f, &u, 4);
        return f;
}

/* Round to nearest, ties to even, as PyTorch does; NaN stays NaN. */
static inline uint16_t mx_f32_to_bf16(float f) {
        uint32_t u;
        memcpy(&u, &f, 4);
        if ((u & 0x7fffffffu) > 0x7f800000u)
                return (uint16_t)((u >> 16) | 0x40);
        u += 0x7fffu + ((u >> 16) & 1);
        return (uint16_t)(u >> 16);
}

/* IEEE half to float, exactly (subnormals, infinities and NaN included). */
static inline float mx_f16_to_f32(uint16_t h) {
        uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1f, man = h & 0x3ff, u;
        if (exp == 0x1f)
                u = sign | 0x7f800000u | (man << 13);
        else if (exp != 0)
                u = sign | ((exp + 112) << 23) | (man << 13);
        else if (man == 0)
                u = sign;
        else {
                int e = -1;
                do {
                        man <<= 1;
                        e++;
                } while (!(man & 0x400));
                u = sign | ((uint32_t)(112 - e) << 23) | ((man & 0x3ff) << 13);
        }
        float f;
        memcpy(&f, &u, 4);
        return f;
}

/* Element i of a row stored as dt. */
static inline float mx_element_f32(const uint8_t *row, mx_dtype dt, uint64_t i) {
        uint16_t h;
        float f;
        switch (dt) {
        case MX_DTYPE_BF16:
                memcpy(&h, row + 2 * i, 2);
                return mx_bf16_to_f32(h);
        case MX_DTYPE_F16:
                memcpy(&h, row + 2 * i, 2);
                return mx_f16_to_f32(h);
        case MX_DTYPE_F32:
        default:
                memcpy(&f, row + 4 * i, 4);
                return f;
        }
}
