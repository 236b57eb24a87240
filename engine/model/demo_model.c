/* A small random Mixtral in the Hugging Face layout, made without any
 * download: config.json, two bf16 shards with their index, and the
 * tokenizer. It goes through exactly the code paths of the real model
 * (sharding included), so the quick start and the tests exercise them. */
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "quant.h"
#include "mx_common.h"

#include "mixtral.h"
#include "model.h"

/* "demo": a few MB, for the quick start and the tests; its vocabulary is
 * the tokenizer's. "b1": the CPU benchmark shape (791 M parameters, 1.6 GB
 * in bf16, Mixtral's vocabulary), with a made-up tokenizer when none of
 * that size is given. */
static const mx_config demo_shape = {
        .hidden_size = 64,
        .intermediate_size = 160,
        .n_layers = 2,
        .n_heads = 4,
        .n_kv_heads = 2,
        .head_dim = 16,
        .n_experts = 8,
        .n_experts_per_tok = 2,
        .max_position_embeddings = 4096,
        .rope_theta = 1e6,
        .rms_norm_eps = 1e-5,
};

static const mx_config b1_shape = {
        .vocab_size = 32000,
        .hidden_size = 1024,
        .intermediate_size = 3584,
        .n_layers = 8,
        .n_heads = 8,
        .n_kv_heads = 2,
        .head_dim = 128,
        .n_experts = 8,
        .n_experts_per_tok = 2,
        .max_position_embeddings = 32768,
        .rope_theta = 1e6,
        .rms_norm_eps = 1e-5,
        .bos_token_id = 1,
        .eos_token_id = 2,
};

typedef struct rng {
        uint64_t s;
} rng;

static uint64_t next_u64(rng *g) {
        uint64_t z = (g->s += 0x9e3779b97f4a7c15ull);
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
        return z ^ (z >> 31);
}

static double uniform(rng *g) {
        return ((double)(next_u64(g) >> 11) + 0.5) / 9007199254740992.0;
}

/* Normal(mean, std) in bf16 (Box-Muller); never all zeros. */
static uint16_t *random_bf16(rng *g, size_t n, double mean, double std) {
        uint16_t *v = malloc(n * sizeof(uint16_t));
        for (size_t i = 0; v && i < n; i++) {
                double z = sqrt(-2 * log(uniform(g))) * cos(2 * M_PI * uniform(g));
                v[i] = mx_f32_to_bf16((float)(mean + std * z));
        }
        return v;
}

typedef struct shard {
        mx_tensor_data *t;
        size_t n, cap;
} shard;

static int add(shard *s, rng *g, const char *name, uint64_t rows, uint64_t cols, bool norm) {
        if (mx_grow((void **)&s->t, &s->cap, s->n + 1, sizeof(*s->t)) < 0)
                return -ENOMEM;
        size_t count = (size_t)(rows * (cols ? cols : 1));
        uint16_t *data = norm ? random_bf16(g, count, 1.0, 0.1) : random_bf16(g, count, 0.0, 0.08);
        char *nm = strdup(name);
        if (!data || !nm) {
                free(data), free(nm);
                return -ENOMEM;
        }
        s->t[s->n++] = (mx_tensor_data){nm, MX_DTYPE_BF16, cols ? 2 : 1, {rows, cols}, data};
        return 0;
}

static void shard_free(shard *s) {
        for (size_t i = 0; i < s->n; i++) {
                free((char *)s->t[i].name);
                free((void *)s->t[i].data);
        }
        free(s->t);
}

