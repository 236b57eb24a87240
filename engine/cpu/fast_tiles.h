/* The fast path's tiles (kernels.h), written once over a small vector
 * layer that fast_avx2.c (two ymm registers) and fast_avx512.c (one zmm)
 * define before including this: 64 bytes `vb`, 16 int32 lanes `vi` (also
 * 32 int16), 16 float lanes `vf`, and:
 *
 *   vb_load(p), vb_load2(lo, hi)        64 bytes; two 32-byte halves (hi NULL: zeros)
 *   vb_load_n(p, n)                     n < 64 bytes, zeros after
 *   vb_q4_0_pair(qs0, qs1)              two Q4_0 blocks' quants as int8 q - 8 (qs1 NULL: zeros)
 *   vb_nibbles(p)                       32 bytes' low nibbles, then their high nibbles
 *   vb_set1 / vb_and / vb_or            bytes
 *   vb_srl_halves(v, lo, hi)            16-bit right shifts, by lo in the first 32 bytes, hi in
 *                                       the rest; vb_shl4(v) 16-bit left shifts by 4
 *   vb_bit_halves(v, src, b0, b1, add)  v plus `add` in each byte whose byte of src has bit b0
 *                                       (first 32 bytes) or bit b1 (the rest) set
 *   vs8 / vs8_prep(w) / vs8_xprep(x) / vs8_dot(w, x)
 *                                       exact sums of int8 products per 4 bytes
 *   vi_maddubs(u, x)                    unsigned x signed byte pairs into int16 (exact here)
 *   vi_dpwssd(acc, a, b)                acc + int16 pairs' products, per int32 lane
 *   vi_halves16(p), vi_quarters16(p)    int16 lanes: p[0], p[1] (p[0] .. p[3]) each on 16 (8)
 *                                       consecutive lanes
 *   vi_zero, vf_zero, vf_set1, vf_halves(lo, hi), vf_mul, vf_fma, vf_cvt,
 *   vf_reduce (mx_reduce16's order)
 *   bfw / bfx / bf_wprep / bf_xprep / bf_mac
 *                                       one vdpbf16ps step, native or emulated
 *   Q32_R, Q32_T, K_R, K_T, BF_R, BF_T  prefill tile shapes
 *   FAST_TILES                          the name of the table function
 *
 * The integer sums are exact, and every float operation is the one the
 * reference (kernels_scalar.c) does, in the same order. */
#include <math.h>
#include <string.h>

#include "quant.h"

/* ---- Q8_0 and Q4_0 against MX_ACT_Q8: a pair of blocks per step -------------------- */

typedef struct q32w {
        vs8 w;   /* the pair's weights, int8 */
        vf dw;   /* lanes 0-7: the first block's scale, 8-15: the second's (0 if none) */
} q32w;

static inline float f16c(uint16_t h) {
        return _cvtsh_ss(h);
}

static inline void q8_0_wload(const uint8_t *row, uint64_t u, bool two, q32w *W) {
        const mx_block_q8_0 *b = (const mx_block_q8_0 *)row + 2 * u;
        W->w = vs8_prep(vb_load2(b[0].qs, two ? b[1].qs : NULL));
        W->dw = vf_halves(f16c(b[0].d), two ? f16c(b[1].d) : 0.0f);
}

static inline void q4_0_wload(const uint8_t *row, uint64_t u, bool two, q32w *W) {
        const mx_block_q4_0 *b = (const mx_block_q4_0 *)row + 2 * u;
        W->w = vs8_prep(vb_q4_0_pair(b[0].qs, two ? b[1].qs : NULL));
        W->dw = vf_halves(f16c(b[0].d), two ? f16c(b[1].d) : 0.0f);
}

