/* Opening checkpoint directories of both layouts, written as real files
 * under a temporary directory: what a good checkpoint binds to, and that
 * every way a directory can be wrong is refused with one line naming the
 * file (and the key or tensor) at fault.
 *
 * Each case builds a checkpoint in memory (tensors with distinct bytes and
 * a config held as key/value JSON fragments), changes what it tests, writes
 * it to a directory of its own and opens that. */
#include <fcntl.h>
#include <ftw.h>
#include <jansson.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>

#include "mixtral.h"
#include "test_util.h"

#define MAX_TENSORS 64
#define MAX_KEYS 32
#define MAX_FILES 4
#define INDEX_FILE "model.safetensors.index.json"

typedef enum kind {
        K_EMBED, K_NORM, K_LM_HEAD,
        K_ATTN_NORM, K_WQ, K_WK, K_WV, K_WO, K_FFN_NORM, K_ROUTER,
        K_W1, K_W2, K_W3,
        K_EXTRA, /* not part of the architecture */
} kind;

typedef struct dims {
        uint32_t vocab, hidden, inter, layers, heads, kv_heads, head_dim, experts, top_k;
} dims;

/* The tiny Mixtral every case starts from. */
static const dims tiny = {16, 8, 12, 2, 2, 1, 4, 4, 2};

typedef struct spec {
        char name[128];
        kind kind;
        uint32_t layer, expert;
        mx_dtype dtype;
        uint32_t ndim;
        uint64_t shape[2];
        uint8_t *data; /* NULL in a sparse checkpoint */
        size_t file;   /* index into ckpt.files */
} spec;

typedef struct kv {
        char key[64];
        char val[160];
} kv;

typedef struct ckpt {
        mx_layout layout;
        dims d;
        bool sparse;
        spec t[MAX_TENSORS];
        size_t n;
        kv cfg[MAX_KEYS];
        size_t n_cfg;
        const char *raw_config; /* written instead of cfg when set */
        const char *files[MAX_FILES];
        size_t n_files;
        bool index;             /* write model.safetensors.index.json */
        json_t *index_edits;    /* name -> file name, or null to leave it out */
        uint64_t seed;
} ckpt;

static char base[64];

/* ---- tensors ---------------------------------------------------------------- */

typedef struct layout_names {
        const char *embed, *norm, *lm_head, *layer, *experts;
        const char *in_layer[K_ROUTER - K_ATTN_NORM + 1];
} layout_names;

static const layout_names hf_names = {
        "model.embed_tokens.weight", "model.norm.weight", "lm_head.weight", "model.layers.",
        "block_sparse_moe.experts.",
        {"input_layernorm.weight", "self_attn.q_proj.weight", "self_attn.k_proj.weight",
         "self_attn.v_proj.weight", "self_attn.o_proj.weight", "post_attention_layernorm.weight",
         "block_sparse_moe.gate.weight"},
};

static const layout_names consolidated_names = {
        "tok_embeddings.weight", "norm.weight", "output.weight", "layers.", "feed_forward.experts.",
        {"attention_norm.weight", "attention.wq.weight", "attention.wk.weight",
         "attention.wv.weight", "attention.wo.weight", "ffn_norm.weight",
         "feed_forward.gate.weight"},
};

static void tensor_name(mx_layout layout, kind k, uint32_t L, uint32_t e, char *buf, size_t size) {
        const layout_names *nm = layout == MX_LAYOUT_HF ? &hf_names : &consolidated_names;
        if (k == K_EMBED || k == K_NORM || k == K_LM_HEAD)
                snprintf(buf, size, "%s",
                         k == K_EMBED ? nm->embed : k == K_NORM ? nm->norm : nm->lm_head);
        else if (k >= K_W1 && k <= K_W3)
                snprintf(buf, size, "%s%u.%s%u.w%d.weight", nm->layer, L, nm->experts, e,
                         (int)(k - K_W1) + 1);
        else
                snprintf(buf, size, "%s%u.%s", nm->layer, L, nm->in_layer[k - K_ATTN_NORM]);
}

/* [rows] when cols is 0, else [rows, cols], as docs/model-files.md gives. */
static void tensor_shape(const dims *d, kind k, uint64_t *rows, uint64_t *cols) {
        uint64_t h = d->hidden, q = (uint64_t)d->heads * d->head_dim,
                 kvd = (uint64_t)d->kv_heads * d->head_dim;
        const uint64_t shapes[][2] = {
                [K_EMBED] = {d->vocab, h}, [K_NORM] = {h, 0},       [K_LM_HEAD] = {d->vocab, h},
                [K_ATTN_NORM] = {h, 0},    [K_WQ] = {q, h},         [K_WK] = {kvd, h},
                [K_WV] = {kvd, h},         [K_WO] = {h, q},         [K_FFN_NORM] = {h, 0},
                [K_ROUTER] = {d->experts, h}, [K_W1] = {d->inter, h}, [K_W2] = {h, d->inter},
                [K_W3] = {d->inter, h},
        };
        *rows = shapes[k][0];
        *cols = shapes[k][1];
}

static uint64_t spec_elems(const spec *s) {
        return s->ndim == 1 ? s->shape[0] : s->shape[0] * s->shape[1];
}

static uint64_t spec_bytes(const spec *s) {
        return spec_elems(s) * mx_dtype_block_bytes(s->dtype);
}

/* Distinct bytes per tensor (xorshift, seeded per tensor), so a pointer to
 * the wrong tensor or row cannot compare equal by accident. */
static void fill(ckpt *ck, spec *s) {
        free(s->data);
        s->data = NULL;
        if (ck->sparse)
                return;
        uint64_t n = spec_bytes(s), x = ++ck->seed * 0x9E3779B97F4A7C15ull;
        s->data = malloc(n);
        for (uint64_t i = 0; i < n; i++) {
                x ^= x << 13, x ^= x >> 7, x ^= x << 17;
                s->data[i] = (uint8_t)(x >> 24);
        }
}

static spec *add_tensor(ckpt *ck, const char *name, mx_dtype dt, uint64_t rows, uint64_t cols) {
        if (ck->n == MAX_TENSORS)
                abort();
        spec *s = &ck->t[ck->n++];
        *s = (spec){.kind = K_EXTRA, .dtype = dt, .ndim = cols ? 2 : 1, .shape = {rows, cols}};
        snprintf(s->name, sizeof(s->name), "%s", name);
        fill(ck, s);
        return s;
}

static void add_arch_tensor(ckpt *ck, kind k, uint32_t L, uint32_t e) {
        char name[128];
        uint64_t rows, cols;
        tensor_name(ck->layout, k, L, e, name, sizeof(name));
        tensor_shape(&ck->d, k, &rows, &cols);
        spec *s = add_tensor(ck, name, MX_DTYPE_BF16, rows, cols);
        s->kind = k, s->layer = L, s->expert = e;
}

