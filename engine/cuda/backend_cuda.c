/* The CUDA backend: weights resident on the GPU (weights_cuda.c), fp32
 * activations and the KV pool in device memory, every operation a kernel or
 * cuBLAS call on one stream (kernels/). The host enqueues a whole step and
 * waits only where results come back (logits) or where cuBLAS needs the
 * experts' token counts (prefill: more than MXK_PADDED_MAX tokens). */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "cuda_backend.h"
#include "mx_common.h"

_Static_assert(MXK_KV_BLOCK == MX_KV_BLOCK, "the kernels' KV block is the engine's");

static cuda_backend *cuda(mx_backend *b) {
        return (cuda_backend *)b;
}

/* MX_CUDA_PROFILE=1: GPU time from here to the next mark is `label`'s. */
static void prof(cuda_backend *cb, const char *label, uint32_t n) {
        if (cb->profiling)
                mxk_prof_mark(cb->ctx, label, n);
}

static uint32_t kv_stride(const mx_config *c) {
        return c->n_kv_heads * c->head_dim;
}

/* ---- memory ------------------------------------------------------------------ */

/* cudaMalloc; when it fails while experts stream, their slots make room
 * (fewer slots: slower, but the request goes on). */
static int dev_malloc(cuda_backend *cb, void **p, size_t bytes) {
        if (mxk_malloc(cb->ctx, p, bytes) == 0)
                return 0;
        if (!cb->stream || mx_cuda_stream_make_room(cb, bytes) < 0)
                return -ENOMEM;
        return mxk_malloc(cb->ctx, p, bytes);
}

static float *cuda_alloc(mx_backend *b, size_t n) {
        void *p = NULL;
        size_t bytes;
        if (!mx_mul_size(n ? n : 1, sizeof(float), &bytes) || dev_malloc(cuda(b), &p, bytes) < 0)
                return NULL;
        cuda(b)->epoch++;
        return p;
}

static void cuda_release(mx_backend *b, float *p) {
        cuda(b)->epoch++;
        mxk_free(cuda(b)->ctx, p);
}

static void cuda_download(mx_backend *b, float *dst, const float *src, size_t n) {
        mx_cuda_graph_finish(cuda(b));
        mxk_download(cuda(b)->ctx, dst, src, n * sizeof(float));
}

/* The free memory less 1 GiB for the activations and products; auto, half
 * of it. Where experts stream by themselves, the slots took the memory
 * after stream_budget kept the pool's share aside: what it measured then
 * is the free memory, and the share the auto size. */
static void cuda_kv_memory(mx_backend *b, uint64_t *free, uint64_t *auto_bytes) {
        cuda_backend *cb = cuda(b);
        size_t free_b = 0, total_b = 0;
        mxk_free_memory(cb->ctx, &free_b, &total_b);
        const uint64_t work = (uint64_t)1 << 30;
        *free = cb->kv_aside ? cb->kv_base : free_b > work ? free_b - work : 0;
        *auto_bytes = cb->kv_aside ? cb->kv_aside : *free / 2;
}

static int cuda_kv_init(mx_backend *b, mx_kv_type t, uint32_t blocks) {
        cuda_backend *cb = cuda(b);
        uint64_t bytes;
        if (!mx_mul_u64(blocks, mx_kv_block_bytes(&b->model->cfg, t), &bytes) || bytes > SIZE_MAX)
                return -ENOMEM;
        void *p = NULL;
        if (dev_malloc(cb, &p, (size_t)bytes) < 0)
                return -ENOMEM;
        mxk_free(cb->ctx, cb->kv.pool);
        cb->epoch++;
        cb->kv = (mxk_kv){.pool = p, .layers = b->model->cfg.n_layers, .stride = kv_stride(&b->model->cfg),
                          .bf16 = t == MX_KV_BF16};
        b->kv_type = t;
        return 0;
}

/* On the compute stream: ordered before the next step's writes. */
static void cuda_kv_copy(mx_backend *b, uint32_t dst, uint32_t src) {
        cuda_backend *cb = cuda(b);
        size_t bytes = mx_kv_block_bytes(&b->model->cfg, b->kv_type);
        mxk_bind_thread(cb->ctx);
        mxk_copy(cb->ctx, (char *)cb->kv.pool + dst * bytes, (char *)cb->kv.pool + src * bytes, bytes);
}

