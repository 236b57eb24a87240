/* --bench: prefill and decode speed, and decode as a fraction of the
 * memory bandwidth measured in the same run (bench/README.md). Decode
 * is greedy and ignores EOS so every run does the same work; --batch runs
 * it for several sequences in lockstep. The ceilings: on the CPU the larger
 * of memcpy and a read pass (medians of three, taken after decoding); on a
 * GPU a device-to-device copy and a large cuBLAS bf16 GEMM. */
#include <stdio.h>
#include <string.h>

#include "mx_common.h"
#include "mx_config.h"
#include "run.h"

#if MX_HAVE_CUDA
#include "mixtral_kernels.h"
#endif

#define DEFAULT_PROMPT 512
#define BATCH_PROMPT 128
#define DEFAULT_DECODE 64

/* The given prompt, or BOS and DEFAULT_PROMPT - 1 fixed pseudo-random ids. */
static int bench_prompt(const run_opts *o, const mx_load *l, mx_ids *ids, mx_error *err) {
        const mx_model *m = l->model;
        if (run_has_prompt(o))
                return run_prompt_ids(o, l->tok, ids, err);
        uint64_t x = 88172645463325252ull;
        int r = mx_ids_push(ids, m->cfg.bos_token_id >= 0 ? m->cfg.bos_token_id : 1);
        for (int i = 1; r == 0 && i < DEFAULT_PROMPT; i++) {
                x ^= x << 13, x ^= x >> 7, x ^= x << 17;
                r = mx_ids_push(ids, (int32_t)(3 + x % (m->cfg.vocab_size - 3)));
        }
        return r < 0 ? mx_error_set(err, r, "out of memory") : 0;
}

typedef struct ceilings {
        double memcpy_gbps, read_gbps, bw_gbps; /* bw: what decode is compared with */
        double gemm_tflops;                     /* 0 on the CPU */
        double upload_gbps;                     /* pinned host to GPU; 0 on the CPU */
        double gpu_used_gib;
} ceilings;

static void measure_cpu(const run_opts *o, ceilings *c) {
        mx_measure_bandwidth(1u << 30, o->threads, &c->memcpy_gbps, &c->read_gbps);
        c->bw_gbps = c->memcpy_gbps > c->read_gbps ? c->memcpy_gbps : c->read_gbps;
}

static int measure_gpu(const run_opts *o, ceilings *c, mx_error *err) {
#if MX_HAVE_CUDA
        int index;
        run_on_gpu(o, &index);
        mxk_ctx *ctx = NULL;
        char why[256];
        if (mxk_ctx_new(index, &ctx, why, sizeof(why)) < 0)
                return mx_error_set(err, -ENODEV, "%s", why);
        size_t free_b = 0, total_b = 0;
        mxk_free_memory(ctx, &free_b, &total_b);
        c->gpu_used_gib = (double)(total_b - free_b) / (1u << 30);
        /* As large a copy as free memory allows, up to 1 GiB each way. */
        int r = -ENOMEM;
        for (size_t bytes = (size_t)1 << 30; r == -ENOMEM && bytes >= (16u << 20); bytes /= 2)
                r = mxk_measure_copy(ctx, bytes, &c->memcpy_gbps);
        if (r == 0)
                r = mxk_measure_gemm(ctx, 8192, 8192, 8192, &c->gemm_tflops);
        if (r == -ENOMEM)
                r = mxk_measure_gemm(ctx, 4096, 4096, 4096, &c->gemm_tflops);
        /* What streamed experts can reach: one expert's size of Mixtral. */
        if (r == 0)
                r = mxk_measure_upload(ctx, (size_t)256 << 20, &c->upload_gbps);
        if (r < 0)
                mxk_status(ctx, why, sizeof(why));
        mxk_ctx_free(ctx);
        c->bw_gbps = c->memcpy_gbps;
        return r < 0 ? mx_error_set(err, r, "measuring the GPU: %s", why) : 0;
#else
        return mx_error_set(err, -ENODEV, "this build has no CUDA support");
#endif
}

