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

// xe[e] = the hi terms of expert e's tokens in rows [0, n) and their lo
// terms in rows [n, 2n); rows past the expert's count are zero.
__global__ static void split_padded_kernel(const float *x, const uint32_t *counts, const uint32_t *list_tok,
                                           uint32_t H, uint32_t n, bool with_lo, __nv_bfloat16 *xe) {
        uint32_t j = blockIdx.y, e = blockIdx.z;
        bool live = j < counts[e];
        const float *src = x + (size_t)(live ? list_tok[(size_t)e * n + j] : 0) * H;
        __nv_bfloat16 *dst = xe + (size_t)e * 2 * n * H;
        for (uint32_t i = blockIdx.x * blockDim.x + threadIdx.x; i < H; i += gridDim.x * blockDim.x) {
                __nv_bfloat16 hi, lo;
                split(live ? src[i] : 0.0f, &hi, &lo);
                dst[(size_t)j * H + i] = hi;
                if (with_lo)
                        dst[((size_t)n + j) * H + i] = lo;
        }
}

// For E blocks of terms*n rows: act[e][j] = silu(g) * u, then its terms.
__global__ static void swiglu_padded_kernel(const float *h, uint32_t F, uint32_t n, bool two,
                                            __nv_bfloat16 *act16) {
        // Each expert's block holds 2n rows (lo terms from row n), used or not.
        uint32_t j = blockIdx.y, e = blockIdx.z;
        const float *a = h + ((size_t)e * 2 * n + j) * 2 * F, *b = a + (size_t)n * 2 * F;
        __nv_bfloat16 *dst = act16 + (size_t)e * 2 * n * F;
        for (uint32_t f = blockIdx.x * blockDim.x + threadIdx.x; f < F; f += gridDim.x * blockDim.x) {
                float g = two ? a[f] + b[f] : a[f], u = two ? a[F + f] + b[F + f] : a[F + f];
                __nv_bfloat16 hi, lo;
                split(g / (1.0f + expf(-g)) * u, &hi, &lo);
                dst[(size_t)j * F + f] = hi;
                if (two)
                        dst[((size_t)n + j) * F + f] = lo;
        }
}

// y[e][j] = the sum of the two terms' rows of ytmp[e].
__global__ static void add_padded_kernel(const float *t, uint32_t H, uint32_t n, bool two, float *y) {
        uint32_t j = blockIdx.y, e = blockIdx.z;
        const float *a = t + ((size_t)e * 2 * n + j) * H, *b = a + (size_t)n * H;
        float *dst = y + ((size_t)e * n + j) * H;
        for (uint32_t i = blockIdx.x * blockDim.x + threadIdx.x; i < H; i += gridDim.x * blockDim.x)
                dst[i] = two ? a[i] + b[i] : a[i];
}

static void gemm_batched(mxk_ctx *c, const uint16_t *W, uint32_t rows, uint32_t cols, long long w_stride,
                         const uint16_t *X, uint32_t n, long long x_stride, float *out, long long out_stride,
                         uint32_t batch) {
        const float one = 1.0f, zero = 0.0f;
        mxk_blas_check(c,
                       c->fn->gemm_strided_batched_ex(c->blas, CUBLAS_OP_T, CUBLAS_OP_N, (int)rows, (int)n,
                                                      (int)cols, &one, W, CUDA_R_16BF, (int)cols, w_stride, X,
                                                      CUDA_R_16BF, (int)cols, x_stride, &zero, out, CUDA_R_32F,
                                                      (int)rows, out_stride, (int)batch, CUBLAS_COMPUTE_32F,
                                                      CUBLAS_GEMM_DEFAULT),
                       "cublasGemmStridedBatchedEx");
        mxk_checkpoint(c, "cublasGemmStridedBatchedEx");
}

void mxk_expert_gemm_padded(mxk_ctx *c, const uint16_t *w13, const uint16_t *w2, const float *x,
                            const mxk_moe_buffers *b, uint32_t n, uint32_t E, uint32_t H, uint32_t F) {
        uint32_t terms = c->split ? 2 : 1, rows = terms * n;
        split_padded_kernel<<<dim3((H + 255) / 256, n, E), 256, 0, c->stream>>>(x, b->counts, b->list_tok, H, n,
                                                                               c->split, (__nv_bfloat16 *)b->xe);
        mxk_launched(c, "split_padded");
        gemm_batched(c, w13, 2 * F, H, (long long)2 * F * H, b->xe, rows, (long long)2 * n * H, b->h13,
                     (long long)2 * n * 2 * F, E);
        swiglu_padded_kernel<<<dim3((F + 255) / 256, n, E), 256, 0, c->stream>>>(b->h13, F, n, c->split,
                                                                                (__nv_bfloat16 *)b->act16);
        mxk_launched(c, "swiglu_padded");
        gemm_batched(c, w2, H, F, (long long)H * F, b->act16, rows, (long long)2 * n * F, b->ytmp,
                     (long long)2 * n * H, E);
        add_padded_kernel<<<dim3((H + 255) / 256, n, E), 256, 0, c->stream>>>(b->ytmp, H, n, c->split, b->y);
        mxk_launched(c, "add_padded");
}
