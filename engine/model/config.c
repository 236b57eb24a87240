/* The model's shape comes from its files: Hugging Face's config.json,
 * mistral-inference's params.json, or a GGUF file's llama.* metadata. Every
 * value is checked for presence, type, range and consistency before the
 * loader trusts it with sizes; the checks are written once here, and each
 * format only says where its values are (a table of fields and a reader). */
#include <jansson.h>
#include <math.h>
#include <stddef.h>
#include <string.h>

#include "model.h"
#include "mx_common.h"

/* Far above any real model, low enough that products of these cannot
 * overflow the 64-bit size arithmetic that follows. */
#define MAX_DIM (1u << 20)
#define MAX_VOCAB (1u << 22)
#define MAX_LAYERS 4096u
#define MAX_CONTEXT (1u << 26)

#define FIELD(sec, k, kind, req, max, member)                                                      \
        {sec, k, kind, req, max, offsetof(mx_config, member)}

/* The value's magnitude with its sign, for messages. */
static const char *int_str(const mx_cfg_value *v, char *buf, size_t size) {
        snprintf(buf, size, "%s%llu", v->neg ? "-" : "", (unsigned long long)v->mag);
        return buf;
}

static int check_uint(const mx_cfg_field *f, const mx_cfg_value *v, const char *label,
                      uint32_t *out, mx_error *err) {
        char b[32];
        if (v->kind != MX_CFG_INT)
                return mx_error_set(err, -EINVAL, "%s: \"%s\" is not an integer", label, f->key);
        if (v->neg || v->mag == 0)
                return mx_error_set(err, -EINVAL, "%s: \"%s\" is %s, must be positive", label,
                                    f->key, int_str(v, b, sizeof(b)));
        if (v->mag > (uint64_t)f->max)
                return mx_error_set(err, -EINVAL, "%s: \"%s\" is %s, more than %.0f", label, f->key,
                                    int_str(v, b, sizeof(b)), f->max);
        *out = (uint32_t)v->mag;
        return 0;
}

static int check_real(const mx_cfg_field *f, const mx_cfg_value *v, const char *label,
                      double *out, mx_error *err) {
        if (v->kind != MX_CFG_INT && v->kind != MX_CFG_REAL)
                return mx_error_set(err, -EINVAL, "%s: \"%s\" is not a number", label, f->key);
        double x = v->kind == MX_CFG_REAL ? v->real : (v->neg ? -(double)v->mag : (double)v->mag);
        if (!isfinite(x) || x <= 0 || x > f->max)
                return mx_error_set(err, -EINVAL, "%s: \"%s\" is %g, must be in (0, %g]", label,
                                    f->key, x, f->max);
        *out = x;
        return 0;
}

static int check_token_id(const mx_cfg_field *f, const mx_cfg_value *v, const char *label,
                          int32_t *out, mx_error *err) {
        if (v->kind != MX_CFG_INT || v->neg || v->mag >= (uint64_t)f->max)
                return mx_error_set(err, -EINVAL, "%s: \"%s\" is not a token id", label, f->key);
        *out = (int32_t)v->mag;
        return 0;
}

int mx_config_fill(const mx_cfg_field *fields, size_t n, mx_cfg_reader get, void *src,
                   const char *label, mx_config *cfg, mx_error *err) {
        for (size_t i = 0; i < n; i++) {
                const mx_cfg_field *f = &fields[i];
                void *dst = (char *)cfg + f->offset;
                mx_cfg_value v = get(src, f);
                int r = 0;
                if (f->kind == MX_CFG_TOKEN_ID)
                        *(int32_t *)dst = -1;
                if (v.kind == MX_CFG_ABSENT) {
                        if (f->required)
                                return mx_error_set(err, -EINVAL, "%s: \"%s\" is missing", label, f->key);
                        continue;
                }
                switch (f->kind) {
                case MX_CFG_UINT: r = check_uint(f, &v, label, dst, err); break;
                case MX_CFG_POSITIVE_REAL: r = check_real(f, &v, label, dst, err); break;
                case MX_CFG_TOKEN_ID: r = check_token_id(f, &v, label, dst, err); break;
                }
                if (r < 0)
                        return r;
        }
        return 0;
}

