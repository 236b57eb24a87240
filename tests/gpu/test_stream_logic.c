/* The GPU's expert streaming (engine/cuda/stream_cuda.c) run on the host
 * through fake_kernels.c: every layer's output must equal, bit for bit,
 * the same arithmetic on the model's own (mapped) weights, whatever the
 * device slots, host cache, shrinking and faults did; each chosen expert
 * runs once per layer; the counters add up; the budget holds; nothing is
 * left allocated or page-locked. What the GPU adds (asynchronous copies,
 * events, the real kernels) is checked by tests/gpu/run.sh on a GPU.
 *
 *   test-stream-logic CHECKPOINT_DIR */
#include <stdio.h>
#include <string.h>

#include "quant.h"
#include "cuda_backend.h"
#include "fake_kernels.h"
#include "mx_common.h"
#include "test_util.h"

#define NMAX 9

typedef struct rig {
        const mx_model *m;
        cuda_backend cb;
        mxk_moe_buffers ref;     /* the reference's routing */
        uint16_t **w13, **w2;    /* [layer * E + e]: the experts as the GPU holds them */
        uint32_t E, k, H, F, layers;
        uint64_t active;         /* experts chosen, summed over layers and steps */
        uint64_t seed;
        uint32_t stored;         /* bytes per expert weight in the files */
} rig;

static float urand(uint64_t *s) {
        *s = *s * 6364136223846793005ull + 1442695040888963407ull;
        return (float)((*s >> 40) & 0xffffff) / 16777216.0f * 2.0f - 1.0f;
}

static uint16_t *as_bf16(const mx_tensor *t, uint16_t *dst) {
        float *row = malloc(t->shape[1] * sizeof(float));
        for (uint64_t r = 0; r < t->shape[0]; r++) {
                mx_dequant_row(t->dtype, mx_tensor_row(t, r), row, t->shape[1]);
                for (uint64_t i = 0; i < t->shape[1]; i++)
                        dst[r * t->shape[1] + i] = mx_f32_to_bf16(row[i]);
        }
        free(row);
        return dst;
}

static void buffers(mxk_moe_buffers *b, uint32_t E, uint32_t k, uint32_t H, uint32_t F) {
        *b = (mxk_moe_buffers){.choice = calloc(NMAX * k, 4), .weight = calloc(NMAX * k, 4),
                               .list_tok = calloc(NMAX * k, 4), .list_w = calloc(NMAX * k, 4),
                               .slot_of = calloc(NMAX * k, 4), .counts = calloc(3 * E + 1, 4),
                               .act = calloc(F, 4), .y = calloc((size_t)NMAX * k * H, 4)};
}

static void buffers_free(mxk_moe_buffers *b) {
        free(b->choice), free(b->weight), free(b->list_tok), free(b->list_w), free(b->slot_of);
        free(b->counts), free(b->act), free(b->y);
}

static void rig_init(rig *g, const mx_model *m) {
        const mx_config *c = &m->cfg;
        *g = (rig){.m = m, .E = c->n_experts, .k = c->n_experts_per_tok, .H = c->hidden_size,
                   .F = c->intermediate_size, .layers = c->n_layers, .seed = 7,
                   .stored = (uint32_t)mx_dtype_block_bytes(m->layers[0].w1[0]->dtype)};
        cuda_backend *cb = &g->cb;
        cb->base.model = m;
        cb->ctx = (mxk_ctx *)g; /* never dereferenced by the fakes */
        cb->dev = calloc(m->n_tensors, sizeof(void *));
        cb->router_logits = calloc((size_t)NMAX * g->E, 4);
        buffers(&cb->moe, g->E, g->k, g->H, g->F);
        buffers(&g->ref, g->E, g->k, g->H, g->F);
        g->w13 = calloc((size_t)g->layers * g->E, sizeof(void *));
        g->w2 = calloc((size_t)g->layers * g->E, sizeof(void *));
        for (uint32_t L = 0; L < g->layers; L++) {
                const mx_layer *l = &m->layers[L];
                cb->dev[mx_cuda_tensor_index(cb, l->router)] = as_bf16(l->router, malloc(l->router->nbytes * 2));
                for (uint32_t e = 0; e < g->E; e++) {
                        uint16_t *w13 = malloc((size_t)2 * g->F * g->H * 2);
                        as_bf16(l->w1[e], w13);
                        as_bf16(l->w3[e], w13 + (size_t)g->F * g->H);
                        g->w13[L * g->E + e] = w13;
                        g->w2[L * g->E + e] = as_bf16(l->w2[e], malloc((size_t)g->H * g->F * 2));
                }
        }
}

