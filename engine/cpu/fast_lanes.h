/* What fast_q4_0.h, fast_q4_k.h and fast_q6_k.h share: the decode
 * driver (rows in the lanes) and its prefetching, the prefill's passes,
 * buffer and stores (tokens in the lanes), and the K-quants' kernels
 * written once over their parts. */

/* Each of 16 rows' bytes [at, at + bytes) on their way into the cache:
 * in the row, or past its end, in row i of the next 16 (or of those
 * after, for rows shorter than the distance). */
static inline void prefetch16(const uint8_t *w, uint64_t rb, uint64_t at, uint64_t bytes, const uint8_t *end) {
        for (uint64_t o = at; o < at + bytes; o += 64) {
                const uint8_t *p = o < rb ? w + o : w + 16 * rb * (o / rb) + o % rb;
                if (p + 15 * rb < end) {
                        UNROLL for (int i = 0; i < 16; i++) __builtin_prefetch(p + i * rb);
                } else {
                        for (int i = 0; i < 16 && p + i * rb < end; i++)
                                __builtin_prefetch(p + i * rb);
                }
        }
}

/* Q4_0's decode reads 16 rows as 16 streams at once, which the hardware
 * prefetchers follow badly, each tile starting cold: each step asks for
 * every stream's bytes about 14 steps on (Q4_0_AHEAD bytes), into the
 * next tile's rows past the ends, and a block of rows asks for its first
 * tile whole (measured on Zen 5, a matrix larger than L3: without, it ran
 * at 61% of the bandwidth it reaches with). */
#define Q4_0_AHEAD 512
typedef void (*tile_fn)(const mx_matmul_args *a, uint64_t r, uint64_t rb, const uint8_t *end);
typedef float (*row1_fn)(const uint8_t *row, const uint8_t *xq, uint64_t K);

/* Decode of rows [r0, r1): H rows at a time (tiles[n] for n tokens, NULL:
 * none), the rest one by one (row1), at most 3 tokens at a time; the
 * first `first` bytes asked for before, each tile asking for what it
 * reads next. */
static void decode_tiles(const mx_matmul_args *a, uint64_t r0, uint64_t r1, uint64_t rb, uint32_t H,
                         uint64_t first, const tile_fn tiles[4], row1_fn row1) {
        const uint8_t *end = a->w + r1 * rb;
        for (uint32_t t0 = 0; t0 < a->n; t0 += 3) {
                mx_matmul_args s = *a;
                uint64_t r = r0;
                s.n = a->n - t0 < 3 ? a->n - t0 : 3;
                s.xq = a->xq + t0 * a->ldxq, s.out = a->out + t0 * a->ldo;
                mx_prefetch(a->w + r0 * rb, end, first);
                for (; tiles[s.n] && r + H <= r1; r += H)
                        tiles[s.n](&s, r, rb, end);
                for (; r < r1; r++)
                        for (uint32_t t = 0; t < s.n; t++)
                                mx_tile_put(s.out + t * s.ldo + r, row1(a->w + r * rb, s.xq + t * s.ldxq, s.cols),
                                            s.accumulate);
        }
}

/* Token t's outputs of rows [r, r + n), from o (decode's tiles). */
static inline void rows_put(const mx_matmul_args *a, uint32_t t, uint64_t r, const float *o, int n) {
        for (int i = 0; i < n; i++)
                mx_tile_put(a->out + t * a->ldo + r + i, o[i], a->accumulate);
}

/* The sum of 16 bytes, unsigned. */
static inline int32_t sum_bytes16(__m128i v) {
        __m128i s = _mm_sad_epu8(v, _mm_setzero_si128());
        return _mm_cvtsi128_si32(s) + _mm_extract_epi32(s, 2);
}

/* Outputs of rows [r, r + R) for tokens [t0, t0 + 16), of which n exist. */
static void lanes_put(const mx_matmul_args *a, uint64_t r, uint32_t R, uint32_t t0,
                      const float (*o)[MX_ACT_GROUP]) {
        for (uint32_t i = 0; i < R; i++)
                for (uint32_t j = 0; j < MX_ACT_GROUP && t0 + j < a->n; j++)
                        mx_tile_put(a->out + (t0 + j) * a->ldo + r + i, o[i][j], a->accumulate);
}

