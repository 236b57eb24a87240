/* The CUDA side of the engine: device discovery, a context (stream, cuBLAS,
 * staging buffers, the first error), and the kernels the CUDA backend
 * launches. Plain C interface; everything CUDA stays inside kernels/.
 *
 * Launch functions enqueue on the context's stream and return nothing: a
 * failed launch or CUDA call is recorded once in the context (the first
 * error wins) and reported by mxk_status, so a forward pass checks once. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct mxk_device {
        int index;
        char name[256];
        int cc_major, cc_minor;
        int multiprocessors;
        size_t total_bytes, free_bytes;
} mxk_device;

/* Number of usable CUDA devices (0 with a reason in why when there are
 * none: no driver, no device, driver too old). Never fails otherwise. */
int mxk_device_count(char *why, size_t why_len);

/* Fills d for device index; 0 or a negative errno (reason in why). */
int mxk_device_query(int index, mxk_device *d, char *why, size_t why_len);

/* Runs a bf16 -> fp32 conversion kernel on the device and checks every
 * value on the host: proves the fatbinary has code for this card and that
 * launches, copies and synchronisation work. */
int mxk_device_selftest(int index, char *why, size_t why_len);

/* Device-side conversion used by the self-test. */
int mxk_bf16_to_f32(const uint16_t *d_in, float *d_out, size_t n, void *stream);

/* ---- context --------------------------------------------------------------- */

typedef struct mxk_ctx mxk_ctx;

/* A stream on device `index` and cuBLAS, loaded at run time (libcublas.so.13
 * or .12), so binaries start on machines without CUDA libraries. */
int mxk_ctx_new(int index, mxk_ctx **out, char *why, size_t why_len);
void mxk_ctx_free(mxk_ctx *c);
/* Records an error some unchecked CUDA call left behind, naming `where`. */
void mxk_checkpoint(mxk_ctx *c, const char *where);
/* Room for the cuBLAS outputs of products of up to `floats` results (two
 * terms each counted), made before a graph capture, which cannot allocate. */
int mxk_reserve_tmp(mxk_ctx *c, size_t floats);
/* Makes the context's device current on the calling thread. */
void mxk_bind_thread(mxk_ctx *c);
/* 0, or the first error since the context was made (message in why). */
int mxk_status(mxk_ctx *c, char *why, size_t why_len);
/* Waits for the stream; then as mxk_status. */
int mxk_sync(mxk_ctx *c, char *why, size_t why_len);

int mxk_malloc(mxk_ctx *c, void **p, size_t bytes);
void mxk_free(mxk_ctx *c, void *p);
int mxk_memset(mxk_ctx *c, void *p, int value, size_t bytes);
int mxk_free_memory(mxk_ctx *c, size_t *free_bytes, size_t *total_bytes);
/* Pinned host memory. */
int mxk_host_alloc(void **p, size_t bytes);
void mxk_host_free(void *p);
/* Async copies on the stream; host memory must be pinned for true overlap
 * and must stay untouched until the stream passes the copy. */
void mxk_upload(mxk_ctx *c, void *dst, const void *src, size_t bytes);
void mxk_copy(mxk_ctx *c, void *dst, const void *src, size_t bytes);
/* Synchronous device -> host copy (waits for the stream). */
int mxk_download(mxk_ctx *c, void *dst, const void *src, size_t bytes);

/* Loading through a few pinned buffers: acquire one (waiting until its last
 * copy is done), fill up to *cap bytes, submit it to land at dst. */
void *mxk_stage_acquire(mxk_ctx *c, size_t *cap);
void mxk_stage_submit(mxk_ctx *c, void *dst, size_t bytes);

/* Event marking "the stream passed here"; wait blocks the host on it. */
void mxk_mark(mxk_ctx *c, int slot);
void mxk_wait_mark(mxk_ctx *c, int slot);
enum { MXK_MARK_STEP_INPUT, MXK_MARKS };

/* CUDA graphs: capture the stream's work between begin and end into an
 * executable graph (NULL and an error recorded when capture failed), which
 * launch replays on the stream. */
int mxk_capture_begin(mxk_ctx *c);
int mxk_capture_end(mxk_ctx *c, void **exec);
int mxk_graph_launch(mxk_ctx *c, void *exec);
void mxk_graph_free(void *exec);

