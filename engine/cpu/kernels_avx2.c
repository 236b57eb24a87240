/* AVX2 kernels (with FMA and F16C) of the f32 path: a pair of ymm
 * accumulators holds the 16 lanes of the reference order (kernels.h),
 * lanes 0-7 and 8-15, so the results equal the scalar and AVX-512 kernels'
 * bit for bit. Tails are run as one more full step over zero-padded
 * copies; block weights are decoded a block at a time into L1 by quant.h's
 * decoders. The fast path is fast_avx2.c's. Compiled with -mavx2 -mfma
 * -mf16c (and, for the _vnni variant, -mavxvnni), called only where the
 * CPU has them. */
#include <immintrin.h>
#include <string.h>

#include "quant.h"
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

/* An R x T tile of a float type (ESIZE bytes a weight); the tail (K % 16
 * columns) goes through padded copies. The loops over R and T are
 * unrolled so the accumulators stay in registers. */
/* (MX_DEFINE_TILES passes LOAD, ESIZE as one argument, BF16 and so on.) */
#define DEFINE_TILE(NAME, LOAD, ESIZE, R, T)                                                      \
        static void NAME(const uint8_t *w, uint64_t row_bytes, const uint8_t *xb, uint64_t ldxb,   \
                         uint64_t K, float *out, uint64_t ldo, bool accumulate) {                  \
                const float *x = (const float *)xb;                                                \
                uint64_t ldx = ldxb / sizeof(float), k = 0;                                        \
                v16 acc[R][T];                                                                     \
                UNROLL for (int r = 0; r < R; r++) UNROLL for (int t = 0; t < T; t++) acc[r][t] =  \
                        (v16){_mm256_setzero_ps(), _mm256_setzero_ps()};                           \
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
                UNROLL for (int t = 0; t < T; t++) UNROLL for (int r = 0; r < R; r++)              \
                        mx_tile_put(out + t * ldo + r, reduce(acc[r][t]), accumulate);             \
        }

/* The same for a block type: each row's block decoded into L1 (the values
 * mx_dequant_row gives), then 16-wide steps over it. Rows are whole
 * blocks, so there is no tail. */
#define DEFINE_QTILE(NAME, DTYPE, R, T)                                                            \
        static void NAME(const uint8_t *w, uint64_t row_bytes, const uint8_t *xb, uint64_t ldxb,   \
                         uint64_t K, float *out, uint64_t ldo, bool accumulate) {                  \
                const float *x = (const float *)xb;                                                \
                const uint64_t qk = mx_dtype_block_elems(DTYPE), bytes = mx_dtype_block_bytes(DTYPE); \
                uint64_t ldx = ldxb / sizeof(float);                                               \
                float wbuf[R][MX_QK_K] __attribute__((aligned(32)));                               \
                v16 acc[R][T];                                                                     \
                UNROLL for (int r = 0; r < R; r++) UNROLL for (int t = 0; t < T; t++) acc[r][t] =  \
                        (v16){_mm256_setzero_ps(), _mm256_setzero_ps()};                           \
                for (uint64_t b = 0; b < K / qk; b++) {                                            \
                        UNROLL for (int r = 0; r < R; r++)                                         \
                                mx_dequant_block(DTYPE, w + r * row_bytes + b * bytes, wbuf[r]);   \
                        for (uint64_t k = 0; k < qk; k += 16) {                                    \
                                v16 wv[R];                                                         \
                                UNROLL for (int r = 0; r < R; r++) wv[r] = load_f32(wbuf[r] + k);  \
                                UNROLL for (int t = 0; t < T; t++) {                               \
                                        v16 xv = load_f32(x + t * ldx + b * qk + k);               \
                                        UNROLL for (int r = 0; r < R; r++) acc[r][t] =             \
                                                fma16(wv[r], xv, acc[r][t]);                       \
                                }                                                                  \
                        }                                                                          \
                }                                                                                  \
                UNROLL for (int t = 0; t < T; t++) UNROLL for (int r = 0; r < R; r++)              \
                        mx_tile_put(out + t * ldo + r, reduce(acc[r][t]), accumulate);             \
        }

#define BF16 load_bf16, 2
#define F16 load_f16, 2
#define F32 load_f32, 4
MX_DEFINE_TILES(tiles_bf16, DEFINE_TILE, BF16, 2, 2, 1)
MX_DEFINE_TILES(tiles_f16, DEFINE_TILE, F16, 2, 2, 1)
MX_DEFINE_TILES(tiles_f32, DEFINE_TILE, F32, 2, 2, 1)
MX_DEFINE_TILES(tiles_q8_0, DEFINE_QTILE, MX_DTYPE_Q8_0, 2, 2, 1)
MX_DEFINE_TILES(tiles_q4_0, DEFINE_QTILE, MX_DTYPE_Q4_0, 2, 2, 1)
MX_DEFINE_TILES(tiles_q4_k, DEFINE_QTILE, MX_DTYPE_Q4_K, 2, 2, 1)
MX_DEFINE_TILES(tiles_q5_k, DEFINE_QTILE, MX_DTYPE_Q5_K, 2, 2, 1)
MX_DEFINE_TILES(tiles_q6_k, DEFINE_QTILE, MX_DTYPE_Q6_K, 2, 2, 1)

static const mx_tiles *const f32_tiles[MX_DTYPE_COUNT] = {
        [MX_DTYPE_F32] = &tiles_f32,   [MX_DTYPE_F16] = &tiles_f16,   [MX_DTYPE_BF16] = &tiles_bf16,
        [MX_DTYPE_Q8_0] = &tiles_q8_0, [MX_DTYPE_Q4_0] = &tiles_q4_0, [MX_DTYPE_Q4_K] = &tiles_q4_k,
        [MX_DTYPE_Q5_K] = &tiles_q5_k, [MX_DTYPE_Q6_K] = &tiles_q6_k,
};

static void matmul_rows(const mx_matmul_args *a, uint64_t r0, uint64_t r1) {
        mx_tiles_rows(a->xq ? MX_SYM(mx_fast_tiles_avx2)(a->dtype) : f32_tiles[a->dtype], a, r0, r1);
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

const mx_kernels MX_SYM(mx_kernels_avx2) = {MX_VNNI ? MX_ISA_AVX2_VNNI : MX_ISA_AVX2, matmul_rows, dot, axpy};
