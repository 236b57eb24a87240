/* AVX-512 kernels (F, BW, VL): one zmm accumulator is exactly the 16 lanes
 * of the reference order (kernels.h), so results equal the scalar kernel's
 * bit for bit. Compiled with -mavx512f -mavx512bw -mavx512vl -mfma -mf16c,
 * called only where the CPU has them. */
#include <immintrin.h>

#include "tiles.h"

static inline float reduce(__m512 v) {
        __m256 lo = _mm512_castps512_ps256(v);
        __m256 hi = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1));
        __m256 a = _mm256_add_ps(lo, hi);
        __m128 b = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
        __m128 c = _mm_add_ps(b, _mm_movehl_ps(b, b));
        return _mm_cvtss_f32(_mm_add_ss(c, _mm_shuffle_ps(c, c, 1)));
}

static inline __m512 load_bf16(const void *p, __mmask16 m) {
        __m256i h = _mm256_maskz_loadu_epi16(m, p);
        return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

static inline __m512 load_f16(const void *p, __mmask16 m) {
        return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, p));
}

static inline __m512 load_f32(const void *p, __mmask16 m) {
        return _mm512_maskz_loadu_ps(m, p);
}

#define UNROLL _Pragma("GCC unroll 16")

/* An R x T tile: rows w[0..R) (row_bytes apart) against tokens x[0..T)
 * (ldx apart); full 16-wide steps, then one masked step for the tail. The
 * accumulators must live in registers: the loops over R and T are unrolled
 * completely. */
#define DEFINE_TILE(NAME, R, T, LOAD, ESIZE)                                                       \
        static inline __attribute__((always_inline)) void NAME##_step(                             \
                const uint8_t *w, uint64_t row_bytes, const float *x, uint64_t ldx, uint64_t k,    \
                __mmask16 m, __m512 acc[R][T]) {                                                   \
                __m512 wv[R];                                                                      \
                UNROLL for (int r = 0; r < R; r++) wv[r] = LOAD(w + r * row_bytes + k * ESIZE, m); \
                UNROLL for (int t = 0; t < T; t++) {                                               \
                        __m512 xv = _mm512_maskz_loadu_ps(m, x + t * ldx + k);                     \
                        UNROLL for (int r = 0; r < R; r++) acc[r][t] =                             \
                                _mm512_fmadd_ps(wv[r], xv, acc[r][t]);                             \
                }                                                                                  \
        }                                                                                          \
        static void NAME(const uint8_t *w, uint64_t row_bytes, const float *x, uint64_t ldx,       \
                         uint64_t K, float *out, uint64_t ldo, bool accumulate) {                  \
                __m512 acc[R][T];                                                                  \
                UNROLL for (int r = 0; r < R; r++) UNROLL for (int t = 0; t < T; t++) acc[r][t] =  \
                        _mm512_setzero_ps();                                                       \
                uint64_t k = 0;                                                                    \
                for (; k + 16 <= K; k += 16)                                                       \
                        NAME##_step(w, row_bytes, x, ldx, k, 0xffff, acc);                         \
                if (k < K)                                                                         \
                        NAME##_step(w, row_bytes, x, ldx, k, (__mmask16)((1u << (K - k)) - 1), acc); \
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
        DEFINE_TILE(tile4x6_##SUFFIX, 4, 6, LOAD, ESIZE)                                           \
        DEFINE_TILE(tile4x1_##SUFFIX, 4, 1, LOAD, ESIZE)                                           \
        static const mx_tiles tiles_##SUFFIX = {ESIZE,                                              \
                                                {NULL, tile1x1_##SUFFIX, tile1x2_##SUFFIX, tile1x3_##SUFFIX}, \
                                                tile4x6_##SUFFIX, tile4x1_##SUFFIX, 4, 6};

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
        __m512 acc = _mm512_setzero_ps();
        for (uint64_t k = 0; k < n; k += 16) {
                __mmask16 m = n - k >= 16 ? 0xffff : (__mmask16)((1u << (n - k)) - 1);
                acc = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, a + k), _mm512_maskz_loadu_ps(m, b + k), acc);
        }
        return reduce(acc);
}

static void axpy(float a, const float *x, float *y, uint64_t n) {
        __m512 av = _mm512_set1_ps(a);
        for (uint64_t k = 0; k < n; k += 16) {
                __mmask16 m = n - k >= 16 ? 0xffff : (__mmask16)((1u << (n - k)) - 1);
                __m512 r = _mm512_fmadd_ps(av, _mm512_maskz_loadu_ps(m, x + k), _mm512_maskz_loadu_ps(m, y + k));
                _mm512_mask_storeu_ps(y + k, m, r);
        }
}

const mx_kernels mx_kernels_avx512 = {MX_ISA_AVX512, matmul_rows, dot, axpy};
