/* mixtral-gpu-check: the CUDA engine against the CPU engine on one model
 * (docs/testing.md). Checks, each printed as a line of a Markdown table:
 *   prefill  logits of every prompt position (cuBLAS path), relative L2
 *   decode   greedy steps: ids equal, logits of each step (GEMV path)
 *   batch    sequences stepped together on the GPU against each alone
 *   prefix   logits after a prefix from the KV cache (whole blocks shared,
 *            a last block copied) equal those after computing it, bit for
 *            bit, on the checked engine
 *   streamed with --expert-memory: the checks above ran with the experts
 *            streamed, which happened (misses, copies) within the budget
 * Both engines hold K and V as --kv-type says (bf16 by default).
 * Exit status 0 when all hold, 1 when one fails, 77 without a GPU. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "mixtral.h"
#include "mx_common.h"

#define MAX_REL_L2 1e-2

static int failures;

static double rel_l2(const float *a, const float *ref, size_t n) {
        double d = 0, r = 0;
        for (size_t i = 0; i < n; i++) {
                double x = (double)a[i] - ref[i];
                d += x * x;
                r += (double)ref[i] * ref[i];
        }
        return r > 0 ? sqrt(d / r) : sqrt(d);
}

static void report(const char *model, const char *check, const char *detail, double err, bool ok) {
        printf("| %s | %s | %s | %.2e | %s |\n", model, check, detail, err, ok ? "pass" : "FAIL");
        fflush(stdout);
        failures += !ok;
}

static int32_t argmax(const float *v, uint32_t n) {
        uint32_t best = 0;
        for (uint32_t i = 1; i < n; i++)
                if (v[i] > v[best])
                        best = i;
        return (int32_t)best;
}

static void make_prompt(uint32_t vocab, uint32_t n, uint64_t seed, int32_t *out) {
        uint64_t x = 0x9e3779b97f4a7c15ull * (seed + 1);
        out[0] = 1;
        for (uint32_t i = 1; i < n; i++) {
                x ^= x << 13, x ^= x >> 7, x ^= x << 17;
                out[i] = (int32_t)(3 + x % (vocab - 3));
        }
}

typedef struct pair {
        const char *label;
        mx_engine *cpu, *gpu;
        uint32_t vocab;
} pair;

/* Prompt logits at every position, then greedy steps on each engine. */
static int check_against_cpu(const pair *p, uint32_t n_prompt, uint32_t steps, mx_error *err) {
        uint32_t V = p->vocab;
        _cleanup_free_ int32_t *prompt = malloc(n_prompt * sizeof(int32_t));
        _cleanup_free_ float *lc = malloc((size_t)n_prompt * V * sizeof(float));
        _cleanup_free_ float *lg = malloc((size_t)n_prompt * V * sizeof(float));
        _cleanup_(mx_seq_freep) mx_seq *sc = NULL;
        _cleanup_(mx_seq_freep) mx_seq *sg = NULL;
        if (!prompt || !lc || !lg)
                return mx_error_set(err, -ENOMEM, "out of memory");
        make_prompt(V, n_prompt, 0, prompt);
        int r = mx_seq_new(p->cpu, n_prompt + steps + 1, &sc, err);
        if (r == 0)
                r = mx_seq_new(p->gpu, n_prompt + steps + 1, &sg, err);
        mx_batch_item ic = {.seq = sc, .tokens = prompt, .n_tokens = n_prompt, .logits = lc, .all_logits = true}, ig = {.seq = sg, .tokens = prompt, .n_tokens = n_prompt, .logits = lg, .all_logits = true};
        if (r < 0 || (r = mx_forward(p->cpu, &ic, 1, err)) < 0 || (r = mx_forward(p->gpu, &ig, 1, err)) < 0)
                return r;
        double worst = 0;
        for (uint32_t i = 0; i < n_prompt; i++) {
                double e = rel_l2(lg + (size_t)i * V, lc + (size_t)i * V, V);
                worst = e > worst ? e : worst;
        }
        char detail[96];
        snprintf(detail, sizeof(detail), "%u positions, worst relative L2", n_prompt);
        report(p->label, "prefill logits", detail, worst, worst < MAX_REL_L2);

        int32_t tc = argmax(lc + (size_t)(n_prompt - 1) * V, V), tg = argmax(lg + (size_t)(n_prompt - 1) * V, V);
        uint32_t same = tc == tg;
        worst = 0;
        for (uint32_t s = 0; s < steps && tc == tg; s++) {
                ic = (mx_batch_item){.seq = sc, .tokens = &tc, .n_tokens = 1, .logits = lc, .all_logits = false};
                ig = (mx_batch_item){.seq = sg, .tokens = &tg, .n_tokens = 1, .logits = lg, .all_logits = false};
                if ((r = mx_forward(p->cpu, &ic, 1, err)) < 0 || (r = mx_forward(p->gpu, &ig, 1, err)) < 0)
                        return r;
                double e = rel_l2(lg, lc, V);
                worst = e > worst ? e : worst;
                tc = argmax(lc, V), tg = argmax(lg, V);
                same += tc == tg;
        }
        snprintf(detail, sizeof(detail), "%u of %u greedy ids equal; worst step logits L2", same, steps + 1);
        report(p->label, "decode", detail, worst, same == steps + 1 && worst < MAX_REL_L2);
        return 0;
}

