/* The model's shape comes from its files: Hugging Face's config.json or
 * mistral-inference's params.json. Every value is checked for presence,
 * type, range and consistency before the loader trusts it with sizes. */
#include <jansson.h>
#include <math.h>
#include <string.h>

#include "mx_common.h"

#include "mixtral.h"

/* Far above any real model, low enough that products of these cannot
 * overflow the 64-bit size arithmetic that follows. */
#define MAX_DIM (1u << 20)
#define MAX_VOCAB (1u << 22)
#define MAX_LAYERS 4096u
#define MAX_CONTEXT (1u << 26)

typedef struct cfg_ctx {
        const char *label;
        mx_error *err;
        json_t *root;
} cfg_ctx;

/* Reads an integer key into *out: required keys must be present; absent
 * optional ones leave *out alone. Zero, negative and oversized values are
 * refused with the key named. */
static int get_uint(cfg_ctx *c, json_t *obj, const char *key, bool required, uint32_t max,
                    uint32_t *out) {
        json_t *v = json_object_get(obj, key);
        if (!v || json_is_null(v)) {
                if (required)
                        return mx_error_set(c->err, -EINVAL, "%s: \"%s\" is missing", c->label, key);
                return 0;
        }
        if (!json_is_integer(v))
                return mx_error_set(c->err, -EINVAL, "%s: \"%s\" is not an integer", c->label, key);
        json_int_t x = json_integer_value(v);
        if (x <= 0)
                return mx_error_set(c->err, -EINVAL, "%s: \"%s\" is %lld, must be positive",
                                    c->label, key, (long long)x);
        if ((uint64_t)x > max)
                return mx_error_set(c->err, -EINVAL, "%s: \"%s\" is %lld, more than %u", c->label,
                                    key, (long long)x, max);
        *out = (uint32_t)x;
        return 0;
}

static int get_positive_real(cfg_ctx *c, json_t *obj, const char *key, double max, double *out) {
        json_t *v = json_object_get(obj, key);
        if (!v || json_is_null(v))
                return mx_error_set(c->err, -EINVAL, "%s: \"%s\" is missing", c->label, key);
        if (!json_is_number(v))
                return mx_error_set(c->err, -EINVAL, "%s: \"%s\" is not a number", c->label, key);
        double x = json_number_value(v);
        if (!isfinite(x) || x <= 0 || x > max)
                return mx_error_set(c->err, -EINVAL, "%s: \"%s\" is %g, must be in (0, %g]",
                                    c->label, key, x, max);
        *out = x;
        return 0;
}

/* A token id that may be absent (-1), or in HF configs a list of ids of
 * which the first is the one the tokenizer uses. */
static int get_token_id(cfg_ctx *c, const char *key, int32_t *out) {
        json_t *v = json_object_get(c->root, key);
        if (json_is_array(v))
                v = json_array_get(v, 0);
        *out = -1;
        if (!v || json_is_null(v))
                return 0;
        if (!json_is_integer(v) || json_integer_value(v) < 0 ||
            json_integer_value(v) >= MAX_VOCAB)
                return mx_error_set(c->err, -EINVAL, "%s: \"%s\" is not a token id", c->label, key);
        *out = (int32_t)json_integer_value(v);
        return 0;
}

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