static spec *find_tensor(ckpt *ck, const char *name) {
        for (size_t i = 0; i < ck->n; i++)
                if (strcmp(ck->t[i].name, name) == 0)
                        return &ck->t[i];
        fprintf(stderr, "test bug: no tensor %s in the checkpoint\n", name);
        abort();
}

static void drop_tensor(ckpt *ck, const char *name) {
        spec *s = find_tensor(ck, name);
        free(s->data);
        memmove(s, s + 1, (size_t)(&ck->t[ck->n] - (s + 1)) * sizeof(*s));
        ck->n--;
}

static void reshape(ckpt *ck, const char *name, mx_dtype dt, uint64_t rows, uint64_t cols) {
        spec *s = find_tensor(ck, name);
        s->dtype = dt, s->ndim = cols ? 2 : 1, s->shape[0] = rows, s->shape[1] = cols;
        fill(ck, s);
}

/* ---- configuration ---------------------------------------------------------- */

static kv *cfg_find(ckpt *ck, const char *key) {
        for (size_t i = 0; i < ck->n_cfg; i++)
                if (strcmp(ck->cfg[i].key, key) == 0)
                        return &ck->cfg[i];
        return NULL;
}

/* Appends even when the key is there: that is how a duplicate is made. */
static void cfg_add(ckpt *ck, const char *key, const char *val) {
        if (ck->n_cfg == MAX_KEYS)
                abort();
        kv *p = &ck->cfg[ck->n_cfg++];
        snprintf(p->key, sizeof(p->key), "%s", key);
        snprintf(p->val, sizeof(p->val), "%s", val);
}

static void cfg_set(ckpt *ck, const char *key, const char *val) {
        kv *p = cfg_find(ck, key);
        if (p)
                snprintf(p->val, sizeof(p->val), "%s", val);
        else
                cfg_add(ck, key, val);
}

static void cfg_setu(ckpt *ck, const char *key, uint32_t v) {
        char s[16];
        snprintf(s, sizeof(s), "%u", v);
        cfg_set(ck, key, s);
}

static void cfg_drop(ckpt *ck, const char *key) {
        kv *p = cfg_find(ck, key);
        if (!p)
                abort();
        memmove(p, p + 1, (size_t)(&ck->cfg[ck->n_cfg] - (p + 1)) * sizeof(*p));
        ck->n_cfg--;
}

static void hf_config(ckpt *ck) {
        const dims *d = &ck->d;
        cfg_set(ck, "architectures", "[\"MixtralForCausalLM\"]");
        cfg_set(ck, "model_type", "\"mixtral\"");
        cfg_set(ck, "hidden_act", "\"silu\"");
        cfg_setu(ck, "vocab_size", d->vocab);
        cfg_setu(ck, "hidden_size", d->hidden);
        cfg_setu(ck, "intermediate_size", d->inter);
        cfg_setu(ck, "num_hidden_layers", d->layers);
        cfg_setu(ck, "num_attention_heads", d->heads);
        cfg_setu(ck, "num_key_value_heads", d->kv_heads);
        cfg_setu(ck, "num_local_experts", d->experts);
        cfg_setu(ck, "num_experts_per_tok", d->top_k);
        cfg_setu(ck, "max_position_embeddings", 64);
        cfg_set(ck, "rope_theta", "1000000.0");
        cfg_set(ck, "rms_norm_eps", "1e-05");
        cfg_set(ck, "sliding_window", "null");
        cfg_set(ck, "bos_token_id", "1");
        cfg_set(ck, "eos_token_id", "2");
        cfg_set(ck, "tie_word_embeddings", "false");
        cfg_set(ck, "torch_dtype", "\"bfloat16\"");
}

static void params_config(ckpt *ck) {
        const dims *d = &ck->d;
        char moe[96];
        cfg_setu(ck, "dim", d->hidden);
        cfg_setu(ck, "n_layers", d->layers);
        cfg_setu(ck, "head_dim", d->head_dim);
        cfg_setu(ck, "hidden_dim", d->inter);
        cfg_setu(ck, "n_heads", d->heads);
        cfg_setu(ck, "n_kv_heads", d->kv_heads);
        cfg_set(ck, "norm_eps", "1e-05");
        cfg_setu(ck, "vocab_size", d->vocab);
        cfg_set(ck, "rope_theta", "1000000.0");
        snprintf(moe, sizeof(moe), "{\"num_experts\": %u, \"num_experts_per_tok\": %u}",
                 d->experts, d->top_k);
        cfg_set(ck, "moe", moe);
}

/* ---- building and writing ----------------------------------------------------- */

/* Tensors in HF file order: embedding, layers, final norm, lm_head. */
static void ckpt_init(ckpt *ck, mx_layout layout, const dims *d, bool sparse) {
        *ck = (ckpt){.layout = layout, .d = *d, .sparse = sparse, .n_files = 1};
        ck->files[0] = layout == MX_LAYOUT_HF ? "model.safetensors" : "consolidated.safetensors";
        ck->index_edits = json_object();
        add_arch_tensor(ck, K_EMBED, 0, 0);
        for (uint32_t L = 0; L < d->layers; L++) {
                for (kind k = K_ATTN_NORM; k <= K_ROUTER; k++)
                        add_arch_tensor(ck, k, L, 0);
                for (uint32_t e = 0; e < d->experts; e++)
                        for (kind k = K_W1; k <= K_W3; k++)
                                add_arch_tensor(ck, k, L, e);
        }
        add_arch_tensor(ck, K_NORM, 0, 0);
        add_arch_tensor(ck, K_LM_HEAD, 0, 0);
        if (layout == MX_LAYOUT_HF)
                hf_config(ck);
        else
                params_config(ck);
}

static void ckpt_free(ckpt *ck) {
        for (size_t i = 0; i < ck->n; i++)
                free(ck->t[i].data);
        json_decref(ck->index_edits);
}

static bool in_layer(kind k) {
        return k >= K_ATTN_NORM && k <= K_W3;
}

/* Embedding and layer 0 in the first shard, the rest in the second, as
 * HF's sharding by size would roughly do. */
static void ckpt_shard(ckpt *ck, const char *a, const char *b) {
        ck->files[0] = a, ck->files[1] = b, ck->n_files = 2;
        for (size_t i = 0; i < ck->n; i++) {
                const spec *s = &ck->t[i];
                ck->t[i].file = s->kind == K_EMBED || (in_layer(s->kind) && s->layer == 0) ? 0 : 1;
        }
}

static void ckpt_shard_hf(ckpt *ck) {
        ckpt_shard(ck, "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors");
        ck->index = true;
}

static void index_set(ckpt *ck, const char *tensor, const char *file) {
        json_object_set_new(ck->index_edits, tensor, file ? json_string(file) : json_null());
}

static void path_in(char *buf, size_t size, const char *dir, const char *name) {
        if ((size_t)snprintf(buf, size, "%s/%s", dir, name) >= size)
                abort(); /* a test bug: every path here is short */
}

static int write_text(const char *dir, const char *name, const char *text) {
        char path[512];
        path_in(path, sizeof(path), dir, name);
        FILE *f = fopen(path, "we");
        if (!f)
                return -errno;
        fputs(text, f);
        return fclose(f) == 0 ? 0 : -EIO;
}

