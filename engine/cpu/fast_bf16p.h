/* Packed BF16 rows (MX_BF16P, kernels.h) against MX_ACT_BF16, over the
 * vector layer's vb_bfp_block (AVX2, AVX-512); included by fast_tiles.h.
 *
 * Contract: each block's words are rebuilt exactly, lane j of a register
 * holding value j of 32 as a plain row's load does, and go through the
 * BF16 tiles' steps (bf_wprep, bf_mac) in their order, so every output
 * equals the plain matrix's bit for bit. Decode rebuilds in registers;
 * prefill rebuilds a tile of BF_R rows on the stack and runs the plain
 * tiles on it, once per MX_TOKEN_BLOCK tokens. */
#include <string.h>

/* The lanes of v whose code was the escape, filled from the row's
 * exceptions in order: rare, so kept out of the loop. */
static __attribute__((noinline)) vb bfp_exceptions(vb v, uint32_t e, const uint8_t **ex) {
        uint16_t lanes[32];
        vb_store(lanes, v);
        for (; e; e &= e - 1) {
                memcpy(&lanes[__builtin_ctz(e)], *ex, 2);
                *ex += 2;
        }
        return vb_load(lanes);
}

/* A block's 64 words (vb_bfp_block), escapes filled: only a row with
 * exceptions looks for them (look), taking them from *ex on. */
static inline __attribute__((always_inline)) void bfp_block(const uint8_t *blk, bfp_tab tab, const uint8_t **ex,
                                                             bool look, vb w[2]) {
        uint32_t esc[2];
        vb_bfp_block(blk, tab, look, w, esc);
        UNROLL for (int h = 0; h < 2; h++)
                if (__builtin_expect(esc[h] != 0, 0))
                        w[h] = bfp_exceptions(w[h], esc[h], ex);
}

static inline const uint8_t *bfp_blocks(const uint8_t *row) {
        return row + MX_BF16P_TABLE * 2;
}

static inline const uint8_t *bfp_exceptions_of(const uint8_t *row, uint64_t K) {
        return bfp_blocks(row) + K / MX_BF16P_BLOCK * MX_BF16P_BLOCK_BYTES;
}

/* Whether any of R rows has exceptions (their count is table entry 15). */
static inline bool bfp_any_exceptions(const uint8_t *w, uint64_t rb, int R) {
        uint16_t n = 0;
        for (int r = 0; r < R; r++)
                n |= ((const uint16_t *)(w + r * rb))[MX_BF16P_TABLE - 1];
        return n != 0;
}

/* The tile runs one of two loops: rows without exceptions (most) skip
 * the search for them. */
#define DEFINE_BFP_TILE(NAME, R)                                                                   \
        static void NAME(const uint8_t *w, uint64_t rb, const uint8_t *x, uint64_t ldx, uint64_t K, \
                         float *out, uint64_t ldo, bool accumulate) {                              \
                if (bfp_any_exceptions(w, rb, R))                                                  \
                        NAME##_loop(w, rb, x, ldx, K, out, ldo, accumulate, true);                 \
                else                                                                               \
                        NAME##_loop(w, rb, x, ldx, K, out, ldo, accumulate, false);                \
        }

