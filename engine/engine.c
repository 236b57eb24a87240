/* The engine: a backend for the model, sequences with their blocks of the
 * KV pool (kv/kv.h), and the Mixtral forward pass written once against the
 * backend's operations:
 *
 *   x = embed(tokens)
 *   per layer:  x += o(attention(rope(q, k), v))   of RMSNorm(x)
 *               x += MoE(RMSNorm(x))
 *   logits = lm_head(RMSNorm(x))                     for the rows asked for
 *
 * Several sequences advance in one step: their tokens are rows of the same
 * activations, and only attention needs to know which rows belong to whom. */
#include <string.h>

#include "backend.h"
#include "kv.h"
#include "model.h"
#include "mx_common.h"

typedef struct activations {
        uint32_t cap; /* tokens */
        float *x, *xn, *q, *k, *v, *att, *out_rows, *logits;
        uint32_t cap_logits;
} activations;

struct mx_engine {
        const mx_model *model;
        mx_backend *be;
        mx_kv_pool *kv;
        uint64_t kv_block_bytes;
        activations act;
        /* host-side step description, grown as needed */
        int32_t *tokens;
        uint32_t *pos, *logit_rows, cap_host;
        mx_attn_seq *seqs;
        size_t cap_seqs;
        mx_sample_req *reqs; /* [cap_seqs] */
        int32_t *ids;        /* [cap_seqs] */
        float *host_logits;  /* one row, for sampling on the host */
};

struct mx_seq {
        mx_engine *e;
        mx_kv_table kv;
        uint32_t len, max;
};

/* The index of s among names, or -EINVAL. */
static int name_index(const char *const *names, size_t n, const char *s) {
        for (size_t i = 0; i < n; i++)
                if (strcmp(s, names[i]) == 0)
                        return (int)i;
        return -EINVAL;
}

int mx_simd_from_string(const char *s, mx_simd *out) {
        static const char *const names[] = {"auto", "scalar", "avx2", "avx512"};
        int i = name_index(names, MX_ELEMENTSOF(names), s);
        if (i >= 0)
                *out = (mx_simd)i;
        return i < 0 ? i : 0;
}

int mx_activations_from_string(const char *s, mx_activations *out) {
        static const char *const names[] = {"auto", "fast", "f32"};
        int i = name_index(names, MX_ELEMENTSOF(names), s);
        if (i >= 0)
                *out = (mx_activations)i;
        return i < 0 ? i : 0;
}

static void release_activations(mx_engine *e) {
        activations *a = &e->act;
        float **all[] = {&a->x, &a->xn, &a->q, &a->k, &a->v, &a->att, &a->out_rows, &a->logits};
        for (size_t i = 0; i < MX_ELEMENTSOF(all); i++) {
                if (*all[i])
                        e->be->ops->release(e->be, *all[i]);
                *all[i] = NULL;
        }
        a->cap = a->cap_logits = 0;
}

void mx_engine_free(mx_engine *e) {
        if (!e)
                return;
        if (e->be) {
                release_activations(e);
                e->be->ops->destroy(e->be);
        }
        mx_kv_pool_free(e->kv);
        free(e->tokens), free(e->pos), free(e->logit_rows), free(e->seqs);
        free(e->reqs), free(e->ids), free(e->host_logits);
        free(e);
}

int mx_device_parse(const char *d, int *cuda_index) {
        *cuda_index = -1;
        if (!d || strcmp(d, "cpu") == 0)
                return 0;
        if (strncmp(d, "cuda", 4) != 0)
                return -EINVAL;
        if (d[4] == '\0') {
                *cuda_index = 0;
                return 0;
        }
        char *end = NULL;
        long i = d[4] == ':' && d[5] >= '0' && d[5] <= '9' ? strtol(d + 5, &end, 10) : -1;
        if (i < 0 || i >= 64 || *end)
                return -EINVAL;
        *cuda_index = (int)i;
        return 0;
}

