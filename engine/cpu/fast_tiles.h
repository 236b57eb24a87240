/* The fast path's tiles (kernels.h), written once over a small vector
 * layer that simd_avx2.h (two ymm registers) and simd_avx512.h (one zmm)
 * define before fast_avx2.c and fast_avx512.c include this: 64 bytes `vb`,
 * 16 int32 lanes `vi`, 16 float lanes `vf`, and:
 *
 *   vb_load(p), vb_load2(lo, hi)        64 bytes; two 32-byte halves (hi NULL: zeros)
 *   vb_load_n(p, n)                     n < 64 bytes, zeros after
 *   vb_nibbles(p)                       32 bytes' low nibbles, then their high nibbles
 *   vb_q4_0_blocks(blk, two)            two Q4_0 blocks' nibbles (two false: the one, zeros after)
 *   vb_set1, vb_and, vb_or, vb_xor      bytes
 *   vb_srl_halves(v, lo, hi)            16-bit right shifts, by lo in the first 32 bytes, hi in
 *                                       the rest; vb_shl4(v) 16-bit left shifts by 4
 *   vb_bit_halves(v, src, b0, b1, add)  v plus `add` in each byte whose byte of src has bit b0
 *                                       (first 32 bytes) or bit b1 (the rest) set
 *   vb_low_half(v)                      the first 32 bytes, zeros after
 *   vi_zero, vi_dpbusd(acc, u, s)       acc + sums of unsigned x signed bytes per 4 (exact
 *                                       for u <= 128 without VNNI)
 *   vi_dot_s8(w, x)                     the same for signed w (without VNNI only)
 *   vi_neg_shl(v, n)                    -(v << n)
 *   vi_maddubs(u, x)                    unsigned x signed byte pairs into int16 (exact here)
 *   vi_dpwssd(acc, a, b)                acc + int16 pairs' products, per int32 lane
 *   vi_halves16(p), vi_quarters16(p)    int16 lanes: p[0], p[1] (p[0] .. p[3]) each on 16 (8)
 *                                       consecutive lanes
 *   vf_zero, vf_set1, vf_load(p), vf_pairs(p) (p[0], p[0], p[1], p[1] ... p[7]),
 *   vf_halves(lo, hi), vf_mul, vf_fma, vf_cvt, vf_reduce (mx_reduce16's order)
 *   MX_NATIVE_BF16 and bfw / bfx / bf_wprep / bf_xprep / bf_mac (one vdpbf16ps step),
 *   or vb_bf16_odd(v) / vb_bf16_even(v) (each lane's pair as floats) for the step by hand
 *   Q32_R, Q32_T, K_R, K_T, BF_R, BF_T  prefill tile shapes
 *   K_D, BF_D                           decode rows of Q5_K and BF16 tiles (tiles.h)
 *   Q4_0_R, Q4_K_R, Q6_K_R              prefill tiles (rows) of fast_q4_0.h, fast_q4_k.h, fast_q6_k.h
 *   FAST_TILES                          the name of the table function
 *
 * The integer sums are exact, and every float operation is the one the
 * reference (kernels_scalar.c) does, in the same order. */
#include <math.h>
#include <string.h>

#include "quant.h"

static inline float f16c(uint16_t h) {
        return _cvtsh_ss(h);
}

/* ---- Q8_0 against MX_ACT_Q8: 64 values (two blocks of 32) per step ------------------- */

/* A row's pair of blocks: where they are and their scales. */
typedef struct wpair {
        const void *blk;
        float d0, d1;        /* the second 0 when the pair is the row's last, single block */
} wpair;

/* Signed levels x activations, per 4: an unsigned level u of value
 * u - OFF is summed as u . x - OFF x (the activations' sums by 4), which
 * the token's step makes once for all rows. */
static inline vi xsum4(vb x) {
        return vi_dpbusd(vi_zero(), vb_set1(1), x);
}

/* Q4_0's offset of 8 (fast_q4_0.h). */
static inline vi q4_0_xoff(vb x) {
        return vi_neg_shl(xsum4(x), 3);
}

