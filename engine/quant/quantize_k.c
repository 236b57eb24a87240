/* Our quantizer for the K-quants (Q4_K, Q5_K, Q6_K), into ggml's layouts.
 *
 * Per sub-block, a least-squares fit: for a few candidate steps around
 * range / levels, round every value to its level, then solve for the
 * scale (and, for Q4_K/Q5_K, the offset) that minimise the squared error
 * of those levels; keep the best candidate whose worst value stays within
 * one plain step. The scales (and offsets) of the sub-blocks are then
 * quantized against the super-block's fp16 d (and dmin), and every value
 * is rounded once more against the scale it will really be decoded with.
 * mx_quant_bound states (and tests/quant checks) what this guarantees.
 * The model is ggml's reference quantizer; the code is ours. */
#include <errno.h>
#include <math.h>

#include "quant.h"

/* How far the candidate steps reach either side of the plain one, in
 * tenths of a level. */
#define CANDIDATES 10

typedef struct fit {
        float scale, offset; /* value = scale * q + offset, offset <= 0 */
} fit;

/* v rounded to the nearest level (ties to even, as lrintf), within
 * [lo, hi]. Clamped as a float first, so the conversion never overflows
 * (NaN goes to lo); on x86 the conversion is one instruction where libm's
 * lrintf is a call, which made it a fifth of the quantizer's time. */
static int clamp_level(float v, int lo, int hi) {
        if (!(v >= (float)lo))
                return lo;
        if (v > (float)hi)
                return hi;
#if defined(__x86_64__) || defined(__i386__)
        return __builtin_ia32_cvtss2si((__attribute__((vector_size(16))) float){v, 0, 0, 0});
#else
        return (int)lrintf(v);
#endif
}

/* Q4_K/Q5_K: value = scale * q + offset, q in [0, L], offset <= 0 (ggml
 * stores -offset as the sub-block's min). */
static fit fit_affine(const float *x, int n, int L) {
        float lo = 0, hi = 0;
        for (int i = 0; i < n; i++)
                lo = x[i] < lo ? x[i] : lo, hi = x[i] > hi ? x[i] : hi;
        fit plain = {(hi - lo) / (float)L, lo}, best = plain;
        if (hi == lo)
                return best;
        float best_err = INFINITY, limit = plain.scale;
        double sx = 0;
        for (int i = 0; i < n; i++)
                sx += x[i];
        for (int c = -CANDIDATES; c <= CANDIDATES; c++) {
                float inv = ((float)L + 0.1f * (float)c) / (hi - lo);
                double sqx = 0;
                int64_t iq = 0, iqq = 0; /* (exact either way: integers summed as doubles stay exact) */
                int q[MX_QK_K];
                for (int i = 0; i < n; i++) {
                        q[i] = clamp_level((x[i] - lo) * inv, 0, L);
                        iq += q[i], iqq += q[i] * q[i], sqx += (double)q[i] * x[i];
                }
                double sq_ = (double)iq, sqq = (double)iqq;
                double det = n * sqq - sq_ * sq_;
                if (det <= 0)
                        continue;
                fit f = {(float)((n * sqx - sq_ * sx) / det), (float)((sqq * sx - sq_ * sqx) / det)};
                if (f.offset > 0)
                        f = (fit){(float)(sqx / sqq), 0};
                if (!(f.scale > 0))
                        continue;
                float err = 0, worst = 0;
                for (int i = 0; i < n; i++) {
                        float e = fabsf(x[i] - (f.scale * (float)q[i] + f.offset));
                        err += e * e, worst = e > worst ? e : worst;
                }
                if (worst <= limit && err < best_err)
                        best = f, best_err = err;
        }
        return best;
}

/* Q6_K: value = scale * q, q in [-32, 31]; the value of largest magnitude
 * goes to the side with 32 levels. */
static float fit_symmetric(const float *x, int n) {
        float max = 0, amax = 0;
        for (int i = 0; i < n; i++)
                if (fabsf(x[i]) > amax)
                        amax = fabsf(x[i]), max = x[i];
        if (amax == 0)
                return 0;
        float plain = -max / 32, best = plain, best_err = INFINITY, limit = amax / 32;
        for (int c = -CANDIDATES; c <= CANDIDATES; c++) {
                float inv = -(32 + 0.1f * (float)c) / max;
                double sqx = 0, sqq = 0;
                int q[16];
                for (int i = 0; i < n; i++) {
                        q[i] = clamp_level(x[i] * inv, -32, 31);
                        sqx += (double)q[i] * x[i], sqq += (double)q[i] * q[i];
                }
                if (sqq == 0)
                        continue;
                float s = (float)(sqx / sqq), err = 0, worst = 0;
                for (int i = 0; i < n; i++) {
                        float e = fabsf(x[i] - s * (float)q[i]);
                        err += e * e, worst = e > worst ? e : worst;
                }
                if (worst <= limit && err < best_err)
                        best = s, best_err = err;
        }
        return best;
}

/* The fp16 step that puts `max` at level `levels`, and its float value. */
static float super_scale(float max, int levels, uint16_t *stored) {
        *stored = mx_f32_to_f16(max / (float)levels);
        return mx_f16_to_f32(*stored);
}

/* The 6-bit multiples of d just under and over v. */
static void level6(float v, float d, uint8_t out[2]) {
        float r = d > 0 ? v / d : 0;
        out[0] = (uint8_t)(r >= 63 ? 63 : r <= 0 ? 0 : floorf(r));
        out[1] = (uint8_t)(out[0] < 63 && (float)out[0] < r ? out[0] + 1 : out[0]);
}

