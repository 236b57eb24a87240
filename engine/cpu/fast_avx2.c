/* The fast path on AVX2: fast_tiles.h's tiles over simd_avx2.h's vector
 * layer, with their shapes here (sixteen ymm registers hold less than
 * AVX-512's thirty-two zmm). Called only where the CPU has the
 * instructions (isa.c). */
#include "simd_avx2.h"

#define Q32_R 2
#define Q4_0_R 2
#define Q4_K_R 2
#define Q6_K_R 2
#define Q32_T 2
#define K_R 1
#define K_T 2
#define BF_R 2
#define BF_T 2
#define K_D 1
#define BF_D 1
#define FAST_TILES MX_SYM(mx_fast_tiles_avx2)

#include "fast_tiles.h"
