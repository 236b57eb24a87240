/* How the SIMD kernels cover a product with their register tiles; shared
 * by kernels_{avx2,avx512}.c and fast_{avx2,avx512}.c (each compiled into
 * its instruction set's libraries with their flags, once without and once
 * with the dot-product instructions, MX_VNNI). Every tile computes each of
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
} mx_tiles;

/* The fast path's tiles for a weight type (fast_*.c); NULL for F16/F32. */
const mx_tiles *MX_SYM(mx_fast_tiles_avx2)(mx_dtype t);
const mx_tiles *MX_SYM(mx_fast_tiles_avx512)(mx_dtype t);

/* Tokens per block in prefill: their activations stay in L2 while the
 * block's rows go by. */
#define MX_TOKEN_BLOCK 48

#define UNROLL _Pragma("GCC unroll 16")

static inline void mx_tiles_rows(const mx_tiles *tl, const mx_matmul_args *a, uint64_t r0, uint64_t r1) {
        uint64_t rb = 0, K = a->cols, r = r0;
        mx_dtype_row_bytes(a->dtype, a->cols, &rb);
        const uint8_t *x = a->xq ? a->xq : (const uint8_t *)a->x;
        uint64_t ldx = a->xq ? a->ldxq : a->ldx * sizeof(float);
        if (a->n < 4) {
                /* Decode: a few rows at a time, ascending (what the prefetchers
                 * follow), then the rest one by one. */
                for (; a->n && r + tl->D <= r1; r += tl->D)
                        tl->dec[a->n](a->w + r * rb, rb, x, ldx, K, a->out + r, a->ldo, a->accumulate);
                for (; a->n && r < r1; r++)
                        tl->one[a->n](a->w + r * rb, rb, x, ldx, K, a->out + r, a->ldo, a->accumulate);
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
                                     {NULL, SET##_dx1, SET##_dx2, SET##_dx3}, SET##_big, SET##_col, R, T, D};

/* One output of a tile: stored or added. */
static inline void mx_tile_put(float *o, float s, bool accumulate) {
        *o = accumulate ? *o + s : s;
}
