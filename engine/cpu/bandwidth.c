/* Measuring the memory bandwidth that decode speed is judged against
 * (DESIGN.md section 6): memcpy of a large buffer, and a multi-threaded
 * read-only pass with the widest loads this CPU has. */
#include <string.h>
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

int mx_measure_bandwidth(size_t bytes, uint32_t threads, double *memcpy_gbps, double *read_gbps) {
        if (threads == 0) {
                long online = sysconf(_SC_NPROCESSORS_ONLN);
                threads = online > 0 ? (uint32_t)online : 1;
        }
        size_t n = bytes / sizeof(float) / 64 * 64;
        float *a = NULL, *b = NULL;
        if (posix_memalign((void **)&a, 64, n * sizeof(float)) || posix_memalign((void **)&b, 64, n * sizeof(float))) {
                free(a);
                return -ENOMEM;
        }
        memset(a, 1, n * sizeof(float));
        memset(b, 2, n * sizeof(float));
        double best_copy = 0, best_read = 0;
        for (int rep = 0; rep < 3; rep++) {
                double t0 = now();
                memcpy(b, a, n * sizeof(float));
                double gbps = (double)(n * sizeof(float)) / (now() - t0) / 1e9;
                best_copy = gbps > best_copy ? gbps : best_copy;
        }
        mx_pool *pool = NULL;
        int r = mx_pool_new(threads, &pool);
        if (r == 0) {
                uint32_t tasks = threads * 8 < 256 ? threads * 8 : 256;
                read_job j = {mx_kernels_for(mx_isa_detect()), a, n / tasks, {0}};
                for (int rep = 0; rep < 3; rep++) {
                        double t0 = now();
                        mx_pool_run(pool, tasks, read_task, &j);
                        double gbps = (double)(j.per_task * tasks * sizeof(float)) / (now() - t0) / 1e9;
                        best_read = gbps > best_read ? gbps : best_read;
                }
                mx_pool_free(pool);
        }
        free(a);
        free(b);
        *memcpy_gbps = best_copy;
        *read_gbps = best_read;
        return r;
}