/* The KV pool, sized now that the weights took what they take. */
static int open_kv(mx_engine *e, const mx_engine_opts *o, bool gpu, mx_error *err) {
        const mx_config *c = &e->model->cfg;
        e->kv_block_bytes = mx_kv_block_bytes(c, o->kv_type);
        uint32_t blocks;
        uint64_t free, auto_bytes;
        e->be->ops->kv_memory(e->be, &free, &auto_bytes);
        int r = mx_kv_pool_size(o->kv_memory, o->kv_memory_percent, free, auto_bytes, e->kv_block_bytes,
                                c->max_position_embeddings, &blocks, err);
        if (r < 0)
                return r;
        if ((r = mx_kv_pool_new(blocks, &e->kv)) < 0 || (r = e->be->ops->kv_init(e->be, o->kv_type, blocks)) < 0)
                return mx_error_set(err, r, "out of %s memory for a KV cache of %u blocks (%.1f MiB)",
                                    gpu ? "GPU" : "host", blocks,
                                    (double)blocks * (double)e->kv_block_bytes / (1 << 20));
        return 0;
}

int mx_engine_open(mx_engine **out, const mx_model *m, const mx_engine_opts *o, mx_error *err) {
        static const mx_engine_opts defaults = {0};
        if (!o)
                o = &defaults;
        int cuda = -1;
        int r = mx_device_parse(o->device, &cuda);
        if (r < 0)
                return mx_error_set(err, r, "device \"%s\": expected cpu, cuda or cuda:N", o->device);
        _cleanup_(mx_engine_freep) mx_engine *e = calloc(1, sizeof(*e));
        if (!e)
                return mx_error_set(err, -ENOMEM, "out of memory");
        e->model = m;
        r = cuda >= 0 ? mx_cuda_backend_new(m, cuda, o, &e->be, err)
                      : mx_cpu_backend_new(m, o, &e->be, err);
        if (r < 0 || (r = open_kv(e, o, cuda >= 0, err)) < 0)
                return r;
        *out = MX_TAKE_PTR(e);
        return 0;
}

void mx_engine_counters_get(const mx_engine *e, mx_engine_counters *c) {
        if (e->be->ops->sync_counters)
                e->be->ops->sync_counters(e->be);
        *c = (mx_engine_counters){e->be->weight_bytes, e->be->kv_bytes, e->be->matmul_flops};
}

void mx_engine_expert_stats(const mx_engine *e, mx_expert_stats *s) {
        if (e->be->ops->expert_stats)
                e->be->ops->expert_stats(e->be, s);
        else
                *s = (mx_expert_stats){0};
}

int mx_engine_set_expert_memory(mx_engine *e, uint64_t budget, mx_error *err) {
        if (!e->be->ops->set_expert_memory)
                return budget ? mx_error_set(err, -EOPNOTSUPP, "this backend cannot stream experts") : 0;
        return e->be->ops->set_expert_memory(e->be, budget, err);
}

int mx_engine_set_host_cache(mx_engine *e, uint64_t bytes, mx_error *err) {
        if (!e->be->ops->set_host_cache)
                return mx_error_set(err, -EOPNOTSUPP, "only a GPU that streams experts has a host cache");
        return e->be->ops->set_host_cache(e->be, bytes, err);
}

void mx_engine_kv_stats(const mx_engine *e, mx_kv_stats *s) {
        mx_kv_pool_stats(e->kv, s);
        s->type = e->be->kv_type;
        s->block_bytes = e->kv_block_bytes;
}

uint32_t mx_engine_kv_tokens(const mx_engine *e) {
        mx_kv_stats s;
        mx_kv_pool_stats(e->kv, &s);
        return s.blocks * MX_KV_BLOCK;
}

const mx_model *mx_engine_model(const mx_engine *e) {
        return e->model;
}

const char *mx_engine_describe(const mx_engine *e) {
        return e->be->ops->describe(e->be);
}

/* ---- sequences --------------------------------------------------------------- */

int mx_seq_new(mx_engine *e, uint32_t max_tokens, mx_seq **out, mx_error *err) {
        uint32_t limit = e->model->cfg.max_position_embeddings, pool = mx_engine_kv_tokens(e);
        if (max_tokens == 0)
                max_tokens = limit;
        if (max_tokens == 0)
                return mx_error_set(err, -EINVAL, "the model gives no context length: set one (--ctx)");
        mx_seq *s = calloc(1, sizeof(*s));
        if (!s)
                return mx_error_set(err, -ENOMEM, "out of memory for a sequence");
        s->e = e;
        s->max = max_tokens < pool ? max_tokens : pool;
        s->kv.cache = true;
        *out = s;
        return 0;
}