static int write_config(const ckpt *ck, const char *dir) {
        const char *name = ck->layout == MX_LAYOUT_HF ? "config.json" : "params.json";
        if (ck->raw_config)
                return write_text(dir, name, ck->raw_config);
        mx_buf b = {0};
        mx_buf_append(&b, "{", 1);
        for (size_t i = 0; i < ck->n_cfg; i++) {
                char line[256];
                int k = snprintf(line, sizeof(line), "%s\n  \"%s\": %s", i ? "," : "",
                                 ck->cfg[i].key, ck->cfg[i].val);
                mx_buf_append(&b, line, (size_t)k);
        }
        mx_buf_append(&b, "\n}\n", 3);
        int r = write_text(dir, name, b.p);
        mx_buf_free(&b);
        return r;
}

static int write_index(const ckpt *ck, const char *dir) {
        json_t *map = json_object();
        uint64_t total = 0;
        for (size_t i = 0; i < ck->n; i++) {
                json_object_set_new(map, ck->t[i].name, json_string(ck->files[ck->t[i].file]));
                total += spec_bytes(&ck->t[i]);
        }
        const char *name;
        json_t *v;
        json_object_foreach(ck->index_edits, name, v) {
                if (json_is_null(v))
                        json_object_del(map, name);
                else
                        json_object_set(map, name, v);
        }
        json_t *root = json_pack("{s:{s:I},s:o}", "metadata", "total_size", (json_int_t)total,
                                 "weight_map", map);
        char *text = json_dumps(root, JSON_INDENT(2));
        int r = write_text(dir, INDEX_FILE, text);
        free(text);
        json_decref(root);
        return r;
}

static int write_shard(const ckpt *ck, const char *dir, size_t f, mx_error *err) {
        mx_tensor_data td[MAX_TENSORS];
        size_t n = 0;
        char path[512];
        for (size_t i = 0; i < ck->n; i++) {
                const spec *s = &ck->t[i];
                if (s->file == f)
                        td[n++] = (mx_tensor_data){s->name, s->dtype, s->ndim,
                                                   {s->shape[0], s->shape[1]}, s->data};
        }
        path_in(path, sizeof(path), dir, ck->files[f]);
        return mx_safetensors_write(path, td, n, err);
}

/* Writes ck into base/name (which must not exist) and returns that path. */
static const char *ckpt_write(const ckpt *ck, const char *name, char *dir, size_t size) {
        mx_error err = {0};
        path_in(dir, size, base, name);
        int r = mkdir(dir, 0755) < 0 ? -errno : 0;
        if (r == 0)
                r = write_config(ck, dir);
        for (size_t f = 0; r == 0 && f < ck->n_files; f++)
                r = write_shard(ck, dir, f, &err);
        if (r == 0 && ck->index)
                r = write_index(ck, dir);
        CHECK(r == 0, "%s: cannot write the checkpoint: %s %s", dir, strerror(-r), err.msg);
        return dir;
}

/* ---- opening and checking --------------------------------------------------- */

static mx_model *open_ok(const char *dir) {
        mx_model *m = NULL;
        mx_error err = {0};
        int r = mx_model_open(&m, dir, &err);
        CHECK(r == 0 && m, "%s: mx_model_open: %d %s", dir, r, err.msg);
        return r == 0 ? m : NULL;
}

/* The open must fail with code and a one-line message naming dir/file (or
 * dir when file is NULL) and containing every needle. */
static void vexpect_error(const char *dir, int code, const char *file, va_list ap) {
        mx_model *m = NULL;
        mx_error err = {0};
        char where[512];
        if (file)
                path_in(where, sizeof(where), dir, file);
        else
                snprintf(where, sizeof(where), "%s", dir);
        int r = mx_model_open(&m, dir, &err);
        printf("    %s\n", err.msg); /* the log then shows what a user would see */
        CHECK(r == code && !m, "%s: expected error %d, got %d: %s", dir, code, r, err.msg);
        CHECK(strstr(err.msg, where) && !strchr(err.msg, '\n'), "%s: message does not name %s: %s",
              dir, where, err.msg);
        for (const char *s; (s = va_arg(ap, const char *));)
                CHECK(strstr(err.msg, s), "%s: message lacks [%s]: %s", dir, s, err.msg);
        mx_model_free(m);
}

static void expect_open_error(const char *dir, int code, const char *file, ...) {
        va_list ap;
        va_start(ap, file);
        vexpect_error(dir, code, file, ap);
        va_end(ap);
}

/* Writes ck into base/name and expects the open to fail (see vexpect_error). */
static void expect_error(const ckpt *ck, const char *name, int code, const char *file, ...) {
        char dir[512];
        va_list ap;
        ckpt_write(ck, name, dir, sizeof(dir));
        va_start(ap, file);
        vexpect_error(dir, code, file, ap);
        va_end(ap);
}

static const mx_tensor *bound(const mx_model *m, const spec *s) {
        const mx_layer *ly = in_layer(s->kind) ? &m->layers[s->layer] : NULL;
        switch (s->kind) {
        case K_EMBED: return m->embed;
        case K_NORM: return m->norm;
        case K_LM_HEAD: return m->lm_head;
        case K_ATTN_NORM: return ly->attn_norm;
        case K_WQ: return ly->wq;
        case K_WK: return ly->wk;
        case K_WV: return ly->wv;
        case K_WO: return ly->wo;
        case K_FFN_NORM: return ly->ffn_norm;
        case K_ROUTER: return ly->router;
        case K_W1: return ly->w1[s->expert];
        case K_W2: return ly->w2[s->expert];
        case K_W3: return ly->w3[s->expert];
        case K_EXTRA: break;
        }
        return NULL;
}

/* Every tensor of ck is bound where the architecture wants it, from the
 * file it was written to, with its dtype, shape and bytes. */
static void check_bindings(const mx_model *m, const ckpt *ck, const char *what) {
        CHECK(m->n_tensors == ck->n, "%s: %zu tensors, wrote %zu", what, m->n_tensors, ck->n);
        for (size_t i = 0; i < ck->n; i++) {
                const spec *s = &ck->t[i];
                const mx_tensor *t = bound(m, s);
                CHECK(t && strcmp(t->name, s->name) == 0, "%s: %s is bound to %s", what, s->name,
                      t ? t->name : "nothing");
                if (!t)
                        continue;
                CHECK(strcmp(t->file, ck->files[s->file]) == 0, "%s: %s is in %s, not %s", what,
                      s->name, t->file, ck->files[s->file]);
                CHECK(t->dtype == s->dtype && t->ndim == s->ndim && t->shape[0] == s->shape[0] &&
                              (s->ndim == 1 || t->shape[1] == s->shape[1]) && t->nbytes == spec_bytes(s),
                      "%s: %s has the wrong dtype or shape", what, s->name);
                CHECK(!s->data || memcmp(t->data, s->data, spec_bytes(s)) == 0,
                      "%s: %s: data differ from what was written", what, s->name);
        }
}

