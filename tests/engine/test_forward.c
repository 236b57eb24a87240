/* The forward pass against Hugging Face transformers (tests/data), and
 * against itself: KV-cached decoding against one pass over everything,
 * batched against one by one, every instruction set and thread count
 * against the scalar single-threaded reference. The f32 path is held to
 * transformers' fp32 logits; the fast path (bf16 activations for these
 * bf16 checkpoints) to 1e-1 of them per case, and to itself bit for bit
 * everywhere.
 *
 *   test-forward CHECKPOINT_DIR     (with expected.json from
 *                                    tools/make-hf-reference.py) */
#include <jansson.h>
#include <math.h>

#include "mixtral.h"
#include "mx_common.h"
#include "test_util.h"

#define MAX_CASES 8
#define GREEDY 12

typedef struct ref_case {
        mx_ids prompt, greedy;
        float *logits; /* [prompt.n][vocab] */
} ref_case;

static ref_case cases[MAX_CASES];
static size_t n_cases;
static uint32_t vocab;

static void load_expected(const char *dir) {
        char path[4096];
        snprintf(path, sizeof(path), "%s/expected.json", dir);
        json_error_t je;
        json_auto_t *root = json_load_file(path, 0, &je);
        if (!root) {
                fprintf(stderr, "%s: %s\n", path, je.text);
                exit(1);
        }
        size_t i, j, k;
        json_t *c, *v, *row;
        json_array_foreach(json_object_get(root, "cases"), i, c) {
                if (i >= MAX_CASES)
                        break;
                ref_case *rc = &cases[n_cases++];
                json_array_foreach(json_object_get(c, "prompt"), j, v) mx_ids_push(&rc->prompt, (int32_t)json_integer_value(v));
                json_array_foreach(json_object_get(c, "greedy"), j, v) mx_ids_push(&rc->greedy, (int32_t)json_integer_value(v));
                rc->logits = malloc(rc->prompt.n * vocab * sizeof(float));
                json_array_foreach(json_object_get(c, "logits"), j, row) {
                        CHECK(json_array_size(row) == vocab, "case %zu row %zu: %zu logits", i, j,
                              json_array_size(row));
                        json_array_foreach(row, k, v) if (j < rc->prompt.n && k < vocab)
                                rc->logits[j * vocab + k] = (float)json_number_value(v);
                }
        }
        CHECK(n_cases > 0, "no cases in %s", path);
}

static double rel_l2(const float *a, const float *b, size_t n) {
        double d = 0, s = 0;
        for (size_t i = 0; i < n; i++) {
                d += ((double)a[i] - b[i]) * ((double)a[i] - b[i]);
                s += (double)b[i] * b[i];
        }
        return sqrt(d / s);
}

static mx_engine *open_engine(const mx_model *m, mx_simd simd, uint32_t threads, mx_activations act) {
        mx_engine_opts o = {.simd = simd, .threads = threads, .activations = act, .kv_type = MX_KV_F32};
        mx_engine *e = NULL;
        mx_error err = {0};
        CHECK(mx_engine_open(&e, m, &o, &err) == 0, "%s", err.msg);
        return e;
}

/* Logits at every position of the prompt, in one step. */
static float *full_pass(mx_engine *e, const mx_ids *ids) {
        mx_seq *s = NULL;
        mx_error err = {0};
        float *out = malloc(ids->n * vocab * sizeof(float));
        CHECK(mx_seq_new(e, 0, &s, &err) == 0, "%s", err.msg);
        mx_batch_item it = {.seq = s, .tokens = ids->v, .n_tokens = (uint32_t)ids->n, .logits = out, .all_logits = true};
        CHECK(mx_forward(e, &it, 1, &err) == 0, "%s", err.msg);
        mx_seq_free(s);
        return out;
}

static int32_t argmax(const float *v) {
        int32_t best = 0;
        for (uint32_t i = 1; i < vocab; i++)
                if (v[i] > v[best])
                        best = (int32_t)i;
        return best;
}

/* Greedy continuation, one token per step through the KV cache; the
 * logits of every step are kept (prompt positions, then one per token). */