typedef struct decode_result {
        uint32_t batch;
        double tokens_per_s, step_s, weight_bytes, kv_bytes; /* bytes per step */
        double expert_bytes_read, expert_hits, expert_misses, read_wait_s; /* per step, streaming */
        double expert_bytes_uploaded;                                      /* per step, on a GPU */
} decode_result;

static void free_samplers(mx_sampler **p, uint32_t n) {
        for (uint32_t i = 0; p && i < n; i++)
                mx_sampler_free(p[i]);
        free(p);
}

/* B sequences, each prefilled with `depth` tokens of the prompt (shifted
 * so they route differently; at most the prompt), then `decode` greedy
 * steps of all of them together. The engine draws the tokens (on the GPU
 * there), as the daemon has it do. */
static int decode_batch(mx_engine *e, const mx_ids *prompt, uint32_t B, uint32_t depth, uint32_t decode,
                        decode_result *out, mx_error *err) {
        uint32_t vocab = mx_engine_model(e)->cfg.vocab_size;
        uint32_t plen = prompt->n < depth ? (uint32_t)prompt->n : depth;
        mx_seq **seqs = calloc(B, sizeof(*seqs));
        mx_sampler **pick = calloc(B, sizeof(*pick));
        mx_batch_item *items = calloc(B, sizeof(*items));
        int32_t *toks = calloc((size_t)B * plen, sizeof(int32_t));
        mx_sampling greedy = {.temperature = 0, .top_p = 1, .repeat_penalty = 1};
        int r = seqs && pick && items && toks ? 0 : mx_error_set(err, -ENOMEM, "out of memory");
        for (uint32_t i = 0; r == 0 && i < B; i++) {
                if (mx_sampler_new(&greedy, vocab, &pick[i]) < 0) {
                        r = mx_error_set(err, -ENOMEM, "out of memory");
                        break;
                }
                r = mx_seq_new(e, plen + decode + 3, &seqs[i], err);
                for (uint32_t j = 0; j < plen; j++)
                        toks[(size_t)i * plen + j] = prompt->v[j ? 1 + (j - 1 + i * 7) % (prompt->n - 1) : 0];
                items[i] = (mx_batch_item){.seq = seqs[i], .tokens = toks + (size_t)i * plen, .n_tokens = plen,
                                           .sampler = pick[i], .sampled = &toks[(size_t)i * plen]};
        }
        if (r == 0)
                r = mx_forward(e, items, B, err);
        mx_engine_counters c0, c1;
        mx_expert_stats x0 = {0}, x1;
        double t0 = 0;
        /* Two steps untimed: first calls of a shape load kernels and record
         * CUDA graphs. */
        for (uint32_t s = 0; r == 0 && s < decode + 2; s++) {
                if (s == 2) {
                        mx_engine_counters_get(e, &c0);
                        mx_engine_expert_stats(e, &x0);
                        t0 = run_now();
                }
                for (uint32_t i = 0; i < B; i++)
                        items[i] = (mx_batch_item){.seq = seqs[i], .tokens = &toks[(size_t)i * plen], .n_tokens = 1,
                                                   .sampler = pick[i], .sampled = &toks[(size_t)i * plen]};
                r = mx_forward(e, items, B, err);
        }
        double secs = run_now() - t0;
        mx_engine_counters_get(e, &c1);
        mx_engine_expert_stats(e, &x1);
        if (r == 0)
                *out = (decode_result){B, (double)B * decode / secs, secs / decode,
                                       (double)(c1.weight_bytes - c0.weight_bytes) / decode,
                                       (double)(c1.kv_bytes - c0.kv_bytes) / decode,
                                       (double)(x1.bytes_read - x0.bytes_read) / decode,
                                       (double)(x1.hits - x0.hits) / decode, (double)(x1.misses - x0.misses) / decode,
                                       (x1.read_wait_s - x0.read_wait_s) / decode,
                                       (double)(x1.bytes_uploaded - x0.bytes_uploaded) / decode};
        for (uint32_t i = 0; seqs && i < B; i++)
                mx_seq_free(seqs[i]);
        free_samplers(pick, B);
        free(seqs), free(items), free(toks);
        return r;
}