/* Frees *p and allocates bytes when *cap_bytes is short. */
static int grow(cuda_backend *cb, void **p, size_t *cap_bytes, size_t bytes) {
        mxk_ctx *c = cb->ctx;
        if (bytes <= *cap_bytes && *p)
                return 0;
        cb->epoch++;
        mxk_free(c, *p);
        *p = NULL;
        *cap_bytes = 0;
        if (dev_malloc(cb, p, bytes) < 0)
                return -ENOMEM;
        *cap_bytes = bytes;
        return 0;
}

/* ---- the step ------------------------------------------------------------------ */

static int reserve_step(cuda_backend *cb, uint32_t T, uint32_t L, uint32_t tables) {
        const mx_config *c = &cb->base.model->cfg;
        mxk_ctx *ctx = cb->ctx;
        if (T > cb->step_cap || L > cb->logit_cap)
                cb->epoch++;
        if (T > cb->step_cap) {
                void **bufs[] = {(void **)&cb->d_tokens, (void **)&cb->d_pos, (void **)&cb->d_rows,
                                 (void **)&cb->d_cos, (void **)&cb->d_sin};
                size_t sizes[] = {4, 4, sizeof(mxk_row), 2 * c->head_dim, 2 * c->head_dim};
                for (size_t i = 0; i < MX_ELEMENTSOF(bufs); i++) {
                        mxk_free(ctx, *bufs[i]);
                        *bufs[i] = NULL;
                        if (dev_malloc(cb, bufs[i], (size_t)T * sizes[i]) < 0)
                                return -ENOMEM;
                }
                cb->step_cap = T;
        }
        if (L > cb->logit_cap) {
                mxk_free(ctx, cb->d_logit_rows);
                cb->d_logit_rows = NULL;
                if (dev_malloc(cb, (void **)&cb->d_logit_rows, (size_t)L * 4) < 0)
                        return -ENOMEM;
                cb->logit_cap = L;
        }
        if (tables > cb->tables_cap) {
                cb->epoch++;
                mxk_free(ctx, cb->d_tables);
                cb->d_tables = NULL, cb->tables_cap = 0;
                if (dev_malloc(cb, (void **)&cb->d_tables, (size_t)tables * 4) < 0)
                        return -ENOMEM;
                cb->tables_cap = tables;
                cb->kv.tables = cb->d_tables;
        }
        size_t widest = c->hidden_size > c->n_heads * c->head_dim ? c->hidden_size : c->n_heads * c->head_dim;
        /* Two bf16 terms per activation (gemm.cu). */
        if (grow(cb, (void **)&cb->bf16_scratch, &cb->bf16_cap, 2 * (size_t)T * widest * 2) < 0)
                return -ENOMEM;
        size_t host = (size_t)T * (4 + 4 + sizeof(mxk_row)) + (size_t)L * 4 + (size_t)tables * 4;
        /* Pinned memory is slow to free (and see mxk_host_free): room for a
         * full context at once, from the start (its block table too). */
        size_t most = (size_t)(c->max_position_embeddings > 4096 ? c->max_position_embeddings : 4096) *
                      (8 + sizeof(mxk_row) + 4 + 4);
        host = host > most ? host : most;
        if (host > cb->h_step_cap) {
                cb->epoch++;
                mxk_host_free(cb->h_step);
                mxk_host_free(cb->h_sample);
                cb->h_step_cap = 0;
                if (mxk_host_alloc(&cb->h_step, host) < 0)
                        return -ENOMEM;
                cb->h_step_cap = host;
        }
        return 0;
}

