/* Opening a checkpoint: read the configuration, map the files, and bind
 * every tensor the architecture needs by name, checking its shape against
 * the configuration. A tensor that is missing, misshapen or left over is an
 * error naming the file and the tensor. Three layouts: Hugging Face's and
 * mistral-inference's directories, and GGUF files (gguf_model.c), whose
 * merged expert tensors arrive here as per-expert views. */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "model.h"
#include "mx_common.h"

#define MAX_CONFIG_BYTES (1u << 20)

typedef struct layout_names {
        const char *embed, *norm, *lm_head;
        const char *layer; /* prefix of "<layer>.<suffix>" */
        const char *attn_norm, *wq, *wk, *wv, *wo, *ffn_norm, *router;
        /* w1, w2, w3 of expert e in layer L: "<layer>L.<mid>e<end>" */
        const char *expert[3][2]; /* {mid, end} */
        const char *merged[3][2]; /* GGUF: the per-expert views of merged tensors; {NULL} elsewhere */
} layout_names;

static const layout_names hf_names = {
        "model.embed_tokens.weight", "model.norm.weight", "lm_head.weight",
        "model.layers.",
        "input_layernorm.weight",
        "self_attn.q_proj.weight",
        "self_attn.k_proj.weight",
        "self_attn.v_proj.weight",
        "self_attn.o_proj.weight",
        "post_attention_layernorm.weight",
        "block_sparse_moe.gate.weight",
        {{"block_sparse_moe.experts.", ".w1.weight"},
         {"block_sparse_moe.experts.", ".w2.weight"},
         {"block_sparse_moe.experts.", ".w3.weight"}},
        {{NULL}},
};

static const layout_names consolidated_names = {
        "tok_embeddings.weight", "norm.weight", "output.weight",
        "layers.",
        "attention_norm.weight",
        "attention.wq.weight",
        "attention.wk.weight",
        "attention.wv.weight",
        "attention.wo.weight",
        "ffn_norm.weight",
        "feed_forward.gate.weight",
        {{"feed_forward.experts.", ".w1.weight"},
         {"feed_forward.experts.", ".w2.weight"},
         {"feed_forward.experts.", ".w3.weight"}},
        {{NULL}},
};

/* llama.cpp's names: w1 is the gate, w2 down, w3 up. */
static const layout_names gguf_names = {
        "token_embd.weight", "output_norm.weight", "output.weight",
        "blk.",
        "attn_norm.weight",
        "attn_q.weight",
        "attn_k.weight",
        "attn_v.weight",
        "attn_output.weight",
        "ffn_norm.weight",
        "ffn_gate_inp.weight",
        {{"ffn_gate.", ".weight"}, {"ffn_down.", ".weight"}, {"ffn_up.", ".weight"}},
        {{"ffn_gate_exps.weight[", "]"}, {"ffn_down_exps.weight[", "]"}, {"ffn_up_exps.weight[", "]"}},
};

static int cmp_name(const void *a, const void *b) {
        return strcmp((*(mx_tensor *const *)a)->name, (*(mx_tensor *const *)b)->name);
}

int mx_model_index_tensors(mx_model *m, mx_error *err) {
        model_priv *p = m->priv;
        p->by_name = calloc(m->n_tensors + 1, sizeof(*p->by_name));
        p->used = calloc(m->n_tensors + 1, sizeof(bool));
        if (!p->by_name || !p->used)
                return mx_error_set(err, -ENOMEM, "%s: out of memory", m->dir);
        for (size_t i = 0; i < m->n_tensors; i++)
                p->by_name[i] = &m->tensors[i];
        qsort(p->by_name, m->n_tensors, sizeof(*p->by_name), cmp_name);
        for (size_t i = 1; i < m->n_tensors; i++)
                if (strcmp(p->by_name[i - 1]->name, p->by_name[i]->name) == 0)
                        return mx_error_set(err, -EINVAL, "%s: tensor \"%s\" is in both %s and %s",
                                            m->dir, p->by_name[i]->name, p->by_name[i - 1]->file,
                                            p->by_name[i]->file);
        return 0;
}

