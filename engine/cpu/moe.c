/* The sparse mixture of experts, as Hugging Face's MixtralSparseMoeBlock:
 * router logits, softmax over all experts in fp32, the top-k, their
 * weights renormalised to sum to 1; then expert by expert, in index order,
 * w2(silu(w1 x) * w3 x) times the weight, summed per token, and the sum
 * added to the residual. Tokens are grouped per expert so each chosen
 * expert's weights are streamed once per step; unchosen experts are never
 * touched. */
#include <math.h>
#include <string.h>

#include "cpu_backend.h"
#include "stream.h"
#include "mx_common.h"

typedef struct cpu_moe {
        size_t cap;        /* tokens the buffers hold */
        float *logits;     /* [cap][experts] */
        float *xe, *h1, *h3, *y, *sum;
        float *ys;         /* [cap][k][hidden]: each token's expert outputs, by expert index */
        float *ys_w;       /* [cap][k]: their routing weights */
        uint32_t *rows_pos;/* for the current expert's rows: where in ys */
        uint32_t *choice;  /* [cap][k] expert ids */
        float *weight;     /* [cap][k] */
        uint32_t *rows;    /* tokens routed to the current expert */
        float *prob;       /* [experts], for routing one token */
        uint32_t *pred;    /* [cap][k]: the next layer's likely experts */
        float *pred_w;
} cpu_moe;

void mx_cpu_moe_free(cpu_backend *cb) {
        cpu_moe *m = cb->moe;
        if (!m)
                return;
        free(m->logits), free(m->xe), free(m->h1), free(m->h3), free(m->y), free(m->sum);
        free(m->choice), free(m->weight), free(m->rows), free(m->prob);
        free(m->pred), free(m->pred_w), free(m->ys), free(m->ys_w), free(m->rows_pos);
        free(m);
        cb->moe = NULL;
}

static int reserve(cpu_backend *cb, uint32_t n) {
        const mx_config *c = &cb->base.model->cfg;
        if (!cb->moe && !(cb->moe = calloc(1, sizeof(cpu_moe))))
                return -ENOMEM;
        cpu_moe *m = cb->moe;
        if (!m->prob && !(m->prob = malloc(c->n_experts * sizeof(float))))
                return -ENOMEM;
        if (n <= m->cap)
                return 0;
        size_t h = c->hidden_size, f = c->intermediate_size, e = c->n_experts, k = c->n_experts_per_tok;
        float **fl[] = {&m->logits, &m->xe, &m->h1, &m->h3, &m->y, &m->sum, &m->weight, &m->pred_w,
                        &m->ys, &m->ys_w};
        size_t fl_n[] = {e, h, f, f, h, h, k, k, k * h, k};
        for (size_t i = 0; i < MX_ELEMENTSOF(fl); i++) {
                float *p = realloc(*fl[i], (size_t)n * fl_n[i] * sizeof(float));
                if (!p)
                        return -ENOMEM;
                *fl[i] = p;
        }
        uint32_t *choice = realloc(m->choice, (size_t)n * k * sizeof(uint32_t));
        if (choice)
                m->choice = choice;
        uint32_t *rows = choice ? realloc(m->rows, (size_t)n * sizeof(uint32_t)) : NULL;
        if (rows)
                m->rows = rows;
        uint32_t *pred = rows ? realloc(m->pred, (size_t)n * k * sizeof(uint32_t)) : NULL;
        if (pred)
                m->pred = pred;
        uint32_t *pos = pred ? realloc(m->rows_pos, (size_t)n * sizeof(uint32_t)) : NULL;
        if (pos)
                m->rows_pos = pos;
        if (!pos)
                return -ENOMEM;
        m->cap = n;
        return 0;
}

void mx_cpu_route(const float *logits, uint32_t experts, uint32_t k, float *p, uint32_t *choice, float *weight) {
        float max = -INFINITY, sum = 0, top = 0;
        for (uint32_t e = 0; e < experts; e++)
                max = logits[e] > max ? logits[e] : max;
        for (uint32_t e = 0; e < experts; e++)
                sum += p[e] = expf(logits[e] - max);
        for (uint32_t e = 0; e < experts; e++)
                p[e] /= sum;
        for (uint32_t i = 0; i < k; i++) {
                uint32_t best = 0;
                float bp = -1;
                for (uint32_t e = 0; e < experts; e++)
                        if (p[e] > bp)
                                best = e, bp = p[e];
                p[best] = -2; /* taken */
                choice[i] = best;
                weight[i] = bp;
                top += bp;
        }
        for (uint32_t i = 0; i < k; i++)
                weight[i] /= top;
}

