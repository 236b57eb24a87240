/* The AVX-512 (F, BW, VL) vector layer of the kernels (fast_tiles.h lists
 * it): one zmm register per 64 bytes, 16 int32 or float lanes. Shared by
 * kernels_avx512.c and fast_avx512.c, compiled with their flags; with
 * MX_VNNI (-mavx512vnni -mavx512bf16) it multiplies int8 with vpdpbusd /
 * vpdpwssd and bf16 with vdpbf16ps, without it the same integers come from
 * vpmaddubsw / vpmaddwd and the same floats from fused multiply-adds of the
 * bf16 halves. */
#pragma once

#include <immintrin.h>
#include <string.h>

#include "tiles.h"

typedef __m512i vb;
typedef __m512i vi;
typedef __m512 vf;

static inline vb vb_load(const void *p) {
        return _mm512_loadu_si512(p);
}

static inline vb vb_load2(const void *lo, const void *hi) {
        __m256i h = hi ? _mm256_loadu_si256(hi) : _mm256_setzero_si256();
        return _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256(lo)), h, 1);
}

static inline vb vb_load_n(const void *p, uint64_t n) {
        return _mm512_maskz_loadu_epi8(n >= 64 ? ~0ull : (1ull << n) - 1, p);
}

static inline vb vb_set1(int c) {
        return _mm512_set1_epi8((char)c);
}

static inline vb vb_and(vb a, vb b) {
        return _mm512_and_si512(a, b);
}

static inline vb vb_or(vb a, vb b) {
        return _mm512_or_si512(a, b);
}

static inline vb vb_srl_halves(vb v, int lo, int hi) {
        __m512i n = _mm512_mask_blend_epi16(0xffff0000u, _mm512_set1_epi16((short)lo), _mm512_set1_epi16((short)hi));
        return _mm512_srlv_epi16(v, n);
}

static inline vb vb_shl4(vb v) {
        return _mm512_slli_epi16(v, 4);
}

static inline vb vb_nibbles(const void *p) {
        vb v = _mm512_broadcast_i64x4(_mm256_loadu_si256(p));
        return vb_and(_mm512_mask_srli_epi16(v, 0xffff0000u, v, 4), vb_set1(0x0f));
}

static inline vb vb_bit_halves(vb v, vb src, int b0, int b1, int add) {
        __m512i bit = _mm512_mask_blend_epi8(0xffffffff00000000ull, vb_set1(1 << b0), vb_set1(1 << b1));
        return _mm512_mask_add_epi8(v, _mm512_test_epi8_mask(src, bit), v, vb_set1(add));
}

static inline vb vb_xor(vb a, vb b) {
        return _mm512_xor_si512(a, b);
}

static inline vb vb_low_half(vb v) {
        return _mm512_maskz_mov_epi8(0xffffffffull, v);
}

/* [block low nibbles, its high, the next's low, its high] (two false:
 * the one block, zeros after): one load and one word permute put each
 * block's 16 bytes twice, as its qs start 2 bytes in, word-aligned. */
static inline vb vb_q4_0_blocks(const uint8_t *blk, bool two) {
        static const int16_t idx[32] = {1,  2,  3,  4,  5,  6,  7,  8,  1,  2,  3,  4,  5,  6,  7,  8,
                                        10, 11, 12, 13, 14, 15, 16, 17, 10, 11, 12, 13, 14, 15, 16, 17};
        __m512i v = _mm512_maskz_loadu_epi8(two ? (1ull << 36) - 1 : (1ull << 18) - 1, blk);
        __m512i z = _mm512_permutexvar_epi16(_mm512_loadu_si512(idx), v);
        z = _mm512_and_si512(_mm512_mask_srli_epi16(z, 0xff00ff00u, z, 4), _mm512_set1_epi8(0x0f));
        return two ? z : vb_low_half(z);
}

static inline vi vi_zero(void) {
        return _mm512_setzero_si512();
}

#if MX_VNNI
static inline vi vi_dpbusd(vi acc, vb u, vb s) {
        return _mm512_dpbusd_epi32(acc, u, s);
}
#else
static inline vi vi_dpbusd(vi acc, vb u, vb s) {
        return _mm512_add_epi32(acc, _mm512_madd_epi16(_mm512_maddubs_epi16(u, s), _mm512_set1_epi16(1)));
}

/* |w| . (x with w's sign): pairs stay within int16 as x is never -128. */
static inline vi vi_dot_s8(vb w, vb x) {
        __m512i sx = _mm512_mask_sub_epi8(x, _mm512_movepi8_mask(w), _mm512_setzero_si512(), x);
        return _mm512_madd_epi16(_mm512_maddubs_epi16(_mm512_abs_epi8(w), sx), _mm512_set1_epi16(1));
}
#endif

#if MX_VNNI
static inline vi vi_dpwssd(vi acc, vi a, vi b) {
        return _mm512_dpwssd_epi32(acc, a, b);
}
#else
static inline vi vi_dpwssd(vi acc, vi a, vi b) {
        return _mm512_add_epi32(acc, _mm512_madd_epi16(a, b));
}
#endif

