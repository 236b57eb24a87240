/* AVX2 kernels (with FMA and F16C): a pair of ymm accumulators holds the
 * 16 lanes of the reference order (kernels.h), lanes 0-7 and 8-15, so the
 * results equal the scalar and AVX-512 kernels' bit for bit. Tails are run
 * as one more full step over zero-padded copies. Compiled with -mavx2
 * -mfma -mf16c, called only where the CPU has them. */
#include <immintrin.h>
#include <string.h>

#include "tiles.h"

typedef struct v16 {
        __m256 lo, hi;
} v16;

static inline float reduce(v16 v) {
        __m256 a = _mm256_add_ps(v.lo, v.hi);
        __m128 b = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
        __m128 c = _mm_add_ps(b, _mm_movehl_ps(b, b));
        return _mm_cvtss_f32(_mm_add_ss(c, _mm_shuffle_ps(c, c, 1)));
}

static inline __m256 bf16x8(const void *p) {
        __m256i i = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p));
        return _mm256_castsi256_ps(_mm256_slli_epi32(i, 16));
}

static inline v16 load_bf16(const void *p) {
        return (v16){bf16x8(p), bf16x8((const uint8_t *)p + 16)};
}

static inline v16 load_f16(const void *p) {
        return (v16){_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p)),
                     _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((const uint8_t *)p + 16)))};
}

static inline v16 load_f32(const void *p) {
        return (v16){_mm256_loadu_ps(p), _mm256_loadu_ps((const float *)p + 8)};
}

static inline v16 fma16(v16 a, v16 b, v16 c) {
        return (v16){_mm256_fmadd_ps(a.lo, b.lo, c.lo), _mm256_fmadd_ps(a.hi, b.hi, c.hi)};
}

#define UNROLL _Pragma("GCC unroll 16")

/* An R x T tile; the tail (K % 16 columns) goes through padded copies. The
 * loops over R and T are unrolled so the accumulators stay in registers. */
#define DEFINE_TILE(NAME, R, T, LOAD, ESIZE)                                                       \
        static void NAME(const uint8_t *w, uint64_t row_bytes, const float *x, uint64_t ldx,       \
                         uint64_t K, float *out, uint64_t ldo, bool accumulate) {                  \
                v16 acc[R][T];                                                                     \
                UNROLL for (int r = 0; r < R; r++) UNROLL for (int t = 0; t < T; t++) acc[r][t] =  \
                        (v16){_mm256_setzero_ps(), _mm256_setzero_ps()};                           \
                uint64_t k = 0;                                                                    \
                for (; k + 16 <= K; k += 16) {                                                     \
                        v16 wv[R];                                                                 \
                        UNROLL for (int r = 0; r < R; r++) wv[r] = LOAD(w + r * row_bytes + k * ESIZE); \
                        UNROLL for (int t = 0; t < T; t++) {                                       \
                                v16 xv = load_f32(x + t * ldx + k);                                \
                                UNROLL for (int r = 0; r < R; r++) acc[r][t] =                     \
                                        fma16(wv[r], xv, acc[r][t]);                               \
                        }                                                                          \
                }                                                                                  \
                if (k < K) {                                                                       \
                        uint8_t wpad[16 * ESIZE];                                                  \
                        float xpad[16];                                                            \
                        for (int r = 0; r < R; r++) {                                              \
                                memset(wpad, 0, sizeof(wpad));                                     \
                                memcpy(wpad, w + r * row_bytes + k * ESIZE, (K - k) * ESIZE);      \
                                v16 wv = LOAD(wpad);                                               \
                                for (int t = 0; t < T; t++) {                                      \
                                        memset(xpad, 0, sizeof(xpad));                             \
                                        memcpy(xpad, x + t * ldx + k, (K - k) * 4);                \
                                        acc[r][t] = fma16(wv, load_f32(xpad), acc[r][t]);          \
                                }                                                                  \
                        }                                                                          \
                }                                                                                  \
                UNROLL for (int t = 0; t < T; t++) UNROLL for (int r = 0; r < R; r++) {            \
                        float s = reduce(acc[r][t]);                                               \
                        float *o = out + t * ldo + r;                                              \
                        *o = accumulate ? *o + s : s;                                              \
                }                                                                                  \
        }

#define DEFINE_TILES(SUFFIX, LOAD, ESIZE)                                                          \
        DEFINE_TILE(tile1x1_##SUFFIX, 1, 1, LOAD, ESIZE)                                           \
        DEFINE_TILE(tile1x2_##SUFFIX, 1, 2, LOAD, ESIZE)                                           \
        DEFINE_TILE(tile1x3_##SUFFIX, 1, 3, LOAD, ESIZE)                                           \
        DEFINE_TILE(tile2x2_##SUFFIX, 2, 2, LOAD, ESIZE)                                           \
        DEFINE_TILE(tile2x1_##SUFFIX, 2, 1, LOAD, ESIZE)                                           \
        static const mx_tiles tiles_##SUFFIX = {ESIZE,                                              \
                                                {NULL, tile1x1_##SUFFIX, tile1x2_##SUFFIX, tile1x3_##SUFFIX}, \
                                                tile2x2_##SUFFIX, tile2x1_##SUFFIX, 2, 2};

DEFINE_TILES(bf16, load_bf16, 2)
DEFINE_TILES(f16, load_f16, 2)
DEFINE_TILES(f32, load_f32, 4)

static void matmul_rows(const mx_matmul_args *a, uint64_t r0, uint64_t r1) {
        mx_tiles_rows(a->dtype == MX_DTYPE_BF16  ? &tiles_bf16
                      : a->dtype == MX_DTYPE_F16 ? &tiles_f16
                                                 : &tiles_f32,
                      a, r0, r1);
}

static float dot(const float *a, const float *b, uint64_t n) {
        v16 acc = {_mm256_setzero_ps(), _mm256_setzero_ps()};
        uint64_t k = 0;
        for (; k + 16 <= n; k += 16)
                acc = fma16(load_f32(a + k), load_f32(b + k), acc);
        if (k < n) {
                float pa[16] = {0}, pb[16] = {0};
                memcpy(pa, a + k, (n - k) * 4);
                memcpy(pb, b + k, (n - k) * 4);
                acc = fma16(load_f32(pa), load_f32(pb), acc);
        }
        return reduce(acc);
}

static void axpy(float a, const float *x, float *y, uint64_t n) {
        __m256 av = _mm256_set1_ps(a);
        uint64_t k = 0;
        for (; k + 8 <= n; k += 8)
                _mm256_storeu_ps(y + k, _mm256_fmadd_ps(av, _mm256_loadu_ps(x + k), _mm256_loadu_ps(y + k)));
        for (; k < n; k++)
                y[k] = _mm_cvtss_f32(_mm_fmadd_ss(_mm_set_ss(a), _mm_set_ss(x[k]), _mm_set_ss(y[k])));
}

const mx_kernels mx_kernels_avx2 = {MX_ISA_AVX2, matmul_rows, dot, axpy};