mx_tensor *mx_model_find(const mx_model *m, const char *name) {
        model_priv *p = m->priv;
        mx_tensor key = {.name = (char *)name}, *kp = &key;
        mx_tensor **hit = bsearch(&kp, p->by_name, m->n_tensors, sizeof(*p->by_name), cmp_name);
        return hit ? *hit : NULL;
}

static const char *shape_str(const uint64_t *dims, uint32_t n, char *buf, size_t size) {
        size_t k = (size_t)snprintf(buf, size, "[");
        for (uint32_t i = 0; i < n && k < size; i++)
                k += (size_t)snprintf(buf + k, size - k, "%s%llu", i ? ", " : "",
                                      (unsigned long long)dims[i]);
        if (k < size)
                snprintf(buf + k, size - k, "]");
        return buf;
}

/* What a missing tensor's message names: the directory, or the GGUF file
 * (a split set's first part) whose metadata describes the model. */
static int missing(const mx_model *m, mx_error *err, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int missing(const mx_model *m, mx_error *err, const char *fmt, ...) {
        char what[384];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(what, sizeof(what), fmt, ap);
        va_end(ap);
        if (m->layout == MX_LAYOUT_GGUF)
                return mx_error_set(err, -EINVAL, "%s/%s: %s is missing", m->dir, m->files[0].name, what);
        return mx_error_set(err, -EINVAL, "%s: %s is missing", m->dir, what);
}

/* Finds the tensor called name and checks that its shape is [rows]
 * (cols == 0) or [rows, cols]. */
static int bind(mx_model *m, const mx_tensor **out, uint64_t rows, uint64_t cols,
                const char *name, mx_error *err) {
        char have[96], want[96];
        mx_tensor *t = mx_model_find(m, name);
        if (!t)
                return missing(m, err, "tensor \"%s\"", name);
        uint64_t dims[2] = {rows, cols};
        uint32_t nd = cols ? 2 : 1;
        if (t->ndim != nd || t->shape[0] != rows || (nd == 2 && t->shape[1] != cols))
                return mx_error_set(err, -EINVAL, "%s/%s: tensor \"%s\": shape %s, but the config needs %s",
                                    m->dir, t->file, name, shape_str(t->shape, t->ndim, have, sizeof(have)),
                                    shape_str(dims, nd, want, sizeof(want)));
        ((model_priv *)m->priv)->used[t - m->tensors] = true;
        *out = t;
        return 0;
}

static int bind_in_layer(mx_model *m, const layout_names *nm, uint32_t L, const char *suffix,
                         const mx_tensor **out, uint64_t rows, uint64_t cols, mx_error *err) {
        char name[192];
        snprintf(name, sizeof(name), "%s%u.%s", nm->layer, L, suffix);
        return bind(m, out, rows, cols, name, err);
}

/* GGUF files hold an expert in a merged tensor (its view) or on its own. */
static int bind_expert(mx_model *m, const layout_names *nm, uint32_t L, uint32_t e, int w,
                       const mx_tensor **out, uint64_t rows, uint64_t cols, mx_error *err) {
        char name[192], merged[192];
        const char *const *x = nm->expert[w - 1], *const *y = nm->merged[w - 1];
        snprintf(name, sizeof(name), "%s%u.%s%u%s", nm->layer, L, x[0], e, x[1]);
        if (y[0]) {
                snprintf(merged, sizeof(merged), "%s%u.%s%u%s", nm->layer, L, y[0], e, y[1]);
                if (mx_model_find(m, merged))
                        return bind(m, out, rows, cols, merged, err);
                if (!mx_model_find(m, name)) {
                        *strchr(merged, '[') = '\0';
                        return missing(m, err, "tensor \"%s\" (or \"%s\")", merged, name);
                }
        }
        return bind(m, out, rows, cols, name, err);
}

static int bind_layer(mx_model *m, const layout_names *nm, uint32_t L, mx_error *err) {
        const mx_config *c = &m->cfg;
        mx_layer *ly = &m->layers[L];
        uint64_t h = c->hidden_size, q = (uint64_t)c->n_heads * c->head_dim,
                 kv = (uint64_t)c->n_kv_heads * c->head_dim, f = c->intermediate_size;
        int r;
        if ((r = bind_in_layer(m, nm, L, nm->attn_norm, &ly->attn_norm, h, 0, err)) < 0 ||
            (r = bind_in_layer(m, nm, L, nm->wq, &ly->wq, q, h, err)) < 0 ||
            (r = bind_in_layer(m, nm, L, nm->wk, &ly->wk, kv, h, err)) < 0 ||
            (r = bind_in_layer(m, nm, L, nm->wv, &ly->wv, kv, h, err)) < 0 ||
            (r = bind_in_layer(m, nm, L, nm->wo, &ly->wo, h, q, err)) < 0 ||
            (r = bind_in_layer(m, nm, L, nm->ffn_norm, &ly->ffn_norm, h, 0, err)) < 0 ||
            (r = bind_in_layer(m, nm, L, nm->router, &ly->router, c->n_experts, h, err)) < 0)
                return r;
        for (uint32_t e = 0; e < c->n_experts; e++)
                if ((r = bind_expert(m, nm, L, e, 1, &ly->w1[e], f, h, err)) < 0 ||
                    (r = bind_expert(m, nm, L, e, 2, &ly->w2[e], h, f, err)) < 0 ||
                    (r = bind_expert(m, nm, L, e, 3, &ly->w3[e], f, h, err)) < 0)
                        return r;
        if (m->layout != MX_LAYOUT_HF) {
                /* mistral-inference stores q/k rows in interleaved RoPE order,
                 * and llama.cpp's converter permutes HF's back to it. */
                ((mx_tensor *)ly->wq)->rope_head_dim = c->head_dim;
                ((mx_tensor *)ly->wk)->rope_head_dim = c->head_dim;
        }
        return 0;
}

int mx_model_bind(mx_model *m, mx_error *err) {
        const mx_config *c = &m->cfg;
        const layout_names *nm = m->layout == MX_LAYOUT_HF             ? &hf_names
                                 : m->layout == MX_LAYOUT_CONSOLIDATED ? &consolidated_names
                                                                       : &gguf_names;
        model_priv *p = m->priv;
        size_t per_layer = (size_t)c->n_experts * 3;
        m->layers = calloc(c->n_layers, sizeof(mx_layer));
        p->experts = calloc((size_t)c->n_layers * per_layer, sizeof(*p->experts));
        if (!m->layers || !p->experts)
                return mx_error_set(err, -ENOMEM, "%s: out of memory", m->dir);

        int r = bind(m, &m->embed, c->vocab_size, c->hidden_size, nm->embed, err);
        if (r == 0)
                r = bind(m, &m->norm, c->hidden_size, 0, nm->norm, err);
        if (r == 0 && c->tie_word_embeddings)
                m->lm_head = m->embed;
        else if (r == 0)
                r = bind(m, &m->lm_head, c->vocab_size, c->hidden_size, nm->lm_head, err);
        for (uint32_t L = 0; r == 0 && L < c->n_layers; L++) {
                const mx_tensor **e = p->experts + L * per_layer;
                m->layers[L].w1 = e, m->layers[L].w2 = e + c->n_experts;
                m->layers[L].w3 = e + 2 * c->n_experts;
                r = bind_layer(m, nm, L, err);
        }
        for (size_t i = 0; r == 0 && i < m->n_tensors; i++)
                if (!p->used[i])
                        r = mx_error_set(err, -EINVAL, "%s/%s: unexpected tensor \"%s\"", m->dir,
                                         m->tensors[i].file, m->tensors[i].name);
        return r;
}

static int read_config(mx_model *m, mx_error *err) {
        struct stat st;
        if (stat(m->dir, &st) < 0)
                return mx_error_set(err, -errno, "%s: %s", m->dir, strerror(errno));
        if (!S_ISDIR(st.st_mode))
                return mx_error_set(err, -ENOTDIR,
                                    "%s: not a directory or a GGUF file (--model takes the checkpoint's directory "
                                    "or its .gguf file)", m->dir);
        bool hf = mx_dir_has(m->dir, "config.json");
        if (!hf && !mx_dir_has(m->dir, "params.json"))
                return mx_error_set(err, -ENOENT, "%s: no config.json (Hugging Face) or params.json "
                                    "(mistral-inference) in this directory, and no .gguf file", m->dir);
        m->layout = hf ? MX_LAYOUT_HF : MX_LAYOUT_CONSOLIDATED;
        _cleanup_free_ char *path = NULL, *json = NULL;
        size_t len;
        int r = mx_read_in_dir(m->dir, hf ? "config.json" : "params.json", MAX_CONFIG_BYTES, &path,
                               &json, &len, err);
        if (r < 0)
                return r;
        return hf ? mx_config_parse_hf(json, len, path, &m->cfg, err)
                  : mx_config_parse_params(json, len, path, &m->cfg, err);
}

void mx_model_free(mx_model *m) {
        if (!m)
                return;
        model_priv *p = m->priv;
        if (p)
                mx_gguf_model_free(m);
        mx_model_files_close(m);
        if (p) {
                free(p->by_name);
                free(p->used);
                free(p->experts);
                free(p->synth_data);
                free(p->dense_copy);
                free(p->quant_data);
                free(p);
        }
        free(m->layers);
        free(m->dir);
        free(m);
}

static int open_checkpoint(mx_model *m, const char *dir, mx_error *err) {
        if (!(m->dir = strdup(dir)))
                return mx_error_set(err, -ENOMEM, "%s: out of memory", dir);
        int r = read_config(m, err);
        return r < 0 ? r : mx_model_files_open(m, err);
}

/* A model from path, or (path NULL) from a GGUF file in memory. */
static int open_model(mx_model **out, const char *path, const uint8_t *data, uint64_t size, mx_error *err) {
        _cleanup_(mx_model_freep) mx_model *m = calloc(1, sizeof(*m));
        if (!m || !(m->priv = calloc(1, sizeof(model_priv))))
                return mx_error_set(err, -ENOMEM, "%s: out of memory", path ? path : "model");
        int r = !path                     ? mx_gguf_model_buffer(m, data, size, err)
                : mx_model_is_gguf(path) ? mx_gguf_model_files(m, path, err)
                                          : open_checkpoint(m, path, err);
        if (r == 0)
                r = mx_model_bind(m, err);
        if (r < 0)
                return r;
        *out = MX_TAKE_PTR(m);
        return 0;
}

int mx_model_open(mx_model **out, const char *path, mx_error *err) {
        return open_model(out, path, NULL, 0, err);
}

int mx_model_open_gguf_buffer(mx_model **out, const uint8_t *data, uint64_t size, mx_error *err) {
        return open_model(out, NULL, data, size, err);
}

int mx_model_load_tokenizer(const mx_model *m, mx_tokenizer **out, mx_error *err) {
        _cleanup_(mx_tokenizer_freep) mx_tokenizer *tok = NULL;
        _cleanup_free_ char *path = NULL;
        const model_priv *p = m->priv;
        int r = m->layout == MX_LAYOUT_GGUF
                        ? mx_gguf_tokenizer(&p->gguf[0], m->cfg.vocab_size, &tok, err)
                        : (path = mx_model_find_tokenizer(m->dir, err)) ? mx_tokenizer_load(&tok, path, err)
                                                                         : -ENOENT;
        if (r < 0)
                return r;
        if (mx_tokenizer_vocab_size(tok) != m->cfg.vocab_size)
                return mx_error_set(err, -EINVAL, "%s: the tokenizer has %u pieces but the model a vocabulary of %u",
                                    path ? path : m->dir, mx_tokenizer_vocab_size(tok), m->cfg.vocab_size);
        *out = MX_TAKE_PTR(tok);
        return 0;
}

int mx_tokenizer_open(const char *path, mx_tokenizer **out, mx_error *err) {
        if (!mx_model_is_gguf(path))
                return mx_tokenizer_load(out, path, err);
        _cleanup_(mx_model_freep) mx_model *m = NULL;
        int r = mx_model_open(&m, path, err);
        return r < 0 ? r : mx_model_load_tokenizer(m, out, err);
}

char *mx_model_find_tokenizer(const char *dir, mx_error *err) {
        static const char *const names[] = {"tokenizer.model", "tokenizer.model.v1"};
        for (size_t i = 0; i < MX_ELEMENTSOF(names); i++)
                if (mx_dir_has(dir, names[i]))
                        return mx_path_join(dir, names[i]);
        mx_error_set(err, -ENOENT, "%s: no tokenizer.model or tokenizer.model.v1", dir);
        return NULL;
}

void mx_model_footprint(const mx_model *m, mx_footprint *fp) {
        const mx_config *c = &m->cfg;
        *fp = (mx_footprint){0};
        for (size_t i = 0; i < m->n_tensors; i++) {
                const mx_tensor *t = &m->tensors[i];
                fp->params += mx_tensor_elems(t);
                fp->bytes += t->nbytes;
                fp->bytes_by_dtype[t->dtype] += t->nbytes;
        }
        /* Per token: everything but the experts, plus top-k of them, minus
         * the embedding table of which one row is read. */
        uint64_t expert_params = 0, expert_bytes = 0;
        for (uint32_t L = 0; L < c->n_layers; L++)
                for (uint32_t e = 0; e < c->n_experts; e++) {
                        const mx_tensor *w[3] = {m->layers[L].w1[e], m->layers[L].w2[e],
                                                 m->layers[L].w3[e]};
                        for (int k = 0; k < 3; k++) {
                                expert_params += mx_tensor_elems(w[k]);
                                expert_bytes += w[k]->nbytes;
                        }
                }
        uint64_t embed_params = mx_tensor_elems(m->embed);
        uint64_t row_bytes = m->embed->nbytes / c->vocab_size;
        bool tied = m->lm_head == m->embed;
        fp->active_params = fp->params - expert_params +
                            expert_params / c->n_experts * c->n_experts_per_tok -
                            (tied ? 0 : embed_params - c->hidden_size);
        fp->active_bytes = fp->bytes - expert_bytes +
                           expert_bytes / c->n_experts * c->n_experts_per_tok -
                           (tied ? 0 : m->embed->nbytes - row_bytes);
        fp->kv_bytes_per_token = (uint64_t)c->n_layers * 2 * c->n_kv_heads * c->head_dim * 2;
}

int mx_model_copy_dense(mx_model *m, mx_error *err) {
        model_priv *p = m->priv;
        if (p->dense_copy || m->n_files == 0)
                return 0;
        _cleanup_free_ bool *expert = calloc(m->n_tensors ? m->n_tensors : 1, sizeof(bool));
        if (!expert)
                return mx_error_set(err, -ENOMEM, "out of memory");
        size_t per_layer = (size_t)m->cfg.n_experts * 3;
        for (size_t i = 0; i < (size_t)m->cfg.n_layers * per_layer; i++)
                expert[p->experts[i] - m->tensors] = true;
        uint64_t total = 0;
        for (size_t i = 0; i < m->n_tensors; i++)
                if (!expert[i])
                        total += (m->tensors[i].nbytes + 63) / 64 * 64;
        void *blob = NULL;
        if (posix_memalign(&blob, 64, total ? total : 1) != 0)
                return mx_error_set(err, -ENOMEM, "out of memory for the %.2f GiB of weights besides the experts",
                                    (double)total / (1u << 30));
        uint8_t *at = blob;
        for (size_t i = 0; i < m->n_tensors; i++) {
                mx_tensor *t = &m->tensors[i];
                if (expert[i])
                        continue;
                memcpy(at, t->data, t->nbytes);
                t->data = at;
                at += (t->nbytes + 63) / 64 * 64;
        }
        p->dense_copy = blob;
        return 0;
}