/* Groups per pass over a tile's rows: their activations stay in L2
 * (512 KiB of them) while the tile goes by, and the rows' unpacking is
 * shared by all of them (measured on Zen 5: 256 KiB and 1 MiB did 2-6%
 * worse at b1's shapes). */
#define PASS_BYTES (512u << 10)

/* The unpacked rows of a tile, on the stack (Mixtral's widest rows, 14336
 * values, take 140 KiB in tiles of 8, as Q4_0 or Q4_K); wider rows go
 * the decode way. */
#define UNPACKED_MAX (192u << 10)

/* The prefill and the row function of a type T in blocks of QK values
 * whose activations are of format ACT, from its kernels T_unpacked /
 * T_unpack (a row's blocks unpacked), T_lanes (R rows against a group,
 * tokens in the lanes), T_lanes_1 (one row) and T_decode: T_prefill_tile
 * unpacks rows [r, r + n) into buf and runs them against groups
 * [g0, g1); T_prefill passes over the groups PASS_BYTES of them at a
 * time, and is not inlined: its frame would make every decode call
 * reserve (and probe) the buffer too, which cost a decode step 2.2x its
 * time; T_rows is the table's. */
#define DEFINE_SUPER_ROWS(T, R, QK, ACT)                                                                  \
        static void T##_prefill_tile(const mx_matmul_args *a, uint64_t r, uint32_t n, uint64_t rb, uint32_t g0, \
                                     uint32_t g1, uint8_t *buf) {                                  \
                const uint64_t nsb = a->cols / QK;                                                 \
                const T##_unpacked *u[R];                                                          \
                for (uint32_t i = 0; i < n; i++) {                                                 \
                        T##_unpacked *p = (T##_unpacked *)buf + i * nsb;                           \
                        T##_unpack(a->w + (r + i) * rb, nsb, p);                                   \
                        u[i] = p;                                                                  \
                }                                                                                  \
                for (uint32_t g = g0; g < g1; g++) {                                               \
                        float o[R][MX_ACT_GROUP];                                                  \
                        if (n == R) {                                                              \
                                T##_lanes(u, nsb, a->xg + g * a->ldxg, o);                         \
                        } else {                                                                   \
                                for (uint32_t i = 0; i < n; i++)                                   \
                                        T##_lanes_1(&u[i], nsb, a->xg + g * a->ldxg, &o[i]);       \
                        }                                                                          \
                        lanes_put(a, r, n, 16 * g, o);                                             \
                }                                                                                  \
        }                                                                                          \
                                                                                                   \
        static __attribute__((noinline)) void T##_prefill(const mx_matmul_args *a, uint64_t r0, uint64_t r1, \
                                                          uint64_t rb) {                           \
                _Alignas(64) uint8_t buf[UNPACKED_MAX];                                            \
                const uint32_t groups = (a->n + MX_ACT_GROUP - 1) / MX_ACT_GROUP;                  \
                uint64_t per = (PASS_BYTES) / mx_act_group_bytes(ACT, a->cols);                    \
                per = per ? per : 1;                                                               \
                for (uint32_t g0 = 0; g0 < groups; g0 += (uint32_t)per) {                          \
                        uint32_t g1 = groups - g0 < per ? groups : g0 + (uint32_t)per;             \
                        uint64_t r = r0;                                                           \
                        for (; r + R <= r1; r += R)                                                \
                                T##_prefill_tile(a, r, R, rb, g0, g1, buf);                        \
                        if (r < r1)                                                                \
                                T##_prefill_tile(a, r, (uint32_t)(r1 - r), rb, g0, g1, buf);       \
                }                                                                                  \
        }                                                                                          \
                                                                                                   \
        static void T##_rows(const mx_matmul_args *a, uint64_t r0, uint64_t r1) {                  \
                uint64_t rb = 0;                                                                   \
                mx_dtype_row_bytes(a->dtype, a->cols, &rb);                                        \
                if (a->xg && a->cols / QK * sizeof(T##_unpacked) * R <= UNPACKED_MAX)              \
                        T##_prefill(a, r0, r1, rb);                                                \
                else                                                                               \
                        T##_decode(a, r0, r1, rb);                                                 \
        }

/* The decode and prefill kernels of a K-quant T (fast_q4_k.h,
 * fast_q6_k.h), from its parts:
 *   T_block                  its block type
 *   T_token(xt, K, sb, x, bs)    a token's 4 chunks of values and sums
 *   T_row_sums(b, x, bs)     a row's super-block: lanes 0-7 sum to S, 8-15 to M
 *   T_scales(b, &d, &dmin)   the block's d and dmin as fp16 bits
 *   T_unpacked, u->u, ->sc, ->c, ->d   a row's super-block unpacked
 *   T_min_step(u, xs, dx, F)  prefill's second fma (the mins), or F
 * with MIN (1: a second chain step for the mins) and SUBS sub-blocks of
 * 256 / SUBS values. */
#define DEFINE_K_ROW(T, MIN)                                                                       \
        static float T##_row(const uint8_t *row, const uint8_t *xq, uint64_t K) {                  \
                float acc = 0;                                                                     \
                for (uint64_t sb = 0; sb < K / 256; sb++) {                                        \
                        const T##_block *b = (const T##_block *)row + sb;                          \
                        vb x[4];                                                                   \
                        __m256i bs;                                                                \
                        int32_t l[16], S = 0, M = 0;                                               \
                        uint16_t d, dmin;                                                          \
                        T##_token(xq, K, sb, x, &bs);                                              \
                        vi v = T##_row_sums(b, x, bs);                                             \
                        memcpy(l, &v, sizeof l);                                                   \
                        for (int i = 0; i < 8; i++)                                                \
                                S += l[i], M += l[8 + i];                                          \
                        T##_scales(b, &d, &dmin);                                                  \
                        float dx = mx_act_scales(xq, K)[sb];                                       \
                        acc = fmaf(f16c(d) * dx, (float)S, acc);                                   \
                        if (MIN)                                                                   \
                                acc = fmaf(-f16c(dmin) * dx, (float)M, acc);                       \
                }                                                                                  \
                return acc;                                                                        \
        }

