// The context every launch goes through: one stream, cuBLAS (loaded with
// dlopen, so a binary without a GPU never needs CUDA's libraries), pinned
// staging buffers for loading, and the first error.
#include <dlfcn.h>
#include <pthread.h>

#include <cerrno>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "kernels_internal.h"

int mxk_fail(mxk_ctx *c, int code, const char *fmt, ...) {
        if (c->err == 0) {
                va_list ap;
                va_start(ap, fmt);
                vsnprintf(c->why, sizeof(c->why), fmt, ap);
                va_end(ap);
                c->err = code;
        }
        return code;
}

int mxk_check(mxk_ctx *c, cudaError_t e, const char *what) {
        if (e == cudaSuccess)
                return 0;
        return mxk_fail(c, e == cudaErrorMemoryAllocation ? -ENOMEM : -EIO, "%s: %s", what,
                        cudaGetErrorString(e));
}

int mxk_blas_check(mxk_ctx *c, cublasStatus_t s, const char *what) {
        if (s == CUBLAS_STATUS_SUCCESS)
                return 0;
        return mxk_fail(c, s == CUBLAS_STATUS_ALLOC_FAILED ? -ENOMEM : -EIO, "%s: cuBLAS status %d",
                        what, (int)s);
}

static mxk_blas blas_fn;
static char blas_why[256];
static pthread_once_t blas_once = PTHREAD_ONCE_INIT;

static void load_blas(void) {
        static const char *const names[] = {"libcublas.so.13", "libcublas.so.12", "libcublas.so"};
        void *h = nullptr;
        for (const char *n : names)
                if ((h = dlopen(n, RTLD_NOW | RTLD_LOCAL)))
                        break;
        if (!h) {
                snprintf(blas_why, sizeof(blas_why),
                         "cannot load cuBLAS (libcublas.so.13 or .12): %s; install CUDA's cuBLAS or "
                         "add its directory to LD_LIBRARY_PATH",
                         dlerror());
                return;
        }
        mxk_blas f;
        f.create = (decltype(f.create))dlsym(h, "cublasCreate_v2");
        f.destroy = (decltype(f.destroy))dlsym(h, "cublasDestroy_v2");
        f.set_stream = (decltype(f.set_stream))dlsym(h, "cublasSetStream_v2");
        f.set_math_mode = (decltype(f.set_math_mode))dlsym(h, "cublasSetMathMode");
        f.gemm_ex = (decltype(f.gemm_ex))dlsym(h, "cublasGemmEx");
        f.gemm_strided_batched_ex = (decltype(f.gemm_strided_batched_ex))dlsym(h, "cublasGemmStridedBatchedEx");
        f.set_workspace = (decltype(f.set_workspace))dlsym(h, "cublasSetWorkspace_v2");
        if (!f.create || !f.destroy || !f.set_stream || !f.set_math_mode || !f.gemm_ex ||
            !f.gemm_strided_batched_ex || !f.set_workspace) {
                snprintf(blas_why, sizeof(blas_why), "cuBLAS lacks an entry point this build needs");
                return;
        }
        blas_fn = f;
}

