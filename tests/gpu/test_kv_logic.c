/* The GPU's paged KV cache without a GPU: kv_cuda.c lays a step out (each
 * token's row, the sequences' block tables) and the kernels' host twins
 * (fake_kernels.c: the same addressing, rounding and slicing as
 * kernels/elementwise.cu and attention.cu) write and read the pool through
 * it. Checked against a plain computation on each sequence's own K and V:
 * every element stored where its position says (bf16 rounded as the CPU
 * rounds it, bit for bit), nothing else touched, blocks shared between
 * sequences read by both, and attention within float rounding, for f32
 * and bf16 pools, decode and prefill rows in one step, many slices or one.
 *
 *   test-kv-logic */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "cuda_backend.h"
#include "fake_kernels.h"
#include "mx_common.h"
#include "quant.h"
#include "test_util.h"

enum { LAYERS = 2, KVH = 2, HEADS = 6, HD = 32, STRIDE = KVH * HD, BLOCKS = 24, SEQS = 3, MAXLEN = 120 };

static uint64_t seed = 11;

static float urand(void) {
        seed = seed * 6364136223846793005ull + 1442695040888963407ull;
        return (float)((seed >> 40) & 0xffffff) / 16777216.0f * 2.0f - 1.0f;
}

/* Each sequence's K and V as written, by layer and position: the truth. */
static float keys[SEQS][LAYERS][MAXLEN][STRIDE], vals[SEQS][LAYERS][MAXLEN][STRIDE];

typedef struct rig {
        bool bf16;
        mxk_kv kv;
        uint32_t tables[256];
        uint32_t blocks[SEQS][8]; /* each sequence's pool blocks */
} rig;

static float stored(float x, bool bf16) {
        return bf16 ? mx_bf16_to_f32(mx_f32_to_bf16(x)) : x;
}

/* One step: seqs write their n new positions' K and V at every layer
 * (made up here), through kv_cuda.c's layout. */
static void append(rig *g, const mx_attn_seq *seqs, size_t n, mxk_row *rows) {
        uint32_t T = 0;
        for (size_t i = 0; i < n; i++)
                T += seqs[i].n;
        CHECK(mx_cuda_kv_entries(seqs, n) <= MX_ELEMENTSOF(g->tables), "too many table entries");
        mx_cuda_kv_layout(seqs, n, rows, g->tables);
        float *k = calloc((size_t)T * STRIDE, 4), *v = calloc((size_t)T * STRIDE, 4);
        for (uint32_t L = 0; L < LAYERS; L++) {
                for (size_t i = 0; i < n; i++)
                        for (uint32_t t = 0; t < seqs[i].n; t++)
                                for (uint32_t x = 0; x < STRIDE; x++) {
                                        size_t s = (size_t)(seqs[i].blocks - g->blocks[0]) / 8, r = seqs[i].row0 + t;
                                        k[r * STRIDE + x] = keys[s][L][seqs[i].pos0 + t][x] = urand();
                                        v[r * STRIDE + x] = vals[s][L][seqs[i].pos0 + t][x] = urand();
                                }
                mxk_kv_append(NULL, &g->kv, rows, T, L, k, v);
        }
        free(k), free(v);
}

/* Every stored element against the truth. */
static void check_pool(const rig *g, const uint32_t *len, const char *what) {
        size_t half = (size_t)MXK_KV_BLOCK * STRIDE;
        for (uint32_t s = 0; s < SEQS; s++)
                for (uint32_t L = 0; L < LAYERS; L++)
                        for (uint32_t p = 0; p < len[s]; p++) {
                                size_t at = ((size_t)g->blocks[s][p / MXK_KV_BLOCK] * LAYERS + L) * 2 * half +
                                            (size_t)(p % MXK_KV_BLOCK) * STRIDE;
                                bool same = true;
                                for (uint32_t x = 0; x < STRIDE; x++) {
                                        float kx = g->bf16 ? mx_bf16_to_f32(((uint16_t *)g->kv.pool)[at + x])
                                                           : ((float *)g->kv.pool)[at + x];
                                        float vx = g->bf16 ? mx_bf16_to_f32(((uint16_t *)g->kv.pool)[at + half + x])
                                                           : ((float *)g->kv.pool)[at + half + x];
                                        same &= memcmp(&kx, &(float){stored(keys[s][L][p][x], g->bf16)}, 4) == 0 &&
                                                memcmp(&vx, &(float){stored(vals[s][L][p][x], g->bf16)}, 4) == 0;
                                }
                                CHECK(same, "%s: sequence %u layer %u position %u not as written", what, s, L, p);
                        }
}

/* Causal attention of row r's query over sequence s's first len positions. */
static void reference(bool bf16, uint32_t s, uint32_t L, uint32_t len, const float *q, double *out) {
        for (uint32_t h = 0; h < HEADS; h++) {
                uint32_t g = h / (HEADS / KVH);
                double sc[MAXLEN], max = -INFINITY, sum = 0;
                for (uint32_t i = 0; i < len; i++) {
                        double d = 0;
                        for (uint32_t x = 0; x < HD; x++)
                                d += (double)q[h * HD + x] * stored(keys[s][L][i][g * HD + x], bf16);
                        sc[i] = d / sqrt((double)HD);
                        max = sc[i] > max ? sc[i] : max;
                }
                for (uint32_t i = 0; i < len; i++)
                        sum += sc[i] = exp(sc[i] - max);
                for (uint32_t x = 0; x < HD; x++) {
                        double o = 0;
                        for (uint32_t i = 0; i < len; i++)
                                o += sc[i] / sum * stored(vals[s][L][i][g * HD + x], bf16);
                        out[h * HD + x] = o;
                }
        }
}

