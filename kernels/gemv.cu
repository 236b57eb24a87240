// Bandwidth-bound products for a few tokens (decode): one warp per weight
// row, 16-byte loads of bf16 weights (several in flight per lane), fp32
// activations and accumulation. Each weight byte is read once per step,
// whatever the number of tokens (up to MXK_GEMV_MAX).
#include "kernels_internal.h"

#define GEMV_WARPS 8

__device__ static inline void unpack8(uint4 w, float f[8]) {
        const uint32_t u[4] = {w.x, w.y, w.z, w.w};
#pragma unroll
        for (int i = 0; i < 4; i++) {
                f[2 * i] = __uint_as_float(u[i] << 16);
                f[2 * i + 1] = __uint_as_float(u[i] & 0xffff0000u);
        }
}

__device__ static inline float warp_sum(float s) {
#pragma unroll
        for (int off = 16; off; off >>= 1)
                s += __shfl_xor_sync(0xffffffffu, s, off);
        return s;
}

// Streaming load: weights are read once per step, so keep them out of L1.
__device__ static inline uint4 load_weights(const uint4 *p) {
        return __ldcs(p);
}

// acc[t] += row . x[t] over cols (a multiple of 8, 16-byte aligned rows),
// for NT tokens of which the first `nt` are live.
template <int NT>
__device__ static inline void dot_row(const uint16_t *row, uint32_t cols, const float *x,
                                      size_t x_stride, const uint32_t *tok, int nt, float acc[NT]) {
        const uint4 *w = (const uint4 *)row;
        uint32_t nvec = cols / 8, lane = threadIdx.x & 31;
        uint32_t i = lane;
        for (; i + 96 < nvec; i += 128) {
                uint4 wv[4];
#pragma unroll
                for (int u = 0; u < 4; u++)
                        wv[u] = load_weights(w + i + 32 * u);
#pragma unroll
                for (int u = 0; u < 4; u++) {
                        float f[8];
                        unpack8(wv[u], f);
#pragma unroll
                        for (int t = 0; t < NT; t++) {
                                if (t >= nt)
                                        break;
                                const float4 *xp =
                                    (const float4 *)(x + (tok ? tok[t] : t) * x_stride) + 2 * (i + 32 * u);
                                float4 a = xp[0], b = xp[1];
                                acc[t] += f[0] * a.x + f[1] * a.y + f[2] * a.z + f[3] * a.w +
                                          f[4] * b.x + f[5] * b.y + f[6] * b.z + f[7] * b.w;
                        }
                }
        }
        for (; i < nvec; i += 32) {
                float f[8];
                unpack8(load_weights(w + i), f);
#pragma unroll
                for (int t = 0; t < NT; t++) {
                        if (t >= nt)
                                break;
                        const float4 *xp = (const float4 *)(x + (tok ? tok[t] : t) * x_stride) + 2 * i;
                        float4 a = xp[0], b = xp[1];
                        acc[t] += f[0] * a.x + f[1] * a.y + f[2] * a.z + f[3] * a.w + f[4] * b.x +
                                  f[5] * b.y + f[6] * b.z + f[7] * b.w;
                }
        }
}

// Rows whose length is not a multiple of 8 (tiny test models): scalar.
template <int NT>
__device__ static inline void dot_row_scalar(const uint16_t *row, uint32_t cols, const float *x,
                                             size_t x_stride, const uint32_t *tok, int nt,
                                             float acc[NT]) {
        for (uint32_t c = threadIdx.x & 31; c < cols; c += 32) {
                float wv = __uint_as_float((uint32_t)row[c] << 16);
#pragma unroll
                for (int t = 0; t < NT; t++)
                        if (t < nt)
                                acc[t] += wv * x[(tok ? tok[t] : t) * x_stride + c];
        }
}

template <int NT>
__device__ static inline void dot_any(const uint16_t *row, uint32_t cols, const float *x,
                                      size_t x_stride, const uint32_t *tok, int nt, float acc[NT]) {
        if (cols % 8 == 0)
                dot_row<NT>(row, cols, x, x_stride, tok, nt, acc);
        else
                dot_row_scalar<NT>(row, cols, x, x_stride, tok, nt, acc);
}

