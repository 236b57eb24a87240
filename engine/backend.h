/* The seam between the forward pass (engine.c, written once) and the
 * devices that run it. A backend owns its memory: activations and the KV
 * pool are the backend's, and the forward pass passes activation pointers
 * along but never dereferences them, so the same pass drives the CPU and
 * CUDA. Operations that may need memory return 0 or -ENOMEM. Private to
 * the engine. */
#pragma once

#include "mixtral.h"

typedef struct mx_backend mx_backend;

/* Tokens per KV block. The pool (kv_init) is [block][layer][K|V][MX_KV_BLOCK]
 * [kv_heads * head_dim] of the KV type; the engine decides which block
 * holds which sequence's positions (kv/kv.h). */
#define MX_KV_BLOCK 16

/* One sequence's share of a batched step: n tokens at positions
 * pos0 .. pos0+n-1, rows row0 .. row0+n-1 of the activations; position i
 * lives in pool block blocks[i / MX_KV_BLOCK] at i % MX_KV_BLOCK. */
typedef struct mx_attn_seq {
        const uint32_t *blocks; /* [(pos0 + n + MX_KV_BLOCK - 1) / MX_KV_BLOCK] at least */
        uint32_t pos0, n, row0;
} mx_attn_seq;

/* The whole step, handed to backends that keep their own copy of it on
 * the device (CUDA) before any operation runs; the operations then get
 * the same host arrays again. */
typedef struct mx_step {
        const int32_t *tokens;
        const uint32_t *pos, *logit_rows;
        uint32_t n_tokens, n_logit_rows;
        const mx_attn_seq *seqs;
        size_t n_seqs;
} mx_step;

/* A token to draw on the device from row `row` of the step's logits. */
typedef struct mx_sample_req {
        uint32_t row;
        const mx_sampling *p;
        const int32_t *history;
        size_t n_history;
        double u; /* from the sequence's sampler (mx_sampler_uniform) */
} mx_sample_req;

