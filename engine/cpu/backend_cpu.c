/* The CPU backend: activations in host memory, weights used in place from
 * the mapped files (bf16 stays bf16), fp32 arithmetic, work spread over a
 * thread pool, matrix products in the kernels of the best instruction set
 * (kernels.h). Element-wise steps are plain C shared by every instruction
 * set, so results do not depend on it. The KV pool is one host allocation
 * (attention.c reads and writes it). */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "backend.h"
#include "cpu_backend.h"
#include "stream.h"
#include "kernels.h"
#include "mx_common.h"
#include "pool.h"

static cpu_backend *cpu(mx_backend *b) {
        return (cpu_backend *)b;
}

/* ---- memory ----------------------------------------------------------------- */

static float *cpu_alloc(mx_backend *b, size_t n) {
        size_t bytes;
        if (!mx_mul_size(n ? n : 1, sizeof(float), &bytes))
                return NULL;
        void *p = NULL;
        return posix_memalign(&p, 64, bytes) == 0 ? p : NULL;
}

static void cpu_release(mx_backend *b, float *p) {
        free(p);
}

static void cpu_download(mx_backend *b, float *dst, const float *src, size_t n) {
        memcpy(dst, src, n * sizeof(float));
}

/* MemAvailable: what the kernel could hand out without swapping. */
static uint64_t available(void) {
        _cleanup_fclose_ FILE *f = fopen("/proc/meminfo", "re");
        char line[128];
        unsigned long long kib;
        while (f && fgets(line, sizeof(line), f))
                if (sscanf(line, "MemAvailable: %llu kB", &kib) == 1)
                        return (uint64_t)kib << 10;
        long pages = sysconf(_SC_AVPHYS_PAGES), size = sysconf(_SC_PAGESIZE);
        return pages > 0 && size > 0 ? (uint64_t)pages * (uint64_t)size : 0;
}

/* Auto: a quarter of it; the rest is the page cache's (a mapped model's
 * pages among them) and everything else's. */
static void cpu_kv_memory(mx_backend *b, uint64_t *free, uint64_t *auto_bytes) {
        *free = available();
        *auto_bytes = *free / 4;
}

/* Untouched pages of the pool cost nothing until a sequence writes them. */
static int cpu_kv_init(mx_backend *b, mx_kv_type t, uint32_t blocks) {
        cpu_backend *cb = cpu(b);
        uint64_t bytes;
        if (!mx_mul_u64(blocks, mx_kv_block_bytes(&b->model->cfg, t), &bytes) || bytes > SIZE_MAX)
                return -ENOMEM;
        void *p = NULL;
        if (posix_memalign(&p, 64, (size_t)bytes ? (size_t)bytes : 1) != 0)
                return -ENOMEM;
        free(cb->kv);
        cb->kv = p;
        cb->kv_bytes = (size_t)bytes;
        b->kv_type = t;
        return 0;
}

void *mx_cpu_kv_block(cpu_backend *cb, uint32_t block, uint32_t layer, bool v) {
        const mx_config *c = &cb->base.model->cfg;
        size_t half = (size_t)MX_KV_BLOCK * c->n_kv_heads * c->head_dim * mx_kv_elem_bytes(cb->base.kv_type);
        return (char *)cb->kv + (((size_t)block * c->n_layers + layer) * 2 + v) * half;
}

static void cpu_kv_copy(mx_backend *b, uint32_t dst, uint32_t src) {
        cpu_backend *cb = cpu(b);
        memcpy(mx_cpu_kv_block(cb, dst, 0, false), mx_cpu_kv_block(cb, src, 0, false),
               mx_kv_block_bytes(&b->model->cfg, b->kv_type));
}

/* ---- element-wise steps -------------------------------------------------------- */

static void cpu_embed(mx_backend *b, const mx_tensor *table, const int32_t *tokens, uint32_t n,
                      float *out) {
        uint64_t h = table->shape[1];
        for (uint32_t t = 0; t < n; t++)
                mx_cpu_row_to_f32(table, (uint64_t)tokens[t], out + t * h);
        b->weight_bytes += (uint64_t)n * (table->nbytes / table->shape[0]);
}

typedef struct norm_job {
        cpu_backend *cb;
        const float *x, *w;
        float *out;
        uint64_t cols;
        float eps;
} norm_job;

static void norm_task(void *arg, uint32_t t, uint32_t thread) {
        norm_job *j = arg;
        const float *x = j->x + t * j->cols;
        float *o = j->out + t * j->cols;
        float var = j->cb->k->dot(x, x, j->cols) / (float)j->cols;
        float inv = 1.0f / sqrtf(var + j->eps);
        for (uint64_t i = 0; i < j->cols; i++)
                o[i] = j->w[i] * (x[i] * inv);
}