#define BATCH 6
#define BATCH_STEPS 4

/* BATCH sequences of different lengths: prefilled and stepped together,
 * against each on its own, on the GPU. */
static int check_batch(const pair *p, mx_error *err) {
        uint32_t V = p->vocab;
        int32_t prompts[BATCH][16], ids_alone[BATCH][BATCH_STEPS], ids_batch[BATCH][BATCH_STEPS];
        _cleanup_free_ float *la = malloc((size_t)V * sizeof(float));
        _cleanup_free_ float *lb = malloc((size_t)BATCH * V * sizeof(float));
        _cleanup_free_ float *alone = malloc((size_t)BATCH * BATCH_STEPS * V * sizeof(float));
        mx_seq *seqs[BATCH] = {0};
        mx_batch_item items[BATCH];
        int r = la && lb && alone ? 0 : mx_error_set(err, -ENOMEM, "out of memory");
        for (uint32_t i = 0; r == 0 && i < BATCH; i++) {
                uint32_t n = 5 + i;
                make_prompt(V, n, 10 + i, prompts[i]);
                _cleanup_(mx_seq_freep) mx_seq *s = NULL;
                mx_batch_item it = {.seq = NULL, .tokens = prompts[i], .n_tokens = n, .logits = la, .all_logits = false};
                if ((r = mx_seq_new(p->gpu, 32, &s, err)) < 0)
                        break;
                it.seq = s;
                for (uint32_t k = 0; r == 0 && k < BATCH_STEPS; k++) {
                        if ((r = mx_forward(p->gpu, &it, 1, err)) < 0)
                                break;
                        memcpy(alone + ((size_t)i * BATCH_STEPS + k) * V, la, V * sizeof(float));
                        ids_alone[i][k] = argmax(la, V);
                        it = (mx_batch_item){.seq = s, .tokens = &ids_alone[i][k], .n_tokens = 1, .logits = la, .all_logits = false};
                }
        }
        for (uint32_t i = 0; r == 0 && i < BATCH; i++)
                if ((r = mx_seq_new(p->gpu, 32, &seqs[i], err)) == 0)
                        items[i] = (mx_batch_item){.seq = seqs[i], .tokens = prompts[i], .n_tokens = 5 + i, .logits = lb + (size_t)i * V, .all_logits = false};
        double worst = 0;
        uint32_t same = 0;
        for (uint32_t k = 0; r == 0 && k < BATCH_STEPS; k++) {
                if ((r = mx_forward(p->gpu, items, BATCH, err)) < 0)
                        break;
                for (uint32_t i = 0; i < BATCH; i++) {
                        double e = rel_l2(lb + (size_t)i * V, alone + ((size_t)i * BATCH_STEPS + k) * V, V);
                        worst = e > worst ? e : worst;
                        ids_batch[i][k] = argmax(lb + (size_t)i * V, V);
                        same += ids_batch[i][k] == ids_alone[i][k];
                        /* Each goes on with its own-run id, so both runs see the same tokens. */
                        items[i] = (mx_batch_item){.seq = seqs[i], .tokens = &ids_alone[i][k], .n_tokens = 1, .logits = lb + (size_t)i * V, .all_logits = false};
                }
        }
        for (uint32_t i = 0; i < BATCH; i++)
                mx_seq_free(seqs[i]);
        if (r < 0)
                return r;
        char detail[96];
        snprintf(detail, sizeof(detail), "%u sequences x %u steps: %u ids equal; worst L2", BATCH,
                 BATCH_STEPS, same);
        report(p->label, "batched vs alone (GPU)", detail, worst, same == BATCH * BATCH_STEPS && worst < MAX_REL_L2);
        return 0;
}

