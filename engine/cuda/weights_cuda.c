/* Putting the weights on the GPU: matrices as bf16 (the stored type; f16
 * and f32 checkpoints are rounded to it, and block formats decoded on the
 * host and rounded too, until the GPU computes with blocks), norms as fp32. A file's bytes go
 * through the context's few pinned staging buffers, so there is never a
 * second host copy of the model; a synthetic model's matrices are generated
 * in place. An expert's w1 and w3 are stacked ([2F][H]) so one kernel reads
 * both, a layer's experts lie side by side, and so do its wq, wk, wv. */
#include <string.h>

#include "quant.h"
#include "cuda_backend.h"
#include "mx_common.h"

typedef struct loader {
        cuda_backend *cb;
        void (*progress)(uint64_t, uint64_t, void *);
        void *arg;
        uint64_t done, total;
} loader;

static void advance(loader *ld, uint64_t bytes) {
        ld->done += bytes;
        if (ld->progress)
                ld->progress(ld->done, ld->total, ld->arg);
}

static uint64_t device_size(const mx_tensor *t) {
        return t->ndim == 1 ? t->shape[0] * 4 : t->shape[0] * t->shape[1] * 2;
}

/* A row of a block format as bf16, a block at a time. */
static void block_row_to_bf16(mx_dtype dt, const uint8_t *row, uint64_t cols, uint16_t *dst) {
        float v[MX_QK_K];
        uint32_t qk = mx_dtype_block_elems(dt), bytes = mx_dtype_block_bytes(dt);
        for (uint64_t b = 0; b < cols / qk; b++) {
                mx_dequant_block(dt, row + b * bytes, v);
                for (uint32_t i = 0; i < qk; i++)
                        dst[b * qk + i] = mx_f32_to_bf16(v[i]);
        }
}

/* Rows [r0, r1) of t as bf16 into dst (host), in Hugging Face row order. */
static void rows_to_bf16(const mx_tensor *t, uint64_t r0, uint64_t r1, uint16_t *dst) {
        uint64_t cols = t->shape[1];
        if (t->dtype == MX_DTYPE_BF16 && !t->rope_head_dim) {
                memcpy(dst, (const uint8_t *)t->data + r0 * cols * 2, (r1 - r0) * cols * 2);
                return;
        }
        for (uint64_t r = r0; r < r1; r++, dst += cols) {
                const uint8_t *row = mx_tensor_row(t, r);
                if (mx_dtype_is_block(t->dtype)) {
                        block_row_to_bf16(t->dtype, row, cols, dst);
                        continue;
                }
                for (uint64_t i = 0; i < cols; i++)
                        dst[i] = t->dtype == MX_DTYPE_BF16 ? ((const uint16_t *)row)[i]
                                                           : mx_f32_to_bf16(mx_element_f32(row, t->dtype, i));
        }
}

static void upload_matrix(loader *ld, const mx_tensor *t, uint16_t *dst) {
        mxk_ctx *c = ld->cb->ctx;
        uint64_t rows = t->shape[0], cols = t->shape[1];
        if (!t->data) {
                mxk_fill_synthetic(c, dst, rows * cols, t->synth_seed, t->synth_scale);
                advance(ld, rows * cols * 2);
                return;
        }
        for (uint64_t r = 0; r < rows;) {
                size_t cap;
                uint16_t *stage = mxk_stage_acquire(c, &cap);
                uint64_t n = cap / (cols * 2);
                n = n == 0 ? 1 : n > rows - r ? rows - r : n;
                rows_to_bf16(t, r, r + n, stage);
                mxk_stage_submit(c, dst + r * cols, n * cols * 2);
                advance(ld, n * cols * 2);
                r += n;
        }
}

static void upload_norm(loader *ld, const mx_tensor *t, float *dst) {
        size_t cap;
        float *stage = mxk_stage_acquire(ld->cb->ctx, &cap);
        for (uint64_t i = 0; i < t->shape[0]; i++)
                stage[i] = mx_element_f32(t->data, t->dtype, i);
        mxk_stage_submit(ld->cb->ctx, dst, t->shape[0] * 4);
        advance(ld, t->shape[0] * 4);
}