static int reserve_moe(cuda_backend *cb, uint32_t n) {
        const mx_config *c = &cb->base.model->cfg;
        mxk_ctx *ctx = cb->ctx;
        if (n <= cb->moe_cap)
                return 0;
        cb->epoch++;
        mxk_moe_buffers *m = &cb->moe;
        void **bufs[] = {(void **)&m->choice, (void **)&m->weight, (void **)&m->list_tok,
                         (void **)&m->list_w, (void **)&m->slot_of, (void **)&m->counts,
                         (void **)&m->act, (void **)&m->y, (void **)&m->xe,
                         (void **)&m->act16, (void **)&m->h13, (void **)&m->ytmp,
                         (void **)&cb->router_logits};
        size_t nk = (size_t)n * c->n_experts_per_tok, H = c->hidden_size, F = c->intermediate_size;
        size_t few = (size_t)MXK_EXPERT_GEMV_MAX * c->n_experts_per_tok;
        /* Batched decode gives every expert n places (MXK_PADDED_MAX). */
        size_t r = n <= MXK_PADDED_MAX ? (size_t)c->n_experts * n : n, r2 = 2 * r;
        size_t lists = nk > r ? nk : r;
        size_t sizes[] = {nk * 4, nk * 4, lists * 4, lists * 4, nk * 4, (3 * (size_t)c->n_experts + 1) * 4,
                          (few > n ? few : n) * F * 4, lists * H * 4, r2 * H * 2, r2 * F * 2,
                          r2 * 2 * F * 4, r2 * H * 4, (size_t)n * c->n_experts * 4};
        for (size_t i = 0; i < MX_ELEMENTSOF(bufs); i++) {
                mxk_free(ctx, *bufs[i]);
                *bufs[i] = NULL;
        }
        cb->moe_cap = 0;
        for (size_t i = 0; i < MX_ELEMENTSOF(bufs); i++)
                if (dev_malloc(cb, bufs[i], sizes[i]) < 0)
                        return -ENOMEM;
        cb->moe_cap = n;
        return 0;
}

/* Uploads tokens, positions, each row's KV cache and the logit rows, and
 * makes the rotary table once for all layers. */
static int cuda_step_begin(mx_backend *b, const mx_step *s) {
        cuda_backend *cb = cuda(b);
        const mx_config *c = &b->model->cfg;
        uint32_t T = s->n_tokens, L = s->n_logit_rows;
        /* The daemon steps on another thread than the one that opened us. */
        mxk_bind_thread(cb->ctx);
        /* The last step's upload must have left the pinned buffer before it
         * is rewritten or replaced. */
        mxk_wait_mark(cb->ctx, MXK_MARK_STEP_INPUT);
        if (cb->stream)
                mx_cuda_stream_pressure(cb);
        uint32_t tables = mx_cuda_kv_entries(s->seqs, s->n_seqs);
        int r = reserve_step(cb, T, L, tables);
        if (r == 0)
                r = reserve_moe(cb, T);
        if (r < 0)
                return r;
        uint8_t *h = cb->h_step;
        int32_t *tokens = (int32_t *)h;
        uint32_t *pos = (uint32_t *)(h + (size_t)T * 4);
        mxk_row *rows = (mxk_row *)(h + (size_t)T * 8);
        uint32_t *logit_rows = (uint32_t *)(h + (size_t)T * (8 + sizeof(mxk_row)));
        uint32_t *table = logit_rows + L;
        memcpy(tokens, s->tokens, (size_t)T * 4);
        memcpy(pos, s->pos, (size_t)T * 4);
        memcpy(logit_rows, s->logit_rows, (size_t)L * 4);
        mx_cuda_kv_layout(s->seqs, s->n_seqs, rows, table);
        uint32_t longest = 0;
        for (size_t i = 0; i < s->n_seqs; i++)
                longest = s->seqs[i].pos0 + s->seqs[i].n > longest ? s->seqs[i].pos0 + s->seqs[i].n : longest;
        cb->T = T;
        cb->longest = longest;
        size_t att = mxk_attention_scratch(T, c->n_heads, c->head_dim, c->n_kv_heads, longest);
        if (grow(cb, (void **)&cb->att_scratch, &cb->att_cap, att * sizeof(float)) < 0)
                return -ENOMEM;
        /* cuBLAS outputs (two terms) of the step's widest product: made
         * now, since a graph capture cannot allocate. */
        size_t qh = (size_t)c->n_heads * c->head_dim > c->hidden_size ? (size_t)c->n_heads * c->head_dim
                                                                          : c->hidden_size;
        size_t tmp = 2 * ((size_t)T * qh > (size_t)L * c->vocab_size ? (size_t)T * qh : (size_t)L * c->vocab_size);
        if (T > MXK_GEMV_MAX && mxk_reserve_tmp(cb->ctx, tmp) < 0)
                return -ENOMEM;
        mx_cuda_graph_begin(cb, T, L, mxk_attention_slices(T, c->n_kv_heads, longest), tables);
        if (mx_cuda_replaying(cb))
                return 0;
        prof(cb, "step input", T);
        mxk_upload(cb->ctx, cb->d_tokens, tokens, (size_t)T * 4);
        mxk_upload(cb->ctx, cb->d_pos, pos, (size_t)T * 4);
        mxk_upload(cb->ctx, cb->d_rows, rows, (size_t)T * sizeof(mxk_row));
        mxk_upload(cb->ctx, cb->d_logit_rows, logit_rows, (size_t)L * 4);
        mxk_upload(cb->ctx, cb->d_tables, table, (size_t)tables * 4);
        if (cb->mode == RUN_DIRECT) /* (a graph's step ends with a synchronisation) */
                mxk_mark(cb->ctx, MXK_MARK_STEP_INPUT);
        mxk_rope_table(cb->ctx, cb->d_pos, T, cb->inv_freq, c->head_dim / 2, cb->d_cos, cb->d_sin);
        return 0;
}

