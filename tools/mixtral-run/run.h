/* mixtral-run's parts: private to the tool. */
#pragma once

#include <stdbool.h>

#include "mixtral.h"

typedef struct run_opts {
        const char *model, *tokenizer;
        const char *prompt, *prompt_file, *messages, *chat, *system;
        const char *make_demo, *decode, *device, *shape, *synthetic, *expert_memory, *host_cache;
        const char *kv_type, *kv_memory;
        const char *perplexity, *kl_base, *logits, *save;
        bool max_tokens_given;
        mx_ftype quantize; /* --quantize: the weights' types, made as they load */
        mx_activations activations;
        bool bf16_plain;
        unsigned long long seed;
        bool tokenize, info, devices, print_ids, bench, ignore_eos;
        /* generation */
        mx_sampling sampling;
        uint32_t max_tokens, threads, ctx, layers;
        uint32_t batch[16]; /* --batch: decode batch sizes for --bench */
        uint32_t depth;     /* --depth: tokens each --bench sequence reads before decoding; 0: 128 */
        size_t n_batch;
        mx_simd simd;
        const char **stop;
        size_t n_stop;
} run_opts;

/* Exit codes, stable for scripts. */
enum { EXIT_USAGE = 2 };

/* The prompt ids the options describe (BOS first). */
int run_prompt_ids(const run_opts *o, const mx_tokenizer *tok, mx_ids *ids, mx_error *err);
bool run_has_prompt(const run_opts *o);

int run_info(const mx_model *m);
int run_devices(void);
int run_generate(const run_opts *o);
int run_bench(const run_opts *o);
int run_perplexity(const run_opts *o);
int run_save(const run_opts *o);
/* --logits: the prompt's last-position logits into o->logits. */
int run_logits(const run_opts *o, const mx_load *l, const mx_ids *prompt, mx_error *err);

/* Opens the model and its tokenizer (optional unless need_tokenizer),
 * shows a progress bar on a terminal while its pages come in or go to the
 * GPU, and starts an engine on it (free with mx_load_free). */
int run_load(const run_opts *o, bool need_tokenizer, mx_load *l, mx_error *err);
/* The checkpoint of --model, or the --synthetic model (its layers chosen
 * to fit the GPU when --layers is not given). */
int run_open_model(const run_opts *o, mx_model **m, mx_error *err);
int run_load_tokenizer(const run_opts *o, mx_tokenizer **tok, mx_error *err);

/* --device names a GPU: its index (0 when --device is not cuda). */
bool run_on_gpu(const run_opts *o, int *index);

/* Seconds on a monotonic clock. */
double run_now(void);
/* Prints "mixtral-run: <message>" to stderr; returns exit status 1. */
int run_fail(const mx_error *err);