static void check_config(const mx_config *c, const dims *d, const char *what) {
        CHECK(c->vocab_size == d->vocab && c->hidden_size == d->hidden &&
                      c->intermediate_size == d->inter && c->n_layers == d->layers &&
                      c->n_heads == d->heads && c->n_kv_heads == d->kv_heads &&
                      c->head_dim == d->head_dim && c->n_experts == d->experts &&
                      c->n_experts_per_tok == d->top_k,
              "%s: dimensions differ from the config", what);
        CHECK(c->rope_theta == 1e6 && c->rms_norm_eps == 1e-5 && c->sliding_window == 0,
              "%s: rope_theta %g, rms_norm_eps %g, sliding_window %u", what, c->rope_theta,
              c->rms_norm_eps, c->sliding_window);
}

static bool is_expert(kind k) {
        return k == K_W1 || k == K_W2 || k == K_W3;
}

/* Worked out from the written shapes: all of the dense weights, top_k of
 * n_experts of the expert weights, one row of an untied embedding. */
static mx_footprint expected_footprint(const ckpt *ck, bool tied) {
        mx_footprint fp = {0};
        uint64_t expert_params = 0, expert_bytes = 0;
        for (size_t i = 0; i < ck->n; i++) {
                const spec *s = &ck->t[i];
                uint64_t n = spec_elems(s), b = spec_bytes(s);
                fp.params += n, fp.bytes += b, fp.bytes_by_dtype[s->dtype] += b;
                if (is_expert(s->kind))
                        expert_params += n, expert_bytes += b;
                else if (s->kind == K_EMBED && !tied)
                        fp.active_params += s->shape[1], fp.active_bytes += b / s->shape[0];
                else
                        fp.active_params += n, fp.active_bytes += b;
        }
        fp.active_params += expert_params * ck->d.top_k / ck->d.experts;
        fp.active_bytes += expert_bytes * ck->d.top_k / ck->d.experts;
        fp.kv_bytes_per_token = (uint64_t)ck->d.layers * 2 /* K and V */ * ck->d.kv_heads *
                                ck->d.head_dim * 2 /* bf16 */;
        return fp;
}

static void check_footprint(const mx_model *m, const ckpt *ck, bool tied, const char *what) {
        mx_footprint got, want = expected_footprint(ck, tied);
        mx_model_footprint(m, &got);
        CHECK(got.params == want.params && got.bytes == want.bytes,
              "%s: params %llu bytes %llu, expected %llu %llu", what,
              (unsigned long long)got.params, (unsigned long long)got.bytes,
              (unsigned long long)want.params, (unsigned long long)want.bytes);
        for (int t = 0; t < 3; t++)
                CHECK(got.bytes_by_dtype[t] == want.bytes_by_dtype[t], "%s: %s bytes %llu, expected %llu",
                      what, mx_dtype_name((mx_dtype)t), (unsigned long long)got.bytes_by_dtype[t],
                      (unsigned long long)want.bytes_by_dtype[t]);
        CHECK(got.active_params == want.active_params && got.active_bytes == want.active_bytes,
              "%s: active params %llu bytes %llu, expected %llu %llu", what,
              (unsigned long long)got.active_params, (unsigned long long)got.active_bytes,
              (unsigned long long)want.active_params, (unsigned long long)want.active_bytes);
        CHECK(got.kv_bytes_per_token == want.kv_bytes_per_token, "%s: kv bytes/token %llu, expected %llu",
              what, (unsigned long long)got.kv_bytes_per_token,
              (unsigned long long)want.kv_bytes_per_token);
}

/* ---- 1-5: checkpoints that open --------------------------------------------- */

static void case_hf_single(void) {
        ckpt ck;
        char dir[512];
        ckpt_init(&ck, MX_LAYOUT_HF, &tiny, false);
        mx_model *m = open_ok(ckpt_write(&ck, "hf-single", dir, sizeof(dir)));
        if (m) {
                CHECK(m->layout == MX_LAYOUT_HF && m->n_files == 1 &&
                              strcmp(m->files[0].name, "model.safetensors") == 0,
                      "hf-single: layout %d, %zu files", m->layout, m->n_files);
                check_config(&m->cfg, &tiny, "hf-single");
                CHECK(m->cfg.max_position_embeddings == 64 && m->cfg.bos_token_id == 1 &&
                              m->cfg.eos_token_id == 2 && !m->cfg.tie_word_embeddings,
                      "hf-single: max_position_embeddings %u, bos %d, eos %d, tied %d",
                      m->cfg.max_position_embeddings, m->cfg.bos_token_id, m->cfg.eos_token_id,
                      m->cfg.tie_word_embeddings);
                check_bindings(m, &ck, "hf-single");
                check_footprint(m, &ck, false, "hf-single");
                /* The tiny model by hand: 3048 parameters, 1776 of them per token. */
                mx_footprint fp;
                mx_model_footprint(m, &fp);
                CHECK(fp.params == 3048 && fp.active_params == 1776 && fp.kv_bytes_per_token == 32,
                      "hf-single: %llu params, %llu active", (unsigned long long)fp.params,
                      (unsigned long long)fp.active_params);
        }
        mx_model_free(m);
        ckpt_free(&ck);
}

static void case_hf_sharded(void) {
        ckpt ck;
        char dir[512];
        ckpt_init(&ck, MX_LAYOUT_HF, &tiny, false);
        ckpt_shard_hf(&ck);
        mx_model *m = open_ok(ckpt_write(&ck, "hf-sharded", dir, sizeof(dir)));
        if (m) {
                CHECK(m->n_files == 2, "hf-sharded: %zu files", m->n_files);
                check_bindings(m, &ck, "hf-sharded");
                check_footprint(m, &ck, false, "hf-sharded");
        }
        mx_model_free(m);
        ckpt_free(&ck);
}

/* Undoes HF's converter for q/k: within each head, HF row j came from
 * stored row 2j (j < hd/2) or 2(j - hd/2) + 1. */
static void interleave_rows(const spec *hf, spec *out, uint32_t hd) {
        uint64_t row = hf->shape[1] * mx_dtype_block_bytes(hf->dtype), half = hd / 2;
        for (uint64_t r = 0; r < hf->shape[0]; r++) {
                uint64_t head = r / hd, j = r % hd;
                uint64_t stored = head * hd + (j < half ? 2 * j : 2 * (j - half) + 1);
                memcpy(out->data + stored * row, hf->data + r * row, row);
        }
}

/* The same weights in the consolidated layout: same tensor order, so the
 * i-th tensor of each is the same weight under its other name. */
static void ckpt_consolidated_from(ckpt *out, const ckpt *hf) {
        ckpt_init(out, MX_LAYOUT_CONSOLIDATED, &hf->d, false);
        for (size_t i = 0; i < hf->n; i++) {
                const spec *s = &hf->t[i];
                if (s->kind == K_WQ || s->kind == K_WK)
                        interleave_rows(s, &out->t[i], hf->d.head_dim);
                else
                        memcpy(out->t[i].data, s->data, spec_bytes(s));
        }
}

