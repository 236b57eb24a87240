// Causal grouped-query attention over the KV pool's blocks (bf16 or f32,
// read as fp32), for decode and prefill alike. A block takes one token,
// one KV head and one slice of the sequence: each of its warps walks keys
// of that slice, finding each key's pool block through the sequence's
// block table, reading every key and value once for all the query heads
// that share the KV head, with an online softmax (running maximum and
// sum), so no score matrix is ever stored. Slices are merged by a second
// kernel (flash-decoding), which gives short decode steps enough blocks to
// fill the GPU. tests/gpu/fake_kernels.c is its twin on the host.
#include <cerrno>

#include "kernels_internal.h"

#define MAX_GROUP 8 // query heads per KV head

__device__ static inline float kv_load(const float *p) {
        return *p;
}

__device__ static inline float kv_load(const uint16_t *p) {
        return __uint_as_float((uint32_t)*p << 16);
}

// DPL: head dimensions per lane (hd <= 32 * DPL); E: the pool's element.
template <int DPL, typename E>
__global__ static void __launch_bounds__(MXK_ATT_WARPS * 32)
    attention_slice_kernel(mxk_kv kv, const mxk_row *rows, uint32_t layer, const float *q, uint32_t heads,
                           uint32_t kv_heads, uint32_t hd, float *part) {
        __shared__ float sm_o[MXK_ATT_WARPS][MAX_GROUP][32 * DPL];
        __shared__ float sm_m[MXK_ATT_WARPS][MAX_GROUP], sm_l[MXK_ATT_WARPS][MAX_GROUP];
        uint32_t row = blockIdx.x, g = blockIdx.y, s = blockIdx.z, slices = gridDim.z;
        uint32_t lane = threadIdx.x & 31, warp = threadIdx.x >> 5, group = heads / kv_heads;
        mxk_row d = rows[row];
        // This row's keys, split evenly: the grid depends only on the slice
        // count, so a captured decode step replays at any length.
        uint32_t len = d.pos + 1, slice = (len + slices - 1) / slices;
        uint32_t i0 = min(len, s * slice), i1 = min(len, i0 + slice);
        size_t stride = (size_t)kv_heads * hd, half = (size_t)MXK_KV_BLOCK * stride;
        const uint32_t *table = kv.tables + d.table;
        const E *pool = (const E *)kv.pool + (size_t)layer * 2 * half + (size_t)g * hd;
        float scale = sqrtf((float)hd);

        float qr[MAX_GROUP][DPL], o[MAX_GROUP][DPL], m[MAX_GROUP], l[MAX_GROUP];
#pragma unroll
        for (uint32_t j = 0; j < MAX_GROUP; j++) {
                if (j >= group)
                        break;
                const float *qh = q + ((size_t)row * heads + g * group + j) * hd;
#pragma unroll
                for (int u = 0; u < DPL; u++) {
                        uint32_t dim = lane + 32 * u;
                        qr[j][u] = dim < hd ? qh[dim] : 0.0f;
                        o[j][u] = 0;
                }
                m[j] = -INFINITY;
                l[j] = 0;
        }
        for (uint32_t i = i0 + warp; i < i1; i += MXK_ATT_WARPS) {
                float kr[DPL], vr[DPL];
                const E *key = pool + (size_t)table[i / MXK_KV_BLOCK] * kv.layers * 2 * half +
                               (size_t)(i % MXK_KV_BLOCK) * stride;
#pragma unroll
                for (int u = 0; u < DPL; u++) {
                        uint32_t dim = lane + 32 * u;
                        kr[u] = dim < hd ? kv_load(key + dim) : 0.0f;
                        vr[u] = dim < hd ? kv_load(key + half + dim) : 0.0f;
                }
#pragma unroll
                for (uint32_t j = 0; j < MAX_GROUP; j++) {
                        if (j >= group)
                                break;
                        float dot = 0;
#pragma unroll
                        for (int u = 0; u < DPL; u++)
                                dot += qr[j][u] * kr[u];
#pragma unroll
                        for (int off = 16; off; off >>= 1)
                                dot += __shfl_xor_sync(0xffffffffu, dot, off);
                        float sc = dot / scale, mn = fmaxf(m[j], sc);
                        float corr = expf(m[j] - mn), p = expf(sc - mn);
                        l[j] = l[j] * corr + p;
#pragma unroll
                        for (int u = 0; u < DPL; u++)
                                o[j][u] = o[j][u] * corr + p * vr[u];
                        m[j] = mn;
                }
        }
#pragma unroll
        for (uint32_t j = 0; j < MAX_GROUP; j++) {
                if (j >= group)
                        break;
#pragma unroll
                for (int u = 0; u < DPL; u++)
                        sm_o[warp][j][lane + 32 * u] = o[j][u];
                if (lane == 0)
                        sm_m[warp][j] = m[j], sm_l[warp][j] = l[j];
        }
        __syncthreads();
        // Merge the warps: thread t takes dimension t % hd of head t / hd.
        for (uint32_t x = threadIdx.x; x < group * hd; x += blockDim.x) {
                uint32_t j = x / hd, dim = x % hd;
                float mm = -INFINITY;
                for (int w = 0; w < MXK_ATT_WARPS; w++)
                        mm = fmaxf(mm, sm_m[w][j]);
                float ll = 0, oo = 0;
                if (mm > -INFINITY)
                        for (int w = 0; w < MXK_ATT_WARPS; w++) {
                                float f = expf(sm_m[w][j] - mm);
                                ll += sm_l[w][j] * f;
                                oo += sm_o[w][j][dim] * f;
                        }
                size_t h = (size_t)row * heads + g * group + j;
                float *pp = part + (h * slices + s) * (hd + 2);
                pp[2 + dim] = oo;
                if (dim == 0)
                        pp[0] = mm, pp[1] = ll;
        }
}

