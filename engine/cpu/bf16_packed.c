/* BF16 weights with their exponents coded (MX_BF16P, kernels.h): the same
 * values in about 0.77 of the bytes, so that decode, which waits on the
 * bytes it reads, waits less. Lossless: the kernels rebuild each bf16
 * word exactly and run the BF16 order on it, so every output equals the
 * plain matrix's bit for bit.
 *
 * Contract:
 * - A row's table holds the 15 exponents most frequent in it; a value
 *   whose exponent is not there is an exception, stored whole after the
 *   row's blocks. The matrix's stride fits its row with the most
 *   exceptions, so rows stay a fixed distance apart.
 * - The CPU backend packs at start-up (mx_cpu_pack_weights) the resident
 *   2-D BF16 matrices that qualify (mx_bf16p_fits), over its threads, on
 *   the fast path of AVX-512 (the instruction set that has kernels for
 *   it); the mapped file stays as it is and is no longer read by the
 *   products. Experts that stream (--expert-memory) stay plain: they come
 *   from the disk as the file has them.
 * - Errors: only -ENOMEM (the copy did not fit), which the backend reports;
 *   a matrix that does not qualify simply stays plain. */
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "cpu_backend.h"
#include "mx_common.h"

#define EXP_OF(w) (((w) >> 7) & 0xffu)

/* The row's table (up to MX_BF16P_CODES exponents, most frequent first,
 * the lower exponent first among equals; unused entries 0), how many
 * entries it uses, and how many of its values are exceptions. */
static uint64_t row_table(const uint16_t *w, uint64_t cols, uint16_t tab[MX_BF16P_TABLE], int *used) {
        uint64_t hist[256] = {0}, covered = 0;
        *used = 0;
        for (uint64_t i = 0; i < cols; i++)
                hist[EXP_OF(w[i])]++;
        memset(tab, 0, MX_BF16P_TABLE * sizeof(uint16_t));
        for (int c = 0; c < MX_BF16P_CODES; c++) {
                int best = -1;
                for (int e = 0; e < 256; e++)
                        if (hist[e] && (best < 0 || hist[e] > hist[best]))
                                best = e;
                if (best < 0)
                        break;
                *used = c + 1;
                tab[c] = (uint16_t)(best << 7);
                covered += hist[best];
                hist[best] = 0;
        }
        return cols - covered;
}

uint64_t mx_bf16p_exceptions(const uint16_t *w, uint64_t cols) {
        uint16_t tab[MX_BF16P_TABLE];
        int used;
        return row_table(w, cols, tab, &used);
}

bool mx_bf16p_fits(uint64_t cols, uint64_t max_exceptions, uint64_t *stride) {
        if (cols == 0 || cols % MX_BF16P_BLOCK || cols > MX_BF16P_MAX_COLS || max_exceptions > cols / 16)
                return false;
        uint64_t bytes = MX_BF16P_TABLE * 2 + cols / MX_BF16P_BLOCK * MX_BF16P_BLOCK_BYTES + 2 * max_exceptions;
        *stride = (bytes + 63) & ~(uint64_t)63;
        return *stride < 2 * cols; /* (narrow rows gain nothing) */
}

void mx_bf16p_pack_row(const uint16_t *w, uint64_t cols, uint8_t *dst, uint64_t stride) {
        uint16_t tab[MX_BF16P_TABLE];
        uint8_t code_of[256];
        int used;
        row_table(w, cols, tab, &used);
        memset(code_of, MX_BF16P_CODES, sizeof(code_of));
        for (int c = 0; c < used; c++)
                code_of[tab[c] >> 7] = (uint8_t)c;
        memset(dst, 0, stride);
        memcpy(dst, tab, sizeof(tab));
        uint8_t *blocks = dst + MX_BF16P_TABLE * 2;
        uint16_t *ex = (uint16_t *)(blocks + cols / MX_BF16P_BLOCK * MX_BF16P_BLOCK_BYTES);
        for (uint64_t b = 0; b < cols / MX_BF16P_BLOCK; b++) {
                uint8_t *sm = blocks + b * MX_BF16P_BLOCK_BYTES, *codes = sm + MX_BF16P_BLOCK;
                for (int j = 0; j < MX_BF16P_BLOCK; j++) {
                        uint16_t v = w[b * MX_BF16P_BLOCK + (uint64_t)j];
                        uint8_t c = code_of[EXP_OF(v)];
                        if (c == MX_BF16P_CODES)
                                *ex++ = v;
                        else
                                sm[j] = (uint8_t)(((v >> 8) & 0x80) | (v & 0x7f));
                        codes[j % 32] |= (uint8_t)(j < 32 ? c : c << 4);
                }
        }
}

void mx_bf16p_unpack_row(const uint8_t *row, uint64_t cols, uint16_t *out) {
        uint16_t tab[MX_BF16P_TABLE];
        memcpy(tab, row, sizeof(tab));
        const uint8_t *blocks = row + MX_BF16P_TABLE * 2;
        const uint8_t *ex = blocks + cols / MX_BF16P_BLOCK * MX_BF16P_BLOCK_BYTES;
        for (uint64_t b = 0; b < cols / MX_BF16P_BLOCK; b++) {
                const uint8_t *sm = blocks + b * MX_BF16P_BLOCK_BYTES, *codes = sm + MX_BF16P_BLOCK;
                for (int j = 0; j < MX_BF16P_BLOCK; j++) {
                        uint8_t c = j < 32 ? codes[j] & 0xf : codes[j % 32] >> 4;
                        uint16_t v;
                        if (c == MX_BF16P_CODES) {
                                memcpy(&v, ex, 2); /* unaligned when the table is not */
                                ex += 2;
                        } else {
                                v = (uint16_t)((sm[j] & 0x80) << 8 | tab[c] | (sm[j] & 0x7f));
                        }
                        out[b * MX_BF16P_BLOCK + (uint64_t)j] = v;
                }
        }
}

