/* Generation: stream the answer to stdout as it is produced. */
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "mx_common.h"
#include "mx_progress.h"
#include "run.h"

static void print_ids(const int32_t *ids, size_t n) {
        for (size_t i = 0; i < n; i++)
                printf(i ? " %d" : "%d", ids[i]);
        printf("\n");
}

static int loop(mx_engine *e, mx_gen *g, const run_opts *o, mx_error *err) {
        _cleanup_(mx_buf_free) mx_buf text = {0};
        mx_batch_item item;
        bool ends_with_newline = true;
        while (mx_gen_finished(g) == MX_FINISH_NONE) {
                int32_t tok;
                mx_gen_prepare(g, &item);
                int r = mx_forward(e, &item, 1, err);
                if (r == 0 && (r = mx_gen_advance(g, &text, &tok)) < 0)
                        mx_error_set(err, r, "out of memory");
                if (r < 0)
                        return r;
                if (!o->print_ids && text.n) {
                        fwrite(text.p, 1, text.n, stdout);
                        fflush(stdout);
                        ends_with_newline = text.p[text.n - 1] == '\n';
                        text.n = 0;
                }
        }
        size_t n;
        const int32_t *ids = mx_gen_tokens(g, &n);
        if (o->print_ids)
                print_ids(ids, n);
        else if (!ends_with_newline)
                putchar('\n');
        return fflush(stdout) == 0 ? 0 : mx_error_set(err, -EIO, "cannot write the output");
}

int run_generate(const run_opts *o) {
        mx_error err = {0};
        _cleanup_(mx_load_free) mx_load l = {.gpu = -1};
        _cleanup_(mx_gen_freep) mx_gen *g = NULL;
        _cleanup_(mx_ids_free) mx_ids prompt = {0};
        /* (The prompt is made before the weights load: a bad one costs nothing.) */
        _cleanup_(mx_tokenizer_freep) mx_tokenizer *early = NULL;
        if (run_load_tokenizer(o, &early, &err) < 0 || run_prompt_ids(o, early, &prompt, &err) < 0 ||
            run_load(o, true, &l, &err) < 0)
                return run_fail(&err);
        mx_engine *e = l.engine;
        const mx_tokenizer *tok = l.tok;
        if (o->logits && run_logits(o, &l, &prompt, &err) < 0)
                return run_fail(&err);
        if (o->logits && o->max_tokens_given && o->max_tokens == 0)
                return 0;
        mx_gen_opts go = {.sampling = o->sampling, .max_tokens = o->max_tokens, .stop = o->stop,
                          .n_stop = o->n_stop, .max_context = o->ctx, .prefill_chunk = 512,
                          .keep_leading_space = !(o->messages || o->chat), .ignore_eos = o->ignore_eos};
        double t0 = run_now();
        if (mx_gen_new(e, tok, prompt.v, prompt.n, &go, &g, &err) < 0 || loop(e, g, o, &err) < 0)
                return run_fail(&err);
        size_t n;
        mx_gen_tokens(g, &n);
        if (isatty(STDERR_FILENO))
                fprintf(stderr, "[%s: %zu prompt tokens, %zu generated, %.1f s, finish: %s]\n",
                        mx_engine_describe(e), prompt.n, n, run_now() - t0, mx_finish_name(mx_gen_finished(g)));
        return 0;
}

/* --save: the model as it is, or as --quantize makes it (its tokenizer
 * with it), into a GGUF file, without an engine: quantizing once to a file
 * spares every later start the work, and lets experts stream from it. */
static void saving(uint64_t done, uint64_t total, void *bar) {
        mx_progress_bar_show(bar, "writing GGUF", done, total);
}

static void quantizing(uint64_t done, uint64_t total, void *bar) {
        mx_progress_bar_show(bar, "quantizing", done, total);
}

int run_save(const run_opts *o) {
        mx_error err = {0};
        _cleanup_(mx_load_free) mx_load l = {.gpu = -1};
        mx_load_opts lo = {.model = o->model, .tokenizer = o->tokenizer};
        mx_progress_bar bar = mx_progress_bar_new(isatty(STDERR_FILENO) == 1);
        if (mx_load_open(&l, &lo, &err) < 0)
                return run_fail(&err);
        if (o->quantize && mx_model_quantize(l.model, o->quantize, o->threads, quantizing, &bar, &err) < 0)
                return run_fail(&err);
        if (mx_gguf_write_model(l.model, l.tok, o->save, saving, &bar, &err) < 0)
                return run_fail(&err);
        fprintf(stderr, "mixtral-run: wrote %s\n", o->save);
        return 0;
}