static const float *sort_key;

static int by_key_desc(const void *a, const void *b) {
        float x = sort_key[*(const int32_t *)a], y = sort_key[*(const int32_t *)b];
        return x > y ? -1 : x < y ? 1 : *(const int32_t *)a - *(const int32_t *)b;
}

/* Whether `id` is among the tokens the CPU sampler could draw from these
 * logits (engine/sampler.c's rules): penalty, temperature, top-k, then
 * top-p and min-p in order of likelihood. */
static bool allowed(const float *logits, uint32_t V, const mx_sampling *p, const int32_t *hist, size_t n_hist,
                    int32_t id) {
        float *s = malloc(V * sizeof(float));
        int32_t *order = malloc(V * sizeof(int32_t));
        bool ok = false;
        if (!s || !order)
                goto done;
        memcpy(s, logits, V * sizeof(float));
        size_t from = p->repeat_last_n && n_hist > p->repeat_last_n ? n_hist - p->repeat_last_n : 0;
        for (size_t i = from; i < n_hist && p->repeat_penalty != 1.0f; i++) {
                bool seen = false;
                for (size_t j = from; j < i; j++)
                        seen |= hist[j] == hist[i];
                if (!seen)
                        s[hist[i]] = s[hist[i]] > 0 ? s[hist[i]] / p->repeat_penalty : s[hist[i]] * p->repeat_penalty;
        }
        for (uint32_t i = 0; i < V; i++)
                s[i] /= p->temperature, order[i] = (int32_t)i;
        sort_key = s;
        qsort(order, V, sizeof(int32_t), by_key_desc);
        uint32_t n = p->top_k && p->top_k < V ? p->top_k : V;
        double sum = 0, max = s[order[0]], mass = 0;
        for (uint32_t i = 0; i < n; i++)
                sum += exp((double)s[order[i]] - max);
        /* A token right at a cut may fall either way in float or double. */
        for (uint32_t k = 0; k < n; k++) {
                double pr = exp((double)s[order[k]] - max) / sum;
                bool cut_p = k > 0 && mass >= p->top_p * (1 + 1e-4);
                bool cut_m = k > 0 && pr < p->min_p / sum * (1 - 1e-4);
                if (order[k] == id) {
                        ok = !cut_p && !cut_m;
                        break;
                }
                mass += pr;
        }
        /* Ties at the top-k boundary: the GPU keeps every equal one. */
        if (!ok && n < V && s[id] == s[order[n - 1]])
                ok = true;
done:
        free(s);
        free(order);
        return ok;
}

/* Tokens drawn by the engine on the GPU, three sequences with different
 * settings in one batch: greedy equals the first maximum of the logits,
 * every draw is one the CPU sampler's rules allow, and the same seeds give
 * the same tokens again. */