/* Row r of every q/k tensor reads the same through mx_tensor_row in both
 * layouts; everything else is byte-identical. */
static void compare_weights(const mx_model *h, const mx_model *c, const ckpt *hck, const ckpt *cck) {
        for (size_t i = 0; i < hck->n; i++) {
                const mx_tensor *th = bound(h, &hck->t[i]), *tc = bound(c, &cck->t[i]);
                if (!th || !tc || th->nbytes != tc->nbytes) {
                        CHECK(false, "consolidated: %s: not bound alike", cck->t[i].name);
                        continue;
                }
                bool qk = hck->t[i].kind == K_WQ || hck->t[i].kind == K_WK;
                CHECK(th->rope_head_dim == 0 && tc->rope_head_dim == (qk ? tiny.head_dim : 0),
                      "consolidated: %s: rope_head_dim %u", tc->name, tc->rope_head_dim);
                if (!qk) {
                        CHECK(memcmp(th->data, tc->data, th->nbytes) == 0,
                              "consolidated: %s differs from %s", tc->name, th->name);
                        continue;
                }
                /* Else the row check below would prove nothing. */
                CHECK(memcmp(th->data, tc->data, th->nbytes) != 0, "consolidated: %s: rows not permuted",
                      tc->name);
                size_t row = th->shape[1] * mx_dtype_block_bytes(th->dtype);
                for (uint64_t r = 0; r < th->shape[0]; r++)
                        CHECK(memcmp(mx_tensor_row(tc, r), mx_tensor_row(th, r), row) == 0,
                              "consolidated: %s row %llu differs from %s", tc->name,
                              (unsigned long long)r, th->name);
        }
}

static void check_consolidated_model(const mx_model *c) {
        CHECK(c->layout == MX_LAYOUT_CONSOLIDATED, "consolidated: layout %d", c->layout);
        check_config(&c->cfg, &tiny, "consolidated");
        CHECK(c->cfg.bos_token_id == -1 && c->cfg.eos_token_id == -1 && !c->cfg.tie_word_embeddings,
              "consolidated: what params.json does not give must be unset");
        /* ... but for the context: mistral-inference's, Mixtral's 32768. */
        CHECK(c->cfg.max_position_embeddings == 32768, "consolidated: context %u without max_seq_len",
              c->cfg.max_position_embeddings);
}

static void case_consolidated(void) {
        ckpt hck, cck;
        char hdir[512], cdir[512];
        ckpt_init(&hck, MX_LAYOUT_HF, &tiny, false);
        ckpt_consolidated_from(&cck, &hck);
        mx_model *h = open_ok(ckpt_write(&hck, "consolidated-hf", hdir, sizeof(hdir)));
        mx_model *c = open_ok(ckpt_write(&cck, "consolidated", cdir, sizeof(cdir)));
        if (h && c) {
                check_consolidated_model(c);
                check_bindings(c, &cck, "consolidated");
                compare_weights(h, c, &hck, &cck);
                check_footprint(c, &cck, false, "consolidated");
        }
        mx_model_free(h);
        mx_model_free(c);

        ckpt_shard(&cck, "consolidated.00.safetensors", "consolidated.01.safetensors");
        c = open_ok(ckpt_write(&cck, "consolidated-split", cdir, sizeof(cdir)));
        if (c) {
                CHECK(c->n_files == 2 && strcmp(c->files[0].name, "consolidated.00.safetensors") == 0 &&
                              strcmp(c->files[1].name, "consolidated.01.safetensors") == 0,
                      "consolidated-split: %zu files", c->n_files);
                check_consolidated_model(c);
                check_bindings(c, &cck, "consolidated-split");
        }
        mx_model_free(c);
        ckpt_free(&hck);
        ckpt_free(&cck);
}

static void case_tied(void) {
        ckpt ck;
        char dir[512];
        ckpt_init(&ck, MX_LAYOUT_HF, &tiny, false);
        cfg_set(&ck, "tie_word_embeddings", "true");
        drop_tensor(&ck, "lm_head.weight");
        mx_model *m = open_ok(ckpt_write(&ck, "tied", dir, sizeof(dir)));
        if (m) {
                CHECK(m->cfg.tie_word_embeddings && m->lm_head == m->embed,
                      "tied: lm_head is not the embedding");
                check_bindings(m, &ck, "tied");
                check_footprint(m, &ck, true, "tied");
        }
        mx_model_free(m);
        ckpt_free(&ck);
}

static void case_mixed_dtypes(void) {
        ckpt ck;
        char dir[512];
        ckpt_init(&ck, MX_LAYOUT_HF, &tiny, false);
        for (size_t i = 0; i < ck.n; i++) {
                spec *s = &ck.t[i];
                if (s->kind == K_NORM || s->kind == K_ATTN_NORM || s->kind == K_FFN_NORM)
                        reshape(&ck, s->name, MX_DTYPE_F32, s->shape[0], 0);
                else if (is_expert(s->kind) && s->layer == 1 && s->expert == 2)
                        reshape(&ck, s->name, MX_DTYPE_F16, s->shape[0], s->shape[1]);
        }
        mx_model *m = open_ok(ckpt_write(&ck, "mixed-dtypes", dir, sizeof(dir)));
        if (m) {
                check_bindings(m, &ck, "mixed-dtypes");
                check_footprint(m, &ck, false, "mixed-dtypes");
                mx_footprint fp;
                mx_model_footprint(m, &fp);
                /* By hand: 5 norms of 8 floats; 3 expert matrices of 96 halves. */
                CHECK(fp.bytes_by_dtype[MX_DTYPE_F32] == 5 * 8 * 4 &&
                              fp.bytes_by_dtype[MX_DTYPE_F16] == 3 * 96 * 2,
                      "mixed-dtypes: F32 %llu F16 %llu bytes",
                      (unsigned long long)fp.bytes_by_dtype[MX_DTYPE_F32],
                      (unsigned long long)fp.bytes_by_dtype[MX_DTYPE_F16]);
        }
        mx_model_free(m);
        ckpt_free(&ck);
}

/* ---- 6-7: configuration errors -------------------------------------------- */

static const char *const required_ints[] = {
        "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
        "num_attention_heads", "num_key_value_heads", "num_local_experts",
        "num_experts_per_tok", "max_position_embeddings",
};

/* The tiny HF checkpoint with key set to val (dropped when val is NULL):
 * config.json must be refused naming the quoted key, with needle. */
static void expect_config_error(const char *what, const char *key, const char *val, int code,
                                const char *needle) {
        ckpt ck;
        char name[96], quoted[80];
        ckpt_init(&ck, MX_LAYOUT_HF, &tiny, false);
        if (val)
                cfg_set(&ck, key, val);
        else
                cfg_drop(&ck, key);
        snprintf(name, sizeof(name), "cfg-%s-%s", what, key);
        snprintf(quoted, sizeof(quoted), "\"%s\"", key);
        expect_error(&ck, name, code, "config.json", quoted, needle, NULL);
        ckpt_free(&ck);
}

