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
 *   the fast path of AVX2 and AVX-512 (the scalar kernels, the reference,
 *   read plain rows); the mapped file stays as it is and is no longer read
 *   by the products. Experts that stream (--expert-memory) stay plain:
 *   they come from the disk as the file has them.
 * - Errors: only -ENOMEM (the copy did not fit), which the backend reports;
 *   a matrix that does not qualify simply stays plain. */
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/sysinfo.h>

#include "cpu_backend.h"
#include "mx_common.h"

#define EXP_OF(w) (((w) >> 7) & 0xffu)

/* The row's table (up to MX_BF16P_CODES exponents, most frequent first,
 * the lower exponent first among equals; unused entries 0), and how many
 * of its values are exceptions: none unless all 15 entries are used. */
static uint64_t row_table(const uint16_t *w, uint64_t cols, uint16_t tab[MX_BF16P_TABLE]) {
        uint64_t hist[256] = {0}, covered = 0;
        uint8_t seen[256]; /* the exponents present, ascending: a row has a few dozen */
        int n = 0;
        for (uint64_t i = 0; i < cols; i++)
                hist[EXP_OF(w[i])]++;
        for (int e = 0; e < 256; e++)
                if (hist[e])
                        seen[n++] = (uint8_t)e;
        memset(tab, 0, MX_BF16P_TABLE * sizeof(uint16_t));
        for (int c = 0; c < MX_BF16P_CODES; c++) {
                int best = -1;
                for (int i = 0; i < n; i++)
                        if (hist[seen[i]] && (best < 0 || hist[seen[i]] > hist[best]))
                                best = seen[i];
                if (best < 0)
                        break;
                tab[c] = (uint16_t)(best << 7);
                covered += hist[best];
                hist[best] = 0;
        }
        return cols - covered;
}

uint64_t mx_bf16p_exceptions(const uint16_t *w, uint64_t cols) {
        uint16_t tab[MX_BF16P_TABLE];
        return row_table(w, cols, tab);
}

bool mx_bf16p_fits(uint64_t cols, uint64_t max_exceptions, uint64_t *stride) {
        if (cols == 0 || cols % MX_BF16P_BLOCK || cols > MX_BF16P_MAX_COLS || max_exceptions > cols / 16)
                return false;
        uint64_t bytes = MX_BF16P_TABLE * 2 + cols / MX_BF16P_BLOCK * MX_BF16P_BLOCK_BYTES + 2 * max_exceptions;
        *stride = (bytes + 63) & ~(uint64_t)63;
        return *stride < 2 * cols; /* (narrow rows gain nothing) */
}

/* The row's table with its count of exceptions last (kernels.h). */
static void table_of(const uint16_t *w, uint64_t cols, uint16_t tab[MX_BF16P_TABLE]) {
        uint64_t ex = row_table(w, cols, tab);
        tab[MX_BF16P_TABLE - 1] = (uint16_t)(ex < UINT16_MAX ? ex : UINT16_MAX);
}

static void pack_with(const uint16_t *w, uint64_t cols, const uint16_t tab[MX_BF16P_TABLE], uint8_t *dst,
                      uint64_t stride) {
        uint8_t code_of[256];
        memset(code_of, MX_BF16P_CODES, sizeof(code_of));
        /* Running down, so that where exponent 0 is in the table its own
         * code wins over the unused entries' 0 (which decode to it too). */
        for (int c = MX_BF16P_CODES - 1; c >= 0; c--)
                code_of[tab[c] >> 7] = (uint8_t)c;
        memset(dst, 0, stride);
        memcpy(dst, tab, MX_BF16P_TABLE * sizeof(uint16_t));
        uint8_t *blocks = dst + MX_BF16P_TABLE * 2;
        uint16_t *ex = (uint16_t *)(blocks + cols / MX_BF16P_BLOCK * MX_BF16P_BLOCK_BYTES);
        /* A stride too short for the row's exceptions cuts them, not overruns. */
        const uint16_t *ex_end = (const uint16_t *)(dst + stride);
        for (uint64_t b = 0; b < cols / MX_BF16P_BLOCK; b++) {
                uint8_t *sm = blocks + b * MX_BF16P_BLOCK_BYTES, *codes = sm + MX_BF16P_BLOCK;
                for (int j = 0; j < MX_BF16P_BLOCK; j++) {
                        uint16_t v = w[b * MX_BF16P_BLOCK + (uint64_t)j];
                        uint8_t c = code_of[EXP_OF(v)];
                        if (c == MX_BF16P_CODES && ex < ex_end)
                                *ex++ = v;
                        else if (c != MX_BF16P_CODES)
                                sm[j] = (uint8_t)(((v >> 8) & 0x80) | (v & 0x7f));
                        codes[j % 32] |= (uint8_t)(j < 32 ? c : c << 4);
                }
        }
}

