/* The CPU kernels of every weight type on every instruction set this
 * machine runs, against the scalar reference, bit for bit: on the f32
 * path and on the fast path, for 1 to 70 tokens (decode tiles, prefill
 * tiles and their leftovers), for rows that are not a multiple of any
 * tile, odd numbers of 32-blocks and float rows with tails. Also: each
 * token's outputs equal those of the token alone (batch invariance),
 * accumulate adds, the f32 path equals a plain dot product of
 * mx_dequant_row's floats, and the fast path stays within its tolerance of
 * the f32 path; and attention's kernels (scores, mix) on fp32 and bf16
 * rows against the scalar dot and axpy, its softmax on every instruction
 * set against the scalar one, and the softmax's exp against exp. Packed
 * BF16 rows (MX_BF16P) unpack to the very words they were packed from,
 * and their products on AVX-512 equal the plain rows' scalar ones. */
#include <math.h>

#include "kernels.h"
#include "mx_common.h"
#include "quant.h"
#include "test_util.h"

#define MAX_N 70

static uint64_t rng = 0x9e3779b97f4a7c15ull;

static double uniform(void) {
        rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
        return (double)(rng >> 11) / 9007199254740992.0;
}

static float gauss(void) {
        return (float)(sqrt(-2 * log(uniform() + 1e-300)) * cos(6.283185307179586 * uniform()));
}

typedef struct problem {
        mx_dtype t;
        uint64_t rows, cols, row_bytes;
        uint8_t *w;        /* [rows][row_bytes] */
        float *x;          /* [MAX_N][cols] */
        uint8_t *xq;       /* [MAX_N][ldxq] the fast path's activations */
        uint64_t ldxq;
} problem;

/* Weights like a model's (with a few rows of larger scale), stored as t;
 * activations with an outlier or two per token, as a residual stream has. */
static void make(problem *p, mx_dtype t, uint64_t rows, uint64_t cols) {
        *p = (problem){.t = t, .rows = rows, .cols = cols};
        mx_dtype_row_bytes(t, cols, &p->row_bytes);
        p->w = malloc(rows * p->row_bytes);
        float *row = malloc(cols * sizeof(float));
        for (uint64_t r = 0; r < rows; r++) {
                float scale = r % 7 == 3 ? 0.2f : 0.02f;
                for (uint64_t i = 0; i < cols; i++)
                        row[i] = scale * gauss();
                CHECK(mx_quantize_row(t, row, p->w + r * p->row_bytes, cols) == 0, "quantize %s", mx_dtype_name(t));
        }
        free(row);
        p->x = malloc(MAX_N * cols * sizeof(float));
        for (uint64_t i = 0; i < MAX_N * cols; i++)
                p->x[i] = gauss() * (i % 97 == 5 ? 20.0f : 1.0f);
        mx_act act = mx_act_for(t, true);
        p->ldxq = mx_act_row_bytes(act, cols);
        if (posix_memalign((void **)&p->xq, 64, MAX_N * p->ldxq) != 0)
                abort();
        for (uint32_t n = 0; n < MAX_N; n++)
                mx_act_quantize(act, p->x + n * cols, cols, p->xq + n * p->ldxq);
}

static void unmake(problem *p) {
        free(p->w), free(p->x), free(p->xq);
}

/* out[n][rows] from kernels k on tokens [t0, t0 + n). */
static void product(const mx_kernels *k, const problem *p, bool fast, uint32_t t0, uint32_t n, float *out,
                    bool accumulate) {
        mx_matmul_args a = {.w = p->w, .dtype = p->t, .cols = p->cols, .x = p->x + t0 * p->cols, .ldx = p->cols,
                            .xq = fast ? p->xq + t0 * p->ldxq : NULL, .ldxq = p->ldxq, .out = out,
                            .ldo = p->rows, .n = n, .accumulate = accumulate};
        uint8_t *groups = NULL;
        if (fast && mx_act_grouped(p->t, true, n)) {
                a.ldxg = mx_act_group_bytes(mx_act_for(p->t, true), p->cols);
                groups = malloc((n + MX_ACT_GROUP - 1) / MX_ACT_GROUP * a.ldxg);
                for (uint32_t t = 0; t < n; t += MX_ACT_GROUP) {
                        uint32_t g = n - t < MX_ACT_GROUP ? n - t : MX_ACT_GROUP;
                        mx_act_group(mx_act_for(p->t, true), a.xq + t * p->ldxq, p->ldxq, g, p->cols,
                                     groups + t / MX_ACT_GROUP * a.ldxg);
                }
                a.xg = groups;
        }
        /* In two calls, as threads split rows: tiles must not care where. */
        uint64_t split = p->rows / 3;
        k->matmul_rows(&a, 0, split);
        k->matmul_rows(&a, split, p->rows);
        free(groups);
}