static void case_config_keys(void) {
        for (size_t i = 0; i < sizeof(required_ints) / sizeof(required_ints[0]); i++) {
                const char *k = required_ints[i];
                expect_config_error("missing", k, NULL, -EINVAL, "is missing");
                expect_config_error("zero", k, "0", -EINVAL, "is 0, must be positive");
                expect_config_error("negative", k, "-3", -EINVAL, "is -3, must be positive");
                expect_config_error("string", k, "\"8\"", -EINVAL, "is not an integer");
                expect_config_error("float", k, "8.5", -EINVAL, "is not an integer");
        }
        expect_config_error("missing", "rope_theta", NULL, -EINVAL, "is missing");
        expect_config_error("missing", "rms_norm_eps", NULL, -EINVAL, "is missing");
        expect_config_error("zero", "rms_norm_eps", "0", -EINVAL, "is 0, must be in (0, 1]");
        expect_config_error("big", "rms_norm_eps", "2", -EINVAL, "must be in (0, 1]");
        expect_config_error("negative", "rope_theta", "-1", -EINVAL, "is -1, must be in");
        expect_config_error("string", "rope_theta", "\"1e6\"", -EINVAL, "is not a number");
        expect_config_error("huge", "vocab_size", "8388608", -EINVAL, "more than 4194304");
        expect_config_error("llama", "model_type", "\"llama\"", -EOPNOTSUPP,
                            "is \"llama\", expected \"mixtral\"");
        expect_config_error("gelu", "hidden_act", "\"gelu\"", -EOPNOTSUPP, "expected \"silu\"");
        expect_config_error("string", "tie_word_embeddings", "\"yes\"", -EINVAL, "not a boolean");
        expect_config_error("negative", "bos_token_id", "-1", -EINVAL, "not a token id");
}

static void expect_config_text(const char *name, const char *text, const char *needle) {
        ckpt ck;
        ckpt_init(&ck, MX_LAYOUT_HF, &tiny, false);
        ck.raw_config = text;
        expect_error(&ck, name, -EINVAL, "config.json", needle, NULL);
        ckpt_free(&ck);
}

static void case_config_consistency(void) {
        ckpt ck;
        ckpt_init(&ck, MX_LAYOUT_HF, &tiny, false);
        cfg_setu(&ck, "hidden_size", 10);
        cfg_setu(&ck, "num_attention_heads", 4);
        expect_error(&ck, "cfg-not-divisible", -EINVAL, "config.json",
                     "hidden size 10 is not divisible by 4 attention heads", NULL);
        ckpt_free(&ck);

        ckpt_init(&ck, MX_LAYOUT_HF, &tiny, false);
        cfg_setu(&ck, "num_experts_per_tok", 5);
        expect_error(&ck, "cfg-top-k", -EINVAL, "config.json", "top-k of 5 experts, but only 4", NULL);
        ckpt_free(&ck);

        /* head_dim given, so that 8 % 3 is not what gets refused. */
        ckpt_init(&ck, MX_LAYOUT_HF, &tiny, false);
        cfg_setu(&ck, "num_attention_heads", 3);
        cfg_setu(&ck, "num_key_value_heads", 2);
        cfg_setu(&ck, "head_dim", 4);
        expect_error(&ck, "cfg-gqa", -EINVAL, "config.json",
                     "3 attention heads are not a multiple of 2 key/value heads", NULL);
        ckpt_free(&ck);

        ckpt_init(&ck, MX_LAYOUT_HF, &tiny, false);
        cfg_setu(&ck, "head_dim", 3);
        expect_error(&ck, "cfg-odd-head-dim", -EINVAL, "config.json", "head dimension 3 is odd", NULL);
        ckpt_free(&ck);

        ckpt_init(&ck, MX_LAYOUT_HF, &tiny, false);
        cfg_setu(&ck, "eos_token_id", 16);
        expect_error(&ck, "cfg-eos-outside", -EINVAL, "config.json", "outside the vocabulary of 16", NULL);
        ckpt_free(&ck);

        ckpt_init(&ck, MX_LAYOUT_HF, &tiny, false);
        cfg_add(&ck, "hidden_size", "8");
        expect_error(&ck, "cfg-duplicate", -EINVAL, "config.json", "not valid JSON", "duplicate",
                     "hidden_size", NULL);
        ckpt_free(&ck);

        expect_config_text("cfg-not-json", "{\"vocab_size\": 16,", "not valid JSON");
        expect_config_text("cfg-empty", "", "not valid JSON");
        expect_config_text("cfg-array", "[{\"vocab_size\": 16}]", "not a JSON object");
}

static void case_params_errors(void) {
        ckpt ck;
        ckpt_init(&ck, MX_LAYOUT_CONSOLIDATED, &tiny, false);
        cfg_drop(&ck, "moe");
        expect_error(&ck, "params-no-moe", -EOPNOTSUPP, "params.json", "\"moe\"",
                     "not a mixture-of-experts", NULL);
        ckpt_free(&ck);

        ckpt_init(&ck, MX_LAYOUT_CONSOLIDATED, &tiny, false);
        cfg_drop(&ck, "dim");
        expect_error(&ck, "params-no-dim", -EINVAL, "params.json", "\"dim\" is missing", NULL);
        ckpt_free(&ck);

        ckpt_init(&ck, MX_LAYOUT_CONSOLIDATED, &tiny, false);
        cfg_set(&ck, "moe", "{\"num_experts\": 4}");
        expect_error(&ck, "params-no-top-k", -EINVAL, "params.json",
                     "\"num_experts_per_tok\" is missing", NULL);
        ckpt_free(&ck);
}

/* ---- 8: tensors that do not fit ---------------------------------------------- */

#define SHARD1 "model-00001-of-00002.safetensors"
#define SHARD2 "model-00002-of-00002.safetensors"