void mx_seq_free(mx_seq *s) {
        if (!s)
                return;
        mx_kv_table_free(s->e->kv, &s->kv, s->len);
        free(s);
}

uint32_t mx_seq_len(const mx_seq *s) {
        return s->len;
}

uint32_t mx_seq_capacity(const mx_seq *s) {
        return s->max;
}

void mx_seq_reset(mx_seq *s) {
        mx_kv_table_release(s->e->kv, &s->kv, s->len);
        s->len = 0;
}

void mx_seq_set_cache(mx_seq *s, bool on, uint64_t ns) {
        s->kv.cache = on;
        s->kv.ns = ns;
}

static void copy_block(void *arg, uint32_t dst, uint32_t src) {
        mx_backend *b = arg;
        b->ops->kv_copy(b, dst, src);
}

uint32_t mx_seq_reuse(mx_seq *s, const int32_t *tokens, size_t n) {
        if (s->len)
                return 0;
        uint32_t most = n < s->max ? (uint32_t)n : s->max;
        s->len = mx_kv_table_reuse(s->e->kv, &s->kv, tokens, most, copy_block, s->e->be);
        return s->len;
}

int mx_seq_reserve(mx_seq *s, uint32_t tokens, uint32_t spare) {
        if (tokens > s->max)
                return -ENOSPC;
        return mx_kv_table_reserve(s->e->kv, &s->kv, tokens, spare);
}

/* ---- the forward pass ------------------------------------------------------- */

/* Grows each array to count elements of its size. On failure the ones
 * grown stay grown: capacities only ever increase. */
static int realloc_all(void **arrays[], const size_t sizes[], size_t n, size_t count) {
        for (size_t i = 0; i < n; i++) {
                void *p = realloc(*arrays[i], count * sizes[i]);
                if (!p)
                        return -ENOMEM;
                *arrays[i] = p;
        }
        return 0;
}

static int reserve_host(mx_engine *e, uint32_t tokens, size_t seqs) {
        if (tokens > e->cap_host) {
                void **a[] = {(void **)&e->tokens, (void **)&e->pos, (void **)&e->logit_rows};
                const size_t sz[] = {sizeof(int32_t), sizeof(uint32_t), sizeof(uint32_t)};
                if (realloc_all(a, sz, MX_ELEMENTSOF(a), tokens) < 0)
                        return -ENOMEM;
                e->cap_host = tokens;
        }
        if (seqs > e->cap_seqs) {
                void **a[] = {(void **)&e->seqs, (void **)&e->reqs, (void **)&e->ids};
                const size_t sz[] = {sizeof(mx_attn_seq), sizeof(mx_sample_req), sizeof(int32_t)};
                if (realloc_all(a, sz, MX_ELEMENTSOF(a), seqs) < 0)
                        return -ENOMEM;
                e->cap_seqs = seqs;
        }
        if (!e->host_logits && !(e->host_logits = malloc(e->model->cfg.vocab_size * sizeof(float))))
                return -ENOMEM;
        return 0;
}

static int reserve_activations(mx_engine *e, uint32_t tokens, uint32_t logit_rows) {
        const mx_config *c = &e->model->cfg;
        activations *a = &e->act;
        mx_backend *b = e->be;
        if (tokens > a->cap) {
                size_t h = c->hidden_size, q = (size_t)c->n_heads * c->head_dim,
                       kv = (size_t)c->n_kv_heads * c->head_dim;
                release_activations(e);
                a->x = b->ops->alloc(b, tokens * h);
                a->xn = b->ops->alloc(b, tokens * h);
                a->q = b->ops->alloc(b, tokens * q);
                a->k = b->ops->alloc(b, tokens * kv);
                a->v = b->ops->alloc(b, tokens * kv);
                a->att = b->ops->alloc(b, tokens * q);
                a->out_rows = b->ops->alloc(b, tokens * h);
                if (!a->x || !a->xn || !a->q || !a->k || !a->v || !a->att || !a->out_rows)
                        return -ENOMEM;
                a->cap = tokens;
        }
        if (logit_rows > a->cap_logits) {
                if (a->logits)
                        b->ops->release(b, a->logits);
                if (!(a->logits = b->ops->alloc(b, (size_t)logit_rows * c->vocab_size)))
                        return -ENOMEM;
                a->cap_logits = logit_rows;
        }
        return 0;
}

