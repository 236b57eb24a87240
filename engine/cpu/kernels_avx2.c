/* AVX2 kernels (with FMA and F16C) of the f32 path: a pair of ymm
 * accumulators holds the 16 lanes of the reference order (kernels.h),
 * lanes 0-7 and 8-15, so the results equal the scalar and AVX-512 kernels'
 * bit for bit. Tails are run as one more full step over zero-padded
 * copies; block weights are decoded a block at a time into L1 by quant.h's
 * decoders (tiles.h's DEFINE_QTILE over simd_avx2.h). The fast path is
 * fast_avx2.c's. Compiled with -mavx2 -mfma
 * -mf16c (and, for the _vnni variant, -mavxvnni), called only where the
 * CPU has them. */
#include <math.h>

#include "quant.h"
#include "simd_avx2.h"
#include "simd_exp.h"

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

/* ---- attention over KV rows: fp32, or bf16 widened as it loads ------------------- */

/* 16 values of a KV row from element d on, zeros past n. */
static inline vf kv_load16(const void *row, bool bf16, uint64_t d, uint64_t n) {
        size_t es = bf16 ? 2 : 4;
        const uint8_t *p = (const uint8_t *)row + d * es;
        if (n - d < 16) {
                _Alignas(32) uint8_t pad[64] = {0};
                memcpy(pad, p, (n - d) * es);
                return bf16 ? load_bf16(pad) : load_f32((const float *)pad);
        }
        return bf16 ? load_bf16(p) : load_f32((const float *)p);
}

static inline vf q_load16(const float *q, uint64_t d, uint64_t n) {
        return kv_load16(q, false, d, n);
}

static inline __attribute__((always_inline)) void scores_of(const float *q, const void *k, uint64_t step, bool bf16,
                                                            uint32_t n, uint32_t hd, float scale, float *out) {
        size_t es = bf16 ? 2 : 4;
        uint32_t i = 0;
        for (; i + 2 <= n; i += 2) {
                const uint8_t *k0 = (const uint8_t *)k + i * step * es, *k1 = k0 + step * es;
                vf a0 = vf_zero(), a1 = vf_zero();
                for (uint64_t d = 0; d < hd; d += 16) {
                        vf qv = q_load16(q, d, hd);
                        a0 = vf_fma(qv, kv_load16(k0, bf16, d, hd), a0);
                        a1 = vf_fma(qv, kv_load16(k1, bf16, d, hd), a1);
                }
                out[i] = vf_reduce(a0) / scale;
                out[i + 1] = vf_reduce(a1) / scale;
        }
        for (; i < n; i++) {
                const uint8_t *k0 = (const uint8_t *)k + i * step * es;
                vf a0 = vf_zero();
                for (uint64_t d = 0; d < hd; d += 16)
                        a0 = vf_fma(q_load16(q, d, hd), kv_load16(k0, bf16, d, hd), a0);
                out[i] = vf_reduce(a0) / scale;
        }
}

/* Lane j: mx_reduce16(v[j]). Each step of the tree adds the halves of
 * two (then four) accumulators in one instruction instead of one's. */
static inline __m128 reduce4(const vf v[4]) {
        __m256 a[4];
        UNROLL for (int p = 0; p < 4; p++) a[p] = _mm256_add_ps(v[p].lo, v[p].hi);
        __m256 b0 = _mm256_add_ps(_mm256_permute2f128_ps(a[0], a[1], 0x20), _mm256_permute2f128_ps(a[0], a[1], 0x31));
        __m256 b1 = _mm256_add_ps(_mm256_permute2f128_ps(a[2], a[3], 0x20), _mm256_permute2f128_ps(a[2], a[3], 0x31));
        __m256 c = _mm256_add_ps(_mm256_shuffle_ps(b0, b1, 0x44), _mm256_shuffle_ps(b0, b1, 0xee));
        __m256 z = _mm256_add_ps(_mm256_shuffle_ps(c, c, 0x88), _mm256_shuffle_ps(c, c, 0xdd));
        return _mm_unpacklo_ps(_mm256_castps256_ps128(z), _mm256_extractf128_ps(z, 1));
}

/* Two heads by two keys: each key is loaded (and widened) once for both
 * heads, and the four sums are reduced together. */
static inline __attribute__((always_inline)) void scores2x2(const float *q, const void *k, uint64_t step, bool bf16,
                                                            uint32_t hd, float scale, float *out, uint64_t ld) {
        size_t es = bf16 ? 2 : 4;
        const uint8_t *k0 = k, *k1 = k0 + step * es;
        vf acc[4] = {vf_zero(), vf_zero(), vf_zero(), vf_zero()};
        for (uint64_t d = 0; d < hd; d += 16) {
                vf kv0 = kv_load16(k0, bf16, d, hd), kv1 = kv_load16(k1, bf16, d, hd);
                UNROLL for (int h = 0; h < 2; h++) {
                        vf qv = q_load16(q + h * hd, d, hd);
                        acc[2 * h] = vf_fma(qv, kv0, acc[2 * h]);
                        acc[2 * h + 1] = vf_fma(qv, kv1, acc[2 * h + 1]);
                }
        }
        __m128 z = _mm_div_ps(reduce4(acc), _mm_set1_ps(scale));
        _mm_storel_pi((__m64 *)out, z);
        _mm_storeh_pi((__m64 *)(out + ld), z);
}

MX_DEFINE_SCORES(2, scores2x2)

/* 32 outputs per pass stay in registers while the rows go by; the last
 * few (hd % 16) take padded loads and write back only what is there. */