static void rig_free(rig *g) {
        for (uint32_t L = 0; L < g->layers; L++) {
                free(g->cb.dev[mx_cuda_tensor_index(&g->cb, g->m->layers[L].router)]);
                for (uint32_t e = 0; e < g->E; e++)
                        free(g->w13[L * g->E + e]), free(g->w2[L * g->E + e]);
        }
        free(g->w13), free(g->w2), free(g->cb.dev), free(g->cb.router_logits);
        buffers_free(&g->cb.moe), buffers_free(&g->ref);
}

/* The same arithmetic on the model's own weights. */
static void reference(rig *g, uint32_t L, const float *x, float *acc, uint32_t n) {
        mxk_moe_route(NULL, &g->ref, g->cb.router_logits, n, g->E, g->k);
        const uint32_t *c = g->ref.counts;
        for (uint32_t e = 0; e < g->E; e++)
                for (uint32_t j = c[g->E + e]; j < c[g->E + e] + c[e]; j++)
                        fake_expert(g->w13[L * g->E + e], g->w2[L * g->E + e], x + (size_t)g->ref.list_tok[j] * g->H,
                                    g->ref.y + (size_t)j * g->H, g->ref.act, g->H, g->F);
        mxk_moe_combine(NULL, &g->ref, acc, n, g->k, g->H);
        g->active += c[2 * g->E];
}

/* A step of n tokens through every layer (each layer's input made up);
 * the first failure's code. */
static int step(rig *g, uint32_t n, const char *what) {
        float x[NMAX * 128], acc[NMAX * 128], want[NMAX * 128];
        for (uint32_t L = 0; L < g->layers; L++) {
                for (size_t i = 0; i < (size_t)n * g->H; i++)
                        x[i] = urand(&g->seed), acc[i] = want[i] = urand(&g->seed);
                const mx_tensor *router = g->m->layers[L].router;
                mxk_matmul(NULL, mx_cuda_dev(&g->cb, router), g->E, g->H, x, g->cb.router_logits, n, false, NULL);
                int r = mx_cuda_stream_moe(&g->cb, L, x, acc, n);
                if (r < 0)
                        return r;
                reference(g, L, x, want, n);
                CHECK(memcmp(acc, want, (size_t)n * g->H * sizeof(float)) == 0, "%s: layer %u of a %u-token step differs",
                      what, L, n);
        }
        return 0;
}

static void steps(rig *g, const char *what) {
        static const uint32_t sizes[] = {1, 3, 1, 9, 2, 1, 1, 5};
        for (size_t i = 0; i < MX_ELEMENTSOF(sizes); i++)
                CHECK(step(g, sizes[i], what) == 0, "%s: step failed: %s", what, g->cb.err.msg);
}

