/* The fast path's tiles (kernels.h), written once over a small vector
 * layer that fast_avx2.c (two ymm registers) and fast_avx512.c (one zmm)
 * define before including this: 64 bytes `vb`, 16 int32 lanes `vi`, 16
 * float lanes `vf`, and:
 *
 *   vb_load(p), vb_load2(lo, hi)        64 bytes; two 32-byte halves (hi NULL: zeros)
 *   vb_load_n(p, n)                     n < 64 bytes, zeros after
 *   vb_nibbles(p)                       32 bytes' low nibbles, then their high nibbles
 *   vb_q4_0_pair(qs0, qs1)              two Q4_0 blocks' nibbles (qs1 NULL: zeros)
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
 *   vf_zero, vf_set1, vf_halves(lo, hi), vf_quarters(p), vf_mul, vf_fma, vf_cvt,
 *   vf_reduce (mx_reduce16's order)
 *   bfw / bfx / bf_wprep / bf_xprep / bf_mac
 *                                       one vdpbf16ps step, native or emulated
 *   I8_R, I8_T, BF_R, BF_T              prefill tile shapes
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

/* ---- block weights against MX_ACT_Q8: 64 values (two blocks of 32) per step ------------ */

/* A row's unit: a pair of 32-blocks (Q8_0, Q4_0) or a super-block
 * (K-quants, four pairs), decoded to what each step needs. */
typedef struct wunit {
        const void *blk;
        float ws[16];        /* the weight scale of each sub-block (or block) */
        __m256 dm;           /* Q4_K, Q5_K: dmin * m of each sub-block */
} wunit;

/* Signed weight levels x activations, per 4: an unsigned level u with
 * value u - OFF is summed as u . x - OFF x (the activations' sums by 4),
 * which the token's step makes once for all rows. */
static inline vi xsum4(vb x) {
        return vi_dpbusd(vi_zero(), vb_set1(1), x);
}

#define q4_0_BLOCKS 2
#define q4_0_MINS 0
static inline void q4_0_prep(const uint8_t *row, uint64_t un, uint64_t nb, wunit *U) {
        const mx_block_q4_0 *b = (const mx_block_q4_0 *)row + 2 * un;
        U->blk = b;
        U->ws[0] = f16c(b[0].d), U->ws[1] = 2 * un + 1 < nb ? f16c(b[1].d) : 0.0f;
}
static inline void q4_0_step(const wunit *U, int c, bool two, vb *u, vf *ws) {
        const mx_block_q4_0 *b = U->blk;
        *u = vb_q4_0_pair(b[0].qs, two ? b[1].qs : NULL);
        *ws = vf_halves(U->ws[0], U->ws[1]);
}
static inline vi q4_0_xoff(vb x) {
        return vi_neg_shl(xsum4(x), 3);
}
static inline vi q4_0_dot(vb u, vb x, vi off) {
        return vi_dpbusd(off, u, x);
}

#define q8_0_BLOCKS 2
#define q8_0_MINS 0
static inline void q8_0_prep(const uint8_t *row, uint64_t un, uint64_t nb, wunit *U) {
        const mx_block_q8_0 *b = (const mx_block_q8_0 *)row + 2 * un;
        U->blk = b;
        U->ws[0] = f16c(b[0].d), U->ws[1] = 2 * un + 1 < nb ? f16c(b[1].d) : 0.0f;
}
#if MX_VNNI
/* vpdpbusd wants an unsigned factor: q + 128, less 128 x the activations. */
static inline void q8_0_step(const wunit *U, int c, bool two, vb *u, vf *ws) {
        const mx_block_q8_0 *b = U->blk;
        vb v = vb_xor(vb_load2(b[0].qs, two ? b[1].qs : NULL), vb_set1(0x80));
        *u = two ? v : vb_low_half(v);
        *ws = vf_halves(U->ws[0], U->ws[1]);
}
static inline vi q8_0_xoff(vb x) {
        return vi_neg_shl(xsum4(x), 7);
}
static inline vi q8_0_dot(vb u, vb x, vi off) {
        return vi_dpbusd(off, u, x);
}
#else
static inline void q8_0_step(const wunit *U, int c, bool two, vb *u, vf *ws) {
        const mx_block_q8_0 *b = U->blk;
        *u = vb_load2(b[0].qs, two ? b[1].qs : NULL);
        *ws = vf_halves(U->ws[0], U->ws[1]);
}
static inline vi q8_0_xoff(vb x) {
        return vi_zero();
}
static inline vi q8_0_dot(vb w, vb x, vi off) {
        return vi_dot_s8(w, x);
}
#endif