static int cuda_step_end(mx_backend *b, mx_error *err) {
        cuda_backend *cb = cuda(b);
        char why[256] = "";
        if (cb->mode != RUN_DIRECT)
                mx_cuda_graph_finish(cb);
        prof(cb, "(between steps)", cb->T);
        int r = mxk_sync(cb->ctx, why, sizeof(why));
        if (cb->profiling)
                mxk_prof_collect(cb->ctx);
        if (r < 0)
                return mx_error_set(err, r, "CUDA: %s", why);
        if (cb->err.code) { /* an expert's read failed: this step's requests fail, the next may not */
                r = mx_error_set(err, cb->err.code, "%s", cb->err.msg);
                cb->err = (mx_error){0};
        }
        return r;
}

static int cuda_set_expert_memory(mx_backend *b, uint64_t budget, mx_error *err) {
        cuda_backend *cb = cuda(b);
        if (!cb->stream)
                return budget ? mx_error_set(err, -EOPNOTSUPP, "every expert is on the GPU: start with an expert "
                                             "budget to stream them") : 0;
        mxk_bind_thread(cb->ctx); /* (the daemon calls from its engine thread) */
        return mx_cuda_stream_set(cb, budget, err);
}

static int cuda_set_host_cache(mx_backend *b, uint64_t bytes, mx_error *err) {
        cuda_backend *cb = cuda(b);
        if (!cb->stream)
                return mx_error_set(err, -EOPNOTSUPP, "every expert is on the GPU: there is no host cache");
        mxk_bind_thread(cb->ctx);
        return mx_cuda_stream_set_host(cb, bytes, err);
}

static void cuda_expert_stats(mx_backend *b, mx_expert_stats *s) {
        if (cuda(b)->stream)
                mx_cuda_stream_stats(cuda(b), s);
        else
                *s = (mx_expert_stats){0};
}

static void cuda_sync_counters(mx_backend *b) {
        cuda_backend *cb = cuda(b);
        unsigned long long experts = 0;
        if (mxk_download(cb->ctx, &experts, cb->d_experts_read, sizeof(experts)) == 0)
                b->weight_bytes = cb->dense_bytes + experts * cb->expert_bytes;
}

/* ---- operations ------------------------------------------------------------------ */

static void cuda_embed(mx_backend *b, const mx_tensor *table, const int32_t *tokens, uint32_t n,
                       float *out) {
        cuda_backend *cb = cuda(b);
        uint32_t h = (uint32_t)table->shape[1];
        cb->dense_bytes += (uint64_t)n * h * 2;
        if (mx_cuda_replaying(cb))
                return;
        prof(cb, "embed", n);
        mxk_embed(cb->ctx, mx_cuda_dev(cb, table), MXK_BF16, h, cb->d_tokens, n, out);
}