/* ---- streamed experts: a copy stream and events ------------------------------ */

/* A second stream carries host-to-device copies, so they overlap the
 * compute stream's work; events order the two on the device, never on the
 * host (the copy stream is made on first use). */
typedef struct mxk_event mxk_event;
int mxk_event_new(mxk_ctx *c, mxk_event **e);
void mxk_event_free(mxk_event *e);
/* Records e after what is enqueued so far on the copy stream (copy) or the
 * compute stream. */
void mxk_event_record(mxk_ctx *c, mxk_event *e, bool copy);
/* Work enqueued later on the copy stream (copy) or the compute stream
 * starts only after e's last record; the host does not wait. */
void mxk_event_wait(mxk_ctx *c, mxk_event *e, bool copy);
/* Whether the work before e's last record is done (never waits). */
bool mxk_event_done(mxk_ctx *c, mxk_event *e);
/* Waits on the host for the work before e's last record. */
int mxk_event_sync(mxk_ctx *c, mxk_event *e);
/* Host-to-device copy on the copy stream (src pinned or registered). */
void mxk_copy_upload(mxk_ctx *c, void *dst, const void *src, size_t bytes);
/* dst[i] = bf16(src[i]) on the copy stream, for f16/f32 experts. */
void mxk_copy_to_bf16(mxk_ctx *c, const void *src, int dtype, uint16_t *dst, size_t n);
/* Page-locks ordinary host memory for copies (unlike mxk_host_alloc, the
 * pages stay usable by O_DIRECT and io_uring). */
int mxk_host_register(void *p, size_t bytes);
void mxk_host_unregister(void *p);

/* ---- kernels --------------------------------------------------------------- */

enum { MXK_BF16 = 0, MXK_F16 = 1, MXK_F32 = 2 }; /* element types of a table */

/* Weights of the synthetic model: mx_synth_bf16(seed, i, scale) for i < n. */
void mxk_fill_synthetic(mxk_ctx *c, uint16_t *dst, size_t n, uint64_t seed, float scale);
/* dst[i] = bf16(src[i]) (round to nearest even), for f32/f16 tables. */
void mxk_to_bf16(mxk_ctx *c, const void *src, int dtype, uint16_t *dst, size_t n);

/* out[t][:] = table[tokens[t]][:] as f32. */
void mxk_embed(mxk_ctx *c, const void *table, int dtype, uint32_t cols, const int32_t *tokens,
               uint32_t n, float *out);
/* out[t] = RMSNorm(x[t]) * w. */
void mxk_rmsnorm(mxk_ctx *c, const float *w, float eps, const float *x, float *out, uint32_t n,
                 uint32_t cols);
/* dst[i][:] = src[rows[i]][:]. */
void mxk_gather(mxk_ctx *c, const float *src, uint32_t cols, const uint32_t *rows, uint32_t n,
                float *dst);

/* Largest token count the bandwidth-bound kernels (GEMV, expert GEMV) take;
 * more tokens go through cuBLAS. */
#define MXK_GEMV_MAX 4
/* The same for the experts: a step of this many tokens reads only the
 * experts its tokens chose (each of which sees few of them). */
#define MXK_EXPERT_GEMV_MAX 8

/* out[t][r] (+)= W[r] . x[t]; W bf16 [rows][cols], x f32 [n][cols].
 * n <= MXK_GEMV_MAX: our GEMV with fp32 activations; otherwise cuBLAS
 * (fp32 accumulate and output) with x as two bf16 terms, hi + lo, in
 * scratch (2 * n * cols elements), so the activations keep 16 bits of
 * mantissa; MX_CUDA_ACTIVATIONS=bf16 in the environment uses hi alone. */
void mxk_matmul(mxk_ctx *c, const uint16_t *W, uint32_t rows, uint32_t cols, const float *x,
                float *out, uint32_t n, bool accumulate, uint16_t *scratch);

/* q, k, v = x times the stacked rows of W (q_rows, then kv_rows for k and
 * for v): one pass over the weights for a few tokens. */
