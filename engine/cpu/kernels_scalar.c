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

/* ---- the fast path: Q8_0 and Q4_0 against MX_ACT_Q8 ----------------------------------- */

/* Block b's signed levels and fp16 scale. */
static float block32(const uint8_t *row, mx_dtype dt, uint64_t b, int w[32]) {
        if (dt == MX_DTYPE_Q8_0) {
                const mx_block_q8_0 *q = (const mx_block_q8_0 *)row + b;
                for (int i = 0; i < 32; i++)
                        w[i] = q->qs[i];
                return mx_f16_to_f32(q->d);
        }
        const mx_block_q4_0 *q = (const mx_block_q4_0 *)row + b;
        for (int i = 0; i < 16; i++)
                w[i] = (q->qs[i] & 0xf) - 8, w[i + 16] = (q->qs[i] >> 4) - 8;
        return mx_f16_to_f32(q->d);
}

static float dot_q32(const uint8_t *row, mx_dtype dt, const uint8_t *xq, uint64_t cols) {
        const int8_t *x = (const int8_t *)xq;
        const float *dx = mx_act_scales(xq, cols);
        uint64_t nb = cols / 32;
        float lane[16] = {0};
        for (uint64_t b0 = 0; b0 < nb; b0 += 2)
                for (uint64_t h = 0; h < 2; h++) {
                        uint64_t b = b0 + h;
                        int w[32] = {0}, p[8] = {0};
                        float ds = 0;
                        if (b < nb) {
                                ds = block32(row, dt, b, w) * dx[b];
                                for (int e = 0; e < 32; e++)
                                        p[e / 4] += w[e] * x[32 * b + e];
                        }
                        for (int l = 0; l < 8; l++)
                                lane[8 * h + l] = fmaf(ds, (float)p[l], lane[8 * h + l]);
                }
        return mx_reduce16(lane);
}

static float dot_q4_0(const uint8_t *row, const uint8_t *xq, uint64_t cols) {
        const int8_t *x = (const int8_t *)xq;
        const float *dx = mx_act_scales(xq, cols);
        float acc = 0;
        for (uint64_t b = 0; b < cols / 32; b++) {
                int w[32], s = 0;
                float ds = block32(row, MX_DTYPE_Q4_0, b, w) * dx[b];
                for (int e = 0; e < 32; e++)
                        s += w[e] * x[32 * b + e];
                acc = fmaf(ds, (float)s, acc);
        }
        return acc;
}

/* ---- the fast path: K-quants against MX_ACT_Q8K ---------------------------------------- */

/* Q5_K's 16-lane order (kernels.h): per super-block, lane l takes the
 * scaled level x value sums of values 4l..4l+3 of each 64, and 16 more
 * lanes the mins' weight (dmin x m, each 16 values) against xs. */
static float dot_q5_k(const uint8_t *row, const uint8_t *xq, uint64_t cols) {
        const int8_t *x = (const int8_t *)xq;
        const float *dx = mx_act_scales(xq, cols), *xs = mx_act_sums(xq, cols);
        float lane[16] = {0}, g[16] = {0};
        for (uint64_t sb = 0; sb < cols / 256; sb++) {
                const mx_block_q5_k *b = (const mx_block_q5_k *)row + sb;
                int s[16] = {0};
                float w16[16];
                for (int j = 0; j < 8; j++) {
                        uint8_t sc, m;
                        mx_q4k_scale(b->scales, j, &sc, &m);
                        for (int e = 32 * j; e < 32 * j + 32; e++)
                                s[(e % 64) / 4] += sc * ((int)mx_q5k_quant(b, e) * x[256 * sb + (uint64_t)e]);
                        w16[2 * j] = w16[2 * j + 1] = mx_f16_to_f32(b->dmin) * (float)m;
                }
                float dd = mx_f16_to_f32(b->d) * dx[sb];
                for (int l = 0; l < 16; l++) {
                        lane[l] = fmaf(dd, (float)s[l], lane[l]);
                        g[l] = fmaf(w16[l], xs[16 * sb + l], g[l]);
                }
        }
        return mx_reduce16(lane) - mx_reduce16(g);
}

static float dot_q4_k(const uint8_t *row, const uint8_t *xq, uint64_t cols) {
        const int8_t *x = (const int8_t *)xq;
        const float *dx = mx_act_scales(xq, cols);
        const int16_t *bs = mx_act_bsums(xq, cols);
        float acc = 0;
        for (uint64_t sb = 0; sb < cols / 256; sb++) {
                const mx_block_q4_k *b = (const mx_block_q4_k *)row + sb;
                int32_t S = 0, M = 0;
                for (int j = 0; j < 8; j++) {
                        uint8_t sc, m;
                        int32_t s = 0;
                        mx_q4k_scale(b->scales, j, &sc, &m);
                        for (int e = 32 * j; e < 32 * j + 32; e++)
                                s += mx_q4k_quant(b, e) * x[256 * sb + (uint64_t)e];
                        S += sc * s, M += m * (bs[16 * sb + 2 * (uint64_t)j] + bs[16 * sb + 2 * (uint64_t)j + 1]);
                }
                acc = fmaf(mx_f16_to_f32(b->d) * dx[sb], (float)S, acc);
                acc = fmaf(-mx_f16_to_f32(b->dmin) * dx[sb], (float)M, acc);
        }
        return acc;
}

