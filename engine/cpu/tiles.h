/* How the SIMD kernels cover a product with their register tiles; shared
 * by kernels_{avx2,avx512}.c, fast_{avx2,avx512}.c and their vector layers
 * simd_{avx2,avx512}.h (each compiled into its instruction set's libraries
 * with their flags, once without and once with the dot-product
 * instructions, MX_VNNI). Every tile computes each of
 * its outputs in the reference order (kernels.h), so the choice of tile
 * never changes a result. */
#pragma once

#include "kernels.h"

/* A variant's symbols: mx_kernels_avx512 or mx_kernels_avx512_vnni. */
#if MX_VNNI
#define MX_SYM(name) name##_vnni
#else
#define MX_SYM(name) name
#endif

/* Rows w[0..R) (row_bytes apart) against tokens x[0..T) (ldx bytes apart:
 * fp32 on the f32 path, the mx_act format on the fast path), K values. */
typedef void (*mx_tile_fn)(const uint8_t *w, uint64_t row_bytes, const uint8_t *x, uint64_t ldx, uint64_t K,
                           float *out, uint64_t ldo, bool accumulate);

typedef struct mx_tiles {
        mx_tile_fn one[4];            /* 1 row x 1..3 tokens (index = tokens) */
        mx_tile_fn dec[4];            /* D rows x 1..3 tokens */
        mx_tile_fn big, big_col;      /* R x T, and R x 1 for leftover tokens */
        uint32_t R, T, D;
        /* Instead of all the above: a type whose kernels cover rows their
         * own way (fast_q4_0.h). */
        void (*rows)(const mx_matmul_args *a, uint64_t r0, uint64_t r1);
} mx_tiles;

/* The fast path's tiles for a weight type (fast_*.c), or for packed BF16
 * rows (MX_BF16P); NULL for F16/F32. */
const mx_tiles *MX_SYM(mx_fast_tiles_avx2)(mx_dtype t, bool packed);
const mx_tiles *MX_SYM(mx_fast_tiles_avx512)(mx_dtype t, bool packed);

/* Tokens per block in prefill: their activations stay in L2 while the
 * block's rows go by. */
#define MX_TOKEN_BLOCK 48

#define UNROLL _Pragma("GCC unroll 16")

/* Decode streams each weight once; a tile of D rows reads them
 * interleaved, block by block, which the hardware prefetchers follow
 * badly, and each task's first rows start cold. So the kernels ask for
 * the bytes this far ahead themselves: measured on Zen 5 (2 threads,
 * q4_k_m b1), decode 1.17x faster; 2 to 8 KiB did about as well. */
#define MX_PREFETCH_AHEAD 4096

/* [p, p + bytes) on its way into the cache, up to end. */
static inline void mx_prefetch(const uint8_t *p, const uint8_t *end, uint64_t bytes) {
        const uint8_t *q = p + bytes < end ? p + bytes : end;
        for (; p < q; p += 64)
                __builtin_prefetch(p);
}

static inline void mx_tiles_rows(const mx_tiles *tl, const mx_matmul_args *a, uint64_t r0, uint64_t r1) {
        if (tl->rows) {
                tl->rows(a, r0, r1);
                return;
        }
        uint64_t rb = a->packed, K = a->cols, r = r0;
        if (!rb)
                mx_dtype_row_bytes(a->dtype, a->cols, &rb);
        const uint8_t *x = a->xq ? a->xq : (const uint8_t *)a->x;
        uint64_t ldx = a->xq ? a->ldxq : a->ldx * sizeof(float);
        if (a->n < 4) {
                /* Decode: a few rows at a time, ascending, each tile asking
                 * for the bytes MX_PREFETCH_AHEAD on (the first tile's too),
                 * then the rest one by one. */
                const uint8_t *end = a->w + r1 * rb;
                mx_prefetch(a->w + r * rb, end, MX_PREFETCH_AHEAD);
                for (; a->n && r + tl->D <= r1; r += tl->D) {
                        mx_prefetch(a->w + r * rb + MX_PREFETCH_AHEAD, end, tl->D * rb);
                        tl->dec[a->n](a->w + r * rb, rb, x, ldx, K, a->out + r, a->ldo, a->accumulate);
                }
                for (; a->n && r < r1; r++) {
                        mx_prefetch(a->w + r * rb + MX_PREFETCH_AHEAD, end, rb);
                        tl->one[a->n](a->w + r * rb, rb, x, ldx, K, a->out + r, a->ldo, a->accumulate);
                }
                return;
        }
        uint64_t full = r0 + (r1 - r0) / tl->R * tl->R;
        for (uint32_t t0 = 0; t0 < a->n; t0 += MX_TOKEN_BLOCK) {
                uint32_t t1 = a->n - t0 < MX_TOKEN_BLOCK ? a->n : t0 + MX_TOKEN_BLOCK;
                for (uint64_t q = r0; q < full; q += tl->R) {
                        uint32_t t = t0;
                        for (; t + tl->T <= t1; t += tl->T)
                                tl->big(a->w + q * rb, rb, x + t * ldx, ldx, K, a->out + t * a->ldo + q, a->ldo,
                                        a->accumulate);
                        for (; t < t1; t++)
                                tl->big_col(a->w + q * rb, rb, x + t * ldx, ldx, K, a->out + t * a->ldo + q,
                                            a->ldo, a->accumulate);
                }
        }
        for (r = full; r < r1; r++)
                for (uint32_t t = 0; t < a->n; t++)
                        tl->one[1](a->w + r * rb, rb, x + t * ldx, ldx, K, a->out + t * a->ldo + r, a->ldo,
                                   a->accumulate);
}