int mx_config_check(mx_config *cfg, bool head_dim_given, const char *label, mx_error *err) {
        if (!head_dim_given) {
                if (cfg->hidden_size % cfg->n_heads)
                        return mx_error_set(err, -EINVAL,
                                            "%s: hidden size %u is not divisible by %u attention heads",
                                            label, cfg->hidden_size, cfg->n_heads);
                cfg->head_dim = cfg->hidden_size / cfg->n_heads;
        }
        if (cfg->head_dim % 2)
                return mx_error_set(err, -EINVAL, "%s: head dimension %u is odd (RoPE needs pairs)",
                                    label, cfg->head_dim);
        if (cfg->n_heads % cfg->n_kv_heads)
                return mx_error_set(err, -EINVAL,
                                    "%s: %u attention heads are not a multiple of %u key/value heads",
                                    label, cfg->n_heads, cfg->n_kv_heads);
        if (cfg->n_experts_per_tok > cfg->n_experts)
                return mx_error_set(err, -EINVAL, "%s: top-k of %u experts, but only %u experts",
                                    label, cfg->n_experts_per_tok, cfg->n_experts);
        if ((cfg->bos_token_id >= 0 && (uint32_t)cfg->bos_token_id >= cfg->vocab_size) ||
            (cfg->eos_token_id >= 0 && (uint32_t)cfg->eos_token_id >= cfg->vocab_size))
                return mx_error_set(err, -EINVAL, "%s: bos/eos token id outside the vocabulary of %u",
                                    label, cfg->vocab_size);
        return 0;
}

/* ---- config.json and params.json ----------------------------------------- */

static const mx_cfg_field hf_fields[] = {
        FIELD(NULL, "vocab_size", MX_CFG_UINT, true, MAX_VOCAB, vocab_size),
        FIELD(NULL, "hidden_size", MX_CFG_UINT, true, MAX_DIM, hidden_size),
        FIELD(NULL, "intermediate_size", MX_CFG_UINT, true, MAX_DIM, intermediate_size),
        FIELD(NULL, "num_hidden_layers", MX_CFG_UINT, true, MAX_LAYERS, n_layers),
        FIELD(NULL, "num_attention_heads", MX_CFG_UINT, true, MAX_DIM, n_heads),
        FIELD(NULL, "num_key_value_heads", MX_CFG_UINT, true, MAX_DIM, n_kv_heads),
        FIELD(NULL, "head_dim", MX_CFG_UINT, false, MAX_DIM, head_dim),
        FIELD(NULL, "num_local_experts", MX_CFG_UINT, true, MAX_LAYERS, n_experts),
        FIELD(NULL, "num_experts_per_tok", MX_CFG_UINT, true, MAX_LAYERS, n_experts_per_tok),
        FIELD(NULL, "max_position_embeddings", MX_CFG_UINT, true, MAX_CONTEXT, max_position_embeddings),
        FIELD(NULL, "sliding_window", MX_CFG_UINT, false, MAX_CONTEXT, sliding_window),
        FIELD(NULL, "rope_theta", MX_CFG_POSITIVE_REAL, true, 1e12, rope_theta),
        FIELD(NULL, "rms_norm_eps", MX_CFG_POSITIVE_REAL, true, 1.0, rms_norm_eps),
        FIELD(NULL, "bos_token_id", MX_CFG_TOKEN_ID, false, MAX_VOCAB, bos_token_id),
        FIELD(NULL, "eos_token_id", MX_CFG_TOKEN_ID, false, MAX_VOCAB, eos_token_id),
};

/* This layout takes BOS/EOS from the tokenizer and never ties. */
static const mx_cfg_field params_fields[] = {
        FIELD(NULL, "vocab_size", MX_CFG_UINT, true, MAX_VOCAB, vocab_size),
        FIELD(NULL, "dim", MX_CFG_UINT, true, MAX_DIM, hidden_size),
        FIELD(NULL, "hidden_dim", MX_CFG_UINT, true, MAX_DIM, intermediate_size),
        FIELD(NULL, "n_layers", MX_CFG_UINT, true, MAX_LAYERS, n_layers),
        FIELD(NULL, "n_heads", MX_CFG_UINT, true, MAX_DIM, n_heads),
        FIELD(NULL, "n_kv_heads", MX_CFG_UINT, true, MAX_DIM, n_kv_heads),
        FIELD(NULL, "head_dim", MX_CFG_UINT, false, MAX_DIM, head_dim),
        FIELD("moe", "num_experts", MX_CFG_UINT, true, MAX_LAYERS, n_experts),
        FIELD("moe", "num_experts_per_tok", MX_CFG_UINT, true, MAX_LAYERS, n_experts_per_tok),
        FIELD(NULL, "max_seq_len", MX_CFG_UINT, false, MAX_CONTEXT, max_position_embeddings),
        FIELD(NULL, "sliding_window", MX_CFG_UINT, false, MAX_CONTEXT, sliding_window),
        FIELD(NULL, "rope_theta", MX_CFG_POSITIVE_REAL, false, 1e12, rope_theta),
        FIELD(NULL, "norm_eps", MX_CFG_POSITIVE_REAL, true, 1.0, rms_norm_eps),
};

/* What mistral-inference takes when params.json does not say, as the
 * original Mixtral release's does not: RoPE's base 1e6, and Mixtral's
 * context of 32768 positions. */
#define PARAMS_ROPE_THETA 1e6
#define PARAMS_MAX_SEQ_LEN 32768

