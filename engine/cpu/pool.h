/* A fixed set of worker threads for parallel loops. Private to the CPU
 * backend. */
#pragma once

#include <stdint.h>

typedef struct mx_pool mx_pool;

/* threads counts the caller, who works too: 1 means no extra threads. */
int mx_pool_new(uint32_t threads, mx_pool **out);
void mx_pool_free(mx_pool *p);
static inline void mx_pool_freep(mx_pool **p) {
        mx_pool_free(*p);
}
uint32_t mx_pool_threads(const mx_pool *p);

/* Runs fn(arg, task, thread) for every task in [0, n_tasks), spread over
 * the threads, and returns when all are done. Not reentrant. */
void mx_pool_run(mx_pool *p, uint32_t n_tasks, void (*fn)(void *arg, uint32_t task, uint32_t thread),
                 void *arg);
