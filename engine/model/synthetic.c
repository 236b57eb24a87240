/* Synthetic models: the real Mixtral shape (or the CPU benchmark's) with
 * random weights and no file, so the engine runs at full size where the
 * checkpoint cannot be downloaded. Tensors carry the Hugging Face names and
 * are bound like a checkpoint's. Matrices use a uniform spread of
 * sqrt(3 / cols), so every product has outputs of unit variance; norms are
 * near 1. */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "pool.h"
#include "model.h"
#include "mx_common.h"
#include "mx_synth.h"

typedef struct synth_shape {
        const char *name;
        mx_config cfg;
} synth_shape;

static const synth_shape shapes[] = {
        {"mixtral-8x7b", {.vocab_size = 32000, .hidden_size = 4096, .intermediate_size = 14336,
                          .n_layers = 32, .n_heads = 32, .n_kv_heads = 8, .head_dim = 128,
                          .n_experts = 8, .n_experts_per_tok = 2, .max_position_embeddings = 32768,
                          .rope_theta = 1e6, .rms_norm_eps = 1e-5, .bos_token_id = 1,
                          .eos_token_id = 2}},
        {"b1", {.vocab_size = 32000, .hidden_size = 1024, .intermediate_size = 3584, .n_layers = 8,
                .n_heads = 8, .n_kv_heads = 2, .head_dim = 128, .n_experts = 8,
                .n_experts_per_tok = 2, .max_position_embeddings = 32768, .rope_theta = 1e6,
                .rms_norm_eps = 1e-5, .bos_token_id = 1, .eos_token_id = 2}},
};

static const synth_shape *find_shape(const char *name) {
        for (size_t i = 0; i < MX_ELEMENTSOF(shapes); i++)
                if (strcmp(shapes[i].name, name) == 0)
                        return &shapes[i];
        return NULL;
}

typedef struct builder {
        mx_model *m;
        size_t cap;
        uint64_t host_bytes; /* of the tensors that get host data */
        bool host_weights;
} builder;

static int add(builder *b, uint64_t rows, uint64_t cols, const char *fmt, ...)
        __attribute__((format(printf, 4, 5)));

static int add(builder *b, uint64_t rows, uint64_t cols, const char *fmt, ...) {
        mx_model *m = b->m;
        if (m->n_tensors == b->cap)
                return -ENOMEM;
        mx_tensor *t = &m->tensors[m->n_tensors];
        char name[192];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(name, sizeof(name), fmt, ap);
        va_end(ap);
        if (!(t->name = strdup(name)))
                return -ENOMEM;
        t->file = "(synthetic)";
        t->dtype = MX_DTYPE_BF16;
        t->ndim = cols ? 2 : 1;
        t->shape[0] = rows;
        t->shape[1] = cols;
        t->nbytes = rows * (cols ? cols : 1) * 2;
        t->synth_seed = m->n_tensors + 1;
        t->synth_scale = cols ? (rows == m->cfg.vocab_size && !strstr(name, "lm_head") ? 1.0f
                                                                                       : sqrtf(3.0f / (float)cols))
                              : 0.1f;
        if (b->host_weights || !cols)
                b->host_bytes += t->nbytes;
        m->n_tensors++;
        return 0;
}

static int add_all(builder *b) {
        const mx_config *c = &b->m->cfg;
        uint64_t h = c->hidden_size, q = (uint64_t)c->n_heads * c->head_dim,
                 kv = (uint64_t)c->n_kv_heads * c->head_dim, f = c->intermediate_size;
        int r = add(b, c->vocab_size, h, "model.embed_tokens.weight");
        if (r == 0)
                r = add(b, h, 0, "model.norm.weight");
        if (r == 0)
                r = add(b, c->vocab_size, h, "lm_head.weight");
        for (uint32_t L = 0; r == 0 && L < c->n_layers; L++) {
                const char *p = "model.layers.";
                if ((r = add(b, h, 0, "%s%u.input_layernorm.weight", p, L)) < 0 ||
                    (r = add(b, q, h, "%s%u.self_attn.q_proj.weight", p, L)) < 0 ||
                    (r = add(b, kv, h, "%s%u.self_attn.k_proj.weight", p, L)) < 0 ||
                    (r = add(b, kv, h, "%s%u.self_attn.v_proj.weight", p, L)) < 0 ||
                    (r = add(b, h, q, "%s%u.self_attn.o_proj.weight", p, L)) < 0 ||
                    (r = add(b, h, 0, "%s%u.post_attention_layernorm.weight", p, L)) < 0 ||
                    (r = add(b, c->n_experts, h, "%s%u.block_sparse_moe.gate.weight", p, L)) < 0)
                        break;
                for (uint32_t e = 0; r == 0 && e < c->n_experts; e++)
                        if ((r = add(b, f, h, "%s%u.block_sparse_moe.experts.%u.w1.weight", p, L, e)) < 0 ||
                            (r = add(b, h, f, "%s%u.block_sparse_moe.experts.%u.w2.weight", p, L, e)) < 0)
                                break;
                        else
                                r = add(b, f, h, "%s%u.block_sparse_moe.experts.%u.w3.weight", p, L, e);
        }
        return r;
}