/* Rows r..r+3, tokens [0, N): out[t][r + i], the 4 rows' sums in the
 * lanes of 128 bits; the next rows asked for MX_PREFETCH_AHEAD on, as
 * the other types' tiles (tiles.h). */
#define DEFINE_K_ROWS4(NAME, T, N, MIN)                                                            \
        static void NAME(const mx_matmul_args *a, uint64_t r, uint64_t rb, const uint8_t *end) {   \
                const uint8_t *w = a->w + r * rb;                                                  \
                const uint64_t K = a->cols;                                                        \
                mx_prefetch(w + MX_PREFETCH_AHEAD, end, 4 * rb);                                   \
                __m128 F[N];                                                                       \
                UNROLL for (int t = 0; t < N; t++) F[t] = _mm_setzero_ps();                        \
                for (uint64_t sb = 0; sb < K / 256; sb++) {                                        \
                        vb x[N][4];                                                                \
                        __m256i bs[N];                                                             \
                        vi v[N][4];                                                                \
                        uint16_t d16[8] = {0}, m16[8] = {0};                                       \
                        UNROLL for (int t = 0; t < N; t++) T##_token(a->xq + t * a->ldxq, K, sb, x[t], &bs[t]); \
                        UNROLL for (int i = 0; i < 4; i++) {                                       \
                                const T##_block *b = (const T##_block *)(w + i * rb) + sb;         \
                                T##_scales(b, &d16[i], &m16[i]);                                   \
                                UNROLL for (int t = 0; t < N; t++) v[t][i] = T##_row_sums(b, x[t], bs[t]); \
                        }                                                                          \
                        __m128 d = _mm_cvtph_ps(_mm_loadu_si128((const __m128i *)d16));            \
                        __m128 dmin = _mm_cvtph_ps(_mm_loadu_si128((const __m128i *)m16));         \
                        UNROLL for (int t = 0; t < N; t++) {                                       \
                                __m128i S, M;                                                      \
                                float dx = mx_act_scales(a->xq + t * a->ldxq, K)[sb];              \
                                vi_lane_sums4(v[t], &S, &M);                                       \
                                F[t] = _mm_fmadd_ps(_mm_mul_ps(d, _mm_set1_ps(dx)), _mm_cvtepi32_ps(S), F[t]); \
                                if (MIN)                                                           \
                                        F[t] = _mm_fmadd_ps(_mm_mul_ps(dmin, _mm_set1_ps(-dx)), _mm_cvtepi32_ps(M), F[t]); \
                        }                                                                          \
                }                                                                                  \
                UNROLL for (int t = 0; t < N; t++) {                                               \
                        float o[4];                                                                \
                        _mm_storeu_ps(o, F[t]);                                                    \
                        rows_put(a, (uint32_t)t, r, o, 4);                                         \
                }                                                                                  \
        }