static double rel_l2(const float *a, const float *b, size_t n) {
        double d = 0, s = 0;
        for (size_t i = 0; i < n; i++)
                d += ((double)a[i] - b[i]) * ((double)a[i] - b[i]), s += (double)b[i] * b[i];
        return sqrt(d / s);
}

/* The f32 path is a dot product of mx_dequant_row's floats (to rounding). */
static void against_dequant(const problem *p, const float *got) {
        float *w = malloc(p->cols * sizeof(float)), *want = malloc(p->rows * sizeof(float));
        for (uint64_t r = 0; r < p->rows; r++) {
                mx_dequant_row(p->t, p->w + r * p->row_bytes, w, p->cols);
                double s = 0;
                for (uint64_t i = 0; i < p->cols; i++)
                        s += (double)w[i] * p->x[i];
                want[r] = (float)s;
        }
        double e = rel_l2(got, want, p->rows);
        CHECK(e < 1e-5, "%s %llu: the f32 path is %.3g from the dequantized weights' products", mx_dtype_name(p->t),
              (unsigned long long)p->cols, e);
        free(w), free(want);
}

/* The fast path's rounding of the activations (and of nothing else): to
 * bf16; to int8 per 32 values; to int8 per 256 values, which the
 * activations' outliers (20x, one in 97) make coarser. */
static double fast_tolerance(mx_dtype t) {
        return t == MX_DTYPE_BF16 ? 1e-2 : mx_dtype_block_elems(t) == 32 ? 2e-2 : 4e-2;
}

static void check(mx_dtype t, uint64_t rows, uint64_t cols) {
        problem p;
        make(&p, t, rows, cols);
        size_t outs = (size_t)MAX_N * rows;
        float *ref = malloc(outs * sizeof(float)), *got = malloc(outs * sizeof(float));
        float *f32 = malloc(outs * sizeof(float));
        const char *name = mx_dtype_name(t);
        for (int fast = 0; fast < 2; fast++) {
                if (fast && mx_act_for(t, true) == MX_ACT_F32)
                        continue;
                /* The reference, one token at a time. */
                for (uint32_t i = 0; i < MAX_N; i++)
                        product(&mx_kernels_scalar, &p, fast, i, 1, ref + i * rows, false);
                if (!fast) {
                        memcpy(f32, ref, outs * sizeof(float));
                        against_dequant(&p, ref);
                } else {
                        double e = rel_l2(ref, f32, outs);
                        CHECK(e < fast_tolerance(t), "%s %llu: the fast path is %.3g from the f32 path", name,
                              (unsigned long long)cols, e);
                }
                for (int isa = 0; isa < MX_ISA_COUNT; isa++) {
                        if (!mx_isa_supported((mx_isa)isa))
                                continue;
                        const mx_kernels *k = mx_kernels_for((mx_isa)isa);
                        int bad = 0;
                        for (uint32_t n = 1; n <= MAX_N && !bad; n += n < 8 ? 1 : n < 24 ? 5 : 23) {
                                product(k, &p, fast, 0, n, got, false);
                                bad = memcmp(got, ref, (size_t)n * rows * sizeof(float)) != 0;
                                CHECK(!bad, "%s %llux%llu, %s, %s path, %u tokens: differs from the scalar "
                                      "kernel or from each token alone", name, (unsigned long long)rows,
                                      (unsigned long long)cols, mx_isa_name((mx_isa)isa), fast ? "fast" : "f32", n);
                        }
                        /* accumulate: out += product, the same additions. */
                        for (size_t i = 0; i < (size_t)5 * rows; i++)
                                got[i] = 1.0f;
                        product(k, &p, fast, 0, 5, got, true);
                        for (size_t i = 0; i < (size_t)5 * rows; i++)
                                if (got[i] != 1.0f + ref[i]) {
                                        CHECK(false, "%s, %s: accumulate differs at %zu", name,
                                              mx_isa_name((mx_isa)isa), i);
                                        break;
                                }
                }
        }
        printf("%-5s %4llu x %5llu: every instruction set equals the scalar kernels on both paths\n", name,
               (unsigned long long)rows, (unsigned long long)cols);
        free(ref), free(got), free(f32);
        unmake(&p);
}