static inline vi vi_maddubs(vb u, vb x) {
        return _mm512_maddubs_epi16(u, x);
}

static inline vi vi_halves16(const int16_t *p) {
        static const int16_t idx[32] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                                        1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1};
        int32_t v;
        memcpy(&v, p, 4);
        return _mm512_permutexvar_epi16(_mm512_loadu_si512(idx), _mm512_castsi128_si512(_mm_cvtsi32_si128(v)));
}

static inline vi vi_quarters16(const int16_t *p) {
        static const int16_t idx[32] = {0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1,
                                        2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3};
        return _mm512_permutexvar_epi16(_mm512_loadu_si512(idx),
                                        _mm512_castsi128_si512(_mm_loadl_epi64((const __m128i *)p)));
}

static inline vi vi_neg_shl(vi v, int n) {
        return _mm512_sub_epi32(_mm512_setzero_si512(), _mm512_sll_epi32(v, _mm_cvtsi32_si128(n)));
}

static inline vf vf_load(const float *p) {
        return _mm512_loadu_ps(p);
}

static inline vf vf_pairs(const float *p) {
        static const int32_t idx[16] = {0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7};
        return _mm512_permutexvar_ps(_mm512_loadu_si512(idx), _mm512_castps256_ps512(_mm256_loadu_ps(p)));
}

static inline vf vf_zero(void) {
        return _mm512_setzero_ps();
}

static inline vf vf_set1(float v) {
        return _mm512_set1_ps(v);
}

static inline vf vf_halves(float lo, float hi) {
        return _mm512_mask_blend_ps(0xff00, _mm512_set1_ps(lo), _mm512_set1_ps(hi));
}

static inline vf vf_mul(vf a, vf b) {
        return _mm512_mul_ps(a, b);
}

static inline vf vf_fma(vf a, vf b, vf c) {
        return _mm512_fmadd_ps(a, b, c);
}

static inline vf vf_add(vf a, vf b) {
        return _mm512_add_ps(a, b);
}

static inline vf vf_sub(vf a, vf b) {
        return _mm512_sub_ps(a, b);
}

/* 2^n from t, whose low mantissa bits hold the integer n (simd_exp.h). */
static inline vf vf_pow2_bits(vf t) {
        return _mm512_castsi512_ps(
                _mm512_add_epi32(_mm512_slli_epi32(_mm512_castps_si512(t), 23), _mm512_set1_epi32(0x3f800000)));
}

/* v, and 0 where x < lim. */
static inline vf vf_zero_below(vf x, float lim, vf v) {
        return _mm512_maskz_mov_ps((__mmask16)~_mm512_cmp_ps_mask(x, _mm512_set1_ps(lim), _CMP_LT_OQ), v);
}

static inline vf vf_cvt(vi v) {
        return _mm512_cvtepi32_ps(v);
}

static inline float vf_reduce(vf v) {
        __m256 a = _mm256_add_ps(_mm512_castps512_ps256(v), _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
        __m128 b = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
        __m128 c = _mm_add_ps(b, _mm_movehl_ps(b, b));
        return _mm_cvtss_f32(_mm_add_ss(c, _mm_shuffle_ps(c, c, 1)));
}

/* ---- for the kernels with rows or tokens in the lanes (fast_q4_0.h) ---- */

/* The 4 bytes at p in every int32 lane. */
static inline vb vb_bcast4(const void *p) {
        int32_t v;
        memcpy(&v, p, 4);
        return _mm512_set1_epi32(v);
}

static inline void vb_store(void *p, vb v) {
        _mm512_storeu_si512(p, v);
}

static inline vi vi_set1(int32_t v) {
        return _mm512_set1_epi32(v);
}

static inline void vf_store(float *p, vf v) {
        _mm512_storeu_ps(p, v);
}

/* Lane i: the fp16 value at p + i * stride, widened (stride below 2^27). */
static inline vf vf_f16_strided(const uint8_t *p, uint64_t stride) {
        __m512i at = _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                                        _mm512_set1_epi32((int)stride));
        __m512i g = _mm512_i32gather_epi32(at, p, 1);
        return _mm512_cvtph_ps(_mm512_cvtepi32_epi16(g));
}

static inline vi vi_add(vi a, vi b) {
        return _mm512_add_epi32(a, b);
}

static inline vi vi_mullo(vi a, vi b) {
        return _mm512_mullo_epi32(a, b);
}

/* int16 lanes 0-15: v's k-th int16; lanes 16-31: its k+1-th. */
static inline vi vi_pair16(__m128i v, int k) {
        static const int16_t idx[32] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                                        1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1};
        __m512i at = _mm512_add_epi16(_mm512_loadu_si512(idx), _mm512_set1_epi16((short)k));
        return _mm512_permutexvar_epi16(at, _mm512_castsi128_si512(v));
}

/* Lanes 0-7 and 8-15 from two halves; the sum of the halves. */
static inline vi vi_join8(__m256i lo, __m256i hi) {
        return _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
}

static inline __m256i vi_fold8(vi v) {
        return _mm256_add_epi32(_mm512_castsi512_si256(v), _mm512_extracti64x4_epi64(v, 1));
}