/* The experts of every layer: w13 blocks, w2, and the pointer arrays. */
static int load_experts(loader *ld, mx_error *err) {
        cuda_backend *cb = ld->cb;
        const mx_model *m = cb->base.model;
        const mx_config *c = &m->cfg;
        uint32_t E = c->n_experts;
        uint64_t H = c->hidden_size, F = c->intermediate_size;
        size_t n_ptrs = (size_t)c->n_layers * 2 * E;
        if (!(cb->h_experts = calloc(n_ptrs, sizeof(void *))) ||
            mxk_malloc(cb->ctx, (void **)&cb->d_experts, n_ptrs * sizeof(void *)) < 0)
                return mx_error_set(err, -ENOMEM, "out of memory for the experts' pointers");
        for (uint32_t L = 0; L < c->n_layers; L++) {
                const mx_layer *l = &m->layers[L];
                /* One block per layer and kind, experts side by side: batched
                 * products take them with a stride. */
                uint16_t *b13 = NULL, *b2 = NULL;
                if (mxk_malloc(cb->ctx, (void **)&b13, E * 2 * F * H * 2) < 0 ||
                    mxk_malloc(cb->ctx, (void **)&b2, E * H * F * 2) < 0) {
                        mxk_free(cb->ctx, b13);
                        return mx_error_set(err, -ENOMEM, "out of GPU memory in layer %u", L);
                }
                for (uint32_t e = 0; e < E; e++) {
                        uint16_t *w13 = b13 + e * 2 * F * H, *w2 = b2 + e * H * F;
                        cb->dev[mx_cuda_tensor_index(cb, l->w1[e])] = w13;
                        cb->dev[mx_cuda_tensor_index(cb, l->w3[e])] = w13 + F * H;
                        cb->dev[mx_cuda_tensor_index(cb, l->w2[e])] = w2;
                        cb->h_experts[(size_t)L * 2 * E + e] = w13;
                        cb->h_experts[(size_t)L * 2 * E + E + e] = w2;
                        upload_matrix(ld, l->w1[e], w13);
                        upload_matrix(ld, l->w3[e], w13 + F * H);
                        upload_matrix(ld, l->w2[e], w2);
                }
        }
        size_t cap;
        void *stage = mxk_stage_acquire(cb->ctx, &cap);
        if (n_ptrs * sizeof(void *) > cap)
                return mx_error_set(err, -E2BIG, "too many experts");
        memcpy(stage, cb->h_experts, n_ptrs * sizeof(void *));
        mxk_stage_submit(cb->ctx, cb->d_experts, n_ptrs * sizeof(void *));
        return 0;
}

/* Each layer's wq, wk and wv stacked in one allocation, so a decode step
 * makes q, k and v in one pass (mxk_qkv). */
static int load_qkv(loader *ld, mx_error *err) {
        cuda_backend *cb = ld->cb;
        const mx_model *m = cb->base.model;
        const mx_config *c = &m->cfg;
        uint64_t H = c->hidden_size, q = (uint64_t)c->n_heads * c->head_dim,
                 kv = (uint64_t)c->n_kv_heads * c->head_dim;
        for (uint32_t L = 0; L < c->n_layers; L++) {
                const mx_layer *l = &m->layers[L];
                uint16_t *w = NULL;
                if (mxk_malloc(cb->ctx, (void **)&w, (q + 2 * kv) * H * 2) < 0)
                        return mx_error_set(err, -ENOMEM, "out of GPU memory in layer %u", L);
                size_t iq = mx_cuda_tensor_index(cb, l->wq);
                cb->dev[iq] = w;
                cb->owned[iq] = true;
                cb->dev[mx_cuda_tensor_index(cb, l->wk)] = w + q * H;
                cb->dev[mx_cuda_tensor_index(cb, l->wv)] = w + (q + kv) * H;
                upload_matrix(ld, l->wq, w);
                upload_matrix(ld, l->wk, w + q * H);
                upload_matrix(ld, l->wv, w + (q + kv) * H);
        }
        return 0;
}

/* Marks the experts' tensors. */
static bool *expert_tensors(const mx_model *m) {
        bool *is = calloc(m->n_tensors ? m->n_tensors : 1, sizeof(bool));
        for (uint32_t L = 0; is && L < m->cfg.n_layers; L++)
                for (uint32_t e = 0; e < m->cfg.n_experts; e++) {
                        const mx_layer *l = &m->layers[L];
                        is[l->w1[e] - m->tensors] = is[l->w2[e] - m->tensors] = is[l->w3[e] - m->tensors] = true;
                }
        return is;
}