/* Sub-block x's levels for scale d1 and offset -m1; their squared error. */
static float levels_kmin(const float *x, float d1, float m1, int L, uint8_t q[32]) {
        float err = 0;
        for (int l = 0; l < 32; l++) {
                q[l] = d1 > 0 ? (uint8_t)clamp_level((x[l] + m1) / d1, 0, L) : 0;
                float e = x[l] - (d1 * (float)q[l] - m1);
                err += e * e;
        }
        return err;
}

/* Scales and mins into ggml's 12 bytes (the inverse of mx_q4k_scale). */
static void pack_scales(const uint8_t sc[8], const uint8_t m[8], uint8_t s[12]) {
        for (int j = 0; j < 4; j++) {
                s[j] = (uint8_t)(sc[j] | (sc[j + 4] >> 4) << 6);
                s[j + 4] = (uint8_t)(m[j] | (m[j + 4] >> 4) << 6);
                s[j + 8] = (uint8_t)((sc[j + 4] & 0xf) | (m[j + 4] & 0xf) << 4);
        }
}

/* Q4_K (L = 15) and Q5_K (L = 31): the levels of all 256 values into q. */
static void quantize_kmin(const float *x, int L, uint16_t *d_out, uint16_t *dmin_out, uint8_t scales[12],
                          uint8_t q[MX_QK_K]) {
        fit f[8];
        float smax = 0, mmax = 0;
        for (int j = 0; j < 8; j++) {
                f[j] = fit_affine(x + 32 * j, 32, L);
                smax = f[j].scale > smax ? f[j].scale : smax;
                mmax = -f[j].offset > mmax ? -f[j].offset : mmax;
        }
        float d = super_scale(smax, 63, d_out), dmin = super_scale(mmax, 63, dmin_out);
        uint8_t sc[8], m[8];
        for (int j = 0; j < 8; j++) {
                /* The 6-bit scale and min either side of the fit's, whichever
                 * pair decodes closest, each value rounded against the scale
                 * it will be decoded with. */
                uint8_t sc2[2], m2[2], qj[32];
                level6(f[j].scale, d, sc2);
                level6(-f[j].offset, dmin, m2);
                float best = INFINITY;
                for (int a = 0; a < 2; a++)
                        for (int b = 0; b < 2; b++) {
                                float err = levels_kmin(x + 32 * j, d * (float)sc2[a], dmin * (float)m2[b], L, qj);
                                if (err < best) {
                                        best = err, sc[j] = sc2[a], m[j] = m2[b];
                                        memcpy(q + 32 * j, qj, 32);
                                }
                        }
        }
        pack_scales(sc, m, scales);
}

static void q4_k_block(const float *x, mx_block_q4_k *b) {
        uint8_t q[MX_QK_K];
        quantize_kmin(x, 15, &b->d, &b->dmin, b->scales, q);
        for (int i = 0; i < 4; i++)
                for (int l = 0; l < 32; l++)
                        b->qs[32 * i + l] = (uint8_t)(q[64 * i + l] | q[64 * i + 32 + l] << 4);
}

static void q5_k_block(const float *x, mx_block_q5_k *b) {
        uint8_t q[MX_QK_K];
        quantize_kmin(x, 31, &b->d, &b->dmin, b->scales, q);
        memset(b->qh, 0, sizeof(b->qh));
        for (int i = 0; i < 4; i++)
                for (int l = 0; l < 32; l++) {
                        uint8_t a = q[64 * i + l], c = q[64 * i + 32 + l];
                        b->qs[32 * i + l] = (uint8_t)((a & 0xf) | (c & 0xf) << 4);
                        b->qh[l] |= (uint8_t)((a >> 4) << (2 * i) | (c >> 4) << (2 * i + 1));
                }
}

static void q6_k_block(const float *x, mx_block_q6_k *b) {
        float s[16], smax = 0;
        for (int j = 0; j < 16; j++) {
                s[j] = fit_symmetric(x + 16 * j, 16);
                smax = fabsf(s[j]) > smax ? fabsf(s[j]) : smax;
        }
        float d = super_scale(smax, 127, &b->d);
        memset(b->ql, 0, sizeof(b->ql));
        memset(b->qh, 0, sizeof(b->qh));
        for (int j = 0; j < 16; j++) {
                int sc = d > 0 ? clamp_level(s[j] / d, -127, 127) : 0;
                b->scales[j] = (int8_t)sc;
                float ds = d * (float)sc;
                for (int l = 0; l < 16; l++) {
                        int e = 16 * j + l, h = e / 128, r = e % 128, part = r / 32, k = r % 32;
                        int u = (ds != 0 ? clamp_level(x[e] / ds, -32, 31) : 0) + 32;
                        b->ql[64 * h + k + 32 * (part & 1)] |= (uint8_t)((u & 0xf) << (4 * (part >> 1)));
                        b->qh[32 * h + k] |= (uint8_t)((u >> 4) << (2 * part));
                }
        }
}

int mx_quantize_k_block(mx_dtype t, const float *x, void *dst) {
        switch (t) {
        case MX_DTYPE_Q4_K:
                q4_k_block(x, dst);
                return 0;
        case MX_DTYPE_Q5_K:
                q5_k_block(x, dst);
                return 0;
        case MX_DTYPE_Q6_K:
                q6_k_block(x, dst);
                return 0;
        default:
                return -EINVAL;
        }
}

float mx_quant_bound(mx_dtype t) {
        switch (t) {
        case MX_DTYPE_Q8_0:
                return 1.0f / 127;
        case MX_DTYPE_Q4_0:
                return 1.0f / 8 + 1.0f / 256;
        case MX_DTYPE_Q4_K:
                return 2.0f / 15;
        case MX_DTYPE_Q5_K:
                return 2.0f / 31;
        case MX_DTYPE_Q6_K:
                return 2.0f / 63;
        default:
                return 0;
        }
}
