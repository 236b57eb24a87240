/* Matrix products spread over the threads by blocks of rows. Every output
 * is computed the same way whatever the block or the batch (kernels.h),
 * so the split is free to follow the machine. Several products can run
 * as one parallel loop (mx_cpu_products): a decode step's products are
 * short, and each loop costs a wake-up, and at its end the threads that
 * finish first wait for the last block. On the fast path each distinct
 * input is rounded once, before the threads share out the rows. */
#include <math.h>
#include <string.h>

#include "cpu_backend.h"
#include "mx_common.h"

/* One product as the tasks see it. */
typedef struct prod_run {
        mx_matmul_args a, a3; /* a3: w3's, into tmp (SwiGLU) */
        bool swiglu;
        uint64_t rows, block;
        uint32_t first_task, tasks;
} prod_run;

typedef struct prods_job {
        const mx_kernels *k;
        prod_run *p;
        uint32_t count;
} prods_job;

/* A distinct input of a loop's products in one rounded format: n rows
 * of x, rounded to `at` bytes into the backend's buffer; and, where a
 * product wants them (mx_act_grouped), regrouped by tokens at `gat`. */
typedef struct act_input {
        const float *x;
        uint64_t ldx, cols, at, gat;
        uint32_t n;
        mx_act act;
        bool grouped;
} act_input;

typedef struct round_job {
        const act_input *in;
        uint8_t *buf;
} round_job;

void mx_cpu_silu_mul(float *h1, const float *h3, size_t n) {
        for (size_t i = 0; i < n; i++)
                h1[i] = h1[i] / (1.0f + expf(-h1[i])) * h3[i];
}

static void prods_task(void *arg, uint32_t task, uint32_t thread) {
        prods_job *j = arg;
        prod_run *p = j->p;
        while (task >= p->first_task + p->tasks)
                p++;
        uint64_t r0 = (uint64_t)(task - p->first_task) * p->block, r1 = r0 + p->block;
        r1 = r1 < p->rows ? r1 : p->rows;
        j->k->matmul_rows(&p->a, r0, r1);
        if (!p->swiglu)
                return;
        j->k->matmul_rows(&p->a3, r0, r1);
        for (uint32_t t = 0; t < p->a.n; t++)
                mx_cpu_silu_mul(p->a.out + t * p->a.ldo + r0, p->a3.out + t * p->a3.ldo + r0, r1 - r0);
}

/* Two blocks per thread and product, in multiples of 16 rows (the
 * kernels' tiles): each block is a stream the prefetchers must pick up
 * again, so fewer, longer ones win over the balance finer blocks give
 * (measured on 2 threads: decode 5-10% faster than with four blocks,
 * 15-25% faster than with sixteen). */
static uint64_t block_rows(uint64_t rows, uint32_t threads) {
        uint64_t b = (rows + 2 * threads - 1) / (2 * threads);
        b = (b + 15) & ~(uint64_t)15;
        return b ? b : 16;
}

/* Task t: row t of the inputs, counted across them in order. */
static void round_task(void *arg, uint32_t t, uint32_t thread) {
        round_job *j = arg;
        const act_input *in = j->in;
        for (; t >= in->n; in++)
                t -= in->n;
        uint64_t bytes = mx_act_row_bytes(in->act, in->cols);
        mx_act_quantize(in->act, in->x + t * in->ldx, in->cols, j->buf + in->at + t * bytes);
}

static uint32_t groups_of(const act_input *in) {
        return in->grouped ? (in->n + MX_ACT_GROUP - 1) / MX_ACT_GROUP : 0;
}

/* Task t: group t of the grouped inputs, counted across them in order. */
static void group_task(void *arg, uint32_t t, uint32_t thread) {
        round_job *j = arg;
        const act_input *in = j->in;
        for (; t >= groups_of(in); in++)
                t -= groups_of(in);
        uint64_t bytes = mx_act_row_bytes(in->act, in->cols), t0 = (uint64_t)t * MX_ACT_GROUP;
        uint32_t n = in->n - t0 < MX_ACT_GROUP ? (uint32_t)(in->n - t0) : MX_ACT_GROUP;
        mx_act_group(in->act, j->buf + in->at + t0 * bytes, bytes, n, in->cols,
                     j->buf + in->gat + t * mx_act_group_bytes(in->act, in->cols));
}