static int check_sampling(const pair *p, mx_error *err) {
        enum { SEQS = 3, STEPS = 12 };
        uint32_t V = p->vocab;
        mx_sampling set[SEQS] = {
                {.temperature = 0, .top_p = 1, .repeat_penalty = 1},
                {.temperature = 0.8f, .top_k = 40, .top_p = 0.95f, .min_p = 0.05f, .repeat_penalty = 1.3f,
                 .repeat_last_n = 64, .seed = 7},
                {.temperature = 1.5f, .top_p = 0.5f, .repeat_penalty = 1, .seed = 9},
        };
        int32_t runs[2][SEQS][STEPS];
        uint32_t good = 0, total = 0;
        _cleanup_free_ float *lg = malloc((size_t)SEQS * V * sizeof(float));
        if (!lg)
                return mx_error_set(err, -ENOMEM, "out of memory");
        for (int run = 0; run < 2; run++) {
                mx_seq *seqs[SEQS] = {0};
                mx_sampler *smp[SEQS] = {0};
                mx_ids hist[SEQS] = {{0}};
                mx_batch_item items[SEQS];
                int32_t next[SEQS];
                int r = 0;
                for (int i = 0; r == 0 && i < SEQS; i++) {
                        int32_t prompt[16];
                        make_prompt(V, 16, 40 + i, prompt);
                        if ((r = mx_seq_new(p->gpu, 64, &seqs[i], err)) == 0 &&
                            (mx_sampler_new(&set[i], V, &smp[i]) < 0 || mx_ids_append(&hist[i], prompt, 16) < 0))
                                r = mx_error_set(err, -ENOMEM, "out of memory");
                }
                for (int k = 0; r == 0 && k < STEPS; k++) {
                        for (int i = 0; i < SEQS; i++)
                                items[i] = (mx_batch_item){.seq = seqs[i],
                                                           .tokens = k ? &hist[i].v[hist[i].n - 1] : hist[i].v,
                                                           .n_tokens = k ? 1 : (uint32_t)hist[i].n,
                                                           .logits = lg + (size_t)i * V, .sampler = smp[i],
                                                           .history = hist[i].v, .n_history = hist[i].n,
                                                           .sampled = &next[i]};
                        if ((r = mx_forward(p->gpu, items, SEQS, err)) < 0)
                                break;
                        for (int i = 0; i < SEQS; i++) {
                                const float *l = lg + (size_t)i * V;
                                bool ok = set[i].temperature == 0 ? next[i] == argmax(l, V)
                                                                  : allowed(l, V, &set[i], hist[i].v, hist[i].n, next[i]);
                                good += ok, total++;
                                runs[run][i][k] = next[i];
                                if (mx_ids_push(&hist[i], next[i]) < 0)
                                        r = mx_error_set(err, -ENOMEM, "out of memory");
                        }
                }
                for (int i = 0; i < SEQS; i++)
                        mx_seq_free(seqs[i]), mx_sampler_free(smp[i]), mx_ids_free(&hist[i]);
                if (r < 0)
                        return r;
        }
        bool same = memcmp(runs[0], runs[1], sizeof(runs[0])) == 0;
        char detail[128];
        snprintf(detail, sizeof(detail), "%u of %u draws allowed (greedy = argmax); same seeds %s", good, total,
                 same ? "repeat" : "DIFFER");
        report(p->label, "sampling on the device", detail, 0, good == total && same);
        return 0;
}

/* Prompt lengths across the GEMV/cuBLAS boundary and the attention
 * slices: the last prompt position and one decode step after it. */
static int sweep(const pair *p, mx_error *err) {
        static const uint32_t lengths[] = {2, 4, 5, 8, 16, 24, 33, 64, 65, 130, 300};
        uint32_t V = p->vocab;
        _cleanup_free_ int32_t *prompt = malloc(300 * sizeof(int32_t));
        _cleanup_free_ float *lc = malloc(V * sizeof(float));
        _cleanup_free_ float *lg = malloc(V * sizeof(float));
        if (!prompt || !lc || !lg)
                return mx_error_set(err, -ENOMEM, "out of memory");
        make_prompt(V, 300, 3, prompt);
        for (size_t i = 0; i < sizeof(lengths) / sizeof(lengths[0]); i++) {
                uint32_t n = lengths[i];
                _cleanup_(mx_seq_freep) mx_seq *sc = NULL;
                _cleanup_(mx_seq_freep) mx_seq *sg = NULL;
                int r = mx_seq_new(p->cpu, 512, &sc, err);
                if (r == 0)
                        r = mx_seq_new(p->gpu, 512, &sg, err);
                mx_batch_item ic = {.seq = sc, .tokens = prompt, .n_tokens = n, .logits = lc, .all_logits = false}, ig = {.seq = sg, .tokens = prompt, .n_tokens = n, .logits = lg, .all_logits = false};
                if (r < 0 || (r = mx_forward(p->cpu, &ic, 1, err)) < 0 || (r = mx_forward(p->gpu, &ig, 1, err)) < 0)
                        return r;
                double e1 = rel_l2(lg, lc, V);
                int32_t t = argmax(lc, V);
                ic = (mx_batch_item){.seq = sc, .tokens = &t, .n_tokens = 1, .logits = lc, .all_logits = false};
                ig = (mx_batch_item){.seq = sg, .tokens = &t, .n_tokens = 1, .logits = lg, .all_logits = false};
                if ((r = mx_forward(p->cpu, &ic, 1, err)) < 0 || (r = mx_forward(p->gpu, &ig, 1, err)) < 0)
                        return r;
                double e2 = rel_l2(lg, lc, V);
                char detail[96];
                snprintf(detail, sizeof(detail), "prompt %u: last position %.2e, then one step", n, e1);
                report(p->label, "sweep", detail, e2, e1 < MAX_REL_L2 && e2 < MAX_REL_L2);
        }
        return 0;
}

