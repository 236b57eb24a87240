/* Causal grouped-query attention over each sequence's blocks of the KV
 * pool. One task per (rows of one sequence, KV head): the query heads
 * sharing that KV head, for up to ROWS consecutive tokens, read its keys
 * and values together, block by block, so each block comes from memory
 * once for all of them (then from L1); the kernels' scores and mix take a
 * block's rows for all those heads in one call and widen bf16 exactly in
 * registers. Scores are q.k / sqrt(head_dim) and a softmax in fp32 with
 * the maximum subtracted, as Hugging Face computes them (the kernels'
 * softmax: an exp of their own and a sum in 16 lanes, the same bits on
 * every instruction set, where libm's expf cost a call a score); each
 * (token, head) is computed alone, in key order, so the result does not
 * depend on how tokens were grouped or batched. What a step writes is
 * rounded to the pool's type first and read back from it, so a token's K
 * and V are the same whichever step wrote them. */
#include <errno.h>
#include <math.h>
#include <string.h>

#include "cpu_backend.h"
#include "quant.h"

#define ROWS 16

typedef struct attn_job {
        cpu_backend *cb;
        uint32_t layer;
        const mx_attn_seq *seqs;
        size_t n_seqs;
        uint32_t rows;     /* per task at most (ROWS; fewer for short steps, so that threads share them) */
        const float *q;
        float *out;
} attn_job;

/* Task k's sequence and its rows [*r0, *r1) (as offsets in the sequence). */
static const mx_attn_seq *rows_of(const attn_job *j, uint32_t k, uint32_t *r0, uint32_t *r1) {
        for (size_t s = 0; s < j->n_seqs; s++) {
                uint32_t groups = (j->seqs[s].n + j->rows - 1) / j->rows;
                if (k < groups) {
                        *r0 = k * j->rows;
                        *r1 = *r0 + j->rows < j->seqs[s].n ? *r0 + j->rows : j->seqs[s].n;
                        return &j->seqs[s];
                }
                k -= groups;
        }
        return NULL;
}

/* KV head g's first row in a block's keys or values; rows are
 * n_kv_heads * head_dim elements of the pool's type apart. */
static const void *kv_rows(const attn_job *j, uint32_t block, bool v, uint32_t g) {
        const mx_config *c = &j->cb->base.model->cfg;
        size_t off = (size_t)g * c->head_dim * mx_kv_elem_bytes(j->cb->base.kv_type);
        return (const char *)mx_cpu_kv_block(j->cb, block, j->layer, v) + off;
}

/* n rows of `bytes` each, `step` bytes apart, on their way into the
 * cache: a sequence's blocks lie far apart in the pool (a block holds
 * every layer), where the hardware prefetchers, which stay within a page,
 * do not follow, so each block would start with misses. */
static void prefetch_rows(const void *p, uint64_t step, uint32_t n, size_t bytes) {
        for (uint32_t i = 0; i < n; i++)
                for (size_t o = 0; o < bytes; o += 64)
                        __builtin_prefetch((const char *)p + i * step + o);
}

/* Keys (or values) of block b that row `len` long sees. */
static uint32_t seen(uint32_t len, uint32_t b) {
        uint32_t i0 = b * MX_KV_BLOCK;
        return len <= i0 ? 0 : len - i0 < MX_KV_BLOCK ? len - i0 : MX_KV_BLOCK;
}

/* Each (row, head) pair's scores to softmax weights (the kernels'). */
static void softmax(const attn_job *j, const mx_attn_seq *s, uint32_t r0, size_t heads, uint32_t group,
                    uint32_t longest, float *p) {
        for (size_t x = 0; x < heads; x++)
                j->cb->k->softmax(p + x * longest, s->pos0 + r0 + (uint32_t)(x / group) + 1);
}