static void case_tensor_errors(void) {
        ckpt ck;
        const char *w2 = "model.layers.1.block_sparse_moe.experts.3.w2.weight";
        ckpt_init(&ck, MX_LAYOUT_HF, &tiny, false);
        drop_tensor(&ck, w2);
        expect_error(&ck, "missing-expert", -EINVAL, NULL,
                     "tensor \"model.layers.1.block_sparse_moe.experts.3.w2.weight\" is missing", NULL);
        ckpt_free(&ck);

        ckpt_init(&ck, MX_LAYOUT_HF, &tiny, false);
        drop_tensor(&ck, "lm_head.weight");
        expect_error(&ck, "missing-lm-head", -EINVAL, NULL, "tensor \"lm_head.weight\" is missing", NULL);
        ckpt_free(&ck);

        ckpt_init(&ck, MX_LAYOUT_HF, &tiny, false);
        add_tensor(&ck, "model.layers.0.extra.weight", MX_DTYPE_BF16, 8, 0);
        expect_error(&ck, "extra-tensor", -EINVAL, "model.safetensors",
                     "unexpected tensor \"model.layers.0.extra.weight\"", NULL);
        ckpt_free(&ck);

        ckpt_init(&ck, MX_LAYOUT_HF, &tiny, false);
        reshape(&ck, "model.layers.1.self_attn.q_proj.weight", MX_DTYPE_BF16, 4, 8);
        expect_error(&ck, "wrong-shape", -EINVAL, "model.safetensors",
                     "tensor \"model.layers.1.self_attn.q_proj.weight\": shape [4, 8], "
                     "but the config needs [8, 8]", NULL);
        ckpt_free(&ck);

        ckpt_init(&ck, MX_LAYOUT_HF, &tiny, false);
        reshape(&ck, "model.layers.0.block_sparse_moe.experts.1.w2.weight", MX_DTYPE_BF16, 8, 10);
        expect_error(&ck, "wrong-columns", -EINVAL, "model.safetensors",
                     "tensor \"model.layers.0.block_sparse_moe.experts.1.w2.weight\": shape [8, 10], "
                     "but the config needs [8, 12]", NULL);
        ckpt_free(&ck);

        ckpt_init(&ck, MX_LAYOUT_HF, &tiny, false);
        reshape(&ck, "model.norm.weight", MX_DTYPE_F32, 8, 1);
        expect_error(&ck, "wrong-rank", -EINVAL, "model.safetensors",
                     "tensor \"model.norm.weight\": shape [8, 1], but the config needs [8]", NULL);
        ckpt_free(&ck);

        /* The checkpoint is right; the config asks for a bigger model. */
        ckpt_init(&ck, MX_LAYOUT_HF, &tiny, false);
        cfg_setu(&ck, "vocab_size", 17);
        expect_error(&ck, "config-disagrees", -EINVAL, "model.safetensors",
                     "tensor \"model.embed_tokens.weight\": shape [16, 8], but the config needs [17, 8]",
                     NULL);
        ckpt_free(&ck);
}

static void case_index_errors(void) {
        ckpt ck;
        ckpt_init(&ck, MX_LAYOUT_HF, &tiny, false);
        ckpt_shard_hf(&ck);
        add_tensor(&ck, "model.layers.0.input_layernorm.weight", MX_DTYPE_BF16, 8, 0)->file = 1;
        expect_error(&ck, "in-both-shards", -EINVAL, NULL,
                     "tensor \"model.layers.0.input_layernorm.weight\" is in both", SHARD1, SHARD2, NULL);
        ckpt_free(&ck);

        ckpt_init(&ck, MX_LAYOUT_HF, &tiny, false);
        ckpt_shard_hf(&ck);
        index_set(&ck, "model.layers.0.self_attn.v_proj.weight", SHARD2);
        expect_error(&ck, "index-other-shard", -EINVAL, SHARD1,
                     "tensor \"model.layers.0.self_attn.v_proj.weight\" is here but " INDEX_FILE
                     " says " SHARD2, NULL);
        ckpt_free(&ck);

        ckpt_init(&ck, MX_LAYOUT_HF, &tiny, false);
        ckpt_shard_hf(&ck);
        index_set(&ck, "model.layers.1.ghost.weight", SHARD2);
        expect_error(&ck, "index-ghost", -EINVAL, SHARD2,
                     "tensor \"model.layers.1.ghost.weight\" is missing (" INDEX_FILE " names it)", NULL);
        ckpt_free(&ck);

        /* A shard that lost a tensor its index still lists. */
        ckpt_init(&ck, MX_LAYOUT_HF, &tiny, false);
        ckpt_shard_hf(&ck);
        drop_tensor(&ck, "model.layers.1.block_sparse_moe.experts.0.w3.weight");
        index_set(&ck, "model.layers.1.block_sparse_moe.experts.0.w3.weight", SHARD2);
        expect_error(&ck, "index-lost", -EINVAL, SHARD2,
                     "tensor \"model.layers.1.block_sparse_moe.experts.0.w3.weight\" is missing", NULL);
        ckpt_free(&ck);

        ckpt_init(&ck, MX_LAYOUT_HF, &tiny, false);
        ckpt_shard_hf(&ck);
        index_set(&ck, "model.layers.1.post_attention_layernorm.weight", NULL);
        expect_error(&ck, "index-omits", -EINVAL, SHARD2,
                     "tensor \"model.layers.1.post_attention_layernorm.weight\" is not in " INDEX_FILE,
                     NULL);
        ckpt_free(&ck);
}

static void expect_bad_shard_name(const char *name, const char *shard) {
        ckpt ck;
        ckpt_init(&ck, MX_LAYOUT_HF, &tiny, false);
        ckpt_shard_hf(&ck);
        index_set(&ck, "model.norm.weight", shard);
        char needle[256];
        snprintf(needle, sizeof(needle), "tensor \"model.norm.weight\" maps to %s, "
                 "not a .safetensors file in the directory", shard);
        expect_error(&ck, name, -EINVAL, INDEX_FILE, needle, NULL);
        ckpt_free(&ck);
}

static void case_index_files(void) {
        expect_bad_shard_name("index-escapes", "../evil.safetensors");
        expect_bad_shard_name("index-subdir", "sub/x.safetensors");
        expect_bad_shard_name("index-absolute", "/tmp/x.safetensors");
        expect_bad_shard_name("index-not-safetensors", "pytorch_model.bin");

        ckpt ck;
        ckpt_init(&ck, MX_LAYOUT_HF, &tiny, false);
        ckpt_shard_hf(&ck);
        index_set(&ck, "model.norm.weight", "model-00003-of-00003.safetensors");
        expect_error(&ck, "index-no-shard", -ENOENT, "model-00003-of-00003.safetensors",
                     "No such file", NULL);
        ckpt_free(&ck);
}

/* ---- 9: files that are not regular files --------------------------------------- */

static void on_alarm(int sig) {
        static const char msg[] = "test-model-load: mx_model_open blocked (on a FIFO?)\n";
        if (write(STDERR_FILENO, msg, sizeof(msg) - 1) < 0)
                _exit(2);
        _exit(1);
}