/* Q4_K and Q5_K: d * sc and dmin * m of the eight sub-blocks, from their
 * 6-bit scales and mins (mx_q4k_scale, eight at once). */
static inline void kmin_prep(const uint8_t *s, uint16_t d, uint16_t dmin, wunit *U) {
        uint32_t a0, a1, a2;
        memcpy(&a0, s, 4), memcpy(&a1, s + 4, 4), memcpy(&a2, s + 8, 4);
        uint32_t sc_lo = a0 & 0x3f3f3f3fu, m_lo = a1 & 0x3f3f3f3fu;
        uint32_t sc_hi = (a2 & 0x0f0f0f0fu) | ((a0 >> 6) & 0x03030303u) << 4;
        uint32_t m_hi = ((a2 >> 4) & 0x0f0f0f0fu) | ((a1 >> 6) & 0x03030303u) << 4;
        __m256 sc = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_set_epi32(0, 0, (int)sc_hi, (int)sc_lo)));
        __m256 m = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_set_epi32(0, 0, (int)m_hi, (int)m_lo)));
        _mm256_storeu_ps(U->ws, _mm256_mul_ps(_mm256_set1_ps(f16c(d)), sc));
        U->dm = _mm256_mul_ps(_mm256_set1_ps(f16c(dmin)), m);
}

#define q4_k_BLOCKS 8
#define q4_k_MINS 1
static inline void q4_k_prep(const uint8_t *row, uint64_t un, uint64_t nb, wunit *U) {
        const mx_block_q4_k *b = (const mx_block_q4_k *)row + un;
        U->blk = b;
        kmin_prep(b->scales, b->d, b->dmin, U);
}
static inline void q4_k_step(const wunit *U, int c, bool two, vb *u, vf *ws) {
        *u = vb_nibbles(((const mx_block_q4_k *)U->blk)->qs + 32 * c);
        *ws = vf_halves(U->ws[2 * c], U->ws[2 * c + 1]);
}
static inline vi q4_k_xoff(vb x) {
        return vi_zero();
}
static inline vi q4_k_dot(vb u, vb x, vi off) {
        return vi_dpbusd(vi_zero(), u, x);
}

#define q5_k_BLOCKS 8
#define q5_k_MINS 1
static inline void q5_k_prep(const uint8_t *row, uint64_t un, uint64_t nb, wunit *U) {
        const mx_block_q5_k *b = (const mx_block_q5_k *)row + un;
        U->blk = b;
        kmin_prep(b->scales, b->d, b->dmin, U);
}
static inline void q5_k_step(const wunit *U, int c, bool two, vb *u, vf *ws) {
        const mx_block_q5_k *b = U->blk;
        *u = vb_bit_halves(vb_nibbles(b->qs + 32 * c), vb_load2(b->qh, b->qh), 2 * c, 2 * c + 1, 16);
        *ws = vf_halves(U->ws[2 * c], U->ws[2 * c + 1]);
}
#define q5_k_xoff q4_k_xoff
#define q5_k_dot q4_k_dot

#define q6_k_BLOCKS 8
#define q6_k_MINS 0
static inline void q6_k_prep(const uint8_t *row, uint64_t un, uint64_t nb, wunit *U) {
        const mx_block_q6_k *b = (const mx_block_q6_k *)row + un;
        U->blk = b;
        __m128i sc = _mm_loadu_si128((const __m128i *)b->scales);
        __m256 d = _mm256_set1_ps(f16c(b->d));
        _mm256_storeu_ps(U->ws, _mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(sc))));
        _mm256_storeu_ps(U->ws + 8, _mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(sc, 8)))));
}
/* Step c: 64 bytes of ql (low nibbles for even c, high for odd), and two
 * bits of qh per value (bits 4(c%2) and 4(c%2)+2 of qh[32(c/2)..]). */
static inline void q6_k_step(const wunit *U, int c, bool two, vb *u, vf *ws) {
        const mx_block_q6_k *b = U->blk;
        vb ql = vb_load(b->ql + 64 * (c / 2));
        if (c & 1)
                ql = vb_srl_halves(ql, 4, 4);
        const uint8_t *qh = b->qh + 32 * (c / 2);
        vb hi = vb_srl_halves(vb_load2(qh, qh), 4 * (c & 1), 4 * (c & 1) + 2);
        *u = vb_or(vb_and(ql, vb_set1(0x0f)), vb_shl4(vb_and(hi, vb_set1(3))));
        *ws = vf_quarters(U->ws + 4 * c);
}
static inline vi q6_k_xoff(vb x) {
        return vi_neg_shl(xsum4(x), 5);
}
#define q6_k_dot q4_0_dot

