/* AVX-512 kernels (F, BW, VL) of the f32 path: one zmm accumulator is
 * exactly the 16 lanes of the reference order (kernels.h), so results
 * equal the scalar kernel's bit for bit. Block weights are decoded a block
 * at a time into L1 by quant.h's decoders (the same floats as everywhere),
 * then multiplied like fp32 weights (tiles.h's DEFINE_QTILE over
 * simd_avx512.h). The fast path is fast_avx512.c's.
 * Compiled with -mavx512f -mavx512bw -mavx512vl -mfma -mf16c (and, for
 * the _vnni variant, the dot-product instructions), called only where the
 * CPU has them. */
#include <math.h>

#include "quant.h"
#include "simd_avx512.h"
#include "simd_exp.h"

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

/* An R x T tile of a float type (ESIZE bytes a weight): full 16-wide
 * steps, then one masked step for the tail. The accumulators must live in
 * registers: the loops over R and T are unrolled completely. */
/* (MX_KERNEL_TILES passes LOAD, ESIZE as one argument, MX_LOAD_BF16 and so on.) */
#define DEFINE_TILE(NAME, LOAD, ESIZE, R, T)                                                      \
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
        static void NAME(const uint8_t *w, uint64_t row_bytes, const uint8_t *xb, uint64_t ldxb,   \
                         uint64_t K, float *out, uint64_t ldo, bool accumulate) {                  \
                const float *x = (const float *)xb;                                                \
                uint64_t ldx = ldxb / sizeof(float), k = 0;                                        \
                __m512 acc[R][T];                                                                  \
                UNROLL for (int r = 0; r < R; r++) UNROLL for (int t = 0; t < T; t++) acc[r][t] =  \
                        _mm512_setzero_ps();                                                       \
                for (; k + 16 <= K; k += 16)                                                       \
                        NAME##_step(w, row_bytes, x, ldx, k, 0xffff, acc);                         \
                if (k < K)                                                                         \
                        NAME##_step(w, row_bytes, x, ldx, k, (__mmask16)((1u << (K - k)) - 1), acc); \
                UNROLL for (int t = 0; t < T; t++) UNROLL for (int r = 0; r < R; r++)              \
                        mx_tile_put(out + t * ldo + r, vf_reduce(acc[r][t]), accumulate);             \
        }

MX_KERNEL_TILES(4, 6, 4, MX_SYM(mx_fast_tiles_avx512))

static float dot(const float *a, const float *b, uint64_t n) {
        __m512 acc = _mm512_setzero_ps();
        for (uint64_t k = 0; k < n; k += 16) {
                __mmask16 m = n - k >= 16 ? 0xffff : (__mmask16)((1u << (n - k)) - 1);
                acc = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, a + k), _mm512_maskz_loadu_ps(m, b + k), acc);
        }
        return vf_reduce(acc);
}

static void axpy(float a, const float *x, float *y, uint64_t n) {
        __m512 av = _mm512_set1_ps(a);
        for (uint64_t k = 0; k < n; k += 16) {
                __mmask16 m = n - k >= 16 ? 0xffff : (__mmask16)((1u << (n - k)) - 1);
                __m512 r = _mm512_fmadd_ps(av, _mm512_maskz_loadu_ps(m, x + k), _mm512_maskz_loadu_ps(m, y + k));
                _mm512_mask_storeu_ps(y + k, m, r);
        }
}

/* ---- attention over KV rows: fp32, or bf16 widened as it loads ------------------- */

static inline __mmask16 tail_mask(uint64_t d, uint64_t n) {
        return d >= n ? 0 : n - d >= 16 ? 0xffff : (__mmask16)((1u << (n - d)) - 1);
}

static inline __m512 kv_load(const void *p, bool bf16, uint64_t i, __mmask16 m) {
        return bf16 ? load_bf16((const uint16_t *)p + i, m) : _mm512_maskz_loadu_ps(m, (const float *)p + i);
}