void mx_bf16p_pack_row(const uint16_t *w, uint64_t cols, uint8_t *dst, uint64_t stride) {
        uint16_t tab[MX_BF16P_TABLE];
        table_of(w, cols, tab);
        pack_with(w, cols, tab, dst, stride);
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
        uint16_t *tables; /* [rows][MX_BF16P_TABLE] */
        uint8_t *dst;     /* [rows][stride] */
        uint64_t stride, cols;
        _Atomic uint64_t max_ex;
} pack_job;

static void table_task(void *arg, uint32_t row, uint32_t thread) {
        pack_job *j = arg;
        uint16_t *tab = j->tables + (uint64_t)row * MX_BF16P_TABLE;
        table_of((const uint16_t *)j->t->data + (uint64_t)row * j->cols, j->cols, tab);
        uint64_t n = tab[MX_BF16P_TABLE - 1], seen = atomic_load_explicit(&j->max_ex, memory_order_relaxed);
        while (n > seen && !atomic_compare_exchange_weak(&j->max_ex, &seen, n))
                ;
}

static void pack_task(void *arg, uint32_t row, uint32_t thread) {
        pack_job *j = arg;
        pack_with((const uint16_t *)j->t->data + (uint64_t)row * j->cols, j->cols,
                  j->tables + (uint64_t)row * MX_BF16P_TABLE, j->dst + row * j->stride, j->stride);
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

static int by_tensor(const void *a, const void *b) {
        uintptr_t x = (uintptr_t)((const cpu_packed *)a)->t, y = (uintptr_t)((const cpu_packed *)b)->t;
        return x < y ? -1 : x > y;
}

/* Whether t may pack, and the most bytes it would take. */
static bool candidate(const mx_tensor *t, uint64_t *most) {
        uint64_t stride;
        return t->dtype == MX_DTYPE_BF16 && t->ndim == 2 && t->shape[0] <= UINT32_MAX &&
               mx_bf16p_fits(t->shape[1], t->shape[1] / 16, &stride) &&
               !__builtin_mul_overflow(stride, t->shape[0], most);
}

int mx_cpu_pack_tensor(cpu_backend *cb, const mx_tensor *t) {
        uint64_t most;
        if (!candidate(t, &most) || mx_cpu_packed_of(cb, t))
                return 0;
        cpu_packed *grown = realloc(cb->packed, (cb->n_packed + 1) * sizeof(cpu_packed));
        if (!grown)
                return -ENOMEM;
        cb->packed = grown;
        pack_job j = {.t = t, .cols = t->shape[1], .tables = malloc(t->shape[0] * MX_BF16P_TABLE * sizeof(uint16_t))};
        if (!j.tables)
                return -ENOMEM;
        mx_pool_run(cb->pool, (uint32_t)t->shape[0], table_task, &j);
        if (!mx_bf16p_fits(j.cols, atomic_load(&j.max_ex), &j.stride)) {
                free(j.tables);
                return 0;
        }
        size_t bytes = j.stride * t->shape[0]; /* (within `most`) */
        if (!(j.dst = alloc_packed(bytes))) {
                free(j.tables);
                return -ENOMEM;
        }
        mx_pool_run(cb->pool, (uint32_t)t->shape[0], pack_task, &j);
        free(j.tables);
        cb->packed[cb->n_packed++] = (cpu_packed){t, j.dst, j.stride, bytes};
        qsort(cb->packed, cb->n_packed, sizeof(cpu_packed), by_tensor);
        return 0;
}

/* The matrices products read: the output head and each layer's, the
 * experts' only where they are resident. */
static size_t products_of(const cpu_backend *cb, const mx_tensor **out) {
        const mx_model *m = cb->base.model;
        size_t n = 0;
        out[n++] = m->lm_head;
        for (uint32_t L = 0; L < m->cfg.n_layers; L++) {
                const mx_layer *l = &m->layers[L];
                out[n++] = l->wq, out[n++] = l->wk, out[n++] = l->wv, out[n++] = l->wo, out[n++] = l->router;
                for (uint32_t e = 0; !cb->experts && e < m->cfg.n_experts; e++)
                        out[n++] = l->w1[e], out[n++] = l->w2[e], out[n++] = l->w3[e];
        }
        return n;
}

/* Both the mapped files and the copies in memory at once, within 80% of
 * it, as mx_model_fits_in_memory asks of the files alone: a machine short
 * of memory keeps the weights as mapped rather than trade the page cache
 * for the copies. */
static bool copies_fit(const mx_model *m, uint64_t copies) {
        struct sysinfo si;
        uint64_t total = copies;
        for (size_t i = 0; i < m->n_files; i++)
                total += m->files[i].size;
        return sysinfo(&si) == 0 && total < (uint64_t)si.totalram * si.mem_unit / 10 * 8;
}

int mx_cpu_pack_weights(cpu_backend *cb, void (*progress)(uint64_t done, uint64_t total, void *arg), void *arg) {
        const mx_config *c = &cb->base.model->cfg;
        size_t cap = 1 + (size_t)c->n_layers * (5 + 3 * (size_t)c->n_experts);
        _cleanup_free_ const mx_tensor **all = calloc(cap, sizeof(*all));
        if (!all)
                return -ENOMEM;
        size_t n = products_of(cb, all);
        uint64_t most = 0, total = 0, done = 0, one;
        for (size_t i = 0; i < n; i++)
                if (candidate(all[i], &one))
                        most += one, total += all[i]->nbytes;
        if (!copies_fit(cb->base.model, most))
                return 0;
        for (size_t i = 0; i < n; i++) {
                if (!candidate(all[i], &one))
                        continue;
                int r = mx_cpu_pack_tensor(cb, all[i]);
                if (r < 0)
                        return r;
                done += all[i]->nbytes;
                if (progress)
                        progress(done, total, arg);
        }
        return 0;
}

const cpu_packed *mx_cpu_packed_of(const cpu_backend *cb, const mx_tensor *t) {
        cpu_packed key = {.t = t};
        return cb->n_packed ? bsearch(&key, cb->packed, cb->n_packed, sizeof(cpu_packed), by_tensor) : NULL;
}

uint64_t mx_cpu_weight_bytes(const cpu_backend *cb, const mx_tensor *t) {
        const cpu_packed *p = mx_cpu_packed_of(cb, t);
        return p ? p->nbytes : t->nbytes;
}

/* t's copy freed, its products back on the mapping. */
static void drop(cpu_backend *cb, const mx_tensor *t) {
        cpu_packed *p = (cpu_packed *)mx_cpu_packed_of(cb, t);
        if (!p)
                return;
        free(p->data);
        size_t i = (size_t)(p - cb->packed);
        memmove(p, p + 1, (cb->n_packed - i - 1) * sizeof(cpu_packed));
        cb->n_packed--;
}

void mx_cpu_packed_drop_experts(cpu_backend *cb) {
        const mx_model *m = cb->base.model;
        for (uint32_t L = 0; L < m->cfg.n_layers; L++)
                for (uint32_t e = 0; e < m->cfg.n_experts; e++) {
                        drop(cb, m->layers[L].w1[e]);
                        drop(cb, m->layers[L].w2[e]);
                        drop(cb, m->layers[L].w3[e]);
                }
}

void mx_cpu_packed_free(cpu_backend *cb) {
        for (size_t i = 0; i < cb->n_packed; i++)
                free(cb->packed[i].data);
        free(cb->packed);
        cb->packed = NULL;
        cb->n_packed = 0;
}
