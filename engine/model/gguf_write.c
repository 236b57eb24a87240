/* Writing a model as a GGUF file (version 3) that llama.cpp and our own
 * loader read: architecture "llama" with the llama.* keys llama.cpp's
 * converter writes for Mixtral, general.file_type for the mix of tensor
 * types, the tokenizer's vocabulary (tokenizer.ggml.*), and the tensors
 * under llama.cpp's names: a layer's experts merged into one 3-D
 * blk.N.ffn_{gate,down,up}_exps.weight when they share a type (each
 * expert its own blk.N.ffn_gate.E.weight otherwise), q/k rows in
 * llama.cpp's interleaved RoPE order whatever order the source holds, and
 * every matrix in the type it has (block formats byte for byte); norms
 * in F32 as llama.cpp's converter stores them (exactly: the engine reads
 * them as F32 anyway). Tensors
 * follow each other in file order, each at a multiple of 32, as llama.cpp
 * requires. The file appears under its name only once complete (written
 * to a temporary name, synced, renamed). Called by whoever saves a model
 * (mixtral-run, the tests). */
#include <stdio.h>
#include <string.h>

#include "model.h"
#include "mx_common.h"
#include "quant.h"
#include "text.h"

#define ALIGNMENT MX_GGUF_DEFAULT_ALIGNMENT

/* One tensor of the file: parts[] written one after the other. */
typedef struct out_tensor {
        char name[MX_GGUF_MAX_NAME + 1];
        mx_dtype dtype;
        uint32_t ndim;
        uint64_t ne[MX_MAX_DIMS];   /* ggml's order: ne[0] is the row */
        uint64_t nbytes, offset;    /* offset from the start of the data */
        const mx_tensor *const *parts; /* [n_parts] */
        uint32_t n_parts;
        bool rope;                  /* q/k: rows into GGUF's RoPE order */
        bool to_f32;                /* a norm stored in 16 bits, widened */
} out_tensor;

typedef struct writer {
        const mx_model *m;
        const mx_tokenizer *tok;
        out_tensor *t; /* [n] */
        size_t n;
        mx_buf head;   /* header, metadata, tensor infos, padding */
        uint64_t n_kv;
        bool oom;      /* an append to head failed: the header is not whole */
        uint64_t total, done; /* bytes of tensor data, for progress */
        void (*progress)(uint64_t, uint64_t, void *);
        void *arg;
} writer;

/* ---- the header's encoding: appends that remember a failure ------------------ */

static void put(writer *w, const void *p, size_t n) {
        w->oom |= mx_buf_append(&w->head, p, n) < 0;
}

static void put_u32(writer *w, uint32_t v) {
        put(w, &v, 4);
}

static void put_u64(writer *w, uint64_t v) {
        put(w, &v, 8);
}

static void put_str(writer *w, const char *s, size_t len) {
        put_u64(w, len);
        put(w, s, len);
}

static void put_key(writer *w, const char *key, uint32_t type) {
        put_str(w, key, strlen(key));
        put_u32(w, type);
        w->n_kv++;
}

static void kv_u32(writer *w, const char *key, uint32_t v) {
        put_key(w, key, MX_GGUF_U32);
        put_u32(w, v);
}

static void kv_f32(writer *w, const char *key, double v) {
        float f = (float)v;
        put_key(w, key, MX_GGUF_F32);
        put(w, &f, 4);
}

static void kv_bool(writer *w, const char *key, bool v) {
        uint8_t b = v;
        put_key(w, key, MX_GGUF_BOOL);
        put(w, &b, 1);
}

static void kv_str(writer *w, const char *key, const char *s) {
        put_key(w, key, MX_GGUF_STRING);
        put_str(w, s, strlen(s));
}

static void kv_array(writer *w, const char *key, uint32_t elem, uint64_t n) {
        put_key(w, key, MX_GGUF_ARRAY);
        put_u32(w, elem);
        put_u64(w, n);
}

/* ---- the tensors ---------------------------------------------------------------- */

static void add(writer *w, const char *name, const mx_tensor *const *parts, uint32_t n_parts, bool rope) {
        const mx_tensor *t = parts[0];
        out_tensor *o = &w->t[w->n++];
        snprintf(o->name, sizeof(o->name), "%s", name);
        o->dtype = t->dtype;
        o->parts = parts;
        o->n_parts = n_parts;
        o->rope = rope;
        o->to_f32 = t->ndim == 1 && t->dtype != MX_DTYPE_F32;
        o->ndim = t->ndim + (n_parts > 1);
        for (uint32_t i = 0; i < t->ndim; i++)
                o->ne[i] = t->shape[t->ndim - 1 - i];
        if (n_parts > 1)
                o->ne[t->ndim] = n_parts;
        o->nbytes = 0;
        for (uint32_t i = 0; i < n_parts; i++)
                o->nbytes += parts[i]->nbytes;
        if (o->to_f32)
                o->dtype = MX_DTYPE_F32, o->nbytes = 4 * t->shape[0];
}