// Up to three outputs of one product whose weight rows are stacked (q, k
// and v): rows [0, s1) go to out0, [s1, s2) to out1, [s2, rows) to out2,
// each [n][its rows].
typedef struct gemv_outs {
        float *out[3];
        uint32_t s1, s2;
} gemv_outs;

template <int NT>
__global__ static void __launch_bounds__(GEMV_WARPS * 32)
    gemv_kernel(const uint16_t *__restrict__ W, uint32_t rows, uint32_t cols,
                const float *__restrict__ x, gemv_outs o, bool accumulate) {
        uint32_t r = blockIdx.x * GEMV_WARPS + (threadIdx.x >> 5);
        if (r >= rows)
                return;
        float acc[NT] = {};
        dot_any<NT>(W + (size_t)r * cols, cols, x, cols, nullptr, NT, acc);
        int part = r < o.s1 ? 0 : r < o.s2 ? 1 : 2;
        uint32_t base = part == 0 ? 0 : part == 1 ? o.s1 : o.s2;
        uint32_t width = part == 0 ? o.s1 : part == 1 ? o.s2 - o.s1 : rows - o.s2;
#pragma unroll
        for (int t = 0; t < NT; t++) {
                float s = warp_sum(acc[t]);
                if ((threadIdx.x & 31) == 0) {
                        float *dst = o.out[part] + (size_t)t * width + (r - base);
                        *dst = accumulate ? *dst + s : s;
                }
        }
}

static void launch_gemv(mxk_ctx *c, const uint16_t *W, uint32_t rows, uint32_t cols, const float *x,
                        gemv_outs o, uint32_t n, bool accumulate) {
        unsigned blocks = (rows + GEMV_WARPS - 1) / GEMV_WARPS;
        switch (n) {
        case 1: gemv_kernel<1><<<blocks, GEMV_WARPS * 32, 0, c->stream>>>(W, rows, cols, x, o, accumulate); break;
        case 2: gemv_kernel<2><<<blocks, GEMV_WARPS * 32, 0, c->stream>>>(W, rows, cols, x, o, accumulate); break;
        case 3: gemv_kernel<3><<<blocks, GEMV_WARPS * 32, 0, c->stream>>>(W, rows, cols, x, o, accumulate); break;
        default: gemv_kernel<4><<<blocks, GEMV_WARPS * 32, 0, c->stream>>>(W, rows, cols, x, o, accumulate); break;
        }
        mxk_launched(c, "gemv");
}

void mxk_gemv(mxk_ctx *c, const uint16_t *W, uint32_t rows, uint32_t cols, const float *x, float *out,
              uint32_t n, bool accumulate) {
        launch_gemv(c, W, rows, cols, x, gemv_outs{{out, out, out}, rows, rows}, n, accumulate);
}

extern "C" void mxk_qkv(mxk_ctx *c, const uint16_t *W, uint32_t q_rows, uint32_t kv_rows, uint32_t cols,
                        const float *x, float *q, float *k, float *v, uint32_t n, uint16_t *scratch) {
        if (!n)
                return;
        if (n <= MXK_GEMV_MAX) {
                launch_gemv(c, W, q_rows + 2 * kv_rows, cols, x,
                            gemv_outs{{q, k, v}, q_rows, q_rows + kv_rows}, n, false);
                return;
        }
        mxk_matmul(c, W, q_rows, cols, x, q, n, false, scratch);
        mxk_matmul(c, W + (size_t)q_rows * cols, kv_rows, cols, x, k, n, false, scratch);
        mxk_matmul(c, W + (size_t)(q_rows + kv_rows) * cols, kv_rows, cols, x, v, n, false, scratch);
}

// ---- experts for a few tokens ------------------------------------------------
//
// counts: [0, E) tokens per expert, [E, 2E) list start per expert, [2E]
// number of experts chosen by any token, [2E+1, 3E+1) their ids. grid.y is
// a chosen expert's slot; slots past the number chosen exit at once, so
// only the chosen experts' weights are read.