static double now(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

/* Writes the tiny HF checkpoint (sharded when file is the index) into
 * base/name and removes file from it, leaving its path in path, so that
 * the case can put something else there. */
static void replaceable(const char *name, const char *file, char *dir, char *path, size_t size) {
        ckpt ck;
        ckpt_init(&ck, MX_LAYOUT_HF, &tiny, false);
        if (strcmp(file, INDEX_FILE) == 0)
                ckpt_shard_hf(&ck);
        ckpt_write(&ck, name, dir, size);
        ckpt_free(&ck);
        path_in(path, size, dir, file);
        CHECK(unlink(path) == 0, "%s: %s", path, strerror(errno));
}

/* Opening must not wait for a writer: the alarm ends the test if it does. */
static void expect_fifo_refused(const char *name, const char *file) {
        char dir[512], path[512];
        replaceable(name, file, dir, path, sizeof(dir));
        CHECK(mkfifo(path, 0644) == 0, "%s: %s", path, strerror(errno));
        signal(SIGALRM, on_alarm);
        alarm(10);
        double t0 = now();
        expect_open_error(dir, -EINVAL, file, "not a regular file (a FIFO)", NULL);
        double dt = now() - t0;
        alarm(0);
        CHECK(dt < 2.0, "%s: refusing a FIFO took %.1f s", name, dt);
}

static void case_special_files(void) {
        char dir[512], path[512];
        expect_fifo_refused("fifo-weights", "model.safetensors");
        expect_fifo_refused("fifo-config", "config.json");
        expect_fifo_refused("fifo-index", INDEX_FILE);

        replaceable("empty-weights", "model.safetensors", dir, path, sizeof(dir));
        CHECK(write_text(dir, "model.safetensors", "") == 0, "%s: cannot write", path);
        expect_open_error(dir, -EINVAL, "model.safetensors", "0 bytes is too short", NULL);

        replaceable("dev-zero", "model.safetensors", dir, path, sizeof(dir));
        CHECK(symlink("/dev/zero", path) == 0, "%s: %s", path, strerror(errno));
        expect_open_error(dir, -EINVAL, "model.safetensors", "not a regular file (a character device)",
                          NULL);

        replaceable("dir-weights", "model.safetensors", dir, path, sizeof(dir));
        CHECK(mkdir(path, 0755) == 0, "%s: %s", path, strerror(errno));
        expect_open_error(dir, -EINVAL, "model.safetensors", "not a regular file (a directory)", NULL);

        replaceable("no-config", "config.json", dir, path, sizeof(dir));
        expect_open_error(dir, -ENOENT, NULL, "no config.json", "params.json", NULL);

        replaceable("no-weights", "model.safetensors", dir, path, sizeof(dir));
        expect_open_error(dir, -ENOENT, NULL, "no model.safetensors or " INDEX_FILE, NULL);

        expect_open_error("/nonexistent-model-dir", -ENOENT, NULL, "No such file or directory", NULL);
        replaceable("file-as-dir", "config.json", dir, path, sizeof(dir));
        CHECK(write_text(dir, "config.json", "{}") == 0, "%s: cannot write", path);
        expect_open_error(path, -ENOTDIR, NULL, "not a directory", NULL);
}

/* ---- 10: huge tensors are mapped, not read ------------------------------------- */

/* The header as the format has it, then a hole the size of the data. */
static int write_sparse_shard(const ckpt *ck, const char *path) {
        json_t *root = json_object();
        uint64_t pos = 0;
        for (size_t i = 0; i < ck->n; i++) {
                const spec *s = &ck->t[i];
                json_t *shape = json_array();
                for (uint32_t d = 0; d < s->ndim; d++)
                        json_array_append_new(shape, json_integer((json_int_t)s->shape[d]));
                json_object_set_new(root, s->name,
                                    json_pack("{s:s,s:o,s:[I,I]}", "dtype", mx_dtype_name(s->dtype),
                                              "shape", shape, "data_offsets", (json_int_t)pos,
                                              (json_int_t)(pos + spec_bytes(s))));
                pos += spec_bytes(s);
        }
        char *hdr = json_dumps(root, JSON_COMPACT);
        json_decref(root);
        uint64_t hlen = strlen(hdr);
        uint8_t len8[8];
        for (int i = 0; i < 8; i++)
                len8[i] = (uint8_t)(hlen >> (8 * i));
        int r = 0, fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
        if (fd < 0 || write(fd, len8, 8) != 8 || write(fd, hdr, hlen) != (ssize_t)hlen ||
            ftruncate(fd, (off_t)(8 + hlen + pos)) < 0)
                r = -errno;
        if (fd >= 0)
                close(fd);
        free(hdr);
        return r;
}

static long maxrss_kib(void) {
        struct rusage ru;
        getrusage(RUSAGE_SELF, &ru);
        return ru.ru_maxrss;
}

static void case_huge_sparse(void) {
        static const dims big = {1u << 22, 1024, 64, 2, 8, 2, 128, 4, 2};
        ckpt ck;
        char dir[512], path[512];
        ckpt_init(&ck, MX_LAYOUT_HF, &big, true);
        path_in(dir, sizeof(dir), base, "huge-sparse");
        path_in(path, sizeof(path), dir, "model.safetensors");
        int r = mkdir(dir, 0755) < 0 ? -errno : write_config(&ck, dir);
        if (r == 0)
                r = write_sparse_shard(&ck, path);
        if (r == -EFBIG || r == -ENOSPC) {
                printf("note: huge-sparse skipped, cannot make a 16 GiB sparse file: %s\n", strerror(-r));
                ckpt_free(&ck);
                return;
        }
        CHECK(r == 0, "huge-sparse: cannot write %s: %s", path, strerror(-r));
        long before = maxrss_kib();
        mx_model *m = open_ok(dir);
        long grew = maxrss_kib() - before;
        CHECK(grew < 64 * 1024, "huge-sparse: opening grew the peak RSS by %ld KiB", grew);
        if (m) {
                CHECK(m->embed->nbytes == 8ull << 30 && m->lm_head->nbytes == 8ull << 30,
                      "huge-sparse: embedding of %llu bytes", (unsigned long long)m->embed->nbytes);
                check_bindings(m, &ck, "huge-sparse");
                check_footprint(m, &ck, false, "huge-sparse");
        }
        mx_model_free(m);
        ckpt_free(&ck);
        unlink(path); /* early: 16 GiB of hole is still a big file to leave */
}

/* ---- driver ---------------------------------------------------------------------- */

static int remove_one(const char *path, const struct stat *st, int type, struct FTW *ftw) {
        return remove(path) < 0 ? -1 : 0;
}

static void run(const char *name, void (*fn)(void)) {
        int before = test_failures;
        fn();
        printf("%s %s\n", test_failures == before ? "ok  " : "FAIL", name);
}

int main(void) {
        snprintf(base, sizeof(base), "/tmp/test-model-load-XXXXXX");
        if (!mkdtemp(base)) {
                perror("mkdtemp");
                return 1;
        }
        run("1 hf-single", case_hf_single);
        run("2 hf-sharded", case_hf_sharded);
        run("3 consolidated", case_consolidated);
        run("4 tied-embeddings", case_tied);
        run("5 mixed-dtypes", case_mixed_dtypes);
        run("6 config-keys", case_config_keys);
        run("6 config-consistency", case_config_consistency);
        run("7 params-json", case_params_errors);
        run("8 tensor-errors", case_tensor_errors);
        run("8 index-errors", case_index_errors);
        run("8 index-files", case_index_files);
        run("9 special-files", case_special_files);
        run("10 huge-sparse", case_huge_sparse);
        if (nftw(base, remove_one, 16, FTW_DEPTH | FTW_PHYS) < 0)
                fprintf(stderr, "cannot remove %s: %s\n", base, strerror(errno));
        return test_result();
}
