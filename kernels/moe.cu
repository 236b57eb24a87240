// Routing and combining for the mixture of experts, as Hugging Face's
// MixtralSparseMoeBlock (and the CPU engine) computes it: softmax over all
// experts in fp32, the top-k (lowest index first among equals), weights
// renormalised; tokens grouped per expert in token order so each chosen
// expert's weights are read once; outputs summed per token in expert order
// and added to the residual. No atomics: the same inputs give the same bits.
#include <cerrno>

#include "kernels_internal.h"

#define MAX_EXPERTS 64
#define MAX_TOPK 8
#define ROUTE_THREADS 1024

// The CPU engine's route() (engine/cpu/moe.c), token by token on the device.
__device__ static void route_token(const float *l, uint32_t E, uint32_t k, uint32_t *choice, float *weight) {
        float p[MAX_EXPERTS], max = -INFINITY, sum = 0, top = 0;
        for (uint32_t e = 0; e < E; e++)
                max = l[e] > max ? l[e] : max;
        for (uint32_t e = 0; e < E; e++)
                sum += p[e] = expf(l[e] - max);
        for (uint32_t e = 0; e < E; e++)
                p[e] /= sum;
        for (uint32_t i = 0; i < k; i++) {
                uint32_t best = 0;
                float bp = -1;
                for (uint32_t e = 0; e < E; e++)
                        if (p[e] > bp)
                                best = e, bp = p[e];
                p[best] = -2;
                choice[i] = best;
                weight[i] = bp;
                top += bp;
        }
        for (uint32_t i = 0; i < k; i++)
                weight[i] /= top;
}

// One block: routes every token, then lists each expert's tokens with a
// block-wide prefix sum per chunk of ROUTE_THREADS tokens.
__global__ static void __launch_bounds__(ROUTE_THREADS)
    route_kernel(const float *logits, uint32_t n, uint32_t E, uint32_t k, bool padded, mxk_moe_buffers b) {
        __shared__ uint32_t warp_off[32], chunk_total, running, active;
        uint32_t tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
        for (uint32_t t = tid; t < n; t += blockDim.x)
                route_token(logits + (size_t)t * E, E, k, b.choice + (size_t)t * k, b.weight + (size_t)t * k);
        if (tid == 0)
                running = active = 0;
        __syncthreads();
        for (uint32_t e = 0; e < E; e++) {
                uint32_t start = running;
                for (uint32_t base = 0; base < n; base += blockDim.x) {
                        uint32_t t = base + tid, below = 0;
                        int rank = -1;
                        if (t < n)
                                for (uint32_t i = 0; i < k; i++) {
                                        uint32_t ce = b.choice[(size_t)t * k + i];
                                        rank = ce == e ? (int)i : rank;
                                        below += ce < e;
                                }
                        unsigned ballot = __ballot_sync(0xffffffffu, rank >= 0);
                        uint32_t before = __popc(ballot & ((1u << lane) - 1));
                        if (lane == 0)
                                warp_off[warp] = __popc(ballot);
                        __syncthreads();
                        if (tid < 32) {
                                uint32_t v = tid < blockDim.x / 32 ? warp_off[tid] : 0, incl = v;
                                for (int off = 1; off < 32; off <<= 1) {
                                        uint32_t o = __shfl_up_sync(0xffffffffu, incl, off);
                                        incl += lane >= (uint32_t)off ? o : 0;
                                }
                                if (tid < blockDim.x / 32)
                                        warp_off[tid] = incl - v;
                                if (tid == 31)
                                        chunk_total = incl;
                        }
                        __syncthreads();
                        if (rank >= 0) {
                                // Packed lists, or n places per expert.
                                uint32_t p = running + warp_off[warp] + before;
                                if (padded)
                                        p = e * n + (p - start);
                                b.list_tok[p] = t;
                                b.list_w[p] = b.weight[(size_t)t * k + rank];
                                b.slot_of[(size_t)t * k + below] = p;
                        }
                        __syncthreads();
                        if (tid == 0)
                                running += chunk_total;
                        __syncthreads();
                }
                if (tid == 0) {
                        b.counts[e] = running - start;
                        b.counts[E + e] = start;
                        if (running > start)
                                b.counts[2 * E + 1 + active++] = e;
                }
                __syncthreads();
        }
        if (tid == 0) {
                b.counts[2 * E] = active;
                atomicAdd(b.experts_read, (unsigned long long)(padded ? E : active));
        }
}