extern "C" int mxk_ctx_new(int index, mxk_ctx **out, char *why, size_t why_len) {
        pthread_once(&blas_once, load_blas);
        if (!blas_fn.create) {
                snprintf(why, why_len, "%s", blas_why);
                return -ENOENT;
        }
        mxk_ctx *c = (mxk_ctx *)calloc(1, sizeof(*c));
        if (!c) {
                snprintf(why, why_len, "out of memory");
                return -ENOMEM;
        }
        c->device = index;
        c->fn = &blas_fn;
        const char *act = getenv("MX_CUDA_ACTIVATIONS");
        c->split = !(act && strcmp(act, "bf16") == 0);
        int r = mxk_check(c, cudaSetDevice(index), "cudaSetDevice");
        if (r == 0)
                r = mxk_check(c, cudaStreamCreateWithFlags(&c->stream, cudaStreamNonBlocking),
                              "cudaStreamCreate");
        if (r == 0 && (r = mxk_blas_check(c, blas_fn.create(&c->blas), "cublasCreate")) == 0) {
                r = mxk_blas_check(c, blas_fn.set_stream(c->blas, c->stream), "cublasSetStream");
                if (r == 0)
                        r = mxk_blas_check(c, blas_fn.set_math_mode(c->blas, CUBLAS_DEFAULT_MATH),
                                           "cublasSetMathMode");
                if (r == 0)
                        r = mxk_check(c, cudaMalloc(&c->blas_workspace, MXK_BLAS_WORKSPACE), "cudaMalloc (cuBLAS workspace)");
                if (r == 0)
                        r = mxk_blas_check(c, blas_fn.set_workspace(c->blas, c->blas_workspace, MXK_BLAS_WORKSPACE),
                                           "cublasSetWorkspace");
        }
        for (int i = 0; r == 0 && i < MXK_STAGES; i++) {
                r = mxk_check(c, cudaHostAlloc(&c->stage[i], MXK_STAGE_BYTES, cudaHostAllocDefault),
                              "cudaHostAlloc (staging)");
                if (r == 0)
                        r = mxk_check(c, cudaEventCreateWithFlags(&c->stage_done[i], cudaEventDisableTiming),
                                      "cudaEventCreate");
        }
        for (int i = 0; r == 0 && i < MXK_MARKS; i++)
                r = mxk_check(c, cudaEventCreateWithFlags(&c->marks[i], cudaEventDisableTiming),
                              "cudaEventCreate");
        if (r < 0) {
                snprintf(why, why_len, "%s", c->why);
                mxk_ctx_free(c);
                return r;
        }
        *out = c;
        return 0;
}

extern "C" void mxk_ctx_free(mxk_ctx *c) {
        if (!c)
                return;
        if (c->stream)
                cudaStreamSynchronize(c->stream);
        for (int i = 0; i < MXK_STAGES; i++) {
                if (c->stage[i])
                        cudaFreeHost(c->stage[i]);
                if (c->stage_done[i])
                        cudaEventDestroy(c->stage_done[i]);
        }
        for (int i = 0; i < MXK_MARKS; i++)
                if (c->marks[i])
                        cudaEventDestroy(c->marks[i]);
        if (c->blas)
                c->fn->destroy(c->blas);
        if (c->blas_workspace)
                cudaFree(c->blas_workspace);
        if (c->tmp)
                cudaFree(c->tmp);
        if (c->prof) {
                mxk_prof_report(c);
                free(c->prof); // (its events go with the process)
        }
        if (c->copy_stream) {
                cudaStreamSynchronize(c->copy_stream);
                cudaStreamDestroy(c->copy_stream);
        }
        if (c->stream)
                cudaStreamDestroy(c->stream);
        free(c);
}

float *mxk_tmp(mxk_ctx *c, size_t n) {
        if (n <= c->tmp_cap)
                return c->tmp;
        if (c->tmp)
                mxk_check(c, cudaFree(c->tmp), "cudaFree (cuBLAS output)");
        c->tmp = nullptr;
        c->tmp_cap = 0;
        if (mxk_check(c, cudaMalloc((void **)&c->tmp, n * sizeof(float)), "cudaMalloc (cuBLAS output)") < 0)
                return nullptr;
        c->tmp_cap = n;
        return c->tmp;
}

extern "C" int mxk_reserve_tmp(mxk_ctx *c, size_t floats) {
        return mxk_tmp(c, floats) ? 0 : -ENOMEM;
}

extern "C" void mxk_bind_thread(mxk_ctx *c) {
        mxk_check(c, cudaSetDevice(c->device), "cudaSetDevice");
}

extern "C" int mxk_status(mxk_ctx *c, char *why, size_t why_len) {
        if (c->err && why && why_len)
                snprintf(why, why_len, "%s", c->why);
        return c->err;
}

extern "C" int mxk_sync(mxk_ctx *c, char *why, size_t why_len) {
        mxk_check(c, cudaStreamSynchronize(c->stream), "synchronising the stream");
        return mxk_status(c, why, why_len);
}

extern "C" int mxk_malloc(mxk_ctx *c, void **p, size_t bytes) {
        cudaError_t e = cudaMalloc(p, bytes ? bytes : 1);
        if (e != cudaSuccess) {
                cudaGetLastError(); // an allocation failure is the caller's to report
                *p = nullptr;
                return e == cudaErrorMemoryAllocation ? -ENOMEM : mxk_check(c, e, "cudaMalloc");
        }
        return 0;
}

extern "C" void mxk_free(mxk_ctx *c, void *p) {
        if (p)
                mxk_check(c, cudaFree(p), "cudaFree");
}

