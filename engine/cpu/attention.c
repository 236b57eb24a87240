/* Causal grouped-query attention over each sequence's blocks of the KV
 * pool. One task per (rows of one sequence, KV head): the query heads
 * sharing that KV head, for up to ROWS consecutive tokens, read its keys
 * and values together, block by block, so each block is read (and a bf16
 * one widened to fp32, exactly) once for all of them. Scores are
 * q.k / sqrt(head_dim) and a softmax in fp32 with the maximum subtracted,
 * as Hugging Face computes them; each (token, head) is computed alone, in
 * key order, so the result does not depend on how tokens were grouped or
 * batched. What a step writes is rounded to the pool's type first and
 * read back from it, so a token's K and V are the same whichever step
 * wrote them. */
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

/* n rows of KV head g in a block's keys or values, as fp32 rows of *step
 * floats: in place for an f32 pool, widened into wide ([n][head_dim]) for
 * bf16. */
static const float *block_rows(const attn_job *j, uint32_t block, bool v, uint32_t g, uint32_t n, float *wide,
                               size_t *step) {
        const mx_config *c = &j->cb->base.model->cfg;
        size_t hd = c->head_dim, stride = (size_t)c->n_kv_heads * hd;
        const void *base = mx_cpu_kv_block(j->cb, block, j->layer, v);
        if (j->cb->base.kv_type == MX_KV_F32) {
                *step = stride;
                return (const float *)base + (size_t)g * hd;
        }
        const uint16_t *h = (const uint16_t *)base + (size_t)g * hd;
        for (uint32_t i = 0; i < n; i++)
                for (size_t d = 0; d < hd; d++)
                        wide[i * hd + d] = mx_bf16_to_f32(h[i * stride + d]);
        *step = hd;
        return wide;
}

/* Keys (or values) of block b that row `len` long sees. */
static uint32_t seen(uint32_t len, uint32_t b) {
        uint32_t i0 = b * MX_KV_BLOCK;
        return len <= i0 ? 0 : len - i0 < MX_KV_BLOCK ? len - i0 : MX_KV_BLOCK;
}

static void attn_task(void *arg, uint32_t task, uint32_t thread) {
        const attn_job *j = arg;
        const mx_config *c = &j->cb->base.model->cfg;
        const mx_kernels *k = j->cb->k;
        uint32_t hd = c->head_dim, kvh = c->n_kv_heads, group = c->n_heads / kvh, g = task % kvh, r0, r1;
        const mx_attn_seq *s = rows_of(j, task / kvh, &r0, &r1);
        uint32_t longest = s->pos0 + r1, blocks = (longest + MX_KV_BLOCK - 1) / MX_KV_BLOCK;
        size_t heads = (size_t)(r1 - r0) * group; /* (row, head) pairs, row-major */
        /* scratch: each pair's sum, its scores [longest], one block widened */
        float *sum = j->cb->scratch[thread].p, *p = sum + heads, *wide = p + heads * longest;
        float scale = (float)sqrt((double)hd);
        size_t step;

        for (uint32_t b = 0; b < blocks; b++) {
                const float *keys = block_rows(j, s->blocks[b], false, g, seen(longest, b), wide, &step);
                for (uint32_t r = r0; r < r1; r++)
                        for (uint32_t h = 0; h < group; h++) {
                                const float *qh = j->q + ((size_t)(s->row0 + r) * c->n_heads + g * group + h) * hd;
                                float *ph = p + ((size_t)(r - r0) * group + h) * longest + b * MX_KV_BLOCK;
                                for (uint32_t i = 0; i < seen(s->pos0 + r + 1, b); i++)
                                        ph[i] = k->dot(qh, keys + i * step, hd) / scale;
                        }
        }
        for (size_t x = 0; x < heads; x++) {
                uint32_t len = s->pos0 + r0 + (uint32_t)(x / group) + 1;
                float *ph = p + x * longest, max = -INFINITY;
                for (uint32_t i = 0; i < len; i++)
                        max = ph[i] > max ? ph[i] : max;
                sum[x] = 0;
                for (uint32_t i = 0; i < len; i++)
                        sum[x] += ph[i] = expf(ph[i] - max);
        }
        for (uint32_t r = r0; r < r1; r++)
                memset(j->out + ((size_t)(s->row0 + r) * c->n_heads + g * group) * hd, 0, (size_t)group * hd * 4);
        for (uint32_t b = 0; b < blocks; b++) {
                const float *vals = block_rows(j, s->blocks[b], true, g, seen(longest, b), wide, &step);
                for (uint32_t r = r0; r < r1; r++)
                        for (uint32_t h = 0; h < group; h++) {
                                size_t x = (size_t)(r - r0) * group + h;
                                float *o = j->out + ((size_t)(s->row0 + r) * c->n_heads + g * group + h) * hd;
                                const float *ph = p + x * longest + b * MX_KV_BLOCK;
                                for (uint32_t i = 0; i < seen(s->pos0 + r + 1, b); i++)
                                        k->axpy(ph[i] / sum[x], vals + i * step, o, hd);
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
                if (!mx_cpu_scratch(cb, t, pairs * (1 + (size_t)longest) + (size_t)MX_KV_BLOCK * c->head_dim))
                        return -ENOMEM;
        attn_job j = {cb, layer, seqs, n_seqs, rows, q, out};
        mx_pool_run(cb->pool, tasks * c->n_kv_heads, attn_task, &j);
        return 0;
}