static void print_decode(const decode_result *d, const ceilings *c, bool first) {
        double bytes = d->weight_bytes + d->kv_bytes, achieved = bytes / d->step_s / 1e9;
        double bound = bytes / (c->bw_gbps * 1e9);
        printf("%s{\"batch\": %u, \"tokens_per_s\": %.3f, \"step_ms\": %.3f, \"weight_bytes_per_step\": %.0f, "
               "\"kv_bytes_per_step\": %.0f, \"achieved_GBps\": %.2f, \"fraction_of_bandwidth\": %.3f, "
               "\"bound_ms\": %.3f, \"step_over_bound\": %.3f, \"expert_bytes_read_per_step\": %.0f, "
               "\"expert_read_GBps\": %.3f, \"expert_hit_rate\": %.4f, \"read_wait_ms_per_step\": %.3f, "
               "\"expert_bytes_uploaded_per_step\": %.0f}",
               first ? "" : ", ", d->batch, d->tokens_per_s, d->step_s * 1e3, d->weight_bytes, d->kv_bytes,
               achieved, achieved / c->bw_gbps, bound * 1e3, d->step_s / bound, d->expert_bytes_read,
               d->expert_bytes_read / d->step_s / 1e9,
               d->expert_hits + d->expert_misses > 0 ? d->expert_hits / (d->expert_hits + d->expert_misses) : 1.0,
               d->read_wait_s * 1e3, d->expert_bytes_uploaded);
}

