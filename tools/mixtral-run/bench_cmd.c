/* --bench: prefill and decode speed, and decode as a fraction of the
 * memory bandwidth measured in the same run (DESIGN.md section 6). Decode
 * is greedy and ignores EOS so every run does the same work. The bandwidth
 * is the larger of memcpy and a read pass on the same threads, each the
 * median of three measurements taken after decoding. */
#include <stdio.h>
#include <string.h>

#include "mx_common.h"
#include "run.h"

#define DEFAULT_PROMPT 512
#define DEFAULT_DECODE 64

/* The given prompt, or BOS and DEFAULT_PROMPT - 1 fixed pseudo-random ids. */
static int bench_prompt(const run_opts *o, const mx_model *m, mx_ids *ids, mx_error *err) {
        if (run_has_prompt(o)) {
                _cleanup_(mx_tokenizer_freep) mx_tokenizer *tok = NULL;
                int r = run_load_tokenizer(o, &tok, err);
                return r < 0 ? r : run_prompt_ids(o, tok, ids, err);
        }
        uint64_t x = 88172645463325252ull;
        int r = mx_ids_push(ids, m->cfg.bos_token_id >= 0 ? m->cfg.bos_token_id : 1);
        for (int i = 1; r == 0 && i < DEFAULT_PROMPT; i++) {
                x ^= x << 13, x ^= x >> 7, x ^= x << 17;
                r = mx_ids_push(ids, (int32_t)(3 + x % (m->cfg.vocab_size - 3)));
        }
        return r < 0 ? mx_error_set(err, r, "out of memory") : 0;
}

static double median3(const double v[3]) {
        double a = v[0], b = v[1], c = v[2];
        return a > b ? (b > c ? b : a > c ? c : a) : (a > c ? a : b > c ? c : b);
}

int run_bench(const run_opts *o) {
        mx_error err = {0};
        _cleanup_(mx_model_freep) mx_model *m = NULL;
        _cleanup_(mx_engine_freep) mx_engine *e = NULL;
        _cleanup_(mx_seq_freep) mx_seq *s = NULL;
        _cleanup_(mx_ids_free) mx_ids prompt = {0};
        if (run_load(o, &m, &e, &err) < 0 || bench_prompt(o, m, &prompt, &err) < 0)
                return run_fail(&err);
        uint32_t decode = o->max_tokens ? o->max_tokens : DEFAULT_DECODE, vocab = m->cfg.vocab_size;
        _cleanup_free_ float *logits = malloc(vocab * sizeof(float));
        mx_sampling greedy = {.temperature = 0, .top_p = 1, .repeat_penalty = 1};
        mx_sampler *pick = NULL;
        if (!logits || mx_sampler_new(&greedy, vocab, &pick) < 0)
                return run_fail(&(mx_error){.msg = "out of memory"});
        if (mx_seq_new(e, o->ctx ? o->ctx : (uint32_t)prompt.n + decode + 1, &s, &err) < 0) {
                mx_sampler_free(pick);
                return run_fail(&err);
        }

        double t0 = run_now();
        mx_batch_item it = {s, prompt.v, (uint32_t)prompt.n, logits, false};
        if (mx_forward(e, &it, 1, &err) < 0)
                return run_fail(&err);
        double prefill_s = run_now() - t0;

        mx_engine_counters c0, c1;
        mx_engine_counters_get(e, &c0);
        t0 = run_now();
        int r = 0;
        for (uint32_t i = 0; r == 0 && i < decode; i++) {
                int32_t tok = mx_sampler_next(pick, logits, NULL, 0);
                it = (mx_batch_item){s, &tok, 1, logits, false};
                r = mx_forward(e, &it, 1, &err);
        }
        mx_sampler_free(pick);
        if (r < 0)
                return run_fail(&err);
        double decode_s = run_now() - t0;
        mx_engine_counters_get(e, &c1);

        /* Shared machines swing: the median of three measurements. */
        double cp[3] = {0}, rd[3] = {0};
        for (int i = 0; i < 3; i++)
                mx_measure_bandwidth(1u << 30, o->threads, &cp[i], &rd[i]);
        double memcpy_gbps = median3(cp), read_gbps = median3(rd);
        double bw = memcpy_gbps > read_gbps ? memcpy_gbps : read_gbps;
        double wpt = (double)(c1.weight_bytes - c0.weight_bytes) / decode;
        double kpt = (double)(c1.kv_bytes - c0.kv_bytes) / decode;
        double tps = decode / decode_s, achieved = (wpt + kpt) * tps / 1e9;
        printf("{\"model\": \"%s\", \"engine\": \"%s\", \"prompt_tokens\": %zu, "
               "\"prefill_tokens_per_s\": %.2f, \"decode_tokens\": %u, \"decode_tokens_per_s\": %.3f, "
               "\"weight_bytes_per_token\": %.0f, \"kv_bytes_per_token\": %.0f, \"achieved_GBps\": %.2f, "
               "\"memcpy_GBps\": %.2f, \"read_GBps\": %.2f, \"fraction_of_bandwidth\": %.3f}\n",
               o->model, mx_engine_describe(e), prompt.n, (double)prompt.n / prefill_s, decode, tps, wpt,
               kpt, achieved, memcpy_gbps, read_gbps, achieved / bw);
        return 0;
}
