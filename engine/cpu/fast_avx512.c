/* The fast path on AVX-512: fast_tiles.h's tiles over simd_avx512.h's
 * vector layer, with their shapes here. Called only where the CPU has the
 * instructions (isa.c). */
#include "simd_avx512.h"

#if MX_VNNI
#define BF_R 4
#define BF_T 6
#else
#define BF_R 4
#define BF_T 5
#endif
#define Q32_R 4
#define Q4_0_R 8
#define Q4_K_R 8
#define Q6_K_R 8
#define Q32_T 4
#define K_R 2
#define K_T 6
#define K_D 4
#define BF_D 4
#define FAST_TILES MX_SYM(mx_fast_tiles_avx512)

#include "fast_tiles.h"