static inline float reduce8(__m256 g) {
        __m128 a = _mm_add_ps(_mm256_castps256_ps128(g), _mm256_extractf128_ps(g, 1));
        __m128 b = _mm_add_ps(a, _mm_movehl_ps(a, a));
        return _mm_cvtss_f32(_mm_add_ss(b, _mm_shuffle_ps(b, b, 1)));
}

#define DEFINE_INT8_TILE(NAME, TY, R, T)                                                           \
        static void NAME(const uint8_t *w, uint64_t rb, const uint8_t *x, uint64_t ldx, uint64_t K, \
                         float *out, uint64_t ldo, bool accumulate) {                              \
                enum { BLOCKS = TY##_BLOCKS, MINS = TY##_MINS };                                   \
                const uint64_t nb = K / 32;                                                        \
                vf F[R][T];                                                                        \
                __m256 G[R][T];                                                                    \
                UNROLL for (int r = 0; r < R; r++) UNROLL for (int t = 0; t < T; t++)              \
                        F[r][t] = vf_zero(), G[r][t] = _mm256_setzero_ps();                        \
                for (uint64_t un = 0; un < (nb + BLOCKS - 1) / BLOCKS; un++) {                     \
                        wunit U[R];                                                                \
                        UNROLL for (int r = 0; r < R; r++) TY##_prep(w + r * rb, un, nb, &U[r]);   \
                        UNROLL for (int t = 0; MINS && t < T; t++) {                               \
                                __m256 xs = _mm256_loadu_ps(mx_act_sums(x + t * ldx, K) + BLOCKS * un); \
                                UNROLL for (int r = 0; r < R; r++) G[r][t] = _mm256_fmadd_ps(U[r].dm, xs, G[r][t]); \
                        }                                                                          \
                        UNROLL for (int c = 0; c < BLOCKS / 2; c++) {                              \
                                uint64_t pair = un * (BLOCKS / 2) + (uint64_t)c;                   \
                                bool two = 2 * pair + 1 < nb;                                      \
                                vb u[R];                                                           \
                                vf ws[R];                                                          \
                                UNROLL for (int r = 0; r < R; r++) TY##_step(&U[r], c, two, &u[r], &ws[r]); \
                                UNROLL for (int t = 0; t < T; t++) {                               \
                                        const uint8_t *xt = x + t * ldx;                           \
                                        const float *dx = mx_act_scales(xt, K);                    \
                                        vb xv = vb_load2(xt + 64 * pair, two ? xt + 64 * pair + 32 : NULL); \
                                        vf dxv = vf_halves(dx[2 * pair], two ? dx[2 * pair + 1] : 0.0f); \
                                        vi off = TY##_xoff(xv);                                    \
                                        UNROLL for (int r = 0; r < R; r++) F[r][t] = vf_fma(       \
                                                vf_mul(ws[r], dxv), vf_cvt(TY##_dot(u[r], xv, off)), F[r][t]); \
                                }                                                                  \
                        }                                                                          \
                }                                                                                  \
                UNROLL for (int t = 0; t < T; t++) UNROLL for (int r = 0; r < R; r++)              \
                        mx_tile_put(out + t * ldo + r, MINS ? vf_reduce(F[r][t]) - reduce8(G[r][t])   \
                                                            : vf_reduce(F[r][t]), accumulate);     \
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

MX_DEFINE_TILES(fast_q8_0, DEFINE_INT8_TILE, q8_0, I8_R, I8_T)
MX_DEFINE_TILES(fast_q4_0, DEFINE_INT8_TILE, q4_0, I8_R, I8_T)
MX_DEFINE_TILES(fast_q4_k, DEFINE_INT8_TILE, q4_k, I8_R, I8_T)
MX_DEFINE_TILES(fast_q5_k, DEFINE_INT8_TILE, q5_k, I8_R, I8_T)
MX_DEFINE_TILES(fast_q6_k, DEFINE_INT8_TILE, q6_k, I8_R, I8_T)
MX_DEFINE_TILES(fast_bf16, DEFINE_BF_TILE, 0, BF_R, BF_T)

const mx_tiles *FAST_TILES(mx_dtype t) {
        static const mx_tiles *const all[MX_DTYPE_COUNT] = {
                [MX_DTYPE_BF16] = &fast_bf16, [MX_DTYPE_Q8_0] = &fast_q8_0, [MX_DTYPE_Q4_0] = &fast_q4_0,
                [MX_DTYPE_Q4_K] = &fast_q4_k, [MX_DTYPE_Q5_K] = &fast_q5_k, [MX_DTYPE_Q6_K] = &fast_q6_k,
        };
        return (unsigned)t < MX_DTYPE_COUNT ? all[t] : NULL;
}
