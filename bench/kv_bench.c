/* The KV cache's two numbers (bench/README.md), through the engine as the
 * daemon drives it (mx_gen, prefill in chunks of 256):
 *
 *   time to first token for a NEW-token message after a history of H
 *   tokens, with the history from the prefix cache (left there by the
 *   request before, as a chat's last turn leaves it) and without it;
 *
 *   how many SEQ-token sequences a KV budget of BUDGET bytes holds: as
 *   the engine held them before the pool (fp32, one allocation per
 *   sequence growing by doubling from 256 tokens: computed), and in the
 *   pool (counted: sequences reserved until the pool refuses), alone and
 *   sharing a SHARED-token prefix from the cache.
 *
 *   kv-bench [--model DIR | --synthetic SHAPE [--layers N]] [--device D] [--threads N]
 *            [--history 0,1024,4096,16384] [--new 20] [--runs 3] [--cacheless 0]
 *            [--budget 1G] [--seq 4096] [--shared 1024]
 *
 * Prints Markdown tables. Histories and new tokens are made-up ids. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "mixtral.h"
#include "mx_common.h"

typedef struct bench_opts {
        const char *model, *synthetic, *device, *budget;
        uint32_t threads, new_tokens, runs, seq, shared, layers;
        bool cacheless; /* time without the cache too (minutes for long histories on a CPU) */
        uint32_t history[16];
        size_t n_history;
} bench_opts;