/* Words that test the packing: zeros of both signs, subnormals, values
 * whose exponents are rare in their row (exceptions), rows with
 * exceptions in most blocks, and rows of 8 exponents (none: the kernels'
 * other loop). kernels false: only values every kernel multiplies alike
 * (vdpbf16ps flushes subnormal products, kernels.h). */
static void unusual_words(problem *p, bool kernels) {
        uint16_t *w = (uint16_t *)p->w;
        for (uint64_t r = 0; r < p->rows; r++)
                for (uint64_t i = 0; i < p->cols; i++) {
                        uint16_t *v = &w[r * p->cols + i];
                        uint64_t h = (r * 131 + i * 71) % 97;
                        if (r % 3 == 0) {
                                *v = (uint16_t)((i % 3 == 1) << 15 | (0x78 + (i * 5 + r) % 8) << 7 | (i * 37 % 128));
                                continue;
                        }
                        if (h == 1)
                                *v = 0x0000;
                        else if (h == 2)
                                *v = 0x8000;
                        else if (h == 3 && !kernels)
                                *v = (uint16_t)(0x0001 + i % 120); /* subnormal */
                        else if ((h == 4 || (r % 5 == 2 && i % 64 == 9)) && p->cols >= 64)
                                *v = (uint16_t)((i % 2) << 15 | (0x10 + (r + i) % 40) << 7 | (i % 128));
                }
}

/* out[n][rows] from kernels k on packed rows, tokens [0, n). */
static void packed_product(const mx_kernels *k, const problem *p, const uint8_t *packed, uint64_t stride, uint32_t n,
                           float *out, bool accumulate) {
        mx_matmul_args a = {.w = packed, .dtype = MX_DTYPE_BF16, .packed = stride, .cols = p->cols, .x = p->x,
                            .ldx = p->cols, .xq = p->xq, .ldxq = p->ldxq, .out = out, .ldo = p->rows, .n = n,
                            .accumulate = accumulate};
        uint64_t split = p->rows / 3;
        k->matmul_rows(&a, 0, split);
        k->matmul_rows(&a, split, p->rows);
}

/* The rows packed: NULL where they do not fit MX_BF16P. */
static uint8_t *pack(const problem *p, uint64_t *stride) {
        uint64_t most = 0;
        for (uint64_t r = 0; r < p->rows; r++) {
                uint64_t e = mx_bf16p_exceptions((const uint16_t *)p->w + r * p->cols, p->cols);
                most = e > most ? e : most;
        }
        if (!mx_bf16p_fits(p->cols, most, stride))
                return NULL;
        uint8_t *packed = malloc(p->rows * *stride);
        for (uint64_t r = 0; r < p->rows; r++)
                mx_bf16p_pack_row((const uint16_t *)p->w + r * p->cols, p->cols, packed + r * *stride, *stride);
        return packed;
}

/* A BF16 problem with unusual_words, and its rows packed (or NULL). */
static uint8_t *make_packed(problem *p, uint64_t rows, uint64_t cols, bool kernels, uint64_t *stride) {
        make(p, MX_DTYPE_BF16, rows, cols);
        unusual_words(p, kernels);
        return pack(p, stride);
}

static void check_unpack(uint64_t rows, uint64_t cols) {
        problem p;
        uint64_t stride;
        uint8_t *packed = make_packed(&p, rows, cols, false, &stride);
        uint16_t *back = malloc(cols * sizeof(uint16_t));
        CHECK(packed && stride % 64 == 0 && stride < cols * 2, "bf16p %llu: packs (stride %llu)",
              (unsigned long long)cols, (unsigned long long)stride);
        for (uint64_t r = 0; packed && r < rows; r++) {
                mx_bf16p_unpack_row(packed + r * stride, cols, back);
                CHECK(memcmp(back, p.w + r * p.row_bytes, cols * 2) == 0, "bf16p %llu: row %llu unpacks to other words",
                      (unsigned long long)cols, (unsigned long long)r);
        }
        free(packed), free(back);
        unmake(&p);
}