static void greedy_pass(mx_engine *e, const mx_ids *prompt, mx_ids *gen, float *logits) {
        mx_seq *s = NULL;
        mx_error err = {0};
        CHECK(mx_seq_new(e, 0, &s, &err) == 0, "%s", err.msg);
        mx_batch_item it = {.seq = s, .tokens = prompt->v, .n_tokens = (uint32_t)prompt->n, .logits = logits, .all_logits = true};
        CHECK(mx_forward(e, &it, 1, &err) == 0, "%s", err.msg);
        float *last = logits + (prompt->n - 1) * vocab;
        for (int i = 0; i < GREEDY; i++) {
                int32_t id = argmax(last);
                mx_ids_push(gen, id);
                last += vocab;
                it = (mx_batch_item){.seq = s, .tokens = &gen->v[gen->n - 1], .n_tokens = 1, .logits = last, .all_logits = false};
                CHECK(mx_forward(e, &it, 1, &err) == 0, "%s", err.msg);
        }
        mx_seq_free(s);
}

/* Logits within `tolerance` of transformers'; on the f32 path also its
 * greedy ids (the references' margins are wide enough for fp32 only). */
static void against_transformers(mx_engine *e, double tolerance, bool greedy) {
        double worst = 0;
        for (size_t c = 0; c < n_cases; c++) {
                const ref_case *rc = &cases[c];
                float *got = full_pass(e, &rc->prompt);
                for (size_t p = 0; p < rc->prompt.n; p++) {
                        double r = rel_l2(got + p * vocab, rc->logits + p * vocab, vocab);
                        worst = r > worst ? r : worst;
                        CHECK(greedy ? r < tolerance : true, "case %zu position %zu: relative L2 error %.3g", c, p, r);
                }
                double over = rel_l2(got, rc->logits, rc->prompt.n * vocab);
                CHECK(over < tolerance, "case %zu: relative L2 error %.3g", c, over);
                if (!greedy)
                        printf("case %zu: relative L2 error %.3g over its %zu positions\n", c, over, rc->prompt.n);
                mx_ids gen = {0};
                float *steps = malloc((rc->prompt.n + GREEDY) * vocab * sizeof(float));
                greedy_pass(e, &rc->prompt, &gen, steps);
                CHECK(!greedy || ids_eq(gen.v, gen.n, rc->greedy.v, rc->greedy.n), "case %zu: greedy ids differ", c);

                /* The cached path equals one pass over prompt + continuation. */
                mx_ids all = {0};
                mx_ids_append(&all, rc->prompt.v, rc->prompt.n);
                mx_ids_append(&all, gen.v, gen.n - 1);
                float *whole = full_pass(e, &all);
                CHECK(memcmp(whole, steps, all.n * vocab * sizeof(float)) == 0,
                      "case %zu: KV-cached logits differ from a full recompute", c);
                free(whole), free(steps), free(got);
                mx_ids_free(&gen), mx_ids_free(&all);
        }
        printf("%s: worst relative L2 error against transformers: %.3g\n", mx_engine_describe(e), worst);
}

/* Every case in one step, each with its own sequence: the logits must be
 * those of the case alone. */
static float **batched(mx_engine *e) {
        mx_seq *s[MAX_CASES];
        mx_batch_item it[MAX_CASES];
        float **out = calloc(n_cases, sizeof(float *));
        mx_error err = {0};
        for (size_t c = 0; c < n_cases; c++) {
                CHECK(mx_seq_new(e, 0, &s[c], &err) == 0, "%s", err.msg);
                out[c] = malloc(cases[c].prompt.n * vocab * sizeof(float));
                it[c] = (mx_batch_item){.seq = s[c], .tokens = cases[c].prompt.v, .n_tokens = (uint32_t)cases[c].prompt.n, .logits = out[c], .all_logits = true};
        }
        CHECK(mx_forward(e, it, n_cases, &err) == 0, "%s", err.msg);
        for (size_t c = 0; c < n_cases; c++)
                mx_seq_free(s[c]);
        return out;
}

