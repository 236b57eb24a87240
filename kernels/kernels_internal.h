// What the .cu files of kernels/ share: the context, error recording and
// the cuBLAS entry points loaded at run time. Private to kernels/.
#pragma once

#include <cublas_api.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include "mixtral_kernels.h"

#define MXK_STAGES 3
#define MXK_STAGE_BYTES ((size_t)32 << 20)

typedef struct mxk_blas {
        cublasStatus_t (*create)(cublasHandle_t *);
        cublasStatus_t (*destroy)(cublasHandle_t);
        cublasStatus_t (*set_stream)(cublasHandle_t, cudaStream_t);
        cublasStatus_t (*set_math_mode)(cublasHandle_t, cublasMath_t);
        cublasStatus_t (*gemm_ex)(cublasHandle_t, cublasOperation_t, cublasOperation_t, int, int,
                                  int, const void *, const void *, cudaDataType, int, const void *,
                                  cudaDataType, int, const void *, void *, cudaDataType, int,
                                  cublasComputeType_t, cublasGemmAlgo_t);
        cublasStatus_t (*gemm_strided_batched_ex)(cublasHandle_t, cublasOperation_t, cublasOperation_t,
                                                  int, int, int, const void *, const void *, cudaDataType,
                                                  int, long long, const void *, cudaDataType, int,
                                                  long long, const void *, void *, cudaDataType, int,
                                                  long long, int, cublasComputeType_t, cublasGemmAlgo_t);
        cublasStatus_t (*set_workspace)(cublasHandle_t, void *, size_t);
} mxk_blas;

struct mxk_ctx {
        int device;
        cudaStream_t stream;
        cublasHandle_t blas;
        const mxk_blas *fn;
        int err;
        char why[256];
        void *stage[MXK_STAGES];
        cudaEvent_t stage_done[MXK_STAGES];
        int stage_next;
        cudaEvent_t marks[MXK_MARKS];
        // Activations enter cuBLAS as hi + lo bf16 terms (see gemm.cu).
        bool split;
        float *tmp;      // cuBLAS output of the two terms, before they are added
        size_t tmp_cap;  // floats
        struct mxk_prof *prof;
        cudaStream_t copy_stream; // host-to-device copies of streamed experts (transfer.cu)
        void *blas_workspace; // ours, so cuBLAS never allocates inside a graph capture
};

#define MXK_BLAS_WORKSPACE ((size_t)64 << 20)

// Grows c->tmp to n floats; NULL (error recorded) when out of memory.
float *mxk_tmp(mxk_ctx *c, size_t n);

// Records the first error; returns the errno-style code.
int mxk_fail(mxk_ctx *c, int code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
// Records a CUDA error (if any) against `what`; 0 when e is cudaSuccess.
int mxk_check(mxk_ctx *c, cudaError_t e, const char *what);
// After a launch: the launch error, if any.
static inline void mxk_launched(mxk_ctx *c, const char *kernel) {
        mxk_check(c, cudaGetLastError(), kernel);
}
int mxk_blas_check(mxk_ctx *c, cublasStatus_t s, const char *what);

// C (f32, ld = rows) (+)= W (bf16 [rows][cols]) . X (bf16 [n][cols]).
void mxk_gemm_bf16(mxk_ctx *c, const uint16_t *W, uint32_t rows, uint32_t cols, const uint16_t *X,
                   float *out, uint32_t n, bool accumulate);

static inline unsigned mxk_blocks(size_t n, unsigned threads) {
        size_t b = (n + threads - 1) / threads;
        return (unsigned)(b < 65535 * 16 ? (b ? b : 1) : 65535 * 16);
}

void mxk_gemv(mxk_ctx *c, const uint16_t *W, uint32_t rows, uint32_t cols, const float *x, float *out,
              uint32_t n, bool accumulate);
void mxk_expert_gemv(mxk_ctx *c, const uint16_t *const *w13, const uint16_t *const *w2,
                     const uint32_t *counts, const uint32_t *list_tok, const float *x, float *act,
                     float *y, uint32_t n, uint32_t E, uint32_t k, uint32_t H, uint32_t F);
// Every expert of a layer at once for n tokens padded per expert (no host
// synchronisation): w13 and w2 are the layer's contiguous expert blocks.
void mxk_expert_gemm_padded(mxk_ctx *c, const uint16_t *w13, const uint16_t *w2, const float *x,
                            const mxk_moe_buffers *b, uint32_t n, uint32_t E, uint32_t H, uint32_t F);
void mxk_expert_gemm(mxk_ctx *c, const uint16_t *w13, const uint16_t *w2, const uint32_t *list_tok,
                     uint32_t cnt, const float *x, const mxk_moe_buffers *b, float *y, uint32_t H,
                     uint32_t F);