/* Four keys at once (four independent chains); q stays in L1. */
static inline __attribute__((always_inline)) void scores_of(const float *q, const void *k, uint64_t step, bool bf16,
                                                            uint32_t n, uint32_t hd, float scale, float *out) {
        uint32_t i = 0;
        for (; i + 4 <= n; i += 4) {
                __m512 acc[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
                for (uint64_t d = 0; d < hd; d += 16) {
                        __mmask16 m = tail_mask(d, hd);
                        __m512 qv = _mm512_maskz_loadu_ps(m, q + d);
                        UNROLL for (int j = 0; j < 4; j++) acc[j] =
                                _mm512_fmadd_ps(qv, kv_load(k, bf16, (i + j) * step + d, m), acc[j]);
                }
                UNROLL for (int j = 0; j < 4; j++) out[i + j] = vf_reduce(acc[j]) / scale;
        }
        for (; i < n; i++) {
                __m512 acc = _mm512_setzero_ps();
                for (uint64_t d = 0; d < hd; d += 16) {
                        __mmask16 m = tail_mask(d, hd);
                        acc = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, q + d), kv_load(k, bf16, i * step + d, m), acc);
                }
                out[i] = vf_reduce(acc) / scale;
        }
}

/* Lane j: mx_reduce16(v[j]). Each step of the tree adds the halves of
 * two (then four, eight, sixteen) accumulators in one instruction instead
 * of one accumulator's; the last leaves lane 4t + e with v[t + 4e]'s sum. */
static inline __m512 reduce16x16(const __m512 v[16]) {
        __m512 a[8], b[4], c[2];
        UNROLL for (int p = 0; p < 8; p++) a[p] = _mm512_add_ps(_mm512_shuffle_f32x4(v[2 * p], v[2 * p + 1], 0x44),
                                                                 _mm512_shuffle_f32x4(v[2 * p], v[2 * p + 1], 0xee));
        UNROLL for (int p = 0; p < 4; p++) b[p] = _mm512_add_ps(_mm512_shuffle_f32x4(a[2 * p], a[2 * p + 1], 0x88),
                                                                 _mm512_shuffle_f32x4(a[2 * p], a[2 * p + 1], 0xdd));
        UNROLL for (int p = 0; p < 2; p++) c[p] = _mm512_add_ps(_mm512_shuffle_ps(b[2 * p], b[2 * p + 1], 0x44),
                                                                 _mm512_shuffle_ps(b[2 * p], b[2 * p + 1], 0xee));
        __m512 z = _mm512_add_ps(_mm512_shuffle_ps(c[0], c[1], 0x88), _mm512_shuffle_ps(c[0], c[1], 0xdd));
        return _mm512_permutexvar_ps(_mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15), z);
}

/* Four heads by four keys: each key is loaded (and widened) once for the
 * four heads, and the 16 sums are reduced together. */
static inline __attribute__((always_inline)) void scores4x4(const float *q, const void *k, uint64_t step, bool bf16,
                                                            uint32_t hd, float scale, float *out, uint64_t ld) {
        __m512 acc[16];
        UNROLL for (int j = 0; j < 16; j++) acc[j] = _mm512_setzero_ps();
        for (uint64_t d = 0; d < hd; d += 16) {
                __mmask16 m = tail_mask(d, hd);
                __m512 kv[4];
                UNROLL for (int i = 0; i < 4; i++) kv[i] = kv_load(k, bf16, i * step + d, m);
                UNROLL for (int h = 0; h < 4; h++) {
                        __m512 qv = _mm512_maskz_loadu_ps(m, q + h * hd + d);
                        UNROLL for (int i = 0; i < 4; i++) acc[4 * h + i] = _mm512_fmadd_ps(qv, kv[i], acc[4 * h + i]);
                }
        }
        __m512 z = _mm512_div_ps(reduce16x16(acc), _mm512_set1_ps(scale));
        _mm_storeu_ps(out, _mm512_extractf32x4_ps(z, 0));
        _mm_storeu_ps(out + ld, _mm512_extractf32x4_ps(z, 1));
        _mm_storeu_ps(out + 2 * ld, _mm512_extractf32x4_ps(z, 2));
        _mm_storeu_ps(out + 3 * ld, _mm512_extractf32x4_ps(z, 3));
}

MX_DEFINE_SCORES(4, scores4x4)