/* A JSON value as the checks see it; in HF configs a token id may be a
 * list of which the first is the one the tokenizer uses. */
static mx_cfg_value json_value(void *root, const mx_cfg_field *f) {
        json_t *obj = f->section ? json_object_get(root, f->section) : root;
        json_t *v = json_object_get(obj, f->key);
        if (f->kind == MX_CFG_TOKEN_ID && json_is_array(v))
                v = json_array_get(v, 0);
        if (!v || json_is_null(v))
                return (mx_cfg_value){MX_CFG_ABSENT};
        if (json_is_integer(v)) {
                json_int_t x = json_integer_value(v);
                return (mx_cfg_value){MX_CFG_INT, .neg = x < 0,
                                      .mag = x < 0 ? 0 - (uint64_t)x : (uint64_t)x};
        }
        if (json_is_real(v))
                return (mx_cfg_value){MX_CFG_REAL, .real = json_real_value(v)};
        return (mx_cfg_value){MX_CFG_OTHER};
}

typedef struct cfg_ctx {
        const char *label;
        mx_error *err;
        json_t *root;
} cfg_ctx;

static int expect_string(cfg_ctx *c, const char *key, const char *want) {
        json_t *v = json_object_get(c->root, key);
        if (!v)
                return 0;
        const char *s = json_string_value(v);
        if (!s || strcmp(s, want) != 0)
                return mx_error_set(c->err, -EOPNOTSUPP, "%s: \"%s\" is %s%s%s, expected \"%s\"",
                                    c->label, key, s ? "\"" : "", s ? s : "not a string",
                                    s ? "\"" : "", want);
        return 0;
}

static int load_root(cfg_ctx *c, const char *json, size_t len) {
        json_error_t je;
        c->root = json_loadb(json, len, JSON_REJECT_DUPLICATES, &je);
        if (!c->root)
                return mx_error_set(c->err, -EINVAL, "%s: not valid JSON: %s (line %d, column %d)",
                                    c->label, je.text, je.line, je.column);
        if (!json_is_object(c->root))
                return mx_error_set(c->err, -EINVAL, "%s: not a JSON object", c->label);
        return 0;
}

static int parse_hf(cfg_ctx *c, mx_config *cfg) {
        int r = expect_string(c, "model_type", "mixtral");
        if (r == 0)
                r = expect_string(c, "hidden_act", "silu");
        if (r == 0)
                r = mx_config_fill(hf_fields, MX_ELEMENTSOF(hf_fields), json_value, c->root, c->label,
                                   cfg, c->err);
        if (r < 0)
                return r;
        json_t *tie = json_object_get(c->root, "tie_word_embeddings");
        if (tie && !json_is_boolean(tie))
                return mx_error_set(c->err, -EINVAL, "%s: \"tie_word_embeddings\" is not a boolean",
                                    c->label);
        cfg->tie_word_embeddings = json_is_true(tie);
        return mx_config_check(cfg, cfg->head_dim != 0, c->label, c->err);
}

static int parse_params(cfg_ctx *c, mx_config *cfg) {
        if (!json_is_object(json_object_get(c->root, "moe")))
                return mx_error_set(c->err, -EOPNOTSUPP,
                                    "%s: no \"moe\" object: not a mixture-of-experts model", c->label);
        cfg->rope_theta = PARAMS_ROPE_THETA;
        cfg->max_position_embeddings = PARAMS_MAX_SEQ_LEN;
        int r = mx_config_fill(params_fields, MX_ELEMENTSOF(params_fields), json_value, c->root,
                               c->label, cfg, c->err);
        if (r < 0)
                return r;
        cfg->bos_token_id = cfg->eos_token_id = -1;
        cfg->tie_word_embeddings = false;
        return mx_config_check(cfg, cfg->head_dim != 0, c->label, c->err);
}

int mx_config_parse_hf(const char *json, size_t len, const char *label, mx_config *cfg,
                       mx_error *err) {
        json_auto_t *root = NULL;
        cfg_ctx c = {.label = label, .err = err};
        *cfg = (mx_config){0};
        int r = load_root(&c, json, len);
        root = c.root;
        return r < 0 ? r : parse_hf(&c, cfg);
}

int mx_config_parse_params(const char *json, size_t len, const char *label, mx_config *cfg,
                           mx_error *err) {
        json_auto_t *root = NULL;
        cfg_ctx c = {.label = label, .err = err};
        *cfg = (mx_config){0};
        int r = load_root(&c, json, len);
        root = c.root;
        return r < 0 ? r : parse_params(&c, cfg);
}

/* ---- GGUF metadata ---------------------------------------------------------- */

/* As llama.cpp's converter writes Mixtral. Optional keys take llama.cpp's
 * defaults: key/value heads = heads, RoPE base 10000, no vocab_size (then
 * the vocabulary's length); no context length is "not given", as in
 * params.json (llama.cpp itself requires one). */