#define DEFINE_Q32_TILE(NAME, WLOAD, R, T)                                                         \
        static void NAME(const uint8_t *w, uint64_t rb, const uint8_t *x, uint64_t ldx, uint64_t K, \
                         float *out, uint64_t ldo, bool accumulate) {                              \
                const uint64_t nb = K / 32;                                                        \
                vf F[R][T];                                                                        \
                UNROLL for (int r = 0; r < R; r++) UNROLL for (int t = 0; t < T; t++) F[r][t] = vf_zero(); \
                for (uint64_t u = 0; u < (nb + 1) / 2; u++) {                                      \
                        bool two = 2 * u + 1 < nb;                                                 \
                        q32w W[R];                                                                 \
                        UNROLL for (int r = 0; r < R; r++) WLOAD(w + r * rb, u, two, &W[r]);       \
                        UNROLL for (int t = 0; t < T; t++) {                                       \
                                const uint8_t *xt = x + t * ldx;                                   \
                                const float *dx = mx_act_scales(xt, K);                            \
                                vb xv = vs8_xprep(vb_load2(xt + 64 * u, two ? xt + 64 * u + 32 : NULL)); \
                                vf dxv = vf_halves(dx[2 * u], two ? dx[2 * u + 1] : 0.0f);         \
                                UNROLL for (int r = 0; r < R; r++) F[r][t] =                       \
                                        vf_fma(vf_mul(W[r].dw, dxv), vf_cvt(vs8_dot(W[r].w, xv)), F[r][t]); \
                        }                                                                          \
                }                                                                                  \
                UNROLL for (int t = 0; t < T; t++) UNROLL for (int r = 0; r < R; r++)              \
                        mx_tile_put(out + t * ldo + r, vf_reduce(F[r][t]), accumulate);            \
        }

/* ---- K-quants against MX_ACT_Q8K: a super-block per step, four chunks of 64 ------------ */

/* What a row's super-block gives every token. */
typedef struct kw {
        const void *blk;
        float d, c;          /* d, and the offset term's scale (dmin, or d for Q6_K) */
        int16_t sc[16];      /* sub-block scales (8 for Q4_K/Q5_K) */
        __m256i cw;          /* [16] int16: the offset term's weight per 16 activations */
} kw;

/* The offset term: sum of cw x the token's activation sums, exact. */
static inline int k_cterm(__m256i cw, const int16_t *sums) {
        __m256i v = _mm256_madd_epi16(cw, _mm256_loadu_si256((const __m256i *)sums));
        __m128i a = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
        a = _mm_add_epi32(a, _mm_shuffle_epi32(a, 0x4e));
        a = _mm_add_epi32(a, _mm_shuffle_epi32(a, 0xb1));
        return _mm_cvtsi128_si32(a);
}

/* Q4_K and Q5_K: the 6-bit scales and mins (mx_q4k_scale, eight at once). */
static inline void kmin_prep(const uint8_t *s, uint16_t d, uint16_t dmin, kw *W) {
        uint32_t a0, a1, a2;
        memcpy(&a0, s, 4), memcpy(&a1, s + 4, 4), memcpy(&a2, s + 8, 4);
        uint32_t sc_lo = a0 & 0x3f3f3f3fu, m_lo = a1 & 0x3f3f3f3fu;
        uint32_t sc_hi = (a2 & 0x0f0f0f0fu) | ((a0 >> 6) & 0x03030303u) << 4;
        uint32_t m_hi = ((a2 >> 4) & 0x0f0f0f0fu) | ((a1 >> 6) & 0x03030303u) << 4;
        __m128i v = _mm_cvtepu8_epi16(_mm_set_epi32(0, 0, (int)sc_hi, (int)sc_lo));
        _mm_storeu_si128((__m128i *)W->sc, v);
        /* Each min weighs the two 16-value sums of its sub-block. */
        __m128i m = _mm_cvtepu8_epi16(_mm_set_epi32(0, 0, (int)m_hi, (int)m_lo));
        W->cw = _mm256_set_m128i(_mm_unpackhi_epi16(m, m), _mm_unpacklo_epi16(m, m));
        W->d = f16c(d), W->c = f16c(dmin);
}

static inline void q4_k_prep(const void *blk, kw *W) {
        const mx_block_q4_k *b = blk;
        W->blk = blk;
        kmin_prep(b->scales, b->d, b->dmin, W);
}

