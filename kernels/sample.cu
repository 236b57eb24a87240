// Sampling on the GPU, one block per sequence, so only the chosen id comes
// back. The same rules as the CPU sampler (engine/sampler.c): repetition
// penalty once per distinct recent token; greedy is the first maximum;
// otherwise logits / temperature, the top-k, a softmax over them, then
// top-p (a token stays while the mass of better ones is under top_p) and
// min-p (probability at least min_p times the best's), the best always
// kept. Instead of sorting, each cut is a threshold found by bisection
// over the float order (32 passes of a block reduction), and the draw
// walks the kept tokens in index order: the same distribution as the CPU's
// walk in sorted order, though not the same token for the same number.
#include <cerrno>

#include "kernels_internal.h"

#define SAMPLE_THREADS 1024
#define MAX_BITMAP_WORDS 8192 // penalty bitmap in shared memory: vocab <= 262144

// Floats in an order-preserving uint32 encoding, and back.
__device__ static inline uint32_t key_of(float f) {
        uint32_t b = __float_as_uint(f);
        return (b & 0x80000000u) ? ~b : b | 0x80000000u;
}

__device__ static inline float float_of(uint32_t k) {
        return __uint_as_float((k & 0x80000000u) ? k & 0x7fffffffu : ~k);
}

__device__ static float block_sum(float v, float *sh) {
        for (int off = 16; off; off >>= 1)
                v += __shfl_xor_sync(0xffffffffu, v, off);
        __syncthreads();
        if ((threadIdx.x & 31) == 0)
                sh[threadIdx.x >> 5] = v;
        __syncthreads();
        float t = 0;
        for (unsigned w = 0; w < blockDim.x / 32; w++)
                t += sh[w];
        return t;
}

__device__ static float block_max(float v, float *sh) {
        for (int off = 16; off; off >>= 1)
                v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, off));
        __syncthreads();
        if ((threadIdx.x & 31) == 0)
                sh[threadIdx.x >> 5] = v;
        __syncthreads();
        float t = -INFINITY;
        for (unsigned w = 0; w < blockDim.x / 32; w++)
                t = fmaxf(t, sh[w]);
        return t;
}

// The first index holding the block-wide maximum of w.
__device__ static uint32_t block_argmax(const float *w, uint32_t V, float *sh) {
        __shared__ uint32_t best_i[32];
        float bv = -INFINITY;
        uint32_t bi = UINT32_MAX;
        for (uint32_t i = threadIdx.x; i < V; i += blockDim.x) {
                float x = w[i];
                if (bi == UINT32_MAX || x > bv)
                        bv = x, bi = i;
        }
        for (int off = 16; off; off >>= 1) {
                float ov = __shfl_xor_sync(0xffffffffu, bv, off);
                uint32_t oi = __shfl_xor_sync(0xffffffffu, bi, off);
                if (ov > bv || (ov == bv && oi < bi))
                        bv = ov, bi = oi;
        }
        __syncthreads();
        if ((threadIdx.x & 31) == 0)
                sh[threadIdx.x >> 5] = bv, best_i[threadIdx.x >> 5] = bi;
        __syncthreads();
        float v = -INFINITY;
        uint32_t idx = UINT32_MAX;
        for (unsigned w2 = 0; w2 < blockDim.x / 32; w2++)
                if (sh[w2] > v || (sh[w2] == v && best_i[w2] < idx))
                        v = sh[w2], idx = best_i[w2];
        return idx;
}

// Smallest key x with pred(x) true, pred monotone (false ... true).
template <typename P>
__device__ static uint32_t bisect(uint32_t lo, uint32_t hi, P pred) {
        while (lo < hi) {
                uint32_t mid = lo + (hi - lo) / 2;
                if (pred(mid))
                        hi = mid;
                else
                        lo = mid + 1;
        }
        return lo;
}