/* The input a's rounding is: one already listed, or a new one. */
static act_input *input_of(const mx_matmul_args *a, mx_act act, act_input *in, uint32_t *n_in,
                                 uint64_t *used) {
        for (uint32_t i = 0; i < *n_in; i++)
                if (in[i].x == a->x && in[i].ldx == a->ldx && in[i].cols == a->cols && in[i].n == a->n &&
                    in[i].act == act)
                        return &in[i];
        in[*n_in] = (act_input){a->x, a->ldx, a->cols, *used, 0, a->n, act, false};
        *used += mx_act_row_bytes(act, a->cols) * a->n;
        return &in[(*n_in)++];
}

static int grow_act(cpu_backend *cb, uint64_t need) {
        if (need <= cb->act_cap)
                return 0;
        void *p = NULL;
        if (posix_memalign(&p, 64, need) != 0)
                return -ENOMEM;
        free(cb->act);
        cb->act = p, cb->act_cap = need;
        return 0;
}

/* The fast path: every distinct input rounded once, its rows spread over
 * the threads. xq stays NULL on the f32 path. */
static int round_activations(cpu_backend *cb, prod_run *runs, uint32_t count) {
        act_input in[2 * MX_CPU_PRODUCTS_MAX];
        act_input *of[2 * MX_CPU_PRODUCTS_MAX];
        uint64_t used = 0;
        uint32_t n_in = 0, rows = 0, groups = 0;
        for (uint32_t i = 0; i < 2 * count; i++) {
                mx_matmul_args *a = i % 2 ? &runs[i / 2].a3 : &runs[i / 2].a;
                mx_act act = mx_act_for(a->dtype, cb->fast);
                of[i] = NULL;
                if ((i % 2 && !runs[i / 2].swiglu) || act == MX_ACT_F32)
                        continue;
                of[i] = input_of(a, act, in, &n_in, &used);
                of[i]->grouped |= mx_act_grouped(a->dtype, cb->fast, a->n);
                a->ldxq = mx_act_row_bytes(act, a->cols);
        }
        if (n_in == 0)
                return 0;
        for (uint32_t i = 0; i < n_in; i++) {
                in[i].gat = used;
                used += groups_of(&in[i]) * mx_act_group_bytes(in[i].act, in[i].cols);
                rows += in[i].n, groups += groups_of(&in[i]);
        }
        if (grow_act(cb, used) < 0)
                return -ENOMEM;
        for (uint32_t i = 0; i < 2 * count; i++) {
                mx_matmul_args *a = i % 2 ? &runs[i / 2].a3 : &runs[i / 2].a;
                if (!of[i])
                        continue;
                a->xq = cb->act + of[i]->at;
                if (mx_act_grouped(a->dtype, cb->fast, a->n))
                        a->xg = cb->act + of[i]->gat, a->ldxg = mx_act_group_bytes(of[i]->act, a->cols);
        }
        round_job rj = {in, cb->act};
        mx_pool_run(cb->pool, rows, round_task, &rj);
        if (groups)
                mx_pool_run(cb->pool, groups, group_task, &rj);
        return 0;
}

/* The tasks of every product, after their inputs are rounded. */
static void run_products(cpu_backend *cb, prod_run *runs, uint32_t count) {
        uint32_t tasks = 0;
        for (uint32_t i = 0; i < count; i++) {
                runs[i].block = block_rows(runs[i].rows, cb->threads);
                runs[i].first_task = tasks;
                runs[i].tasks = (uint32_t)((runs[i].rows + runs[i].block - 1) / runs[i].block);
                tasks += runs[i].tasks;
        }
        prods_job j = {cb->k, runs, count};
        mx_pool_run(cb->pool, tasks, prods_task, &j);
}

/* Tensors stored with q/k rows in interleaved RoPE order (mistral-inference,
 * GGUF) are computed in stored order into tmp and their outputs put in
 * Hugging Face order: output r is stored row s(r) (see mx_tensor_row). */
