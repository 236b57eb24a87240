/* Loading for generation and benchmarks, through the engine's one loader
 * (mx_load, the daemon's too) with a progress bar on a terminal; and the
 * synthetic shapes' layers that fit a GPU. */
#include <math.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "mx_common.h"
#include "mx_config.h"
#include "mx_progress.h"
#include "run.h"

#if MX_HAVE_CUDA
#include "mixtral_kernels.h"
#endif

/* A checkpoint directory's tokenizer file is read without opening the
 * model; a GGUF's vocabulary is in its header. */
int run_load_tokenizer(const run_opts *o, mx_tokenizer **tok, mx_error *err) {
        _cleanup_free_ char *found = NULL;
        const char *path = o->tokenizer;
        if (!path && mx_model_is_gguf(o->model))
                path = o->model;
        if (!path && !(path = found = mx_model_find_tokenizer(o->model, err)))
                return -ENOENT;
        return mx_tokenizer_open(path, tok, err);
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

/* The synthetic shape's layers: as many as asked, else as fit. */
static int synthetic_layers(const run_opts *o, uint32_t *layers, mx_error *err) {
        *layers = o->layers;
        return *layers || !o->synthetic ? 0 : layers_that_fit(o, layers, err);
}

int run_open_model(const run_opts *o, mx_model **m, mx_error *err) {
        if (!o->synthetic)
                return mx_model_open(m, o->model, err);
        uint32_t layers;
        int r = synthetic_layers(o, &layers, err);
        /* The CPU engine reads weights from host memory; the GPU makes its own. */
        return r < 0 ? r : mx_model_synthetic(m, o->synthetic, layers, !run_on_gpu(o, NULL), err);
}

static void on_progress(const char *what, uint64_t done, uint64_t total, void *arg) {
        mx_progress_bar_show(arg, what, done, total);
}

int run_load(const run_opts *o, bool need_tokenizer, mx_load *l, mx_error *err) {
        uint32_t layers;
        int r = synthetic_layers(o, &layers, err);
        if (r < 0)
                return r;
        mx_progress_bar bar = mx_progress_bar_new(isatty(STDERR_FILENO) == 1);
        mx_load_opts lo = {.model = o->model, .tokenizer = o->tokenizer, .tokenizer_optional = !need_tokenizer,
                           .synthetic = o->synthetic, .layers = layers, .device = o->device, .threads = o->threads,
                           .simd = o->simd, .expert_memory = o->expert_memory, .host_cache = o->host_cache,
                           .kv_type = o->kv_type, .kv_memory = o->kv_memory, .quantize = o->quantize,
                           .activations = o->activations, .bf16_plain = o->bf16_plain, .progress = on_progress, .progress_arg = &bar};
        if ((r = mx_load_open(l, &lo, err)) < 0)
                return r;
        /* "min" means it; a number below it is a surprise worth a line. */
        if (l->expert_memory && l->expert_memory < l->expert_memory_min && strcmp(o->expert_memory, "min"))
                fprintf(stderr, "mixtral-run: --expert-memory %s is less than the top-%u experts of every layer "
                        "that a step needs at once; using those %.1f MiB (the same as --expert-memory min)\n",
                        o->expert_memory, l->model->cfg.n_experts_per_tok,
                        (double)l->expert_memory_min / (1u << 20));
        return mx_load_engine(l, &lo, err);
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