static void same_everywhere(const mx_model *m, mx_activations act) {
        mx_engine *ref = open_engine(m, MX_SIMD_SCALAR, 1, act);
        float *want[MAX_CASES];
        for (size_t c = 0; c < n_cases; c++)
                want[c] = full_pass(ref, &cases[c].prompt);
        float **b = batched(ref);
        for (size_t c = 0; c < n_cases; c++)
                CHECK(memcmp(b[c], want[c], cases[c].prompt.n * vocab * 4) == 0,
                      "scalar: batched case %zu differs from alone", c);
        mx_engine_free(ref);

        static const mx_simd all[] = {MX_SIMD_SCALAR, MX_SIMD_AVX2, MX_SIMD_AVX512};
        static const uint32_t threads[] = {1, 3};
        for (size_t i = 0; i < MX_ELEMENTSOF(all); i++)
                for (size_t t = 0; t < MX_ELEMENTSOF(threads); t++) {
                        mx_engine_opts o = {.simd = all[i], .threads = threads[t], .activations = act, .kv_type = MX_KV_F32};
                        mx_engine *e = NULL;
                        mx_error err = {0};
                        if (mx_engine_open(&e, m, &o, &err) < 0) {
                                printf("skipping %s: %s\n", i == 1 ? "avx2" : "avx512", err.msg);
                                continue;
                        }
                        float **bb = batched(e);
                        for (size_t c = 0; c < n_cases; c++) {
                                float *one = full_pass(e, &cases[c].prompt);
                                size_t bytes = cases[c].prompt.n * vocab * 4;
                                CHECK(memcmp(one, want[c], bytes) == 0, "%s: case %zu differs from scalar",
                                      mx_engine_describe(e), c);
                                CHECK(memcmp(bb[c], want[c], bytes) == 0, "%s: batched case %zu differs",
                                      mx_engine_describe(e), c);
                                free(one), free(bb[c]);
                        }
                        free(bb);
                        printf("%s: bit-identical to scalar, batched and alone\n", mx_engine_describe(e));
                        mx_engine_free(e);
                }
        for (size_t c = 0; c < n_cases; c++)
                free(want[c]), free(b[c]);
        free(b);
}

/* The same weights in the mistral-inference layout (params.json, names,
 * q/k rows in interleaved RoPE order) must give the same logits, bit for
 * bit: the loader presents both layouts as one model. `released` writes
 * params.json as Mistral released Mixtral's: no rope_theta, no
 * max_seq_len. */
static void write_consolidated(const mx_model *m, const char *dir, bool released) {
        const mx_config *c = &m->cfg;
        char path[4096], name[160], extra[160] = "";
        if (!released)
                snprintf(extra, sizeof(extra), "\"rope_theta\": %.17g, \"max_seq_len\": %u, ", c->rope_theta,
                         c->max_position_embeddings);
        snprintf(path, sizeof(path), "%s/params.json", dir);
        FILE *f = fopen(path, "w");
        fprintf(f, "{\"dim\": %u, \"n_layers\": %u, \"head_dim\": %u, \"hidden_dim\": %u, \"n_heads\": %u, "
                   "\"n_kv_heads\": %u, \"norm_eps\": %.17g, \"vocab_size\": %u, %s"
                   "\"moe\": {\"num_experts\": %u, \"num_experts_per_tok\": %u}}",
                c->hidden_size, c->n_layers, c->head_dim, c->intermediate_size, c->n_heads, c->n_kv_heads,
                c->rms_norm_eps, c->vocab_size, extra, c->n_experts, c->n_experts_per_tok);
        fclose(f);
        mx_tensor_data *t = calloc(m->n_tensors, sizeof(*t));
        size_t n = 0;
        static const char *const from[] = {"model.embed_tokens.", "model.norm.", "lm_head.", "input_layernorm.",
                                           "self_attn.q_proj.", "self_attn.k_proj.", "self_attn.v_proj.",
                                           "self_attn.o_proj.", "post_attention_layernorm.",
                                           "block_sparse_moe.gate.", "block_sparse_moe.experts."};
        static const char *const to[] = {"tok_embeddings.", "norm.", "output.", "attention_norm.", "attention.wq.",
                                         "attention.wk.", "attention.wv.", "attention.wo.", "ffn_norm.",
                                         "feed_forward.gate.", "feed_forward.experts."};
        for (size_t i = 0; i < m->n_tensors; i++) {
                const mx_tensor *src = &m->tensors[i];
                const char *nm = src->name;
                char prefix[64] = "";
                if (strncmp(nm, "model.layers.", 13) == 0) {
                        const char *dot = strchr(nm + 13, '.');
                        snprintf(prefix, sizeof(prefix), "layers.%.*s.", (int)(dot - (nm + 13)), nm + 13);
                        nm = dot + 1;
                }
                for (size_t k = 0; k < MX_ELEMENTSOF(from); k++)
                        if (strncmp(nm, from[k], strlen(from[k])) == 0) {
                                snprintf(name, sizeof(name), "%s%s%s", prefix, to[k], nm + strlen(from[k]));
                                break;
                        }
                bool rope = strstr(name, "attention.wq.") || strstr(name, "attention.wk.");
                size_t rb = src->ndim == 2 ? src->shape[1] * mx_dtype_block_bytes(src->dtype) : src->nbytes;
                uint8_t *data = malloc(src->nbytes);
                for (uint64_t r = 0; r < (src->ndim == 2 ? src->shape[0] : 1); r++) {
                        uint64_t hd = c->head_dim, j = r % hd, s = r - j + (j < hd / 2 ? 2 * j : 2 * (j - hd / 2) + 1);
                        memcpy(data + (rope ? s : r) * rb, mx_tensor_row(src, r), rb);
                }
                t[n++] = (mx_tensor_data){strdup(name), src->dtype, src->ndim, {src->shape[0], src->shape[1]}, data};
        }
        snprintf(path, sizeof(path), "%s/consolidated.safetensors", dir);
        mx_error err = {0};
        CHECK(mx_safetensors_write(path, t, n, &err) == 0, "%s", err.msg);
        for (size_t i = 0; i < n; i++)
                free((char *)t[i].name), free((void *)t[i].data);
        free(t);
}

