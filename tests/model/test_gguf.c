/* GGUF files (engine/model/gguf*.c) against files made independently by
 * tests/model/make_gguf.py (gguf-py, numpy, Python sentencepiece):
 *   - every malformed file of bad/cases.tsv is refused, at open or when its
 *     vocabulary is loaded, with one line naming it and saying why;
 *   - the raw writer's valid files (merged experts, per expert, version 2,
 *     alignment 1, a split set) bind to the same weights: equal logits;
 *   - hf-tiny and hf-odd converted to F32, F16, BF16, Q8_0 and Q4_0 (merged
 *     and per expert, version 2 and 3, split): every bound tensor has the
 *     type, shape, size and bytes make_gguf.py wrote (CKPT-TYPE.tsv), the
 *     configuration is the checkpoint's; F32, F16 and BF16 give logits
 *     bit-identical to a safetensors checkpoint of the same values and
 *     transformers' greedy tokens (expected.json);
 *   - each file's vocabulary builds the tokenizer its tokenizer.model
 *     builds: every piece, score, type, special id and flag;
 *   - expert streaming (50% and the minimum) on BF16 and F32 files gives
 *     the mapped engine's tokens;
 *   - our writer: checkpoints and GGUF files written out are read back by
 *     gguf-py (check_gguf.py: keys, types, shapes and bytes equal to
 *     make_gguf.py's, packed as llama.cpp requires) and by our loader (the
 *     same logits and tokenizer);
 *   - a 6 GiB sparse GGUF of the real Mixtral's shape opens without its
 *     data being read.
 *
 *   test-gguf FIXTURES DATA PYTHON CHECK_GGUF      (SKIP without FIXTURES) */
#include <jansson.h>
#include <stdarg.h>
#include <sys/stat.h>

#include "mixtral.h"
#include "mx_common.h"
#include "test_util.h"

#define GREEDY 12

static const char *fixtures, *data_dir, *python, *checker;
static char tmp[] = "/tmp/mx-gguf-XXXXXX";