/* Per 128-bit lane, [a0 + a2, b0 + b2, a1 + a3, b1 + b3], then the same
 * by 64 bits: two steps of a transposing sum. */
static inline __m512i sum_pairs32(__m512i a, __m512i b) {
        return _mm512_add_epi32(_mm512_unpacklo_epi32(a, b), _mm512_unpackhi_epi32(a, b));
}

static inline __m512i sum_pairs64(__m512i a, __m512i b) {
        return _mm512_add_epi32(_mm512_unpacklo_epi64(a, b), _mm512_unpackhi_epi64(a, b));
}

/* Rows' sums: lane r of *lo is the sum of lanes 0-7 of v[r], of *hi that
 * of lanes 8-15 (exact; integers). */
static inline void vi_lane_sums(const vi v[16], vi *lo, vi *hi) {
        __m512i q[4];
        for (int i = 0; i < 4; i++)
                q[i] = sum_pairs64(sum_pairs32(v[4 * i], v[4 * i + 1]), sum_pairs32(v[4 * i + 2], v[4 * i + 3]));
        /* q[i]'s 128-bit lane j: rows 4i..4i+3 over lanes 4j..4j+3 */
        __m512i y0 = _mm512_add_epi32(_mm512_shuffle_i32x4(q[0], q[1], 0x88), _mm512_shuffle_i32x4(q[0], q[1], 0xdd));
        __m512i y1 = _mm512_add_epi32(_mm512_shuffle_i32x4(q[2], q[3], 0x88), _mm512_shuffle_i32x4(q[2], q[3], 0xdd));
        *lo = _mm512_shuffle_i32x4(y0, y1, 0x88);
        *hi = _mm512_shuffle_i32x4(y0, y1, 0xdd);
}

/* Four rows' sums: lane r of *lo is the sum of lanes 0-7 of v[r], of *hi
 * that of lanes 8-15. */
static inline void vi_lane_sums4(const vi v[4], __m128i *lo, __m128i *hi) {
        __m512i q = sum_pairs64(sum_pairs32(v[0], v[1]), sum_pairs32(v[2], v[3]));
        *lo = _mm_add_epi32(_mm512_castsi512_si128(q), _mm512_extracti32x4_epi32(q, 1));
        *hi = _mm_add_epi32(_mm512_extracti32x4_epi32(q, 2), _mm512_extracti32x4_epi32(q, 3));
}

#if MX_VNNI
/* One vdpbf16ps step (fast_tiles.h): the bf16 pairs as they are. */
#define MX_NATIVE_BF16 1
typedef vb bfw;
typedef vb bfx;

static inline bfw bf_wprep(vb v) {
        return v;
}

static inline bfx bf_xprep(vb v) {
        return v;
}

static inline vf bf_mac(vf acc, bfw w, bfx x) {
        return _mm512_dpbf16_ps(acc, (__m512bh)w, (__m512bh)x);
}
#else
/* Each lane's bf16 pair as two floats: the odd value is the high half of
 * the 32 bits as they are, the even one the low half moved up. */
static inline vf vb_bf16_odd(vb v) {
        return _mm512_castsi512_ps(_mm512_and_si512(v, _mm512_set1_epi32((int)0xffff0000u)));
}

static inline vf vb_bf16_even(vb v) {
        return _mm512_castsi512_ps(_mm512_slli_epi32(v, 16));
}
#endif

/* ---- packed bf16 rows (MX_BF16P, kernels.h; fast_bf16p.h) ------------------------- */

/* A row's table as vpermw indexes it: entry c in word c. */
typedef vb bfp_tab;

static inline bfp_tab vb_bfp_table(const uint8_t *row) {
        return _mm512_zextsi256_si512(_mm256_loadu_si256((const __m256i *)row));
}

/* A block's 64 words, w[0] values 0..31 and w[1] 32..63, each lane as a
 * plain row's load puts it; esc[h]: the lanes of w[h] whose code is the
 * escape (looked for only where look). The sign and mantissa byte
 * sign-extends to a word whose bit 15 is the sign; its bits 7..14 give
 * way to the exponent. */
static inline __attribute__((always_inline)) void vb_bfp_block(const uint8_t *blk, bfp_tab tab, bool look, vb w[2],
                                                                uint32_t esc[2]) {
        __m512i c = _mm512_cvtepu8_epi16(_mm256_loadu_si256((const __m256i *)(blk + MX_BF16P_BLOCK)));
        __m512i code[2] = {_mm512_and_si512(c, _mm512_set1_epi16(0xf)), _mm512_srli_epi16(c, 4)};
        for (int h = 0; h < 2; h++) {
                __m512i s = _mm512_cvtepi8_epi16(_mm256_loadu_si256((const __m256i *)(blk + 32 * h)));
                /* (s & 0x807f) | table[code] */
                w[h] = _mm512_ternarylogic_epi32(s, _mm512_set1_epi16((short)0x807f),
                                                 _mm512_permutexvar_epi16(code[h], tab), 0xea);
                esc[h] = look ? _mm512_cmpeq_epi16_mask(code[h], _mm512_set1_epi16(MX_BF16P_CODES)) : 0;
        }
}