/* Checks the items and lays the step out: tokens, positions, which rows
 * belong to which sequence, which rows need logits. */
static int plan(mx_engine *e, const mx_batch_item *items, size_t n, uint32_t *tokens,
                uint32_t *logit_rows, mx_error *err) {
        uint32_t T = 0, L = 0;
        for (size_t i = 0; i < n; i++) {
                const mx_batch_item *it = &items[i];
                if (it->seq->e != e)
                        return mx_error_set(err, -EINVAL, "item %zu: a sequence of another engine", i);
                if (it->n_tokens > it->seq->max - it->seq->len)
                        return mx_error_set(err, -ENOSPC, "item %zu: %u more tokens exceed the context of %u",
                                            i, it->n_tokens, it->seq->max);
                if (T + (uint64_t)it->n_tokens > UINT32_MAX / 2)
                        return mx_error_set(err, -E2BIG, "too many tokens in one step");
                T += it->n_tokens;
        }
        int r = reserve_host(e, T, n);
        if (r < 0)
                return mx_error_set(err, r, "out of memory");
        T = 0;
        for (size_t i = 0; i < n; i++) {
                const mx_batch_item *it = &items[i];
                for (uint32_t j = 0; j < it->n_tokens; j++) {
                        int32_t id = it->tokens[j];
                        if (id < 0 || (uint32_t)id >= e->model->cfg.vocab_size)
                                return mx_error_set(err, -EINVAL, "item %zu: token %d is outside the vocabulary",
                                                    i, id);
                        e->tokens[T + j] = id;
                        e->pos[T + j] = it->seq->len + j;
                        bool last = j + 1 == it->n_tokens;
                        if ((it->logits && (it->all_logits || last)) || (it->sampler && last))
                                e->logit_rows[L++] = T + j;
                }
                r = mx_seq_reserve(it->seq, it->seq->len + it->n_tokens, 0);
                if (r == -ENOBUFS)
                        return mx_error_set(err, r, "item %zu: the KV cache is full (%u blocks of %u tokens, every "
                                            "one held by a sequence)", i, mx_engine_kv_tokens(e) / MX_KV_BLOCK,
                                            MX_KV_BLOCK);
                if (r < 0)
                        return mx_error_set(err, r, "out of memory");
                e->seqs[i] = (mx_attn_seq){it->seq->kv.blocks, it->seq->len, it->n_tokens, T};
                T += it->n_tokens;
        }
        *tokens = T;
        *logit_rows = L;
        return 0;
}

static int run_layer(mx_engine *e, const mx_layer *l, uint32_t L, size_t n_seqs, uint32_t T) {
        mx_backend *b = e->be;
        const mx_backend_ops *op = b->ops;
        const mx_config *c = &e->model->cfg;
        activations *a = &e->act;
        float eps = (float)c->rms_norm_eps;

        op->rmsnorm(b, l->attn_norm, eps, a->x, a->xn, T);
        int r;
        if (op->qkv) {
                r = op->qkv(b, l, a->xn, a->q, a->k, a->v, T);
        } else {
                r = op->matmul(b, l->wq, a->xn, a->q, T, false);
                if (r == 0)
                        r = op->matmul(b, l->wk, a->xn, a->k, T, false);
                if (r == 0)
                        r = op->matmul(b, l->wv, a->xn, a->v, T, false);
        }
        if (r < 0)
                return r;
        op->rope(b, a->q, a->k, e->pos, T);
        if ((r = op->attention(b, L, e->seqs, n_seqs, a->q, a->k, a->v, a->att)) < 0 ||
            (r = op->matmul(b, l->wo, a->att, a->x, T, true)) < 0)
                return r;
        op->rmsnorm(b, l->ffn_norm, eps, a->x, a->xn, T);
        return op->moe(b, l, a->xn, a->x, T);
}

/* An operation failed: a device says why itself (CUDA's message beats
 * "out of memory"); otherwise it was memory, for `what`. */
static int step_failed(mx_engine *e, int r, const char *what, mx_error *err) {
        if (e->be->ops->step_end && e->be->ops->step_end(e->be, err) < 0)
                return r;
        return mx_error_set(err, r, "out of memory for %s", what);
}

