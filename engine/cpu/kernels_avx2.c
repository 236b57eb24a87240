/* AVX2 kernels (with FMA and F16C) of the f32 path: a pair of ymm
 * accumulators holds the 16 lanes of the reference order (kernels.h),
 * lanes 0-7 and 8-15, so the results equal the scalar and AVX-512 kernels'
 * bit for bit. Tails are run as one more full step over zero-padded
 * copies; block weights are decoded a block at a time into L1 by quant.h's
 * decoders (tiles.h's DEFINE_QTILE over simd_avx2.h). The fast path is
 * fast_avx2.c's. Compiled with -mavx2 -mfma
 * -mf16c (and, for the _vnni variant, -mavxvnni), called only where the
 * CPU has them. */
#include "quant.h"
#include "simd_avx2.h"

static inline __m256 bf16x8(const void *p) {
        __m256i i = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p));
        return _mm256_castsi256_ps(_mm256_slli_epi32(i, 16));
}

static inline vf load_bf16(const void *p) {
        return (vf){bf16x8(p), bf16x8((const uint8_t *)p + 16)};
}

static inline vf load_f16(const void *p) {
        return (vf){_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p)),
                    _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((const uint8_t *)p + 16)))};
}

static inline vf load_f32(const void *p) {
        return vf_load(p);
}

/* An R x T tile of a float type (ESIZE bytes a weight); the tail (K % 16
 * columns) goes through padded copies. The loops over R and T are
 * unrolled so the accumulators stay in registers. */
/* (MX_KERNEL_TILES passes LOAD, ESIZE as one argument, MX_LOAD_BF16 and so on.) */
#define DEFINE_TILE(NAME, LOAD, ESIZE, R, T)                                                      \
        static void NAME(const uint8_t *w, uint64_t row_bytes, const uint8_t *xb, uint64_t ldxb,   \
                         uint64_t K, float *out, uint64_t ldo, bool accumulate) {                  \
                const float *x = (const float *)xb;                                                \
                uint64_t ldx = ldxb / sizeof(float), k = 0;                                        \
                vf acc[R][T];                                                                     \
                UNROLL for (int r = 0; r < R; r++) UNROLL for (int t = 0; t < T; t++) acc[r][t] =  \
                        vf_zero();                           \
                for (; k + 16 <= K; k += 16) {                                                     \
                        vf wv[R];                                                                 \
                        UNROLL for (int r = 0; r < R; r++) wv[r] = LOAD(w + r * row_bytes + k * ESIZE); \
                        UNROLL for (int t = 0; t < T; t++) {                                       \
                                vf xv = load_f32(x + t * ldx + k);                                \
                                UNROLL for (int r = 0; r < R; r++) acc[r][t] =                     \
                                        vf_fma(wv[r], xv, acc[r][t]);                               \
                        }                                                                          \
                }                                                                                  \
                if (k < K) {                                                                       \
                        uint8_t wpad[16 * ESIZE];                                                  \
                        float xpad[16];                                                            \
                        for (int r = 0; r < R; r++) {                                              \
                                memset(wpad, 0, sizeof(wpad));                                     \
                                memcpy(wpad, w + r * row_bytes + k * ESIZE, (K - k) * ESIZE);      \
                                vf wv = LOAD(wpad);                                               \
                                for (int t = 0; t < T; t++) {                                      \
                                        memset(xpad, 0, sizeof(xpad));                             \
                                        memcpy(xpad, x + t * ldx + k, (K - k) * 4);                \
                                        acc[r][t] = vf_fma(wv, load_f32(xpad), acc[r][t]);          \
                                }                                                                  \
                        }                                                                          \
                }                                                                                  \
                UNROLL for (int t = 0; t < T; t++) UNROLL for (int r = 0; r < R; r++)              \
                        mx_tile_put(out + t * ldo + r, vf_reduce(acc[r][t]), accumulate);             \
        }

MX_KERNEL_TILES(2, 2, 1, MX_SYM(mx_fast_tiles_avx2))

static float dot(const float *a, const float *b, uint64_t n) {
        vf acc = {_mm256_setzero_ps(), _mm256_setzero_ps()};
        uint64_t k = 0;
        for (; k + 16 <= n; k += 16)
                acc = vf_fma(load_f32(a + k), load_f32(b + k), acc);
        if (k < n) {
                float pa[16] = {0}, pb[16] = {0};
                memcpy(pa, a + k, (n - k) * 4);
                memcpy(pb, b + k, (n - k) * 4);
                acc = vf_fma(load_f32(pa), load_f32(pb), acc);
        }
        return vf_reduce(acc);
}

static void axpy(float a, const float *x, float *y, uint64_t n) {
        __m256 av = _mm256_set1_ps(a);
        uint64_t k = 0;
        for (; k + 8 <= n; k += 8)
                _mm256_storeu_ps(y + k, _mm256_fmadd_ps(av, _mm256_loadu_ps(x + k), _mm256_loadu_ps(y + k)));
        for (; k < n; k++)
                y[k] = _mm_cvtss_f32(_mm_fmadd_ss(_mm_set_ss(a), _mm_set_ss(x[k]), _mm_set_ss(y[k])));
}

const mx_kernels MX_SYM(mx_kernels_avx2) = {MX_VNNI ? MX_ISA_AVX2_VNNI : MX_ISA_AVX2, matmul_rows, dot, axpy};
