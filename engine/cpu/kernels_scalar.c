/* The portable kernels: the reference every SIMD kernel must equal bit for
 * bit (see kernels.h for the summation orders). fmaf is the fused
 * multiply-add the vector units do; the integer sums are exact in any
 * order. */
#include <math.h>
#include <string.h>

#include "quant.h"
#include "kernels.h"

/* ---- the f32 path ---------------------------------------------------------------- */

static float dot_f32(const uint8_t *row, mx_dtype dt, const float *x, uint64_t cols) {
        float lane[16] = {0}, w[MX_QK_K];
        uint32_t qk = mx_dtype_block_elems(dt), bytes = mx_dtype_block_bytes(dt);
        bool block = mx_dtype_is_block(dt);
        for (uint64_t k0 = 0; k0 < cols; k0 += 16) {
                if (block && k0 % qk == 0)
                        mx_dequant_block(dt, row + k0 / qk * bytes, w);
                for (int j = 0; j < 16; j++) {
                        uint64_t k = k0 + (uint64_t)j;
                        float wk = k >= cols ? 0.0f : block ? w[k % qk] : mx_element_f32(row, dt, k);
                        lane[j] = fmaf(wk, k < cols ? x[k] : 0.0f, lane[j]);
                }
        }
        return mx_reduce16(lane);
}

/* ---- the fast path: block weights against MX_ACT_Q8 ------------------------------------ */

/* Block b (of 32 values) of a row as the int8 products see it: each
 * value's signed level, the weight scale of each 4 values, and (Q4_K,
 * Q5_K) the sub-block's dmin * m. */
typedef struct int_block {
        int w[32];
        float ws[8];
        float dm;
} int_block;

static void kmin_block(uint16_t d, uint16_t dmin, const uint8_t *scales, int j, int_block *k) {
        float d1, m1;
        mx_kmin_scales(mx_f16_to_f32(d), mx_f16_to_f32(dmin), scales, j, &d1, &m1);
        for (int g = 0; g < 8; g++)
                k->ws[g] = d1;
        k->dm = m1;
}

static void decode_int(const uint8_t *row, mx_dtype dt, uint64_t b, int_block *k) {
        int j = (int)(b % 8);
        switch (dt) {
        case MX_DTYPE_Q8_0: {
                const mx_block_q8_0 *q = (const mx_block_q8_0 *)row + b;
                for (int i = 0; i < 32; i++)
                        k->w[i] = q->qs[i], k->ws[i / 4] = mx_f16_to_f32(q->d);
                break;
        }
        case MX_DTYPE_Q4_0: {
                const mx_block_q4_0 *q = (const mx_block_q4_0 *)row + b;
                for (int i = 0; i < 16; i++)
                        k->w[i] = (q->qs[i] & 0xf) - 8, k->w[i + 16] = (q->qs[i] >> 4) - 8;
                for (int g = 0; g < 8; g++)
                        k->ws[g] = mx_f16_to_f32(q->d);
                break;
        }
        case MX_DTYPE_Q4_K: {
                const mx_block_q4_k *q = (const mx_block_q4_k *)row + b / 8;
                for (int i = 0; i < 32; i++)
                        k->w[i] = mx_q4k_quant(q, 32 * j + i);
                kmin_block(q->d, q->dmin, q->scales, j, k);
                break;
        }
        case MX_DTYPE_Q5_K: {
                const mx_block_q5_k *q = (const mx_block_q5_k *)row + b / 8;
                for (int i = 0; i < 32; i++)
                        k->w[i] = mx_q5k_quant(q, 32 * j + i);
                kmin_block(q->d, q->dmin, q->scales, j, k);
                break;
        }
        default: {
                const mx_block_q6_k *q = (const mx_block_q6_k *)row + b / 8;
                for (int i = 0; i < 32; i++)
                        k->w[i] = mx_q6k_quant(q, 32 * j + i) - 32;
                for (int g = 0; g < 8; g++)
                        k->ws[g] = mx_f16_to_f32(q->d) * (float)q->scales[2 * j + g / 4];
                break;
        }
        }
}

static float dot_int8(const uint8_t *row, mx_dtype dt, const uint8_t *xq, uint64_t cols) {
        const int8_t *x = (const int8_t *)xq;
        const float *dx = mx_act_scales(xq, cols), *xs = mx_act_sums(xq, cols);
        bool mins = dt == MX_DTYPE_Q4_K || dt == MX_DTYPE_Q5_K;
        uint64_t nb = cols / 32;
        float lane[16] = {0}, g[8] = {0};
        for (uint64_t b0 = 0; b0 < nb; b0 += 2)
                for (uint64_t h = 0; h < 2; h++) {
                        uint64_t b = b0 + h;
                        int_block k = {0};
                        int p[8] = {0};
                        float d = 0;
                        if (b < nb) {
                                decode_int(row, dt, b, &k);
                                d = dx[b];
                                for (int e = 0; e < 32; e++)
                                        p[e / 4] += k.w[e] * x[32 * b + e];
                                if (mins)
                                        g[b % 8] = fmaf(k.dm, xs[b], g[b % 8]);
                        }
                        for (int l = 0; l < 8; l++)
                                lane[8 * h + l] = fmaf(k.ws[l] * d, (float)p[l], lane[8 * h + l]);
                }
        return mx_reduce16(lane) - mx_reduce8(g);
}

/* ---- the fast path: BF16 against MX_ACT_BF16 -------------------------------------- */

static float bf16_at(const uint8_t *p, uint64_t i, uint64_t n) {
        return i < n ? mx_element_f32(p, MX_DTYPE_BF16, i) : 0.0f;
}

static float dot_bf16(const uint8_t *row, const uint8_t *x, uint64_t cols) {
        float lane[16] = {0};
        for (uint64_t k0 = 0; k0 < cols; k0 += 32)
                for (int i = 0; i < 16; i++) {
                        uint64_t e = k0 + 2 * (uint64_t)i;
                        lane[i] = fmaf(bf16_at(row, e + 1, cols), bf16_at(x, e + 1, cols), lane[i]);
                        lane[i] = fmaf(bf16_at(row, e, cols), bf16_at(x, e, cols), lane[i]);
                }
        return mx_reduce16(lane);
}

/* One output of either path. */
static float dot_row(const mx_matmul_args *a, const uint8_t *row, uint32_t t) {
        if (!a->xq)
                return dot_f32(row, a->dtype, a->x + t * a->ldx, a->cols);
        const uint8_t *x = a->xq + t * a->ldxq;
        switch (mx_act_for(a->dtype, true)) {
        case MX_ACT_Q8:
                return dot_int8(row, a->dtype, x, a->cols);
        case MX_ACT_BF16:
                return dot_bf16(row, x, a->cols);
        default:
                return dot_f32(row, a->dtype, (const float *)x, a->cols);
        }
}

static void matmul_rows(const mx_matmul_args *a, uint64_t r0, uint64_t r1) {
        uint64_t row_bytes = 0;
        mx_dtype_row_bytes(a->dtype, a->cols, &row_bytes);
        for (uint64_t r = r0; r < r1; r++)
                for (uint32_t t = 0; t < a->n; t++) {
                        float s = dot_row(a, a->w + r * row_bytes, t);
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
