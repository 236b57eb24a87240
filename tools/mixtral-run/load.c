/* Loading for generation and benchmarks: open (headers only), page the
 * weights in with a progress bar on a terminal, start the engine. */
#include <stdio.h>
#include <time.h>
#include <unistd.h>

#include "mx_common.h"
#include "run.h"

typedef struct bar {
        bool tty;
        int last;
} bar;

static void progress(uint64_t done, uint64_t total, void *arg) {
        bar *b = arg;
        int pct = total ? (int)(done * 100 / total) : 100;
        if (!b->tty || pct == b->last)
                return;
        b->last = pct;
        char fill[41];
        int k = pct * 40 / 100;
        for (int i = 0; i < 40; i++)
                fill[i] = i < k ? '#' : ' ';
        fill[40] = '\0';
        fprintf(stderr, "\rloading model [%s] %3d%%  %.1f / %.1f GiB", fill, pct,
                (double)done / (1u << 30), (double)total / (1u << 30));
        if (done == total)
                fputc('\n', stderr);
        fflush(stderr);
}

int run_load_tokenizer(const run_opts *o, mx_tokenizer **tok, mx_error *err) {
        _cleanup_free_ char *found = NULL;
        const char *path = o->tokenizer;
        if (!path && !(path = found = mx_model_find_tokenizer(o->model, err)))
                return -ENOENT;
        return mx_tokenizer_load(tok, path, err);
}

int run_load(const run_opts *o, mx_model **m, mx_engine **e, mx_error *err) {
        int r = mx_model_open(m, o->model, err);
        if (r < 0)
                return r;
        if (mx_model_fits_in_memory(*m)) {
                bar b = {isatty(STDERR_FILENO) == 1, -1};
                mx_model_prefault(*m, progress, &b);
        }
        mx_engine_opts eo = {.device = o->device, .threads = o->threads, .simd = o->simd};
        return mx_engine_open(e, *m, &eo, err);
}

double run_now(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

int run_fail(const mx_error *err) {
        fprintf(stderr, "mixtral-run: %s\n", err->msg);
        return 1;
}
