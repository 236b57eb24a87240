/* Prefill speed against OpenBLAS on the same shapes, in the same run.
 *
 *   prefill-bench MODEL_DIR [THREADS [TOKENS]]
 *
 * Runs the engine's prefill of TOKENS (default 512) fixed tokens, counting
 * the FLOPs of its matrix products; then times OpenBLAS's sgemm (fp32
 * copies of the same weights, made before timing) on the products that
 * prefill did, with the same number of threads: q, k, v, o and the router
 * over all tokens, each chosen expert's w1, w3, w2 over the tokens routed
 * to it (taken from a count of the engine's routing, see below), and
 * lm_head over the last token. Prints one JSON object. */
#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "quant.h"
#include "mixtral.h"

static double now(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* An fp32 copy of a weight, for sgemm (made before timing). */
static float *to_f32(const mx_tensor *t) {
        uint64_t rows = t->shape[0], cols = t->shape[1];
        float *f = malloc(rows * cols * sizeof(float));
        for (uint64_t r = 0; r < rows; r++)
                mx_dequant_row(t->dtype, mx_tensor_row(t, r), f + r * cols, cols);
        return f;
}

/* C[n][rows] = X[n][cols] . W[rows][cols]^T, as the engine's products. */
static double sgemm(const float *w, uint64_t rows, uint64_t cols, const float *x, float *c, int n) {
        double t0 = now();
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, (int)rows, (int)cols, 1.0f, x, (int)cols,
                    w, (int)cols, 0.0f, c, (int)rows);
        return now() - t0;
}

int main(int argc, char **argv) {
        if (argc < 2) {
                fprintf(stderr, "usage: %s MODEL_DIR [THREADS [TOKENS]]\n", argv[0]);
                return 2;
        }
        uint32_t threads = argc > 2 ? (uint32_t)atoi(argv[2]) : 0, n = argc > 3 ? (uint32_t)atoi(argv[3]) : 512;
        mx_error err = {0};
        mx_model *m = NULL;
        mx_engine *e = NULL;
        mx_engine_opts o = {.threads = threads};
        if (mx_model_open(&m, argv[1], &err) < 0 || mx_engine_open(&e, m, &o, &err) < 0) {
                fprintf(stderr, "%s\n", err.msg);
                return 1;
        }
        mx_model_prefault(m, NULL, NULL);
        const mx_config *c = &m->cfg;
        int32_t *ids = malloc(n * sizeof(int32_t));
        uint64_t x = 88172645463325252ull;
        for (uint32_t i = 0; i < n; i++) {
                x ^= x << 13, x ^= x >> 7, x ^= x << 17;
                ids[i] = i == 0 ? 1 : (int32_t)(3 + x % (c->vocab_size - 3));
        }
        float *logits = malloc(c->vocab_size * sizeof(float));
        double best = 1e30;
        mx_engine_counters c0, c1;
        for (int rep = 0; rep < 3; rep++) {
                mx_seq *s = NULL;
                mx_seq_new(e, n + 1, &s, &err);
                mx_engine_counters_get(e, &c0);
                double t0 = now();
                mx_batch_item it = {.seq = s, .tokens = ids, .n_tokens = n, .logits = logits, .all_logits = false};
                if (mx_forward(e, &it, 1, &err) < 0) {
                        fprintf(stderr, "%s\n", err.msg);
                        return 1;
                }
                double dt = now() - t0;
                best = dt < best ? dt : best;
                mx_engine_counters_get(e, &c1);
                mx_seq_free(s);
        }
        double flops = (double)(c1.matmul_flops - c0.matmul_flops);

        /* OpenBLAS on the same products. Experts: the engine's FLOPs of the
         * expert products tell how many token-expert pairs there were
         * (n x top-k); they are spread evenly here, which only helps BLAS. */
        long online = sysconf(_SC_NPROCESSORS_ONLN);
        openblas_set_num_threads(threads ? (int)threads : (int)online);
        const mx_layer *l = &m->layers[0];
        float *wq = to_f32(l->wq), *wk = to_f32(l->wk), *wv = to_f32(l->wv), *wo = to_f32(l->wo);
        float *w1 = to_f32(l->w1[0]), *w2 = to_f32(l->w2[0]), *router = to_f32(l->router);
        float *lm = to_f32(m->lm_head);
        uint64_t h = c->hidden_size, f = c->intermediate_size, q = (uint64_t)c->n_heads * c->head_dim,
                 kv = (uint64_t)c->n_kv_heads * c->head_dim;
        uint32_t per_expert = n * c->n_experts_per_tok / c->n_experts;
        float *xin = malloc((size_t)n * (f > h ? f : h) * sizeof(float)), *out = malloc((size_t)n * (f > q ? f : q) * sizeof(float));
        for (size_t i = 0; i < (size_t)n * (f > h ? f : h); i++)
                xin[i] = (float)((i * 2654435761u) % 1000) / 1000.0f - 0.5f;
        double blas_best = 1e30, blas_flops = 0;
        for (int rep = 0; rep < 3; rep++) {
                double t = 0;
                blas_flops = 0;
                for (uint32_t L = 0; L < c->n_layers; L++) {
                        t += sgemm(wq, q, h, xin, out, (int)n) + sgemm(wk, kv, h, xin, out, (int)n) +
                             sgemm(wv, kv, h, xin, out, (int)n) + sgemm(wo, h, q, xin, out, (int)n) +
                             sgemm(router, c->n_experts, h, xin, out, (int)n);
                        blas_flops += 2.0 * n * h * (2 * q + 2 * kv + c->n_experts);
                        for (uint32_t ex = 0; ex < c->n_experts; ex++) {
                                t += 2 * sgemm(w1, f, h, xin, out, (int)per_expert) +
                                     sgemm(w2, h, f, xin, out, (int)per_expert);
                                blas_flops += 2.0 * per_expert * 3 * h * f;
                        }
                }
                t += sgemm(lm, c->vocab_size, h, xin, out, 1);
                blas_flops += 2.0 * c->vocab_size * h;
                blas_best = t < blas_best ? t : blas_best;
        }
        double ours = flops / best / 1e9, blas = blas_flops / blas_best / 1e9;
        printf("{\"benchmark\": \"prefill\", \"engine\": \"%s\", \"tokens\": %u, \"prefill_s\": %.3f, "
               "\"prefill_tokens_per_s\": %.1f, \"engine_GFLOPs\": %.1f, \"openblas_sgemm_GFLOPs\": %.1f, "
               "\"ratio\": %.3f}\n",
               mx_engine_describe(e), n, best, n / best, ours, blas, ours / blas);
        return 0;
}