__global__ static void attention_merge_kernel(const float *part, uint32_t slices, uint32_t hd, float *out) {
        size_t h = blockIdx.x; // row * heads + head
        const float *p = part + h * slices * (hd + 2);
        float mm = -INFINITY;
        for (uint32_t s = 0; s < slices; s++)
                mm = fmaxf(mm, p[s * (hd + 2)]);
        for (uint32_t dim = threadIdx.x; dim < hd; dim += blockDim.x) {
                float ll = 0, oo = 0;
                for (uint32_t s = 0; s < slices; s++) {
                        const float *ps = p + s * (hd + 2);
                        if (ps[0] == -INFINITY)
                                continue;
                        float f = expf(ps[0] - mm);
                        ll += ps[1] * f;
                        oo += ps[2 + dim] * f;
                }
                out[h * hd + dim] = oo / ll;
        }
}

template <int DPL>
static void launch_slices(mxk_ctx *c, dim3 grid, const mxk_kv *kv, const mxk_row *rows, uint32_t layer,
                          const float *q, uint32_t heads, uint32_t kv_heads, uint32_t hd, float *scratch) {
        if (kv->bf16)
                attention_slice_kernel<DPL, uint16_t><<<grid, MXK_ATT_WARPS * 32, 0, c->stream>>>(
                        *kv, rows, layer, q, heads, kv_heads, hd, scratch);
        else
                attention_slice_kernel<DPL, float><<<grid, MXK_ATT_WARPS * 32, 0, c->stream>>>(
                        *kv, rows, layer, q, heads, kv_heads, hd, scratch);
}

extern "C" void mxk_attention(mxk_ctx *c, const mxk_kv *kv, const mxk_row *rows, uint32_t n, uint32_t layer,
                              const float *q, float *out, uint32_t heads, uint32_t kv_heads, uint32_t hd,
                              uint32_t longest, float *scratch) {
        if (!n)
                return;
        uint32_t group = heads / kv_heads;
        if (group > MAX_GROUP || hd > 256 || heads % kv_heads) {
                mxk_fail(c, -EOPNOTSUPP, "attention: %u heads over %u KV heads of %u dimensions is not "
                         "supported by the CUDA kernels", heads, kv_heads, hd);
                return;
        }
        uint32_t slices = mxk_attention_slices(n, kv_heads, longest);
        dim3 grid(n, kv_heads, slices);
        if (hd <= 32)
                launch_slices<1>(c, grid, kv, rows, layer, q, heads, kv_heads, hd, scratch);
        else if (hd <= 64)
                launch_slices<2>(c, grid, kv, rows, layer, q, heads, kv_heads, hd, scratch);
        else if (hd <= 128)
                launch_slices<4>(c, grid, kv, rows, layer, q, heads, kv_heads, hd, scratch);
        else
                launch_slices<8>(c, grid, kv, rows, layer, q, heads, kv_heads, hd, scratch);
        mxk_launched(c, "attention_slice");
        attention_merge_kernel<<<n * heads, hd < 128 ? 128 : hd, 0, c->stream>>>(scratch, slices, hd, out);
        mxk_launched(c, "attention_merge");
}