static void consolidated_layout(const mx_model *hf, bool released) {
        char dir[] = "/tmp/mx-consolidated-XXXXXX", path[4096];
        CHECK(mkdtemp(dir), "mkdtemp");
        write_consolidated(hf, dir, released);
        mx_model *m = NULL;
        mx_error err = {0};
        CHECK(mx_model_open(&m, dir, &err) == 0 && m->layout == MX_LAYOUT_CONSOLIDATED, "%s", err.msg);
        if (m && released)
                CHECK(m->cfg.rope_theta == 1e6 && m->cfg.max_position_embeddings == 32768,
                      "the released params.json: rope_theta %g, context %u (not mistral-inference's 1e6, 32768)",
                      m->cfg.rope_theta, m->cfg.max_position_embeddings);
        if (m) {
                mx_engine *a = open_engine(hf, MX_SIMD_AUTO, 0, MX_ACTIVATIONS_AUTO),
                          *b = open_engine(m, MX_SIMD_AUTO, 0, MX_ACTIVATIONS_AUTO);
                for (size_t c = 0; c < n_cases; c++) {
                        float *x = full_pass(a, &cases[c].prompt), *y = full_pass(b, &cases[c].prompt);
                        CHECK(memcmp(x, y, cases[c].prompt.n * vocab * 4) == 0,
                              "case %zu: the mistral-inference layout gives other logits", c);
                        free(x), free(y);
                }
                printf("mistral-inference layout%s: same logits, bit for bit\n",
                       released ? " (params.json as released)" : "");
                mx_engine_free(a), mx_engine_free(b);
                mx_model_free(m);
        }
        snprintf(path, sizeof(path), "%s/params.json", dir);
        unlink(path);
        snprintf(path, sizeof(path), "%s/consolidated.safetensors", dir);
        unlink(path);
        rmdir(dir);
}

int main(int argc, char **argv) {
        if (argc != 2) {
                fprintf(stderr, "usage: %s CHECKPOINT_DIR\n", argv[0]);
                return 2;
        }
        mx_model *m = NULL;
        mx_error err = {0};
        if (mx_model_open(&m, argv[1], &err) < 0) {
                fprintf(stderr, "%s\n", err.msg);
                return 1;
        }
        vocab = m->cfg.vocab_size;
        load_expected(argv[1]);
        mx_engine *e = open_engine(m, MX_SIMD_AUTO, 0, MX_ACTIVATIONS_F32);
        if (e)
                against_transformers(e, 1e-3, true);
        mx_engine_free(e);
        e = open_engine(m, MX_SIMD_SCALAR, 1, MX_ACTIVATIONS_F32);
        if (e)
                against_transformers(e, 1e-3, true);
        mx_engine_free(e);
        /* bf16 activations: about 1e-2 per case, more where a router's
         * choice between near-equal experts flips (hf-tiny case 1). */
        e = open_engine(m, MX_SIMD_AUTO, 0, MX_ACTIVATIONS_FAST);
        if (e)
                against_transformers(e, 1e-1, false);
        mx_engine_free(e);
        same_everywhere(m, MX_ACTIVATIONS_F32);
        same_everywhere(m, MX_ACTIVATIONS_FAST);
        consolidated_layout(m, false);
        /* (Only where the checkpoint's values are mistral-inference's defaults.) */
        if (m->cfg.rope_theta == 1e6)
                consolidated_layout(m, true);
        mx_model_free(m);
        return test_result();
}
