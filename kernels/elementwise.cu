// The small steps between the large products: embedding rows, RMSNorm,
// rotary embeddings, row gathers, KV-cache appends, weight fills and dtype
// conversion. Element-wise arithmetic is written as the CPU engine writes
// it (explicit roundings where the CPU does not fuse), so the two agree
// closely.
#include <cuda_fp16.h>

#include "kernels_internal.h"
#include "mx_synth.h"

__device__ static inline float load_elem(const void *p, int dtype, size_t i) {
        if (dtype == MXK_BF16)
                return __bfloat162float(((const __nv_bfloat16 *)p)[i]);
        if (dtype == MXK_F16)
                return __half2float(((const __half *)p)[i]);
        return ((const float *)p)[i];
}

__global__ static void fill_synthetic_kernel(uint16_t *dst, size_t n, uint64_t seed, float scale) {
        for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
             i += (size_t)gridDim.x * blockDim.x)
                dst[i] = mx_synth_bf16(seed, i, scale);
}

extern "C" void mxk_fill_synthetic(mxk_ctx *c, uint16_t *dst, size_t n, uint64_t seed, float scale) {
        if (!n)
                return;
        fill_synthetic_kernel<<<mxk_blocks(n, 256), 256, 0, c->stream>>>(dst, n, seed, scale);
        mxk_launched(c, "fill_synthetic");
}

__global__ static void to_bf16_kernel(const void *src, int dtype, uint16_t *dst, size_t n) {
        for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
             i += (size_t)gridDim.x * blockDim.x) {
                __nv_bfloat16 b = __float2bfloat16_rn(load_elem(src, dtype, i));
                dst[i] = *(uint16_t *)&b;
        }
}

extern "C" void mxk_to_bf16(mxk_ctx *c, const void *src, int dtype, uint16_t *dst, size_t n) {
        if (!n)
                return;
        to_bf16_kernel<<<mxk_blocks(n, 256), 256, 0, c->stream>>>(src, dtype, dst, n);
        mxk_launched(c, "to_bf16");
}

__global__ static void embed_kernel(const void *table, int dtype, uint32_t cols, const int32_t *tokens,
                                    uint32_t n, float *out) {
        uint32_t t = blockIdx.y;
        size_t row = (size_t)tokens[t] * cols;
        for (uint32_t i = blockIdx.x * blockDim.x + threadIdx.x; i < cols; i += gridDim.x * blockDim.x)
                out[(size_t)t * cols + i] = load_elem(table, dtype, row + i);
}

extern "C" void mxk_embed(mxk_ctx *c, const void *table, int dtype, uint32_t cols,
                          const int32_t *tokens, uint32_t n, float *out) {
        if (!n)
                return;
        dim3 grid((cols + 255) / 256, n);
        embed_kernel<<<grid, 256, 0, c->stream>>>(table, dtype, cols, tokens, n, out);
        mxk_launched(c, "embed");
}

// One block per row: sum of squares in fp32, then w * (x * inv).
__global__ static void rmsnorm_kernel(const float *w, float eps, const float *x, float *out,
                                      uint32_t cols) {
        __shared__ float part[32];
        const float *xr = x + (size_t)blockIdx.x * cols;
        float *o = out + (size_t)blockIdx.x * cols;
        float s = 0;
#pragma unroll 4
        for (uint32_t i = threadIdx.x; i < cols; i += blockDim.x)
                s += xr[i] * xr[i];
        for (int off = 16; off; off >>= 1)
                s += __shfl_xor_sync(0xffffffffu, s, off);
        if ((threadIdx.x & 31) == 0)
                part[threadIdx.x >> 5] = s;
        __syncthreads();
        if (threadIdx.x < 32) {
                s = threadIdx.x < blockDim.x / 32 ? part[threadIdx.x] : 0.0f;
                for (int off = 16; off; off >>= 1)
                        s += __shfl_xor_sync(0xffffffffu, s, off);
                if (threadIdx.x == 0)
                        part[0] = s;
        }
        __syncthreads();
        float var = __fdiv_rn(part[0], (float)cols);
        float inv = __fdiv_rn(1.0f, __fsqrt_rn(__fadd_rn(var, eps)));
        for (uint32_t i = threadIdx.x; i < cols; i += blockDim.x)
                o[i] = __fmul_rn(w[i], __fmul_rn(xr[i], inv));
}

extern "C" void mxk_rmsnorm(mxk_ctx *c, const float *w, float eps, const float *x, float *out,
                            uint32_t n, uint32_t cols) {
        if (!n)
                return;
        // Enough threads that each has a load or two: a row is one block.
        unsigned threads = cols >= 2048 ? 1024 : cols >= 512 ? 256 : 64;
        rmsnorm_kernel<<<n, threads, 0, c->stream>>>(w, eps, x, out, cols);
        mxk_launched(c, "rmsnorm");
}

__global__ static void gather_kernel(const float *src, uint32_t cols, const uint32_t *rows, float *dst) {
        const float *s = src + (size_t)rows[blockIdx.y] * cols;
        float *d = dst + (size_t)blockIdx.y * cols;
        for (uint32_t i = blockIdx.x * blockDim.x + threadIdx.x; i < cols; i += gridDim.x * blockDim.x)
                d[i] = s[i];
}

