/* Q4_0 against MX_ACT_Q8 on the fast path, over fast_tiles.h's vector
 * layer: one fp32 chain per output, block by block (kernels.h), so that
 * the lanes of a register hold 16 outputs:
 *
 * - decode (fewer than MX_ACT_GROUP_MIN tokens): 16 rows in the lanes.
 *   Each row's pair of blocks gives one integer vector as the other
 *   kernels' do; 16 rows' vectors are summed across in one transposing
 *   tree (vi_lane_sums), and each block's scales and fused multiply-add
 *   then serve 16 rows at once;
 * - prefill: 16 tokens in the lanes, from the activations' token groups
 *   (kernels.h). A tile's rows are first unpacked to signed levels, their
 *   sums and their scales on the stack, so each 4 levels are broadcast
 *   straight from memory against a register of 16 tokens' values.
 *
 * Rows past the last multiple of 16 (decode) and of the tile (prefill) go
 * one at a time. Each output's integer block sums are exact and its float
 * steps those of the scalar kernel, in its order, so every instruction
 * set, tile and batch gives the same bits. */

/* ---- decode: rows in the lanes ---------------------------------------------------------- */

/* Block b's and b + 1's sums, 8 lanes each, of one row for one token: the
 * nibble levels against the token's values, less 8 x their sums (off). */
static inline vi q4_0_pair_sums(const uint8_t *row, uint64_t b, bool two, vb x, vi off) {
        return vi_dpbusd(off, vb_q4_0_blocks(row + b * sizeof(mx_block_q4_0), two), x);
}

/* Rows r..r+15, tokens [0, N): out[t][r + i]. */
#define DEFINE_Q4_0_ROWS16(NAME, N)                                                                \
        static void NAME(const mx_matmul_args *a, uint64_t r, uint64_t rb, const uint8_t *end) {   \
                const uint8_t *w = a->w + r * rb;                                                  \
                const uint64_t K = a->cols, nb = K / 32;                                           \
                vf F[N];                                                                           \
                UNROLL for (int t = 0; t < N; t++) F[t] = vf_zero();                               \
                for (uint64_t b = 0; b < nb; b += 2) {                                             \
                        const bool two = b + 1 < nb;                                               \
                        vb x[N];                                                                   \
                        vi off[N], v[N][16], lo[N], hi[N];                                         \
                        prefetch16(w, rb, b * 18 + Q4_0_AHEAD, 36, end);                      \
                        UNROLL for (int t = 0; t < N; t++) {                                       \
                                const uint8_t *xt = a->xq + t * a->ldxq + 32 * b;                  \
                                x[t] = vb_load2(xt, two ? xt + 32 : NULL), off[t] = q4_0_xoff(x[t]); \
                        }                                                                          \
                        UNROLL for (int i = 0; i < 16; i++) {                                      \
                                const uint8_t *row = w + i * rb;                                   \
                                UNROLL for (int t = 0; t < N; t++)                                 \
                                        v[t][i] = q4_0_pair_sums(row, b, two, x[t], off[t]);       \
                        }                                                                          \
                        vf d0 = vf_f16_strided(w + b * 18, rb), d1 = two ? vf_f16_strided(w + b * 18 + 18, rb) : d0; \
                        UNROLL for (int t = 0; t < N; t++) {                                       \
                                const float *dx = mx_act_scales(a->xq + t * a->ldxq, K) + b;       \
                                vi_lane_sums(v[t], &lo[t], &hi[t]);                                \
                                F[t] = vf_fma(vf_mul(d0, vf_set1(dx[0])), vf_cvt(lo[t]), F[t]);    \
                                if (two)                                                           \
                                        F[t] = vf_fma(vf_mul(d1, vf_set1(dx[1])), vf_cvt(hi[t]), F[t]); \
                        }                                                                          \
                }                                                                                  \
                UNROLL for (int t = 0; t < N; t++) {                                               \
                        float o[16];                                                               \
                        vf_store(o, F[t]);                                                         \
                        rows_put(a, (uint32_t)t, r, o, 16);                                        \
                }                                                                                  \
        }

DEFINE_Q4_0_ROWS16(q4_0_rows16_1, 1)
DEFINE_Q4_0_ROWS16(q4_0_rows16_2, 2)
DEFINE_Q4_0_ROWS16(q4_0_rows16_3, 3)

