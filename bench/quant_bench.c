/* The CPU kernels of every weight type at a Mixtral shape, through the
 * engine's own product (engine/cpu/matmul.c: activations rounded, rows
 * shared out over the threads):
 *
 *   quant-bench [THREADS [ROWS COLS [TYPES [PATH]]]]
 *
 * defaults: all online cores, 4096 x 14336 (an expert's w2, the shape
 * llama.cpp's test-backend-ops measures), BF16,Q8_0,Q4_0,Q4_K,Q5_K,Q6_K,
 * the fast path (PATH f32: the f32 path); BF16P: BF16 packed (MX_BF16P,
 * AVX-512 only). For each type, one JSON line:
 * decode (1 token) as the weights' bytes over the time, in GB/s, and as a
 * fraction of the machine's read bandwidth on the same threads
 * (mx_measure_bandwidth); prefill of 512 tokens in GFLOP/s; each the best
 * of several runs. Weights are random, quantized by our quantizer. First
 * a line of the ceilings prefill is held to, on the same threads: the
 * dot-product instructions' rate alone (vpdpbusd for int8 blocks,
 * vdpbf16ps for bf16, vfmadd for fp32), as GFLOP/s. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <immintrin.h>

#include "cpu_backend.h"
#include "quant.h"

static double now(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* The best time of `reps` products of n tokens: the CPUs are shared, and
 * the best run is the one the others disturbed least. */
static double time_product(cpu_backend *cb, const mx_tensor *w, const float *x, float *out, uint32_t n, int reps) {
        double best = INFINITY;
        mx_cpu_matmul(&cb->base, w, x, out, n, false); /* warm: pages, caches, buffers */
        for (int i = 0; i < reps; i++) {
                double t0 = now();
                mx_cpu_matmul(&cb->base, w, x, out, n, false);
                best = fmin(best, now() - t0);
        }
        return best;
}

/* ---- the instruction ceilings ------------------------------------------------------ */

/* Twelve independent chains per thread, so that the instructions' rate
 * binds, not their latency; flops per instruction: 2 x its multiplies. */
#define PEAK_ITERS 4000000u
#define PEAK_CHAINS 12

__attribute__((target("avx512f,avx512vnni"))) static void peak_dpbusd(void *arg, uint32_t task, uint32_t thread) {
        __m512i a[PEAK_CHAINS], u = _mm512_set1_epi8(1), v = _mm512_set1_epi8(2);
        for (int j = 0; j < PEAK_CHAINS; j++)
                a[j] = _mm512_setzero_si512();
        for (uint32_t i = 0; i < PEAK_ITERS; i++) {
                __asm__ volatile("" : "+v"(u));
                for (int j = 0; j < PEAK_CHAINS; j++)
                        a[j] = _mm512_dpbusd_epi32(a[j], u, v);
        }
        for (int j = 1; j < PEAK_CHAINS; j++)
                a[0] = _mm512_add_epi32(a[0], a[j]);
        ((int *)arg)[task] = _mm512_reduce_add_epi32(a[0]);
}

__attribute__((target("avx512f,avx512bf16"))) static void peak_dpbf16(void *arg, uint32_t task, uint32_t thread) {
        __m512 a[PEAK_CHAINS];
        __m512bh u = (__m512bh)_mm512_set1_epi16(0x3f80), v = u;
        for (int j = 0; j < PEAK_CHAINS; j++)
                a[j] = _mm512_setzero_ps();
        for (uint32_t i = 0; i < PEAK_ITERS; i++) {
                __asm__ volatile("" : "+v"(u));
                for (int j = 0; j < PEAK_CHAINS; j++)
                        a[j] = _mm512_dpbf16_ps(a[j], u, v);
        }
        for (int j = 1; j < PEAK_CHAINS; j++)
                a[0] = _mm512_add_ps(a[0], a[j]);
        ((int *)arg)[task] = (int)_mm512_reduce_add_ps(a[0]);
}

__attribute__((target("avx512f"))) static void peak_fma(void *arg, uint32_t task, uint32_t thread) {
        __m512 a[PEAK_CHAINS], u = _mm512_set1_ps(1e-9f), v = _mm512_set1_ps(1.0f);
        for (int j = 0; j < PEAK_CHAINS; j++)
                a[j] = _mm512_setzero_ps();
        for (uint32_t i = 0; i < PEAK_ITERS; i++) {
                __asm__ volatile("" : "+v"(u));
                for (int j = 0; j < PEAK_CHAINS; j++)
                        a[j] = _mm512_fmadd_ps(u, v, a[j]);
        }
        for (int j = 1; j < PEAK_CHAINS; j++)
                a[0] = _mm512_add_ps(a[0], a[j]);
        ((int *)arg)[task] = (int)_mm512_reduce_add_ps(a[0]);
}

/* GFLOP/s of fn on every thread at once (the best of three), counting
 * `macs` multiply-adds per instruction. */
static double peak(cpu_backend *cb, void (*fn)(void *, uint32_t, uint32_t), double macs) {
        int sink[256];
        double best = INFINITY;
        for (int i = 0; i < 3; i++) {
                double t0 = now();
                mx_pool_run(cb->pool, cb->threads, fn, sink);
                best = fmin(best, now() - t0);
        }
        return 2.0 * macs * PEAK_ITERS * PEAK_CHAINS * cb->threads / best / 1e9;
}

