/* The one loader the daemon and mixtral-run share: the policy of turning a
 * model path and a few texts (device, expert memory, host cache, KV cache)
 * into a model, its tokenizer and an engine, written once.
 *
 * In two halves, because a server wants to answer while the slow half
 * runs: mx_load_open reads only headers (the model's files, the
 * tokenizer) and checks everything a user can get wrong, in well under a
 * second for any model; mx_load_engine then does what takes minutes on a
 * large model (paging the files in, uploading to a GPU) and may run on
 * another thread. Nothing here prints; progress goes to the caller's
 * callback, with a line saying what is being done. */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "mx_common.h"

#include "mixtral.h"

void mx_load_free(mx_load *l) {
        mx_engine_free(l->engine);
        mx_tokenizer_free(l->tok);
        mx_model_free(l->model);
        *l = (mx_load){.gpu = -1};
}

/* Bytes of top-k experts in every layer: what streaming keeps at least. */
static uint64_t experts_floor(const mx_model *m) {
        const mx_layer *l = &m->layers[0];
        uint64_t per = l->w1[0]->nbytes + l->w2[0]->nbytes + l->w3[0]->nbytes;
        return per * m->cfg.n_layers * m->cfg.n_experts_per_tok;
}

/* The model's own tokenizer (tokenizer.model beside the checkpoint, a
 * GGUF's vocabulary), or the one given. */
static int load_tokenizer(mx_load *l, const mx_load_opts *o, mx_error *err) {
        int r = o->tokenizer ? mx_tokenizer_open(o->tokenizer, &l->tok, err)
                             : mx_model_load_tokenizer(l->model, &l->tok, err);
        if (r < 0)
                return r;
        if (mx_tokenizer_vocab_size(l->tok) != l->model->cfg.vocab_size)
                return mx_error_set(err, -EINVAL, "the tokenizer (%s) has %u pieces but the model a vocabulary of %u",
                                    o->tokenizer ? o->tokenizer : l->model->dir, mx_tokenizer_vocab_size(l->tok),
                                    l->model->cfg.vocab_size);
        return 0;
}

static int budgets(mx_load *l, const mx_load_opts *o, mx_error *err) {
        /* Streaming reads experts from the files as they are stored; a model
         * quantized in memory has no file to read them from. */
        if (o->quantize && o->expert_memory && strcmp(o->expert_memory, "all"))
                return mx_error_set(err, -EINVAL, "quantizing as the model loads (%s) and streaming experts "
                                    "(expert memory %s) exclude each other: quantize to a file once "
                                    "(mixtral-run --quantize TYPE --save FILE.gguf) and stream from that",
                                    mx_ftype_name(o->quantize), o->expert_memory);
        if (o->quantize) {
                l->expert_memory_min = experts_floor(l->model);
                return o->host_cache ? mx_error_set(err, -EINVAL, "a host cache (%s) is for streaming experts, "
                                                    "which a model quantized as it loads cannot do", o->host_cache)
                                     : 0;
        }
        int r = mx_expert_budget_parse(o->expert_memory ? o->expert_memory : "auto", l->model, &l->expert_memory,
                                       err);
        if (r < 0)
                return r;
        l->expert_memory_min = experts_floor(l->model);
        if (o->kv_type && mx_kv_type_from_string(o->kv_type, &l->kv_type) < 0)
                return mx_error_set(err, -EINVAL, "KV type \"%s\": expected bf16 or f32", o->kv_type);
        if ((r = mx_kv_memory_parse(o->kv_memory ? o->kv_memory : "auto", &l->kv_memory, &l->kv_memory_percent,
                                    err)) < 0)
                return r;
        if (o->host_cache && l->gpu < 0)
                return mx_error_set(err, -EINVAL, "a host cache (%s) is for a GPU that streams experts; on the CPU "
                                    "expert memory is the cache", o->host_cache);
        return o->host_cache ? mx_host_cache_parse(o->host_cache, l->model, &l->host_cache, err) : 0;
}

