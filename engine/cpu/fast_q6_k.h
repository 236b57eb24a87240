/* Q6_K against MX_ACT_Q8K on the fast path, as fast_q4_k.h does Q4_K:
 * one fp32 chain per output, super-block by super-block (kernels.h), with
 * 4 rows (decode) or 16 tokens (prefill) in the lanes of a register.
 * The levels' offset of -32 is taken out in integers: in decode as 32 x
 * the scaled sums of each 16 values (the activations' bs), in prefill in
 * the signed levels themselves. Integer sums are exact and the float
 * steps the scalar kernel's, so every instruction set, tile and batch
 * gives the same bits. */

/* ---- decode: rows in the lanes ---------------------------------------------------------- */

/* One row's super-block against a token's 4 chunks of values x and its
 * sums of each 16 values bs16: lanes 0-7 sum to S (lanes 8-15 zero). */
static inline vi q6_k_row_sums(const mx_block_q6_k *b, const vb x[4], __m256i bs16) {
        kw W = {.blk = b};
        int16_t s16[16];
        __m256i sc = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)b->scales));
        _mm256_storeu_si256((__m256i *)s16, sc);
        vi v = vi_zero();
        UNROLL for (int c = 0; c < 4; c++)
                v = vi_dpwssd(v, vi_maddubs(q6_k_u(&W, c), x[c]), vi_quarters16(s16 + 4 * c));
        __m256i off = _mm256_madd_epi16(_mm256_slli_epi16(sc, 5), bs16);
        return vi_join8(_mm256_sub_epi32(vi_fold8(v), off), _mm256_setzero_si256());
}

static inline void q6_k_token(const uint8_t *xt, uint64_t K, uint64_t sb, vb x[4], __m256i *bs16) {
        UNROLL for (int c = 0; c < 4; c++) x[c] = vb_load(xt + 256 * sb + 64 * c);
        *bs16 = _mm256_loadu_si256((const __m256i *)(mx_act_bsums(xt, K) + 16 * sb));
}

/* One row, one token. */
static float q6_k_row(const uint8_t *row, const uint8_t *xq, uint64_t K) {
        float acc = 0;
        for (uint64_t sb = 0; sb < K / 256; sb++) {
                const mx_block_q6_k *b = (const mx_block_q6_k *)row + sb;
                vb x[4];
                __m256i bs;
                int32_t l[16], S = 0;
                q6_k_token(xq, K, sb, x, &bs);
                vi v = q6_k_row_sums(b, x, bs);
                memcpy(l, &v, sizeof l);
                for (int i = 0; i < 8; i++)
                        S += l[i];
                acc = fmaf(f16c(b->d) * mx_act_scales(xq, K)[sb], (float)S, acc);
        }
        return acc;
}

/* Rows r..r+3, tokens [0, N): out[t][r + i], the 4 rows' sums in the
 * lanes of 128 bits. */
#define DEFINE_Q6_K_ROWS4(NAME, N)                                                                 \
        static void NAME(const mx_matmul_args *a, uint64_t r, uint64_t rb) {                       \
                const uint8_t *w = a->w + r * rb;                                                  \
                const uint64_t K = a->cols;                                                        \
                __m128 F[N];                                                                       \
                UNROLL for (int t = 0; t < N; t++) F[t] = _mm_setzero_ps();                        \
                for (uint64_t sb = 0; sb < K / 256; sb++) {                                        \
                        vb x[N][4];                                                                \
                        __m256i bs[N];                                                             \
                        vi v[N][4];                                                                \
                        uint16_t dd[8] = {0};                                                      \
                        UNROLL for (int t = 0; t < N; t++) q6_k_token(a->xq + t * a->ldxq, K, sb, x[t], &bs[t]); \
                        UNROLL for (int i = 0; i < 4; i++) {                                       \
                                const mx_block_q6_k *b = (const mx_block_q6_k *)(w + i * rb) + sb; \
                                dd[i] = b->d;                                                      \
                                UNROLL for (int t = 0; t < N; t++) v[t][i] = q6_k_row_sums(b, x[t], bs[t]); \
                        }                                                                          \
                        __m128 d = _mm_cvtph_ps(_mm_loadu_si128((const __m128i *)dd));             \
                        UNROLL for (int t = 0; t < N; t++) {                                       \
                                __m128i S, unused;                                                 \
                                float dx = mx_act_scales(a->xq + t * a->ldxq, K)[sb];              \
                                vi_lane_sums4(v[t], &S, &unused);                                  \
                                F[t] = _mm_fmadd_ps(_mm_mul_ps(d, _mm_set1_ps(dx)), _mm_cvtepi32_ps(S), F[t]); \
                        }                                                                          \
                }                                                                                  \
                UNROLL for (int t = 0; t < N; t++) {                                               \
                        float o[4];                                                                \
                        _mm_storeu_ps(o, F[t]);                                                    \
                        for (int i = 0; i < 4; i++)                                                \
                                mx_tile_put(a->out + t * a->ldo + r + i, o[i], a->accumulate);     \
                }                                                                                  \
        }