static void cpu_rmsnorm(mx_backend *b, const mx_tensor *w, float eps, const float *x, float *out,
                        uint32_t n) {
        norm_job j = {cpu(b), x, mx_cpu_f32_of(cpu(b), w), out, w->shape[0], eps};
        mx_pool_run(cpu(b)->pool, n, norm_task, &j);
}

static void rotate(float *v, uint32_t heads, uint32_t hd, const float *cs, const float *sn) {
        uint32_t half = hd / 2;
        for (uint32_t h = 0; h < heads; h++, v += hd)
                for (uint32_t i = 0; i < half; i++) {
                        float x1 = v[i], x2 = v[i + half];
                        v[i] = x1 * cs[i] - x2 * sn[i];
                        v[i + half] = x2 * cs[i] + x1 * sn[i];
                }
}

/* Angles as Hugging Face computes them: inv_freq in fp32, pos * inv_freq
 * rounded to fp32, then its cosine and sine. */
static void cpu_rope(mx_backend *b, float *q, float *k, const uint32_t *pos, uint32_t n) {
        const mx_config *c = &b->model->cfg;
        const float *inv = cpu(b)->inv_freq;
        float *cs = cpu(b)->rope_cos, *sn = cpu(b)->rope_sin;
        uint32_t half = c->head_dim / 2;
        for (uint32_t t = 0; t < n; t++) {
                for (uint32_t i = 0; i < half; i++) {
                        float a = (float)pos[t] * inv[i];
                        cs[i] = (float)cos((double)a);
                        sn[i] = (float)sin((double)a);
                }
                rotate(q + (size_t)t * c->n_heads * c->head_dim, c->n_heads, c->head_dim, cs, sn);
                rotate(k + (size_t)t * c->n_kv_heads * c->head_dim, c->n_kv_heads, c->head_dim, cs, sn);
        }
}

static void cpu_gather(mx_backend *b, const float *src, uint64_t cols, const uint32_t *rows,
                       uint32_t n, float *dst) {
        for (uint32_t i = 0; i < n; i++)
                memcpy(dst + i * cols, src + rows[i] * cols, cols * sizeof(float));
}

static const char *cpu_describe(mx_backend *b) {
        return cpu(b)->desc;
}

static void cpu_destroy(mx_backend *b) {
        cpu_backend *cb = cpu(b);
        if (!cb)
                return;
        mx_pool_free(cb->pool);
        for (size_t i = 0; i < cb->n_f32; i++)
                free(cb->f32[i].data);
        free(cb->f32);
        for (uint32_t i = 0; i < cb->threads; i++)
                free(cb->scratch[i].p);
        free(cb->scratch);
        free(cb->inv_freq);
        free(cb->rope_cos);
        free(cb->rope_sin);
        free(cb->act);
        mx_cpu_moe_free(cb);
        mx_cpu_packed_free(cb);
        mx_expert_cache_free(cb->experts);
        free(cb->kv);
        free(cb);
}

/* A streamed expert that could not be read fails the step with its reason. */
static int cpu_step_end(mx_backend *b, mx_error *err) {
        cpu_backend *cb = cpu(b);
        if (!cb->err.code)
                return 0;
        int r = mx_error_set(err, cb->err.code, "%s", cb->err.msg);
        cb->err = (mx_error){0};
        return r;
}

static int cpu_set_expert_memory(mx_backend *b, uint64_t budget, mx_error *err) {
        cpu_backend *cb = cpu(b);
        mx_expert_stats before = {0};
        if (cb->experts)
                mx_expert_cache_stats(cb->experts, &before);
        mx_expert_cache *next = NULL;
        int r = budget ? mx_expert_cache_new(b->model, budget, NULL, &next, err) : 0;
        if (r < 0)
                return r; /* the old cache stays */
        if (next) {
                mx_expert_cache_carry(next, &before);
                mx_cpu_packed_drop_experts(cb);
        }
        mx_expert_cache_free(cb->experts);
        cb->experts = next;
        return 0;
}

static void cpu_expert_stats(mx_backend *b, mx_expert_stats *s) {
        if (cpu(b)->experts)
                mx_expert_cache_stats(cpu(b)->experts, s);
        else
                *s = (mx_expert_stats){0};
}

static const mx_backend_ops cpu_ops = {
        .name = "cpu",
        .destroy = cpu_destroy,
        .describe = cpu_describe,
        .alloc = cpu_alloc,
        .release = cpu_release,
        .download = cpu_download,
        .kv_memory = cpu_kv_memory,
        .kv_init = cpu_kv_init,
        .kv_copy = cpu_kv_copy,
        .embed = cpu_embed,
        .rmsnorm = cpu_rmsnorm,
        .matmul = mx_cpu_matmul,
        .qkv = mx_cpu_qkv,
        .rope = cpu_rope,
        .attention = mx_cpu_attention,
        .moe = mx_cpu_moe,
        .gather = cpu_gather,
        .step_end = cpu_step_end,
        .expert_stats = cpu_expert_stats,
        .set_expert_memory = cpu_set_expert_memory,
};