static void print_ceilings(cpu_backend *cb) {
        __builtin_cpu_init();
        if (!__builtin_cpu_supports("avx512f") || cb->threads > 256) {
                printf("{\"ceilings\": \"no AVX-512 here: not measured\"}\n");
                return;
        }
        printf("{\"threads\": %u, \"fp32_fma_GFLOPs\": %.0f", cb->threads, peak(cb, peak_fma, 16));
        if (__builtin_cpu_supports("avx512vnni"))
                printf(", \"int8_vpdpbusd_GFLOPs\": %.0f", peak(cb, peak_dpbusd, 64));
        if (__builtin_cpu_supports("avx512bf16"))
                printf(", \"bf16_vdpbf16ps_GFLOPs\": %.0f", peak(cb, peak_dpbf16, 32));
        printf("}\n");
        fflush(stdout);
}

typedef struct qrows {
        mx_tensor *w;
        const float *src;
        uint64_t row_bytes;
} qrows;

static void quantize_task(void *arg, uint32_t task, uint32_t thread) {
        const qrows *q = arg;
        uint64_t cols = q->w->shape[1];
        mx_quantize_row(q->w->dtype, q->src + (uint64_t)task * cols, (uint8_t *)q->w->data + task * q->row_bytes, cols);
}

/* Weights of unit-variance products, like a model's, in type t. */
static int make_weights(cpu_backend *cb, mx_tensor *w, mx_dtype t, uint64_t rows, uint64_t cols, const float *src) {
        *w = (mx_tensor){.name = "w", .dtype = t, .ndim = 2, .shape = {rows, cols}};
        qrows q = {w, src, 0};
        if (mx_dtype_row_bytes(t, cols, &q.row_bytes) < 0 || !(w->data = malloc(rows * q.row_bytes)))
                return -1;
        w->nbytes = rows * q.row_bytes;
        mx_pool_run(cb->pool, (uint32_t)rows, quantize_task, &q);
        return 0;
}

int main(int argc, char **argv) {
        long cores = sysconf(_SC_NPROCESSORS_ONLN);
        uint32_t threads = argc > 1 ? (uint32_t)atoi(argv[1]) : (uint32_t)(cores > 0 ? cores : 1);
        uint64_t rows = argc > 3 ? strtoull(argv[2], NULL, 10) : 4096, cols = argc > 3 ? strtoull(argv[3], NULL, 10) : 14336;
        const char *types = argc > 4 ? argv[4] : "BF16,Q8_0,Q4_0,Q4_K,Q5_K,Q6_K";
        bool fast = !(argc > 5 && strcmp(argv[5], "f32") == 0);
        cpu_backend cb = {.k = mx_kernels_for(mx_isa_detect()), .threads = threads, .fast = fast};
        if (mx_pool_new(threads, &cb.pool) < 0)
                return 1;
        print_ceilings(&cb);
        double memcpy_gbps = 0, read_gbps = 0;
        mx_measure_bandwidth((size_t)1 << 30, threads, &memcpy_gbps, &read_gbps);
        const uint32_t prefill = 512;
        float *src = malloc(rows * cols * sizeof(float)), *x = malloc(prefill * cols * sizeof(float));
        float *out = malloc(prefill * rows * sizeof(float));
        uint64_t s = 88172645463325252ull;
        for (uint64_t i = 0; i < rows * cols; i++) {
                s ^= s << 13, s ^= s >> 7, s ^= s << 17;
                src[i] = (float)((double)(s >> 11) / 9007199254740992.0 - 0.5) * 2.0f * sqrtf(3.0f / (float)cols);
        }
        for (uint64_t i = 0; i < (uint64_t)prefill * cols; i++)
                x[i] = sinf((float)i * 0.37f) * (i % 101 == 7 ? 10.0f : 1.0f);
        char list[256];
        snprintf(list, sizeof(list), "%s", types);
        for (char *save = NULL, *name = strtok_r(list, ",", &save); name; name = strtok_r(NULL, ",", &save)) {
                mx_dtype t = MX_DTYPE_COUNT;
                bool packed = strcmp(name, "BF16P") == 0;
                for (int i = 0; i < MX_DTYPE_COUNT; i++)
                        if (strcmp(packed ? "BF16" : name, mx_dtype_name((mx_dtype)i)) == 0)
                                t = (mx_dtype)i;
                mx_tensor w;
                if (t == MX_DTYPE_COUNT || make_weights(&cb, &w, t, rows, cols, src) < 0 ||
                    (packed && (mx_cpu_pack_tensor(&cb, &w) < 0 || !mx_cpu_packed_of(&cb, &w)))) {
                        fprintf(stderr, "quant-bench: cannot make %s weights of %llu x %llu\n", name,
                                (unsigned long long)rows, (unsigned long long)cols);
                        return 2;
                }
                double td = time_product(&cb, &w, x, out, 1, 30), tp = time_product(&cb, &w, x, out, prefill, 4);
                uint64_t bytes = mx_cpu_weight_bytes(&cb, &w);
                printf("{\"type\": \"%s\", \"path\": \"%s\", \"isa\": \"%s\", \"threads\": %u, \"rows\": %llu, "
                       "\"cols\": %llu, \"bytes\": %llu, \"decode_ms\": %.3f, \"decode_GBps\": %.2f, "
                       "\"read_GBps\": %.2f, \"decode_of_read\": %.2f, \"prefill512_ms\": %.1f, "
                       "\"prefill512_GFLOPs\": %.1f}\n",
                       name, fast ? "fast" : "f32", mx_isa_name(cb.k->isa), threads, (unsigned long long)rows,
                       (unsigned long long)cols, (unsigned long long)bytes, td * 1e3, (double)bytes / td / 1e9,
                       read_gbps, (double)bytes / td / 1e9 / read_gbps, tp * 1e3,
                       2.0 * (double)rows * (double)cols * prefill / tp / 1e9);
                fflush(stdout);
                free((void *)w.data);
                mx_cpu_packed_free(&cb);
        }
        free(cb.act);
        mx_pool_free(cb.pool);
        free(src), free(x), free(out);
        return 0;
}
