/* Synthetic models (mixtral-run --synthetic): the shapes are the real
 * Mixtral's and the benchmark's b1, every weight is what mx_synth_bf16 gives
 * (the CUDA backend makes the same values on the device), nothing is zero,
 * a model made for the GPU has no host matrices and the CPU engine says it
 * cannot run it, and a bad shape or layer count is refused. */
#include <math.h>
#include <string.h>

#include "quant.h"
#include "mixtral.h"
#include "mx_common.h"
#include "mx_synth.h"
#include "test_util.h"

static void check_footprint(void) {
        mx_error err = {0};
        _cleanup_(mx_model_freep) mx_model *m = NULL;
        CHECK(mx_model_synthetic(&m, "mixtral-8x7b", 0, false, &err) == 0, "mixtral-8x7b: %s", err.msg);
        if (!m)
                return;
        mx_footprint fp;
        mx_model_footprint(m, &fp);
        /* Mixtral-8x7B: 46.7 B parameters, 12.9 B active (12.75 B without the
         * embedding rows other tokens use). */
        CHECK(fp.params == 46702792704ull, "mixtral-8x7b has %llu parameters", (unsigned long long)fp.params);
        CHECK(m->cfg.n_layers == 32 && m->cfg.hidden_size == 4096 && m->cfg.intermediate_size == 14336 &&
                  m->cfg.n_kv_heads == 8 && m->cfg.n_experts == 8 && m->cfg.n_experts_per_tok == 2,
              "mixtral-8x7b's shape");
        /* Made for the GPU: matrices have no host copy, norms do. */
        CHECK(m->layers[0].wq->data == NULL && m->layers[0].attn_norm->data != NULL, "host data of a GPU model");
        uint64_t per_layer = 0, rest = 0;
        uint32_t most = 0;
        CHECK(mx_synthetic_sizes("mixtral-8x7b", &per_layer, &rest, &most) == 0 && most == 32 &&
                  per_layer * 32 + rest == fp.bytes,
              "sizes: %llu x 32 + %llu != %llu", (unsigned long long)per_layer, (unsigned long long)rest,
              (unsigned long long)fp.bytes);
        _cleanup_(mx_engine_freep) mx_engine *e = NULL;
        mx_error eerr = {0};
        CHECK(mx_engine_open(&e, m, NULL, &eerr) == -EINVAL && strstr(eerr.msg, "not in host memory"),
              "the CPU engine on a GPU-made model: %s", eerr.msg);
}

static void check_values(void) {
        mx_error err = {0};
        _cleanup_(mx_model_freep) mx_model *m = NULL;
        CHECK(mx_model_synthetic(&m, "b1", 1, true, &err) == 0, "b1: %s", err.msg);
        if (!m)
                return;
        mx_footprint fp;
        mx_model_footprint(m, &fp);
        uint64_t per_layer = 0, rest = 0;
        uint32_t most = 0;
        mx_synthetic_sizes("b1", &per_layer, &rest, &most);
        /* bench/README.md: b1 has 791 M parameters over its 8 layers. */
        CHECK(most == 8 && (per_layer * 8 + rest) / 2 / 1000000 == 791, "b1: %llu M parameters",
              (unsigned long long)((per_layer * 8 + rest) / 2 / 1000000));
        CHECK(m->cfg.n_layers == 1 && fp.bytes == per_layer + rest, "one layer of b1");
        for (size_t i = 0; i < m->n_tensors; i++) {
                const mx_tensor *t = &m->tensors[i];
                const uint16_t *v = t->data;
                uint64_t n = t->nbytes / 2, zeros = 0;
                CHECK(v != NULL && t->dtype == MX_DTYPE_BF16, "%s has host data", t->name);
                if (!v)
                        continue;
                for (uint64_t j = 0; j < n; j += 997) {
                        zeros += (v[j] & 0x7fff) == 0;
                        if (t->ndim == 2 && v[j] != mx_synth_bf16(t->synth_seed, j, t->synth_scale))
                                CHECK(false, "%s[%llu] is not mx_synth_bf16's value", t->name, (unsigned long long)j);
                        if (t->ndim == 1) {
                                float f = mx_bf16_to_f32(v[j]);
                                CHECK(f > 0.85f && f < 1.15f, "%s[%llu] = %g is not near 1", t->name,
                                      (unsigned long long)j, (double)f);
                        }
                }
                CHECK(zeros * 100 < n / 997 + 1, "%s: %llu zeros in a sample", t->name, (unsigned long long)zeros);
        }
        /* Matrices spread sqrt(3 / cols): unit variance outputs. */
        const mx_tensor *w = m->layers[0].wq;
        double s2 = 0;
        for (uint64_t j = 0; j < w->shape[1]; j++) {
                double f = mx_bf16_to_f32(((const uint16_t *)w->data)[j]);
                s2 += f * f;
        }
        CHECK(fabs(s2 - 1.0) < 0.2, "a row of wq has squared norm %g, not about 1", s2);
        /* The CPU engine runs it: finite logits. */
        _cleanup_(mx_engine_freep) mx_engine *e = NULL;
        _cleanup_(mx_seq_freep) mx_seq *s = NULL;
        _cleanup_free_ float *logits = malloc(m->cfg.vocab_size * sizeof(float));
        int32_t ids[4] = {1, 100, 2000, 31999};
        if (mx_engine_open(&e, m, &(mx_engine_opts){.threads = 1}, &err) == 0 && mx_seq_new(e, 8, &s, &err) == 0) {
                mx_batch_item it = {.seq = s, .tokens = ids, .n_tokens = 4, .logits = logits};
                CHECK(mx_forward(e, &it, 1, &err) == 0, "forward: %s", err.msg);
                bool finite = true;
                for (uint32_t i = 0; i < m->cfg.vocab_size; i++)
                        finite &= isfinite(logits[i]);
                CHECK(finite, "non-finite logits");
        } else {
                CHECK(false, "engine: %s", err.msg);
        }
}