/* One row, one token: the scalar kernel's steps, the sums by vector. */
static float q4_0_row(const uint8_t *row, const uint8_t *xq, uint64_t K) {
        const float *dx = mx_act_scales(xq, K);
        float acc = 0;
        for (uint64_t b = 0; b < K / 32; b += 2) {
                const bool two = b + 1 < K / 32;
                vb x = vb_load2(xq + 32 * b, two ? xq + 32 * b + 32 : NULL);
                int32_t s[16];
                vi v = q4_0_pair_sums(row, b, two, x, q4_0_xoff(x));
                memcpy(s, &v, sizeof s);
                for (uint64_t h = 0; h < (two ? 2u : 1u); h++) {
                        int32_t sum = 0;
                        for (int l = 0; l < 8; l++)
                                sum += s[8 * h + l];
                        const mx_block_q4_0 *q = (const mx_block_q4_0 *)row + b + h;
                        acc = fmaf(f16c(q->d) * dx[b + h], (float)sum, acc);
                }
        }
        return acc;
}

static const tile_fn q4_0_rows16[4] = {NULL, q4_0_rows16_1, q4_0_rows16_2, q4_0_rows16_3};

/* ---- prefill: tokens in the lanes ------------------------------------------------------- */

/* A row's block unpacked: 32 signed levels q - 8, -128 x their sum (what
 * the values' + 128 add), and the scale. */
typedef struct q4_0_unpacked {
        int8_t u[32];
        int32_t c;
        float d;
} q4_0_unpacked;

static void q4_0_unpack(const uint8_t *row, uint64_t nb, q4_0_unpacked *u) {
        const mx_block_q4_0 *q = (const mx_block_q4_0 *)row;
        const __m128i f = _mm_set1_epi8(0x0f), eight = _mm_set1_epi8(8);
        for (uint64_t b = 0; b < nb; b++) {
                __m128i v = _mm_loadu_si128((const __m128i *)q[b].qs);
                __m128i lo = _mm_and_si128(v, f), hi = _mm_and_si128(_mm_srli_epi16(v, 4), f);
                _mm_storeu_si128((__m128i *)u[b].u, _mm_sub_epi8(lo, eight));
                _mm_storeu_si128((__m128i *)(u[b].u + 16), _mm_sub_epi8(hi, eight));
                int32_t sum = sum_bytes16(lo) + sum_bytes16(hi) - 256;
                u[b].c = -128 * sum, u[b].d = f16c(q[b].d);
        }
}

/* Rows u[0..R) (each nb blocks) against one group at xg: o[r] lane j is
 * row r's output for the group's token j. */
#define DEFINE_Q4_0_LANES(NAME, R)                                                                 \
        static void NAME(const q4_0_unpacked *const *u, uint64_t nb, const uint8_t *xg,            \
                         float o[R][MX_ACT_GROUP]) {                                               \
                vf F[R];                                                                           \
                UNROLL for (int r = 0; r < R; r++) F[r] = vf_zero();                               \
                for (uint64_t b = 0; b < nb; b++) {                                                \
                        const uint8_t *xb = xg + b * MX_ACT_GROUP_BLOCK;                           \
                        vi S[R];                                                                   \
                        UNROLL for (int r = 0; r < R; r++) S[r] = vi_set1(u[r][b].c);              \
                        UNROLL for (int m = 0; m < 8; m++) {                                       \
                                vb x = vb_load(xb + 64 * m);                                       \
                                UNROLL for (int r = 0; r < R; r++)                                 \
                                        S[r] = vi_dpbusd(S[r], x, vb_bcast4(u[r][b].u + 4 * m));   \
                        }                                                                          \
                        vf dx = vf_load((const float *)(xb + 8 * 64));                             \
                        UNROLL for (int r = 0; r < R; r++)                                         \
                                F[r] = vf_fma(vf_mul(vf_set1(u[r][b].d), dx), vf_cvt(S[r]), F[r]); \
                }                                                                                  \
                UNROLL for (int r = 0; r < R; r++) vf_store(o[r], F[r]);                           \
        }

DEFINE_Q4_0_LANES(q4_0_lanes, Q4_0_R)
DEFINE_Q4_0_LANES(q4_0_lanes_1, 1)

static void q4_0_decode(const mx_matmul_args *a, uint64_t r0, uint64_t r1, uint64_t rb) {
        /* 16 rows at a time where the gathers' 32-bit offsets hold the stride */
        static const tile_fn none[4] = {NULL};
        decode_tiles(a, r0, r1, rb, 16, 16 * rb, rb < (1u << 27) ? q4_0_rows16 : none, q4_0_row);
}

DEFINE_SUPER_ROWS(q4_0, Q4_0_R, 32, MX_ACT_Q8)