static void cuda_rmsnorm(mx_backend *b, const mx_tensor *w, float eps, const float *x, float *out,
                         uint32_t n) {
        cuda_backend *cb = cuda(b);
        if (mx_cuda_replaying(cb))
                return;
        prof(cb, "rmsnorm", n);
        mxk_rmsnorm(cb->ctx, mx_cuda_dev(cb, w), eps, x, out, n, (uint32_t)w->shape[0]);
}

static int matmul(cuda_backend *cb, const mx_tensor *w, const float *x, float *out, uint32_t n,
                  bool accumulate) {
        uint32_t rows = (uint32_t)w->shape[0], cols = (uint32_t)w->shape[1];
        cb->dense_bytes += (uint64_t)rows * cols * 2;
        cb->base.matmul_flops += 2ull * rows * cols * n;
        if (mx_cuda_replaying(cb))
                return 0;
        prof(cb, w == cb->base.model->lm_head ? "lm_head" : rows == cb->base.model->cfg.n_experts ? "router" : "dense matmul", n);
        mxk_matmul(cb->ctx, mx_cuda_dev(cb, w), rows, cols, x, out, n, accumulate, cb->bf16_scratch);
        return mxk_status(cb->ctx, NULL, 0);
}

static int cuda_matmul(mx_backend *b, const mx_tensor *w, const float *x, float *out, uint32_t n,
                       bool accumulate) {
        return matmul(cuda(b), w, x, out, n, accumulate);
}

static int cuda_qkv(mx_backend *b, const mx_layer *l, const float *x, float *q, float *k, float *v,
                    uint32_t n) {
        cuda_backend *cb = cuda(b);
        uint32_t qr = (uint32_t)l->wq->shape[0], kr = (uint32_t)l->wk->shape[0], cols = (uint32_t)l->wq->shape[1];
        cb->dense_bytes += (uint64_t)(qr + 2 * kr) * cols * 2;
        b->matmul_flops += 2ull * (qr + 2 * kr) * cols * n;
        if (mx_cuda_replaying(cb))
                return 0;
        prof(cb, "qkv", n);
        mxk_qkv(cb->ctx, mx_cuda_dev(cb, l->wq), qr, kr, cols, x, q, k, v, n, cb->bf16_scratch);
        return mxk_status(cb->ctx, NULL, 0);
}

static void cuda_rope(mx_backend *b, float *q, float *k, const uint32_t *pos, uint32_t n) {
        cuda_backend *cb = cuda(b);
        const mx_config *c = &b->model->cfg;
        if (mx_cuda_replaying(cb))
                return;
        prof(cb, "rope", n);
        mxk_rope(cb->ctx, q, k, cb->d_cos, cb->d_sin, n, c->n_heads, c->n_kv_heads, c->head_dim);
}

static int cuda_attention(mx_backend *b, uint32_t layer, const mx_attn_seq *seqs, size_t n_seqs,
                          const float *q, const float *k, const float *v, float *out) {
        cuda_backend *cb = cuda(b);
        const mx_config *c = &b->model->cfg;
        uint32_t stride = kv_stride(c);
        for (size_t s = 0; s < n_seqs; s++) {
                const mx_attn_seq *a = &seqs[s];
                b->kv_bytes += 2ull * stride * mx_kv_elem_bytes(b->kv_type) *
                               ((uint64_t)a->n * a->pos0 + (uint64_t)a->n * (a->n + 1) / 2);
        }
        if (mx_cuda_replaying(cb))
                return 0;
        prof(cb, "attention", cb->T);
        mxk_kv_append(cb->ctx, &cb->kv, cb->d_rows, cb->T, layer, k, v);
        mxk_attention(cb->ctx, &cb->kv, cb->d_rows, cb->T, layer, q, out, c->n_heads, c->n_kv_heads, c->head_dim,
                      cb->longest, cb->att_scratch);
        return mxk_status(cb->ctx, NULL, 0);
}

