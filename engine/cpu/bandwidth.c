/* Measuring the memory bandwidth that decode speed is judged against
 * (bench/README.md): memcpy of a large buffer, and a multi-threaded
 * read-only pass with the widest loads this CPU has. */
#include <errno.h>
#include <string.h>
#include <unistd.h>
#include <time.h>

#include "cpu_backend.h"
#include "mx_common.h"

static double now(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

typedef struct read_job {
        const mx_kernels *k;
        const float *buf;
        size_t per_task;
        float sums[256];
} read_job;

static void read_task(void *arg, uint32_t task, uint32_t thread) {
        read_job *j = arg;
        const float *p = j->buf + (size_t)task * j->per_task;
        /* a dot product of the block with itself reads each byte once */
        j->sums[task] += j->k->dot(p, p, j->per_task);
}

static double median3(const double v[3]) {
        double a = v[0], b = v[1], c = v[2];
        return a > b ? (b > c ? b : a > c ? c : a) : (a > c ? a : b > c ? c : b);
}

static double best_copy(float *dst, const float *src, size_t n) {
        double best = 0;
        for (int rep = 0; rep < 3; rep++) {
                double t0 = now();
                memcpy(dst, src, n * sizeof(float));
                double gbps = (double)(n * sizeof(float)) / (now() - t0) / 1e9;
                best = gbps > best ? gbps : best;
        }
        return best;
}

static double best_read(mx_pool *pool, uint32_t threads, const float *buf, size_t n) {
        uint32_t tasks = threads * 8 < 256 ? threads * 8 : 256;
        read_job j = {mx_kernels_for(mx_isa_detect()), buf, n / tasks, {0}};
        double best = 0;
        for (int rep = 0; rep < 3; rep++) {
                double t0 = now();
                mx_pool_run(pool, tasks, read_task, &j);
                double gbps = (double)(j.per_task * tasks * sizeof(float)) / (now() - t0) / 1e9;
                best = gbps > best ? gbps : best;
        }
        return best;
}

int mx_measure_bandwidth(size_t bytes, uint32_t threads, double *memcpy_gbps, double *read_gbps) {
        if (threads == 0) {
                long online = sysconf(_SC_NPROCESSORS_ONLN);
                threads = online > 0 ? (uint32_t)online : 1;
        }
        size_t n = bytes / sizeof(float) / 64 * 64, size = n * sizeof(float);
        /* One pair of buffers for all rounds: faulting them in costs more
         * than the measurement on a small machine. */
        float *a = NULL, *b = NULL;
        if (posix_memalign((void **)&a, 64, size))
                a = NULL;
        if (a && posix_memalign((void **)&b, 64, size))
                b = NULL;
        mx_pool *pool = NULL;
        int r = a && b ? mx_pool_new(threads, &pool) : -ENOMEM;
        if (r == 0) {
                memset(a, 1, size);
                memset(b, 2, size);
                /* Median of three rounds, each the best of three runs: one
                 * round can land on a busy moment of a shared machine. */
                double cp[3], rd[3];
                for (int i = 0; i < 3; i++) {
                        cp[i] = best_copy(b, a, n);
                        rd[i] = best_read(pool, threads, a, n);
                }
                *memcpy_gbps = median3(cp);
                *read_gbps = median3(rd);
                mx_pool_free(pool);
        }
        free(a);
        free(b);
        return r;
}
