/* Load-time quantization (mx_model_quantize): a bound model's matrices
 * rewritten in place into ggml block formats, as the model card's
 * load_in_8bit / load_in_4bit, on every core. The quantized copies live in
 * one allocation the model owns (model_priv.quant_data); tensors then point
 * there and no longer correspond to their files' bytes, which expert
 * streaming refuses (it reads the files).
 *
 * Which type each tensor gets follows what llama.cpp picks for Mixtral
 * (mx_ftype_tensor_type), so that a q4_k_m here weighs and behaves like
 * llama.cpp's Q4_K_M file:
 *
 *   norms, router                  untouched
 *   lm_head (embeddings if tied)   Q6_K (Q8_0 for q8_0)
 *   attn k and v                   Q8_0 with 8 experts (llama.cpp: "trades
 *                                  just ~128MB"); otherwise v as attn's
 *                                  "more bits" layers below, k the base
 *   attn o                         Q5_K for q4_k_m with 8 experts
 *   expert w2 (ffn_down)           Q6_K in the "more bits" layers for
 *                                  q4_k_m and q5_k_m: the first and last
 *                                  eighth, and every third between
 *   everything else                the base type (Q8_0, Q4_0, Q4_K, Q5_K,
 *                                  Q6_K)
 *
 * A row that is not whole 256-blocks falls back from a K-quant to Q8_0
 * (llama.cpp's next choices, Q5_0 and Q5_1, are not formats here); one
 * that is not whole 32-blocks keeps its stored type, as does a tensor
 * already in a block format. */
#include <stdio.h>
#include <string.h>

#include "model.h"
#include "mx_common.h"
#include "pool.h"
#include "quant.h"

static const char *const ftype_names[] = {"none", "q8_0", "q4_0", "q4_k_m", "q5_k_m", "q6_k"};

int mx_ftype_parse(const char *s, mx_ftype *out) {
        for (size_t i = 0; i < MX_ELEMENTSOF(ftype_names); i++)
                if (strcmp(s, ftype_names[i]) == 0) {
                        *out = (mx_ftype)i;
                        return 0;
                }
        return -EINVAL;
}

const char *mx_ftype_name(mx_ftype ft) {
        return (unsigned)ft < MX_ELEMENTSOF(ftype_names) ? ftype_names[ft] : "?";
}

mx_ftype mx_model_quantized(const mx_model *m) {
        return ((const model_priv *)m->priv)->quantized;
}

typedef enum role { R_OTHER, R_EMBED, R_LM_HEAD, R_WQ, R_WK, R_WV, R_WO, R_W1, R_W2, R_W3 } role;

/* What tensor t is in the architecture, and its layer. */
static role role_of(const mx_model *m, const mx_tensor *t, uint32_t *layer) {
        if (t == m->lm_head)
                return R_LM_HEAD; /* (also the embeddings, when tied) */
        if (t == m->embed)
                return R_EMBED;
        for (uint32_t L = 0; L < m->cfg.n_layers; L++) {
                const mx_layer *l = &m->layers[L];
                *layer = L;
                if (t == l->wq || t == l->wk || t == l->wv || t == l->wo)
                        return t == l->wq ? R_WQ : t == l->wk ? R_WK : t == l->wv ? R_WV : R_WO;
                for (uint32_t e = 0; e < m->cfg.n_experts; e++)
                        if (t == l->w1[e] || t == l->w2[e] || t == l->w3[e])
                                return t == l->w1[e] ? R_W1 : t == l->w2[e] ? R_W2 : R_W3;
        }
        return R_OTHER;
}

/* llama.cpp's use_more_bits: the first and last eighth of the layers, and
 * every third one between. */
static bool more_bits(uint32_t i, uint32_t n) {
        return i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2;
}

static mx_dtype base_type(mx_ftype ft) {
        static const mx_dtype base[] = {MX_DTYPE_F32, MX_DTYPE_Q8_0, MX_DTYPE_Q4_0, MX_DTYPE_Q4_K, MX_DTYPE_Q5_K,
                                        MX_DTYPE_Q6_K};
        return base[ft];
}

static mx_dtype choose(const mx_model *m, const mx_tensor *t, mx_ftype ft) {
        uint32_t L = 0, n = m->cfg.n_layers;
        bool eight = m->cfg.n_experts == 8, km = ft == MX_FTYPE_Q4_K_M || ft == MX_FTYPE_Q5_K_M;
        switch (role_of(m, t, &L)) {
        case R_LM_HEAD:
                return ft == MX_FTYPE_Q8_0 ? MX_DTYPE_Q8_0 : MX_DTYPE_Q6_K;
        case R_WV:
                return eight ? MX_DTYPE_Q8_0 : km && more_bits(L, n) ? MX_DTYPE_Q6_K : base_type(ft);
        case R_WK:
                return eight ? MX_DTYPE_Q8_0 : base_type(ft);
        case R_WO:
                return eight && ft == MX_FTYPE_Q4_K_M ? MX_DTYPE_Q5_K : base_type(ft);
        case R_W2:
                return km && more_bits(L, n) ? MX_DTYPE_Q6_K : base_type(ft);
        case R_EMBED:
        case R_WQ:
        case R_W1:
        case R_W3:
                return base_type(ft);
        case R_OTHER:
                break;
        }
        return t->dtype; /* norms and routers */
}