static int run_expert(mx_backend *b, const mx_tensor *w1, const mx_tensor *w2, const mx_tensor *w3,
                      const float *x, uint32_t count) {
        cpu_moe *m = ((cpu_backend *)b)->moe;
        const mx_config *c = &b->model->cfg;
        size_t h = c->hidden_size, f = c->intermediate_size;
        for (uint32_t i = 0; i < count; i++)
                memcpy(m->xe + i * h, x + (size_t)m->rows[i] * h, h * sizeof(float));
        int r = mx_cpu_matmul(b, w1, m->xe, m->h1, count, false);
        if (r == 0)
                r = mx_cpu_matmul(b, w3, m->xe, m->h3, count, false);
        if (r < 0)
                return r;
        mx_cpu_silu_mul(m->h1, m->h3, (size_t)count * f);
        if ((r = mx_cpu_matmul(b, w2, m->h1, m->y, count, false)) < 0)
                return r;
        for (uint32_t i = 0; i < count; i++)
                memcpy(m->ys + (size_t)m->rows_pos[i] * h, m->y + i * h, h * sizeof(float));
        return 0;
}

/* Streaming: this layer's chosen experts start loading at once, and so do
 * the ones the next layer's router picks for the same hidden states (the
 * next layer's input differs only by this layer's output, so its router
 * mostly agrees), while this layer computes. */
static int prefetch(cpu_backend *cb, const mx_layer *l, const float *x, uint32_t n) {
        const mx_model *md = cb->base.model;
        const mx_config *c = &md->cfg;
        cpu_moe *m = cb->moe;
        uint32_t L = (uint32_t)(l - md->layers), E = c->n_experts, k = c->n_experts_per_tok;
        mx_expert_cache_next_layer(cb->experts);
        for (size_t i = 0; i < (size_t)n * k; i++)
                mx_expert_cache_want(cb->experts, L, m->choice[i]);
        if (L + 1 >= c->n_layers)
                return 0;
        int r = mx_cpu_matmul(&cb->base, md->layers[L + 1].router, x, m->logits, n, false);
        /* A guess, not the model's work: not counted as such. */
        cb->base.weight_bytes -= mx_cpu_weight_bytes(cb, md->layers[L + 1].router);
        cb->base.matmul_flops -= 2ull * E * c->hidden_size * n;
        for (uint32_t t = 0; r == 0 && t < n; t++) {
                mx_cpu_route(m->logits + (size_t)t * E, E, k, m->prob, m->pred + (size_t)t * k, m->pred_w + (size_t)t * k);
                for (uint32_t i = 0; i < k; i++)
                        mx_expert_cache_prefetch(cb->experts, L + 1, m->pred[(size_t)t * k + i]);
        }
        return r;
}

/* Expert e's weights, w1, w2, w3: the model's own (mapped or packed), or
 * from the cache into v (pinned until released). */
static int expert_weights(cpu_backend *cb, const mx_layer *l, uint32_t e, mx_expert_view *v, const mx_tensor *w[3]) {
        if (!cb->experts) {
                w[0] = l->w1[e], w[1] = l->w2[e], w[2] = l->w3[e];
                return 0;
        }
        w[0] = &v->w1, w[1] = &v->w2, w[2] = &v->w3;
        uint32_t L = (uint32_t)(l - cb->base.model->layers);
        return mx_expert_cache_acquire(cb->experts, L, e, v, &cb->err);
}

/* Expert e's rows: the tokens that chose it, their weights, and where its
 * output goes among each token's outputs (ordered by expert index); in
 * m->rows and m->rows_pos from index `at` on. */
static uint32_t rows_of(cpu_moe *m, uint32_t e, uint32_t n, uint32_t k, uint32_t at) {
        uint32_t count = 0;
        for (uint32_t t = 0; t < n; t++)
                for (uint32_t i = 0; i < k; i++)
                        if (m->choice[t * k + i] == e) {
                                uint32_t rank = 0;
                                for (uint32_t j = 0; j < k; j++)
                                        rank += m->choice[t * k + j] < e;
                                m->rows[at + count] = t;
                                m->ys_w[t * k + rank] = m->weight[t * k + i];
                                m->rows_pos[at + count++] = t * k + rank;
                        }
        return count;
}

static int one_expert(cpu_backend *cb, const mx_layer *l, uint32_t e, const float *x, uint32_t n) {
        cpu_moe *m = cb->moe;
        uint32_t count = rows_of(m, e, n, cb->base.model->cfg.n_experts_per_tok, 0);
        if (!count)
                return 0;
        mx_expert_view v;
        const mx_tensor *w[3];
        int r = expert_weights(cb, l, e, &v, w);
        if (r < 0)
                return r;
        r = run_expert(&cb->base, w[0], w[1], w[2], x, count);
        if (cb->experts)
                mx_expert_cache_release(cb->experts, (uint32_t)(l - cb->base.model->layers), e);
        return r;
}

