// MX_CUDA_PROFILE=1: where a step's GPU time goes. Events on the stream at
// the start of every operation; the time to the next event is charged to
// the operation, per bucket of token counts (decode 1, <=4, <=64, more).
// Events perturb the timing a little: for diagnosis, not for benchmarks.
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "kernels_internal.h"

#define PROF_EVENTS 4096
#define PROF_KEYS 64

struct mxk_prof {
        cudaEvent_t ev[PROF_EVENTS];
        const char *label[PROF_EVENTS];
        int bucket[PROF_EVENTS];
        int n;
        struct {
                const char *label;
                int bucket;
                double ms;
                unsigned long count;
        } keys[PROF_KEYS];
        int n_keys;
};

static const char *const bucket_names[] = {"1", "2-4", "5-64", ">64"};

static int bucket_of(uint32_t n) {
        return n <= 1 ? 0 : n <= 4 ? 1 : n <= 64 ? 2 : 3;
}

extern "C" bool mxk_prof_enabled(mxk_ctx *c) {
        if (c->prof)
                return true;
        const char *e = getenv("MX_CUDA_PROFILE");
        if (!e || strcmp(e, "1") != 0)
                return false;
        c->prof = (mxk_prof *)calloc(1, sizeof(mxk_prof));
        for (int i = 0; c->prof && i < PROF_EVENTS; i++)
                cudaEventCreate(&c->prof->ev[i]);
        return c->prof != nullptr;
}

extern "C" void mxk_prof_mark(mxk_ctx *c, const char *label, uint32_t n) {
        mxk_prof *p = c->prof;
        if (!p || p->n == PROF_EVENTS)
                return;
        cudaEventRecord(p->ev[p->n], c->stream);
        p->label[p->n] = label;
        p->bucket[p->n] = bucket_of(n);
        p->n++;
}

static void charge(mxk_prof *p, const char *label, int bucket, double ms) {
        int k = 0;
        while (k < p->n_keys && !(p->keys[k].label == label && p->keys[k].bucket == bucket))
                k++;
        if (k == p->n_keys) {
                if (k == PROF_KEYS)
                        return;
                p->keys[k].label = label;
                p->keys[k].bucket = bucket;
                p->n_keys++;
        }
        p->keys[k].ms += ms;
        p->keys[k].count++;
}

extern "C" void mxk_prof_collect(mxk_ctx *c) {
        mxk_prof *p = c->prof;
        if (!p || p->n < 2)
                return;
        cudaEventSynchronize(p->ev[p->n - 1]);
        for (int i = 0; i + 1 < p->n; i++) {
                float ms = 0;
                cudaEventElapsedTime(&ms, p->ev[i], p->ev[i + 1]);
                charge(p, p->label[i], p->bucket[i], ms);
        }
        // The last mark starts the next interval.
        cudaEvent_t last = p->ev[p->n - 1];
        p->ev[p->n - 1] = p->ev[0];
        p->ev[0] = last;
        p->label[0] = p->label[p->n - 1];
        p->bucket[0] = p->bucket[p->n - 1];
        p->n = 1;
}

extern "C" void mxk_prof_report(mxk_ctx *c) {
        mxk_prof *p = c->prof;
        if (!p)
                return;
        mxk_prof_collect(c);
        fprintf(stderr, "MX_CUDA_PROFILE: GPU time per operation (ms total, calls, us per call)\n");
        for (int b = 0; b < 4; b++) {
                double total = 0;
                for (int k = 0; k < p->n_keys; k++)
                        if (p->keys[k].bucket == b)
                                total += p->keys[k].ms;
                if (total == 0)
                        continue;
                fprintf(stderr, "  tokens per step %s: %.2f ms\n", bucket_names[b], total);
                for (int k = 0; k < p->n_keys; k++)
                        if (p->keys[k].bucket == b)
                                fprintf(stderr, "    %-14s %10.2f ms %8lu %10.1f us  %5.1f%%\n", p->keys[k].label,
                                        p->keys[k].ms, p->keys[k].count, 1e3 * p->keys[k].ms / p->keys[k].count,
                                        100 * p->keys[k].ms / total);
        }
}
