/* Host stand-ins for the kernels stream_cuda.c calls (fake_kernels.c),
 * and what they saw. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct fake_gpu {
        size_t limit, used;     /* "device" bytes allowed and allocated */
        size_t report_free;     /* when set, what cudaMemGetInfo says is free */
        unsigned mallocs, fail_after; /* allocations so far; fail those after fail_after (0: never) */
        uint64_t uploaded;      /* bytes copied up */
        unsigned records[2], waits[2]; /* events recorded / waited on: [0] compute, [1] copy stream */
        unsigned event_syncs;
        int registered;         /* host ranges page-locked now */
        unsigned experts_run;   /* mxk_moe_expert calls */
        uint64_t converted;     /* elements converted to bf16 on the copy stream */
} fake_gpu;

extern fake_gpu fake;

/* What mxk_moe_expert computes for one token (act: F floats of scratch). */
void fake_expert(const uint16_t *w13, const uint16_t *w2, const float *x, float *y, float *act, uint32_t H,
                 uint32_t F);