int mx_load_open(mx_load *l, const mx_load_opts *o, mx_error *err) {
        *l = (mx_load){.gpu = -1};
        if (mx_device_parse(o->device, &l->gpu) < 0)
                return mx_error_set(err, -EINVAL, "device \"%s\": expected cpu, cuda or cuda:N", o->device);
        if (!o->model && !o->synthetic)
                return mx_error_set(err, -EINVAL, "no model given");
        int r = o->synthetic ? 0 : mx_model_open(&l->model, o->model, err);
        if (r == 0 && o->synthetic)
                r = mx_model_synthetic(&l->model, o->synthetic, o->layers, l->gpu < 0, err);
        if (r == 0 && !o->synthetic) {
                mx_error why = {0};
                r = load_tokenizer(l, o, &why);
                if (r == -ENOENT && o->tokenizer_optional && !o->tokenizer)
                        r = 0;
                else if (r < 0)
                        *err = why;
        }
        if (r == 0)
                r = budgets(l, o, err);
        if (r < 0)
                mx_load_free(l);
        return r;
}

typedef struct stage {
        const mx_load_opts *o;
        const char *what;
} stage;

static void report(uint64_t done, uint64_t total, void *arg) {
        const stage *s = arg;
        s->o->progress(s->what, done, total, s->o->progress_arg);
}

/* A test hook, as MX_IO_FAULT is one: MX_TEST_LOAD_SECONDS=N makes the
 * load take N more seconds, reporting progress, so that what is served
 * while a real 90 GB model loads can be tested with a small one. */
static void test_pause(const mx_load_opts *o) {
        const char *v = getenv("MX_TEST_LOAD_SECONDS");
        int tenths = v ? 10 * atoi(v) : 0;
        for (int i = 0; i < tenths && i < 6000; i++) {
                if (o->progress)
                        o->progress("Loading the model", (uint64_t)i, (uint64_t)tenths, o->progress_arg);
                nanosleep(&(struct timespec){0, 100000000}, NULL);
        }
}

int mx_load_engine(mx_load *l, const mx_load_opts *o, mx_error *err) {
        bool file = !o->synthetic, cpu = l->gpu < 0;
        int r;
        test_pause(o);
        /* Streaming reads the files for experts only, and survives a file
         * changed under it (a request fails, not the process). A GPU reads
         * the mapping once, as it uploads. */
        if (file && cpu && l->expert_memory && (r = mx_model_copy_dense(l->model, err)) < 0)
                return r;
        /* Streaming reads the experts itself: paging the files in would
         * defeat it. */
        stage paging = {o, "Loading the model"},
              upload = {o, cpu ? "Packing the bf16 weights" : "Loading the model onto the GPU"},
              quantizing = {o, "Quantizing the weights"};
        /* Quantizing reads every weight once, in order: paging in first
         * would read the file twice. */
        if (file && cpu && !l->expert_memory && !o->quantize && mx_model_fits_in_memory(l->model))
                mx_model_prefault(l->model, o->progress ? report : NULL, &paging);
        if (o->quantize && (r = mx_model_quantize(l->model, o->quantize, o->threads, o->progress ? report : NULL,
                                                  &quantizing, err)) < 0)
                return r;
        mx_engine_opts eo = {.device = o->device, .threads = o->threads, .simd = o->simd,
                             .activations = o->activations, .bf16_plain = o->bf16_plain,
                             .expert_memory = l->expert_memory, .host_cache = l->host_cache,
                             .kv_type = l->kv_type, .kv_memory = l->kv_memory,
                             .kv_memory_percent = l->kv_memory_percent,
                             .progress = o->progress ? report : NULL, .progress_arg = &upload};
        if ((r = mx_engine_open(&l->engine, l->model, &eo, err)) < 0)
                return r;
        /* A page that could not be read while paging in: say so now. */
        return file ? mx_model_check_files(l->model, err) : 0;
}