static bool same_dtype(const mx_tensor *const *v, uint32_t n) {
        for (uint32_t i = 1; i < n; i++)
                if (v[i]->dtype != v[0]->dtype)
                        return false;
        return true;
}

/* A layer's w1, w2 or w3 experts: merged when they share a type. */
static void add_experts(writer *w, uint32_t L, const mx_tensor *const *v, const char *what) {
        char name[64];
        uint32_t n = w->m->cfg.n_experts;
        if (same_dtype(v, n)) {
                snprintf(name, sizeof(name), "blk.%u.ffn_%s_exps.weight", L, what);
                add(w, name, v, n, false);
                return;
        }
        for (uint32_t e = 0; e < n; e++) {
                snprintf(name, sizeof(name), "blk.%u.ffn_%s.%u.weight", L, what, e);
                add(w, name, &v[e], 1, false);
        }
}

static void add_layer(writer *w, uint32_t L) {
        const mx_layer *ly = &w->m->layers[L];
        static const char *const names[] = {"attn_norm", "attn_q", "attn_k", "attn_v", "attn_output",
                                            "ffn_norm", "ffn_gate_inp"};
        const mx_tensor *const *dense[] = {&ly->attn_norm, &ly->wq, &ly->wk, &ly->wv, &ly->wo,
                                           &ly->ffn_norm, &ly->router};
        char name[64];
        for (size_t i = 0; i < MX_ELEMENTSOF(names); i++) {
                snprintf(name, sizeof(name), "blk.%u.%s.weight", L, names[i]);
                add(w, name, dense[i], 1, dense[i] == &ly->wq || dense[i] == &ly->wk);
        }
        add_experts(w, L, ly->w1, "gate");
        add_experts(w, L, ly->w2, "down");
        add_experts(w, L, ly->w3, "up");
}

static int list_tensors(writer *w, const char *path, mx_error *err) {
        const mx_model *m = w->m;
        size_t most = 3 + (size_t)m->cfg.n_layers * (7 + 3 * (size_t)m->cfg.n_experts);
        if (!(w->t = calloc(most, sizeof(*w->t))))
                return mx_error_set(err, -ENOMEM, "out of memory");
        add(w, "token_embd.weight", &m->embed, 1, false);
        add(w, "output_norm.weight", &m->norm, 1, false);
        if (m->lm_head != m->embed)
                add(w, "output.weight", &m->lm_head, 1, false);
        for (uint32_t L = 0; L < m->cfg.n_layers; L++)
                add_layer(w, L);
        uint64_t at = 0;
        for (size_t i = 0; i < w->n; i++) {
                for (uint32_t k = 0; k < w->t[i].n_parts; k++)
                        if (!w->t[i].parts[k]->data)
                                return mx_error_set(err, -EINVAL, "%s: tensor %s has no weights in memory to write",
                                                    path, w->t[i].name);
                w->t[i].offset = at;
                at += (w->t[i].nbytes + ALIGNMENT - 1) / ALIGNMENT * ALIGNMENT;
        }
        w->total = at;
        return 0;
}

/* ---- the metadata ------------------------------------------------------------------ */

/* llama.cpp's file types (llama_ftype) by the type most of the weights
 * have; the K types say _M when Q6_K is there too, as llama-quantize's
 * mixes do. */
static uint32_t file_type(const mx_model *m) {
        uint64_t bytes[MX_DTYPE_COUNT] = {0};
        for (size_t i = 0; i < m->n_tensors; i++)
                if (m->tensors[i].ndim >= 2)
                        bytes[m->tensors[i].dtype] += m->tensors[i].nbytes;
        mx_dtype most = MX_DTYPE_F32;
        for (int t = 0; t < MX_DTYPE_COUNT; t++)
                if (bytes[t] > bytes[most])
                        most = (mx_dtype)t;
        bool q6 = bytes[MX_DTYPE_Q6_K] > 0;
        static const uint32_t ftype[MX_DTYPE_COUNT] = {
                [MX_DTYPE_F32] = 0, [MX_DTYPE_F16] = 1, [MX_DTYPE_BF16] = 32, [MX_DTYPE_Q8_0] = 7,
                [MX_DTYPE_Q4_0] = 2, [MX_DTYPE_Q4_K] = 14, [MX_DTYPE_Q5_K] = 16, [MX_DTYPE_Q6_K] = 18,
        };
        return ftype[most] + (q6 && (most == MX_DTYPE_Q4_K || most == MX_DTYPE_Q5_K));
}