/* The counters against what happened. */
static void check_stats(rig *g, const char *what, uint32_t spl) {
        mx_expert_stats s;
        mx_cuda_stream_stats(&g->cb, &s);
        uint64_t slot = 3ull * g->F * g->H * 2;
        CHECK(s.streaming && s.slots_per_layer == spl && s.budget == (uint64_t)spl * g->layers * slot,
              "%s: %u slots per layer (want %u), budget %llu", what, s.slots_per_layer, spl, (unsigned long long)s.budget);
        CHECK(s.hits + s.misses == g->active, "%s: %llu hits + %llu misses, but %llu experts chosen", what,
              (unsigned long long)s.hits, (unsigned long long)s.misses, (unsigned long long)g->active);
        CHECK(fake.experts_run == g->active, "%s: %u expert runs for %llu chosen", what, fake.experts_run,
              (unsigned long long)g->active);
        CHECK(s.resident <= s.budget, "%s: %llu resident over the budget %llu", what, (unsigned long long)s.resident,
              (unsigned long long)s.budget);
        CHECK(s.bytes_uploaded == fake.uploaded && s.bytes_uploaded >= s.misses * slot * (g->stored / 2),
              "%s: %llu bytes uploaded (the copies: %llu) for %llu misses", what, (unsigned long long)s.bytes_uploaded,
              (unsigned long long)fake.uploaded, (unsigned long long)s.misses);
        CHECK(spl == g->E || s.misses > 0, "%s: no misses with %u of %u slots", what, spl, g->E);
        CHECK((g->stored == 2) == (fake.converted == 0), "%s: %llu elements converted from %u-byte weights", what,
              (unsigned long long)fake.converted, g->stored);
        CHECK(s.bytes_read > 0 && s.host_budget > 0 && s.host_hits + s.host_misses > 0, "%s: the host cache was not used",
              what);
        CHECK(fake.waits[0] >= s.hits + s.misses && fake.waits[1] >= s.bytes_uploaded / (slot * (g->stored / 2)),
              "%s: computes or copies that did not wait on their events", what);
}

/* Opens streaming at budget (host cache host), runs, checks, closes. */
static void run_case(const mx_model *m, uint64_t budget, uint64_t host, uint32_t spl, const char *what) {
        rig g;
        rig_init(&g, m);
        fake = (fake_gpu){.limit = (size_t)1 << 40};
        mx_error err = {0};
        CHECK(mx_cuda_stream_new(&g.cb, budget, host, &err) == 0, "%s: %s", what, err.msg);
        if (g.cb.stream) {
                steps(&g, what);
                check_stats(&g, what, spl);
                mx_cuda_stream_free(&g.cb);
        }
        CHECK(fake.used == 0 && fake.registered == 0, "%s: %zu device bytes and %d host ranges left", what, fake.used,
              fake.registered);
        rig_free(&g);
}

/* Less memory as it runs: a failed allocation elsewhere, then low free
 * memory, then the configured budget back by SIGHUP's path. */
static void check_shrinking(const mx_model *m) {
        rig g;
        rig_init(&g, m);
        fake = (fake_gpu){.limit = (size_t)1 << 40};
        mx_error err = {0};
        uint64_t slot = 3ull * g.F * g.H * 2, all = slot * g.E * g.layers;
        CHECK(mx_cuda_stream_new(&g.cb, all, 0, &err) == 0, "shrinking: %s", err.msg);
        if (!g.cb.stream) {
                rig_free(&g);
                return;
        }
        steps(&g, "all slots");
        mx_expert_stats s;
        CHECK(mx_cuda_stream_make_room(&g.cb, slot) == 0, "make room");
        mx_cuda_stream_stats(&g.cb, &s);
        CHECK(s.slots_per_layer < g.E && s.slots_per_layer >= g.k, "after making room: %u per layer", s.slots_per_layer);
        steps(&g, "after making room");
        uint32_t before = s.slots_per_layer;
        fake.report_free = 100u << 20;
        mx_cuda_stream_pressure(&g.cb);
        mx_cuda_stream_stats(&g.cb, &s);
        CHECK(s.slots_per_layer < before || s.slots_per_layer == g.k, "low free memory: %u per layer (was %u)",
              s.slots_per_layer, before);
        steps(&g, "under pressure");
        fake.report_free = 0;
        CHECK(mx_cuda_stream_set(&g.cb, 0, &err) == 0, "back to all: %s", err.msg);
        mx_cuda_stream_stats(&g.cb, &s);
        CHECK(s.slots_per_layer == g.E, "back to all: %u per layer", s.slots_per_layer);
        steps(&g, "grown back");
        while (mx_cuda_stream_make_room(&g.cb, slot) == 0)
                ;
        mx_cuda_stream_stats(&g.cb, &s);
        CHECK(s.slots_per_layer == g.k, "as small as it gets: %u per layer, not top-k", s.slots_per_layer);
        steps(&g, "top-k slots");
        /* The host short of memory: the host cache goes down to its least
         * (the device's slots plus one per layer), then back. */
        uint64_t host_before = s.host_budget, per = s.host_budget / g.layers / g.E;
        CHECK(mx_cuda_stream_set_host(&g.cb, 1, &err) == 0, "host cache down: %s", err.msg);
        mx_cuda_stream_stats(&g.cb, &s);
        uint32_t least = s.slots_per_layer + 1 < g.E ? s.slots_per_layer + 1 : g.E;
        CHECK(least < g.E && s.host_budget == per * g.layers * least, "host cache down: %llu bytes, not %u per layer",
              (unsigned long long)s.host_budget, least);
        steps(&g, "small host cache");
        CHECK(mx_cuda_stream_set_host(&g.cb, 0, &err) == 0, "host cache back: %s", err.msg);
        mx_cuda_stream_stats(&g.cb, &s);
        CHECK(s.host_budget == host_before, "host cache back: %llu, not %llu", (unsigned long long)s.host_budget,
              (unsigned long long)host_before);
        steps(&g, "host cache back");
        mx_cuda_stream_free(&g.cb);
        CHECK(fake.used == 0 && fake.registered == 0, "shrinking: %zu device bytes left", fake.used);
        rig_free(&g);
}

