// Device discovery and a self-test that runs a real kernel: the first thing
// to check on a new machine, and what tells a user without a GPU why
// --device cuda cannot work.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <vector>

#include "mixtral_kernels.h"

static int fail(char *why, size_t len, const char *what, cudaError_t e) {
        if (why && len)
                snprintf(why, len, "%s: %s", what, cudaGetErrorString(e));
        return e == cudaErrorMemoryAllocation ? -ENOMEM : -ENODEV;
}

#define CHECK(call)                                                                                \
        do {                                                                                       \
                cudaError_t e_ = (call);                                                           \
                if (e_ != cudaSuccess)                                                             \
                        return fail(why, why_len, #call, e_);                                      \
        } while (0)

extern "C" int mxk_device_count(char *why, size_t why_len) {
        int n = 0;
        cudaError_t e = cudaGetDeviceCount(&n);
        if (e == cudaErrorInsufficientDriver && why && why_len) {
                snprintf(why, why_len,
                         "no NVIDIA driver, or one older than this build's CUDA %d.%d runtime needs",
                         CUDART_VERSION / 1000, CUDART_VERSION % 1000 / 10);
                return 0;
        }
        if (e != cudaSuccess) {
                fail(why, why_len, "no usable CUDA device", e);
                return 0;
        }
        if (n == 0 && why && why_len)
                snprintf(why, why_len, "no CUDA device found");
        return n;
}

extern "C" int mxk_device_query(int index, mxk_device *d, char *why, size_t why_len) {
        cudaDeviceProp p;
        CHECK(cudaGetDeviceProperties(&p, index));
        CHECK(cudaSetDevice(index));
        size_t free_b = 0, total_b = 0;
        CHECK(cudaMemGetInfo(&free_b, &total_b));
        std::memset(d, 0, sizeof(*d));
        d->index = index;
        std::snprintf(d->name, sizeof(d->name), "%s", p.name);
        d->cc_major = p.major;
        d->cc_minor = p.minor;
        d->multiprocessors = p.multiProcessorCount;
        d->total_bytes = total_b;
        d->free_bytes = free_b;
        return 0;
}

__global__ void bf16_to_f32_kernel(const __nv_bfloat16 *in, float *out, size_t n) {
        for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
             i += (size_t)gridDim.x * blockDim.x)
                out[i] = __bfloat162float(in[i]);
}

extern "C" int mxk_bf16_to_f32(const uint16_t *d_in, float *d_out, size_t n, void *stream) {
        if (n == 0)
                return 0;
        unsigned blocks = (unsigned)((n + 255) / 256 < 4096 ? (n + 255) / 256 : 4096);
        bf16_to_f32_kernel<<<blocks, 256, 0, (cudaStream_t)stream>>>(
                reinterpret_cast<const __nv_bfloat16 *>(d_in), d_out, n);
        return cudaGetLastError() == cudaSuccess ? 0 : -EIO;
}

struct device_buffers {
        uint16_t *in = nullptr;
        float *out = nullptr;
        ~device_buffers() {
                cudaFree(in);
                cudaFree(out);
        }
};

extern "C" int mxk_device_selftest(int index, char *why, size_t why_len) {
        const size_t n = 1 << 20;
        std::vector<uint16_t> host(n);
        std::vector<float> back(n);
        for (size_t i = 0; i < n; i++)
                host[i] = (uint16_t)(0x3f80 + (i % 0x3f00)); // finite values from 1.0 up
        device_buffers b;
        CHECK(cudaSetDevice(index));
        CHECK(cudaMalloc(&b.in, n * sizeof(uint16_t)));
        CHECK(cudaMalloc(&b.out, n * sizeof(float)));
        CHECK(cudaMemcpy(b.in, host.data(), n * sizeof(uint16_t), cudaMemcpyHostToDevice));
        if (mxk_bf16_to_f32(b.in, b.out, n, nullptr) < 0)
                return fail(why, why_len, "bf16_to_f32 launch", cudaGetLastError());
        CHECK(cudaDeviceSynchronize());
        CHECK(cudaMemcpy(back.data(), b.out, n * sizeof(float), cudaMemcpyDeviceToHost));
        for (size_t i = 0; i < n; i++) {
                uint32_t bits = (uint32_t)host[i] << 16;
                float want;
                std::memcpy(&want, &bits, 4);
                if (back[i] != want) {
                        if (why && why_len)
                                snprintf(why, why_len, "self-test: element %zu is %g, expected %g", i,
                                         (double)back[i], (double)want);
                        return -EIO;
                }
        }
        return 0;
}