static void check_packed(uint64_t rows, uint64_t cols) {
        problem p;
        uint64_t stride;
        uint8_t *packed = make_packed(&p, rows, cols, true, &stride);
        size_t outs = (size_t)MAX_N * rows;
        float *ref = malloc(outs * sizeof(float)), *got = malloc(outs * sizeof(float));
        CHECK(packed != NULL, "bf16p %llu x %llu: does not pack", (unsigned long long)rows, (unsigned long long)cols);
        uint64_t clean = 0;
        for (uint64_t r = 0; r < rows; r++)
                clean += mx_bf16p_exceptions((const uint16_t *)p.w + r * cols, cols) == 0;
        CHECK(clean > 0 && clean < rows, "bf16p %llu: %llu of %llu rows without exceptions: both kinds wanted",
              (unsigned long long)cols, (unsigned long long)clean, (unsigned long long)rows);
        for (uint32_t i = 0; i < MAX_N; i++)
                product(&mx_kernels_scalar, &p, true, i, 1, ref + i * rows, false);
        static const mx_isa packs[] = {MX_ISA_AVX2, MX_ISA_AVX2_VNNI, MX_ISA_AVX512, MX_ISA_AVX512_VNNI};
        for (size_t s = 0; packed && s < MX_ELEMENTSOF(packs); s++) {
                if (!mx_isa_supported(packs[s]))
                        continue;
                const mx_kernels *k = mx_kernels_for(packs[s]);
                int bad = 0;
                for (uint32_t n = 1; n <= MAX_N && !bad; n += n < 8 ? 1 : n < 24 ? 5 : 23) {
                        packed_product(k, &p, packed, stride, n, got, false);
                        bad = memcmp(got, ref, (size_t)n * rows * sizeof(float)) != 0;
                        CHECK(!bad, "bf16p %llux%llu, %s, %u tokens: differs from the plain rows' scalar products",
                              (unsigned long long)rows, (unsigned long long)cols, mx_isa_name(packs[s]), n);
                }
                for (size_t i = 0; i < (size_t)5 * rows; i++)
                        got[i] = 1.0f;
                packed_product(k, &p, packed, stride, 5, got, true);
                for (size_t i = 0; i < (size_t)5 * rows; i++)
                        if (got[i] != 1.0f + ref[i]) {
                                CHECK(false, "bf16p, %s: accumulate differs at %zu", mx_isa_name(packs[s]), i);
                                break;
                        }
        }
        printf("bf16p %4llu x %5llu: packed rows on AVX2 and AVX-512 equal the plain rows' scalar products\n",
               (unsigned long long)rows, (unsigned long long)cols);
        free(packed), free(ref), free(got);
        unmake(&p);
}

/* What does not pack stays plain: widths off the block or past the
 * stack's tile, rows where over one value in 16 would be an exception. */
static void check_refused(void) {
        uint64_t stride;
        CHECK(!mx_bf16p_fits(96, 0, &stride) && !mx_bf16p_fits(0, 0, &stride), "bf16p: widths off the block refused");
        CHECK(!mx_bf16p_fits(MX_BF16P_MAX_COLS + 64, 0, &stride), "bf16p: too wide refused");
        CHECK(mx_bf16p_fits(1024, 64, &stride) && !mx_bf16p_fits(1024, 65, &stride), "bf16p: exceptions bound");
        CHECK(!mx_bf16p_fits(128, 0, &stride) && mx_bf16p_fits(256, 0, &stride), "bf16p: narrow rows gain nothing");
        uint16_t w[64];
        for (int i = 0; i < 64; i++)
                w[i] = (uint16_t)((i + 1) << 7); /* 64 exponents: 49 exceptions */
        CHECK(mx_bf16p_exceptions(w, 64) == 64 - MX_BF16P_CODES, "bf16p: exceptions counted");
}

/* Attention's tests: up to KEYS keys and HEADS heads, score rows LD apart. */
enum { KEYS = 19, HEADS = 9, LD = KEYS + 2 };

/* One call of each attention kernel for nq heads and n keys on every
 * instruction set against n dot and axpy calls per head. */
