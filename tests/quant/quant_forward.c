/* A checkpoint quantized by mx_model_quantize (or a GGUF file in block
 * formats, FTYPE none), run by the engine, for check_forward.py to hold
 * against the numpy reference (tests/engine/reference_forward.py) on the
 * same quantized weights:
 *
 *   quant-forward CHECKPOINT FTYPE OUTDIR PROMPTS
 *
 * PROMPTS has one prompt per line (token ids). Writes into OUTDIR:
 * weights.json and weights.bin (every tensor as the engine holds it, block
 * formats as their blocks, under Hugging Face's names whatever the file's),
 * and for each path (f32, fast) logits-PATH.bin
 * (float32, every position of every prompt, one pass each),
 * greedy-PATH.txt (8 greedy tokens per prompt, one step at a time through
 * the KV cache) and steps-PATH.bin (the logits each was drawn from). Checks itself that the footprint counts the new types,
 * that expert streaming refuses the model, that packed BF16 matrices give
 * the logits of the mapped ones, and that mx_model_copy_dense
 * leaves its logits as they were; a file's block-format experts streamed
 * at the smallest budget give the mapped logits. Exit 1 on any failure. */
#include <jansson.h>
#include <string.h>

#include "mixtral.h"
#include "mx_common.h"
#include "test_util.h"

#define GREEDY 8
#define MAX_PROMPTS 8

static mx_ids prompts[MAX_PROMPTS];
static size_t n_prompts;

static void read_prompts(const char *path) {
        FILE *f = fopen(path, "r");
        CHECK(f, "%s: %s", path, strerror(errno));
        char line[65536];
        while (f && n_prompts < MAX_PROMPTS && fgets(line, sizeof(line), f)) {
                mx_ids *p = &prompts[n_prompts++];
                for (char *s = strtok(line, " \n"); s; s = strtok(NULL, " \n"))
                        mx_ids_push(p, (int32_t)atoi(s));
        }
        if (f)
                fclose(f);
}

static json_t *config_json(const mx_config *c) {
        return json_pack("{s:i, s:i, s:i, s:i, s:i, s:i, s:i, s:i, s:i, s:f, s:f}", "vocab_size", (int)c->vocab_size,
                         "hidden_size", (int)c->hidden_size, "intermediate_size", (int)c->intermediate_size,
                         "num_hidden_layers", (int)c->n_layers, "num_attention_heads", (int)c->n_heads,
                         "num_key_value_heads", (int)c->n_kv_heads, "head_dim", (int)c->head_dim,
                         "num_local_experts", (int)c->n_experts, "num_experts_per_tok", (int)c->n_experts_per_tok,
                         "rope_theta", c->rope_theta, "rms_norm_eps", c->rms_norm_eps);
}

/* The tensor's name in the Hugging Face layout, which the reference reads
 * (a GGUF names them as llama.cpp does). Tied embeddings are one tensor,
 * the embeddings'. */