static bool any_block_type(const mx_model *m) {
        for (size_t i = 0; i < m->n_tensors; i++)
                if (mx_dtype_is_block(m->tensors[i].dtype))
                        return true;
        return false;
}

static void put_config(writer *w) {
        const mx_config *c = &w->m->cfg;
        kv_str(w, "general.architecture", "llama");
        kv_u32(w, "general.alignment", ALIGNMENT);
        kv_u32(w, "general.file_type", file_type(w->m));
        if (any_block_type(w->m))
                kv_u32(w, "general.quantization_version", 2);
        kv_u32(w, "llama.vocab_size", c->vocab_size);
        if (c->max_position_embeddings)
                kv_u32(w, "llama.context_length", c->max_position_embeddings);
        kv_u32(w, "llama.embedding_length", c->hidden_size);
        kv_u32(w, "llama.feed_forward_length", c->intermediate_size);
        kv_u32(w, "llama.block_count", c->n_layers);
        kv_u32(w, "llama.attention.head_count", c->n_heads);
        kv_u32(w, "llama.attention.head_count_kv", c->n_kv_heads);
        if ((uint64_t)c->head_dim * c->n_heads != c->hidden_size) {
                kv_u32(w, "llama.attention.key_length", c->head_dim);
                kv_u32(w, "llama.attention.value_length", c->head_dim);
        }
        if (c->sliding_window)
                kv_u32(w, "llama.attention.sliding_window", c->sliding_window);
        kv_u32(w, "llama.rope.dimension_count", c->head_dim);
        kv_f32(w, "llama.rope.freq_base", c->rope_theta);
        kv_f32(w, "llama.attention.layer_norm_rms_epsilon", c->rms_norm_eps);
        kv_u32(w, "llama.expert_count", c->n_experts);
        kv_u32(w, "llama.expert_used_count", c->n_experts_per_tok);
}

/* What GGUF cannot say is refused rather than lost. */
static int check_tokenizer(const writer *w, const char *path, mx_error *err) {
        mx_tokenizer_info ti;
        mx_tokenizer_get_info(w->tok, &ti);
        if (mx_tokenizer_vocab_size(w->tok) != w->m->cfg.vocab_size)
                return mx_error_set(err, -EINVAL, "%s: the tokenizer has %u pieces but the model a vocabulary of %u",
                                    path, mx_tokenizer_vocab_size(w->tok), w->m->cfg.vocab_size);
        if (!ti.escape_whitespaces || strcmp(ti.unk_surface, " \xE2\x81\x87 ") != 0)
                return mx_error_set(err, -EOPNOTSUPP,
                                    "%s: GGUF cannot record this tokenizer's settings (spaces not escaped, or "
                                    "another spelling of the unknown piece)", path);
        return 0;
}

static void put_vocab(writer *w) {
        const mx_tokenizer *tok = w->tok;
        mx_tokenizer_info ti;
        mx_tokenizer_get_info(tok, &ti);
        uint32_t n = mx_tokenizer_vocab_size(tok);
        kv_str(w, "tokenizer.ggml.model", "llama");
        kv_str(w, "tokenizer.ggml.pre", "default");
        kv_array(w, "tokenizer.ggml.tokens", MX_GGUF_STRING, n);
        for (uint32_t i = 0; i < n; i++) {
                size_t len;
                const char *s = mx_tokenizer_piece(tok, (int32_t)i, &len);
                put_str(w, s, len);
        }
        kv_array(w, "tokenizer.ggml.scores", MX_GGUF_F32, n);
        for (uint32_t i = 0; i < n; i++) {
                float f = mx_tokenizer_score(tok, (int32_t)i);
                put(w, &f, 4);
        }
        kv_array(w, "tokenizer.ggml.token_type", MX_GGUF_I32, n);
        for (uint32_t i = 0; i < n; i++)
                put_u32(w, (uint32_t)mx_tokenizer_piece_type(tok, (int32_t)i));
        static const char *const keys[] = {"tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id",
                                           "tokenizer.ggml.unknown_token_id",
                                           "tokenizer.ggml.padding_token_id"};
        const int32_t ids[] = {ti.bos, ti.eos, ti.unk, ti.pad};
        for (size_t i = 0; i < MX_ELEMENTSOF(keys); i++)
                if (ids[i] >= 0)
                        kv_u32(w, keys[i], (uint32_t)ids[i]);
        kv_bool(w, "tokenizer.ggml.add_bos_token", ti.add_bos);
        kv_bool(w, "tokenizer.ggml.add_eos_token", ti.add_eos);
        kv_bool(w, "tokenizer.ggml.add_space_prefix", ti.add_space_prefix);
        kv_bool(w, "tokenizer.ggml.remove_extra_whitespaces", ti.remove_extra_whitespaces);
}

