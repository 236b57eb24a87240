/* Workers spin briefly between loops (a decode step runs hundreds of short
 * parallel loops, and a futex round trip per loop would cost more than the
 * loop) and then sleep on a futex until the next one. */
#include <errno.h>
#include <limits.h>
#include <linux/futex.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "pool.h"

#define SPIN_ROUNDS 20000

struct mx_pool {
        uint32_t threads;
        pthread_t *tids;
        _Atomic uint32_t generation; /* bumped for each loop; futex word */
        _Atomic uint32_t next_task;
        _Atomic uint32_t busy;       /* workers still in the current loop */
        _Atomic uint32_t sleepers;
        _Atomic bool quit;
        uint32_t n_tasks;
        void (*fn)(void *, uint32_t, uint32_t);
        void *arg;
};

typedef struct worker_arg {
        mx_pool *pool;
        uint32_t index;
} worker_arg;

static void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
        __builtin_ia32_pause();
#endif
}

static void run_tasks(mx_pool *p, uint32_t thread) {
        for (;;) {
                uint32_t t = atomic_fetch_add_explicit(&p->next_task, 1, memory_order_relaxed);
                if (t >= p->n_tasks)
                        return;
                p->fn(p->arg, t, thread);
        }
}

static uint32_t wait_generation(mx_pool *p, uint32_t seen) {
        for (int i = 0; i < SPIN_ROUNDS; i++) {
                uint32_t g = atomic_load_explicit(&p->generation, memory_order_acquire);
                if (g != seen)
                        return g;
                cpu_relax();
        }
        atomic_fetch_add(&p->sleepers, 1);
        uint32_t g;
        while ((g = atomic_load(&p->generation)) == seen)
                syscall(SYS_futex, &p->generation, FUTEX_WAIT_PRIVATE, seen, NULL, NULL, 0);
        atomic_fetch_sub(&p->sleepers, 1);
        return g;
}

static void *worker(void *varg) {
        worker_arg *wa = varg;
        mx_pool *p = wa->pool;
        uint32_t index = wa->index, seen = 0;
        free(wa);
        for (;;) {
                seen = wait_generation(p, seen);
                if (atomic_load(&p->quit))
                        return NULL;
                run_tasks(p, index);
                atomic_fetch_sub_explicit(&p->busy, 1, memory_order_release);
        }
}

static void wake_all(mx_pool *p) {
        atomic_fetch_add(&p->generation, 1); /* seq_cst: ordered before the sleepers check */
        if (atomic_load(&p->sleepers) > 0)
                syscall(SYS_futex, &p->generation, FUTEX_WAKE_PRIVATE, INT_MAX, NULL, NULL, 0);
}

int mx_pool_new(uint32_t threads, mx_pool **out) {
        mx_pool *p = calloc(1, sizeof(*p));
        if (!p)
                return -ENOMEM;
        p->threads = threads ? threads : 1;
        p->tids = calloc(p->threads, sizeof(pthread_t));
        if (!p->tids) {
                free(p);
                return -ENOMEM;
        }
        for (uint32_t i = 1; i < p->threads; i++) {
                worker_arg *wa = malloc(sizeof(*wa));
                if (wa)
                        *wa = (worker_arg){p, i};
                int r = wa ? pthread_create(&p->tids[i], NULL, worker, wa) : ENOMEM;
                if (r != 0) {
                        free(wa);
                        p->threads = i; /* join what started */
                        mx_pool_free(p);
                        return -r;
                }
        }
        *out = p;
        return 0;
}

void mx_pool_free(mx_pool *p) {
        if (!p)
                return;
        atomic_store(&p->quit, true);
        wake_all(p);
        for (uint32_t i = 1; i < p->threads; i++)
                pthread_join(p->tids[i], NULL);
        free(p->tids);
        free(p);
}

uint32_t mx_pool_threads(const mx_pool *p) {
        return p->threads;
}

void mx_pool_run(mx_pool *p, uint32_t n_tasks, void (*fn)(void *, uint32_t, uint32_t), void *arg) {
        if (n_tasks == 0)
                return;
        if (p->threads == 1 || n_tasks == 1) {
                for (uint32_t t = 0; t < n_tasks; t++)
                        fn(arg, t, 0);
                return;
        }
        p->fn = fn;
        p->arg = arg;
        p->n_tasks = n_tasks;
        atomic_store_explicit(&p->next_task, 0, memory_order_relaxed);
        atomic_store_explicit(&p->busy, p->threads - 1, memory_order_relaxed);
        wake_all(p);
        run_tasks(p, 0);
        while (atomic_load_explicit(&p->busy, memory_order_acquire) > 0)
                cpu_relax();
}
