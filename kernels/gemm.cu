// Products over many tokens (prefill, batched decode) go to cuBLAS with
// fp32 accumulation and fp32 output, on tensor cores. The weights are bf16
// already; the fp32 activations enter as two bf16 terms, hi = bf16(x) and
// lo = bf16(x - hi), stacked as 2n columns of one product whose halves are
// then added: the weights are read once, and the activations keep 16 bits
// of mantissa instead of 8 (fp32 results within 1e-5 where bf16 alone gave
// 1e-2 on the test checkpoints). MX_CUDA_ACTIVATIONS=bf16 drops lo.
// Row-major W [rows][cols] is cuBLAS's column-major cols x rows, hence
// out^T = W^T-as-stored . X.
#include "kernels_internal.h"

void mxk_gemm_bf16(mxk_ctx *c, const uint16_t *W, uint32_t rows, uint32_t cols, const uint16_t *X,
                   float *out, uint32_t n, bool accumulate) {
        const float one = 1.0f, zero = 0.0f;
        mxk_blas_check(c,
                       c->fn->gemm_ex(c->blas, CUBLAS_OP_T, CUBLAS_OP_N, (int)rows, (int)n, (int)cols,
                                      &one, W, CUDA_R_16BF, (int)cols, X, CUDA_R_16BF, (int)cols,
                                      accumulate ? &one : &zero, out, CUDA_R_32F, (int)rows,
                                      CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
                       "cublasGemmEx");
        // cuBLAS reports through its status; what it leaves behind in the
        // runtime must not be blamed on our next launch.
        mxk_checkpoint(c, "cublasGemmEx");
}

__device__ static inline void split(float x, __nv_bfloat16 *hi, __nv_bfloat16 *lo) {
        *hi = __float2bfloat16_rn(x);
        *lo = __float2bfloat16_rn(x - __bfloat162float(*hi));
}

// Rows of x (all, or those listed) as hi terms in rows [0, n) of dst and
// lo terms in rows [n, 2n).
__global__ static void split_rows_kernel(const float *x, const uint32_t *list, uint32_t cols, uint32_t n,
                                         bool with_lo, __nv_bfloat16 *dst) {
        uint32_t j = blockIdx.y;
        const float *src = x + (size_t)(list ? list[j] : j) * cols;
        for (uint32_t i = blockIdx.x * blockDim.x + threadIdx.x; i < cols; i += gridDim.x * blockDim.x) {
                __nv_bfloat16 hi, lo;
                split(src[i], &hi, &lo);
                dst[(size_t)j * cols + i] = hi;
                if (with_lo)
                        dst[((size_t)n + j) * cols + i] = lo;
        }
}

// out[i] (+)= t[i] + t[m + i]: the two terms' products added.
__global__ static void add_terms_kernel(const float *t, size_t m, bool two, bool accumulate, float *out) {
        for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < m;
             i += (size_t)gridDim.x * blockDim.x) {
                float s = two ? t[i] + t[m + i] : t[i];
                out[i] = accumulate ? out[i] + s : s;
        }
}

// x [n][cols] (rows `list` of x when given) times W into out [n][rows].
static void gemm_terms(mxk_ctx *c, const uint16_t *W, uint32_t rows, uint32_t cols, const float *x,
                       const uint32_t *list, float *out, uint32_t n, bool accumulate, uint16_t *scratch) {
        uint32_t terms = c->split ? 2 : 1;
        dim3 grid((cols + 255) / 256, n);
        split_rows_kernel<<<grid, 256, 0, c->stream>>>(x, list, cols, n, c->split, (__nv_bfloat16 *)scratch);
        mxk_launched(c, "split_rows");
        float *t = mxk_tmp(c, (size_t)terms * n * rows);
        if (!t)
                return;
        mxk_gemm_bf16(c, W, rows, cols, scratch, t, terms * n, false);
        size_t m = (size_t)n * rows;
        add_terms_kernel<<<mxk_blocks(m, 256), 256, 0, c->stream>>>(t, m, c->split, accumulate, out);
        mxk_launched(c, "add_terms");
}

extern "C" void mxk_matmul(mxk_ctx *c, const uint16_t *W, uint32_t rows, uint32_t cols,
                           const float *x, float *out, uint32_t n, bool accumulate,
                           uint16_t *scratch) {
        if (!n)
                return;
        if (n <= MXK_GEMV_MAX)
                mxk_gemv(c, W, rows, cols, x, out, n, accumulate);
        else
                gemm_terms(c, W, rows, cols, x, nullptr, out, n, accumulate, scratch);
}

// act[j][f] = silu(g) * u of the summed terms of h [terms*n][2F].
__global__ static void swiglu_kernel(const float *h, uint32_t F, uint32_t n, bool two, float *act) {
        size_t total = (size_t)n * F;
        for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total;
             i += (size_t)gridDim.x * blockDim.x) {
                size_t j = i / F, f = i % F;
                const float *a = h + j * 2 * F, *b = h + (n + j) * 2 * F;
                float g = two ? a[f] + b[f] : a[f], u = two ? a[F + f] + b[F + f] : a[F + f];
                act[i] = g / (1.0f + expf(-g)) * u;
        }
}

void mxk_expert_gemm(mxk_ctx *c, const uint16_t *w13, const uint16_t *w2, const uint32_t *list_tok,
                     uint32_t cnt, const float *x, const mxk_moe_buffers *b, float *y, uint32_t H,
                     uint32_t F) {
        uint32_t terms = c->split ? 2 : 1;
        dim3 grid((H + 255) / 256, cnt);
        split_rows_kernel<<<grid, 256, 0, c->stream>>>(x, list_tok, H, cnt, c->split, (__nv_bfloat16 *)b->xe);
        mxk_launched(c, "split_rows");
        mxk_gemm_bf16(c, w13, 2 * F, H, b->xe, b->h13, terms * cnt, false);
        // act (fp32), then its terms for w2.
        float *act = b->act;
        size_t total = (size_t)cnt * F;
        swiglu_kernel<<<mxk_blocks(total, 256), 256, 0, c->stream>>>(b->h13, F, cnt, c->split, act);
        mxk_launched(c, "swiglu");
        dim3 grid2((F + 255) / 256, cnt);
        split_rows_kernel<<<grid2, 256, 0, c->stream>>>(act, nullptr, F, cnt, c->split, (__nv_bfloat16 *)b->act16);
        mxk_launched(c, "split_rows");
        mxk_gemm_bf16(c, w2, H, F, b->act16, b->ytmp, terms * cnt, false);
        size_t m = (size_t)cnt * H;
        add_terms_kernel<<<mxk_blocks(m, 256), 256, 0, c->stream>>>(b->ytmp, m, c->split, false, y);
        mxk_launched(c, "add_terms");
}
