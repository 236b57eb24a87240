/* The portable kernel: the reference every SIMD kernel must equal bit for
 * bit (see kernels.h for the summation order). fmaf is the fused
 * multiply-add the vector units do. */
#include <math.h>
#include <string.h>

#include "quant.h"
#include "kernels.h"

static float dot_row(const uint8_t *row, mx_dtype dt, const float *x, uint64_t cols) {
        float lane[16] = {0};
        for (uint64_t k0 = 0; k0 < cols; k0 += 16)
                for (int j = 0; j < 16; j++) {
                        uint64_t k = k0 + (uint64_t)j;
                        float w = k < cols ? mx_element_f32(row, dt, k) : 0.0f;
                        float v = k < cols ? x[k] : 0.0f;
                        lane[j] = fmaf(w, v, lane[j]);
                }
        return mx_reduce16(lane);
}

static void matmul_rows(const mx_matmul_args *a, uint64_t r0, uint64_t r1) {
        uint64_t row_bytes = 0;
        mx_dtype_row_bytes(a->dtype, a->cols, &row_bytes);
        for (uint64_t r = r0; r < r1; r++)
                for (uint32_t t = 0; t < a->n; t++) {
                        float s = dot_row(a->w + r * row_bytes, a->dtype, a->x + t * a->ldx, a->cols);
                        float *o = a->out + t * a->ldo + r;
                        *o = a->accumulate ? *o + s : s;
                }
}

static float dot(const float *a, const float *b, uint64_t n) {
        float lane[16] = {0};
        for (uint64_t k0 = 0; k0 < n; k0 += 16)
                for (int j = 0; j < 16; j++) {
                        uint64_t k = k0 + (uint64_t)j;
                        lane[j] = fmaf(k < n ? a[k] : 0.0f, k < n ? b[k] : 0.0f, lane[j]);
                }
        return mx_reduce16(lane);
}

static void axpy(float a, const float *x, float *y, uint64_t n) {
        for (uint64_t i = 0; i < n; i++)
                y[i] = fmaf(a, x[i], y[i]);
}

const mx_kernels mx_kernels_scalar = {MX_ISA_SCALAR, matmul_rows, dot, axpy};