/* Logits of a few tokens on the CPU engine (budget: streamed experts). */
static int logits_of(const mx_model *m, uint64_t budget, float *out, mx_error *err) {
        _cleanup_(mx_engine_freep) mx_engine *e = NULL;
        _cleanup_(mx_seq_freep) mx_seq *s = NULL;
        int32_t ids[5] = {1, 7, 300, 4000, 31000};
        int r = mx_engine_open(&e, m, &(mx_engine_opts){.threads = 2, .expert_memory = budget}, err);
        if (r == 0)
                r = mx_seq_new(e, 8, &s, err);
        mx_batch_item it = {.seq = s, .tokens = ids, .n_tokens = 5, .logits = out};
        return r < 0 ? r : mx_forward(e, &it, 1, err);
}

/* Written out as a checkpoint and loaded back, a synthetic model computes
 * the same logits, bit for bit, mapped or with its experts streamed from
 * the per-layer shards. */
static void check_written(void) {
        char dir[] = "/tmp/mx-synth-XXXXXX";
        CHECK(mkdtemp(dir) != NULL, "mkdtemp: %s", strerror(errno));
        mx_error err = {0};
        _cleanup_(mx_model_freep) mx_model *host = NULL;
        _cleanup_(mx_model_freep) mx_model *gpu_made = NULL;
        _cleanup_(mx_model_freep) mx_model *back = NULL;
        CHECK(mx_model_synthetic(&host, "b1", 1, true, &err) == 0, "b1: %s", err.msg);
        /* The writer takes the device-style model: no host matrices. */
        CHECK(mx_model_synthetic(&gpu_made, "b1", 1, false, &err) == 0 &&
                      mx_synthetic_write(gpu_made, dir, NULL, NULL, &err) == 0,
              "write: %s", err.msg);
        CHECK(mx_model_open(&back, dir, &err) == 0, "open what was written: %s", err.msg);
        CHECK(!back || back->n_files == 2, "%zu shards, not 2 (the rest, then layer 0's experts)",
              back ? back->n_files : 0);
        CHECK(!back || mx_synthetic_write(back, dir, NULL, NULL, &err) == -EINVAL,
              "a checkpoint was taken for a synthetic model");
        size_t V = 32000;
        _cleanup_free_ float *want = malloc(V * sizeof(float));
        _cleanup_free_ float *got = malloc(V * sizeof(float));
        _cleanup_free_ float *streamed = malloc(V * sizeof(float));
        if (host && back && want && got && streamed) {
                CHECK(logits_of(host, 0, want, &err) == 0, "synthetic: %s", err.msg);
                CHECK(logits_of(back, 0, got, &err) == 0, "loaded: %s", err.msg);
                CHECK(logits_of(back, 1, streamed, &err) == 0, "loaded, streamed: %s", err.msg);
                CHECK(!memcmp(want, got, V * sizeof(float)), "the checkpoint's logits differ from the model's");
                CHECK(!memcmp(want, streamed, V * sizeof(float)), "streamed from the shards, the logits differ");
        }
        char cmd[96];
        snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
        CHECK(system(cmd) == 0, "rm");
}

static void check_refusals(void) {
        mx_error err = {0};
        mx_model *m = NULL;
        CHECK(mx_model_synthetic(&m, "mixtral-8x22b", 0, false, &err) == -EINVAL && strstr(err.msg, "expected"),
              "an unknown shape: %s", err.msg);
        CHECK(mx_model_synthetic(&m, "b1", 9, false, &err) == -EINVAL && strstr(err.msg, "has 8 layers"),
              "too many layers: %s", err.msg);
        CHECK(m == NULL, "nothing made");
        uint64_t a, b;
        uint32_t c;
        CHECK(mx_synthetic_sizes("nope", &a, &b, &c) == -EINVAL, "sizes of an unknown shape");
}

int main(void) {
        check_footprint();
        check_values();
        check_refusals();
        check_written();
        return test_result();
}
