/* Floats into a weight format. Q8_0 and Q4_0 follow gguf-py's quantizer
 * (ggml's reference) operation for operation, so that our blocks equal
 * its blocks bit for bit (tests/quant checks it); the K-quants are
 * quantize_k.c's. Used by load-time quantization (model/quantize.c) and
 * the tests. */
#include <errno.h>
#include <math.h>

#include "quant.h"

/* Q8_0: d = amax / 127, q = round half away from zero (x * (1 / d)). */
static void q8_0_block(const float *x, mx_block_q8_0 *b) {
        float amax = 0;
        for (int i = 0; i < MX_QK; i++)
                amax = fabsf(x[i]) > amax ? fabsf(x[i]) : amax;
        float d = amax / 127, id = d == 0 ? 0 : 1 / d;
        for (int i = 0; i < MX_QK; i++) {
                /* Not finite only when 1 / d overflowed (amax < 2^-121):
                 * numpy's cast to int8 gives those 0. */
                float v = roundf(x[i] * id);
                b->qs[i] = isfinite(v) ? (int8_t)v : 0;
        }
        b->d = mx_f32_to_f16(d);
}

/* Q4_0: d = -(the value of largest magnitude, the first of equals) / 8;
 * q = trunc(x * (1 / d) + 8.5), the product rounded to float before the
 * sum (no fused multiply-add: the build has -ffp-contract=off), at most
 * 15. That is what llama.cpp's llama-quantize writes on x86 and gguf-py
 * (from 0.19) computes; gguf-py 0.17 summed in double, as a fused
 * multiply-add would, and differs in about one block in a thousand. */
static void q4_0_block(const float *x, mx_block_q4_0 *b) {
        float max = 0, amax = 0;
        for (int i = 0; i < MX_QK; i++)
                if (fabsf(x[i]) > amax) {
                        amax = fabsf(x[i]);
                        max = x[i];
                }
        float d = max / -8, id = d == 0 ? 0 : 1 / d;
        uint8_t q[MX_QK];
        for (int i = 0; i < MX_QK; i++) {
                float v = truncf(x[i] * id + 8.5f);
                /* Not finite only when 1 / d overflowed (|max| < 2^-123):
                 * numpy's cast to uint8 gives those 0. */
                q[i] = !isfinite(v) ? 0 : v >= 15 ? 15 : (uint8_t)v;
        }
        for (int i = 0; i < MX_QK / 2; i++)
                b->qs[i] = (uint8_t)(q[i] | q[i + MX_QK / 2] << 4);
        b->d = mx_f32_to_f16(d);
}

int mx_quantize_row(mx_dtype t, const float *src, void *dst, uint64_t n) {
        uint32_t qk = mx_dtype_block_elems(t), bytes = mx_dtype_block_bytes(t);
        if (!qk || n % qk)
                return -EINVAL;
        uint8_t *out = dst;
        for (uint64_t i = 0; i < n; i += qk, out += bytes)
                switch (t) {
                case MX_DTYPE_F32:
                        memcpy(out, src + i, 4);
                        break;
                case MX_DTYPE_F16:
                case MX_DTYPE_BF16: {
                        uint16_t h = t == MX_DTYPE_F16 ? mx_f32_to_f16(src[i]) : mx_f32_to_bf16(src[i]);
                        memcpy(out, &h, 2);
                        break;
                }
                case MX_DTYPE_Q8_0:
                        q8_0_block(src + i, (mx_block_q8_0 *)out);
                        break;
                case MX_DTYPE_Q4_0:
                        q4_0_block(src + i, (mx_block_q4_0 *)out);
                        break;
                default:
                        mx_quantize_k_block(t, src + i, out);
                        break;
                }
        return 0;
}
