/* The CUDA backend's state, shared by its files: private to it. */
#pragma once

#include "backend.h"
#include "mixtral_kernels.h"

typedef struct cuda_backend {
        mx_backend base;
        mxk_ctx *ctx;
        char desc[320];
        void **dev;            /* per tensor (index in model->tensors): its device copy */
        bool *owned;           /* dev[i] is its own allocation (not an expert's) */
        uint64_t device_bytes; /* weights on the device */
        /* Per layer, device and host arrays of the experts' pointers:
         * [layer][0: w13, 1: w2][expert]. */
        uint16_t **d_experts, **h_experts;
        uint64_t expert_bytes; /* one expert's three matrices */
        uint64_t dense_bytes;  /* weight bytes read outside the experts */
        unsigned long long *d_experts_read;
        float *inv_freq;       /* device, head_dim / 2 */

        /* The KV pool and the step's view of it (kv_cuda.c). */
        mxk_kv kv;              /* pool: [blocks][layer][K|V][MX_KV_BLOCK][kv_heads * hd]; tables: d_tables */
        uint32_t *d_tables;     /* [tables_cap] */
        uint32_t tables_cap;    /* entries allocated */
        uint64_t kv_aside;      /* bytes stream_budget kept from the slots for the KV pool (0: none) */
        uint64_t kv_base;       /* what it shared out between them */

        /* The step, on the device. */
        uint32_t step_cap, logit_cap, T, longest;
        int32_t *d_tokens;
        uint32_t *d_pos, *d_logit_rows;
        mxk_row *d_rows;
        float *d_cos, *d_sin;
        void *h_step;          /* pinned: what the step uploads */
        size_t h_step_cap;

        uint16_t *bf16_scratch;
        size_t bf16_cap;
        float *att_scratch;
        size_t att_cap;
        float *router_logits;
        mxk_moe_buffers moe;
        uint32_t moe_cap;
        bool profiling; /* MX_CUDA_PROFILE=1 */
        struct cuda_stream *stream; /* streamed experts (stream_cuda.c), or NULL: all resident */
        mx_error err;               /* a failure the device did not see (a read), for step_end */

        /* Sampling on the device. */
        void *h_sample;        /* pinned: requests, then recent tokens */
        size_t h_sample_cap;
        void *d_sample;        /* the same on the device */
        size_t d_sample_cap;
        float *d_sample_work;
        size_t d_work_cap;
        int32_t *d_ids;
        size_t d_ids_cap;

        /* Decode steps as CUDA graphs (graphs_cuda.c). */
        enum { RUN_DIRECT, RUN_RECORD, RUN_REPLAY } mode;
        bool graphs_off;     /* MX_CUDA_GRAPHS=0, profiling, or a capture failed */
        uint64_t epoch;      /* bumped whenever a buffer a graph holds moves */
        uint64_t tick;
        struct cuda_graph {
                uint32_t T, L, slices, tables;
                uint64_t epoch, used;
                void *exec;
        } graphs[8], *current;
} cuda_backend;

/* Called by step_begin once the step's host data is ready and before it
 * enqueues anything: a decode step of a shape seen before (tokens, logit
 * rows, attention slices, block-table entries uploaded) replays its graph
 * (and the operations enqueue nothing); a new one is recorded. */
void mx_cuda_graph_begin(cuda_backend *cb, uint32_t T, uint32_t L, uint32_t slices, uint32_t tables);
/* Before results are read: ends a recording and launches the graph. */
int mx_cuda_graph_finish(cuda_backend *cb);
void mx_cuda_graphs_free(cuda_backend *cb);

static inline bool mx_cuda_replaying(const cuda_backend *cb) {
        return cb->mode == RUN_REPLAY;
}

/* The step's block-table entries to upload (a power of two, at least 64),
 * and the layout: rows[T] (each token's table and position) and the
 * tables, one sequence's after another (kv_cuda.c). */
uint32_t mx_cuda_kv_entries(const mx_attn_seq *seqs, size_t n);
void mx_cuda_kv_layout(const mx_attn_seq *seqs, size_t n, mxk_row *rows, uint32_t *tables);

/* Bytes the weights take on the device: the experts' and the rest. */
void mx_cuda_weights_size(const mx_model *m, uint64_t *experts, uint64_t *dense);
/* Uploads every weight (or generates a synthetic model's), or all but the
 * experts, checking first that they fit (with `also` bytes more). */
int mx_cuda_weights_load(cuda_backend *cb, bool experts, uint64_t also,
                         void (*progress)(uint64_t, uint64_t, void *), void *arg, mx_error *err);
void mx_cuda_weights_free(cuda_backend *cb);

/* Expert streaming (stream_cuda.c): device slots within `budget`, filled
 * from the files through a host cache of host_cache bytes (0: auto). */
int mx_cuda_stream_new(cuda_backend *cb, uint64_t budget, uint64_t host_cache, mx_error *err);
void mx_cuda_stream_free(cuda_backend *cb);
/* The layer's mixture of experts once its router logits are made. */
int mx_cuda_stream_moe(cuda_backend *cb, uint32_t L, const float *x, float *acc, uint32_t n);
/* A new configured budget (0: every expert), between steps. */
int mx_cuda_stream_set(cuda_backend *cb, uint64_t budget, mx_error *err);
/* A cudaMalloc of `bytes` failed: gives up slots (down to top-k per layer)
 * so it may succeed; -ENOMEM when none are left to give. */
int mx_cuda_stream_make_room(cuda_backend *cb, uint64_t bytes);
/* A new host cache of `bytes` (0: auto), between steps. */
int mx_cuda_stream_set_host(cuda_backend *cb, uint64_t bytes, mx_error *err);
/* Between steps: shrinks when free GPU memory runs low, grows back later. */
void mx_cuda_stream_pressure(cuda_backend *cb);
void mx_cuda_stream_stats(cuda_backend *cb, mx_expert_stats *out);
const char *mx_cuda_stream_describe(cuda_backend *cb, char *buf, size_t len);

static inline size_t mx_cuda_tensor_index(const cuda_backend *cb, const mx_tensor *t) {
        return (size_t)(t - cb->base.model->tensors);
}

static inline void *mx_cuda_dev(const cuda_backend *cb, const mx_tensor *t) {
        return cb->dev[mx_cuda_tensor_index(cb, t)];
}
