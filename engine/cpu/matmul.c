/* Matrix products spread over the threads by blocks of rows. Every output
 * is computed the same way whatever the block or the batch (kernels.h),
 * so the split is free to follow the machine. On the fast path the
 * activations are rounded first, once per product. */
#include <string.h>

#include "cpu_backend.h"
#include "mx_common.h"

typedef struct matmul_job {
        const mx_kernels *k;
        mx_matmul_args a;
        uint64_t rows, block;
        mx_act act;
} matmul_job;

static void matmul_task(void *arg, uint32_t task, uint32_t thread) {
        matmul_job *j = arg;
        uint64_t r0 = (uint64_t)task * j->block, r1 = r0 + j->block;
        j->k->matmul_rows(&j->a, r0, r1 < j->rows ? r1 : j->rows);
}

/* About four blocks per thread, in multiples of 8 rows (the kernels' tile). */
static uint64_t block_rows(uint64_t rows, uint32_t threads) {
        uint64_t b = (rows + 4 * threads - 1) / (4 * threads);
        b = (b + 7) & ~(uint64_t)7;
        return b ? b : 8;
}

static void round_task(void *arg, uint32_t t, uint32_t thread) {
        matmul_job *j = arg;
        mx_act_quantize(j->act, j->a.x + t * j->a.ldx, j->a.cols, (uint8_t *)j->a.xq + t * j->a.ldxq);
}

/* The fast path: every token's activations rounded once, before the
 * threads share out the rows. */
static int round_activations(cpu_backend *cb, matmul_job *j) {
        j->act = mx_act_for(j->a.dtype, cb->fast);
        if (j->act == MX_ACT_F32)
                return 0;
        uint64_t row = mx_act_row_bytes(j->act, j->a.cols);
        size_t need = (size_t)row * j->a.n;
        if (need > cb->act_cap) {
                void *p = NULL;
                if (posix_memalign(&p, 64, need) != 0)
                        return -ENOMEM;
                free(cb->act);
                cb->act = p, cb->act_cap = need;
        }
        j->a.xq = cb->act, j->a.ldxq = row;
        if (j->a.n == 1)
                round_task(j, 0, 0);
        else
                mx_pool_run(cb->pool, j->a.n, round_task, j);
        return 0;
}

static int run(cpu_backend *cb, const mx_tensor *w, const float *x, uint64_t ldx, float *out,
               uint64_t ldo, uint32_t n, bool accumulate) {
        uint64_t rows = w->shape[0];
        matmul_job j = {cb->k, {.w = w->data, .dtype = w->dtype, .cols = w->shape[1], .x = x, .ldx = ldx,
                                .out = out, .ldo = ldo, .n = n, .accumulate = accumulate},
                        rows, block_rows(rows, cb->threads), MX_ACT_F32};
        int r = round_activations(cb, &j);
        if (r == 0)
                mx_pool_run(cb->pool, (uint32_t)((rows + j.block - 1) / j.block), matmul_task, &j);
        return r;
}

/* Tensors stored with q/k rows in interleaved RoPE order (mistral-inference)
 * are computed in stored order and their outputs put in Hugging Face order:
 * output r is stored row s(r) (see mx_tensor_row). */
static int run_permuted(cpu_backend *cb, const mx_tensor *w, const float *x, float *out, uint32_t n,
                        bool accumulate) {
        uint64_t rows = w->shape[0], hd = w->rope_head_dim, half = hd / 2;
        float *tmp = mx_cpu_scratch(cb, 0, (size_t)rows * n);
        if (!tmp)
                return -ENOMEM;
        int rc = run(cb, w, x, w->shape[1], tmp, rows, n, false);
        for (uint32_t t = 0; rc == 0 && t < n; t++)
                for (uint64_t r = 0; r < rows; r++) {
                        uint64_t j = r % hd, s = r - j + (j < half ? 2 * j : 2 * (j - half) + 1);
                        float v = tmp[t * rows + s];
                        out[t * rows + r] = accumulate ? out[t * rows + r] + v : v;
                }
        return rc;
}

int mx_cpu_matmul(mx_backend *b, const mx_tensor *w, const float *x, float *out, uint32_t n,
                  bool accumulate) {
        cpu_backend *cb = (cpu_backend *)b;
        b->weight_bytes += w->nbytes;
        b->matmul_flops += 2 * w->shape[0] * w->shape[1] * n;
        if (w->rope_head_dim)
                return run_permuted(cb, w, x, out, n, accumulate);
        return run(cb, w, x, w->shape[1], out, w->shape[0], n, accumulate);
}