/* The tile set of a kind of tile: 1 and D rows x 1..3 tokens (decode),
 * R x T and R x 1 (prefill), each made by DEFINE(fn name, arg, rows,
 * tokens). Each output of a tile is one chain of dependent fused
 * multiply-adds (the reference order), so a row alone in decode waits on
 * their latency where its steps are cheap (bf16, Q4_K: D = 4 measured up
 * to 1.3x faster); where they are not, more rows only spill registers
 * (D = 1). */
#define MX_DEFINE_TILES(SET, DEFINE, ARG, R, T, D)                                                  \
        DEFINE(SET##_1x1, ARG, 1, 1)                                                               \
        DEFINE(SET##_1x2, ARG, 1, 2)                                                               \
        DEFINE(SET##_1x3, ARG, 1, 3)                                                               \
        DEFINE(SET##_dx1, ARG, D, 1)                                                               \
        DEFINE(SET##_dx2, ARG, D, 2)                                                               \
        DEFINE(SET##_dx3, ARG, D, 3)                                                               \
        DEFINE(SET##_big, ARG, R, T)                                                               \
        DEFINE(SET##_col, ARG, R, 1)                                                               \
        static const mx_tiles SET = {{NULL, SET##_1x1, SET##_1x2, SET##_1x3},                      \
                                     {NULL, SET##_dx1, SET##_dx2, SET##_dx3}, SET##_big, SET##_col, R, T, D, NULL};

/* One output of a tile: stored or added. */
static inline void mx_tile_put(float *o, float s, bool accumulate) {
        *o = accumulate ? *o + s : s;
}

/* The f32 path's R x T tile of a block type, over a vector layer's vf_*
 * (simd_avx2.h, simd_avx512.h; the includer includes quant.h): each row's
 * block decoded into L1 (the values mx_dequant_row gives), then 16-wide
 * steps over it. Rows are whole blocks, so there is no tail. */
#define DEFINE_QTILE(NAME, DTYPE, R, T)                                                            \
        static void NAME(const uint8_t *w, uint64_t row_bytes, const uint8_t *xb, uint64_t ldxb,   \
                         uint64_t K, float *out, uint64_t ldo, bool accumulate) {                  \
                const float *x = (const float *)xb;                                                \
                const uint64_t qk = mx_dtype_block_elems(DTYPE), bytes = mx_dtype_block_bytes(DTYPE); \
                const uint64_t ldx = ldxb / sizeof(float);                                         \
                _Alignas(64) float wbuf[R][MX_QK_K];                                               \
                vf acc[R][T];                                                                      \
                UNROLL for (int r = 0; r < R; r++) UNROLL for (int t = 0; t < T; t++) acc[r][t] = vf_zero(); \
                for (uint64_t b = 0; b < K / qk; b++) {                                            \
                        UNROLL for (int r = 0; r < R; r++)                                         \
                                mx_dequant_block(DTYPE, w + r * row_bytes + b * bytes, wbuf[r]);   \
                        for (uint64_t k = 0; k < qk; k += 16) {                                    \
                                vf wv[R];                                                          \
                                UNROLL for (int r = 0; r < R; r++) wv[r] = vf_load(wbuf[r] + k);   \
                                UNROLL for (int t = 0; t < T; t++) {                               \
                                        vf xv = vf_load(x + t * ldx + b * qk + k);                 \
                                        UNROLL for (int r = 0; r < R; r++) acc[r][t] = vf_fma(wv[r], xv, acc[r][t]); \
                                }                                                                  \
                        }                                                                          \
                }                                                                                  \
                UNROLL for (int t = 0; t < T; t++) UNROLL for (int r = 0; r < R; r++)              \
                        mx_tile_put(out + t * ldo + r, vf_reduce(acc[r][t]), accumulate);          \
        }

/* An instruction set's f32-path tile sets of every type, their table and
 * its matmul_rows, which takes the fast path's table function FAST when
 * the activations were rounded. The includer defines DEFINE_TILE(NAME,
 * LOAD, bytes per weight, R, T) and the loads load_bf16, load_f16 and
 * load_f32 of 16 weights; R x T prefill tiles, D decode rows for the float
 * types. */
#define MX_LOAD_BF16 load_bf16, 2
#define MX_LOAD_F16 load_f16, 2
#define MX_LOAD_F32 load_f32, 4
#define MX_KERNEL_TILES(R, T, D, FAST)                                                             \
        MX_DEFINE_TILES(tiles_bf16, DEFINE_TILE, MX_LOAD_BF16, R, T, D)                            \
        MX_DEFINE_TILES(tiles_f16, DEFINE_TILE, MX_LOAD_F16, R, T, D)                              \
        MX_DEFINE_TILES(tiles_f32, DEFINE_TILE, MX_LOAD_F32, R, T, D)                              \
        MX_DEFINE_TILES(tiles_q8_0, DEFINE_QTILE, MX_DTYPE_Q8_0, R, T, 1)                          \
        MX_DEFINE_TILES(tiles_q4_0, DEFINE_QTILE, MX_DTYPE_Q4_0, R, T, 1)                          \
        MX_DEFINE_TILES(tiles_q4_k, DEFINE_QTILE, MX_DTYPE_Q4_K, R, T, 1)                          \
        MX_DEFINE_TILES(tiles_q5_k, DEFINE_QTILE, MX_DTYPE_Q5_K, R, T, 1)                          \
        MX_DEFINE_TILES(tiles_q6_k, DEFINE_QTILE, MX_DTYPE_Q6_K, R, T, 1)                          \
        static const mx_tiles *const f32_tiles[MX_DTYPE_COUNT] = {                                 \
                [MX_DTYPE_F32] = &tiles_f32,   [MX_DTYPE_F16] = &tiles_f16,                        \
                [MX_DTYPE_BF16] = &tiles_bf16, [MX_DTYPE_Q8_0] = &tiles_q8_0,                      \
                [MX_DTYPE_Q4_0] = &tiles_q4_0, [MX_DTYPE_Q4_K] = &tiles_q4_k,                      \
                [MX_DTYPE_Q5_K] = &tiles_q5_k, [MX_DTYPE_Q6_K] = &tiles_q6_k,                      \
        };                                                                                         \
        static void matmul_rows(const mx_matmul_args *a, uint64_t r0, uint64_t r1) {               \
                mx_tiles_rows(a->xq ? FAST(a->dtype, a->packed != 0) : f32_tiles[a->dtype], a, r0, r1); \
        }

/* Attention's scores kernel over a tile of H heads x H keys (TILE, with
 * scores_of for one head): heads H at a time, keys H at a time; the
 * leftovers of either go head by head. */
#define MX_DEFINE_SCORES(H, TILE)                                                                  \
        static inline __attribute__((always_inline)) void scores_heads(                            \
                const float *q, uint32_t nq, const void *k, uint64_t step, bool bf16, uint32_t n, uint32_t hd, \
                float scale, float *out, uint64_t ld) {                                            \
                size_t es = bf16 ? 2 : 4;                                                          \
                uint32_t h = 0;                                                                    \
                for (; h + H <= nq; h += H) {                                                      \
                        uint32_t i = 0;                                                            \
                        for (; i + H <= n; i += H)                                                 \
                                TILE(q + (size_t)h * hd, (const uint8_t *)k + i * step * es, step, bf16, hd, scale, \
                                     out + h * ld + i, ld);                                        \
                        if (i < n)                                                                 \
                                for (uint32_t x = h; x < h + H; x++)                               \
                                        scores_of(q + (size_t)x * hd, (const uint8_t *)k + i * step * es, step, bf16, \
                                                  n - i, hd, scale, out + x * ld + i);             \
                }                                                                                  \
                for (; h < nq; h++)                                                                \
                        scores_of(q + (size_t)h * hd, k, step, bf16, n, hd, scale, out + h * ld); \
        }                                                                                          \
                                                                                                   \
        static void scores(const float *q, uint32_t nq, const void *k, uint64_t step, bool bf16, uint32_t n, \
                           uint32_t hd, float scale, float *out, uint64_t ld) {                    \
                if (bf16)                                                                          \
                        scores_heads(q, nq, k, step, true, n, hd, scale, out, ld);                 \
                else                                                                               \
                        scores_heads(q, nq, k, step, false, n, hd, scale, out, ld);                \
        }

/* Attention's mix kernel over tiles of H heads (TILE, with mix_of for
 * one head): heads H at a time, the leftovers head by head. */
#define MX_DEFINE_MIX(H, TILE)                                                                     \
        static inline __attribute__((always_inline)) void mix_heads(                               \
                const float *w, uint64_t ld, uint32_t nq, const void *v, uint64_t step, bool bf16, uint32_t n, \
                uint32_t hd, float *o) {                                                           \
                uint32_t h = 0;                                                                    \
                for (; h + H <= nq; h += H)                                                        \
                        TILE(w + h * ld, ld, v, step, bf16, n, hd, o + (size_t)h * hd);            \
                for (; h < nq; h++)                                                                \
                        mix_of(w + h * ld, v, step, bf16, n, hd, o + (size_t)h * hd);              \
        }                                                                                          \
                                                                                                   \
        static void mix(const float *w, uint64_t ld, uint32_t nq, const void *v, uint64_t step, bool bf16, \
                        uint32_t n, uint32_t hd, float *o) {                                       \
                if (bf16)                                                                          \
                        mix_heads(w, ld, nq, v, step, true, n, hd, o);                             \
                else                                                                               \
                        mix_heads(w, ld, nq, v, step, false, n, hd, o);                            \
        }