/* ---- the backend's packed matrices ---------------------------------------- */

typedef struct pack_job {
        const mx_tensor *t;
        uint8_t *dst;
        uint64_t stride, cols;
        _Atomic uint64_t max_ex;
} pack_job;

static void count_task(void *arg, uint32_t row, uint32_t thread) {
        pack_job *j = arg;
        uint64_t n = mx_bf16p_exceptions((const uint16_t *)j->t->data + (uint64_t)row * j->cols, j->cols);
        uint64_t seen = atomic_load_explicit(&j->max_ex, memory_order_relaxed);
        while (n > seen && !atomic_compare_exchange_weak(&j->max_ex, &seen, n))
                ;
}

static void pack_task(void *arg, uint32_t row, uint32_t thread) {
        pack_job *j = arg;
        mx_bf16p_pack_row((const uint16_t *)j->t->data + (uint64_t)row * j->cols, j->cols, j->dst + row * j->stride,
                          j->stride);
}

/* Huge pages where the kernel gives them: a decode step walks all the
 * packed bytes, and 4 KiB pages cost it a TLB miss every 64 lines. */
static void *alloc_packed(size_t bytes) {
        const size_t huge = (size_t)2 << 20;
        size_t rounded = (bytes + huge - 1) & ~(huge - 1);
        void *p = aligned_alloc(huge, rounded);
        if (p)
                (void)madvise(p, rounded, MADV_HUGEPAGE);
        return p;
}

static int pack_one(cpu_backend *cb, const mx_tensor *t) {
        if (t->dtype != MX_DTYPE_BF16 || t->ndim != 2 || t->shape[0] > UINT32_MAX)
                return 0;
        for (size_t i = 0; i < cb->n_packed; i++)
                if (cb->packed[i].t == t)
                        return 0; /* (the tables are not sorted yet) */
        pack_job j = {.t = t, .cols = t->shape[1]};
        if (j.cols % MX_BF16P_BLOCK || j.cols > MX_BF16P_MAX_COLS)
                return 0;
        mx_pool_run(cb->pool, (uint32_t)t->shape[0], count_task, &j);
        if (!mx_bf16p_fits(j.cols, atomic_load(&j.max_ex), &j.stride))
                return 0;
        size_t bytes;
        if (__builtin_mul_overflow(j.stride, t->shape[0], &bytes) || !(j.dst = alloc_packed(bytes)))
                return -ENOMEM;
        mx_pool_run(cb->pool, (uint32_t)t->shape[0], pack_task, &j);
        cb->packed[cb->n_packed++] = (cpu_packed){t, j.dst, j.stride, bytes};
        return 0;
}

static int by_tensor(const void *a, const void *b) {
        uintptr_t x = (uintptr_t)((const cpu_packed *)a)->t, y = (uintptr_t)((const cpu_packed *)b)->t;
        return x < y ? -1 : x > y;
}

int mx_cpu_pack_weights(cpu_backend *cb) {
        const mx_model *m = cb->base.model;
        const mx_config *c = &m->cfg;
        size_t most = 1 + (size_t)c->n_layers * (5 + 3 * (size_t)c->n_experts);
        if (!(cb->packed = calloc(most, sizeof(cpu_packed))))
                return -ENOMEM;
        int r = pack_one(cb, m->lm_head);
        for (uint32_t L = 0; r == 0 && L < c->n_layers; L++) {
                const mx_layer *l = &m->layers[L];
                const mx_tensor *dense[] = {l->wq, l->wk, l->wv, l->wo, l->router};
                for (size_t i = 0; r == 0 && i < MX_ELEMENTSOF(dense); i++)
                        r = pack_one(cb, dense[i]);
                for (uint32_t e = 0; r == 0 && !cb->experts && e < c->n_experts; e++)
                        if ((r = pack_one(cb, l->w1[e])) == 0 && (r = pack_one(cb, l->w2[e])) == 0)
                                r = pack_one(cb, l->w3[e]);
        }
        qsort(cb->packed, cb->n_packed, sizeof(cpu_packed), by_tensor);
        return r;
}

const cpu_packed *mx_cpu_packed_of(const cpu_backend *cb, const mx_tensor *t) {
        cpu_packed key = {.t = t};
        return cb->n_packed ? bsearch(&key, cb->packed, cb->n_packed, sizeof(cpu_packed), by_tensor) : NULL;
}

uint64_t mx_cpu_weight_bytes(const cpu_backend *cb, const mx_tensor *t) {
        const cpu_packed *p = mx_cpu_packed_of(cb, t);
        return p ? p->nbytes : t->nbytes;
}

void mx_cpu_packed_free(cpu_backend *cb) {
        for (size_t i = 0; i < cb->n_packed; i++)
                free(cb->packed[i].data);
        free(cb->packed);
        cb->packed = NULL;
        cb->n_packed = 0;
}