static void put_infos(writer *w) {
        static const uint8_t zeros[ALIGNMENT];
        for (size_t i = 0; i < w->n; i++) {
                const out_tensor *o = &w->t[i];
                put_str(w, o->name, strlen(o->name));
                put_u32(w, o->ndim);
                for (uint32_t d = 0; d < o->ndim; d++)
                        put_u64(w, o->ne[d]);
                put_u32(w, mx_gguf_ggml_type(o->dtype));
                put_u64(w, o->offset);
        }
        put(w, zeros, (ALIGNMENT - w->head.n % ALIGNMENT) % ALIGNMENT);
}

/* The header through the tensor infos; the metadata count goes in once known. */
static int build_head(writer *w) {
        put(w, "GGUF", 4);
        put_u32(w, 3);
        put_u64(w, w->n);
        size_t at = w->head.n;
        put_u64(w, 0);
        put_config(w);
        if (w->tok)
                put_vocab(w);
        put_infos(w);
        if (w->oom)
                return -ENOMEM;
        memcpy(w->head.p + at, &w->n_kv, 8);
        return 0;
}

/* ---- the data ------------------------------------------------------------------------- */

/* HF's half-split q/k rows into llama.cpp's interleaved order: GGUF row
 * 2j of a head is HF row j, row 2j+1 HF row j + head_dim/2. */
static uint64_t hf_row(uint64_t s, uint64_t head_dim) {
        uint64_t head = s / head_dim, j = s % head_dim;
        return head * head_dim + (j % 2 ? head_dim / 2 + j / 2 : j / 2);
}

static int write_permuted(int fd, const mx_tensor *t, uint32_t head_dim) {
        uint64_t rows = t->shape[0], row_bytes = t->nbytes / rows;
        _cleanup_free_ uint8_t *buf = malloc(t->nbytes);
        if (!buf)
                return -ENOMEM;
        /* (mx_tensor_row gives HF's order whatever order t is stored in) */
        for (uint64_t s = 0; s < rows; s++)
                memcpy(buf + s * row_bytes, mx_tensor_row(t, hf_row(s, head_dim)), row_bytes);
        return mx_write_all(fd, buf, t->nbytes);
}

static int write_f32(int fd, const mx_tensor *t) {
        _cleanup_free_ float *buf = malloc(4 * t->shape[0]);
        if (!buf)
                return -ENOMEM;
        for (uint64_t i = 0; i < t->shape[0]; i++)
                buf[i] = mx_element_f32(t->data, t->dtype, i);
        return mx_write_all(fd, buf, 4 * t->shape[0]);
}

static int write_part(int fd, const writer *w, const out_tensor *o, const mx_tensor *t) {
        if (o->rope)
                return write_permuted(fd, t, w->m->cfg.head_dim);
        return o->to_f32 ? write_f32(fd, t) : mx_write_all(fd, t->data, t->nbytes);
}

static int write_data(int fd, void *arg) {
        writer *w = arg;
        static const uint8_t zeros[ALIGNMENT];
        int r = mx_write_all(fd, w->head.p, w->head.n);
        for (size_t i = 0; r == 0 && i < w->n; i++) {
                const out_tensor *o = &w->t[i];
                for (uint32_t k = 0; r == 0 && k < o->n_parts; k++)
                        r = write_part(fd, w, o, o->parts[k]);
                if (r == 0)
                        r = mx_write_all(fd, zeros, (ALIGNMENT - o->nbytes % ALIGNMENT) % ALIGNMENT);
                w->done += o->nbytes;
                if (r == 0 && w->progress)
                        w->progress(w->done, w->total, w->arg);
        }
        return r;
}

int mx_gguf_write_model(const mx_model *m, const mx_tokenizer *tok, const char *path,
                        void (*progress)(uint64_t, uint64_t, void *), void *arg, mx_error *err) {
        writer w = {.m = m, .tok = tok, .progress = progress, .arg = arg};
        int r = list_tensors(&w, path, err);
        if (r == 0 && tok)
                r = check_tokenizer(&w, path, err);
        if (r == 0 && build_head(&w) < 0)
                r = mx_error_set(err, -ENOMEM, "%s: out of memory", path);
        if (r == 0)
                r = mx_write_atomic(path, write_data, &w, err);
        free(w.t);
        mx_buf_free(&w.head);
        return r;
}