extern "C" void mxk_gather(mxk_ctx *c, const float *src, uint32_t cols, const uint32_t *rows,
                           uint32_t n, float *dst) {
        if (!n)
                return;
        dim3 grid((cols + 255) / 256, n);
        gather_kernel<<<grid, 256, 0, c->stream>>>(src, cols, rows, dst);
        mxk_launched(c, "gather");
}

__global__ static void rope_table_kernel(const uint32_t *pos, uint32_t n, const float *inv,
                                         uint32_t half, float *cs, float *sn) {
        size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
        if (i >= (size_t)n * half)
                return;
        float a = __fmul_rn((float)pos[i / half], inv[i % half]);
        cs[i] = (float)cos((double)a);
        sn[i] = (float)sin((double)a);
}

extern "C" void mxk_rope_table(mxk_ctx *c, const uint32_t *pos, uint32_t n, const float *inv_freq,
                               uint32_t half, float *cs, float *sn) {
        size_t total = (size_t)n * half;
        if (!total)
                return;
        rope_table_kernel<<<mxk_blocks(total, 256), 256, 0, c->stream>>>(pos, n, inv_freq, half, cs, sn);
        mxk_launched(c, "rope_table");
}

// One thread per rotation pair of one head of one token; q heads first,
// then k heads.
__global__ static void rope_kernel(float *q, float *k, const float *cs, const float *sn, uint32_t n,
                                   uint32_t heads, uint32_t kv_heads, uint32_t hd) {
        uint32_t half = hd / 2, per_token = (heads + kv_heads) * half;
        size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
        if (i >= (size_t)n * per_token)
                return;
        uint32_t t = (uint32_t)(i / per_token), r = (uint32_t)(i % per_token);
        uint32_t h = r / half, j = r % half;
        float *v = h < heads ? q + ((size_t)t * heads + h) * hd
                             : k + ((size_t)t * kv_heads + (h - heads)) * hd;
        float c = cs[(size_t)t * half + j], s = sn[(size_t)t * half + j];
        float x1 = v[j], x2 = v[j + half];
        v[j] = __fsub_rn(__fmul_rn(x1, c), __fmul_rn(x2, s));
        v[j + half] = __fadd_rn(__fmul_rn(x2, c), __fmul_rn(x1, s));
}

extern "C" void mxk_rope(mxk_ctx *c, float *q, float *k, const float *cs, const float *sn, uint32_t n,
                         uint32_t heads, uint32_t kv_heads, uint32_t hd) {
        size_t total = (size_t)n * (heads + kv_heads) * (hd / 2);
        if (!total)
                return;
        rope_kernel<<<mxk_blocks(total, 256), 256, 0, c->stream>>>(q, k, cs, sn, n, heads, kv_heads, hd);
        mxk_launched(c, "rope");
}

// mx_f32_to_bf16's integer steps (round to nearest, ties to even; a NaN
// stays a quiet NaN of the same sign), so that the CPU and the GPU store
// the same K and V bits; __float2bfloat16_rn differs on NaN.
__device__ static inline uint16_t kv_bf16(float f) {
        uint32_t u = __float_as_uint(f);
        if ((u & 0x7fffffffu) > 0x7f800000u)
                return (uint16_t)((u >> 16) | 0x40);
        u += 0x7fffu + ((u >> 16) & 1);
        return (uint16_t)(u >> 16);
}

// One row per blockIdx.y: its block of the pool from its sequence's table.
__global__ static void kv_append_kernel(mxk_kv kv, const mxk_row *rows, uint32_t layer, const float *k,
                                        const float *v) {
        mxk_row r = rows[blockIdx.y];
        size_t half = (size_t)MXK_KV_BLOCK * kv.stride;
        size_t at = ((size_t)kv.tables[r.table + r.pos / MXK_KV_BLOCK] * kv.layers + layer) * 2 * half +
                    (size_t)(r.pos % MXK_KV_BLOCK) * kv.stride;
        const float *kr = k + (size_t)blockIdx.y * kv.stride, *vr = v + (size_t)blockIdx.y * kv.stride;
        for (uint32_t i = blockIdx.x * blockDim.x + threadIdx.x; i < kv.stride; i += gridDim.x * blockDim.x) {
                if (kv.bf16) {
                        ((uint16_t *)kv.pool)[at + i] = kv_bf16(kr[i]);
                        ((uint16_t *)kv.pool)[at + half + i] = kv_bf16(vr[i]);
                } else {
                        ((float *)kv.pool)[at + i] = kr[i];
                        ((float *)kv.pool)[at + half + i] = vr[i];
                }
        }
}

extern "C" void mxk_kv_append(mxk_ctx *c, const mxk_kv *kv, const mxk_row *rows, uint32_t n, uint32_t layer,
                              const float *k, const float *v) {
        if (!n)
                return;
        dim3 grid((kv->stride + 255) / 256, n);
        kv_append_kernel<<<grid, 256, 0, c->stream>>>(*kv, rows, layer, k, v);
        mxk_launched(c, "kv_append");
}