#define DEFINE_BFP_LOOP(NAME, R, T)                                                                \
        static inline __attribute__((always_inline)) void NAME##_loop(                             \
                const uint8_t *w, uint64_t rb, const uint8_t *x, uint64_t ldx, uint64_t K, float *out, \
                uint64_t ldo, bool accumulate, bool exceptions) {                                  \
                vf F[R][T];                                                                        \
                bfp_tab tab[R];                                                                    \
                const uint8_t *ex[R];                                                              \
                bool has[R];                                                                       \
                UNROLL for (int r = 0; r < R; r++) {                                               \
                        tab[r] = vb_bfp_table(w + r * rb);                                         \
                        ex[r] = bfp_exceptions_of(w + r * rb, K);                                  \
                        has[r] = exceptions && bfp_any_exceptions(w + r * rb, 0, 1);               \
                        UNROLL for (int t = 0; t < T; t++) F[r][t] = vf_zero();                    \
                }                                                                                  \
                for (uint64_t b = 0; b < K / MX_BF16P_BLOCK; b++) {                                \
                        vb W[R][2];                                                                \
                        UNROLL for (int r = 0; r < R; r++)                                         \
                                bfp_block(bfp_blocks(w + r * rb) + b * MX_BF16P_BLOCK_BYTES, tab[r], &ex[r], \
                                          has[r], W[r]);                                           \
                        UNROLL for (int h = 0; h < 2; h++) {                                       \
                                bfw P[R];                                                          \
                                UNROLL for (int r = 0; r < R; r++) P[r] = bf_wprep(W[r][h]);       \
                                UNROLL for (int t = 0; t < T; t++) {                               \
                                        bfx X = bf_xprep(vb_load(x + t * ldx + 2 * (b * MX_BF16P_BLOCK + 32 * h))); \
                                        UNROLL for (int r = 0; r < R; r++) F[r][t] = bf_mac(F[r][t], P[r], X); \
                                }                                                                  \
                        }                                                                          \
                }                                                                                  \
                UNROLL for (int t = 0; t < T; t++) UNROLL for (int r = 0; r < R; r++)              \
                        mx_tile_put(out + t * ldo + r, vf_reduce(F[r][t]), accumulate);            \
        }                                                                                          \
        DEFINE_BFP_TILE(NAME, R)

DEFINE_BFP_LOOP(bfp_1x1, 1, 1)
DEFINE_BFP_LOOP(bfp_1x2, 1, 2)
DEFINE_BFP_LOOP(bfp_1x3, 1, 3)
DEFINE_BFP_LOOP(bfp_dx1, BF_D, 1)
DEFINE_BFP_LOOP(bfp_dx2, BF_D, 2)
DEFINE_BFP_LOOP(bfp_dx3, BF_D, 3)
/* Decode's tiles only: prefill goes through bfp_prefill. */
static const mx_tiles fast_bf16p_decode = {{NULL, bfp_1x1, bfp_1x2, bfp_1x3}, {NULL, bfp_dx1, bfp_dx2, bfp_dx3},
                                           NULL, NULL, BF_R, BF_T, BF_D, NULL};

static void bfp_unpack(const uint8_t *row, uint64_t K, uint16_t *out) {
        bfp_tab tab = vb_bfp_table(row);
        vb w[2];
        const uint8_t *ex = bfp_exceptions_of(row, K);
        bool any = bfp_any_exceptions(row, 0, 1);
        for (uint64_t b = 0; b < K / MX_BF16P_BLOCK; b++) {
                bfp_block(bfp_blocks(row) + b * MX_BF16P_BLOCK_BYTES, tab, &ex, any, w);
                vb_store(out + b * MX_BF16P_BLOCK, w[0]);
                vb_store(out + b * MX_BF16P_BLOCK + 32, w[1]);
        }
}

/* Not inlined: its 128 KiB frame would otherwise be every decode call's. */
static __attribute__((noinline)) void bfp_prefill(const mx_matmul_args *a, uint64_t r0, uint64_t r1) {
        _Alignas(64) uint16_t rows[BF_R * MX_BF16P_MAX_COLS];
        uint64_t K = a->cols;
        for (uint32_t t0 = 0; t0 < a->n; t0 += MX_TOKEN_BLOCK) {
                uint32_t nt = a->n - t0 < MX_TOKEN_BLOCK ? a->n - t0 : MX_TOKEN_BLOCK;
                for (uint64_t q = r0; q < r1; q += BF_R) {
                        uint64_t nr = r1 - q < BF_R ? r1 - q : BF_R;
                        for (uint64_t i = 0; i < nr; i++)
                                bfp_unpack(a->w + (q + i) * a->packed, K, rows + i * K);
                        mx_matmul_args s = *a;
                        s.w = (const uint8_t *)rows, s.packed = 0;
                        s.xq = a->xq + t0 * a->ldxq, s.out = a->out + t0 * a->ldo + q, s.n = nt;
                        mx_tiles_rows(&fast_bf16, &s, 0, nr);
                }
        }
}

static void bfp_rows(const mx_matmul_args *a, uint64_t r0, uint64_t r1) {
        if (a->n < 4)
                mx_tiles_rows(&fast_bf16p_decode, a, r0, r1);
        else
                bfp_prefill(a, r0, r1);
}

static const mx_tiles fast_bf16p = {.rows = bfp_rows};