static void attn_task(void *arg, uint32_t task, uint32_t thread) {
        const attn_job *j = arg;
        const mx_config *c = &j->cb->base.model->cfg;
        const mx_kernels *k = j->cb->k;
        uint32_t hd = c->head_dim, kvh = c->n_kv_heads, group = c->n_heads / kvh, g = task % kvh, r0, r1;
        const mx_attn_seq *s = rows_of(j, task / kvh, &r0, &r1);
        uint32_t longest = s->pos0 + r1, blocks = (longest + MX_KV_BLOCK - 1) / MX_KV_BLOCK;
        size_t heads = (size_t)(r1 - r0) * group; /* (row, head) pairs, row-major */
        float *p = j->cb->scratch[thread].p; /* each pair's scores [longest] */
        float scale = (float)sqrt((double)hd);
        uint64_t step = (uint64_t)kvh * hd;
        bool bf16 = j->cb->base.kv_type != MX_KV_F32;

        size_t es = mx_kv_elem_bytes(j->cb->base.kv_type), row = hd * es;
        /* the values this block's scores will need after the softmax, and
         * the next block's keys */
        for (uint32_t b = 0; b < blocks; b++) {
                const void *keys = kv_rows(j, s->blocks[b], false, g);
                prefetch_rows(kv_rows(j, s->blocks[b], true, g), step * es, seen(longest, b), row);
                if (b + 1 < blocks)
                        prefetch_rows(kv_rows(j, s->blocks[b + 1], false, g), step * es, seen(longest, b + 1), row);
                for (uint32_t r = r0; r < r1; r++) {
                        const float *qr = j->q + ((size_t)(s->row0 + r) * c->n_heads + g * group) * hd;
                        float *pr = p + (size_t)(r - r0) * group * longest + b * MX_KV_BLOCK;
                        k->scores(qr, group, keys, step, bf16, seen(s->pos0 + r + 1, b), hd, scale, pr, longest);
                }
        }
        softmax(j, s, r0, heads, group, longest, p);
        for (uint32_t r = r0; r < r1; r++)
                memset(j->out + ((size_t)(s->row0 + r) * c->n_heads + g * group) * hd, 0, (size_t)group * hd * 4);
        for (uint32_t b = 0; b < blocks; b++) {
                const void *vals = kv_rows(j, s->blocks[b], true, g);
                for (uint32_t r = r0; r < r1; r++) {
                        float *o = j->out + ((size_t)(s->row0 + r) * c->n_heads + g * group) * hd;
                        const float *pr = p + (size_t)(r - r0) * group * longest + b * MX_KV_BLOCK;
                        k->mix(pr, longest, group, vals, step, bf16, seen(s->pos0 + r + 1, b), hd, o);
                }
        }
}

/* Rows of k (or v) into each sequence's blocks at its positions, rounded
 * to the pool's type. */
static void write_rows(cpu_backend *cb, uint32_t layer, const mx_attn_seq *a, const float *src, bool v) {
        const mx_config *c = &cb->base.model->cfg;
        size_t stride = (size_t)c->n_kv_heads * c->head_dim, elem = mx_kv_elem_bytes(cb->base.kv_type);
        for (uint32_t t = 0; t < a->n; t++) {
                uint32_t pos = a->pos0 + t;
                char *dst = (char *)mx_cpu_kv_block(cb, a->blocks[pos / MX_KV_BLOCK], layer, v) +
                            (size_t)(pos % MX_KV_BLOCK) * stride * elem;
                const float *row = src + (size_t)(a->row0 + t) * stride;
                if (cb->base.kv_type == MX_KV_F32)
                        memcpy(dst, row, stride * sizeof(float));
                else
                        for (size_t i = 0; i < stride; i++)
                                ((uint16_t *)dst)[i] = mx_f32_to_bf16(row[i]);
        }
}

int mx_cpu_attention(mx_backend *b, uint32_t layer, const mx_attn_seq *seqs, size_t n_seqs,
                     const float *q, const float *k, const float *v, float *out) {
        cpu_backend *cb = (cpu_backend *)b;
        const mx_config *c = &b->model->cfg;
        size_t stride = (size_t)c->n_kv_heads * c->head_dim, elem = mx_kv_elem_bytes(b->kv_type);
        uint32_t tokens = 0, longest = 0;
        for (size_t s = 0; s < n_seqs; s++) {
                const mx_attn_seq *a = &seqs[s];
                write_rows(cb, layer, a, k, false);
                write_rows(cb, layer, a, v, true);
                tokens += a->n;
                longest = a->pos0 + a->n > longest ? a->pos0 + a->n : longest;
                /* each token reads keys and values up to its position */
                b->kv_bytes += 2 * stride * elem * ((uint64_t)a->n * a->pos0 + (uint64_t)a->n * (a->n + 1) / 2);
        }
        /* Rows per task: ROWS, or fewer when that leaves threads idle. */
        uint32_t rows = (uint32_t)(((uint64_t)tokens * c->n_kv_heads + 2 * cb->threads - 1) / (2 * cb->threads));
        rows = rows < 1 ? 1 : rows > ROWS ? ROWS : rows;
        uint32_t tasks = 0;
        for (size_t s = 0; s < n_seqs; s++)
                tasks += (seqs[s].n + rows - 1) / rows;
        size_t pairs = (size_t)rows * (c->n_heads / c->n_kv_heads);
        for (uint32_t t = 0; t < cb->threads; t++)
                if (!mx_cpu_scratch(cb, t, pairs * (size_t)longest))
                        return -ENOMEM;
        attn_job j = {cb, layer, seqs, n_seqs, rows, q, out};
        mx_pool_run(cb->pool, tasks * c->n_kv_heads, attn_task, &j);
        return 0;
}
