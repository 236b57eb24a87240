/* The AVX2 (with FMA and F16C) vector layer of the kernels (fast_tiles.h
 * lists it): pairs of ymm registers, lanes 0-7 and 8-15. Shared by
 * kernels_avx2.c and fast_avx2.c, compiled with their flags; with MX_VNNI
 * (-mavxvnni) it multiplies int8 with the VEX vpdpbusd / vpdpwssd, without
 * it the same integers come from vpmaddubsw / vpmaddwd. bf16 goes through
 * fused multiply-adds of its halves in both. */
#pragma once

#include <immintrin.h>
#include <string.h>

#include "tiles.h"

typedef struct v2i {
        __m256i lo, hi;
} vb;
typedef vb vi;

typedef struct v2f {
        __m256 lo, hi;
} vf;

static inline __m256i load32(const void *p) {
        return _mm256_loadu_si256((const __m256i *)p);
}

static inline vb vb_load(const void *p) {
        return (vb){load32(p), load32((const uint8_t *)p + 32)};
}

static inline vb vb_load2(const void *lo, const void *hi) {
        return (vb){load32(lo), hi ? load32(hi) : _mm256_setzero_si256()};
}

static inline vb vb_load_n(const void *p, uint64_t n) {
        uint8_t pad[64] = {0};
        memcpy(pad, p, n < 64 ? n : 64);
        return vb_load(pad);
}

static inline vb vb_set1(int c) {
        __m256i v = _mm256_set1_epi8((char)c);
        return (vb){v, v};
}

static inline vb vb_and(vb a, vb b) {
        return (vb){_mm256_and_si256(a.lo, b.lo), _mm256_and_si256(a.hi, b.hi)};
}

static inline vb vb_or(vb a, vb b) {
        return (vb){_mm256_or_si256(a.lo, b.lo), _mm256_or_si256(a.hi, b.hi)};
}

static inline vb vb_srl_halves(vb v, int lo, int hi) {
        return (vb){_mm256_srl_epi16(v.lo, _mm_cvtsi32_si128(lo)), _mm256_srl_epi16(v.hi, _mm_cvtsi32_si128(hi))};
}

static inline vb vb_shl4(vb v) {
        return (vb){_mm256_slli_epi16(v.lo, 4), _mm256_slli_epi16(v.hi, 4)};
}

static inline vb vb_nibbles(const void *p) {
        __m256i x = load32(p), f = _mm256_set1_epi8(0x0f);
        return (vb){_mm256_and_si256(x, f), _mm256_and_si256(_mm256_srli_epi16(x, 4), f)};
}

static inline __m256i add_where_bit(__m256i v, __m256i src, int b, int add) {
        __m256i bit = _mm256_set1_epi8((char)(1 << b));
        __m256i set = _mm256_cmpeq_epi8(_mm256_and_si256(src, bit), bit);
        return _mm256_add_epi8(v, _mm256_and_si256(set, _mm256_set1_epi8((char)add)));
}

static inline vb vb_bit_halves(vb v, vb src, int b0, int b1, int add) {
        return (vb){add_where_bit(v.lo, src.lo, b0, add), add_where_bit(v.hi, src.hi, b1, add)};
}

static inline vb vb_xor(vb a, vb b) {
        return (vb){_mm256_xor_si256(a.lo, b.lo), _mm256_xor_si256(a.hi, b.hi)};
}

static inline vb vb_low_half(vb v) {
        return (vb){v.lo, _mm256_setzero_si256()};
}

/* A Q4_0 block's nibbles: low, then high. */
static inline __m256i q4_0_block(const uint8_t *qs) {
        __m128i a = _mm_loadu_si128((const __m128i *)qs);
        return _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(a, 4), a), _mm256_set1_epi8(0x0f));
}

/* The block at blk's nibbles and, if two, the next's (zeros if not). */
static inline vb vb_q4_0_blocks(const uint8_t *blk, bool two) {
        return (vb){q4_0_block(blk + 2), two ? q4_0_block(blk + 20) : _mm256_setzero_si256()};
}

static inline vi vi_zero(void) {
        return (vi){_mm256_setzero_si256(), _mm256_setzero_si256()};
}

#if MX_VNNI
static inline vi vi_dpbusd(vi acc, vb u, vb s) {
        return (vi){_mm256_dpbusd_avx_epi32(acc.lo, u.lo, s.lo), _mm256_dpbusd_avx_epi32(acc.hi, u.hi, s.hi)};
}
#else
static inline __m256i dpbusd(__m256i acc, __m256i u, __m256i s) {
        return _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1)));
}