// acc[t] += sum over t's experts, in expert order, of weight * y.
__global__ static void combine_kernel(const float *y, const float *list_w, const uint32_t *slot_of,
                                      uint32_t k, uint32_t H, float *acc) {
        uint32_t t = blockIdx.y;
        for (uint32_t h = blockIdx.x * blockDim.x + threadIdx.x; h < H; h += gridDim.x * blockDim.x) {
                float s = 0;
                for (uint32_t i = 0; i < k; i++) {
                        uint32_t p = slot_of[(size_t)t * k + i];
                        s = __fadd_rn(s, __fmul_rn(y[(size_t)p * H + h], list_w[p]));
                }
                float *a = acc + (size_t)t * H + h;
                *a = __fadd_rn(*a, s);
        }
}

extern "C" int mxk_moe(mxk_ctx *c, const mxk_moe_buffers *b, const uint16_t *const *w13,
                       const uint16_t *const *w2, const uint16_t *const *w13_host,
                       const uint16_t *const *w2_host, const float *logits, const float *x,
                       float *acc, uint32_t n, uint32_t E, uint32_t k, uint32_t H, uint32_t F) {
        if (E > MAX_EXPERTS || k > MAX_TOPK || k > E)
                return mxk_fail(c, -EOPNOTSUPP, "the CUDA kernels take at most %d experts and top-%d",
                                MAX_EXPERTS, MAX_TOPK);
        if (!n)
                return 0;
        bool padded = n > MXK_EXPERT_GEMV_MAX && n <= MXK_PADDED_MAX;
        route_kernel<<<1, ROUTE_THREADS, 0, c->stream>>>(logits, n, E, k, padded, *b);
        mxk_launched(c, "route");
        if (n <= MXK_EXPERT_GEMV_MAX) {
                mxk_expert_gemv(c, w13, w2, b->counts, b->list_tok, x, b->act, b->y, n, E, k, H, F);
        } else if (padded) {
                // All experts as one batched product each way, n places each:
                // no host synchronisation (a decode step stays one graph).
                mxk_expert_gemm_padded(c, w13_host[0], w2_host[0], x, b, n, E, H, F);
        } else {
                // Enough tokens that cuBLAS wins: it needs each expert's
                // count on the host.
                uint32_t h[2 * MAX_EXPERTS];
                int r = mxk_download(c, h, b->counts, 2 * E * sizeof(uint32_t));
                if (r < 0)
                        return r;
                for (uint32_t e = 0; e < E; e++)
                        if (h[e])
                                mxk_expert_gemm(c, w13_host[e], w2_host[e], b->list_tok + h[E + e], h[e],
                                                x, b, b->y + (size_t)h[E + e] * H, H, F);
        }
        dim3 grid((H + 255) / 256, n);
        combine_kernel<<<grid, 256, 0, c->stream>>>(b->y, b->list_w, b->slot_of, k, H, acc);
        mxk_launched(c, "combine");
        return mxk_status(c, nullptr, 0);
}

extern "C" int mxk_moe_route(mxk_ctx *c, const mxk_moe_buffers *b, const float *logits, uint32_t n,
                             uint32_t E, uint32_t k) {
        if (E > MAX_EXPERTS || k > MAX_TOPK || k > E)
                return mxk_fail(c, -EOPNOTSUPP, "the CUDA kernels take at most %d experts and top-%d",
                                MAX_EXPERTS, MAX_TOPK);
        if (n) {
                route_kernel<<<1, ROUTE_THREADS, 0, c->stream>>>(logits, n, E, k, false, *b);
                mxk_launched(c, "route");
        }
        return mxk_status(c, nullptr, 0);
}

extern "C" void mxk_moe_expert(mxk_ctx *c, const mxk_moe_buffers *b, const uint16_t *w13,
                               const uint16_t *w2, uint32_t start, uint32_t count, const float *x,
                               uint32_t H, uint32_t F) {
        if (count)
                mxk_expert_gemm(c, w13, w2, b->list_tok + start, count, x, b, b->y + (size_t)start * H, H, F);
}

extern "C" void mxk_moe_combine(mxk_ctx *c, const mxk_moe_buffers *b, float *acc, uint32_t n, uint32_t k,
                                uint32_t H) {
        if (!n)
                return;
        dim3 grid((H + 255) / 256, n);
        combine_kernel<<<grid, 256, 0, c->stream>>>(b->y, b->list_w, b->slot_of, k, H, acc);
        mxk_launched(c, "combine");
}
