// Streamed experts: host-to-device copies on a stream of their own, and the
// events that order them against the compute stream on the device.
#include <cerrno>
#include <cuda_fp16.h>

#include "kernels_internal.h"

static cudaStream_t copy_stream(mxk_ctx *c) {
        if (!c->copy_stream)
                mxk_check(c, cudaStreamCreateWithFlags(&c->copy_stream, cudaStreamNonBlocking),
                          "cudaStreamCreate (copies)");
        return c->copy_stream;
}

static cudaEvent_t ev(mxk_event *e) {
        return reinterpret_cast<cudaEvent_t>(e);
}

extern "C" int mxk_event_new(mxk_ctx *c, mxk_event **e) {
        cudaEvent_t x = nullptr;
        int r = mxk_check(c, cudaEventCreateWithFlags(&x, cudaEventDisableTiming), "cudaEventCreate");
        *e = r < 0 ? nullptr : reinterpret_cast<mxk_event *>(x);
        return r;
}

extern "C" void mxk_event_free(mxk_event *e) {
        if (e)
                cudaEventDestroy(ev(e));
}

extern "C" void mxk_event_record(mxk_ctx *c, mxk_event *e, bool copy) {
        mxk_check(c, cudaEventRecord(ev(e), copy ? copy_stream(c) : c->stream), "cudaEventRecord");
}

extern "C" void mxk_event_wait(mxk_ctx *c, mxk_event *e, bool copy) {
        mxk_check(c, cudaStreamWaitEvent(copy ? copy_stream(c) : c->stream, ev(e), 0), "cudaStreamWaitEvent");
}

extern "C" bool mxk_event_done(mxk_ctx *c, mxk_event *e) {
        cudaError_t r = cudaEventQuery(ev(e));
        if (r == cudaErrorNotReady) {
                cudaGetLastError(); // not an error: still running
                return false;
        }
        // A real failure is recorded; the caller's next status check sees it.
        return mxk_check(c, r, "cudaEventQuery") == 0;
}

extern "C" int mxk_event_sync(mxk_ctx *c, mxk_event *e) {
        return mxk_check(c, cudaEventSynchronize(ev(e)), "cudaEventSynchronize");
}

extern "C" void mxk_copy_upload(mxk_ctx *c, void *dst, const void *src, size_t bytes) {
        if (bytes)
                mxk_check(c, cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, copy_stream(c)),
                          "host-to-device copy (experts)");
}

__global__ static void copy_to_bf16_kernel(const void *src, int dtype, uint16_t *dst, size_t n) {
        for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
             i += (size_t)gridDim.x * blockDim.x) {
                float v = dtype == MXK_F16 ? __half2float(((const __half *)src)[i]) : ((const float *)src)[i];
                __nv_bfloat16 b = __float2bfloat16_rn(v);
                dst[i] = *(uint16_t *)&b;
        }
}

extern "C" void mxk_copy_to_bf16(mxk_ctx *c, const void *src, int dtype, uint16_t *dst, size_t n) {
        if (!n)
                return;
        copy_to_bf16_kernel<<<mxk_blocks(n, 256), 256, 0, copy_stream(c)>>>(src, dtype, dst, n);
        mxk_launched(c, "copy_to_bf16");
}

extern "C" int mxk_host_register(void *p, size_t bytes) {
        if (cudaHostRegister(p, bytes, cudaHostRegisterDefault) != cudaSuccess) {
                cudaGetLastError(); // the caller copies from pageable memory instead
                return -ENOMEM;
        }
        return 0;
}

extern "C" void mxk_host_unregister(void *p) {
        if (p && cudaHostUnregister(p) != cudaSuccess)
                cudaGetLastError();
}