typedef struct mx_backend_ops {
        const char *name;
        void (*destroy)(mx_backend *b);
        /* A line for logs and --bench: device, threads, instruction set. */
        const char *(*describe)(mx_backend *b);

        /* Activation memory on the device, n floats; NULL when out of memory. */
        float *(*alloc)(mx_backend *b, size_t n);
        void (*release)(mx_backend *b, float *p);
        /* dst (host) = src (device), n floats. */
        void (*download)(mx_backend *b, float *dst, const float *src, size_t n);

        /* Bytes of memory free now, of which a kv_memory percentage is
         * taken (the host's available memory; a GPU's free memory), and
         * what an auto-sized KV pool takes (before the engine's cap of 8
         * contexts): the backend knows what else wants its memory. */
        void (*kv_memory)(mx_backend *b, uint64_t *free, uint64_t *auto_bytes);
        /* The KV pool: `blocks` blocks of type t, allocated once, before
         * any step. */
        int (*kv_init)(mx_backend *b, mx_kv_type t, uint32_t blocks);
        /* Block dst = block src, every layer (copy on write), before the
         * next step writes to dst. */
        void (*kv_copy)(mx_backend *b, uint32_t dst, uint32_t src);

        /* dst[i] = src[rows[i]], rows of cols floats. */
        void (*gather)(mx_backend *b, const float *src, uint64_t cols, const uint32_t *rows,
                       uint32_t n, float *dst);
        /* out[n][hidden] = rows `tokens` of the embedding table. */
        void (*embed)(mx_backend *b, const mx_tensor *table, const int32_t *tokens, uint32_t n,
                      float *out);
        /* out = RMSNorm(x) * w, per row of `cols`. */
        void (*rmsnorm)(mx_backend *b, const mx_tensor *w, float eps, const float *x, float *out,
                        uint32_t n);
        /* out[t][r] (+)= w[r] . x[t]: the weight's rows in Hugging Face order. */
        int (*matmul)(mx_backend *b, const mx_tensor *w, const float *x, float *out, uint32_t n,
                      bool accumulate);
        /* Rotary embedding applied in place to q [n][heads*hd] and k [n][kv*hd];
         * pos[i] is token i's position. */
        void (*rope)(mx_backend *b, float *q, float *k, const uint32_t *pos, uint32_t n);
        /* Writes k, v into each sequence's blocks at layer L (rounded to the
         * pool's type), then causal GQA attention of q over the blocks, in
         * fp32: out [rows][heads*hd]. */
        int (*attention)(mx_backend *b, uint32_t layer, const mx_attn_seq *seqs, size_t n_seqs,
                         const float *q, const float *k, const float *v, float *out);
        /* acc[n][hidden] += MoE(x): router softmax over all experts, top-k,
         * renormalised weights, SwiGLU experts; touches only chosen experts. */
        int (*moe)(mx_backend *b, const mx_layer *layer, const float *x, float *acc, uint32_t n);

        /* Optional: q, k, v = x times the layer's wq, wk, wv at once. */
        int (*qkv)(mx_backend *b, const mx_layer *layer, const float *x, float *q, float *k, float *v,
                   uint32_t n);
        /* Optional. Before a step's operations; and after them, with the
         * first error of an asynchronous device (message in err). */
        int (*step_begin)(mx_backend *b, const mx_step *s);
        int (*step_end)(mx_backend *b, mx_error *err);
        /* Optional: draws tokens on the device from the step's logits
         * (after the logits rows were made): ids[i] for reqs[i]. */
        int (*sample)(mx_backend *b, const float *logits, const mx_sample_req *reqs, size_t n,
                      int32_t *ids);
        /* Optional: a new expert budget (0: all mapped), between steps. */
        int (*set_expert_memory)(mx_backend *b, uint64_t budget, mx_error *err);
        /* Optional: a new size for a GPU's host cache of experts, between steps. */
        int (*set_host_cache)(mx_backend *b, uint64_t bytes, mx_error *err);
        /* Optional: expert streaming's counters. */
        void (*expert_stats)(mx_backend *b, mx_expert_stats *s);
        /* Optional: brings counters kept on the device up to date. */
        void (*sync_counters)(mx_backend *b);
} mx_backend_ops;

struct mx_backend {
        const mx_backend_ops *ops;
        const mx_model *model;
        /* What the operations read, for --bench: weight bytes (each matrix
         * counted once per product, however many tokens share it) and
         * KV-cache bytes. */
        uint64_t weight_bytes, kv_bytes;
        uint64_t matmul_flops; /* 2 x rows x cols x tokens per product */
        mx_kv_type kv_type;    /* the pool's, once kv_init ran */
};

/* Bytes of one element of the pool, and of one block (every layer). */
static inline size_t mx_kv_elem_bytes(mx_kv_type t) {
        return t == MX_KV_F32 ? 4 : 2;
}

static inline uint64_t mx_kv_block_bytes(const mx_config *c, mx_kv_type t) {
        return (uint64_t)c->n_layers * 2 * MX_KV_BLOCK * c->n_kv_heads * c->head_dim * mx_kv_elem_bytes(t);
}

/* The CPU backend: threads (0 = all online cores), an instruction set
 * (MX_SIMD_AUTO = the best the CPU has), the activations' path, and a
 * budget for streamed experts (0: all mapped), from o. */
int mx_cpu_backend_new(const mx_model *m, const mx_engine_opts *o, mx_backend **out, mx_error *err);

/* The CUDA backend on device `index`: every weight uploaded once (bf16),
 * through a few pinned buffers, with o->progress as it goes; or, with
 * o->expert_memory (or when the experts do not fit), the dense weights
 * and expert slots within the budget, the experts streamed through a host
 * cache of o->host_cache bytes. -ENODEV with a clear message where there
 * is no usable GPU or the build has no CUDA. */
int mx_cuda_backend_new(const mx_model *m, int index, const mx_engine_opts *o, mx_backend **out,
                        mx_error *err);