__global__ static void __launch_bounds__(SAMPLE_THREADS)
    sample_kernel(const float *logits, uint32_t V, const mxk_sample_req *reqs, const int32_t *history,
                  float *work, int32_t *out) {
        __shared__ float sh[32];
        __shared__ uint32_t bits[MAX_BITMAP_WORDS];
        const mxk_sample_req q = reqs[blockIdx.x];
        float *w = work + (size_t)blockIdx.x * 2 * V, *e = w + V;
        const float *l = logits + (size_t)q.row * V;
        for (uint32_t i = threadIdx.x; i < V; i += blockDim.x)
                w[i] = l[i];
        if (q.penalty != 1.0f && V <= 32 * MAX_BITMAP_WORDS) {
                for (uint32_t i = threadIdx.x; i < (V + 31) / 32; i += blockDim.x)
                        bits[i] = 0;
                __syncthreads();
                for (uint32_t j = threadIdx.x; j < q.hist_n; j += blockDim.x) {
                        int32_t id = history[q.hist_off + j];
                        if (id < 0 || (uint32_t)id >= V)
                                continue;
                        uint32_t bit = 1u << (id & 31);
                        if (!(atomicOr(&bits[id >> 5], bit) & bit))
                                w[id] = w[id] > 0 ? w[id] / q.penalty : w[id] * q.penalty;
                }
        }
        __syncthreads();
        if (q.temperature == 0.0f) {
                uint32_t best = block_argmax(w, V, sh);
                if (threadIdx.x == 0)
                        out[blockIdx.x] = (int32_t)best;
                return;
        }
        float lo_v = INFINITY, hi_v = -INFINITY;
        for (uint32_t i = threadIdx.x; i < V; i += blockDim.x) {
                w[i] = w[i] / q.temperature;
                lo_v = fminf(lo_v, w[i]);
                hi_v = fmaxf(hi_v, w[i]);
        }
        float mx = block_max(hi_v, sh), mn = -block_max(-lo_v, sh);
        // Top-k: the smallest x with fewer than k tokens above it.
        uint32_t kcut = key_of(mn);
        if (q.top_k > 0 && q.top_k < V)
                kcut = bisect(key_of(mn), key_of(mx), [&](uint32_t x) {
                        float xv = float_of(x), c = 0;
                        for (uint32_t i = threadIdx.x; i < V; i += blockDim.x)
                                c += w[i] > xv;
                        return block_sum(c, sh) < (float)q.top_k;
                });
        float kv = float_of(kcut);
        float z_part = 0;
        for (uint32_t i = threadIdx.x; i < V; i += blockDim.x) {
                e[i] = w[i] >= kv ? (float)exp((double)w[i] - mx) : 0.0f;
                z_part += e[i];
        }
        float z = block_sum(z_part, sh);
        // Top-p: a token stays while the mass of better ones is under top_p.
        float pv = -INFINITY;
        if (q.top_p < 1.0f) {
                uint32_t pcut = bisect(key_of(mn), key_of(mx), [&](uint32_t x) {
                        float xv = float_of(x), m = 0;
                        for (uint32_t i = threadIdx.x; i < V; i += blockDim.x)
                                m += w[i] > xv ? e[i] : 0.0f;
                        return block_sum(m, sh) / z < q.top_p;
                });
                pv = float_of(pcut);
        }
        // Kept: in the top-k, past the top-p cut, at least min_p of the best.
        float kept_part = 0;
        for (uint32_t i = threadIdx.x; i < V; i += blockDim.x) {
                bool keep = e[i] > 0 && (w[i] == mx || (w[i] >= pv && e[i] >= q.min_p));
                e[i] = keep ? e[i] : 0.0f;
                kept_part += e[i];
        }
        float total = block_sum(kept_part, sh);
        float r = (float)q.u * total;
        // Walk in index order: chunks of blockDim tokens, a prefix sum each.
        __shared__ float running;
        __shared__ int32_t chosen, last_kept;
        if (threadIdx.x == 0)
                running = 0, chosen = -1, last_kept = -1;
        __syncthreads();
        for (uint32_t base = 0; base < V; base += blockDim.x) {
                uint32_t i = base + threadIdx.x;
                float v = i < V ? e[i] : 0.0f, incl = v;
                for (int off = 1; off < 32; off <<= 1) {
                        float o = __shfl_up_sync(0xffffffffu, incl, off);
                        incl += (threadIdx.x & 31) >= (unsigned)off ? o : 0.0f;
                }
                __syncthreads();
                if ((threadIdx.x & 31) == 31)
                        sh[threadIdx.x >> 5] = incl;
                __syncthreads();
                float before = running;
                for (unsigned w2 = 0; w2 < (threadIdx.x >> 5); w2++)
                        before += sh[w2];
                float start = before + incl - v;
                if (v > 0 && r >= start && r < start + v)
                        atomicCAS(&chosen, -1, (int32_t)i);
                if (v > 0)
                        atomicMax(&last_kept, (int32_t)i);
                __syncthreads();
                if (threadIdx.x == blockDim.x - 1)
                        running = start + v;
                __syncthreads();
                if (chosen >= 0)
                        break;
        }
        if (threadIdx.x == 0)
                out[blockIdx.x] = chosen >= 0 ? chosen : last_kept;
}

extern "C" void mxk_sample(mxk_ctx *c, const float *logits, uint32_t V, const mxk_sample_req *reqs,
                           uint32_t n, const int32_t *history, float *work, int32_t *out) {
        if (!n)
                return;
        sample_kernel<<<n, SAMPLE_THREADS, 0, c->stream>>>(logits, V, reqs, history, work, out);
        cudaError_t e = cudaGetLastError();
        if (e != cudaSuccess)
                mxk_fail(c, -EIO, "sample (%u sequences, vocabulary %u): %s", n, V, cudaGetErrorString(e));
}