/* Not all the slots asked for fit: as many as do. */
static void check_tight(const mx_model *m) {
        rig g;
        rig_init(&g, m);
        uint64_t slot = 3ull * g.F * g.H * 2;
        fake = (fake_gpu){.limit = (size_t)(g.k + 1) * g.layers * slot + 4096};
        mx_error err = {0};
        CHECK(mx_cuda_stream_new(&g.cb, slot * g.E * g.layers, 0, &err) == 0, "tight: %s", err.msg);
        if (g.cb.stream) {
                steps(&g, "tight");
                check_stats(&g, "tight", g.k + 1);
                mx_cuda_stream_free(&g.cb);
        }
        fake = (fake_gpu){.limit = (size_t)(g.k - 1) * g.layers * slot};
        err = (mx_error){0};
        CHECK(mx_cuda_stream_new(&g.cb, slot * g.E * g.layers, 0, &err) == -ENOMEM && strstr(err.msg, "GPU memory"),
              "not even top-k: '%s'", err.msg);
        mx_cuda_stream_free(&g.cb);
        CHECK(fake.used == 0, "tight: %zu device bytes left", fake.used);
        rig_free(&g);
}

/* A failed read fails that step with the file's name; the next steps
 * are right again. */
static void check_fault(const mx_model *m) {
        rig g;
        rig_init(&g, m);
        fake = (fake_gpu){.limit = (size_t)1 << 40};
        setenv("MX_IO_FAULT", "eio:2", 1);
        mx_error err = {0};
        CHECK(mx_cuda_stream_new(&g.cb, 1, 1, &err) == 0, "fault: %s", err.msg);
        unsetenv("MX_IO_FAULT");
        if (g.cb.stream) {
                int r = 0;
                for (int i = 0; i < 4 && r == 0; i++)
                        r = step(&g, 3, "before the fault");
                CHECK(r == -EIO && strstr(g.cb.err.msg, ".safetensors"), "the fault: %d '%s'", r, g.cb.err.msg);
                g.cb.err = (mx_error){0};
                steps(&g, "after the fault");
                mx_cuda_stream_free(&g.cb);
        }
        rig_free(&g);
}

/* The checkpoint again with every tensor in f32, one file, into dir: the
 * GPU converts such experts to bf16 as they arrive (a raw buffer, then a
 * conversion on the copy stream), so the same outputs must come out. */