/* Logits of q after p, p computed or reused from the cache. */
static int after_prefix(mx_engine *e, const int32_t *p, uint32_t np, const int32_t *q, uint32_t nq, bool reuse,
                        float *logits, uint32_t *reused, mx_error *err) {
        _cleanup_(mx_seq_freep) mx_seq *s = NULL;
        int r = mx_seq_new(e, np + nq + 1, &s, err);
        if (r < 0)
                return r;
        *reused = reuse ? mx_seq_reuse(s, p, np) : 0;
        mx_batch_item rest = {.seq = s, .tokens = p + *reused, .n_tokens = np - *reused};
        mx_batch_item it = {.seq = s, .tokens = q, .n_tokens = nq, .logits = logits, .all_logits = true};
        if (rest.n_tokens && (r = mx_forward(e, &rest, 1, err)) < 0)
                return r;
        return mx_forward(e, &it, 1, err);
}

/* A prefix of whole blocks, and one that ends inside a block: the logits
 * of what follows, cached prefix against computed, bit for bit. */
static int check_prefix(const pair *p, mx_error *err) {
        static const uint32_t lengths[] = {48, 53};
        enum { NQ = 6 };
        uint32_t V = p->vocab;
        int32_t prompt[53 + NQ];
        _cleanup_free_ float *computed = malloc((size_t)NQ * V * sizeof(float));
        _cleanup_free_ float *cached = malloc((size_t)NQ * V * sizeof(float));
        if (!computed || !cached)
                return mx_error_set(err, -ENOMEM, "out of memory");
        for (size_t i = 0; i < sizeof(lengths) / sizeof(lengths[0]); i++) {
                uint32_t np = lengths[i], r0, r1;
                make_prompt(V, np + NQ, 70 + i, prompt);
                int r = after_prefix(p->gpu, prompt, np, prompt + np, NQ, false, computed, &r0, err);
                if (r == 0)
                        r = after_prefix(p->gpu, prompt, np, prompt + np, NQ, true, cached, &r1, err);
                if (r < 0)
                        return r;
                double e = rel_l2(cached, computed, (size_t)NQ * V);
                char detail[96];
                snprintf(detail, sizeof(detail), "%u-token prefix, %u from the cache; relative L2", np, r1);
                report(p->label, "prefix from the cache", detail, e,
                       r1 == np && memcmp(cached, computed, (size_t)NQ * V * sizeof(float)) == 0);
        }
        return 0;
}

/* The checks ran on streamed experts: read (misses), copied up on a GPU,
 * never more held than the budget. */
static void check_streamed(const pair *p, bool gpu) {
        mx_expert_stats s;
        mx_engine_expert_stats(p->gpu, &s);
        char detail[256];
        snprintf(detail, sizeof(detail), "%u per layer, %llu hits, %llu misses, %.1f MB read, %.1f MB uploaded, "
                 "held at most %.1f of %.1f MB", s.slots_per_layer, (unsigned long long)s.hits,
                 (unsigned long long)s.misses, (double)s.bytes_read / 1e6, (double)s.bytes_uploaded / 1e6,
                 (double)s.resident_max / 1e6, (double)s.budget / 1e6);
        report(p->label, "streamed", detail, 0,
               s.streaming && s.misses > 0 && s.bytes_read > 0 && s.resident_max <= s.budget &&
                       (!gpu || s.bytes_uploaded > 0));
}

static int usage(void) {
        fprintf(stderr, "Usage: mixtral-gpu-check (--model DIR | --synthetic SHAPE --layers N) [--prompt N] [--steps N]\n"
                "                         [--against DEVICE (default cuda; cpu checks this program)] [--sweep 1]\n"
                "                         [--expert-memory M [--host-cache M]] (streams the checked engine's experts)\n"
                "                         [--kv-type bf16|f32] (both engines')\n");
        return 2;
}

