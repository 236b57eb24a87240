/* Rows of any weight format to float, for everything that reads weights
 * one row at a time: embeddings, norms, the f32 reference kernel, the GPU's
 * upload. Values are exactly gguf-py's (quant.h). */
#include <errno.h>

#include "quant.h"

int mx_dequant_row(mx_dtype t, const void *src, float *dst, uint64_t n) {
        uint32_t qk = mx_dtype_block_elems(t), bytes = mx_dtype_block_bytes(t);
        if (!qk || n % qk)
                return -EINVAL;
        const uint8_t *p = src;
        if (!mx_dtype_is_block(t)) {
                if (t == MX_DTYPE_F32)
                        memcpy(dst, src, n * sizeof(float));
                else
                        for (uint64_t i = 0; i < n; i++)
                                dst[i] = mx_element_f32(p, t, i);
                return 0;
        }
        for (uint64_t b = 0; b < n / qk; b++)
                mx_dequant_block(t, p + b * bytes, dst + b * qk);
        return 0;
}