__device__ static inline float silu(float v) {
        return v / (1.0f + expf(-v));
}

// act[p][f] = silu(w1[f] . x) * (w3[f] . x) for each token p of the expert
// (at most NT of them).
template <int NT>
__global__ static void __launch_bounds__(GEMV_WARPS * 32)
    expert_up_kernel(const uint16_t *const *w13, const uint32_t *counts, const uint32_t *list_tok,
                     const float *x, float *act, uint32_t E, uint32_t H, uint32_t F) {
        uint32_t slot = blockIdx.y;
        if (slot >= counts[2 * E])
                return;
        uint32_t e = counts[2 * E + 1 + slot], cnt = counts[e], start = counts[E + e];
        uint32_t f = blockIdx.x * GEMV_WARPS + (threadIdx.x >> 5);
        if (f >= F)
                return;
        const uint16_t *w = w13[e];
        float a1[NT] = {}, a3[NT] = {};
        const uint32_t *tok = list_tok + start;
        dot_any<NT>(w + (size_t)f * H, H, x, H, tok, (int)cnt, a1);
        dot_any<NT>(w + ((size_t)F + f) * H, H, x, H, tok, (int)cnt, a3);
#pragma unroll
        for (int t = 0; t < NT; t++) {
                if (t >= (int)cnt)
                        break;
                float g = warp_sum(a1[t]), u = warp_sum(a3[t]);
                if ((threadIdx.x & 31) == 0)
                        act[(size_t)(start + t) * F + f] = silu(g) * u;
        }
}

// y[p][h] = w2[h] . act[p] for each token p of the expert.
template <int NT>
__global__ static void __launch_bounds__(GEMV_WARPS * 32)
    expert_down_kernel(const uint16_t *const *w2, const uint32_t *counts, const float *act,
                       float *y, uint32_t E, uint32_t H, uint32_t F) {
        uint32_t slot = blockIdx.y;
        if (slot >= counts[2 * E])
                return;
        uint32_t e = counts[2 * E + 1 + slot], cnt = counts[e], start = counts[E + e];
        uint32_t h = blockIdx.x * GEMV_WARPS + (threadIdx.x >> 5);
        if (h >= H)
                return;
        float acc[NT] = {};
        dot_any<NT>(w2[e] + (size_t)h * F, F, act + (size_t)start * F, F, nullptr, (int)cnt, acc);
#pragma unroll
        for (int t = 0; t < NT; t++) {
                if (t >= (int)cnt)
                        break;
                float s = warp_sum(acc[t]);
                if ((threadIdx.x & 31) == 0)
                        y[(size_t)(start + t) * H + h] = s;
        }
}

void mxk_expert_gemv(mxk_ctx *c, const uint16_t *const *w13, const uint16_t *const *w2,
                     const uint32_t *counts, const uint32_t *list_tok, const float *x, float *act,
                     float *y, uint32_t n, uint32_t E, uint32_t k, uint32_t H, uint32_t F) {
        uint32_t slots = n * k < E ? n * k : E;
        dim3 up((F + GEMV_WARPS - 1) / GEMV_WARPS, slots), down((H + GEMV_WARPS - 1) / GEMV_WARPS, slots);
        if (n <= 4) {
                expert_up_kernel<4><<<up, GEMV_WARPS * 32, 0, c->stream>>>(w13, counts, list_tok, x, act, E, H, F);
                mxk_launched(c, "expert_up");
                expert_down_kernel<4><<<down, GEMV_WARPS * 32, 0, c->stream>>>(w2, counts, act, y, E, H, F);
        } else {
                expert_up_kernel<8><<<up, GEMV_WARPS * 32, 0, c->stream>>>(w13, counts, list_tok, x, act, E, H, F);
                mxk_launched(c, "expert_up");
                expert_down_kernel<8><<<down, GEMV_WARPS * 32, 0, c->stream>>>(w2, counts, act, y, E, H, F);
        }
        mxk_launched(c, "expert_down");
}