extern "C" int mxk_memset(mxk_ctx *c, void *p, int value, size_t bytes) {
        return mxk_check(c, cudaMemsetAsync(p, value, bytes, c->stream), "cudaMemsetAsync");
}

extern "C" int mxk_free_memory(mxk_ctx *c, size_t *free_bytes, size_t *total_bytes) {
        return mxk_check(c, cudaMemGetInfo(free_bytes, total_bytes), "cudaMemGetInfo");
}

extern "C" int mxk_host_alloc(void **p, size_t bytes) {
        if (cudaHostAlloc(p, bytes ? bytes : 1, cudaHostAllocDefault) != cudaSuccess) {
                cudaGetLastError();
                *p = nullptr;
                return -ENOMEM;
        }
        return 0;
}

// Seen on an H100 with the GPU's memory nearly full: cudaFreeHost of a
// valid pinned block failing with "invalid argument". The block is then
// lost, but the error must not stay behind to be blamed on the next launch;
// callers size their pinned buffers up front so this is rare.
extern "C" void mxk_host_free(void *p) {
        if (p && cudaFreeHost(p) != cudaSuccess)
                cudaGetLastError();
}

extern "C" void mxk_checkpoint(mxk_ctx *c, const char *where) {
        cudaError_t e = cudaGetLastError();
        if (e != cudaSuccess)
                mxk_fail(c, -EIO, "%s: an unchecked CUDA call failed: %s", where, cudaGetErrorString(e));
}

extern "C" void mxk_upload(mxk_ctx *c, void *dst, const void *src, size_t bytes) {
        if (bytes)
                mxk_check(c, cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, c->stream),
                          "host-to-device copy");
}

extern "C" void mxk_copy(mxk_ctx *c, void *dst, const void *src, size_t bytes) {
        if (bytes)
                mxk_check(c, cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, c->stream),
                          "device-to-device copy");
}

extern "C" int mxk_download(mxk_ctx *c, void *dst, const void *src, size_t bytes) {
        if (bytes)
                mxk_check(c, cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, c->stream),
                          "device-to-host copy");
        return mxk_sync(c, nullptr, 0);
}

extern "C" void *mxk_stage_acquire(mxk_ctx *c, size_t *cap) {
        int i = c->stage_next;
        mxk_check(c, cudaEventSynchronize(c->stage_done[i]), "waiting for a staging buffer");
        *cap = MXK_STAGE_BYTES;
        return c->stage[i];
}

extern "C" void mxk_stage_submit(mxk_ctx *c, void *dst, size_t bytes) {
        int i = c->stage_next;
        mxk_upload(c, dst, c->stage[i], bytes);
        mxk_check(c, cudaEventRecord(c->stage_done[i], c->stream), "cudaEventRecord");
        c->stage_next = (i + 1) % MXK_STAGES;
}

extern "C" void mxk_mark(mxk_ctx *c, int slot) {
        mxk_check(c, cudaEventRecord(c->marks[slot], c->stream), "cudaEventRecord");
}

extern "C" void mxk_wait_mark(mxk_ctx *c, int slot) {
        mxk_check(c, cudaEventSynchronize(c->marks[slot]), "cudaEventSynchronize");
}

// ---- CUDA graphs: a decode step recorded once, replayed while its shapes hold.

extern "C" int mxk_capture_begin(mxk_ctx *c) {
        return mxk_check(c, cudaStreamBeginCapture(c->stream, cudaStreamCaptureModeThreadLocal),
                         "cudaStreamBeginCapture");
}

extern "C" int mxk_capture_end(mxk_ctx *c, void **exec) {
        cudaGraph_t g = nullptr;
        cudaGraphExec_t e = nullptr;
        *exec = nullptr;
        int r = mxk_check(c, cudaStreamEndCapture(c->stream, &g), "cudaStreamEndCapture");
        if (r == 0)
                r = mxk_check(c, cudaGraphInstantiate(&e, g, 0), "cudaGraphInstantiate");
        if (g)
                cudaGraphDestroy(g);
        if (r == 0)
                *exec = e;
        return r;
}

extern "C" int mxk_graph_launch(mxk_ctx *c, void *exec) {
        return mxk_check(c, cudaGraphLaunch((cudaGraphExec_t)exec, c->stream), "cudaGraphLaunch");
}

extern "C" void mxk_graph_free(void *exec) {
        if (exec)
                cudaGraphExecDestroy((cudaGraphExec_t)exec);
}