typedef struct fill {
        uint16_t *v;
        uint64_t n;
        uint32_t chunks;
        const mx_tensor *t;
} fill;

static void fill_chunk(void *arg, uint32_t task, uint32_t thread) {
        (void)thread;
        const fill *f = arg;
        uint64_t lo = f->n * task / f->chunks, hi = f->n * (task + 1) / f->chunks;
        for (uint64_t j = lo; j < hi; j++)
                f->v[j] = mx_synth_bf16(f->t->synth_seed, j, f->t->synth_scale);
}

int mx_model_pool(uint32_t threads, mx_pool **out) {
        long cores = sysconf(_SC_NPROCESSORS_ONLN);
        return mx_pool_new(threads ? threads : cores > 0 && cores < 256 ? (uint32_t)cores : 1, out);
}

int mx_synth_pool(mx_pool **out) {
        return mx_model_pool(0, out);
}

/* One core made the 23 GB of the GPU curve's checkpoint in minutes. */
void mx_synth_fill(mx_pool *pool, const mx_tensor *t, uint16_t *v) {
        fill f = {v, t->nbytes / 2, 4 * mx_pool_threads(pool), t};
        mx_pool_run(pool, f.chunks, fill_chunk, &f);
}

/* Norms as 1 + u (truncated to bf16: the same on every machine). */
static void fill_norm(const mx_tensor *t, uint16_t *v) {
        for (uint64_t j = 0; j < t->nbytes / 2; j++) {
                uint32_t bits = (uint32_t)mx_synth_bf16(t->synth_seed, j, t->synth_scale) << 16;
                float f;
                memcpy(&f, &bits, 4);
                f += 1.0f;
                memcpy(&bits, &f, 4);
                v[j] = (uint16_t)(bits >> 16);
        }
}

/* Fills the host copies: norms, and matrices as the device would. */
static int fill_host(builder *b) {
        mx_model *m = b->m;
        model_priv *p = m->priv;
        _cleanup_(mx_pool_freep) mx_pool *pool = NULL;
        if (!(p->synth_data = malloc(b->host_bytes ? b->host_bytes : 1)))
                return -ENOMEM;
        int r = b->host_weights ? mx_synth_pool(&pool) : 0;
        if (r < 0)
                return r;
        uint8_t *at = p->synth_data;
        for (size_t i = 0; i < m->n_tensors; i++) {
                mx_tensor *t = &m->tensors[i];
                bool norm = t->ndim == 1;
                if (norm)
                        fill_norm(t, (uint16_t *)at);
                else if (b->host_weights)
                        mx_synth_fill(pool, t, (uint16_t *)at);
                else
                        continue;
                t->data = at;
                at += t->nbytes;
        }
        return 0;
}

int mx_synthetic_sizes(const char *shape, uint64_t *per_layer, uint64_t *rest, uint32_t *max_layers) {
        const synth_shape *s = find_shape(shape);
        if (!s)
                return -EINVAL;
        const mx_config *c = &s->cfg;
        uint64_t h = c->hidden_size, q = (uint64_t)c->n_heads * c->head_dim,
                 kv = (uint64_t)c->n_kv_heads * c->head_dim, f = c->intermediate_size;
        *per_layer = 2 * (2 * h + 2 * q * h + 2 * kv * h + c->n_experts * h + 3 * c->n_experts * f * h);
        *rest = 2 * (2 * (uint64_t)c->vocab_size * h + h);
        *max_layers = c->n_layers;
        return 0;
}

int mx_model_synthetic(mx_model **out, const char *shape, uint32_t layers, bool host_weights,
                       mx_error *err) {
        const synth_shape *s = find_shape(shape);
        if (!s)
                return mx_error_set(err, -EINVAL, "synthetic shape \"%s\": expected mixtral-8x7b or b1", shape);
        if (layers > s->cfg.n_layers)
                return mx_error_set(err, -EINVAL, "%s has %u layers, not %u", shape, s->cfg.n_layers, layers);
        _cleanup_(mx_model_freep) mx_model *m = calloc(1, sizeof(*m));
        char dir[64];
        snprintf(dir, sizeof(dir), "synthetic:%s", shape);
        if (!m || !(m->dir = strdup(dir)) || !(m->priv = calloc(1, sizeof(model_priv))))
                return mx_error_set(err, -ENOMEM, "out of memory");
        m->cfg = s->cfg;
        if (layers)
                m->cfg.n_layers = layers;
        builder b = {m, 3 + (size_t)m->cfg.n_layers * (7 + 3 * m->cfg.n_experts), 0, host_weights};
        if (!(m->tensors = calloc(b.cap, sizeof(mx_tensor))))
                return mx_error_set(err, -ENOMEM, "out of memory");
        int r = add_all(&b);
        if (r == 0)
                r = fill_host(&b);
        if (r < 0)
                return mx_error_set(err, r, "out of memory for the synthetic %s (%.1f GiB on the host)",
                                    shape, (double)b.host_bytes / (1u << 30));
        if ((r = mx_model_index_tensors(m, err)) < 0 || (r = mx_model_bind(m, err)) < 0)
                return r;
        *out = MX_TAKE_PTR(m);
        return 0;
}
