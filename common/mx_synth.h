/* The synthetic model's weights: a value for every (tensor seed, index),
 * computed the same way on the host (CPU engine, tests) and on the device
 * (the CUDA backend fills its memory without a file). Uniform in
 * [-scale, scale), rounded to bf16 to nearest even; never all zeros. */
#pragma once

#include <stdint.h>

#ifdef __CUDACC__
#define MX_SYNTH_FN static inline __host__ __device__
#else
#define MX_SYNTH_FN static inline
#endif

/* splitmix64's finaliser: every input bit reaches every output bit. */
MX_SYNTH_FN uint64_t mx_synth_mix(uint64_t z) {
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
        return z ^ (z >> 31);
}

MX_SYNTH_FN uint16_t mx_synth_bf16(uint64_t seed, uint64_t i, float scale) {
        uint64_t h = mx_synth_mix(seed * 0x9e3779b97f4a7c15ull + i);
        float u = (float)(h >> 40) * (1.0f / 16777216.0f); /* [0, 1), exact */
        union {
                float f;
                uint32_t u;
        } v = {(2.0f * u - 1.0f) * scale};
        uint32_t rounding = 0x7fffu + ((v.u >> 16) & 1u);
        return (uint16_t)((v.u + rounding) >> 16);
}