static mx_isa isa_for(mx_simd simd) {
        switch (simd) {
        case MX_SIMD_SCALAR:
                return MX_ISA_SCALAR;
        case MX_SIMD_AVX2:
                return mx_isa_best_of(MX_ISA_AVX2);
        case MX_SIMD_AVX512:
                return mx_isa_best_of(MX_ISA_AVX512);
        case MX_SIMD_AUTO:
                break;
        }
        return mx_isa_detect();
}

/* The copies must hold the files' bytes: a file that shrank before or
 * while they were made (its missing pages read as zeros) fails the start. */
static int pack_weights(cpu_backend *cb, const mx_engine_opts *o, mx_error *err) {
        const mx_model *m = cb->base.model;
        int r = mx_model_check_files(m, err);
        if (r < 0)
                return r;
        if ((r = mx_cpu_pack_weights(cb, o->progress, o->progress_arg)) < 0)
                return mx_error_set(err, r, "out of memory packing the bf16 weights (bf16-plain keeps them as mapped)");
        if (mx_model_files_faulted(m)) {
                r = mx_model_check_files(m, err);
                return r < 0 ? r : mx_error_set(err, -EIO, "%s: a model file changed while its weights were packed", m->dir);
        }
        return 0;
}

int mx_cpu_backend_new(const mx_model *m, const mx_engine_opts *o, mx_backend **out, mx_error *err) {
        uint32_t threads = o->threads;
        for (size_t i = 0; i < m->n_tensors; i++)
                if (!m->tensors[i].data)
                        return mx_error_set(err, -EINVAL, "%s: the weights are not in host memory (a synthetic "
                                            "model made for the GPU): the CPU cannot run it", m->dir);
        mx_isa isa = isa_for(o->simd);
        if (!mx_isa_supported(isa))
                return mx_error_set(err, -EOPNOTSUPP, "this CPU (or build) cannot run %s kernels",
                                    mx_isa_name(isa));
        if (threads == 0) {
                long online = sysconf(_SC_NPROCESSORS_ONLN);
                threads = online > 0 ? (uint32_t)online : 1;
        }
        cpu_backend *cb = calloc(1, sizeof(*cb));
        if (!cb)
                return mx_error_set(err, -ENOMEM, "out of memory");
        cb->base = (mx_backend){&cpu_ops, m};
        cb->k = mx_kernels_for(isa);
        cb->threads = threads;
        cb->fast = o->activations != MX_ACTIVATIONS_F32;
        cb->scratch = calloc(threads, sizeof(*cb->scratch));
        cb->inv_freq = calloc(m->cfg.head_dim / 2, sizeof(float));
        cb->rope_cos = calloc(m->cfg.head_dim / 2, sizeof(float));
        cb->rope_sin = calloc(m->cfg.head_dim / 2, sizeof(float));
        int r = cb->scratch && cb->inv_freq && cb->rope_cos && cb->rope_sin ? mx_cpu_norms_init(cb) : -ENOMEM;
        if (r == 0)
                r = mx_pool_new(threads, &cb->pool);
        if (r < 0) {
                cpu_destroy(&cb->base);
                return mx_error_set(err, r, "cannot start %u threads: %s", threads, strerror(-r));
        }
        for (uint32_t i = 0; i < m->cfg.head_dim / 2; i++) {
                float e = (float)(2 * i) / (float)m->cfg.head_dim;
                cb->inv_freq[i] = 1.0f / powf((float)m->cfg.rope_theta, e);
        }
        if (o->expert_memory && (r = mx_expert_cache_new(m, o->expert_memory, NULL, &cb->experts, err)) < 0) {
                cpu_destroy(&cb->base);
                return r;
        }
        /* (The scalar kernels, the reference, read plain rows only.) */
        bool pack = cb->fast && !o->bf16_plain && isa != MX_ISA_SCALAR;
        if (pack && (r = pack_weights(cb, o, err)) < 0) {
                cpu_destroy(&cb->base);
                return r;
        }
        char packed[48] = "";
        if (cb->n_packed)
                snprintf(packed, sizeof(packed), ", %zu bf16 matrices packed", cb->n_packed);
        int k = snprintf(cb->desc, sizeof(cb->desc), "cpu, %u thread%s, %s, %s activations%s", threads,
                         threads == 1 ? "" : "s", mx_isa_name(isa), cb->fast ? "fast" : "f32", packed);
        if (cb->experts) {
                mx_expert_stats st;
                mx_expert_cache_stats(cb->experts, &st);
                snprintf(cb->desc + k, sizeof(cb->desc) - (size_t)k, ", experts streamed: %u per layer, %s",
                         st.slots_per_layer, st.how);
        }
        *out = &cb->base;
        return 0;
}
