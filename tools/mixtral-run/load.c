/* Loading for generation and benchmarks: open (headers only), page the
 * weights in with a progress bar on a terminal, start the engine. */
#include <math.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "mx_common.h"
#include "mx_config.h"
#include "run.h"

#if MX_HAVE_CUDA
#include "mixtral_kernels.h"
#endif

run_bar run_bar_new(const char *what) {
        return (run_bar){isatty(STDERR_FILENO) == 1, -1, what};
}

void run_progress(uint64_t done, uint64_t total, void *arg) {
        run_bar *b = arg;
        int pct = total ? (int)(done * 100 / total) : 100;
        if (!b->tty || pct == b->last)
                return;
        b->last = pct;
        char fill[41];
        int k = pct * 40 / 100;
        for (int i = 0; i < 40; i++)
                fill[i] = i < k ? '#' : ' ';
        fill[40] = '\0';
        fprintf(stderr, "\r%s [%s] %3d%%  %.1f / %.1f GiB", b->what, fill, pct,
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

bool run_on_gpu(const run_opts *o, int *index) {
        int i = -1;
        bool gpu = mx_device_parse(o->device, &i) == 0 && i >= 0;
        if (index)
                *index = gpu ? i : 0;
        return gpu;
}

/* The most layers of the synthetic shape that fit the GPU's free memory,
 * leaving room for KV caches, activations and cuBLAS. */
static int layers_that_fit(const run_opts *o, uint32_t *layers, mx_error *err) {
        uint64_t per_layer, rest;
        uint32_t most;
        if (mx_synthetic_sizes(o->synthetic, &per_layer, &rest, &most) < 0)
                return mx_error_set(err, -EINVAL, "synthetic shape \"%s\": expected mixtral-8x7b or b1",
                                    o->synthetic);
        *layers = most;
        int index;
        if (!run_on_gpu(o, &index))
                return 0;
#if MX_HAVE_CUDA
        char why[256] = "";
        mxk_device d;
        if (mxk_device_count(why, sizeof(why)) <= index || mxk_device_query(index, &d, why, sizeof(why)) < 0)
                return mx_error_set(err, -ENODEV, "device %s: %s", o->device, why[0] ? why : "no such device");
        const uint64_t margin = (uint64_t)4 << 30;
        uint64_t avail = d.free_bytes > rest + margin ? d.free_bytes - rest - margin : 0;
        uint32_t fit = (uint32_t)(avail / per_layer);
        if (fit == 0)
                return mx_error_set(err, -ENOMEM, "not even one layer of %s fits in %.1f GiB free",
                                    o->synthetic, (double)d.free_bytes / (1u << 30));
        if (fit < most)
                *layers = fit;
        fprintf(stderr, "mixtral-run: synthetic %s: %u of its %u layers fit in %.1f GiB free on %s; using %u\n",
                o->synthetic, fit < most ? fit : most, most, (double)d.free_bytes / (1u << 30), d.name, *layers);
#endif
        return 0;
}

int run_open_model(const run_opts *o, mx_model **m, mx_error *err) {
        if (!o->synthetic)
                return mx_model_open(m, o->model, err);
        uint32_t layers = o->layers;
        int r = layers ? 0 : layers_that_fit(o, &layers, err);
        /* The CPU engine reads weights from host memory; the GPU makes its own. */
        return r < 0 ? r : mx_model_synthetic(m, o->synthetic, layers, !run_on_gpu(o, NULL), err);
}

int run_load(const run_opts *o, mx_model **m, mx_engine **e, mx_error *err) {
        int r = run_open_model(o, m, err);
        if (r < 0)
                return r;
        uint64_t budget = 0;
        if (o->expert_memory && (r = mx_expert_budget_parse(o->expert_memory, *m, &budget, err)) < 0)
                return r;
        uint64_t host_cache = 0;
        if (o->host_cache && (r = mx_host_cache_parse(o->host_cache, *m, &host_cache, err)) < 0)
                return r;
        /* (A GPU reads the mapping only as it uploads.) */
        if (budget && !o->synthetic && !run_on_gpu(o, NULL) && (r = mx_model_copy_dense(*m, err)) < 0)
                return r;
        run_bar b = run_bar_new("loading model");
        /* Streaming reads experts itself: paging the files in would defeat it.
         * A GPU reads the files once as it uploads (and may stream). */
        if (!o->synthetic && !budget && !run_on_gpu(o, NULL) && mx_model_fits_in_memory(*m))
                mx_model_prefault(*m, run_progress, &b);
        run_bar q = run_bar_new("quantizing");
        if (o->quantize && (r = mx_model_quantize(*m, o->quantize, o->threads, run_progress, &q, err)) < 0)
                return r;
        run_bar up = run_bar_new("loading model");
        mx_engine_opts eo = {.device = o->device, .threads = o->threads, .simd = o->simd,
                             .activations = o->activations,
                             .expert_memory = budget, .host_cache = host_cache, .progress = run_progress,
                             .progress_arg = &up};
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