static inline vi vi_dpbusd(vi acc, vb u, vb s) {
        return (vi){dpbusd(acc.lo, u.lo, s.lo), dpbusd(acc.hi, u.hi, s.hi)};
}

/* |w| . (x with w's sign): pairs stay within int16 as x is never -128. */
static inline __m256i dot_s8(__m256i w, __m256i x) {
        return _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_abs_epi8(w), _mm256_sign_epi8(x, w)), _mm256_set1_epi16(1));
}

static inline vi vi_dot_s8(vb w, vb x) {
        return (vi){dot_s8(w.lo, x.lo), dot_s8(w.hi, x.hi)};
}
#endif

#if MX_VNNI
static inline vi vi_dpwssd(vi acc, vi a, vi b) {
        return (vi){_mm256_dpwssd_avx_epi32(acc.lo, a.lo, b.lo), _mm256_dpwssd_avx_epi32(acc.hi, a.hi, b.hi)};
}
#else
static inline vi vi_dpwssd(vi acc, vi a, vi b) {
        return (vi){_mm256_add_epi32(acc.lo, _mm256_madd_epi16(a.lo, b.lo)),
                    _mm256_add_epi32(acc.hi, _mm256_madd_epi16(a.hi, b.hi))};
}
#endif

static inline vi vi_maddubs(vb u, vb x) {
        return (vi){_mm256_maddubs_epi16(u.lo, x.lo), _mm256_maddubs_epi16(u.hi, x.hi)};
}

static inline vi vi_halves16(const int16_t *p) {
        return (vi){_mm256_set1_epi16(p[0]), _mm256_set1_epi16(p[1])};
}

static inline vi vi_quarters16(const int16_t *p) {
        return (vi){_mm256_set_m128i(_mm_set1_epi16(p[1]), _mm_set1_epi16(p[0])),
                    _mm256_set_m128i(_mm_set1_epi16(p[3]), _mm_set1_epi16(p[2]))};
}

static inline vi vi_neg_shl(vi v, int n) {
        __m128i c = _mm_cvtsi32_si128(n);
        return (vi){_mm256_sub_epi32(_mm256_setzero_si256(), _mm256_sll_epi32(v.lo, c)),
                    _mm256_sub_epi32(_mm256_setzero_si256(), _mm256_sll_epi32(v.hi, c))};
}

static inline vf vf_load(const float *p) {
        return (vf){_mm256_loadu_ps(p), _mm256_loadu_ps(p + 8)};
}

static inline vf vf_pairs(const float *p) {
        __m256 v = _mm256_loadu_ps(p);
        return (vf){_mm256_permutevar8x32_ps(v, _mm256_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3)),
                    _mm256_permutevar8x32_ps(v, _mm256_setr_epi32(4, 4, 5, 5, 6, 6, 7, 7))};
}

static inline vf vf_zero(void) {
        return (vf){_mm256_setzero_ps(), _mm256_setzero_ps()};
}

static inline vf vf_set1(float v) {
        return (vf){_mm256_set1_ps(v), _mm256_set1_ps(v)};
}

static inline vf vf_halves(float lo, float hi) {
        return (vf){_mm256_set1_ps(lo), _mm256_set1_ps(hi)};
}

static inline vf vf_mul(vf a, vf b) {
        return (vf){_mm256_mul_ps(a.lo, b.lo), _mm256_mul_ps(a.hi, b.hi)};
}

static inline vf vf_fma(vf a, vf b, vf c) {
        return (vf){_mm256_fmadd_ps(a.lo, b.lo, c.lo), _mm256_fmadd_ps(a.hi, b.hi, c.hi)};
}

static inline vf vf_add(vf a, vf b) {
        return (vf){_mm256_add_ps(a.lo, b.lo), _mm256_add_ps(a.hi, b.hi)};
}

static inline vf vf_sub(vf a, vf b) {
        return (vf){_mm256_sub_ps(a.lo, b.lo), _mm256_sub_ps(a.hi, b.hi)};
}

/* 2^n from t, whose low mantissa bits hold the integer n (simd_exp.h). */
static inline __m256 pow2_bits(__m256 t) {
        return _mm256_castsi256_ps(
                _mm256_add_epi32(_mm256_slli_epi32(_mm256_castps_si256(t), 23), _mm256_set1_epi32(0x3f800000)));
}

static inline vf vf_pow2_bits(vf t) {
        return (vf){pow2_bits(t.lo), pow2_bits(t.hi)};
}