static inline void q5_k_prep(const void *blk, kw *W) {
        const mx_block_q5_k *b = blk;
        W->blk = blk;
        kmin_prep(b->scales, b->d, b->dmin, W);
}

static inline void q6_k_prep(const void *blk, kw *W) {
        const mx_block_q6_k *b = blk;
        W->blk = blk;
        __m256i sc = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)b->scales));
        _mm256_storeu_si256((__m256i *)W->sc, sc);
        W->cw = _mm256_slli_epi16(sc, 5); /* 32 x scale */
        W->d = W->c = f16c(b->d);
}

/* Chunk c's unsigned quants and the int16 scale of each pair of them. */
static inline vb q4_k_u(const kw *W, int c) {
        return vb_nibbles(((const mx_block_q4_k *)W->blk)->qs + 32 * c);
}

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

static inline vi q6_k_sc(const kw *W, int c) {
        return vi_quarters16(W->sc + 4 * c);
}

#define q4_k_sc kmin_sc
#define q5_k_sc kmin_sc

#define DEFINE_K_TILE(NAME, TY, R, T)                                                              \
        static void NAME(const uint8_t *w, uint64_t rb, const uint8_t *x, uint64_t ldx, uint64_t K, \
                         float *out, uint64_t ldo, bool accumulate) {                              \
                const uint64_t bytes = sizeof(mx_block_##TY);                                      \
                vf F[R][T];                                                                        \
                float G[R][T];                                                                     \
                UNROLL for (int r = 0; r < R; r++) UNROLL for (int t = 0; t < T; t++) F[r][t] = vf_zero(), G[r][t] = 0; \
                for (uint64_t sb = 0; sb < K / 256; sb++) {                                        \
                        kw W[R];                                                                   \
                        float dx[T];                                                               \
                        UNROLL for (int r = 0; r < R; r++) TY##_prep(w + r * rb + sb * bytes, &W[r]); \
                        UNROLL for (int t = 0; t < T; t++) {                                       \
                                const uint8_t *xt = x + t * ldx;                                   \
                                dx[t] = mx_act_scales(xt, K)[sb];                                  \
                                UNROLL for (int r = 0; r < R; r++) G[r][t] = fmaf(W[r].c * dx[t],  \
                                        (float)k_cterm(W[r].cw, mx_act_sums(xt, K) + 16 * sb), G[r][t]); \
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
                        mx_tile_put(out + t * ldo + r, vf_reduce(F[r][t]) - G[r][t], accumulate);  \
        }

/* ---- BF16 against MX_ACT_BF16: 32 values per step -------------------------------------- */

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

MX_DEFINE_TILES(fast_q8_0, DEFINE_Q32_TILE, q8_0_wload, Q32_R, Q32_T)
MX_DEFINE_TILES(fast_q4_0, DEFINE_Q32_TILE, q4_0_wload, Q32_R, Q32_T)
MX_DEFINE_TILES(fast_q4_k, DEFINE_K_TILE, q4_k, K_R, K_T)
MX_DEFINE_TILES(fast_q5_k, DEFINE_K_TILE, q5_k, K_R, K_T)
MX_DEFINE_TILES(fast_q6_k, DEFINE_K_TILE, q6_k, K_R, K_T)
MX_DEFINE_TILES(fast_bf16, DEFINE_BF_TILE, 0, BF_R, BF_T)

const mx_tiles *FAST_TILES(mx_dtype t) {
        static const mx_tiles *const all[MX_DTYPE_COUNT] = {
                [MX_DTYPE_BF16] = &fast_bf16, [MX_DTYPE_Q8_0] = &fast_q8_0, [MX_DTYPE_Q4_0] = &fast_q4_0,
                [MX_DTYPE_Q4_K] = &fast_q4_k, [MX_DTYPE_Q5_K] = &fast_q5_k, [MX_DTYPE_Q6_K] = &fast_q6_k,
        };
        return (unsigned)t < MX_DTYPE_COUNT ? all[t] : NULL;
}
