/* How the SIMD kernels cover a product with their register tiles; shared
 * by kernels_avx2.c and kernels_avx512.c (compiled into each with its own
 * flags). Every tile computes each of its outputs in the reference order
 * (kernels.h), so the choice of tile never changes a result. */
#pragma once

#include "kernels.h"

typedef void (*mx_tile_fn)(const uint8_t *w, uint64_t row_bytes, const float *x, uint64_t ldx, uint64_t K,
                           float *out, uint64_t ldo, bool accumulate);

typedef struct mx_tiles {
        uint64_t esize;               /* bytes per weight */
        mx_tile_fn one[4];            /* 1 row x 1..3 tokens (index = tokens) */
        mx_tile_fn big, big_col;      /* R x T, and R x 1 for leftover tokens */
        uint32_t R, T;
} mx_tiles;

/* Tokens per block in prefill: their activations stay in L2 while the
 * block's rows go by. */
#define MX_TOKEN_BLOCK 48

static inline void mx_tiles_rows(const mx_tiles *tl, const mx_matmul_args *a, uint64_t r0, uint64_t r1) {
        uint64_t rb = a->cols * tl->esize, K = a->cols, r = r0;
        if (a->n < 4) {
                /* Decode: one row at a time. A single ascending stream is what
                 * the prefetchers follow best, and decode waits on memory. */
                for (; r < r1; r++)
                        if (a->n)
                                tl->one[a->n](a->w + r * rb, rb, a->x, a->ldx, K, a->out + r, a->ldo, a->accumulate);
                return;
        }
        uint64_t full = r0 + (r1 - r0) / tl->R * tl->R;
        for (uint32_t t0 = 0; t0 < a->n; t0 += MX_TOKEN_BLOCK) {
                uint32_t t1 = a->n - t0 < MX_TOKEN_BLOCK ? a->n : t0 + MX_TOKEN_BLOCK;
                for (uint64_t q = r0; q < full; q += tl->R) {
                        uint32_t t = t0;
                        for (; t + tl->T <= t1; t += tl->T)
                                tl->big(a->w + q * rb, rb, a->x + t * a->ldx, a->ldx, K, a->out + t * a->ldo + q,
                                        a->ldo, a->accumulate);
                        for (; t < t1; t++)
                                tl->big_col(a->w + q * rb, rb, a->x + t * a->ldx, a->ldx, K,
                                            a->out + t * a->ldo + q, a->ldo, a->accumulate);
                }
        }
        for (r = full; r < r1; r++)
                for (uint32_t t = 0; t < a->n; t++)
                        tl->one[1](a->w + r * rb, rb, a->x + t * a->ldx, a->ldx, K, a->out + t * a->ldo + r,
                                   a->ldo, a->accumulate);
}