static inline __attribute__((always_inline)) void mix_of(const float *w, const void *v, uint64_t step, bool bf16,
                                                         uint32_t n, uint32_t hd, float *o) {
        size_t es = bf16 ? 2 : 4;
        for (uint64_t d0 = 0; d0 < hd; d0 += 32) {
                vf acc[2];
                _Alignas(32) float out[32] = {0};
                memcpy(out, o + d0, (hd - d0 < 32 ? hd - d0 : 32) * 4);
                UNROLL for (int j = 0; j < 2; j++) acc[j] = load_f32(out + 16 * j);
                for (uint32_t i = 0; i < n; i++) {
                        vf wv = vf_set1(w[i]);
                        const uint8_t *row = (const uint8_t *)v + i * step * es;
                        UNROLL for (int j = 0; j < 2; j++) if (d0 + 16 * j < hd) acc[j] =
                                vf_fma(wv, kv_load16(row, bf16, d0 + 16 * j, hd), acc[j]);
                }
                UNROLL for (int j = 0; j < 2; j++) {
                        _mm256_store_ps(out + 16 * j, acc[j].lo);
                        _mm256_store_ps(out + 16 * j + 8, acc[j].hi);
                }
                memcpy(o + d0, out, (hd - d0 < 32 ? hd - d0 : 32) * 4);
        }
}

/* Two heads, 32 outputs each per pass: each row is loaded (and widened)
 * once for both. */
static inline __attribute__((always_inline)) void mix2(const float *w, uint64_t ld, const void *v, uint64_t step,
                                                       bool bf16, uint32_t n, uint32_t hd, float *o) {
        size_t es = bf16 ? 2 : 4;
        for (uint64_t d0 = 0; d0 < hd; d0 += 32) {
                size_t len = (hd - d0 < 32 ? hd - d0 : 32) * 4;
                vf acc[2][2];
                _Alignas(32) float out[2][32] = {{0}};
                UNROLL for (int h = 0; h < 2; h++) {
                        memcpy(out[h], o + h * hd + d0, len);
                        UNROLL for (int j = 0; j < 2; j++) acc[h][j] = load_f32(out[h] + 16 * j);
                }
                for (uint32_t i = 0; i < n; i++) {
                        const uint8_t *row = (const uint8_t *)v + i * step * es;
                        vf vv[2] = {kv_load16(row, bf16, d0, hd), vf_zero()};
                        if (d0 + 16 < hd)
                                vv[1] = kv_load16(row, bf16, d0 + 16, hd);
                        UNROLL for (int h = 0; h < 2; h++) {
                                vf wv = vf_set1(w[h * ld + i]);
                                UNROLL for (int j = 0; j < 2; j++) acc[h][j] = vf_fma(wv, vv[j], acc[h][j]);
                        }
                }
                UNROLL for (int h = 0; h < 2; h++) {
                        UNROLL for (int j = 0; j < 2; j++) {
                                _mm256_store_ps(out[h] + 16 * j, acc[h][j].lo);
                                _mm256_store_ps(out[h] + 16 * j + 8, acc[h][j].hi);
                        }
                        memcpy(o + h * hd + d0, out[h], len);
                }
        }
}

MX_DEFINE_MIX(2, mix2)

/* 16 scores from p + i: the tail padded with `pad`. */
static inline vf load16_or(const float *p, uint32_t i, uint32_t n, float pad) {
        if (n - i >= 16)
                return load_f32(p + i);
        _Alignas(32) float buf[16];
        for (int j = 0; j < 16; j++)
                buf[j] = i + (uint32_t)j < n ? p[i + j] : pad;
        return load_f32(buf);
}

/* A pair of ymm is the sum's 16 lanes (lanes past n add +0, which leaves
 * them as they are); the maximum is exact in any order (vmaxps, like the
 * scalar comparison, keeps the running maximum over a NaN). */
static void softmax(float *p, uint32_t n) {
        vf mv = vf_set1(-INFINITY), acc = vf_zero();
        for (uint32_t i = 0; i < n; i += 16) {
                vf x = load16_or(p, i, n, -INFINITY);
                mv = (vf){_mm256_max_ps(x.lo, mv.lo), _mm256_max_ps(x.hi, mv.hi)};
        }
        _Alignas(32) float l[16];
        _mm256_store_ps(l, _mm256_max_ps(mv.lo, mv.hi));
        float max = -INFINITY;
        for (int j = 0; j < 8; j++)
                max = l[j] > max ? l[j] : max;
        vf m = vf_set1(max);
        for (uint32_t i = 0; i < n; i += 16) {
                vf x = load16_or(p, i, n, 0.0f);
                vf e = vf_exp(vf_sub(x, m));
                _mm256_store_ps(l, e.lo), _mm256_store_ps(l + 8, e.hi);
                uint32_t valid = n - i < 16 ? n - i : 16;
                memset(l + valid, 0, (16 - valid) * 4);
                acc = (vf){_mm256_add_ps(acc.lo, _mm256_load_ps(l)), _mm256_add_ps(acc.hi, _mm256_load_ps(l + 8))};
                memcpy(p + i, l, valid * 4);
        }
        __m256 sum = _mm256_set1_ps(vf_reduce(acc));
        uint32_t i = 0;
        for (; i + 8 <= n; i += 8)
                _mm256_storeu_ps(p + i, _mm256_div_ps(_mm256_loadu_ps(p + i), sum));
        for (; i < n; i++)
                p[i] = _mm_cvtss_f32(_mm_div_ss(_mm_set_ss(p[i]), _mm256_castps256_ps128(sum)));
}

const mx_kernels MX_SYM(mx_kernels_avx2) = {MX_VNNI ? MX_ISA_AVX2_VNNI : MX_ISA_AVX2, matmul_rows, dot, axpy,
                                            scores, mix, softmax};