static double now(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void made_up(uint64_t seed, uint32_t vocab, size_t n, mx_ids *out) {
        uint64_t x = 0x9e3779b97f4a7c15ull * (seed + 1);
        for (size_t i = 0; i < n; i++) {
                x ^= x << 13, x ^= x >> 7, x ^= x << 17;
                mx_ids_push(out, (int32_t)(3 + x % (vocab - 3)));
        }
}

/* One request to its first token: seconds, and the tokens the cache served. */
static int first_token(mx_engine *e, const mx_ids *prompt, bool cache, double *secs, size_t *cached, mx_error *err) {
        mx_gen_opts o = {.sampling = {.temperature = 0, .top_p = 1, .repeat_penalty = 1}, .max_tokens = 1,
                         .prefill_chunk = 256, .ignore_eos = true, .no_prefix_cache = !cache};
        double t0 = now();
        _cleanup_(mx_gen_freep) mx_gen *g = NULL;
        _cleanup_(mx_buf_free) mx_buf text = {0};
        int r = mx_gen_new(e, NULL, prompt->v, prompt->n, &o, &g, err);
        if (r == 0)
                r = mx_gen_start(g, 0, err);
        int32_t token = -1;
        while (r == 0 && token < 0) {
                mx_batch_item it;
                mx_gen_prepare(g, &it);
                if ((r = mx_forward(e, &it, 1, err)) == 0)
                        r = mx_gen_advance(g, &text, &token);
        }
        *secs = now() - t0;
        *cached = r == 0 ? mx_gen_cached_tokens(g) : 0;
        return r;
}

static int cmp_double(const void *a, const void *b) {
        double x = *(const double *)a, y = *(const double *)b;
        return x < y ? -1 : x > y;
}

/* The median of `runs` times to first token for history + new (a new
 * message each run): with the cache, the history's own request runs first
 * (untimed; computed once, then from the cache) and leaves it there. */
static int ttft(mx_engine *e, uint32_t h, const bench_opts *bo, bool cache, double *median, size_t *cached,
                mx_error *err) {
        uint32_t vocab = mx_engine_model(e)->cfg.vocab_size;
        double t[16];
        /* A long prompt without the cache takes minutes on a CPU: once. */
        uint32_t runs = !cache && h >= 8192 ? 1 : bo->runs;
        int r = 0;
        for (uint32_t i = 0; r == 0 && i < runs && i < MX_ELEMENTSOF(t); i++) {
                _cleanup_(mx_ids_free) mx_ids hist = {0}, prompt = {0};
                uint64_t seed = (uint64_t)h * 64 + (cache ? 32 : 0);
                mx_ids_push(&hist, 1);
                made_up(seed, vocab, h, &hist);
                mx_ids_append(&prompt, hist.v, hist.n);
                made_up(seed + 1000003 + i, vocab, bo->new_tokens, &prompt);
                double unused;
                size_t c;
                if (cache && h > 0 && (r = first_token(e, &hist, true, &unused, &c, err)) < 0)
                        break;
                r = first_token(e, &prompt, cache, &t[i], cached, err);
        }
        qsort(t, runs, sizeof(double), cmp_double);
        *median = t[runs / 2];
        return r;
}

/* Measured first, printed after: the ratio needs the no-history time. */
static int ttft_table(mx_engine *e, const bench_opts *bo, mx_error *err) {
        double off[16], on[16], base = 0;
        size_t cached[16], unused;
        /* Once untimed: first calls fault pages in and grow buffers. */
        _cleanup_(mx_ids_free) mx_ids warm = {0};
        made_up(5, mx_engine_model(e)->cfg.vocab_size, 300, &warm);
        int r = first_token(e, &warm, false, &off[0], &unused, err);
        for (size_t i = 0; r == 0 && i < bo->n_history; i++) {
                off[i] = 0;
                if (bo->cacheless)
                        r = ttft(e, bo->history[i], bo, false, &off[i], &unused, err);
                if (r == 0)
                        r = ttft(e, bo->history[i], bo, true, &on[i], &cached[i], err);
                if (r == 0 && bo->history[i] == 0)
                        base = on[i];
        }
        if (r < 0)
                return r;
        printf("| history tokens | TTFT, cache off | TTFT, cache on | cached tokens | on / no history (target <= 1.2) |\n");
        printf("|---|---|---|---|---|\n");
        for (size_t i = 0; i < bo->n_history; i++) {
                if (bo->cacheless)
                        printf("| %u | %.3f s | %.3f s | %zu | ", bo->history[i], off[i], on[i], cached[i]);
                else
                        printf("| %u | - | %.3f s | %zu | ", bo->history[i], on[i], cached[i]);
                if (base > 0)
                        printf("%.2f |\n", on[i] / base);
                else
                        printf("- |\n");
        }
        return 0;
}

/* Bytes the engine held for a sequence of n tokens before the pool: fp32,
 * a capacity doubling from 256 tokens (engine/cpu/backend_cpu.c then). */
static uint64_t before_bytes(const mx_config *c, uint32_t n) {
        uint64_t cap = 256;
        while (cap < n)
                cap *= 2;
        return cap * c->n_layers * 2 * c->n_kv_heads * c->head_dim * sizeof(float);
}

/* Sequences of bo->seq tokens reserved until the pool says no; each first
 * takes `prefix` tokens from the cache (0: none). */
static int count_in_pool(mx_engine *e, const bench_opts *bo, const mx_ids *prefix, uint32_t *count, mx_error *err) {
        mx_seq *seqs[4096];
        uint32_t n = 0;
        int r = 0;
        while (n < MX_ELEMENTSOF(seqs) && (r = mx_seq_new(e, bo->seq, &seqs[n], err)) == 0) {
                if (prefix && mx_seq_reuse(seqs[n], prefix->v, prefix->n) != prefix->n)
                        r = mx_error_set(err, -EIO, "the shared prefix was not in the cache");
                if (r == 0 && (r = mx_seq_reserve(seqs[n], bo->seq, 0)) == 0) {
                        n++;
                        continue;
                }
                mx_seq_free(seqs[n]);
                break;
        }
        for (uint32_t i = 0; i < n; i++)
                mx_seq_free(seqs[i]);
        *count = n;
        return r == -ENOBUFS ? 0 : r;
}

static int budget_table(const mx_model *m, const bench_opts *bo, const mx_engine_opts *base, mx_error *err) {
        mx_engine_opts o = *base;
        int r = mx_kv_memory_parse(bo->budget, &o.kv_memory, &o.kv_memory_percent, err);
        _cleanup_(mx_engine_freep) mx_engine *e = NULL;
        if (r < 0 || (r = mx_engine_open(&e, m, &o, err)) < 0)
                return r;
        mx_kv_stats st;
        mx_engine_kv_stats(e, &st);
        uint64_t bytes = (uint64_t)st.blocks * st.block_bytes;
        uint32_t alone, shared = 0;
        _cleanup_(mx_ids_free) mx_ids prefix = {0};
        mx_ids_push(&prefix, 1);
        made_up(77, m->cfg.vocab_size, bo->shared - 1, &prefix);
        double unused;
        size_t c;
        if ((r = count_in_pool(e, bo, NULL, &alone, err)) < 0 ||
            (bo->shared && (r = first_token(e, &prefix, true, &unused, &c, err)) < 0) ||
            (bo->shared && (r = count_in_pool(e, bo, &prefix, &shared, err)) < 0))
                return r;
        printf("\nKV budget %.0f MiB (%u blocks of %u tokens, %s): %u-token sequences held at once\n\n",
               (double)bytes / (1 << 20), st.blocks, st.block_tokens, mx_kv_type_name(st.type), bo->seq);
        printf("| before (fp32, one allocation each, doubling) | after (pool) | after, sharing a %u-token prefix |\n",
               bo->shared);
        printf("|---|---|---|\n| %llu | %u | %u |\n", (unsigned long long)(bytes / before_bytes(&m->cfg, bo->seq)),
               alone, shared);
        return 0;
}

static int parse_list(char *s, bench_opts *bo) {
        bo->n_history = 0;
        for (char *t = strtok(s, ","); t && bo->n_history < MX_ELEMENTSOF(bo->history); t = strtok(NULL, ","))
                bo->history[bo->n_history++] = (uint32_t)strtoul(t, NULL, 10);
        return bo->n_history ? 0 : -EINVAL;
}

int main(int argc, char **argv) {
        char defaults[] = "0,1024,4096,16384";
        bench_opts bo = {.synthetic = "b1", .budget = "1G", .threads = 2, .new_tokens = 20, .runs = 3, .seq = 4096,
                         .shared = 1024, .cacheless = true};
        parse_list(defaults, &bo);
        for (int i = 1; i + 1 < argc; i += 2) {
                const char *k = argv[i], *v = argv[i + 1];
                if (!strcmp(k, "--model"))
                        bo.model = v, bo.synthetic = NULL;
                else if (!strcmp(k, "--synthetic"))
                        bo.synthetic = v;
                else if (!strcmp(k, "--layers"))
                        bo.layers = (uint32_t)atoi(v);
                else if (!strcmp(k, "--device"))
                        bo.device = v;
                else if (!strcmp(k, "--threads"))
                        bo.threads = (uint32_t)atoi(v);
                else if (!strcmp(k, "--history") && parse_list(argv[i + 1], &bo) == 0)
                        continue;
                else if (!strcmp(k, "--new"))
                        bo.new_tokens = (uint32_t)atoi(v);
                else if (!strcmp(k, "--runs"))
                        bo.runs = (uint32_t)atoi(v);
                else if (!strcmp(k, "--budget"))
                        bo.budget = v;
                else if (!strcmp(k, "--seq"))
                        bo.seq = (uint32_t)atoi(v);
                else if (!strcmp(k, "--shared"))
                        bo.shared = (uint32_t)atoi(v);
                else if (!strcmp(k, "--cacheless"))
                        bo.cacheless = atoi(v) != 0;
                else {
                        fprintf(stderr, "kv-bench: unknown option %s (see the top of bench/kv_bench.c)\n", k);
                        return 2;
                }
        }
        if (argc % 2 == 0 || bo.runs == 0 || bo.new_tokens == 0 || bo.seq == 0 || bo.shared >= bo.seq) {
                fprintf(stderr, "kv-bench: bad arguments (see the top of bench/kv_bench.c)\n");
                return 2;
        }
        mx_error err = {0};
        _cleanup_(mx_load_free) mx_load l = {.gpu = -1};
        mx_load_opts lo = {.model = bo.model, .synthetic = bo.synthetic, .layers = bo.layers, .device = bo.device,
                           .threads = bo.threads, .tokenizer_optional = true};
        int r = mx_load_open(&l, &lo, &err);
        if (r == 0)
                r = mx_load_engine(&l, &lo, &err);
        if (r == 0) {
                mx_kv_stats st;
                mx_engine_kv_stats(l.engine, &st);
                printf("%s on %s; KV cache %s, %u blocks of %u tokens; %u new tokens, median of %u (1 without the "
                       "cache from 8192 tokens of history)\n\n", l.model->dir, mx_engine_describe(l.engine),
                       mx_kv_type_name(st.type), st.blocks, st.block_tokens, bo.new_tokens, bo.runs);
                r = ttft_table(l.engine, &bo, &err);
        }
        mx_engine_opts eo = {.device = bo.device, .threads = bo.threads};
        if (r == 0) {
                mx_engine_free(l.engine);
                l.engine = NULL;
                r = budget_table(l.model, &bo, &eo, &err);
        }
        if (r < 0) {
                fprintf(stderr, "kv-bench: %s\n", err.msg);
                return 1;
        }
        return 0;
}