static int add_layer(shard *s, rng *g, const mx_config *c, uint32_t L) {
        uint64_t h = c->hidden_size, q = c->n_heads * c->head_dim, kv = c->n_kv_heads * c->head_dim;
        char n[128];
        int r = 0;
#define ADD(rows, cols, norm, ...)                                                                 \
        if (r == 0) {                                                                              \
                snprintf(n, sizeof(n), __VA_ARGS__);                                               \
                r = add(s, g, n, rows, cols, norm);                                                \
        }
        ADD(h, 0, true, "model.layers.%u.input_layernorm.weight", L);
        ADD(q, h, false, "model.layers.%u.self_attn.q_proj.weight", L);
        ADD(kv, h, false, "model.layers.%u.self_attn.k_proj.weight", L);
        ADD(kv, h, false, "model.layers.%u.self_attn.v_proj.weight", L);
        ADD(h, q, false, "model.layers.%u.self_attn.o_proj.weight", L);
        ADD(h, 0, true, "model.layers.%u.post_attention_layernorm.weight", L);
        ADD(c->n_experts, h, false, "model.layers.%u.block_sparse_moe.gate.weight", L);
        for (uint32_t e = 0; e < c->n_experts; e++) {
                ADD(c->intermediate_size, h, false, "model.layers.%u.block_sparse_moe.experts.%u.w1.weight", L, e);
                ADD(h, c->intermediate_size, false, "model.layers.%u.block_sparse_moe.experts.%u.w2.weight", L, e);
                ADD(c->intermediate_size, h, false, "model.layers.%u.block_sparse_moe.experts.%u.w3.weight", L, e);
        }
#undef ADD
        return r;
}

int mx_json_write(const char *dir, const char *name, json_t *j, mx_error *err) {
        _cleanup_free_ char *path = NULL;
        if (!j || asprintf(&path, "%s/%s", dir, name) < 0)
                return mx_error_set(err, -ENOMEM, "%s: out of memory", dir);
        int r = json_dump_file(j, path, JSON_INDENT(2) | JSON_REAL_PRECISION(10));
        json_decref(j);
        return r < 0 ? mx_error_set(err, -EIO, "%s: cannot write", path) : 0;
}

int mx_hf_config_write(const char *dir, const mx_config *c, mx_error *err) {
        json_t *j = json_pack(
                "{s:[s],s:s,s:s,s:s,s:i,s:i,s:i,s:i,s:i,s:i,s:i,s:i,s:i,s:i,s:f,s:f,s:n,s:b,s:i,s:i,s:f,s:f,s:f,s:b}",
                "architectures", "MixtralForCausalLM", "model_type", "mixtral", "hidden_act", "silu",
                "torch_dtype", "bfloat16", "vocab_size", (int)c->vocab_size, "hidden_size",
                (int)c->hidden_size, "intermediate_size", (int)c->intermediate_size,
                "num_hidden_layers", (int)c->n_layers, "num_attention_heads", (int)c->n_heads,
                "num_key_value_heads", (int)c->n_kv_heads, "head_dim", (int)c->head_dim,
                "num_local_experts", (int)c->n_experts, "num_experts_per_tok",
                (int)c->n_experts_per_tok, "max_position_embeddings", (int)c->max_position_embeddings,
                "rope_theta", c->rope_theta, "rms_norm_eps", c->rms_norm_eps, "sliding_window",
                "tie_word_embeddings", 0, "bos_token_id", (int)c->bos_token_id, "eos_token_id",
                (int)c->eos_token_id, "attention_dropout", 0.0, "router_aux_loss_coef", 0.02,
                "initializer_range", 0.02, "use_cache", 1);
        return mx_json_write(dir, "config.json", j, err);
}