/* Rows u[0..R) (each nsb super-blocks) against one group at xg: o[r] lane
 * j is row r's output for the group's token j. A sub-block's 4-value sums
 * are scaled once with an integer multiply. */
#define DEFINE_K_LANES(NAME, T, R, SUBS)                                                           \
        static void NAME(const T##_unpacked *const *u, uint64_t nsb, const uint8_t *xg,            \
                         float o[R][MX_ACT_GROUP]) {                                               \
                vf F[R];                                                                           \
                UNROLL for (int r = 0; r < R; r++) F[r] = vf_zero();                               \
                for (uint64_t sb = 0; sb < nsb; sb++) {                                            \
                        const uint8_t *xs = xg + sb * MX_ACT_GROUP_SUPER;                          \
                        vi S[R];                                                                   \
                        UNROLL for (int r = 0; r < R; r++) S[r] = vi_set1(u[r][sb].c);             \
                        for (int j = 0; j < SUBS; j++) {                                           \
                                vi A[R];                                                           \
                                UNROLL for (int r = 0; r < R; r++) A[r] = vi_zero();               \
                                UNROLL for (int m = 64 / SUBS * j; m < 64 / SUBS * (j + 1); m++) { \
                                        vb x = vb_load(xs + 64 * m);                               \
                                        UNROLL for (int r = 0; r < R; r++)                         \
                                                A[r] = vi_dpbusd(A[r], x, vb_bcast4(u[r][sb].u + 4 * m)); \
                                }                                                                  \
                                UNROLL for (int r = 0; r < R; r++)                                 \
                                        S[r] = vi_add(S[r], vi_mullo(A[r], vi_set1(u[r][sb].sc[j]))); \
                        }                                                                          \
                        vf dx = vf_load((const float *)(xs + 64 * 64));                            \
                        UNROLL for (int r = 0; r < R; r++) {                                       \
                                F[r] = vf_fma(vf_mul(vf_set1(u[r][sb].d), dx), vf_cvt(S[r]), F[r]); \
                                F[r] = T##_min_step(&u[r][sb], xs, dx, F[r]);                      \
                        }                                                                          \
                }                                                                                  \
                UNROLL for (int r = 0; r < R; r++) vf_store(o[r], F[r]);                           \
        }

/* All of a K-quant T's kernels and its table's row function. */
#define DEFINE_K_KERNELS(T, R, SUBS, MIN)                                                          \
        DEFINE_K_ROW(T, MIN)                                                                       \
        DEFINE_K_ROWS4(T##_rows4_1, T, 1, MIN)                                                     \
        DEFINE_K_ROWS4(T##_rows4_2, T, 2, MIN)                                                     \
        DEFINE_K_ROWS4(T##_rows4_3, T, 3, MIN)                                                     \
        static const tile_fn T##_rows4[4] = {NULL, T##_rows4_1, T##_rows4_2, T##_rows4_3};         \
        static void T##_decode(const mx_matmul_args *a, uint64_t r0, uint64_t r1, uint64_t rb) {   \
                decode_tiles(a, r0, r1, rb, 4, MX_PREFETCH_AHEAD, T##_rows4, T##_row);             \
        }                                                                                          \
        DEFINE_K_LANES(T##_lanes, T, R, SUBS)                                                      \
        DEFINE_K_LANES(T##_lanes_1, T, 1, SUBS)                                                    \
        DEFINE_SUPER_ROWS(T, R, 256, MX_ACT_Q8K)