static void check_attention_of(const float *q, uint32_t nq, const void *src, const float *wide, int bf16,
                               uint64_t step, uint32_t n, uint32_t hd, const float *w) {
        static float want[HEADS * LD], got[HEADS * LD], o_want[HEADS * 256], o_got[HEADS * 256];
        for (uint32_t h = 0; h < nq; h++) {
                for (uint32_t i = 0; i < n; i++)
                        want[h * LD + i] = mx_kernels_scalar.dot(q + h * hd, wide + i * hd, hd) / 11.3f;
                for (uint32_t d = 0; d < hd; d++)
                        o_want[h * hd + d] = (float)d - (float)h;
                for (uint32_t i = 0; i < n; i++)
                        mx_kernels_scalar.axpy(w[h * LD + i], wide + i * hd, o_want + h * hd, hd);
        }
        for (int isa = 0; isa < MX_ISA_COUNT; isa++) {
                if (!mx_isa_supported((mx_isa)isa))
                        continue;
                const mx_kernels *k = mx_kernels_for((mx_isa)isa);
                memcpy(got, want, sizeof(got));
                for (uint32_t h = 0; h < nq; h++)
                        memset(got + h * LD, 0xff, n * 4);
                k->scores(q, nq, src, step, bf16, n, hd, 11.3f, got, LD);
                for (uint32_t h = 0; h < nq; h++)
                        for (uint32_t d = 0; d < hd; d++)
                                o_got[h * hd + d] = (float)d - (float)h;
                k->mix(w, LD, nq, src, step, bf16, n, hd, o_got);
                CHECK(memcmp(got, want, sizeof(got)) == 0 && memcmp(o_got, o_want, nq * hd * 4) == 0,
                      "attention, %s rows, head_dim %u, %u heads, %u keys, %s: differs from dot and axpy",
                      bf16 ? "bf16" : "f32", hd, nq, n, mx_isa_name((mx_isa)isa));
        }
}

/* Attention's kernels on every instruction set: equal to the scalar ones
 * and to the scalar dot and axpy over widened rows (what they replace),
 * bit for bit, for fp32 and bf16 rows, head sizes with tails, any number
 * of keys, and groups of heads that are and are not multiples of the
 * kernels' four. */
static void check_attention(uint32_t hd) {
        enum { STEP_EXTRA = 5 };
        uint64_t step = hd + STEP_EXTRA;
        static float q[HEADS * 256], rows[KEYS * 261], wide[KEYS * 256], w[HEADS * LD];
        static uint16_t rows16[KEYS * 261];
        for (uint32_t i = 0; i < HEADS * hd; i++)
                q[i] = gauss();
        for (uint64_t i = 0; i < KEYS * step; i++) {
                rows16[i] = mx_f32_to_bf16(gauss());
                rows[i] = gauss();
        }
        for (uint32_t i = 0; i < HEADS * LD; i++)
                w[i] = (float)uniform();
        for (int bf16 = 0; bf16 < 2; bf16++) {
                const void *src = bf16 ? (const void *)rows16 : (const void *)rows;
                for (uint32_t i = 0; i < KEYS; i++)
                        for (uint32_t d = 0; d < hd; d++)
                                wide[i * hd + d] = bf16 ? mx_bf16_to_f32(rows16[i * step + d]) : rows[i * step + d];
                for (uint32_t nq = 1; nq <= HEADS; nq += 2)
                        for (uint32_t n = 0; n <= KEYS; n += 3)
                                check_attention_of(q, nq, src, wide, bf16, step, n, hd, w);
        }
}
/* Units in the last place of want that got is away from it. */
static double ulps(float got, double want) {
        int e;
        frexp(want, &e);
        return fabs((double)got - want) / ldexp(1.0, e - 24);
}

/* The softmax's exp against exp in double: within 2 ulp over its whole
 * range, spaced evenly and at random, 0 below MX_EXP_MIN, exactly 1 at 0,
 * NaN kept. */
static void check_exp(void) {
        double worst = 0;
        for (int i = 0; i <= 4000000; i++) {
                float x = i < 2000000 ? MX_EXP_MIN * (float)i / 2000000.0f : MX_EXP_MIN * (float)uniform();
                double u = ulps(mx_exp(x), exp((double)x));
                worst = u > worst ? u : worst;
        }
        printf("exp: %.3f ulp at worst over [%g, 0]\n", worst, (double)MX_EXP_MIN);
        CHECK(worst <= 2.0, "exp: %.3f ulp from exp", worst);
        CHECK(mx_exp(0.0f) == 1.0f && mx_exp(-0.0f) == 1.0f, "exp(0) is %g", (double)mx_exp(0.0f));
        CHECK(mx_exp(-87.5f) == 0.0f && mx_exp(-INFINITY) == 0.0f, "exp below its range is not 0");
        CHECK(isnan(mx_exp(NAN)), "exp(NaN) is not NaN");
}

/* The softmax on every instruction set equals the scalar one bit for bit,
 * for any number of scores (tails of the 16 lanes), scores far enough
 * below the maximum to give 0, and equal maxima; and stays within 2e-6
 * (relative) of a softmax in double. */
