// The ceilings the benchmark reports against, measured in the same run:
// device-to-device copy bandwidth and the rate of a large cuBLAS bf16 GEMM.
#include <cerrno>
#include <cstring>

#include "kernels_internal.h"

// Times `reps` calls of f on the stream; the best one in seconds.
template <typename F>
static double best_of(mxk_ctx *c, int reps, F f) {
        cudaEvent_t a, b;
        double best = 1e30;
        if (mxk_check(c, cudaEventCreate(&a), "cudaEventCreate") < 0)
                return best;
        if (mxk_check(c, cudaEventCreate(&b), "cudaEventCreate") == 0) {
                f(); // warm-up
                for (int i = 0; i < reps; i++) {
                        float ms = 0;
                        cudaEventRecord(a, c->stream);
                        f();
                        cudaEventRecord(b, c->stream);
                        if (mxk_check(c, cudaEventSynchronize(b), "timing") < 0)
                                break;
                        cudaEventElapsedTime(&ms, a, b);
                        best = ms * 1e-3 < best ? ms * 1e-3 : best;
                }
                cudaEventDestroy(b);
        }
        cudaEventDestroy(a);
        return best;
}

extern "C" int mxk_measure_copy(mxk_ctx *c, size_t bytes, double *gbps) {
        void *src = nullptr, *dst = nullptr;
        int r = mxk_malloc(c, &src, bytes);
        if (r == 0)
                r = mxk_malloc(c, &dst, bytes);
        if (r == 0) {
                mxk_memset(c, src, 1, bytes);
                double s = best_of(c, 5, [&] { mxk_copy(c, dst, src, bytes); });
                *gbps = 2.0 * (double)bytes / s / 1e9;
        }
        mxk_free(c, src);
        mxk_free(c, dst);
        return r < 0 ? r : mxk_status(c, nullptr, 0);
}

extern "C" int mxk_measure_upload(mxk_ctx *c, size_t bytes, double *gbps) {
        void *src = nullptr, *dst = nullptr;
        int r = mxk_host_alloc(&src, bytes);
        if (r == 0)
                r = mxk_malloc(c, &dst, bytes);
        if (r == 0) {
                memset(src, 1, bytes);
                double s = best_of(c, 5, [&] { mxk_upload(c, dst, src, bytes); });
                *gbps = (double)bytes / s / 1e9;
        }
        mxk_host_free(src);
        mxk_free(c, dst);
        return r < 0 ? r : mxk_status(c, nullptr, 0);
}

extern "C" int mxk_measure_gemm(mxk_ctx *c, uint32_t m, uint32_t n, uint32_t k, double *tflops) {
        uint16_t *a = nullptr, *b = nullptr;
        float *out = nullptr;
        int r = mxk_malloc(c, (void **)&a, (size_t)m * k * 2);
        if (r == 0)
                r = mxk_malloc(c, (void **)&b, (size_t)n * k * 2);
        if (r == 0)
                r = mxk_malloc(c, (void **)&out, (size_t)m * n * 4);
        if (r == 0) {
                // Random data: zeros run faster than real products.
                mxk_fill_synthetic(c, a, (size_t)m * k, 1, 1.0f);
                mxk_fill_synthetic(c, b, (size_t)n * k, 2, 1.0f);
                double s = best_of(c, 5, [&] { mxk_gemm_bf16(c, a, m, k, b, out, n, false); });
                *tflops = 2.0 * m * n * (double)k / s / 1e12;
        }
        mxk_free(c, a);
        mxk_free(c, b);
        mxk_free(c, out);
        return r < 0 ? r : mxk_status(c, nullptr, 0);
}
