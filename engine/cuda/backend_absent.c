/* Builds without CUDA: --device cuda says why it cannot work. */
#include <errno.h>

#include "backend.h"

int mx_cuda_backend_new(const mx_model *m, int index, const mx_engine_opts *o, mx_backend **out,
                        mx_error *err) {
        return mx_error_set(err, -ENODEV,
                            "device cuda:%d: this build has no CUDA support (rebuild with nvcc and -Dcuda=enabled)",
                            index);
}