int main(int argc, char **argv) {
        const char *dir = NULL, *shape = NULL, *against = "cuda", *budget = NULL, *host_cache = NULL;
        const char *kv_type = "bf16";
        uint32_t layers = 1, n_prompt = 24, steps = 8;
        bool do_sweep = false;
        for (int i = 1; i + 1 < argc; i += 2) {
                if (!strcmp(argv[i], "--model"))
                        dir = argv[i + 1];
                else if (!strcmp(argv[i], "--synthetic"))
                        shape = argv[i + 1];
                else if (!strcmp(argv[i], "--layers"))
                        layers = (uint32_t)atoi(argv[i + 1]);
                else if (!strcmp(argv[i], "--prompt"))
                        n_prompt = (uint32_t)atoi(argv[i + 1]);
                else if (!strcmp(argv[i], "--sweep"))
                        do_sweep = atoi(argv[i + 1]) != 0;
                else if (!strcmp(argv[i], "--against"))
                        against = argv[i + 1];
                else if (!strcmp(argv[i], "--steps"))
                        steps = (uint32_t)atoi(argv[i + 1]);
                else if (!strcmp(argv[i], "--expert-memory"))
                        budget = argv[i + 1];
                else if (!strcmp(argv[i], "--host-cache"))
                        host_cache = argv[i + 1];
                else if (!strcmp(argv[i], "--kv-type"))
                        kv_type = argv[i + 1];
                else
                        return usage();
        }
        if (!!dir == !!shape || argc % 2 == 0 || n_prompt < 2 || layers == 0)
                return usage();
        mx_error err = {0};
        _cleanup_(mx_model_freep) mx_model *mc = NULL;
        _cleanup_(mx_model_freep) mx_model *mg = NULL;
        _cleanup_(mx_engine_freep) mx_engine *cpu = NULL;
        _cleanup_(mx_engine_freep) mx_engine *gpu = NULL;
        /* A synthetic model twice: host-made weights for the CPU, device-made
         * for the GPU, so the generators are checked against each other too. */
        int r = shape ? mx_model_synthetic(&mc, shape, layers, true, &err) : mx_model_open(&mc, dir, &err);
        if (r == 0 && shape)
                r = mx_model_synthetic(&mg, shape, layers, strcmp(against, "cpu") == 0, &err);
        /* The CPU reference computes with fp32 activations (the GPU keeps
         * about as much precision); checked against itself in CI, the CPU
         * engine does too, so that its greedy ids must agree. Both hold K
         * and V as --kv-type says. */
        mx_engine_opts gpu_opts = {.device = against, .activations = MX_ACTIVATIONS_F32};
        if (mx_kv_type_from_string(kv_type, &gpu_opts.kv_type) < 0)
                return usage();
        const mx_engine_opts cpu_opts = {.activations = MX_ACTIVATIONS_F32, .kv_type = gpu_opts.kv_type};
        if (r == 0 && budget)
                r = mx_expert_budget_parse(budget, mc, &gpu_opts.expert_memory, &err);
        if (r == 0 && host_cache)
                r = mx_host_cache_parse(host_cache, mc, &gpu_opts.host_cache, &err);
        if (r == 0 && (r = mx_engine_open(&gpu, mg ? mg : mc, &gpu_opts, &err)) == -ENODEV) {
                fprintf(stderr, "mixtral-gpu-check: skipped: %s\n", err.msg);
                return 77;
        }
        if (r == 0)
                r = mx_engine_open(&cpu, mc, &cpu_opts, &err);
        char label[320];
        snprintf(label, sizeof(label), "%s%s%s, %s KV", shape ? shape : dir, budget ? ", experts streamed in " : "",
                 budget ? budget : "", kv_type);
        pair p = {label, cpu, gpu, mc ? mc->cfg.vocab_size : 0};
        if (r == 0)
                r = check_against_cpu(&p, n_prompt, steps, &err);
        if (r == 0)
                r = check_batch(&p, &err);
        if (r == 0)
                r = check_sampling(&p, &err);
        if (r == 0)
                r = check_prefix(&p, &err);
        if (r == 0 && do_sweep)
                r = sweep(&p, &err);
        if (r == 0 && budget)
                check_streamed(&p, strcmp(against, "cpu") != 0);
        if (r < 0) {
                fprintf(stderr, "mixtral-gpu-check: %s\n", err.msg);
                printf("| %s | error | %s | | FAIL |\n", p.label, err.msg);
                return 1;
        }
        return failures ? 1 : 0;
}