/* Logits to the items that want them; tokens drawn for those with a
 * sampler: by the device in one go where it can, else here. */
static int deliver(mx_engine *e, const mx_batch_item *items, size_t n, mx_error *err) {
        mx_backend *b = e->be;
        size_t vocab = e->model->cfg.vocab_size, row = 0, n_req = 0;
        for (size_t i = 0; i < n; i++) {
                const mx_batch_item *it = &items[i];
                if ((!it->logits && !it->sampler) || it->n_tokens == 0)
                        continue;
                size_t rows = it->logits && it->all_logits ? it->n_tokens : 1;
                const float *dev = e->act.logits + row * vocab;
                if (it->logits)
                        b->ops->download(b, it->logits, dev, rows * vocab);
                if (it->sampler && b->ops->sample) {
                        const mx_sampling *p = mx_sampler_settings(it->sampler);
                        e->reqs[n_req++] = (mx_sample_req){(uint32_t)(row + rows - 1), p, it->history,
                                                           it->n_history,
                                                           p->temperature > 0 ? mx_sampler_uniform(it->sampler) : 0};
                } else if (it->sampler) {
                        float *last = e->host_logits;
                        if (it->logits)
                                last = it->logits + (rows - 1) * vocab;
                        else
                                b->ops->download(b, last, dev + (rows - 1) * vocab, vocab);
                        *it->sampled = mx_sampler_next(it->sampler, last, it->history, it->n_history);
                }
                row += rows;
        }
        if (n_req == 0)
                return 0;
        int r = b->ops->sample(b, e->act.logits, e->reqs, n_req, e->ids);
        if (r < 0)
                return step_failed(e, r, "sampling", err);
        for (size_t i = 0, k = 0; i < n; i++)
                if (items[i].sampler && items[i].n_tokens > 0)
                        *items[i].sampled = e->ids[k++];
        return 0;
}

int mx_forward(mx_engine *e, const mx_batch_item *items, size_t n, mx_error *err) {
        const mx_model *m = e->model;
        mx_backend *b = e->be;
        uint32_t T = 0, L = 0;
        int r = plan(e, items, n, &T, &L, err);
        if (r < 0 || T == 0)
                return r;
        if ((r = reserve_activations(e, T, L)) < 0)
                return mx_error_set(err, r, "out of memory for the activations of %u tokens", T);
        /* A model file that shrank under us fails every step until it is
         * put back (model/file_io.c). */
        if ((r = mx_model_check_files(m, err)) < 0)
                return r;
        activations *a = &e->act;
        mx_step step = {e->tokens, e->pos, e->logit_rows, T, L, e->seqs, n};
        if (b->ops->step_begin && (r = b->ops->step_begin(b, &step)) < 0)
                return mx_error_set(err, r, "out of memory on the device for a step of %u tokens", T);
        b->ops->embed(b, m->embed, e->tokens, T, a->x);
        for (uint32_t layer = 0; layer < m->cfg.n_layers; layer++)
                if ((r = run_layer(e, &m->layers[layer], layer, n, T)) < 0)
                        return step_failed(e, r, "a layer's activations", err);
        if (L > 0) {
                b->ops->gather(b, a->x, m->cfg.hidden_size, e->logit_rows, L, a->out_rows);
                b->ops->rmsnorm(b, m->norm, (float)m->cfg.rms_norm_eps, a->out_rows, a->xn, L);
                if ((r = b->ops->matmul(b, m->lm_head, a->xn, a->logits, L, false)) < 0)
                        return step_failed(e, r, "the logits", err);
                if ((r = deliver(e, items, n, err)) < 0)
                        return r;
        }
        if (b->ops->step_end && (r = b->ops->step_end(b, err)) < 0)
                return r;
        /* Read zeros in place of a missing page: the step is worthless. */
        if ((r = mx_model_check_files(m, err)) < 0)
                return r;
        for (size_t i = 0; i < n; i++) {
                mx_seq *q = items[i].seq;
                mx_kv_table_commit(e->kv, &q->kv, q->len, items[i].tokens, items[i].n_tokens);
                q->len += items[i].n_tokens;
        }
        return 0;
}