static const mx_cfg_field gguf_fields[] = {
        FIELD(NULL, "llama.vocab_size", MX_CFG_UINT, false, MAX_VOCAB, vocab_size),
        FIELD(NULL, "llama.embedding_length", MX_CFG_UINT, true, MAX_DIM, hidden_size),
        FIELD(NULL, "llama.feed_forward_length", MX_CFG_UINT, true, MAX_DIM, intermediate_size),
        FIELD(NULL, "llama.block_count", MX_CFG_UINT, true, MAX_LAYERS, n_layers),
        FIELD(NULL, "llama.attention.head_count", MX_CFG_UINT, true, MAX_DIM, n_heads),
        FIELD(NULL, "llama.attention.head_count_kv", MX_CFG_UINT, false, MAX_DIM, n_kv_heads),
        FIELD(NULL, "llama.attention.key_length", MX_CFG_UINT, false, MAX_DIM, head_dim),
        FIELD(NULL, "llama.expert_count", MX_CFG_UINT, true, MAX_LAYERS, n_experts),
        FIELD(NULL, "llama.expert_used_count", MX_CFG_UINT, true, MAX_LAYERS, n_experts_per_tok),
        FIELD(NULL, "llama.context_length", MX_CFG_UINT, false, MAX_CONTEXT, max_position_embeddings),
        FIELD(NULL, "llama.attention.sliding_window", MX_CFG_UINT, false, MAX_CONTEXT, sliding_window),
        FIELD(NULL, "llama.rope.freq_base", MX_CFG_POSITIVE_REAL, false, 1e12, rope_theta),
        FIELD(NULL, "llama.attention.layer_norm_rms_epsilon", MX_CFG_POSITIVE_REAL, true, 1.0, rms_norm_eps),
        FIELD(NULL, "tokenizer.ggml.bos_token_id", MX_CFG_TOKEN_ID, false, MAX_VOCAB, bos_token_id),
        FIELD(NULL, "tokenizer.ggml.eos_token_id", MX_CFG_TOKEN_ID, false, MAX_VOCAB, eos_token_id),
};

static mx_cfg_value gguf_value(void *g, const mx_cfg_field *f) {
        return mx_gguf_value(g, f->key);
}

/* A key that, when present, must equal what the shape already says. */
static int gguf_expect_equal(const mx_gguf *g, const char *key, uint32_t want, const char *what,
                             mx_error *err) {
        mx_cfg_field f = {NULL, key, MX_CFG_UINT, false, MAX_DIM, 0};
        mx_cfg_value v = mx_gguf_value(g, key);
        uint32_t x;
        if (v.kind == MX_CFG_ABSENT)
                return 0;
        int r = check_uint(&f, &v, g->label, &x, err);
        if (r == 0 && x != want)
                r = mx_error_set(err, -EOPNOTSUPP, "%s: \"%s\" is %u, but %s is %u", g->label, key,
                                 x, what, want);
        return r;
}

int mx_config_parse_gguf(const mx_gguf *g, mx_config *cfg, mx_error *err) {
        *cfg = (mx_config){.rope_theta = 10000};
        if (mx_gguf_find(g, "llama.expert_count") == NULL)
                return mx_error_set(err, -EOPNOTSUPP,
                                    "%s: no \"llama.expert_count\": not a mixture-of-experts model",
                                    g->label);
        int r = mx_config_fill(gguf_fields, MX_ELEMENTSOF(gguf_fields), gguf_value, (void *)g,
                               g->label, cfg, err);
        if (r < 0)
                return r;
        if (cfg->vocab_size == 0) {
                const mx_gguf_kv *tokens = mx_gguf_find(g, "tokenizer.ggml.tokens");
                if (!tokens || tokens->n == 0 || tokens->n > MAX_VOCAB)
                        return mx_error_set(err, -EINVAL,
                                            "%s: \"llama.vocab_size\" is missing and \"tokenizer.ggml.tokens\" "
                                            "gives no vocabulary of 1..%u", g->label, MAX_VOCAB);
                cfg->vocab_size = (uint32_t)tokens->n;
        }
        if (cfg->n_kv_heads == 0)
                cfg->n_kv_heads = cfg->n_heads;
        bool head_dim_given = cfg->head_dim != 0;
        if ((r = mx_config_check(cfg, head_dim_given, g->label, err)) < 0 ||
            (r = gguf_expect_equal(g, "llama.attention.value_length", cfg->head_dim,
                                   "the key length (head dimension)", err)) < 0 ||
            (r = gguf_expect_equal(g, "llama.rope.dimension_count", cfg->head_dim,
                                   "the head dimension (partial RoPE is not supported)", err)) < 0)
                return r;
        return 0;
}