int run_bench(const run_opts *o) {
        mx_error err = {0};
        _cleanup_(mx_load_free) mx_load l = {.gpu = -1};
        _cleanup_(mx_seq_freep) mx_seq *s = NULL;
        _cleanup_(mx_ids_free) mx_ids prompt = {0};
        if (run_load(o, run_has_prompt(o), &l, &err) < 0 || bench_prompt(o, &l, &prompt, &err) < 0)
                return run_fail(&err);
        const mx_model *m = l.model;
        mx_engine *e = l.engine;
        uint32_t decode = o->max_tokens ? o->max_tokens : DEFAULT_DECODE, vocab = m->cfg.vocab_size;
        _cleanup_free_ float *logits = malloc(vocab * sizeof(float));
        if (!logits)
                return run_fail(&(mx_error){.msg = "out of memory"});
        if (mx_seq_new(e, o->ctx ? o->ctx : (uint32_t)prompt.n + 1, &s, &err) < 0)
                return run_fail(&err);
        /* Once untimed: first calls load kernels and pick cuBLAS algorithms,
         * and the CPU's pages come in. */
        mx_batch_item it = {.seq = s, .tokens = prompt.v, .n_tokens = (uint32_t)prompt.n, .logits = logits, .all_logits = false};
        if (mx_forward(e, &it, 1, &err) < 0)
                return run_fail(&err);
        mx_seq_reset(s);
        mx_engine_counters c0, c1;
        mx_engine_counters_get(e, &c0);
        double t0 = run_now();
        if (mx_forward(e, &it, 1, &err) < 0)
                return run_fail(&err);
        double prefill_s = run_now() - t0;
        mx_engine_counters_get(e, &c1);
        double prefill_flops = (double)(c1.matmul_flops - c0.matmul_flops);

        size_t nb = o->n_batch ? o->n_batch : 1;
        decode_result res[16];
        for (size_t i = 0; i < nb && i < MX_ELEMENTSOF(res); i++)
                if (decode_batch(e, &prompt, o->n_batch ? o->batch[i] : 1, o->depth ? o->depth : BATCH_PROMPT, decode,
                                 &res[i], &err) < 0)
                        return run_fail(&err);
        ceilings c = {0};
        if (run_on_gpu(o, NULL)) {
                if (measure_gpu(o, &c, &err) < 0)
                        return run_fail(&err);
        } else {
                measure_cpu(o, &c);
        }
        const decode_result *d = &res[0];
        double achieved = (d->weight_bytes + d->kv_bytes) / d->step_s / 1e9;
        uint32_t depth = o->depth ? o->depth : BATCH_PROMPT;
        printf("{\"model\": \"%s\", \"engine\": \"%s\", \"prompt_tokens\": %zu, \"decode_depth\": %zu, "
               "\"prefill_tokens_per_s\": %.2f, \"prefill_TFLOPs\": %.3f, \"decode_tokens\": %u, "
               "\"decode_tokens_per_s\": %.3f, \"weight_bytes_per_token\": %.0f, \"kv_bytes_per_token\": %.0f, "
               "\"achieved_GBps\": %.2f, \"memcpy_GBps\": %.2f, \"fraction_of_bandwidth\": %.3f",
               m->dir, mx_engine_describe(e), prompt.n, prompt.n < depth ? prompt.n : (size_t)depth,
               (double)prompt.n / prefill_s,
               prefill_flops / prefill_s / 1e12, decode, d->tokens_per_s / d->batch, d->weight_bytes,
               d->kv_bytes, achieved, c.memcpy_gbps, achieved / c.bw_gbps);
        /* The CPU's read-only pass; the GPU's ceilings are the copy and GEMM. */
        if (!run_on_gpu(o, NULL))
                printf(", \"read_GBps\": %.2f", c.read_gbps);
        else
                printf(", \"gemm_TFLOPs\": %.1f, \"prefill_fraction_of_gemm\": %.3f, \"gpu_memory_used_GiB\": %.2f, "
                       "\"upload_GBps\": %.2f",
                       c.gemm_tflops, prefill_flops / prefill_s / 1e12 / c.gemm_tflops, c.gpu_used_gib, c.upload_gbps);
        mx_expert_stats xs;
        mx_engine_expert_stats(e, &xs);
        if (xs.streaming)
                printf(", \"experts\": {\"budget_bytes\": %llu, \"slots_per_layer\": %u, \"resident_max_bytes\": %llu, "
                       "\"hits\": %llu, \"misses\": %llu, \"hit_rate\": %.4f, \"bytes_read\": %llu, \"reads\": %llu, "
                       "\"uring_reads\": %llu, \"read_wait_s\": %.4f, \"predicted\": %llu, \"predicted_used\": %llu, "
                       "\"prediction_accuracy\": %.4f, \"host_budget_bytes\": %llu, \"host_hits\": %llu, "
                       "\"host_misses\": %llu, \"bytes_uploaded\": %llu, \"how\": \"%s\"}",
                       (unsigned long long)xs.budget, xs.slots_per_layer, (unsigned long long)xs.resident_max,
                       (unsigned long long)xs.hits, (unsigned long long)xs.misses,
                       xs.hits + xs.misses ? (double)xs.hits / (double)(xs.hits + xs.misses) : 0,
                       (unsigned long long)xs.bytes_read, (unsigned long long)xs.reads,
                       (unsigned long long)xs.uring_reads, xs.read_wait_s, (unsigned long long)xs.predicted,
                       (unsigned long long)xs.predicted_used,
                       xs.predicted ? (double)xs.predicted_used / (double)xs.predicted : 0,
                       (unsigned long long)xs.host_budget, (unsigned long long)xs.host_hits,
                       (unsigned long long)xs.host_misses, (unsigned long long)xs.bytes_uploaded, xs.how);
        printf(", \"batches\": [");
        for (size_t i = 0; i < nb && i < MX_ELEMENTSOF(res); i++)
                print_decode(&res[i], &c, i == 0);
        printf("]}\n");
        return 0;
}