static const char *hf_name(const mx_model *m, const mx_tensor *t, char *buf, size_t size) {
        if (t == m->embed)
                return "model.embed_tokens.weight";
        if (t == m->norm || t == m->lm_head)
                return t == m->norm ? "model.norm.weight" : "lm_head.weight";
        for (uint32_t L = 0; L < m->cfg.n_layers; L++) {
                const mx_layer *l = &m->layers[L];
                const mx_tensor *const dense[] = {l->attn_norm, l->wq, l->wk, l->wv, l->wo, l->ffn_norm, l->router};
                static const char *const names[] = {
                        "input_layernorm", "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                        "self_attn.o_proj", "post_attention_layernorm", "block_sparse_moe.gate"};
                for (size_t i = 0; i < MX_ELEMENTSOF(dense); i++)
                        if (t == dense[i])
                                return snprintf(buf, size, "model.layers.%u.%s.weight", L, names[i]), buf;
                for (uint32_t e = 0; e < m->cfg.n_experts; e++)
                        if (t == l->w1[e] || t == l->w2[e] || t == l->w3[e])
                                return snprintf(buf, size, "model.layers.%u.block_sparse_moe.experts.%u.w%d.weight",
                                                L, e, t == l->w1[e] ? 1 : t == l->w2[e] ? 2 : 3),
                                       buf;
        }
        return t->name;
}

/* Every tensor's bytes as they are, rows in Hugging Face order. */
static void write_weights(const mx_model *m, const char *dir) {
        char path[4096];
        snprintf(path, sizeof(path), "%s/weights.bin", dir);
        FILE *f = fopen(path, "wb");
        CHECK(f, "%s: %s", path, strerror(errno));
        json_t *tensors = json_array();
        uint64_t at = 0;
        for (size_t i = 0; f && i < m->n_tensors; i++) {
                const mx_tensor *t = &m->tensors[i];
                char buf[128];
                const char *name = hf_name(m, t, buf, sizeof(buf));
                uint64_t rows = t->ndim == 2 ? t->shape[0] : 1, row_bytes = t->nbytes / rows;
                for (uint64_t r = 0; r < rows; r++)
                        fwrite(t->ndim == 2 ? mx_tensor_row(t, r) : t->data, 1, row_bytes, f);
                json_t *shape = json_array();
                for (uint32_t d = 0; d < t->ndim; d++)
                        json_array_append_new(shape, json_integer((json_int_t)t->shape[d]));
                json_array_append_new(tensors, json_pack("{s:s, s:s, s:o, s:I, s:I}", "name", name, "type",
                                                         mx_dtype_name(t->dtype), "shape", shape, "offset",
                                                         (json_int_t)at, "nbytes", (json_int_t)t->nbytes));
                at += t->nbytes;
        }
        if (f)
                CHECK(fclose(f) == 0, "%s: write failed", path);
        snprintf(path, sizeof(path), "%s/weights.json", dir);
        json_t *root = json_pack("{s:o, s:o}", "config", config_json(&m->cfg), "tensors", tensors);
        CHECK(json_dump_file(root, path, JSON_INDENT(1)) == 0, "%s: write failed", path);
        json_decref(root);
}

static mx_engine *open_engine_with(const mx_model *m, mx_activations act, bool bf16_plain) {
        /* (f32 KV: the reference computes K and V in fp32) */
        mx_engine_opts o = {.activations = act, .kv_type = MX_KV_F32, .bf16_plain = bf16_plain};
        mx_engine *e = NULL;
        mx_error err = {0};
        CHECK(mx_engine_open(&e, m, &o, &err) == 0, "%s", err.msg);
        return e;
}

static mx_engine *open_engine(const mx_model *m, mx_activations act) {
        return open_engine_with(m, act, false);
}

/* Logits of every position of every prompt, one pass each; greedy ids,
 * one step at a time through the KV cache, and the logits each was drawn
 * from (steps: [prompts][GREEDY][vocab]). */
static float *run(mx_engine *e, uint32_t vocab, size_t *n_rows, mx_ids greedy[MAX_PROMPTS], float *steps) {
        size_t rows = 0;
        for (size_t i = 0; i < n_prompts; i++)
                rows += prompts[i].n;
        float *all = malloc(rows * vocab * sizeof(float)), *out = all;
        mx_error err = {0};
        for (size_t i = 0; e && i < n_prompts; i++) {
                mx_seq *s = NULL;
                CHECK(mx_seq_new(e, 256, &s, &err) == 0, "%s", err.msg);
                mx_batch_item it = {.seq = s, .tokens = prompts[i].v, .n_tokens = (uint32_t)prompts[i].n,
                                    .logits = out, .all_logits = true};
                CHECK(mx_forward(e, &it, 1, &err) == 0, "%s", err.msg);
                float *step = steps + i * GREEDY * vocab;
                memcpy(step, out + (prompts[i].n - 1) * vocab, vocab * sizeof(float));
                for (int g = 0; g < GREEDY; g++, step += vocab) {
                        int32_t id = 0;
                        for (uint32_t v = 1; v < vocab; v++)
                                id = step[v] > step[id] ? (int32_t)v : id;
                        mx_ids_push(&greedy[i], id);
                        it = (mx_batch_item){.seq = s, .tokens = &greedy[i].v[g], .n_tokens = 1,
                                             .logits = g + 1 < GREEDY ? step + vocab : NULL};
                        CHECK(mx_forward(e, &it, 1, &err) == 0, "%s", err.msg);
                }
                mx_seq_free(s);
                out += prompts[i].n * vocab;
        }
        *n_rows = rows;
        return all;
}

/* Whether engine e gives the logits `fast` (of floats floats), bit for bit. */
static bool same_logits(mx_engine *e, const mx_model *m, const float *fast, size_t floats) {
        mx_ids greedy[MAX_PROMPTS] = {0};
        size_t rows;
        float *steps = malloc((size_t)MAX_PROMPTS * GREEDY * m->cfg.vocab_size * sizeof(float));
        float *again = e ? run(e, m->cfg.vocab_size, &rows, greedy, steps) : NULL;
        bool same = again && memcmp(again, fast, floats * sizeof(float)) == 0;
        for (size_t i = 0; i < n_prompts; i++)
                mx_ids_free(&greedy[i]);
        free(steps);
        free(again);
        return same;
}

static void write_floats(const char *dir, const char *what, const char *path_name, const float *v, size_t n) {
        char path[4096];
        snprintf(path, sizeof(path), "%s/%s-%s.bin", dir, what, path_name);
        FILE *f = fopen(path, "wb");
        CHECK(f && fwrite(v, sizeof(float), n, f) == n, "%s: write failed", path);
        if (f)
                fclose(f);
}

static void write_path(const char *dir, const char *path_name, const float *logits, size_t floats,
                       const float *steps, size_t step_floats, mx_ids greedy[MAX_PROMPTS]) {
        char path[4096];
        write_floats(dir, "logits", path_name, logits, floats);
        write_floats(dir, "steps", path_name, steps, step_floats);
        FILE *f;
        snprintf(path, sizeof(path), "%s/greedy-%s.txt", dir, path_name);
        f = fopen(path, "w");
        for (size_t i = 0; f && i < n_prompts; i++)
                for (size_t g = 0; g < greedy[i].n; g++)
                        fprintf(f, g + 1 < greedy[i].n ? "%d " : "%d\n", greedy[i].v[g]);
        CHECK(f && fclose(f) == 0, "%s: write failed", path);
}

static void check_footprint(const mx_model *m) {
        mx_footprint fp;
        mx_model_footprint(m, &fp);
        uint64_t sum = 0, bytes = 0;
        for (int t = 0; t < MX_DTYPE_COUNT; t++)
                sum += fp.bytes_by_dtype[t];
        for (size_t i = 0; i < m->n_tensors; i++)
                bytes += m->tensors[i].nbytes;
        CHECK(sum == fp.bytes && bytes == fp.bytes, "footprint: %llu by type, %llu in all, %llu in the tensors",
              (unsigned long long)sum, (unsigned long long)fp.bytes, (unsigned long long)bytes);
}

/* A quantized model cannot stream its experts from the files, and copying
 * its dense weights out of the mapping keeps its logits. */
static void check_streaming_and_copy(mx_model *m, const float *fast, size_t floats) {
        mx_engine_opts o = {.expert_memory = 1};
        mx_engine *e = NULL;
        mx_error err = {0};
        CHECK(mx_engine_open(&e, m, &o, &err) < 0 && strstr(err.msg, "quantized in memory"),
              "expert streaming of a quantized model: %s", e ? "accepted" : err.msg);
        mx_engine_free(e);
        CHECK(mx_model_copy_dense(m, &err) == 0, "%s", err.msg);
        e = open_engine(m, MX_ACTIVATIONS_FAST);
        CHECK(same_logits(e, m, fast, floats), "mx_model_copy_dense changed the logits");
        mx_engine_free(e);
}

/* BF16 matrices packed (where the CPU packs them) give the logits of the
 * same matrices as mapped, bit for bit. */
static void check_plain(const mx_model *m, const float *fast, size_t floats) {
        mx_engine *e = open_engine_with(m, MX_ACTIVATIONS_FAST, true);
        CHECK(e && !strstr(mx_engine_describe(e), "packed"), "bf16_plain packed anyway");
        CHECK(same_logits(e, m, fast, floats), "bf16 matrices packed and as mapped: the logits differ");
        mx_engine_free(e);
}

/* Experts that start streaming mid-life (a budget set on a running
 * engine) leave their packed copies and give the same logits from the
 * file. */
static void check_packed_then_streamed(const mx_model *m, const float *fast, size_t floats) {
        mx_engine *e = open_engine(m, MX_ACTIVATIONS_FAST);
        mx_error err = {0};
        CHECK(e && mx_engine_set_expert_memory(e, 1, &err) == 0, "a budget on a running engine: %s", err.msg);
        CHECK(same_logits(e, m, fast, floats), "experts streamed after start: the logits differ from the resident run's");
        mx_engine_free(e);
}

/* Block-format experts stream from the file they are stored in, one
 * expert per slot, and give the mapped run's logits bit for bit. */
static void check_file_streaming(const mx_model *m, const float *fast, size_t floats) {
        mx_engine_opts o = {.activations = MX_ACTIVATIONS_FAST, .expert_memory = 1, .kv_type = MX_KV_F32};
        mx_engine *e = NULL;
        mx_error err = {0};
        CHECK(mx_engine_open(&e, m, &o, &err) == 0, "streaming %s experts: %s",
              mx_dtype_name(m->layers[0].w1[0]->dtype), err.msg);
        CHECK(same_logits(e, m, fast, floats), "streamed %s experts: logits differ from the mapped run's",
              mx_dtype_name(m->layers[0].w1[0]->dtype));
        mx_expert_stats st;
        if (e)
                mx_engine_expert_stats(e, &st);
        CHECK(e && st.bytes_read > 0, "streaming read no expert from the file");
        mx_engine_free(e);
}

int main(int argc, char **argv) {
        mx_ftype ft;
        if (argc != 5 || mx_ftype_parse(argv[2], &ft) < 0) {
                fprintf(stderr, "usage: quant-forward CHECKPOINT FTYPE OUTDIR PROMPTS\n");
                return 2;
        }
        mx_model *m = NULL;
        mx_error err = {0};
        if (mx_model_open(&m, argv[1], &err) < 0 || mx_model_quantize(m, ft, 0, NULL, NULL, &err) < 0) {
                fprintf(stderr, "%s\n", err.msg);
                return 1;
        }
        read_prompts(argv[4]);
        check_footprint(m);
        write_weights(m, argv[3]);
        uint32_t vocab = m->cfg.vocab_size;
        float *fast = NULL;
        size_t rows = 0;
        float *steps = malloc((size_t)MAX_PROMPTS * GREEDY * vocab * sizeof(float));
        for (int p = 0; p < 2; p++) {
                mx_ids greedy[MAX_PROMPTS] = {0};
                mx_engine *e = open_engine(m, p ? MX_ACTIVATIONS_FAST : MX_ACTIVATIONS_F32);
                /* (q256's BF16 rows are 256 and 512 wide: they pack.) */
                const mx_tensor *w1 = m->layers[0].w1[0];
                if (e && p && strstr(mx_engine_describe(e), "avx512") && w1->dtype == MX_DTYPE_BF16 &&
                    w1->shape[1] % 256 == 0)
                        CHECK(strstr(mx_engine_describe(e), "packed"), "not packed: %s", mx_engine_describe(e));
                float *logits = run(e, vocab, &rows, greedy, steps);
                write_path(argv[3], p ? "fast" : "f32", logits, rows * vocab, steps, n_prompts * GREEDY * vocab,
                           greedy);
                mx_engine_free(e);
                for (size_t i = 0; i < n_prompts; i++)
                        mx_ids_free(&greedy[i]);
                if (p)
                        fast = logits;
                else
                        free(logits);
        }
        check_plain(m, fast, rows * vocab);
        if (ft != MX_FTYPE_NONE)
                check_streaming_and_copy(m, fast, rows * vocab);
        else if (mx_dtype_is_block(m->layers[0].w1[0]->dtype))
                check_file_streaming(m, fast, rows * vocab);
        else
                check_packed_then_streamed(m, fast, rows * vocab);
        free(fast);
        free(steps);
        for (size_t i = 0; i < n_prompts; i++)
                mx_ids_free(&prompts[i]);
        mx_model_free(m);
        return test_result();
}