mx_dtype mx_ftype_tensor_type(const mx_model *m, const mx_tensor *t, mx_ftype ft) {
        if (ft == MX_FTYPE_NONE || (unsigned)ft >= MX_ELEMENTSOF(ftype_names) || t->ndim != 2 ||
            mx_dtype_is_block(t->dtype))
                return t->dtype;
        mx_dtype want = choose(m, t, ft);
        if (t->shape[1] % mx_dtype_block_elems(want) != 0)
                want = MX_DTYPE_Q8_0;
        return t->shape[1] % mx_dtype_block_elems(want) != 0 ? t->dtype : want;
}

/* ---- the work: rows of every tensor, on every thread ------------------------------------ */

typedef struct qjob {
        const mx_tensor *t;
        mx_dtype to;
        uint8_t *dst;
        uint64_t rows_per_task, src_row, dst_row;
        float *scratch;     /* [threads][cols] */
        uint64_t cols;
} qjob;

static void quantize_task(void *arg, uint32_t task, uint32_t thread) {
        const qjob *j = arg;
        float *row = j->scratch + thread * j->cols;
        uint64_t r0 = task * j->rows_per_task, r1 = r0 + j->rows_per_task;
        for (uint64_t r = r0; r < r1 && r < j->t->shape[0]; r++) {
                /* Stored order: rows the loader permutes (rope_head_dim) stay
                 * where they were, and mx_tensor_row still finds them. */
                mx_dequant_row(j->t->dtype, (const uint8_t *)j->t->data + r * j->src_row, row, j->cols);
                mx_quantize_row(j->to, row, j->dst + r * j->dst_row, j->cols);
        }
}

static uint64_t padded(uint64_t bytes) {
        return (bytes + 63) / 64 * 64;
}

/* Each tensor's new type and the bytes of all quantized copies. */
static int plan(const mx_model *m, mx_ftype ft, mx_dtype *to, uint64_t *total, uint64_t *src_bytes,
                uint64_t *max_cols, mx_error *err) {
        *total = *src_bytes = *max_cols = 0;
        for (size_t i = 0; i < m->n_tensors; i++) {
                const mx_tensor *t = &m->tensors[i];
                uint64_t bytes;
                to[i] = mx_ftype_tensor_type(m, t, ft);
                if (to[i] == t->dtype)
                        continue;
                if (!t->data)
                        return mx_error_set(err, -EINVAL, "%s: tensor \"%s\" is not in host memory (a synthetic model "
                                            "made for the GPU): nothing to quantize", m->dir, t->name);
                if (mx_dtype_tensor_bytes(to[i], t->shape, t->ndim, &bytes) < 0 ||
                    !mx_add_u64(*total, padded(bytes), total))
                        return mx_error_set(err, -EOVERFLOW, "%s: tensor \"%s\": too large to quantize", m->dir,
                                            t->name);
                *src_bytes += t->nbytes;
                *max_cols = t->shape[1] > *max_cols ? t->shape[1] : *max_cols;
        }
        return 0;
}

int mx_model_quantize(mx_model *m, mx_ftype ft, uint32_t threads,
                      void (*progress)(uint64_t done, uint64_t total, void *arg), void *arg, mx_error *err) {
        model_priv *p = m->priv;
        if ((unsigned)ft >= MX_ELEMENTSOF(ftype_names))
                return mx_error_set(err, -EINVAL, "%s: unknown quantization type %d", m->dir, (int)ft);
        if (ft == MX_FTYPE_NONE)
                return 0;
        if (p->quantized)
                return mx_error_set(err, -EALREADY, "%s: already quantized to %s", m->dir, mx_ftype_name(p->quantized));
        _cleanup_free_ mx_dtype *to = calloc(m->n_tensors ? m->n_tensors : 1, sizeof(mx_dtype));
        if (!to)
                return mx_error_set(err, -ENOMEM, "out of memory");
        uint64_t total, src_total, max_cols, done = 0;
        int r = plan(m, ft, to, &total, &src_total, &max_cols, err);
        if (r < 0 || total == 0)
                return r;
        _cleanup_(mx_pool_freep) mx_pool *pool = NULL;
        if ((r = mx_model_pool(threads, &pool)) < 0)
                return mx_error_set(err, r, "cannot start %u threads: %s", threads, strerror(-r));
        void *blob = NULL;
        _cleanup_free_ float *scratch = calloc((size_t)mx_pool_threads(pool) * max_cols, sizeof(float));
        if (!scratch || posix_memalign(&blob, 64, total) != 0)
                return mx_error_set(err, -ENOMEM, "%s: out of memory for the %.2f GiB of quantized weights", m->dir,
                                    (double)total / (1u << 30));
        uint8_t *at = blob;
        for (size_t i = 0; i < m->n_tensors; i++) {
                mx_tensor *t = &m->tensors[i];
                if (to[i] == t->dtype)
                        continue;
                qjob j = {t, to[i], at, 1, 0, 0, scratch, t->shape[1]};
                mx_dtype_row_bytes(t->dtype, j.cols, &j.src_row);
                mx_dtype_row_bytes(to[i], j.cols, &j.dst_row);
                /* About sixteen tasks per thread, whole rows. */
                uint64_t tasks = 16ull * mx_pool_threads(pool);
                j.rows_per_task = (t->shape[0] + tasks - 1) / tasks;
                mx_pool_run(pool, (uint32_t)((t->shape[0] + j.rows_per_task - 1) / j.rows_per_task), quantize_task, &j);
                done += t->nbytes;
                t->data = at, t->dtype = to[i];
                t->nbytes = j.dst_row * t->shape[0];
                at += padded(t->nbytes);
                if (progress)
                        progress(done, src_total, arg);
        }
        free(p->quant_data);
        p->quant_data = blob;
        p->quantized = ft;
        return 0;
}