/* v, and 0 where x < lim. */
static inline vf vf_zero_below(vf x, float lim, vf v) {
        __m256 l = _mm256_set1_ps(lim);
        return (vf){_mm256_andnot_ps(_mm256_cmp_ps(x.lo, l, _CMP_LT_OQ), v.lo),
                    _mm256_andnot_ps(_mm256_cmp_ps(x.hi, l, _CMP_LT_OQ), v.hi)};
}

static inline vf vf_cvt(vi v) {
        return (vf){_mm256_cvtepi32_ps(v.lo), _mm256_cvtepi32_ps(v.hi)};
}

static inline float vf_reduce(vf v) {
        __m256 a = _mm256_add_ps(v.lo, v.hi);
        __m128 b = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
        __m128 c = _mm_add_ps(b, _mm_movehl_ps(b, b));
        return _mm_cvtss_f32(_mm_add_ss(c, _mm_shuffle_ps(c, c, 1)));
}

/* ---- for the kernels with rows or tokens in the lanes (fast_q4_0.h) ---- */

/* The 4 bytes at p in every int32 lane. */
static inline vb vb_bcast4(const void *p) {
        int32_t v;
        memcpy(&v, p, 4);
        __m256i b = _mm256_set1_epi32(v);
        return (vb){b, b};
}

static inline void vb_store(void *p, vb v) {
        _mm256_storeu_si256((__m256i *)p, v.lo), _mm256_storeu_si256((__m256i *)((uint8_t *)p + 32), v.hi);
}

static inline vi vi_set1(int32_t v) {
        __m256i b = _mm256_set1_epi32(v);
        return (vi){b, b};
}

static inline void vf_store(float *p, vf v) {
        _mm256_storeu_ps(p, v.lo), _mm256_storeu_ps(p + 8, v.hi);
}

/* Lane i: the fp16 value at p + i * stride, widened. */
static inline vf vf_f16_strided(const uint8_t *p, uint64_t stride) {
        float f[16];
        for (int i = 0; i < 16; i++) {
                uint16_t h;
                memcpy(&h, p + i * stride, 2);
                f[i] = _cvtsh_ss(h);
        }
        return vf_load(f);
}

static inline vi vi_add(vi a, vi b) {
        return (vi){_mm256_add_epi32(a.lo, b.lo), _mm256_add_epi32(a.hi, b.hi)};
}

static inline vi vi_mullo(vi a, vi b) {
        return (vi){_mm256_mullo_epi32(a.lo, b.lo), _mm256_mullo_epi32(a.hi, b.hi)};
}

/* int16 lanes 0-15: v's k-th int16; lanes 16-31: its k+1-th. */
static inline vi vi_pair16(__m128i v, int k) {
        __m128i lo = _mm_set1_epi16((short)(2 * k | (2 * k + 1) << 8));
        __m128i hi = _mm_add_epi8(lo, _mm_set1_epi8(2));
        return (vi){_mm256_broadcastsi128_si256(_mm_shuffle_epi8(v, lo)),
                    _mm256_broadcastsi128_si256(_mm_shuffle_epi8(v, hi))};
}

/* Lanes 0-7 and 8-15 from two halves; the sum of the halves. */
static inline vi vi_join8(__m256i lo, __m256i hi) {
        return (vi){lo, hi};
}

static inline __m256i vi_fold8(vi v) {
        return _mm256_add_epi32(v.lo, v.hi);
}

/* Lane i: the sum of v[i]'s lanes, by transposing sums (exact). */
static inline __m256i sum8(const __m256i v[8]) {
        __m256i w[4], q[2];
        for (int i = 0; i < 4; i++)
                w[i] = _mm256_add_epi32(_mm256_unpacklo_epi32(v[2 * i], v[2 * i + 1]),
                                        _mm256_unpackhi_epi32(v[2 * i], v[2 * i + 1]));
        for (int i = 0; i < 2; i++)
                q[i] = _mm256_add_epi32(_mm256_unpacklo_epi64(w[2 * i], w[2 * i + 1]),
                                        _mm256_unpackhi_epi64(w[2 * i], w[2 * i + 1]));
        return _mm256_add_epi32(_mm256_permute2x128_si256(q[0], q[1], 0x20),
                                _mm256_permute2x128_si256(q[0], q[1], 0x31));
}