static int check_consistent(cfg_ctx *c, mx_config *cfg, bool head_dim_given) {
        if (!head_dim_given) {
                if (cfg->hidden_size % cfg->n_heads)
                        return mx_error_set(c->err, -EINVAL,
                                            "%s: hidden size %u is not divisible by %u attention heads",
                                            c->label, cfg->hidden_size, cfg->n_heads);
                cfg->head_dim = cfg->hidden_size / cfg->n_heads;
        }
        if (cfg->head_dim % 2)
                return mx_error_set(c->err, -EINVAL, "%s: head dimension %u is odd (RoPE needs pairs)",
                                    c->label, cfg->head_dim);
        if (cfg->n_heads % cfg->n_kv_heads)
                return mx_error_set(c->err, -EINVAL,
                                    "%s: %u attention heads are not a multiple of %u key/value heads",
                                    c->label, cfg->n_heads, cfg->n_kv_heads);
        if (cfg->n_experts_per_tok > cfg->n_experts)
                return mx_error_set(c->err, -EINVAL, "%s: top-k of %u experts, but only %u experts",
                                    c->label, cfg->n_experts_per_tok, cfg->n_experts);
        if ((cfg->bos_token_id >= 0 && (uint32_t)cfg->bos_token_id >= cfg->vocab_size) ||
            (cfg->eos_token_id >= 0 && (uint32_t)cfg->eos_token_id >= cfg->vocab_size))
                return mx_error_set(c->err, -EINVAL, "%s: bos/eos token id outside the vocabulary of %u",
                                    c->label, cfg->vocab_size);
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
        json_t *o = c->root;
        int r = expect_string(c, "model_type", "mixtral");
        if (r == 0)
                r = expect_string(c, "hidden_act", "silu");
        if (r < 0)
                return r;
        if ((r = get_uint(c, o, "vocab_size", true, MAX_VOCAB, &cfg->vocab_size)) < 0 ||
            (r = get_uint(c, o, "hidden_size", true, MAX_DIM, &cfg->hidden_size)) < 0 ||
            (r = get_uint(c, o, "intermediate_size", true, MAX_DIM, &cfg->intermediate_size)) < 0 ||
            (r = get_uint(c, o, "num_hidden_layers", true, MAX_LAYERS, &cfg->n_layers)) < 0 ||
            (r = get_uint(c, o, "num_attention_heads", true, MAX_DIM, &cfg->n_heads)) < 0 ||
            (r = get_uint(c, o, "num_key_value_heads", true, MAX_DIM, &cfg->n_kv_heads)) < 0 ||
            (r = get_uint(c, o, "head_dim", false, MAX_DIM, &cfg->head_dim)) < 0 ||
            (r = get_uint(c, o, "num_local_experts", true, MAX_LAYERS, &cfg->n_experts)) < 0 ||
            (r = get_uint(c, o, "num_experts_per_tok", true, MAX_LAYERS, &cfg->n_experts_per_tok)) < 0 ||
            (r = get_uint(c, o, "max_position_embeddings", true, MAX_CONTEXT,
                          &cfg->max_position_embeddings)) < 0 ||
            (r = get_uint(c, o, "sliding_window", false, MAX_CONTEXT, &cfg->sliding_window)) < 0 ||
            (r = get_positive_real(c, o, "rope_theta", 1e12, &cfg->rope_theta)) < 0 ||
            (r = get_positive_real(c, o, "rms_norm_eps", 1.0, &cfg->rms_norm_eps)) < 0 ||
            (r = get_token_id(c, "bos_token_id", &cfg->bos_token_id)) < 0 ||
            (r = get_token_id(c, "eos_token_id", &cfg->eos_token_id)) < 0)
                return r;
        json_t *tie = json_object_get(o, "tie_word_embeddings");
        if (tie && !json_is_boolean(tie))
                return mx_error_set(c->err, -EINVAL, "%s: \"tie_word_embeddings\" is not a boolean",
                                    c->label);
        cfg->tie_word_embeddings = json_is_true(tie);
        return check_consistent(c, cfg, cfg->head_dim != 0);
}

static int parse_params(cfg_ctx *c, mx_config *cfg) {
        json_t *o = c->root, *moe = json_object_get(o, "moe");
        int r;
        if (!json_is_object(moe))
                return mx_error_set(c->err, -EOPNOTSUPP,
                                    "%s: no \"moe\" object: not a mixture-of-experts model", c->label);
        if ((r = get_uint(c, o, "vocab_size", true, MAX_VOCAB, &cfg->vocab_size)) < 0 ||
            (r = get_uint(c, o, "dim", true, MAX_DIM, &cfg->hidden_size)) < 0 ||
            (r = get_uint(c, o, "hidden_dim", true, MAX_DIM, &cfg->intermediate_size)) < 0 ||
            (r = get_uint(c, o, "n_layers", true, MAX_LAYERS, &cfg->n_layers)) < 0 ||
            (r = get_uint(c, o, "n_heads", true, MAX_DIM, &cfg->n_heads)) < 0 ||
            (r = get_uint(c, o, "n_kv_heads", true, MAX_DIM, &cfg->n_kv_heads)) < 0 ||
            (r = get_uint(c, o, "head_dim", false, MAX_DIM, &cfg->head_dim)) < 0 ||
            (r = get_uint(c, moe, "num_experts", true, MAX_LAYERS, &cfg->n_experts)) < 0 ||
            (r = get_uint(c, moe, "num_experts_per_tok", true, MAX_LAYERS,
                          &cfg->n_experts_per_tok)) < 0 ||
            (r = get_uint(c, o, "max_seq_len", false, MAX_CONTEXT,
                          &cfg->max_position_embeddings)) < 0 ||
            (r = get_uint(c, o, "sliding_window", false, MAX_CONTEXT, &cfg->sliding_window)) < 0 ||
            (r = get_positive_real(c, o, "rope_theta", 1e12, &cfg->rope_theta)) < 0 ||
            (r = get_positive_real(c, o, "norm_eps", 1.0, &cfg->rms_norm_eps)) < 0)
                return r;
        /* This layout takes BOS/EOS from the tokenizer and never ties. */
        cfg->bos_token_id = cfg->eos_token_id = -1;
        cfg->tie_word_embeddings = false;
        return check_consistent(c, cfg, cfg->head_dim != 0);
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