void mxk_qkv(mxk_ctx *c, const uint16_t *W, uint32_t q_rows, uint32_t kv_rows, uint32_t cols,
             const float *x, float *q, float *k, float *v, uint32_t n, uint16_t *scratch);

/* Rotary angles as Hugging Face computes them (fp32 pos * inv_freq, cos
 * and sin in double): cs, sn [n][half]. */
void mxk_rope_table(mxk_ctx *c, const uint32_t *pos, uint32_t n, const float *inv_freq,
                    uint32_t half, float *cs, float *sn);
/* Rotates q [n][heads][hd] and k [n][kv_heads][hd] in place. */
void mxk_rope(mxk_ctx *c, float *q, float *k, const float *cs, const float *sn, uint32_t n,
              uint32_t heads, uint32_t kv_heads, uint32_t hd);

/* Tokens per block of the KV pool (the engine's MX_KV_BLOCK). */
#define MXK_KV_BLOCK 16

/* The KV pool as the kernels see it: [blocks][layers][K|V][MXK_KV_BLOCK]
 * [stride] elements, bf16 (rounded to nearest even, as mx_f32_to_bf16) or
 * f32; and the step's block tables, one sequence's after another. */
typedef struct mxk_kv {
        void *pool;
        const uint32_t *tables; /* device: [entries] pool block of each MXK_KV_BLOCK positions */
        uint32_t layers, stride; /* stride: kv_heads * hd */
        bool bf16;
} mxk_kv;

/* A token of the step: where its sequence's block table starts in
 * kv->tables, and its position. */
typedef struct mxk_row {
        uint32_t table, pos;
} mxk_row;

/* Writes k, v [n][stride] into each row's block at its position. */
void mxk_kv_append(mxk_ctx *c, const mxk_kv *kv, const mxk_row *rows, uint32_t n, uint32_t layer,
                   const float *k, const float *v);
/* Warps of an attention block: each takes every MXK_ATT_WARPS-th key. */
#define MXK_ATT_WARPS 4

/* How many slices of the sequence mxk_attention makes (its grid): enough
 * blocks to fill a large GPU (264), slices of at least 32 keys. */
static inline uint32_t mxk_attention_slices(uint32_t n, uint32_t kv_heads, uint32_t longest) {
        uint32_t blocks = n * kv_heads, want = blocks >= 264 ? 1 : (264 + blocks - 1) / blocks;
        uint32_t most = (longest + 31) / 32;
        want = want < most ? want : most;
        return want ? want : 1;
}

/* Floats of scratch mxk_attention needs. */
static inline size_t mxk_attention_scratch(uint32_t n, uint32_t heads, uint32_t hd, uint32_t kv_heads,
                                           uint32_t longest) {
        return (size_t)n * heads * mxk_attention_slices(n, kv_heads, longest) * (hd + 2);
}
/* Causal GQA attention of q [n][heads][hd] over each row's blocks up to
 * its position, in fp32: out [n][heads][hd]. Split over the sequence
 * length, each KV head read once for its query heads; longest = max
 * position + 1. */
void mxk_attention(mxk_ctx *c, const mxk_kv *kv, const mxk_row *rows, uint32_t n, uint32_t layer, const float *q,
                   float *out, uint32_t heads, uint32_t kv_heads, uint32_t hd, uint32_t longest,
                   float *scratch);

/* The mixture of experts of one layer for n tokens. Expert e's weights:
 * w13[e] bf16 [2F][H] (w1 rows, then w3 rows) and w2[e] bf16 [H][F];
 * pointer arrays on the device. */
typedef struct mxk_moe_buffers {
        uint32_t *choice;     /* [n][k] */
        float *weight;        /* [n][k] */
        uint32_t *list_tok;   /* [n*k], or [E*n] padded: tokens grouped by expert, in token order */
        float *list_w;        /* the same */
        uint32_t *slot_of;    /* [n][k]: a token's list positions, by expert index */
        uint32_t *counts;     /* [2*E + 1 + E]: count, start, active experts, their ids */
        /* r = E*n when n <= MXK_PADDED_MAX, else n: */
        float *act;           /* [max(MXK_EXPERT_GEMV_MAX * k, n)][F] */
        float *y;             /* [max(n*k, r)][H] */
        uint16_t *xe, *act16; /* bf16 terms for cuBLAS: [2r][H], [2r][F] */
        float *h13;           /* [2r][2F] for cuBLAS (two terms) */
        float *ytmp;          /* [2r][H] for cuBLAS (two terms) */
        unsigned long long *experts_read; /* device counter: experts whose weights were read */
} mxk_moe_buffers;