static int write_shards(const char *dir, const mx_config *c, uint64_t seed, mx_error *err) {
        static const char *const names[2] = {"model-00001-of-00002.safetensors",
                                             "model-00002-of-00002.safetensors"};
        _cleanup_(shard_free) shard s1 = {0};
        _cleanup_(shard_free) shard s2 = {0};
        rng g = {seed};
        uint64_t v = c->vocab_size, h = c->hidden_size;
        int r = add(&s1, &g, "model.embed_tokens.weight", v, h, false);
        for (uint32_t L = 0; r == 0 && L < c->n_layers; L++)
                r = add_layer(L < c->n_layers / 2 ? &s1 : &s2, &g, c, L);
        if (r == 0)
                r = add(&s2, &g, "model.norm.weight", h, 0, true);
        if (r == 0)
                r = add(&s2, &g, "lm_head.weight", v, h, false);
        if (r < 0)
                return mx_error_set(err, r, "%s: cannot make the demo weights", dir);

        json_t *map = json_object();
        uint64_t total = 0;
        shard *sh[2] = {&s1, &s2};
        for (int k = 0; k < 2 && map; k++) {
                _cleanup_free_ char *path = NULL;
                if (asprintf(&path, "%s/%s", dir, names[k]) < 0)
                        r = -ENOMEM;
                if (r == 0)
                        r = mx_safetensors_write(path, sh[k]->t, sh[k]->n, err);
                for (size_t i = 0; r == 0 && i < sh[k]->n; i++) {
                        json_object_set_new(map, sh[k]->t[i].name, json_string(names[k]));
                        total += sh[k]->t[i].shape[0] * (sh[k]->t[i].ndim == 2 ? sh[k]->t[i].shape[1] : 1) * 2;
                }
                if (r < 0) {
                        json_decref(map);
                        return r == -ENOMEM ? mx_error_set(err, r, "%s: out of memory", dir) : r;
                }
        }
        return mx_json_write(dir, "model.safetensors.index.json",
                          json_pack("{s:{s:I},s:o}", "metadata", "total_size", (json_int_t)total,
                                    "weight_map", map),
                          err);
}

static int copy_tokenizer(const char *dir, const char *src, mx_error *err) {
        _cleanup_free_ char *data = NULL, *path = NULL;
        size_t len;
        int r = mx_read_file(src, MX_TOKENIZER_MAX_FILE_BYTES, &data, &len, err);
        if (r < 0)
                return r;
        if (asprintf(&path, "%s/tokenizer.model", dir) < 0)
                return -ENOMEM;
        _cleanup_fclose_ FILE *f = fopen(path, "we");
        if (!f || fwrite(data, 1, len, f) != len || fflush(f) != 0)
                return mx_error_set(err, -EIO, "%s: cannot write", path);
        return 0;
}

int mx_demo_model_write(const char *dir, const char *shape, const char *tokenizer_path, uint64_t seed,
                        mx_error *err) {
        bool b1 = shape && strcmp(shape, "b1") == 0;
        if (shape && !b1 && strcmp(shape, "demo") != 0)
                return mx_error_set(err, -EINVAL, "unknown model shape \"%s\" (demo or b1)", shape);
        mx_config c = b1 ? b1_shape : demo_shape;
        mx_tokenizer *tok = NULL;
        int r = tokenizer_path ? mx_tokenizer_load(&tok, tokenizer_path, err) : 0;
        if (r < 0)
                return r;
        if (tok && !b1) {
                c.vocab_size = mx_tokenizer_vocab_size(tok);
                c.bos_token_id = mx_tokenizer_bos(tok);
                c.eos_token_id = mx_tokenizer_eos(tok);
        }
        /* A tokenizer goes with the model only when it fits its vocabulary. */
        bool with_tok = tok && mx_tokenizer_vocab_size(tok) == c.vocab_size;
        mx_tokenizer_free(tok);
        if (!b1 && !with_tok)
                return mx_error_set(err, -EINVAL, "the demo model needs a tokenizer (--tokenizer FILE)");
        if (c.bos_token_id < 0 || c.eos_token_id < 0)
                return mx_error_set(err, -EINVAL, "%s: the tokenizer has no <s> or </s>", tokenizer_path);
        _cleanup_free_ char *made = NULL;
        if (!with_tok && asprintf(&made, "%s/tokenizer.model", dir) < 0)
                return mx_error_set(err, -ENOMEM, "out of memory");
        r = with_tok ? copy_tokenizer(dir, tokenizer_path, err) : mx_tokenizer_write_synthetic(made, c.vocab_size, err);
        if (r == 0)
                r = mx_hf_config_write(dir, &c, err);
        if (r == 0)
                r = write_shards(dir, &c, seed, err);
        return r;
}