static int cuda_moe(mx_backend *b, const mx_layer *l, const float *x, float *acc, uint32_t n) {
        cuda_backend *cb = cuda(b);
        const mx_config *c = &b->model->cfg;
        uint32_t E = c->n_experts, k = c->n_experts_per_tok, H = c->hidden_size, F = c->intermediate_size;
        size_t L = (size_t)(l - b->model->layers);
        int r = matmul(cb, l->router, x, cb->router_logits, n, false);
        b->matmul_flops += 2ull * n * k * 3 * H * F;
        if (r < 0 || mx_cuda_replaying(cb))
                return r;
        if (cb->stream) {
                prof(cb, "experts (streamed)", n);
                return mx_cuda_stream_moe(cb, (uint32_t)L, x, acc, n);
        }
        uint16_t **d = cb->d_experts + L * 2 * E, **h = cb->h_experts + L * 2 * E;
        prof(cb, "experts", n);
        r = mxk_moe(cb->ctx, &cb->moe, (const uint16_t *const *)d, (const uint16_t *const *)(d + E),
                    (const uint16_t *const *)h, (const uint16_t *const *)(h + E), cb->router_logits, x,
                    acc, n, E, k, H, F);
        return r;
}

static void cuda_gather(mx_backend *b, const float *src, uint64_t cols, const uint32_t *rows,
                        uint32_t n, float *dst) {
        cuda_backend *cb = cuda(b);
        if (mx_cuda_replaying(cb))
                return;
        prof(cb, "gather", n);
        mxk_gather(cb->ctx, src, (uint32_t)cols, cb->d_logit_rows, n, dst);
}

/* Recent tokens a request's penalty looks at. */
static void recent(const mx_sample_req *q, const int32_t **h, size_t *n) {
        size_t from = 0, last = q->p->repeat_last_n;
        if (q->p->repeat_penalty == 1.0f) {
                *h = NULL, *n = 0;
                return;
        }
        if (last && q->n_history > last)
                from = q->n_history - last;
        *h = q->history + from;
        *n = q->n_history - from;
}

static int cuda_sample(mx_backend *b, const float *logits, const mx_sample_req *reqs, size_t n,
                       int32_t *ids) {
        cuda_backend *cb = cuda(b);
        uint32_t V = b->model->cfg.vocab_size;
        mxk_checkpoint(cb->ctx, "the step before sampling");
        mx_cuda_graph_finish(cb); /* the step's graph, when no logits were read */
        size_t hist = 0;
        for (size_t i = 0; i < n; i++) {
                const int32_t *h;
                size_t k;
                recent(&reqs[i], &h, &k);
                hist += k;
        }
        size_t bytes = n * sizeof(mxk_sample_req) + hist * sizeof(int32_t);
        size_t room = bytes > ((size_t)1 << 20) ? 2 * bytes : (size_t)1 << 20;
        if (bytes > cb->h_sample_cap) {
                mxk_host_free(cb->h_sample);
                cb->h_sample_cap = 0;
                if (mxk_host_alloc(&cb->h_sample, room) < 0)
                        return -ENOMEM;
                cb->h_sample_cap = room;
        }
        if (grow(cb, &cb->d_sample, &cb->d_sample_cap, bytes) < 0 ||
            grow(cb, (void **)&cb->d_sample_work, &cb->d_work_cap, n * 2 * (size_t)V * sizeof(float)) < 0 ||
            grow(cb, (void **)&cb->d_ids, &cb->d_ids_cap, n * sizeof(int32_t)) < 0)
                return -ENOMEM;
        mxk_sample_req *q = cb->h_sample;
        int32_t *h_hist = (int32_t *)(q + n);
        size_t off = 0;
        for (size_t i = 0; i < n; i++) {
                const mx_sample_req *r = &reqs[i];
                const int32_t *h;
                size_t k;
                recent(r, &h, &k);
                memcpy(h_hist + off, h, k * sizeof(int32_t));
                q[i] = (mxk_sample_req){r->row, r->p->top_k, (uint32_t)off, (uint32_t)k, r->p->temperature,
                                        r->p->top_p, r->p->min_p, r->p->repeat_penalty, r->u};
                off += k;
        }
        prof(cb, "sample", (uint32_t)n);
        mxk_upload(cb->ctx, cb->d_sample, cb->h_sample, bytes);
        mxk_sample(cb->ctx, logits, V, cb->d_sample, (uint32_t)n, (const int32_t *)((mxk_sample_req *)cb->d_sample + n),
                   cb->d_sample_work, cb->d_ids);
        return mxk_download(cb->ctx, ids, cb->d_ids, n * sizeof(int32_t));
}