static char *path_of(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static char *path_of(const char *fmt, ...) {
        char *p = NULL;
        va_list ap;
        va_start(ap, fmt);
        if (vasprintf(&p, fmt, ap) < 0)
                abort();
        va_end(ap);
        return p;
}

static mx_model *open_ok(const char *path) {
        mx_model *m = NULL;
        mx_error err = {0};
        CHECK(mx_model_open(&m, path, &err) == 0, "%s: %s", path, err.msg);
        return m;
}

static mx_tokenizer *tokenizer_of(const mx_model *m) {
        mx_tokenizer *tok = NULL;
        mx_error err = {0};
        CHECK(mx_model_load_tokenizer(m, &tok, &err) == 0, "%s: %s", m->dir, err.msg);
        return tok;
}

static uint64_t fnv64(const void *p, uint64_t n) {
        const uint8_t *b = p;
        uint64_t h = 0xcbf29ce484222325ull;
        for (uint64_t i = 0; i < n; i++)
                h = (h ^ b[i]) * 0x100000001b3ull;
        return h;
}

/* ---- refusals ------------------------------------------------------------------- */

/* One line, naming the file (or its split set's directory), saying why. */
static void check_message(const char *what, const mx_error *err, const char *where, const char *needle) {
        CHECK(err->code < 0, "%s: no error code", what);
        CHECK(!strchr(err->msg, '\n'), "%s: the message is not one line: %s", what, err->msg);
        CHECK(strstr(err->msg, where), "%s: the message does not name %s: %s", what, where, err->msg);
        CHECK(strstr(err->msg, needle), "%s: the message lacks [%s]: %s", what, needle, err->msg);
}

static void check_bad_files(void) {
        _cleanup_free_ char *list = path_of("%s/bad/cases.tsv", fixtures);
        _cleanup_fclose_ FILE *f = fopen(list, "re");
        CHECK(f, "%s: %s", list, strerror(errno));
        char line[1024];
        int n = 0;
        while (f && fgets(line, sizeof(line), f)) {
                line[strcspn(line, "\n")] = '\0';
                char *file = strtok(line, "\t"), *stage = strtok(NULL, "\t"), *needle = strtok(NULL, "\t");
                if (!file || !stage || !needle) {
                        CHECK(false, "%s: malformed line %d", list, n + 1);
                        continue;
                }
                _cleanup_free_ char *path = path_of("%s/bad/%s", fixtures, file);
                _cleanup_free_ char *where = path_of("%s/bad/%.*s", fixtures, (int)strcspn(file, "/"), file);
                _cleanup_(mx_model_freep) mx_model *m = NULL;
                _cleanup_(mx_tokenizer_freep) mx_tokenizer *tok = NULL;
                mx_error err = {0};
                int r = mx_model_open(&m, path, &err);
                if (strcmp(stage, "tokenizer") == 0) {
                        CHECK(r == 0, "%s: should open (its vocabulary is what is wrong): %s", file, err.msg);
                        if (r == 0)
                                r = mx_model_load_tokenizer(m, &tok, &err);
                }
                CHECK(r < 0, "%s: accepted", file);
                if (r < 0)
                        check_message(file, &err, where, needle);
                n++;
        }
        CHECK(n >= 80, "only %d malformed files", n);
        printf("%d malformed files refused\n", n);
}

/* ---- what binds ------------------------------------------------------------------ */

/* A bound tensor by the manifest's role: embed, norm, lm_head, L.attn_norm,
 * L.wq ... L.router, L.w1.E, L.w2.E, L.w3.E. */
static const mx_tensor *role(const mx_model *m, const char *r) {
        unsigned L, e, w;
        char what[32];
        if (!strcmp(r, "embed"))
                return m->embed;
        if (!strcmp(r, "norm"))
                return m->norm;
        if (!strcmp(r, "lm_head"))
                return m->lm_head;
        if (sscanf(r, "%u.w%u.%u", &L, &w, &e) == 3 && L < m->cfg.n_layers && e < m->cfg.n_experts)
                return w == 1 ? m->layers[L].w1[e] : w == 2 ? m->layers[L].w2[e] : m->layers[L].w3[e];
        if (sscanf(r, "%u.%31s", &L, what) != 2 || L >= m->cfg.n_layers)
                return NULL;
        const mx_layer *ly = &m->layers[L];
        const char *names[] = {"attn_norm", "wq", "wk", "wv", "wo", "ffn_norm", "router"};
        const mx_tensor *ts[] = {ly->attn_norm, ly->wq, ly->wk, ly->wv, ly->wo, ly->ffn_norm, ly->router};
        for (size_t i = 0; i < MX_ELEMENTSOF(names); i++)
                if (!strcmp(what, names[i]))
                        return ts[i];
        return NULL;
}

/* Every bound tensor is what make_gguf.py wrote: type, shape, size, bytes. */
static void check_manifest(const mx_model *m, const char *tsv) {
        _cleanup_fclose_ FILE *f = fopen(tsv, "re");
        CHECK(f, "%s: %s", tsv, strerror(errno));
        char line[512];
        size_t n = 0;
        while (f && fgets(line, sizeof(line), f)) {
                char r[64], type[16], shape[64], have[64];
                unsigned long long bytes, hash;
                if (sscanf(line, "%63s %15s %63s %llu %llx", r, type, shape, &bytes, &hash) != 5) {
                        CHECK(false, "%s: malformed line %zu", tsv, n + 1);
                        continue;
                }
                n++;
                const mx_tensor *t = role(m, r);
                CHECK(t, "%s: %s is not bound", tsv, r);
                if (!t)
                        continue;
                if (t->ndim == 2)
                        snprintf(have, sizeof(have), "%llux%llu", (unsigned long long)t->shape[0],
                                 (unsigned long long)t->shape[1]);
                else
                        snprintf(have, sizeof(have), "%llu", (unsigned long long)t->shape[0]);
                CHECK(!strcmp(mx_dtype_name(t->dtype), type), "%s: %s is %s, not %s", tsv, r,
                      mx_dtype_name(t->dtype), type);
                CHECK(!strcmp(have, shape), "%s: %s has shape %s, not %s", tsv, r, have, shape);
                CHECK(t->nbytes == bytes, "%s: %s has %llu bytes, not %llu", tsv, r,
                      (unsigned long long)t->nbytes, bytes);
                CHECK(t->nbytes == bytes && fnv64(t->data, t->nbytes) == hash, "%s: %s: the bytes differ", tsv, r);
                bool qk = strstr(r, ".wq") || strstr(r, ".wk");
                CHECK(t->rope_head_dim == (qk ? m->cfg.head_dim : 0), "%s: %s: rope_head_dim %u", tsv, r,
                      t->rope_head_dim);
        }
        const mx_config *c = &m->cfg;
        CHECK(n == 3 + (size_t)c->n_layers * (7 + 3 * c->n_experts), "%s: %zu tensors", tsv, n);
}

static void same_config(const mx_config *a, const mx_config *b, const char *what) {
        CHECK(a->vocab_size == b->vocab_size && a->hidden_size == b->hidden_size &&
              a->intermediate_size == b->intermediate_size && a->n_layers == b->n_layers &&
              a->n_heads == b->n_heads && a->n_kv_heads == b->n_kv_heads && a->head_dim == b->head_dim &&
              a->n_experts == b->n_experts && a->n_experts_per_tok == b->n_experts_per_tok &&
              a->max_position_embeddings == b->max_position_embeddings &&
              a->sliding_window == b->sliding_window && a->bos_token_id == b->bos_token_id &&
              a->eos_token_id == b->eos_token_id && a->tie_word_embeddings == b->tie_word_embeddings,
              "%s: the configuration differs", what);
        /* GGUF stores both as f32, and the engine uses them as f32 */
        CHECK((float)a->rope_theta == (float)b->rope_theta && (float)a->rms_norm_eps == (float)b->rms_norm_eps,
              "%s: rope_theta %g / %g, rms_norm_eps %g / %g", what, a->rope_theta, b->rope_theta,
              a->rms_norm_eps, b->rms_norm_eps);
}

/* ---- the tokenizer ---------------------------------------------------------------- */

static void same_tokenizer(const mx_tokenizer *a, const mx_tokenizer *b, const char *what) {
        if (!a || !b)
                return;
        uint32_t n = mx_tokenizer_vocab_size(a);
        CHECK(n == mx_tokenizer_vocab_size(b), "%s: %u pieces, not %u", what, n, mx_tokenizer_vocab_size(b));
        for (int32_t i = 0; n == mx_tokenizer_vocab_size(b) && i < (int32_t)n; i++) {
                size_t la, lb;
                const char *pa = mx_tokenizer_piece(a, i, &la), *pb = mx_tokenizer_piece(b, i, &lb);
                float sa = mx_tokenizer_score(a, i), sb = mx_tokenizer_score(b, i);
                CHECK(la == lb && !memcmp(pa, pb, la) && !memcmp(&sa, &sb, 4) &&
                      mx_tokenizer_piece_type(a, i) == mx_tokenizer_piece_type(b, i),
                      "%s: piece %d differs", what, i);
        }
        mx_tokenizer_info x, y;
        mx_tokenizer_get_info(a, &x);
        mx_tokenizer_get_info(b, &y);
        CHECK(x.bos == y.bos && x.eos == y.eos && x.unk == y.unk && x.pad == y.pad && x.add_bos == y.add_bos &&
              x.add_eos == y.add_eos && x.add_space_prefix == y.add_space_prefix &&
              x.remove_extra_whitespaces == y.remove_extra_whitespaces &&
              x.escape_whitespaces == y.escape_whitespaces && x.byte_fallback == y.byte_fallback &&
              !strcmp(x.unk_surface, y.unk_surface),
              "%s: special ids or flags differ", what);
        static const char *const texts[] = {"Hello world", "  two  spaces\tand a tab\n", "naïve café 日本語 🙂",
                                            "\xff\xfe bytes", "[INST] What is a mixture of experts? [/INST]"};
        for (size_t i = 0; i < MX_ELEMENTSOF(texts); i++) {
                mx_ids ia = {0}, ib = {0};
                CHECK(mx_tokenize(a, texts[i], strlen(texts[i]), &ia) == 0 &&
                      mx_tokenize(b, texts[i], strlen(texts[i]), &ib) == 0 && ids_eq(ia.v, ia.n, ib.v, ib.n),
                      "%s: \"%s\" is tokenized differently", what, texts[i]);
                mx_ids_free(&ia), mx_ids_free(&ib);
        }
}

static void same_vocabulary_as_file(const mx_model *m, const char *spm_path) {
        _cleanup_(mx_tokenizer_freep) mx_tokenizer *gguf = tokenizer_of(m), *spm = NULL;
        mx_error err = {0};
        CHECK(mx_tokenizer_load(&spm, spm_path, &err) == 0, "%s", err.msg);
        same_tokenizer(gguf, spm, spm_path);
}

/* ---- the engine --------------------------------------------------------------------- */

static mx_engine *engine(mx_model *m, const char *expert_memory) {
        mx_engine *e = NULL;
        mx_error err = {0};
        uint64_t budget = 0;
        if (expert_memory) {
                CHECK(mx_expert_budget_parse(expert_memory, m, &budget, &err) == 0, "%s", err.msg);
                CHECK(mx_model_copy_dense(m, &err) == 0, "%s", err.msg);
        }
        /* The f32 path (activations and KV): the one held to transformers. */
        mx_engine_opts o = {.expert_memory = budget, .activations = MX_ACTIVATIONS_F32, .kv_type = MX_KV_F32};
        CHECK(mx_engine_open(&e, m, &o, &err) == 0, "%s: %s", m->dir, err.msg);
        return e;
}

/* Logits of every prompt position, and GREEDY greedy ids after it. */
static float *run(mx_model *m, const mx_ids *prompt, mx_ids *gen, const char *expert_memory) {
        _cleanup_(mx_engine_freep) mx_engine *e = engine(m, expert_memory);
        _cleanup_(mx_seq_freep) mx_seq *s = NULL;
        mx_error err = {0};
        uint32_t v = m->cfg.vocab_size;
        float *logits = calloc((prompt->n + GREEDY) * v, sizeof(float));
        if (!e || mx_seq_new(e, 0, &s, &err) < 0) {
                CHECK(false, "%s: %s", m->dir, err.msg);
                return logits;
        }
        mx_batch_item it = {.seq = s, .tokens = prompt->v, .n_tokens = (uint32_t)prompt->n, .logits = logits,
                            .all_logits = true};
        float *last = logits + (prompt->n - 1) * v;
        for (int i = 0; i <= GREEDY; i++) {
                CHECK(mx_forward(e, &it, 1, &err) == 0, "%s: %s", m->dir, err.msg);
                if (i == GREEDY)
                        break;
                int32_t best = 0;
                for (uint32_t k = 1; k < v; k++)
                        best = last[k] > last[best] ? (int32_t)k : best;
                mx_ids_push(gen, best);
                last += v;
                it = (mx_batch_item){.seq = s, .tokens = &gen->v[gen->n - 1], .n_tokens = 1, .logits = last};
        }
        return logits;
}

/* Bit-identical logits and the same greedy ids from two models. */
static void same_outputs(mx_model *a, mx_model *b, const mx_ids *prompt, const char *what) {
        mx_ids ga = {0}, gb = {0};
        _cleanup_free_ float *la = run(a, prompt, &ga, NULL), *lb = run(b, prompt, &gb, NULL);
        size_t n = (prompt->n + GREEDY) * a->cfg.vocab_size;
        CHECK(a->cfg.vocab_size == b->cfg.vocab_size && !memcmp(la, lb, n * sizeof(float)),
              "%s: the logits differ", what);
        CHECK(ids_eq(ga.v, ga.n, gb.v, gb.n), "%s: the greedy ids differ", what);
        mx_ids_free(&ga), mx_ids_free(&gb);
}

/* The prompts and greedy ids transformers computed (expected.json). */
static size_t load_expected(const char *ckpt, mx_ids *prompts, mx_ids *greedy, size_t most) {
        _cleanup_free_ char *path = path_of("%s/%s/expected.json", data_dir, ckpt);
        json_error_t je;
        json_auto_t *root = json_load_file(path, 0, &je);
        CHECK(root, "%s: %s", path, je.text);
        size_t n = 0, i, j;
        json_t *c, *v;
        json_array_foreach(json_object_get(root, "cases"), i, c) {
                if (n == most)
                        break;
                prompts[n] = greedy[n] = (mx_ids){0};
                json_array_foreach(json_object_get(c, "prompt"), j, v) mx_ids_push(&prompts[n], (int32_t)json_integer_value(v));
                json_array_foreach(json_object_get(c, "greedy"), j, v) mx_ids_push(&greedy[n], (int32_t)json_integer_value(v));
                n++;
        }
        return n;
}

/* ---- conversions of hf-tiny and hf-odd ------------------------------------------------ */

static void check_conversion(const char *ckpt, const char *name, mx_model *src, const mx_ids *prompts,
                             const mx_ids *greedy, size_t n_cases) {
        _cleanup_free_ char *gguf = path_of("%s/%s.gguf", fixtures, name), *tsv = path_of("%s/%s.tsv", fixtures, name);
        _cleanup_free_ char *spm = path_of("%s/%s/tokenizer.model", data_dir, ckpt);
        _cleanup_(mx_model_freep) mx_model *m = open_ok(gguf);
        if (!m)
                return;
        CHECK(m->layout == MX_LAYOUT_GGUF && m->n_files == 1, "%s: layout %d, %zu files", name, m->layout, m->n_files);
        check_manifest(m, tsv);
        same_config(&m->cfg, &src->cfg, name);
        same_vocabulary_as_file(m, spm);
        /* Block types: accuracy against the numpy reference is the quant
         * suite's (forward-quantized); here, merged experts compute as the
         * same experts stored one by one. */
        if (strstr(name, "q8_0") || strstr(name, "q4_0")) {
                _cleanup_free_ char *one_by_one = path_of("%s/%s-perexpert.gguf", fixtures, name);
                bool merged_q8 = strstr(name, "q8_0") && !strstr(name, "perexpert");
                _cleanup_(mx_model_freep) mx_model *p = merged_q8 ? open_ok(one_by_one) : NULL;
                for (size_t c = 0; p && c < n_cases; c++)
                        same_outputs(m, p, &prompts[c], name);
                return;
        }
        /* F32 and F16 against a safetensors checkpoint of the same values; BF16 against the original */
        _cleanup_free_ char *twin = NULL;
        if (strstr(name, "-f32") || strstr(name, "-f16"))
                twin = path_of("%s/%s.st", fixtures, name);
        _cleanup_(mx_model_freep) mx_model *ref = twin ? open_ok(twin) : NULL;
        for (size_t c = 0; c < n_cases; c++) {
                same_outputs(m, ref ? ref : src, &prompts[c], name);
                mx_ids gen = {0};
                free(run(m, &prompts[c], &gen, NULL));
                CHECK(ids_eq(gen.v, gen.n, greedy[c].v, greedy[c].n), "%s: case %zu: not transformers' greedy ids",
                      name, c);
                mx_ids_free(&gen);
        }
}

static void check_conversions(const char *ckpt, const char *shortname) {
        static const char *const variants[] = {"f32", "f16", "bf16", "q8_0", "q4_0", "bf16-perexpert-v2",
                                               "q8_0-perexpert"};
        _cleanup_free_ char *dir = path_of("%s/%s", data_dir, ckpt);
        _cleanup_(mx_model_freep) mx_model *src = open_ok(dir);
        mx_ids prompts[4], greedy[4];
        size_t n = load_expected(ckpt, prompts, greedy, 4);
        for (size_t i = 0; src && i < MX_ELEMENTSOF(variants); i++) {
                _cleanup_free_ char *name = path_of("%s-%s", shortname, variants[i]);
                check_conversion(ckpt, name, src, prompts, greedy, n);
        }
        for (size_t i = 0; i < n; i++)
                mx_ids_free(&prompts[i]), mx_ids_free(&greedy[i]);
}

/* ---- the raw writer's valid files and the split sets ----------------------------------- */

static void check_same_weights(const char *a_path, const char *b_path) {
        _cleanup_(mx_model_freep) mx_model *a = open_ok(a_path), *b = open_ok(b_path);
        if (!a || !b)
                return;
        mx_ids prompt = {0};
        for (int32_t id = 1; id < 12; id += 2)
                mx_ids_push(&prompt, id);
        same_outputs(a, b, &prompt, b_path);
        _cleanup_(mx_tokenizer_freep) mx_tokenizer *ta = tokenizer_of(a), *tb = tokenizer_of(b);
        same_tokenizer(ta, tb, b_path);
        mx_ids_free(&prompt);
}

static void check_valid_files(void) {
        _cleanup_free_ char *raw = path_of("%s/ok/raw.gguf", fixtures);
        static const char *const others[] = {"raw-v2.gguf", "raw-perexpert.gguf", "raw-align1.gguf", "split",
                                             "split/raw-00002-of-00003.gguf"};
        for (size_t i = 0; i < MX_ELEMENTSOF(others); i++) {
                _cleanup_free_ char *p = path_of("%s/ok/%s", fixtures, others[i]);
                check_same_weights(raw, p);
        }
        _cleanup_free_ char *split = path_of("%s/ok/split", fixtures);
        _cleanup_(mx_model_freep) mx_model *m = open_ok(split);
        CHECK(m && m->n_files == 3 && m->layout == MX_LAYOUT_GGUF, "%s: not a set of 3", split);
        CHECK(mx_model_is_gguf(raw) && mx_model_is_gguf(split), "GGUF paths not recognised");
        _cleanup_free_ char *hf = path_of("%s/hf-tiny", data_dir);
        CHECK(!mx_model_is_gguf(hf) && !mx_model_is_gguf("/nonexistent"), "%s taken for GGUF", hf);

        /* a split set of hf-tiny made by gguf-py's own split writer */
        _cleanup_free_ char *set = path_of("%s/split", fixtures), *whole = path_of("%s/tiny-bf16.gguf", fixtures);
        check_same_weights(whole, set);
}

/* ---- vocabularies of other tokenizers ------------------------------------------------- */

static void check_vocabularies(char **pairs, int n) {
        for (int i = 0; i + 1 < n; i += 2) {
                _cleanup_free_ char *gguf = path_of("%s/tok-%s.gguf", fixtures, pairs[i]);
                if (access(pairs[i + 1], R_OK) != 0) {
                        printf("%s: no %s, not checked\n", pairs[i], pairs[i + 1]);
                        continue;
                }
                _cleanup_(mx_model_freep) mx_model *m = open_ok(gguf);
                if (m)
                        same_vocabulary_as_file(m, pairs[i + 1]);
        }
}

/* ---- expert streaming ----------------------------------------------------------------------- */

static void check_streaming(const char *name) {
        _cleanup_free_ char *path = path_of("%s/%s", fixtures, name);
        mx_ids prompt = {0}, mapped = {0};
        for (int32_t id = 3; id < 300; id += 37)
                mx_ids_push(&prompt, id);
        _cleanup_(mx_model_freep) mx_model *m = open_ok(path);
        if (!m)
                return;
        free(run(m, &prompt, &mapped, NULL));
        static const char *const budgets[] = {"50%", "min"};
        for (size_t i = 0; i < MX_ELEMENTSOF(budgets); i++) {
                _cleanup_(mx_model_freep) mx_model *s = open_ok(path);
                mx_ids got = {0};
                free(run(s, &prompt, &got, budgets[i]));
                CHECK(ids_eq(got.v, got.n, mapped.v, mapped.n), "%s: experts streamed at %s: other tokens", name,
                      budgets[i]);
                mx_ids_free(&got);
        }
        mx_ids_free(&prompt), mx_ids_free(&mapped);
}

/* ---- our writer --------------------------------------------------------------------------- */

static void count_progress(uint64_t done, uint64_t total, void *arg) {
        uint64_t *last = arg;
        CHECK(done >= *last && done <= total, "progress %llu of %llu after %llu", (unsigned long long)done,
              (unsigned long long)total, (unsigned long long)*last);
        *last = done;
}

static void check_written(const char *src_path, const char *out_name, const char *ref_name, const char *tsv) {
        _cleanup_free_ char *out = path_of("%s/%s", tmp, out_name), *ref = path_of("%s/%s", fixtures, ref_name);
        _cleanup_(mx_model_freep) mx_model *src = open_ok(src_path);
        if (!src)
                return;
        _cleanup_(mx_tokenizer_freep) mx_tokenizer *tok = tokenizer_of(src);
        mx_error err = {0};
        uint64_t last = 0;
        CHECK(mx_gguf_write_model(src, tok, out, count_progress, &last, &err) == 0, "%s: %s", out, err.msg);
        _cleanup_(mx_model_freep) mx_model *back = open_ok(out);
        if (!back)
                return;
        same_config(&back->cfg, &src->cfg, out);
        _cleanup_(mx_tokenizer_freep) mx_tokenizer *tok2 = tokenizer_of(back);
        same_tokenizer(tok2, tok, out);
        if (tsv) { /* block types: the bytes, as make_gguf.py quantized them */
                _cleanup_free_ char *t = path_of("%s/%s", fixtures, tsv);
                check_manifest(back, t);
        } else {
                check_same_weights(src_path, out);
        }
        _cleanup_free_ char *cmd = path_of("'%s' '%s' '%s' '%s' --only-ours general.alignment", python, checker, out, ref);
        CHECK(system(cmd) == 0, "%s: gguf-py does not read back what %s holds", out, ref);
}

static void check_writer(void) {
        _cleanup_free_ char *tiny = path_of("%s/hf-tiny", data_dir), *odd = path_of("%s/hf-odd", data_dir);
        _cleanup_free_ char *q8 = path_of("%s/tiny-q8_0.gguf", fixtures), *oddq8 = path_of("%s/odd-q8_0-perexpert.gguf", fixtures);
        _cleanup_free_ char *perexp = path_of("%s/tiny-bf16-perexpert-v2.gguf", fixtures), *set = path_of("%s/split", fixtures);
        check_written(tiny, "tiny.gguf", "tiny-bf16.gguf", NULL);
        check_written(odd, "odd.gguf", "odd-bf16.gguf", NULL);
        check_written(perexp, "perexpert.gguf", "tiny-bf16.gguf", NULL);
        check_written(set, "split.gguf", "tiny-bf16.gguf", NULL);
        check_written(q8, "q8.gguf", "tiny-q8_0.gguf", "tiny-q8_0.tsv");
        check_written(oddq8, "oddq8.gguf", "odd-q8_0.gguf", "odd-q8_0.tsv");

        /* without a vocabulary; and failures that name the file */
        _cleanup_(mx_model_freep) mx_model *m = open_ok(tiny);
        _cleanup_free_ char *bare = path_of("%s/bare.gguf", tmp), *nowhere = path_of("%s/no/such/dir.gguf", tmp);
        mx_error err = {0};
        CHECK(m && mx_gguf_write_model(m, NULL, bare, NULL, NULL, &err) == 0, "%s: %s", bare, err.msg);
        _cleanup_(mx_model_freep) mx_model *b = open_ok(bare);
        _cleanup_(mx_tokenizer_freep) mx_tokenizer *tok = NULL;
        CHECK(b && mx_model_load_tokenizer(b, &tok, &err) == -ENOENT, "%s: a vocabulary from nowhere", bare);
        check_message("no vocabulary", &err, bare, "no vocabulary");
        CHECK(m && mx_gguf_write_model(m, NULL, nowhere, NULL, NULL, &err) < 0, "%s: written", nowhere);
        check_message("no directory", &err, nowhere, "No such file");
        CHECK(access(nowhere, F_OK) != 0, "%s exists", nowhere);
        _cleanup_free_ char *real = path_of("%s/tok-real.gguf", fixtures);
        _cleanup_(mx_model_freep) mx_model *r = access(real, R_OK) == 0 ? open_ok(real) : NULL;
        _cleanup_(mx_tokenizer_freep) mx_tokenizer *big = r ? tokenizer_of(r) : NULL;
        if (big) {
                CHECK(mx_gguf_write_model(m, big, bare, NULL, NULL, &err) == -EINVAL, "%s: a 32000-piece tokenizer for a vocabulary of 512", bare);
                check_message("vocabulary size", &err, bare, "the tokenizer has 32000 pieces but the model a vocabulary of 512");
        }
}

/* ---- headers only --------------------------------------------------------------------------- */

static long resident_kib(void) {
        long pages = 0, rss = 0;
        FILE *f = fopen("/proc/self/statm", "re");
        if (f && fscanf(f, "%ld %ld", &pages, &rss) != 2)
                rss = 0;
        if (f)
                fclose(f);
        return rss * (sysconf(_SC_PAGESIZE) / 1024);
}

static void check_sparse(void) {
        _cleanup_free_ char *path = path_of("%s/sparse.gguf", fixtures);
        long before = resident_kib();
        _cleanup_(mx_model_freep) mx_model *m = open_ok(path);
        long grew = resident_kib() - before;
        CHECK(m && m->cfg.hidden_size == 4096 && m->n_tensors == 3 + 2 * (7 + 24), "%s: not the shape written", path);
        mx_footprint fp;
        if (m)
                mx_model_footprint(m, &fp);
        CHECK(m && fp.bytes > (5ull << 30), "%s: %.1f GiB of weights", path, m ? (double)fp.bytes / (1 << 30) : 0.0);
        CHECK(grew < 64 * 1024, "opening %s took %ld KiB of memory", path, grew);
        printf("%s: opened with %ld KiB more resident\n", path, grew);
}

static int rm_tree(const char *dir) {
        _cleanup_free_ char *cmd = path_of("rm -rf '%s'", dir);
        return system(cmd);
}

int main(int argc, char **argv) {
        if (argc < 5) {
                fprintf(stderr, "usage: %s FIXTURES DATA PYTHON CHECK_GGUF [NAME TOKENIZER]...\n", argv[0]);
                return 2;
        }
        fixtures = argv[1], data_dir = argv[2], python = argv[3], checker = argv[4];
        struct stat st;
        if (stat(fixtures, &st) < 0)
                test_skip("no GGUF fixtures (tests/model/make_gguf.py needs the venv of tools/install-deps)");
        if (!mkdtemp(tmp))
                return perror(tmp), 1;
        check_bad_files();
        check_valid_files();
        check_conversions("hf-tiny", "tiny");
        check_conversions("hf-odd", "odd");
        check_vocabularies(argv + 5, argc - 5);
        check_streaming("tiny-bf16.gguf");
        check_streaming("odd-f32.gguf");
        check_writer();
        check_sparse();
        rm_tree(tmp);
        return test_result();
}