static float dot_q6_k(const uint8_t *row, const uint8_t *xq, uint64_t cols) {
        const int8_t *x = (const int8_t *)xq;
        const float *dx = mx_act_scales(xq, cols);
        float acc = 0;
        for (uint64_t sb = 0; sb < cols / 256; sb++) {
                const mx_block_q6_k *b = (const mx_block_q6_k *)row + sb;
                int32_t S = 0;
                for (int j = 0; j < 16; j++) {
                        int32_t s = 0;
                        for (int e = 16 * j; e < 16 * j + 16; e++)
                                s += ((int)mx_q6k_quant(b, e) - 32) * x[256 * sb + (uint64_t)e];
                        S += b->scales[j] * s;
                }
                acc = fmaf(mx_f16_to_f32(b->d) * dx[sb], (float)S, acc);
        }
        return acc;
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
                return a->dtype == MX_DTYPE_Q4_0 ? dot_q4_0(row, x, a->cols) : dot_q32(row, a->dtype, x, a->cols);
        case MX_ACT_Q8K:
                return a->dtype == MX_DTYPE_Q4_K   ? dot_q4_k(row, x, a->cols)
                       : a->dtype == MX_DTYPE_Q6_K ? dot_q6_k(row, x, a->cols)
                                                   : dot_q5_k(row, x, a->cols);
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

/* Element d of a KV row, as fp32. */
static float kv_at(const void *row, bool bf16, uint64_t d) {
        return bf16 ? mx_bf16_to_f32(((const uint16_t *)row)[d]) : ((const float *)row)[d];
}

static const void *kv_row(const void *p, bool bf16, uint64_t i) {
        return (const uint8_t *)p + i * (bf16 ? 2 : 4);
}

static void scores1(const float *q, const void *k, uint64_t step, bool bf16, uint32_t n, uint32_t hd, float scale,
                    float *out) {
        for (uint32_t i = 0; i < n; i++) {
                const void *row = kv_row(k, bf16, i * step);
                float lane[16] = {0};
                for (uint64_t d0 = 0; d0 < hd; d0 += 16)
                        for (int j = 0; j < 16; j++) {
                                uint64_t d = d0 + (uint64_t)j;
                                lane[j] = fmaf(d < hd ? q[d] : 0.0f, d < hd ? kv_at(row, bf16, d) : 0.0f, lane[j]);
                        }
                out[i] = mx_reduce16(lane) / scale;
        }
}

static void scores(const float *q, uint32_t nq, const void *k, uint64_t step, bool bf16, uint32_t n, uint32_t hd,
                   float scale, float *out, uint64_t ld) {
        for (uint32_t h = 0; h < nq; h++)
                scores1(q + (size_t)h * hd, k, step, bf16, n, hd, scale, out + h * ld);
}

static void mix(const float *w, uint64_t ld, uint32_t nq, const void *v, uint64_t step, bool bf16, uint32_t n,
                uint32_t hd, float *o) {
        for (uint32_t h = 0; h < nq; h++) {
                float *oh = o + (size_t)h * hd;
                for (uint32_t i = 0; i < n; i++)
                        for (uint32_t d = 0; d < hd; d++)
                                oh[d] = fmaf(w[h * ld + i], kv_at(kv_row(v, bf16, i * step), bf16, d), oh[d]);
        }
}

float mx_exp(float x) {
        if (x < MX_EXP_MIN)
                return 0.0f;
        float t = fmaf(x, MX_EXP_LOG2E, MX_EXP_SHIFT), n = t - MX_EXP_SHIFT;
        float r = fmaf(n, -MX_EXP_LN2_HI, x);
        r = fmaf(n, -MX_EXP_LN2_LO, r);
        float u = MX_EXP_C5;
        u = fmaf(u, r, MX_EXP_C4);
        u = fmaf(u, r, MX_EXP_C3);
        u = fmaf(u, r, MX_EXP_C2);
        u = fmaf(u, r, MX_EXP_C1);
        u = fmaf(u, r, MX_EXP_C0);
        u = fmaf(r * r, u, r + 1.0f);
        uint32_t bits, one = 0x3f800000u;
        memcpy(&bits, &t, 4);
        bits = (bits << 23) + one;
        float scale;
        memcpy(&scale, &bits, 4);
        return u * scale;
}

static void softmax(float *p, uint32_t n) {
        float max = -INFINITY, lane[16] = {0};
        for (uint32_t i = 0; i < n; i++)
                max = p[i] > max ? p[i] : max;
        for (uint32_t i = 0; i < n; i++)
                lane[i % 16] += p[i] = mx_exp(p[i] - max);
        float sum = mx_reduce16(lane);
        for (uint32_t i = 0; i < n; i++)
                p[i] = p[i] / sum;
}

const mx_kernels mx_kernels_scalar = {MX_ISA_SCALAR, matmul_rows, dot, axpy, scores, mix, softmax};