DEFINE_Q6_K_ROWS4(q6_k_rows4_1, 1)
DEFINE_Q6_K_ROWS4(q6_k_rows4_2, 2)
DEFINE_Q6_K_ROWS4(q6_k_rows4_3, 3)

static const rows4_fn q6_k_rows4[4] = {NULL, q6_k_rows4_1, q6_k_rows4_2, q6_k_rows4_3};

static void q6_k_decode(const mx_matmul_args *a, uint64_t r0, uint64_t r1, uint64_t rb) {
        decode4(a, r0, r1, rb, q6_k_rows4, q6_k_row);
}

/* ---- prefill: tokens in the lanes ------------------------------------------------------- */

/* A row's super-block unpacked: 256 levels q - 32, the sub-blocks'
 * scales, -128 x the scaled sum of the levels (what the values' + 128
 * add), and d. */
typedef struct q6_k_unpacked {
        int8_t u[256];
        int32_t sc[16], c;
        float d;
        int32_t pad[2];
} q6_k_unpacked;

static void q6_k_unpack(const uint8_t *row, uint64_t nsb, q6_k_unpacked *u) {
        const __m128i k32 = _mm_set1_epi8(32);
        for (uint64_t sb = 0; sb < nsb; sb++) {
                const mx_block_q6_k *b = (const mx_block_q6_k *)row + sb;
                q6_k_unpacked *o = u + sb;
                kw W = {.blk = b};
                int32_t c = 0;
                UNROLL for (int ch = 0; ch < 4; ch++) vb_store(o->u + 64 * ch, q6_k_u(&W, ch));
                for (int j = 0; j < 16; j++) {
                        __m128i q = _mm_loadu_si128((const __m128i *)(o->u + 16 * j));
                        __m128i s = _mm_sad_epu8(q, _mm_setzero_si128());
                        o->sc[j] = b->scales[j];
                        c += o->sc[j] * (_mm_cvtsi128_si32(s) + _mm_extract_epi32(s, 2) - 16 * 32);
                        _mm_storeu_si128((__m128i *)(o->u + 16 * j), _mm_sub_epi8(q, k32));
                }
                o->c = -128 * c, o->d = f16c(b->d);
        }
}

/* Rows u[0..R) (each nsb super-blocks) against one group at xg: o[r] lane
 * j is row r's output for the group's token j. */
#define DEFINE_Q6_K_LANES(NAME, R)                                                                 \
        static void NAME(const q6_k_unpacked *const *u, uint64_t nsb, const uint8_t *xg,           \
                         float o[R][MX_ACT_GROUP]) {                                               \
                vf F[R];                                                                           \
                UNROLL for (int r = 0; r < R; r++) F[r] = vf_zero();                               \
                for (uint64_t sb = 0; sb < nsb; sb++) {                                            \
                        const uint8_t *xs = xg + sb * MX_ACT_GROUP_SUPER;                          \
                        vi S[R];                                                                   \
                        UNROLL for (int r = 0; r < R; r++) S[r] = vi_set1(u[r][sb].c);             \
                        for (int j = 0; j < 16; j++) {                                             \
                                vi A[R];                                                           \
                                UNROLL for (int r = 0; r < R; r++) A[r] = vi_zero();               \
                                UNROLL for (int m = 4 * j; m < 4 * j + 4; m++) {                   \
                                        vb x = vb_load(xs + 64 * m);                               \
                                        UNROLL for (int r = 0; r < R; r++)                         \
                                                A[r] = vi_dpbusd(A[r], x, vb_bcast4(u[r][sb].u + 4 * m)); \
                                }                                                                  \
                                UNROLL for (int r = 0; r < R; r++)                                 \
                                        S[r] = vi_add(S[r], vi_mullo(A[r], vi_set1(u[r][sb].sc[j]))); \
                        }                                                                          \
                        vf dx = vf_load((const float *)(xs + 64 * 64));                            \
                        UNROLL for (int r = 0; r < R; r++)                                         \
                                F[r] = vf_fma(vf_mul(vf_set1(u[r][sb].d), dx), vf_cvt(S[r]), F[r]); \
                }                                                                                  \
                UNROLL for (int r = 0; r < R; r++) vf_store(o[r], F[r]);                           \
        }

DEFINE_Q6_K_LANES(q6_k_lanes, Q6_K_R)
DEFINE_Q6_K_LANES(q6_k_lanes_1, 1)

DEFINE_SUPER_ROWS(q6_k, Q6_K_R)