static const char *cuda_describe(mx_backend *b) {
        return cuda(b)->desc;
}

static void cuda_destroy(mx_backend *b) {
        cuda_backend *cb = cuda(b);
        if (!cb)
                return;
        if (cb->ctx) {
                mxk_sync(cb->ctx, NULL, 0);
                mx_cuda_stream_free(cb);
                mx_cuda_graphs_free(cb);
                mx_cuda_weights_free(cb);
                void *bufs[] = {cb->d_tokens, cb->d_pos, cb->d_rows, cb->d_cos, cb->d_sin,
                                cb->d_logit_rows, cb->bf16_scratch, cb->att_scratch, cb->router_logits,
                                cb->moe.choice, cb->moe.weight, cb->moe.list_tok, cb->moe.list_w,
                                cb->moe.slot_of, cb->moe.counts, cb->moe.act, cb->moe.y, cb->moe.xe,
                                cb->moe.act16, cb->moe.h13, cb->moe.ytmp, cb->d_experts_read, cb->inv_freq,
                                cb->d_sample, cb->d_sample_work, cb->d_ids, cb->kv.pool, cb->d_tables};
                for (size_t i = 0; i < MX_ELEMENTSOF(bufs); i++)
                        mxk_free(cb->ctx, bufs[i]);
                mxk_host_free(cb->h_step);
                mxk_host_free(cb->h_sample);
                mxk_ctx_free(cb->ctx);
        }
        free(cb);
}

static const mx_backend_ops cuda_ops = {
        .name = "cuda",
        .destroy = cuda_destroy,
        .describe = cuda_describe,
        .alloc = cuda_alloc,
        .release = cuda_release,
        .download = cuda_download,
        .kv_memory = cuda_kv_memory,
        .kv_init = cuda_kv_init,
        .kv_copy = cuda_kv_copy,
        .embed = cuda_embed,
        .rmsnorm = cuda_rmsnorm,
        .matmul = cuda_matmul,
        .qkv = cuda_qkv,
        .rope = cuda_rope,
        .attention = cuda_attention,
        .moe = cuda_moe,
        .gather = cuda_gather,
        .step_begin = cuda_step_begin,
        .step_end = cuda_step_end,
        .sync_counters = cuda_sync_counters,
        .sample = cuda_sample,
        .set_expert_memory = cuda_set_expert_memory,
        .set_host_cache = cuda_set_host_cache,
        .expert_stats = cuda_expert_stats,
};

/* inv_freq as the CPU backend computes it, uploaded once. */
static int upload_inv_freq(cuda_backend *cb, mx_error *err) {
        const mx_config *c = &cb->base.model->cfg;
        uint32_t half = c->head_dim / 2;
        size_t cap;
        float *stage = mxk_stage_acquire(cb->ctx, &cap);
        for (uint32_t i = 0; i < half; i++)
                stage[i] = 1.0f / powf((float)c->rope_theta, (float)(2 * i) / (float)c->head_dim);
        if (mxk_malloc(cb->ctx, (void **)&cb->inv_freq, half * sizeof(float)) < 0 ||
            mxk_malloc(cb->ctx, (void **)&cb->d_experts_read, sizeof(unsigned long long)) < 0)
                return mx_error_set(err, -ENOMEM, "out of GPU memory");
        mxk_stage_submit(cb->ctx, cb->inv_freq, half * sizeof(float));
        mxk_memset(cb->ctx, cb->d_experts_read, 0, sizeof(unsigned long long));
        cb->moe.experts_read = cb->d_experts_read;
        return 0;
}

/* What to stream: the budget asked for; or, when every weight would not
 * fit, what fits beside the rest with room to work (0: no streaming). */
/* The KV pool beside streamed slots: what kv_memory asks, or auto an
 * eighth of what the dense weights leave (at most 8 contexts), so that the
 * slots keep most of the card. */
