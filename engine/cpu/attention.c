/* Causal grouped-query attention over each sequence's KV cache. One task
 * per (token, KV head): the query heads sharing that KV head read its keys
 * and values together. Scores are q.k / sqrt(head_dim) and a softmax in
 * fp32 with the maximum subtracted, as Hugging Face computes them. */
#include <errno.h>
#include <math.h>
#include <string.h>

#include "cpu_backend.h"

typedef struct attn_job {
        cpu_backend *cb;
        uint32_t layer;
        const mx_attn_seq *seqs;
        size_t n_seqs;
        uint32_t tokens;
        const float *q;
        float *out;
} attn_job;

static const mx_attn_seq *seq_of_row(const attn_job *j, uint32_t row) {
        for (size_t s = 0; s < j->n_seqs; s++)
                if (row < j->seqs[s].row0 + j->seqs[s].n)
                        return &j->seqs[s];
        return NULL;
}

static void attn_task(void *arg, uint32_t task, uint32_t thread) {
        const attn_job *j = arg;
        const mx_config *c = &j->cb->base.model->cfg;
        const mx_kernels *k = j->cb->k;
        uint32_t hd = c->head_dim, kvh = c->n_kv_heads, group = c->n_heads / kvh;
        uint32_t row = task / kvh, g = task % kvh;
        const mx_attn_seq *s = seq_of_row(j, row);
        uint32_t pos = s->pos0 + (row - s->row0), len = pos + 1;
        const float *keys = mx_kv_keys(s->kv, j->layer), *vals = mx_kv_values(s->kv, j->layer);
        float *p = j->cb->scratch[thread].p;
        float scale = (float)sqrt((double)hd);
        size_t stride = (size_t)kvh * hd;

        for (uint32_t h = g * group; h < (g + 1) * group; h++) {
                const float *qh = j->q + ((size_t)row * c->n_heads + h) * hd;
                float *o = j->out + ((size_t)row * c->n_heads + h) * hd, max = -INFINITY, sum = 0;
                for (uint32_t i = 0; i < len; i++) {
                        p[i] = k->dot(qh, keys + i * stride + (size_t)g * hd, hd) / scale;
                        max = p[i] > max ? p[i] : max;
                }
                for (uint32_t i = 0; i < len; i++)
                        sum += p[i] = expf(p[i] - max);
                memset(o, 0, hd * sizeof(float));
                for (uint32_t i = 0; i < len; i++)
                        k->axpy(p[i] / sum, vals + i * stride + (size_t)g * hd, o, hd);
        }
}

int mx_cpu_attention(mx_backend *b, uint32_t layer, const mx_attn_seq *seqs, size_t n_seqs,
                     const float *q, const float *k, const float *v, float *out) {
        cpu_backend *cb = (cpu_backend *)b;
        const mx_config *c = &b->model->cfg;
        size_t stride = (size_t)c->n_kv_heads * c->head_dim;
        uint32_t tokens = 0, longest = 0;
        for (size_t s = 0; s < n_seqs; s++) {
                const mx_attn_seq *a = &seqs[s];
                memcpy(mx_kv_keys(a->kv, layer) + a->pos0 * stride, k + a->row0 * stride,
                       a->n * stride * sizeof(float));
                memcpy(mx_kv_values(a->kv, layer) + a->pos0 * stride, v + a->row0 * stride,
                       a->n * stride * sizeof(float));
                tokens += a->n;
                longest = a->pos0 + a->n > longest ? a->pos0 + a->n : longest;
                /* each token reads keys and values up to its position */
                b->kv_bytes += 2 * stride * sizeof(float) *
                               ((uint64_t)a->n * a->pos0 + (uint64_t)a->n * (a->n + 1) / 2);
        }
        for (uint32_t t = 0; t < cb->threads; t++)
                if (!mx_cpu_scratch(cb, t, longest))
                        return -ENOMEM;
        attn_job j = {cb, layer, seqs, n_seqs, tokens, q, out};
        mx_pool_run(cb->pool, tokens * c->n_kv_heads, attn_task, &j);
        return 0;
}