/* 128 outputs per pass stay in registers while the rows go by. */
static inline __attribute__((always_inline)) void mix_of(const float *w, const void *v, uint64_t step, bool bf16,
                                                         uint32_t n, uint32_t hd, float *o) {
        for (uint64_t d0 = 0; d0 < hd; d0 += 128) {
                __mmask16 m[8];
                __m512 acc[8];
                UNROLL for (int j = 0; j < 8; j++) {
                        m[j] = tail_mask(d0 + 16 * j, hd);
                        acc[j] = _mm512_maskz_loadu_ps(m[j], o + d0 + 16 * j);
                }
                for (uint32_t i = 0; i < n; i++) {
                        __m512 wv = _mm512_set1_ps(w[i]);
                        UNROLL for (int j = 0; j < 8; j++) acc[j] =
                                _mm512_fmadd_ps(wv, kv_load(v, bf16, i * step + d0 + 16 * j, m[j]), acc[j]);
                }
                UNROLL for (int j = 0; j < 8; j++) _mm512_mask_storeu_ps(o + d0 + 16 * j, m[j], acc[j]);
        }
}

/* Four heads, 64 outputs each per pass: each row is loaded (and widened)
 * once for the four. */
static inline __attribute__((always_inline)) void mix4(const float *w, uint64_t ld, const void *v, uint64_t step,
                                                       bool bf16, uint32_t n, uint32_t hd, float *o) {
        for (uint64_t d0 = 0; d0 < hd; d0 += 64) {
                __mmask16 m[4];
                __m512 acc[4][4];
                UNROLL for (int j = 0; j < 4; j++) {
                        m[j] = tail_mask(d0 + 16 * j, hd);
                        UNROLL for (int h = 0; h < 4; h++) acc[h][j] =
                                _mm512_maskz_loadu_ps(m[j], o + h * hd + d0 + 16 * j);
                }
                for (uint32_t i = 0; i < n; i++) {
                        __m512 vv[4];
                        UNROLL for (int j = 0; j < 4; j++) vv[j] = kv_load(v, bf16, i * step + d0 + 16 * j, m[j]);
                        UNROLL for (int h = 0; h < 4; h++) {
                                __m512 wv = _mm512_set1_ps(w[h * ld + i]);
                                UNROLL for (int j = 0; j < 4; j++) acc[h][j] = _mm512_fmadd_ps(wv, vv[j], acc[h][j]);
                        }
                }
                UNROLL for (int h = 0; h < 4; h++) UNROLL for (int j = 0; j < 4; j++)
                        _mm512_mask_storeu_ps(o + h * hd + d0 + 16 * j, m[j], acc[h][j]);
        }
}

MX_DEFINE_MIX(4, mix4)

/* One zmm is the sum's 16 lanes; the maximum is exact in any order
 * (vmaxps, like the scalar comparison, keeps the running maximum over a
 * NaN). */
static void softmax(float *p, uint32_t n) {
        __m512 mv = _mm512_set1_ps(-INFINITY), acc = _mm512_setzero_ps();
        for (uint32_t i = 0; i < n; i += 16)
                mv = _mm512_max_ps(_mm512_mask_loadu_ps(mv, tail_mask(i, n), p + i), mv);
        __m512 m = _mm512_set1_ps(_mm512_reduce_max_ps(mv));
        for (uint32_t i = 0; i < n; i += 16) {
                __mmask16 k = tail_mask(i, n);
                __m512 e = vf_exp(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, p + i), m));
                acc = _mm512_mask_add_ps(acc, k, acc, e);
                _mm512_mask_storeu_ps(p + i, k, e);
        }
        __m512 sum = _mm512_set1_ps(vf_reduce(acc));
        for (uint32_t i = 0; i < n; i += 16) {
                __mmask16 k = tail_mask(i, n);
                _mm512_mask_storeu_ps(p + i, k, _mm512_div_ps(_mm512_maskz_loadu_ps(k, p + i), sum));
        }
}

const mx_kernels MX_SYM(mx_kernels_avx512) = {MX_VNNI ? MX_ISA_AVX512_VNNI : MX_ISA_AVX512, matmul_rows, dot, axpy,
                                              scores, mix, softmax};
