/* bfloat16 <-> float: private to the engine. */
#pragma once

#include <stdint.h>
#include <string.h>

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
