/* What fast_q4_0.h and fast_q4_k.h share: the decode driver of 16 rows
 * in the lanes and its prefetching, the prefill's passes, buffer and
 * stores (tokens in the lanes). */

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
typedef void (*rows16_fn)(const mx_matmul_args *a, uint64_t r, uint64_t rb, const uint8_t *end);
typedef float (*row1_fn)(const uint8_t *row, const uint8_t *xq, uint64_t K);

/* Decode of rows [r0, r1): 16 rows at a time (rows16[n] for n tokens),
 * the rest one by one; at most 3 tokens at a time. */
static void decode16(const mx_matmul_args *a, uint64_t r0, uint64_t r1, uint64_t rb, const rows16_fn rows16[4],
                     row1_fn row1) {
        uint64_t r = r0;
        for (uint32_t t0 = 0; t0 < a->n; t0 += 3) {
                mx_matmul_args s = *a;
                s.n = a->n - t0 < 3 ? a->n - t0 : 3;
                s.xq = a->xq + t0 * a->ldxq, s.out = a->out + t0 * a->ldo;
                mx_prefetch(a->w + r0 * rb, a->w + r1 * rb, 16 * rb);
                /* a stride the gathers' 32-bit offsets hold */
                for (r = r0; rb < (1u << 27) && r + 16 <= r1; r += 16)
                        rows16[s.n](&s, r, rb, a->w + r1 * rb);
                for (; r < r1; r++)
                        for (uint32_t t = 0; t < s.n; t++)
                                mx_tile_put(s.out + t * s.ldo + r, row1(a->w + r * rb, s.xq + t * s.ldxq, s.cols),
                                            s.accumulate);
        }
}

typedef void (*rows4_fn)(const mx_matmul_args *a, uint64_t r, uint64_t rb);

/* Decode of rows [r0, r1) 4 rows at a time (rows4[n] for n tokens), the
 * rest one by one, each tile asking for its rows MX_PREFETCH_AHEAD on,
 * as the other types' tiles (tiles.h). */
static void decode4(const mx_matmul_args *a, uint64_t r0, uint64_t r1, uint64_t rb, const rows4_fn rows4[4],
                    row1_fn row1) {
        const uint8_t *end = a->w + r1 * rb;
        for (uint32_t t0 = 0; t0 < a->n; t0 += 3) {
                mx_matmul_args s = *a;
                uint64_t r = r0;
                s.n = a->n - t0 < 3 ? a->n - t0 : 3;
                s.xq = a->xq + t0 * a->ldxq, s.out = a->out + t0 * a->ldo;
                mx_prefetch(a->w + r0 * rb, end, MX_PREFETCH_AHEAD);
                for (; r + 4 <= r1; r += 4) {
                        mx_prefetch(a->w + r * rb + MX_PREFETCH_AHEAD, end, 4 * rb);
                        rows4[s.n](&s, r, rb);
                }
                for (; r < r1; r++)
                        for (uint32_t t = 0; t < s.n; t++)
                                mx_tile_put(s.out + t * s.ldo + r, row1(a->w + r * rb, s.xq + t * s.ldxq, s.cols),
                                            s.accumulate);
        }
}

/* Outputs of rows [r, r + R) for tokens [t0, t0 + 16 G), of which n exist. */
static void lanes_put(const mx_matmul_args *a, uint64_t r, uint32_t R, uint32_t G, uint32_t t0, const float *o) {
        for (uint32_t i = 0; i < R; i++)
                for (uint32_t g = 0; g < G; g++)
                        for (uint32_t j = 0; j < MX_ACT_GROUP && t0 + 16 * g + j < a->n; j++)
                                mx_tile_put(a->out + (t0 + 16 * g + j) * a->ldo + r + i,
                                            o[(i * G + g) * MX_ACT_GROUP + j], a->accumulate);
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


/* The prefill and the row function of a K-quant T whose kernels are
 * T_unpacked / T_unpack (a row's super-blocks unpacked), T_lanes (R rows
 * against a group, tokens in the lanes) and T_lanes_1 (one row), and
 * T_decode: T_prefill_tile unpacks rows [r, r + n) into
 * buf and runs them against groups [g0, g1); T_prefill passes over the
 * groups PASS_BYTES of them at a time; T_rows is the table's. */
#define DEFINE_SUPER_ROWS(T, R)                                                                    \
        static void T##_prefill_tile(const mx_matmul_args *a, uint64_t r, uint32_t n, uint64_t rb, uint32_t g0, \
                                     uint32_t g1, uint8_t *buf) {                                  \
                const uint64_t nsb = a->cols / 256;                                                \
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
                        lanes_put(a, r, n, 1, 16 * g, &o[0][0]);                                   \
                }                                                                                  \
        }                                                                                          \
                                                                                                   \
        static __attribute__((noinline)) void T##_prefill(const mx_matmul_args *a, uint64_t r0, uint64_t r1, \
                                                          uint64_t rb) {                           \
                _Alignas(64) uint8_t buf[UNPACKED_MAX];                                            \
                const uint32_t groups = (a->n + MX_ACT_GROUP - 1) / MX_ACT_GROUP;                  \
                uint64_t per = (PASS_BYTES) / mx_act_group_bytes(MX_ACT_Q8K, a->cols);             \
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
                if (a->xg && a->cols / 256 * sizeof(T##_unpacked) * R <= UNPACKED_MAX)             \
                        T##_prefill(a, r0, r1, rb);                                                \
                else                                                                               \
                        T##_decode(a, r0, r1, rb);                                                 \
        }