/* Largest token count whose experts run as one batched cuBLAS product
 * with n places per expert (batched decode); more tokens (prefill) bring
 * the counts to the host and run each chosen expert on exactly its own. */
#define MXK_PADDED_MAX 64

/* acc[t] += MoE(x[t]) given router logits [n][E]. Up to MXK_EXPERT_GEMV_MAX
 * tokens: expert GEMVs, only chosen experts are read; up to MXK_PADDED_MAX:
 * all experts, batched and padded; both without host synchronisation.
 * More: per-expert cuBLAS products after the counts come back. The padded
 * path needs each layer's experts contiguous: w13_host[0] and w2_host[0]
 * start blocks of E matrices each. */
int mxk_moe(mxk_ctx *c, const mxk_moe_buffers *b, const uint16_t *const *w13,
            const uint16_t *const *w2, const uint16_t *const *w13_host,
            const uint16_t *const *w2_host, const float *logits, const float *x, float *acc,
            uint32_t n, uint32_t E, uint32_t k, uint32_t H, uint32_t F);

/* Streamed experts, one at a time (their weights are wherever the cache put
 * them): route fills choice, weight, the lists grouped by expert and counts
 * ([E] counts, [E] starts, the number active, their ids: 3E + 1), with no
 * padding; each chosen expert then runs on its list (start, count from the
 * counts) into y; combine adds the outputs, in expert order, to acc. */
int mxk_moe_route(mxk_ctx *c, const mxk_moe_buffers *b, const float *logits, uint32_t n, uint32_t E,
                  uint32_t k);
void mxk_moe_expert(mxk_ctx *c, const mxk_moe_buffers *b, const uint16_t *w13, const uint16_t *w2,
                    uint32_t start, uint32_t count, const float *x, uint32_t H, uint32_t F);
void mxk_moe_combine(mxk_ctx *c, const mxk_moe_buffers *b, float *acc, uint32_t n, uint32_t k, uint32_t H);

/* One sequence's draw: its row of logits, its settings (as mx_sampling),
 * its recent tokens history[hist_off, hist_off + hist_n) and u in [0, 1). */
typedef struct mxk_sample_req {
        uint32_t row, top_k, hist_off, hist_n;
        float temperature, top_p, min_p, penalty;
        double u;
} mxk_sample_req;

/* out[i] = the token drawn for reqs[i] (all on the device); work holds
 * 2 * V floats per request. */
void mxk_sample(mxk_ctx *c, const float *logits, uint32_t V, const mxk_sample_req *reqs, uint32_t n,
                const int32_t *history, float *work, int32_t *out);

/* ---- profiling (MX_CUDA_PROFILE=1) ---------------------------------------------- */

/* Whether the environment asked for it. */
bool mxk_prof_enabled(mxk_ctx *c);
/* GPU time from this mark to the next is charged to label (a static
 * string) in the bucket of n tokens. */
void mxk_prof_mark(mxk_ctx *c, const char *label, uint32_t n);
/* After a synchronisation: adds up the marks so far. */
void mxk_prof_collect(mxk_ctx *c);
/* Prints the totals to stderr. */
void mxk_prof_report(mxk_ctx *c);

/* ---- measurements ------------------------------------------------------------ */

/* Device-to-device copy of `bytes`, best of a few: GB/s counting bytes read
 * plus written (bench/README.md). */
int mxk_measure_copy(mxk_ctx *c, size_t bytes, double *gbps);
/* Host-to-device copy of `bytes` from pinned memory,
 * best of a few: GB/s (what streamed experts can reach). */
int mxk_measure_upload(mxk_ctx *c, size_t bytes, double *gbps);
/* A cuBLAS bf16 GEMM (fp32 accumulate) of m x n x k, best of a few: TFLOP/s. */
int mxk_measure_gemm(mxk_ctx *c, uint32_t m, uint32_t n, uint32_t k, double *tflops);

#ifdef __cplusplus
}
#endif