static int write_f32(const mx_model *m, const char *src, const char *dir) {
        _cleanup_free_ mx_tensor_data *t = calloc(m->n_tensors, sizeof(*t));
        int r = t ? 0 : -ENOMEM;
        for (size_t i = 0; r == 0 && i < m->n_tensors; i++) {
                const mx_tensor *x = &m->tensors[i];
                uint64_t rows = x->shape[0], cols = x->ndim == 2 ? x->shape[1] : 1;
                float *v = malloc(rows * cols * sizeof(float));
                if (!v) {
                        r = -ENOMEM;
                        break;
                }
                for (uint64_t j = 0; j < rows * cols; j++)
                        v[j] = x->ndim == 2 ? mx_element_f32(mx_tensor_row(x, j / cols), x->dtype, j % cols)
                                            : mx_element_f32(x->data, x->dtype, j);
                t[i] = (mx_tensor_data){x->name, MX_DTYPE_F32, x->ndim, {x->shape[0], x->shape[1]}, v};
        }
        char path[512];
        mx_error err = {0};
        snprintf(path, sizeof(path), "%s/model.safetensors", dir);
        if (r == 0)
                r = mx_safetensors_write(path, t, m->n_tensors, &err);
        for (size_t i = 0; t && i < m->n_tensors; i++)
                free((void *)t[i].data);
        char cmd[1200];
        snprintf(cmd, sizeof(cmd), "cp '%s/config.json' '%s/'", src, dir);
        return r < 0 ? r : system(cmd) == 0 ? 0 : -EIO;
}

static void check_f32(const mx_model *m, const char *src) {
        char dir[] = "/tmp/mx-f32-XXXXXX", cmd[64];
        CHECK(mkdtemp(dir) != NULL, "mkdtemp");
        _cleanup_(mx_model_freep) mx_model *m32 = NULL;
        mx_error err = {0};
        CHECK(write_f32(m, src, dir) == 0 && mx_model_open(&m32, dir, &err) == 0, "the f32 copy: %s", err.msg);
        if (m32) {
                CHECK(m32->layers[0].w1[0]->dtype == MX_DTYPE_F32, "the copy is not f32");
                run_case(m32, 1, 1, m32->cfg.n_experts_per_tok, "f32 experts, minimum");
        }
        snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
        CHECK(system(cmd) == 0, "clean up");
}

/* Experts in a block format (quantized as the model loaded; or a GGUF
 * file's): streaming them to the GPU is refused, naming one. */
static void check_quantized(const char *dir) {
        _cleanup_(mx_model_freep) mx_model *q = NULL;
        mx_error err = {0};
        CHECK(mx_model_open(&q, dir, &err) == 0 && mx_model_quantize(q, MX_FTYPE_Q8_0, 1, NULL, NULL, &err) == 0,
              "%s", err.msg);
        if (!q)
                return;
        rig g;
        rig_init(&g, q);
        fake = (fake_gpu){.limit = (size_t)1 << 40};
        CHECK(mx_cuda_stream_new(&g.cb, 1, 1, &err) == -EOPNOTSUPP && strstr(err.msg, "is Q8_0: streaming experts"),
              "quantized experts: '%s'", err.msg);
        mx_cuda_stream_free(&g.cb);
        CHECK(fake.used == 0, "quantized experts: %zu device bytes left", fake.used);
        rig_free(&g);
}

int main(int argc, char **argv) {
        if (argc != 2) {
                fprintf(stderr, "usage: test-stream-logic CHECKPOINT_DIR\n");
                return 2;
        }
        mx_error err = {0};
        _cleanup_(mx_model_freep) mx_model *m = NULL;
        if (mx_model_open(&m, argv[1], &err) < 0) {
                fprintf(stderr, "%s\n", err.msg);
                return 1;
        }
        if (m->cfg.hidden_size > 128 || m->cfg.n_experts > 64) {
                fprintf(stderr, "a test checkpoint is small (hidden size up to 128)\n");
                return 1;
        }
        uint32_t E = m->cfg.n_experts, k = m->cfg.n_experts_per_tok;
        uint64_t slot = 3ull * m->cfg.intermediate_size * m->cfg.hidden_size * 2, L = m->cfg.n_layers;
        run_case(m, 1, 1, k, "minimum, host cache minimum");
        run_case(m, slot * L * (k + 1), 0, k + 1, "top-k + 1, host cache auto");
        run_case(m, slot * L * E, UINT64_MAX, E, "every expert, host cache all");
        check_shrinking(m);
        check_tight(m);
        check_fault(m);
        check_f32(m, argv[1]);
        check_quantized(argv[1]);
        return test_result();
}
