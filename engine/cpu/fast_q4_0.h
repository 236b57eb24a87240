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
                        for (int i = 0; i < 16; i++)                                               \
                                mx_tile_put(a->out + t * a->ldo + r + i, o[i], a->accumulate);     \
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

static const rows16_fn q4_0_rows16[4] = {NULL, q4_0_rows16_1, q4_0_rows16_2, q4_0_rows16_3};

/* ---- prefill: tokens in the lanes ------------------------------------------------------- */

/* A row unpacked: per block, 32 signed levels q - 8, -128 x their sum
 * (what the values' + 128 add), and the scale. */
typedef struct q4_0_unpacked {
        int8_t *q;        /* [nb][32] */
        int32_t *off;     /* [nb] */
        float *d;         /* [nb] */
} q4_0_unpacked;

static void q4_0_unpack(const uint8_t *row, uint64_t nb, q4_0_unpacked *u) {
        const mx_block_q4_0 *q = (const mx_block_q4_0 *)row;
        const __m128i f = _mm_set1_epi8(0x0f), eight = _mm_set1_epi8(8);
        for (uint64_t b = 0; b < nb; b++) {
                __m128i v = _mm_loadu_si128((const __m128i *)q[b].qs);
                __m128i lo = _mm_and_si128(v, f), hi = _mm_and_si128(_mm_srli_epi16(v, 4), f);
                __m128i s = _mm_add_epi64(_mm_sad_epu8(lo, _mm_setzero_si128()), _mm_sad_epu8(hi, _mm_setzero_si128()));
                _mm_storeu_si128((__m128i *)(u->q + 32 * b), _mm_sub_epi8(lo, eight));
                _mm_storeu_si128((__m128i *)(u->q + 32 * b + 16), _mm_sub_epi8(hi, eight));
                int32_t sum = _mm_cvtsi128_si32(s) + _mm_extract_epi32(s, 2) - 256;
                u->off[b] = -128 * sum, u->d[b] = f16c(q[b].d);
        }
}

/* Rows u[0..R) against G groups at xg (ldxg bytes apart), nb blocks: F[r][g]
 * lane j is row r's output for token 16g + j. */
#define DEFINE_Q4_0_LANES(NAME, R, G)                                                              \
        static void NAME(const q4_0_unpacked *u, uint64_t nb, const uint8_t *xg, uint64_t ldxg,    \
                         float o[R][G][MX_ACT_GROUP]) {                                            \
                vf F[R][G];                                                                        \
                UNROLL for (int r = 0; r < R; r++) UNROLL for (int g = 0; g < G; g++) F[r][g] = vf_zero(); \
                for (uint64_t b = 0; b < nb; b++) {                                                \
                        const uint8_t *xb = xg + b * MX_ACT_GROUP_BLOCK;                           \
                        vi S[R][G];                                                                \
                        UNROLL for (int r = 0; r < R; r++) UNROLL for (int g = 0; g < G; g++)      \
                                S[r][g] = vi_set1(u[r].off[b]);                                    \
                        UNROLL for (int m = 0; m < 8; m++) {                                       \
                                vb x[G];                                                           \
                                UNROLL for (int g = 0; g < G; g++) x[g] = vb_load(xb + g * ldxg + 64 * m); \
                                UNROLL for (int r = 0; r < R; r++) {                               \
                                        vb q = vb_bcast4(u[r].q + 32 * b + 4 * m);                 \
                                        UNROLL for (int g = 0; g < G; g++) S[r][g] = vi_dpbusd(S[r][g], x[g], q); \
                                }                                                                  \
                        }                                                                          \
                        UNROLL for (int g = 0; g < G; g++) {                                       \
                                vf dx = vf_load((const float *)(xb + g * ldxg + 8 * 64));          \
                                UNROLL for (int r = 0; r < R; r++)                                 \
                                        F[r][g] = vf_fma(vf_mul(vf_set1(u[r].d[b]), dx), vf_cvt(S[r][g]), F[r][g]); \
                        }                                                                          \
                }                                                                                  \
                UNROLL for (int r = 0; r < R; r++) UNROLL for (int g = 0; g < G; g++) vf_store(o[r][g], F[r][g]); \
        }

DEFINE_Q4_0_LANES(q4_0_lanes, Q4_0_R, Q4_0_G)
DEFINE_Q4_0_LANES(q4_0_lanes_1x1, 1, 1)

static uint32_t q4_0_groups_per_pass(uint64_t K) {
        uint64_t g = (PASS_BYTES) / mx_act_group_bytes(MX_ACT_Q8, K);
        return g < Q4_0_G ? Q4_0_G : (uint32_t)g / Q4_0_G * Q4_0_G;
}

/* Rows [r, r + R) unpacked into buf, then against every group. */
static void q4_0_prefill_tile(const mx_matmul_args *a, uint64_t r, uint32_t R, uint64_t rb, uint32_t g0, uint32_t g1,
                              uint8_t *buf) {
        const uint64_t nb = a->cols / 32;
        q4_0_unpacked u[Q4_0_R];
        for (uint32_t i = 0; i < R; i++) {
                uint8_t *p = buf + i * nb * 40;
                u[i] = (q4_0_unpacked){(int8_t *)p, (int32_t *)(p + nb * 32), (float *)(p + nb * 36)};
                q4_0_unpack(a->w + (r + i) * rb, nb, &u[i]);
        }
        for (uint32_t g = g0; g < g1;) {
                float o[Q4_0_R][Q4_0_G][MX_ACT_GROUP];
                if (R == Q4_0_R && g + Q4_0_G <= g1) {
                        q4_0_lanes(u, nb, a->xg + g * a->ldxg, a->ldxg, o);
                        lanes_put(a, r, R, Q4_0_G, 16 * g, &o[0][0][0]);
                        g += Q4_0_G;
                        continue;
                }
                for (uint32_t i = 0; i < R; i++) {
                        float o1[1][1][MX_ACT_GROUP];
                        q4_0_lanes_1x1(&u[i], nb, a->xg + g * a->ldxg, a->ldxg, o1);
                        lanes_put(a, r + i, 1, 1, 16 * g, &o1[0][0][0]);
                }
                g++;
        }
}

/* Not inlined: its frame would make every decode call reserve (and probe)
 * the buffer too, which cost a decode step 2.2x its time. */
static __attribute__((noinline)) void q4_0_prefill(const mx_matmul_args *a, uint64_t r0, uint64_t r1, uint64_t rb) {
        _Alignas(64) uint8_t buf[UNPACKED_MAX];
        const uint32_t groups = (a->n + MX_ACT_GROUP - 1) / MX_ACT_GROUP, per = q4_0_groups_per_pass(a->cols);
        for (uint32_t g0 = 0; g0 < groups; g0 += per) {
                uint32_t g1 = groups - g0 < per ? groups : g0 + per;
                uint64_t r = r0;
                for (; r + Q4_0_R <= r1; r += Q4_0_R)
                        q4_0_prefill_tile(a, r, Q4_0_R, rb, g0, g1, buf);
                if (r < r1)
                        q4_0_prefill_tile(a, r, (uint32_t)(r1 - r), rb, g0, g1, buf);
        }
}

static void q4_0_rows(const mx_matmul_args *a, uint64_t r0, uint64_t r1) {
        uint64_t rb = 0;
        mx_dtype_row_bytes(a->dtype, a->cols, &rb);
        if (a->xg && a->cols / 32 * 40 * Q4_0_R <= UNPACKED_MAX)
                q4_0_prefill(a, r0, r1, rb);
        else
                decode16(a, r0, r1, rb, q4_0_rows16, q4_0_row);
}
