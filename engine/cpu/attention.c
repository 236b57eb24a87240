/* Causal grouped-query attention over each sequence's blocks of the KV
 * pool. One task per (token, KV head): the query heads sharing that KV head
 * read its keys and values together, block by block. Scores are
 * q.k / sqrt(head_dim) and a softmax in fp32 with the maximum subtracted,
 * as Hugging Face computes them. A bf16 pool's rows are widened to fp32
 * (exactly) before the products, so both pool types run the same fp32
 * arithmetic; what a step writes is rounded to the pool's type first and
 * read back from it, so a token's K and V are the same whichever step
 * wrote them. */
#include <errno.h>
#include <math.h>
#include <string.h>

#include "cpu_backend.h"
#include "quant.h"

typedef struct attn_job {
        cpu_backend *cb;
        uint32_t layer;
        const mx_attn_seq *seqs;
        size_t n_seqs;
        const float *q;
        float *out;
} attn_job;

static const mx_attn_seq *seq_of_row(const attn_job *j, uint32_t row) {
        for (size_t s = 0; s < j->n_seqs; s++)
                if (row < j->seqs[s].row0 + j->seqs[s].n)
                        return &j->seqs[s];
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

static void attn_task(void *arg, uint32_t task, uint32_t thread) {
        const attn_job *j = arg;
        const mx_config *c = &j->cb->base.model->cfg;
        const mx_kernels *k = j->cb->k;
        uint32_t hd = c->head_dim, kvh = c->n_kv_heads, group = c->n_heads / kvh;
        uint32_t row = task / kvh, g = task % kvh;
        const mx_attn_seq *s = seq_of_row(j, row);
        uint32_t len = s->pos0 + (row - s->row0) + 1, blocks = (len + MX_KV_BLOCK - 1) / MX_KV_BLOCK;
        /* scratch: each head's sum, scores [group][len], one block's rows widened */
        float *sum = j->cb->scratch[thread].p, *p = sum + group, *wide = p + (size_t)group * len;
        float scale = (float)sqrt((double)hd);
        const float *qh = j->q + (size_t)row * c->n_heads * hd + (size_t)g * group * hd;
        float *o = j->out + (size_t)row * c->n_heads * hd + (size_t)g * group * hd;
        size_t step;

        for (uint32_t b = 0; b < blocks; b++) {
                uint32_t i0 = b * MX_KV_BLOCK, n = len - i0 < MX_KV_BLOCK ? len - i0 : MX_KV_BLOCK;
                const float *keys = block_rows(j, s->blocks[b], false, g, n, wide, &step);
                for (uint32_t h = 0; h < group; h++)
                        for (uint32_t i = 0; i < n; i++)
                                p[(size_t)h * len + i0 + i] = k->dot(qh + (size_t)h * hd, keys + i * step, hd) / scale;
        }
        for (uint32_t h = 0; h < group; h++) {
                float *ph = p + (size_t)h * len, max = -INFINITY;
                for (uint32_t i = 0; i < len; i++)
                        max = ph[i] > max ? ph[i] : max;
                sum[h] = 0;
                for (uint32_t i = 0; i < len; i++)
                        sum[h] += ph[i] = expf(ph[i] - max);
                memset(o + (size_t)h * hd, 0, hd * sizeof(float));
        }
        for (uint32_t b = 0; b < blocks; b++) {
                uint32_t i0 = b * MX_KV_BLOCK, n = len - i0 < MX_KV_BLOCK ? len - i0 : MX_KV_BLOCK;
                const float *vals = block_rows(j, s->blocks[b], true, g, n, wide, &step);
                for (uint32_t h = 0; h < group; h++)
                        for (uint32_t i = 0; i < n; i++)
                                k->axpy(p[(size_t)h * len + i0 + i] / sum[h], vals + i * step, o + (size_t)h * hd, hd);
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
        size_t group = c->n_heads / c->n_kv_heads;
        for (uint32_t t = 0; t < cb->threads; t++)
                if (!mx_cpu_scratch(cb, t, group * (1 + (size_t)longest) + (size_t)MX_KV_BLOCK * c->head_dim))
                        return -ENOMEM;
        attn_job j = {cb, layer, seqs, n_seqs, q, out};
        mx_pool_run(cb->pool, tokens * c->n_kv_heads, attn_task, &j);
        return 0;
}