static void sizes(const mx_model *m, const bool *is_expert, uint64_t *experts, uint64_t *dense) {
        *experts = *dense = 0;
        for (size_t i = 0; is_expert && i < m->n_tensors; i++)
                *(is_expert[i] ? experts : dense) += device_size(&m->tensors[i]);
}

void mx_cuda_weights_size(const mx_model *m, uint64_t *experts, uint64_t *dense) {
        _cleanup_free_ bool *is = expert_tensors(m);
        sizes(m, is, experts, dense);
}

static int check_fits(cuda_backend *cb, uint64_t need, mx_error *err) {
        size_t free_b = 0, total_b = 0;
        mxk_free_memory(cb->ctx, &free_b, &total_b);
        const uint64_t margin = (uint64_t)1 << 30; /* activations, KV, cuBLAS */
        if (need + margin > free_b)
                return mx_error_set(err, -ENOMEM,
                                    "the model needs %.1f GiB on the GPU (and about 1 GiB to work in); "
                                    "it has %.1f GiB free of %.1f GiB",
                                    (double)need / (1u << 30), (double)free_b / (1u << 30),
                                    (double)total_b / (1u << 30));
        return 0;
}

int mx_cuda_weights_load(cuda_backend *cb, bool experts, uint64_t also,
                         void (*progress)(uint64_t, uint64_t, void *), void *arg, mx_error *err) {
        const mx_model *m = cb->base.model;
        loader ld = {cb, progress, arg, 0, 0};
        _cleanup_free_ bool *is_expert = expert_tensors(m);
        if (!is_expert)
                return mx_error_set(err, -ENOMEM, "out of memory");
        uint64_t expert_bytes, dense;
        sizes(m, is_expert, &expert_bytes, &dense);
        ld.total = dense + (experts ? expert_bytes : 0);
        int r = check_fits(cb, ld.total + also, err);
        if (r < 0)
                return r;
        if (!(cb->dev = calloc(m->n_tensors ? m->n_tensors : 1, sizeof(void *))) ||
            !(cb->owned = calloc(m->n_tensors ? m->n_tensors : 1, sizeof(bool))))
                return mx_error_set(err, -ENOMEM, "out of memory");
        if ((experts && (r = load_experts(&ld, err)) < 0) || (r = load_qkv(&ld, err)) < 0)
                return r;
        cb->expert_bytes = 3ull * m->cfg.intermediate_size * m->cfg.hidden_size * 2;
        for (size_t i = 0; i < m->n_tensors; i++) {
                const mx_tensor *t = &m->tensors[i];
                if (cb->dev[i] || is_expert[i]) /* placed with its expert or its layer's q, k, v; or streamed */
                        continue;
                if (mxk_malloc(cb->ctx, &cb->dev[i], device_size(t)) < 0)
                        return mx_error_set(err, -ENOMEM, "out of GPU memory for %s", t->name);
                cb->owned[i] = true;
                if (t->ndim == 1)
                        upload_norm(&ld, t, cb->dev[i]);
                else
                        upload_matrix(&ld, t, cb->dev[i]);
        }
        cb->device_bytes = ld.total;
        char why[256];
        if ((r = mxk_sync(cb->ctx, why, sizeof(why))) < 0)
                return mx_error_set(err, r, "loading the weights onto the GPU: %s", why);
        return 0;
}

void mx_cuda_weights_free(cuda_backend *cb) {
        const mx_model *m = cb->base.model;
        for (size_t i = 0; cb->owned && i < m->n_tensors; i++)
                if (cb->owned[i])
                        mxk_free(cb->ctx, cb->dev[i]);
        /* Expert 0 of each layer and kind starts its block. */
        for (size_t i = 0; cb->h_experts && i < (size_t)m->cfg.n_layers * 2 * m->cfg.n_experts; i++)
                if (i % m->cfg.n_experts == 0)
                        mxk_free(cb->ctx, cb->h_experts[i]);
        free(cb->dev), free(cb->owned), free(cb->h_experts);
        cb->dev = NULL, cb->owned = NULL, cb->h_experts = NULL;
        mxk_free(cb->ctx, cb->d_experts);
        cb->d_experts = NULL;
}