static uint64_t kv_beside_slots(const mx_model *m, const mx_engine_opts *o, uint64_t left) {
        const mx_config *c = &m->cfg;
        uint64_t contexts = (uint64_t)c->max_position_embeddings * 8 * mx_kv_block_bytes(c, o->kv_type) / MX_KV_BLOCK;
        if (o->kv_memory_percent)
                return left / 100 * o->kv_memory_percent;
        if (o->kv_memory)
                return o->kv_memory;
        return contexts && contexts < left / 8 ? contexts : left / 8;
}

static int stream_budget(cuda_backend *cb, const mx_engine_opts *o, uint64_t *budget, mx_error *err) {
        const mx_model *m = cb->base.model;
        uint64_t experts, dense, asked = o->expert_memory;
        mx_cuda_weights_size(m, &experts, &dense);
        size_t free_b = 0, total_b = 0;
        mxk_free_memory(cb->ctx, &free_b, &total_b);
        /* Whether it fits is weights_cuda.c's test (1 GiB to work in); a
         * model that streams by itself keeps 2 GiB beside its slots to
         * work in, and the KV pool's share. */
        const uint64_t fit = (uint64_t)1 << 30, margin = (uint64_t)2 << 30;
        *budget = asked;
        if (!asked && m->n_files && experts + dense + fit > free_b && free_b > dense + margin) {
                cb->kv_base = free_b - dense - margin;
                cb->kv_aside = kv_beside_slots(m, o, cb->kv_base);
                *budget = free_b - dense - margin > cb->kv_aside ? free_b - dense - margin - cb->kv_aside : 1;
        }
        if (*budget && !m->n_files)
                return mx_error_set(err, -EINVAL, "expert streaming reads the experts from the model's files, "
                                    "and a synthetic model has none");
        return 0;
}

int mx_cuda_backend_new(const mx_model *m, int index, const mx_engine_opts *o, mx_backend **out,
                        mx_error *err) {
        char why[256] = "";
        if (mxk_device_count(why, sizeof(why)) <= index)
                return mx_error_set(err, -ENODEV, "device cuda:%d: %s", index,
                                    why[0] ? why : "no such CUDA device");
        mxk_device d;
        if (mxk_device_query(index, &d, why, sizeof(why)) < 0)
                return mx_error_set(err, -ENODEV, "device cuda:%d: %s", index, why);
        cuda_backend *cb = calloc(1, sizeof(*cb));
        if (!cb)
                return mx_error_set(err, -ENOMEM, "out of memory");
        cb->base = (mx_backend){&cuda_ops, m};
        int r = mxk_ctx_new(index, &cb->ctx, why, sizeof(why));
        if (r < 0)
                r = mx_error_set(err, r, "device cuda:%d: %s", index, why);
        if (r == 0)
                r = upload_inv_freq(cb, err);
        if (r == 0) {
                cb->profiling = mxk_prof_enabled(cb->ctx);
                const char *g = getenv("MX_CUDA_GRAPHS");
                cb->graphs_off = cb->profiling || (g && strcmp(g, "0") == 0);
        }
        uint64_t budget = 0;
        if (r == 0)
                r = stream_budget(cb, o, &budget, err);
        if (r == 0) {
                const mx_config *c = &m->cfg;
                uint64_t least = budget ? (uint64_t)c->n_layers * c->n_experts_per_tok * 3 *
                                                  c->intermediate_size * c->hidden_size * 2 : 0;
                r = mx_cuda_weights_load(cb, !budget, least, o->progress, o->progress_arg, err);
        }
        if (r == 0 && budget) {
                cb->graphs_off = true; /* a streamed step waits for each layer's routing */
                r = mx_cuda_stream_new(cb, budget, o->host_cache, err);
        }
        if (r < 0) {
                cuda_destroy(&cb->base);
                return r;
        }
        char more[224] = "";
        if (cb->stream)
                mx_cuda_stream_describe(cb, more, sizeof(more));
        snprintf(cb->desc, sizeof(cb->desc), "cuda:%d, %s, %.1f GiB of weights%s%s", index, d.name,
                 (double)cb->device_bytes / (1u << 30), more[0] ? ", " : "", more);
        *out = &cb->base;
        return 0;
}