/* Lane i of 4: the sum of a[i]'s lanes. */
static inline __m128i sum4(__m256i a0, __m256i a1, __m256i a2, __m256i a3) {
        __m256i w0 = _mm256_add_epi32(_mm256_unpacklo_epi32(a0, a1), _mm256_unpackhi_epi32(a0, a1));
        __m256i w1 = _mm256_add_epi32(_mm256_unpacklo_epi32(a2, a3), _mm256_unpackhi_epi32(a2, a3));
        __m256i q = _mm256_add_epi32(_mm256_unpacklo_epi64(w0, w1), _mm256_unpackhi_epi64(w0, w1));
        return _mm_add_epi32(_mm256_castsi256_si128(q), _mm256_extracti128_si256(q, 1));
}

/* Four rows' sums: lane r of *lo is the sum of lanes 0-7 of v[r], of *hi
 * that of lanes 8-15. */
static inline void vi_lane_sums4(const vi v[4], __m128i *lo, __m128i *hi) {
        *lo = sum4(v[0].lo, v[1].lo, v[2].lo, v[3].lo);
        *hi = sum4(v[0].hi, v[1].hi, v[2].hi, v[3].hi);
}

/* Rows' sums: lane r of *lo is the sum of lanes 0-7 of v[r], of *hi that
 * of lanes 8-15. */
static inline void vi_lane_sums(const vi v[16], vi *lo, vi *hi) {
        __m256i a[8], b[8];
        for (int h = 0; h < 2; h++) {
                for (int i = 0; i < 8; i++)
                        a[i] = v[8 * h + i].lo, b[i] = v[8 * h + i].hi;
                if (h == 0)
                        lo->lo = sum8(a), hi->lo = sum8(b);
                else
                        lo->hi = sum8(a), hi->hi = sum8(b);
        }
}

/* Each lane's bf16 pair as two floats: the odd value is the high half of
 * the 32 bits as they are, the even one the low half moved up. */
static inline vf vb_bf16_odd(vb v) {
        __m256i m = _mm256_set1_epi32((int)0xffff0000u);
        return (vf){_mm256_castsi256_ps(_mm256_and_si256(v.lo, m)), _mm256_castsi256_ps(_mm256_and_si256(v.hi, m))};
}

static inline vf vb_bf16_even(vb v) {
        return (vf){_mm256_castsi256_ps(_mm256_slli_epi32(v.lo, 16)), _mm256_castsi256_ps(_mm256_slli_epi32(v.hi, 16))};
}

/* ---- packed bf16 rows (MX_BF16P, kernels.h; fast_bf16p.h) ------------------------- */

/* A row's table as vpshufb indexes it: the 16 exponent bytes, in both
 * halves (entry 15, the count of exceptions, only ever meets escapes). */
typedef __m256i bfp_tab;

static inline bfp_tab vb_bfp_table(const uint8_t *row) {
        uint8_t e[16];
        for (int i = 0; i < 16; i++) {
                uint16_t t;
                memcpy(&t, row + 2 * i, 2);
                e[i] = (uint8_t)(t >> 7);
        }
        return _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)e));
}

/* 16 values' words from their sign and mantissa bytes and exponents. */
static inline __m256i bfp_words(const uint8_t *sm, __m128i e) {
        __m256i s = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)sm));
        return _mm256_or_si256(_mm256_and_si256(s, _mm256_set1_epi16((short)0x807f)),
                               _mm256_slli_epi16(_mm256_cvtepu8_epi16(e), 7));
}

/* As simd_avx512.h's: w[0] values 0..31, w[1] 32..63; esc[h] the escapes. */
static inline __attribute__((always_inline)) void vb_bfp_block(const uint8_t *blk, bfp_tab tab, bool look, vb w[2],
                                                                uint32_t esc[2]) {
        __m256i c = _mm256_loadu_si256((const __m256i *)(blk + MX_BF16P_BLOCK)), m = _mm256_set1_epi8(0xf);
        __m256i code[2] = {_mm256_and_si256(c, m), _mm256_and_si256(_mm256_srli_epi16(c, 4), m)};
        for (int h = 0; h < 2; h++) {
                __m256i e = _mm256_shuffle_epi8(tab, code[h]);
                w[h] = (vb){bfp_words(blk + 32 * h, _mm256_castsi256_si128(e)),
                            bfp_words(blk + 32 * h + 16, _mm256_extracti128_si256(e, 1))};
                esc[h] = look ? (uint32_t)_mm256_movemask_epi8(_mm256_cmpeq_epi8(code[h], _mm256_set1_epi8(MX_BF16P_CODES)))
                              : 0;
        }
}