static void check_attention(rig *g, const mx_attn_seq *seqs, size_t n, const mxk_row *rows, const char *what) {
        uint32_t T = 0, longest = 0;
        for (size_t i = 0; i < n; i++) {
                T += seqs[i].n;
                longest = seqs[i].pos0 + seqs[i].n > longest ? seqs[i].pos0 + seqs[i].n : longest;
        }
        float *q = malloc((size_t)T * HEADS * HD * 4), *out = malloc((size_t)T * HEADS * HD * 4);
        float *scratch = malloc(mxk_attention_scratch(T, HEADS, HD, KVH, longest) * 4);
        for (size_t i = 0; i < (size_t)T * HEADS * HD; i++)
                q[i] = urand();
        for (uint32_t L = 0; L < LAYERS; L++) {
                mxk_attention(NULL, &g->kv, rows, T, L, q, out, HEADS, KVH, HD, longest, scratch);
                double worst = 0, want[HEADS * HD];
                for (size_t i = 0; i < n; i++)
                        for (uint32_t t = 0; t < seqs[i].n; t++) {
                                size_t r = seqs[i].row0 + t, s = (size_t)(seqs[i].blocks - g->blocks[0]) / 8;
                                reference(g->bf16, (uint32_t)s, L, seqs[i].pos0 + t + 1, q + r * HEADS * HD, want);
                                for (uint32_t x = 0; x < HEADS * HD; x++) {
                                        double e = fabs(out[r * HEADS * HD + x] - want[x]);
                                        worst = e > worst ? e : worst;
                                }
                        }
                CHECK(worst < 1e-5, "%s: layer %u: attention off by %.3g", what, L, worst);
        }
        free(q), free(out), free(scratch);
}

static void run(bool bf16) {
        const char *what = bf16 ? "bf16" : "f32";
        rig g = {.bf16 = bf16};
        size_t bytes = (size_t)BLOCKS * LAYERS * 2 * MXK_KV_BLOCK * STRIDE * (bf16 ? 2 : 4);
        g.kv = (mxk_kv){.pool = malloc(bytes), .tables = g.tables, .layers = LAYERS, .stride = STRIDE, .bf16 = bf16};
        memset(g.kv.pool, 0xa5, bytes);
        /* Blocks scattered over the pool; sequence 2 starts with sequence 1's
         * first two blocks (a shared prefix of 32 positions), then its own. */
        static const uint32_t own[SEQS][8] = {
                {7, 3, 19, 11, 0, 22, 5, 14}, {9, 2, 16, 21, 4, 12, 1, 18}, {9, 2, 6, 23, 8, 13, 10, 15}};
        memcpy(g.blocks, own, sizeof(own));
        mxk_row rows[MAXLEN * SEQS];
        /* Prefills (sequence 2's shared part is sequence 1's, written once). */
        mx_attn_seq pre[] = {{g.blocks[0], 0, 40, 0}, {g.blocks[1], 0, 75, 40}};
        append(&g, pre, 2, rows);
        memcpy(keys[2], keys[1], sizeof(keys[1])), memcpy(vals[2], vals[1], sizeof(vals[1]));
        mx_attn_seq rest = {g.blocks[2], 32, 9, 0};
        append(&g, &rest, 1, rows);
        uint32_t len[SEQS] = {40, 75, 41};
        check_pool(&g, len, what);
        /* A step of two decode rows and a chunk of prefill, each reading
         * what the others wrote; then decode alone (few rows: many slices). */
        mx_attn_seq step[] = {{g.blocks[0], 40, 1, 0}, {g.blocks[1], 75, 20, 1}, {g.blocks[2], 41, 1, 21}};
        append(&g, step, 3, rows);
        check_attention(&g, step, 3, rows, what);
        len[0] = 41, len[1] = 95, len[2] = 42;
        check_pool(&g, len, what);
        mx_attn_seq decode[] = {{g.blocks[1], 95, 1, 0}};
        append(&g, decode, 1, rows);
        CHECK(mxk_attention_slices(1, KVH, 96) > 1, "a decode step of one row has one slice");
        check_attention(&g, decode, 1, rows, what);
        /* The blocks no sequence holds are as they were. */
        static const uint32_t unused[] = {17, 20};
        size_t per = bytes / BLOCKS;
        for (size_t i = 0; i < MX_ELEMENTSOF(unused); i++) {
                const uint8_t *b = (const uint8_t *)g.kv.pool + unused[i] * per;
                bool untouched = true;
                for (size_t j = 0; j < per; j++)
                        untouched &= b[j] == 0xa5;
                CHECK(untouched, "%s: block %u, which no sequence holds, was written", what, unused[i]);
        }
        free(g.kv.pool);
}

int main(void) {
        run(false);
        run(true);
        return test_result();
}