static void check_softmax(void) {
        static const uint32_t ns[] = {1, 2, 7, 15, 16, 17, 31, 33, 100, 512, 1000};
        static float x[1000], want[1000], got[1000];
        for (size_t c = 0; c < MX_ELEMENTSOF(ns); c++) {
                uint32_t n = ns[c];
                for (uint32_t i = 0; i < n; i++)
                        x[i] = gauss() * (i % 5 == 0 ? 40.0f : 4.0f);
                if (n > 3)
                        x[n - 1] = x[1] = 200.0f;
                double max = -INFINITY, sum = 0, err = 0;
                for (uint32_t i = 0; i < n; i++)
                        max = x[i] > max ? x[i] : max;
                for (uint32_t i = 0; i < n; i++)
                        sum += exp(x[i] - max);
                memcpy(want, x, n * 4);
                mx_kernels_scalar.softmax(want, n);
                for (uint32_t i = 0; i < n; i++) {
                        double p = exp(x[i] - max) / sum, e = fabs(want[i] - p) / (p > 1e-30 ? p : 1e-30);
                        err = p < 1e-37 ? err : e > err ? e : err;
                }
                CHECK(err < 2e-6, "softmax of %u scores: %g from softmax in double", n, err);
                for (int isa = 0; isa < MX_ISA_COUNT; isa++) {
                        if (!mx_isa_supported((mx_isa)isa))
                                continue;
                        memcpy(got, x, n * 4);
                        mx_kernels_for((mx_isa)isa)->softmax(got, n);
                        CHECK(memcmp(got, want, n * 4) == 0, "softmax of %u scores, %s: differs from scalar", n,
                              mx_isa_name((mx_isa)isa));
                }
        }
}

int main(void) {
        for (int isa = 0; isa < MX_ISA_COUNT; isa++)
                printf("%s: %s\n", mx_isa_name((mx_isa)isa), mx_isa_supported((mx_isa)isa) ? "tested" : "not on this CPU");
        static const uint64_t float_cols[] = {16, 70, 96, 512};
        static const mx_dtype floats[] = {MX_DTYPE_F32, MX_DTYPE_F16, MX_DTYPE_BF16};
        for (size_t i = 0; i < MX_ELEMENTSOF(floats); i++)
                for (size_t c = 0; c < MX_ELEMENTSOF(float_cols); c++)
                        check(floats[i], 37, float_cols[c]);
        static const uint64_t q32_cols[] = {32, 96, 512};
        for (size_t c = 0; c < MX_ELEMENTSOF(q32_cols); c++)
                check(MX_DTYPE_Q8_0, 21, q32_cols[c]), check(MX_DTYPE_Q4_0, 21, q32_cols[c]);
        /* Q4_0's kernels put 16 rows in the lanes, Q4_K's and Q6_K's 4:
         * blocks of them, and a tail, in both calls. */
        check(MX_DTYPE_Q4_0, 53, 96), check(MX_DTYPE_Q4_0, 53, 1024);
        check(MX_DTYPE_Q4_K, 53, 256), check(MX_DTYPE_Q4_K, 53, 1024);
        check(MX_DTYPE_Q6_K, 53, 256), check(MX_DTYPE_Q6_K, 53, 1024);
        static const mx_dtype kq[] = {MX_DTYPE_Q4_K, MX_DTYPE_Q5_K, MX_DTYPE_Q6_K};
        for (size_t i = 0; i < MX_ELEMENTSOF(kq); i++)
                check(kq[i], 21, 256), check(kq[i], 13, 768);
        /* A row of Mixtral's width. */
        check(MX_DTYPE_BF16, 9, 4096), check(MX_DTYPE_Q4_0, 9, 4096), check(MX_DTYPE_Q4_K, 9, 4096);
        check_refused();
        check_unpack(23, 256), check_unpack(7, 1024);
        /* Decode's tiles of 4 rows and one; prefill's tile of 4 on the stack. */
        check_packed(13, 256), check_packed(37, 512), check_packed(9, 4096);
        static const uint32_t head_dims[] = {16, 40, 64, 128, 136, 256};
        for (size_t i = 0; i < MX_ELEMENTSOF(head_dims); i++)
                check_attention(head_dims[i]);
        printf("attention: every instruction set equals dot and axpy over widened rows\n");
        check_exp();
        check_softmax();
        printf("softmax: every instruction set equals the scalar one\n");
        return test_result();
}