static void unpermute(const mx_tensor *w, const float *tmp, float *out, uint32_t n, bool accumulate) {
        uint64_t rows = w->shape[0], hd = w->rope_head_dim, half = hd / 2;
        for (uint32_t t = 0; t < n; t++)
                for (uint64_t r = 0; r < rows; r++) {
                        uint64_t j = r % hd, s = r - j + (j < half ? 2 * j : 2 * (j - half) + 1);
                        float v = tmp[t * rows + s];
                        out[t * rows + r] = accumulate ? out[t * rows + r] + v : v;
                }
}

static mx_matmul_args args_of(const cpu_backend *cb, const mx_tensor *w, const float *x, float *out, uint32_t n,
                              bool accumulate) {
        const cpu_packed *pk = mx_cpu_packed_of(cb, w);
        return (mx_matmul_args){.w = pk ? pk->data : w->data, .dtype = w->dtype, .packed = pk ? pk->stride : 0,
                                .cols = w->shape[1], .x = x, .ldx = w->shape[1], .out = out, .ldo = w->shape[0],
                                .n = n, .accumulate = accumulate};
}

static void count_product(cpu_backend *cb, const mx_tensor *w, uint32_t n) {
        cb->base.weight_bytes += mx_cpu_weight_bytes(cb, w);
        cb->base.matmul_flops += 2 * w->shape[0] * w->shape[1] * n;
}

/* Scratch for the permuted products' stored-order outputs: thread 0's
 * (no task runs while products are set up or finished). */
static float *permuted_scratch(cpu_backend *cb, const cpu_product *p, uint32_t count, size_t *at) {
        size_t need = 0;
        for (uint32_t i = 0; i < count; i++)
                need += p[i].w->rope_head_dim ? (size_t)p[i].w->shape[0] * p[i].n : 0;
        *at = 0;
        return need ? mx_cpu_scratch(cb, 0, need) : NULL;
}

int mx_cpu_products(mx_backend *b, const cpu_product *p, uint32_t count) {
        cpu_backend *cb = (cpu_backend *)b;
        if (count > MX_CPU_PRODUCTS_MAX)
                return -EINVAL;
        prod_run runs[MX_CPU_PRODUCTS_MAX];
        size_t at;
        float *perm = permuted_scratch(cb, p, count, &at);
        for (uint32_t i = 0; i < count; i++) {
                bool permuted = p[i].w->rope_head_dim != 0;
                if ((permuted || p[i].accumulate) && p[i].w3)
                        return -EINVAL;
                if (permuted && !perm)
                        return -ENOMEM;
                float *out = permuted ? perm + at : p[i].out;
                runs[i] = (prod_run){.a = args_of(cb, p[i].w, p[i].x, out, p[i].n, p[i].accumulate && !permuted),
                                     .swiglu = p[i].w3 != NULL, .rows = p[i].w->shape[0]};
                at += permuted ? (size_t)p[i].w->shape[0] * p[i].n : 0;
                count_product(cb, p[i].w, p[i].n);
                if (p[i].w3) {
                        runs[i].a3 = args_of(cb, p[i].w3, p[i].x, p[i].tmp, p[i].n, false);
                        count_product(cb, p[i].w3, p[i].n);
                }
        }
        int r = round_activations(cb, runs, count);
        if (r < 0)
                return r;
        run_products(cb, runs, count);
        for (uint32_t i = 0; i < count; i++)
                if (p[i].w->rope_head_dim)
                        unpermute(p[i].w, runs[i].a.out, p[i].out, p[i].n, p[i].accumulate);
        return 0;
}

int mx_cpu_matmul(mx_backend *b, const mx_tensor *w, const float *x, float *out, uint32_t n,
                  bool accumulate) {
        cpu_product p = {.w = w, .x = x, .out = out, .n = n, .accumulate = accumulate};
        return mx_cpu_products(b, &p, 1);
}

/* q, k and v of a layer in one loop; x rounded once per format. */
int mx_cpu_qkv(mx_backend *b, const mx_layer *l, const float *x, float *q, float *k, float *v, uint32_t n) {
        cpu_product p[3] = {{.w = l->wq, .x = x, .out = q, .n = n},
                            {.w = l->wk, .x = x, .out = k, .n = n},
                            {.w = l->wv, .x = x, .out = v, .n = n}};
        return mx_cpu_products(b, p, 3);
}
