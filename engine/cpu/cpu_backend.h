/* The CPU backend's state, shared by its files: private to it. */
#pragma once

#include "backend.h"
#include "kernels.h"
#include "pool.h"

typedef struct cpu_f32 {
        const mx_tensor *t;
        float *data;
} cpu_f32;

/* A BF16 matrix packed (MX_BF16P, bf16_packed.c). */
typedef struct cpu_packed {
        const mx_tensor *t;
        uint8_t *data;   /* [t rows][stride bytes] */
        uint64_t stride; /* bytes per row */
        uint64_t nbytes;
} cpu_packed;

typedef struct cpu_scratch {
        float *p;
        size_t cap;
} cpu_scratch;

typedef struct cpu_backend {
        mx_backend base;
        mx_pool *pool;
        const mx_kernels *k;
        uint32_t threads;
        bool fast;                             /* the fast path (kernels.h) */
        uint8_t *act;                          /* [n][mx_act_row_bytes]: a product's activations, rounded */
        size_t act_cap;                        /* bytes */
        char desc[320];
        float *inv_freq, *rope_cos, *rope_sin; /* head_dim / 2 each */
        cpu_f32 *f32;                          /* norm weights as fp32 (tiny) */
        size_t n_f32;
        cpu_scratch *scratch;                  /* one per thread */
        cpu_packed *packed;                    /* sorted by tensor address */
        size_t n_packed;
        struct cpu_moe *moe;
        struct mx_expert_cache *experts; /* NULL: every expert mapped */
        void *kv;       /* the KV pool: [blocks][layer][K|V][MX_KV_BLOCK][kv_heads * head_dim] of base.kv_type */
        size_t kv_bytes;
        mx_error err;                    /* what failed in a step, for step_end */
} cpu_backend;

/* Row r of a tensor (Hugging Face row order) as fp32. */
void mx_cpu_row_to_f32(const mx_tensor *t, uint64_t r, float *out);
/* A 1-D weight as fp32, converted once at start-up. */
int mx_cpu_norms_init(cpu_backend *cb);
const float *mx_cpu_f32_of(cpu_backend *cb, const mx_tensor *t);
/* Per-thread scratch of at least n floats; NULL when out of memory. */
float *mx_cpu_scratch(cpu_backend *cb, uint32_t thread, size_t n);

/* Packs the BF16 matrices that qualify (bf16_packed.c), where the copies
 * fit in memory beside the files, with progress(bytes packed, bytes to
 * pack, arg) after each; or one matrix if it qualifies. -ENOMEM. */
int mx_cpu_pack_weights(cpu_backend *cb, void (*progress)(uint64_t done, uint64_t total, void *arg), void *arg);
int mx_cpu_pack_tensor(cpu_backend *cb, const mx_tensor *t);
void mx_cpu_packed_free(cpu_backend *cb);
/* Experts that start streaming leave their copies: the memory was wanted
 * back (they are not packed again if streaming stops). */
void mx_cpu_packed_drop_experts(cpu_backend *cb);
/* t packed, or NULL. */
const cpu_packed *mx_cpu_packed_of(const cpu_backend *cb, const mx_tensor *t);
/* The bytes a product with t reads: packed or as mapped. */
uint64_t mx_cpu_weight_bytes(const cpu_backend *cb, const mx_tensor *t);

int mx_cpu_matmul(mx_backend *b, const mx_tensor *w, const float *x, float *out, uint32_t n,
                  bool accumulate);

/* One of several products run as one parallel loop (mx_cpu_products):
 * out = w x for n tokens, or added to out; with w3, out = silu(w x) *
 * (w3 x), each block of rows finished by the task that made it, w3 x going
 * to tmp ([n][rows]). Inputs shared by several products are rounded once. */
typedef struct cpu_product {
        const mx_tensor *w, *w3;
        const float *x; /* [n][w cols] */
        float *out;     /* [n][w rows] */
        float *tmp;
        uint32_t n;
        bool accumulate; /* not with w3 */
} cpu_product;

#define MX_CPU_PRODUCTS_MAX 16
/* -EINVAL: more than MX_CPU_PRODUCTS_MAX products, or w3 with accumulate
 * or on a tensor in RoPE order. */
int mx_cpu_products(mx_backend *b, const cpu_product *p, uint32_t count);
int mx_cpu_qkv(mx_backend *b, const mx_layer *l, const float *x, float *q, float *k, float *v, uint32_t n);
/* h1[i] = silu(h1[i]) * h3[i], SwiGLU's product, as Hugging Face computes it. */
void mx_cpu_silu_mul(float *h1, const float *h3, size_t n);
int mx_cpu_attention(mx_backend *b, uint32_t layer, const mx_attn_seq *seqs, size_t n_seqs,
                     const float *q, const float *k, const float *v, float *out);
int mx_cpu_moe(mx_backend *b, const mx_layer *layer, const float *x, float *acc, uint32_t n);
void mx_cpu_moe_free(cpu_backend *cb);
/* One token's routing: softmax over all experts, then the k most probable
 * (lowest index first among equals), renormalised; p is scratch for the
 * probabilities. The CUDA kernel (kernels/moe.cu) computes the same. */
void mx_cpu_route(const float *logits, uint32_t experts, uint32_t k, float *p, uint32_t *choice, float *weight);

/* Block `block`'s keys (v false) or values of one layer in the KV pool:
 * [MX_KV_BLOCK][kv_heads * head_dim] elements of the pool's type. */
void *mx_cpu_kv_block(cpu_backend *cb, uint32_t block, uint32_t layer, bool v);