/* Each token's expert outputs, weighted and summed in expert index order
 * (as Hugging Face's loop over experts does), whatever order they were
 * computed in, then added to the residual. */
static void combine(cpu_moe *m, uint32_t n, uint32_t k, size_t h, float *acc) {
        for (uint32_t t = 0; t < n; t++) {
                float *s = m->sum + (size_t)t * h;
                memset(s, 0, h * sizeof(float));
                for (uint32_t r = 0; r < k; r++) {
                        const float *y = m->ys + ((size_t)t * k + r) * h;
                        float w = m->ys_w[(size_t)t * k + r];
                        for (size_t j = 0; j < h; j++)
                                s[j] += y[j] * w;
                }
                for (size_t j = 0; j < h; j++)
                        acc[(size_t)t * h + j] += s[j];
        }
}

/* Few tokens (decode): the chosen experts' w1 and w3 with SwiGLU as one
 * parallel loop, then their w2 as another, instead of three loops per
 * expert; an expert every token chose reads x in place, so that x is
 * rounded once for all of them. Rows are stacked per expert in m's
 * buffers (reserved for n * k rows). */
static int experts_together(cpu_backend *cb, const mx_layer *l, const float *x, uint32_t n) {
        cpu_moe *m = cb->moe;
        const mx_config *c = &cb->base.model->cfg;
        size_t h = c->hidden_size, f = c->intermediate_size, row = 0;
        cpu_product up[MX_CPU_PRODUCTS_MAX] = {0}, down[MX_CPU_PRODUCTS_MAX] = {0};
        uint32_t count = 0;
        for (uint32_t e = 0; e < c->n_experts; e++) {
                uint32_t rows = rows_of(m, e, n, c->n_experts_per_tok, (uint32_t)row);
                if (!rows)
                        continue;
                const float *xe = x;
                if (rows < n) {
                        for (uint32_t i = 0; i < rows; i++)
                                memcpy(m->xe + (row + i) * h, x + (size_t)m->rows[row + i] * h, h * sizeof(float));
                        xe = m->xe + row * h;
                }
                up[count] = (cpu_product){.w = l->w1[e], .w3 = l->w3[e], .x = xe, .out = m->h1 + row * f,
                                          .tmp = m->h3 + row * f, .n = rows};
                down[count++] = (cpu_product){.w = l->w2[e], .x = m->h1 + row * f, .out = m->y + row * h, .n = rows};
                row += rows;
        }
        int r = mx_cpu_products(&cb->base, up, count);
        if (r == 0)
                r = mx_cpu_products(&cb->base, down, count);
        for (size_t i = 0; r == 0 && i < row; i++)
                memcpy(m->ys + (size_t)m->rows_pos[i] * h, m->y + i * h, h * sizeof(float));
        return r;
}

int mx_cpu_moe(mx_backend *b, const mx_layer *l, const float *x, float *acc, uint32_t n) {
        cpu_backend *cb = (cpu_backend *)b;
        const mx_config *c = &b->model->cfg;
        uint32_t E = c->n_experts, k = c->n_experts_per_tok;
        int r = reserve(cb, n);
        if (r < 0)
                return r;
        cpu_moe *m = cb->moe;
        if ((r = mx_cpu_matmul(b, l->router, x, m->logits, n, false)) < 0)
                return r;
        for (uint32_t t = 0; t < n; t++)
                mx_cpu_route(m->logits + (size_t)t * E, E, k, m->prob, m->choice + (size_t)t * k,
                      m->weight + (size_t)t * k);
        if (!cb->experts && (size_t)n * k <= MX_CPU_PRODUCTS_MAX) {
                if ((r = reserve(cb, n * k)) < 0 || (r = experts_together(cb, l, x, n)) < 0)
                        return r;
                combine(m, n, k, c->hidden_size, acc);
                return 0;
        }
        if (cb->experts && (r = prefetch(cb, l, x, n)) < 0)
                return r;
        /* Streaming: the experts already in memory first, so that the
         * others' reads go on while they compute. */
        uint32_t L = (uint32_t)(l - b->model->layers);
        bool done[64] = {false};
        for (uint32_t e = 0; cb->experts && E <= 64 && e < E; e++)
                if (mx_expert_cache_ready(cb->experts, L, e)) {
                        if ((r = one_expert(cb, l, e, x, n)) < 0)
                                return r;
                        done[e] = true;
                }
        for (uint32_t e = 0; e < E; e++)
                if (!(E <= 64 && done[e]) && (r = one_expert(cb, l, e, x, n)) < 0)
                        return r;
        combine(m, n, k, c->hidden_size, acc);
        return 0;
}