static inline void q8_0_prep(const uint8_t *row, uint64_t pair, bool two, wpair *W) {
        const mx_block_q8_0 *b = (const mx_block_q8_0 *)row + 2 * pair;
        *W = (wpair){b, f16c(b[0].d), two ? f16c(b[1].d) : 0.0f};
}
#if MX_VNNI
/* vpdpbusd wants an unsigned factor: q + 128, less 128 x the activations. */
static inline vb q8_0_levels(const wpair *W, bool two) {
        const mx_block_q8_0 *b = W->blk;
        vb v = vb_xor(vb_load2(b[0].qs, two ? b[1].qs : NULL), vb_set1(0x80));
        return two ? v : vb_low_half(v);
}
static inline vi q8_0_xoff(vb x) {
        return vi_neg_shl(xsum4(x), 7);
}
static inline vi q8_0_dot(vb u, vb x, vi off) {
        return vi_dpbusd(off, u, x);
}
#else
static inline vb q8_0_levels(const wpair *W, bool two) {
        const mx_block_q8_0 *b = W->blk;
        return vb_load2(b[0].qs, two ? b[1].qs : NULL);
}
static inline vi q8_0_xoff(vb x) {
        return vi_zero();
}
static inline vi q8_0_dot(vb w, vb x, vi off) {
        return vi_dot_s8(w, x);
}
#endif

/* Pair p of R rows against T tokens; two: the pair is whole (false only
 * at the end of a row of an odd number of blocks), a constant where this
 * is inlined. */
#define DEFINE_Q32_PAIR(NAME, TY, R, T)                                                            \
        static inline __attribute__((always_inline)) void NAME##_pair(                             \
                const uint8_t *w, uint64_t rb, const uint8_t *x, uint64_t ldx, uint64_t K, uint64_t p, \
                bool two, vf F[R][T]) {                                                            \
                wpair W[R];                                                                        \
                vb u[R];                                                                           \
                vf ws[R];                                                                          \
                UNROLL for (int r = 0; r < R; r++) {                                               \
                        TY##_prep(w + r * rb, p, two, &W[r]);                                      \
                        u[r] = TY##_levels(&W[r], two), ws[r] = vf_halves(W[r].d0, W[r].d1);      \
                }                                                                                  \
                UNROLL for (int t = 0; t < T; t++) {                                               \
                        const uint8_t *xt = x + t * ldx;                                           \
                        const float *dx = mx_act_scales(xt, K);                                    \
                        vb xv = vb_load2(xt + 64 * p, two ? xt + 64 * p + 32 : NULL);              \
                        vf dxv = vf_halves(dx[2 * p], two ? dx[2 * p + 1] : 0.0f);                 \
                        vi off = TY##_xoff(xv);                                                    \
                        UNROLL for (int r = 0; r < R; r++) F[r][t] =                               \
                                vf_fma(vf_mul(ws[r], dxv), vf_cvt(TY##_dot(u[r], xv, off)), F[r][t]); \
                }                                                                                  \
        }

#define DEFINE_Q32_TILE(NAME, TY, R, T)                                                            \
        DEFINE_Q32_PAIR(NAME, TY, R, T)                                                            \
        static void NAME(const uint8_t *w, uint64_t rb, const uint8_t *x, uint64_t ldx, uint64_t K, \
                         float *out, uint64_t ldo, bool accumulate) {                              \
                const uint64_t nb = K / 32;                                                        \
                vf F[R][T];                                                                        \
                UNROLL for (int r = 0; r < R; r++) UNROLL for (int t = 0; t < T; t++) F[r][t] = vf_zero(); \
                for (uint64_t p = 0; p < nb / 2; p++)                                              \
                        NAME##_pair(w, rb, x, ldx, K, p, true, F);                                 \
                if (nb % 2)                                                                        \
                        NAME##_pair(w, rb, x, ldx, K, nb / 2, false, F);                           \
                UNROLL for (int t = 0; t < T; t++) UNROLL for (int r = 0; r < R; r++)              \
                        mx_tile_put(out + t * ldo + r, vf_reduce(F[r][t]), accumulate);            \
        }

/* ---- Q5_K against MX_ACT_Q8K (and parts Q4_K and Q6_K share): a super-block per step --- */

/* What a row's super-block gives every token. */
typedef struct kw {
        const void *blk;
        float d;
        int16_t sc[16];      /* sub-block scales (8 for Q5_K) */
        vf w16;              /* the offset's weight for each 16 values (kernels.h) */
} kw;

/* Q4_K and Q5_K: the 6-bit scales and mins as int16 (mx_q4k_scale, eight
 * at once). */
static inline void kmin_ints(const uint8_t *s, __m128i *sc, __m128i *m) {
        uint32_t a0, a1, a2;
        memcpy(&a0, s, 4), memcpy(&a1, s + 4, 4), memcpy(&a2, s + 8, 4);
        uint32_t sc_lo = a0 & 0x3f3f3f3fu, m_lo = a1 & 0x3f3f3f3fu;
        uint32_t sc_hi = (a2 & 0x0f0f0f0fu) | ((a0 >> 6) & 0x03030303u) << 4;
        uint32_t m_hi = ((a2 >> 4) & 0x0f0f0f0fu) | ((a1 >> 6) & 0x03030303u) << 4;
        *sc = _mm_cvtepu8_epi16(_mm_set_epi32(0, 0, (int)sc_hi, (int)sc_lo));
        *m = _mm_cvtepu8_epi16(_mm_set_epi32(0, 0, (int)m_hi, (int)m_lo));
}

static inline void kmin_prep(const uint8_t *s, uint16_t d, uint16_t dmin, kw *W) {
        __m128i sc, mi;
        kmin_ints(s, &sc, &mi);
        _mm_storeu_si128((__m128i *)W->sc, sc);
        float m[8];
        __m256 mf = _mm256_cvtepi32_ps(_mm256_cvtepu16_epi32(mi));
        _mm256_storeu_ps(m, _mm256_mul_ps(_mm256_set1_ps(f16c(dmin)), mf));
        W->w16 = vf_pairs(m);
        W->d = f16c(d);
}

static inline void q5_k_prep(const void *blk, kw *W) {
        const mx_block_q5_k *b = blk;
        W->blk = blk;
        kmin_prep(b->scales, b->d, b->dmin, W);
}

/* Chunk c's unsigned levels, and the int16 scale of each pair of them. */
static inline vb q5_k_u(const kw *W, int c) {
        const mx_block_q5_k *b = W->blk;
        return vb_bit_halves(vb_nibbles(b->qs + 32 * c), vb_load2(b->qh, b->qh), 2 * c, 2 * c + 1, 16);
}

/* Q6_K's chunk c: 64 bytes of ql (low nibbles for even c, high for odd),
 * and two bits of qh per value (bits 4(c%2) and 4(c%2)+2 of qh[32(c/2)..]). */
static inline vb q6_k_u(const kw *W, int c) {
        const mx_block_q6_k *b = W->blk;
        vb ql = vb_load(b->ql + 64 * (c / 2));
        if (c & 1)
                ql = vb_srl_halves(ql, 4, 4);
        const uint8_t *qh = b->qh + 32 * (c / 2);
        vb hi = vb_srl_halves(vb_load2(qh, qh), 4 * (c & 1), 4 * (c & 1) + 2);
        return vb_or(vb_and(ql, vb_set1(0x0f)), vb_shl4(vb_and(hi, vb_set1(3))));
}

static inline vi kmin_sc(const kw *W, int c) {
        return vi_halves16(W->sc + 2 * c);
}

#define q5_k_sc kmin_sc

#define DEFINE_K_TILE(NAME, TY, R, T)                                                              \
        static void NAME(const uint8_t *w, uint64_t rb, const uint8_t *x, uint64_t ldx, uint64_t K, \
                         float *out, uint64_t ldo, bool accumulate) {                              \
                const uint64_t bytes = sizeof(mx_block_##TY);                                      \
                vf F[R][T], G[R][T];                                                               \
                UNROLL for (int r = 0; r < R; r++) UNROLL for (int t = 0; t < T; t++)              \
                        F[r][t] = vf_zero(), G[r][t] = vf_zero();                                  \
                for (uint64_t sb = 0; sb < K / 256; sb++) {                                        \
                        kw W[R];                                                                   \
                        float dx[T];                                                               \
                        UNROLL for (int r = 0; r < R; r++) TY##_prep(w + r * rb + sb * bytes, &W[r]); \
                        UNROLL for (int t = 0; t < T; t++) {                                       \
                                const uint8_t *xt = x + t * ldx;                                   \
                                vf xs = vf_load(mx_act_sums(xt, K) + 16 * sb);                     \
                                dx[t] = mx_act_scales(xt, K)[sb];                                  \
                                UNROLL for (int r = 0; r < R; r++) G[r][t] = vf_fma(W[r].w16, xs, G[r][t]); \
                        }                                                                          \
                        vi S[R][T];                                                                \
                        UNROLL for (int r = 0; r < R; r++) UNROLL for (int t = 0; t < T; t++) S[r][t] = vi_zero(); \
                        UNROLL for (int c = 0; c < 4; c++) {                                       \
                                vb U[R];                                                           \
                                vi SC[R];                                                          \
                                UNROLL for (int r = 0; r < R; r++) U[r] = TY##_u(&W[r], c), SC[r] = TY##_sc(&W[r], c); \
                                UNROLL for (int t = 0; t < T; t++) {                               \
                                        vb xv = vb_load(x + t * ldx + 256 * sb + 64 * c);          \
                                        UNROLL for (int r = 0; r < R; r++) S[r][t] =               \
                                                vi_dpwssd(S[r][t], vi_maddubs(U[r], xv), SC[r]);   \
                                }                                                                  \
                        }                                                                          \
                        UNROLL for (int r = 0; r < R; r++) UNROLL for (int t = 0; t < T; t++) F[r][t] = \
                                vf_fma(vf_set1(W[r].d * dx[t]), vf_cvt(S[r][t]), F[r][t]);         \
                }                                                                                  \
                UNROLL for (int t = 0; t < T; t++) UNROLL for (int r = 0; r < R; r++)              \
                        mx_tile_put(out + t * ldo + r, vf_reduce(F[r][t]) - vf_reduce(G[r][t]), accumulate); \
        }

/* ---- BF16 against MX_ACT_BF16: 32 values per step -------------------------------------- */

#ifndef MX_NATIVE_BF16
/* vdpbf16ps's step by hand: the odd value of each lane's pair, then the
 * even one, each an exact product added with one rounding. */
typedef struct bfw {
        vf odd, even;
} bfw;
typedef bfw bfx;

static inline bfw bf_wprep(vb v) {
        return (bfw){vb_bf16_odd(v), vb_bf16_even(v)};
}

static inline bfx bf_xprep(vb v) {
        return bf_wprep(v);
}

static inline vf bf_mac(vf acc, bfw w, bfx x) {
        return vf_fma(w.even, x.even, vf_fma(w.odd, x.odd, acc));
}
#endif

#define DEFINE_BF_TILE(NAME, UNUSED, R, T)                                                         \
        static void NAME(const uint8_t *w, uint64_t rb, const uint8_t *x, uint64_t ldx, uint64_t K, \
                         float *out, uint64_t ldo, bool accumulate) {                              \
                vf F[R][T];                                                                        \
                UNROLL for (int r = 0; r < R; r++) UNROLL for (int t = 0; t < T; t++) F[r][t] = vf_zero(); \
                for (uint64_t k = 0; k < K; k += 32) {                                             \
                        uint64_t n = K - k < 32 ? 2 * (K - k) : 64;                                \
                        bfw W[R];                                                                  \
                        UNROLL for (int r = 0; r < R; r++) W[r] = bf_wprep(                        \
                                n == 64 ? vb_load(w + r * rb + 2 * k) : vb_load_n(w + r * rb + 2 * k, n)); \
                        UNROLL for (int t = 0; t < T; t++) {                                       \
                                const uint8_t *xt = x + t * ldx + 2 * k;                           \
                                bfx X = bf_xprep(n == 64 ? vb_load(xt) : vb_load_n(xt, n));        \
                                UNROLL for (int r = 0; r < R; r++) F[r][t] = bf_mac(F[r][t], W[r], X); \
                        }                                                                          \
                }                                                                                  \
                UNROLL for (int t = 0; t < T; t++) UNROLL for (int r = 0; r < R; r++)              \
                        mx_tile_put(out + t * ldo + r, vf_reduce(F[r][t]), accumulate);            \
        }

MX_DEFINE_TILES(fast_q8_0, DEFINE_Q32_TILE, q8_0, Q32_R, Q32_T, 1)
MX_DEFINE_TILES(fast_q5_k, DEFINE_K_TILE, q5_k, K_R, K_T, K_D)
MX_DEFINE_TILES(fast_bf16, DEFINE_BF_TILE, 0, BF_R, BF_T, BF_D)

#include "fast_lanes.h"
#include "fast_q4_0.h"
#include "fast_q4_k.h"
#include "fast_q6_k.h"
static const mx_tiles fast_q4_0 = {.rows = q4_0_rows};
static const mx_tiles fast_q4_k = {.rows = q4_k_rows};
static const mx_tiles fast_q6_k = {.rows = q6_k_rows};
#include "fast_bf16p.h"

const mx_tiles *FAST_TILES(mx_dtype t, bool packed) {
        if (packed)
                return &fast_bf16p;
        static const mx_tiles *const all[MX_DTYPE_COUNT] = {
                [MX_DTYPE_BF16] = &fast_bf16, [MX_DTYPE_Q8_0] = &fast_q8_0, [MX_DTYPE_Q4_0] = &fast_q4_0,
                [MX_DTYPE_Q4_K] = &fast_q4_k, [MX_DTYPE_Q5_K] = &fast_q5_k, [MX_DTYPE_Q6_K] = &fast_q6_k,
        };
        return (unsigned)t < MX_DTYPE_COUNT ? all[t] : NULL;
}
