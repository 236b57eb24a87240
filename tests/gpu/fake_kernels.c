/* The kernels interface (mixtral_kernels.h) that engine/cuda/stream_cuda.c
 * uses, done on the host, so its bookkeeping (which expert sits in which
 * slot, pins, budgets, shrinking, faults) runs in CI without a GPU:
 * "device" memory is host memory under an adjustable limit, copies happen
 * at once, events report not-done every other poll (so both of the
 * engine's branches run), and the MoE kernels compute what the CUDA ones
 * do, in fp32 from bf16 weights. The KV kernels too (for kv_cuda.c's
 * layout): the same addressing through block tables, the same rounding to
 * bf16 (bit for bit), and attention as the kernel splits it into slices
 * and warps. Not a model of timing or of the GPU's ordering:
 * tests/gpu/run.sh checks those on a GPU. */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "quant.h"
#include "cpu_backend.h"
#include "fake_kernels.h"
#include "mixtral_kernels.h"

fake_gpu fake = {.limit = (size_t)1 << 40};

struct mxk_event {
        unsigned polls;
};

int mxk_malloc(mxk_ctx *c, void **p, size_t bytes) {
        (void)c;
        fake.mallocs++;
        if (fake.used + bytes > fake.limit || (fake.fail_after && fake.mallocs > fake.fail_after)) {
                *p = NULL;
                return -ENOMEM;
        }
        size_t *h = malloc(sizeof(size_t) * 2 + bytes);
        if (!h)
                return -ENOMEM;
        h[0] = bytes;
        fake.used += bytes;
        *p = h + 2;
        return 0;
}

void mxk_free(mxk_ctx *c, void *p) {
        (void)c;
        if (!p)
                return;
        size_t *h = (size_t *)p - 2;
        fake.used -= h[0];
        free(h);
}

int mxk_free_memory(mxk_ctx *c, size_t *free_bytes, size_t *total_bytes) {
        (void)c;
        *total_bytes = fake.limit;
        *free_bytes = fake.report_free ? fake.report_free : fake.limit - fake.used;
        return 0;
}

int mxk_status(mxk_ctx *c, char *why, size_t why_len) {
        (void)c, (void)why, (void)why_len;
        return 0;
}

int mxk_sync(mxk_ctx *c, char *why, size_t why_len) {
        return mxk_status(c, why, why_len);
}

int mxk_download(mxk_ctx *c, void *dst, const void *src, size_t bytes) {
        (void)c;
        memcpy(dst, src, bytes);
        return 0;
}

int mxk_event_new(mxk_ctx *c, mxk_event **e) {
        (void)c;
        *e = calloc(1, sizeof(**e));
        return *e ? 0 : -ENOMEM;
}

void mxk_event_free(mxk_event *e) {
        free(e);
}

void mxk_event_record(mxk_ctx *c, mxk_event *e, bool copy) {
        (void)c, (void)e;
        fake.records[copy]++;
}

void mxk_event_wait(mxk_ctx *c, mxk_event *e, bool copy) {
        (void)c, (void)e;
        fake.waits[copy]++;
}

bool mxk_event_done(mxk_ctx *c, mxk_event *e) {
        (void)c;
        return ++e->polls % 2 == 0;
}

int mxk_event_sync(mxk_ctx *c, mxk_event *e) {
        (void)c, (void)e;
        fake.event_syncs++;
        return 0;
}

void mxk_copy_upload(mxk_ctx *c, void *dst, const void *src, size_t bytes) {
        (void)c;
        memcpy(dst, src, bytes);
        fake.uploaded += bytes;
}

void mxk_copy_to_bf16(mxk_ctx *c, const void *src, int dtype, uint16_t *dst, size_t n) {
        (void)c;
        fake.converted += n;
        for (size_t i = 0; i < n; i++)
                dst[i] = mx_f32_to_bf16(dtype == MXK_F16 ? mx_f16_to_f32(((const uint16_t *)src)[i])
                                                         : ((const float *)src)[i]);
}

int mxk_host_register(void *p, size_t bytes) {
        (void)p, (void)bytes;
        fake.registered++;
        return 0;
}

void mxk_host_unregister(void *p) {
        (void)p;
        fake.registered--;
}

void mxk_matmul(mxk_ctx *c, const uint16_t *W, uint32_t rows, uint32_t cols, const float *x, float *out,
                uint32_t n, bool accumulate, uint16_t *scratch) {
        (void)c, (void)scratch;
        for (uint32_t t = 0; t < n; t++)
                for (uint32_t r = 0; r < rows; r++) {
                        float s = 0;
                        for (uint32_t i = 0; i < cols; i++)
                                s += mx_bf16_to_f32(W[(size_t)r * cols + i]) * x[(size_t)t * cols + i];
                        out[(size_t)t * rows + r] = (accumulate ? out[(size_t)t * rows + r] : 0) + s;
                }
}

int mxk_moe_route(mxk_ctx *c, const mxk_moe_buffers *b, const float *logits, uint32_t n, uint32_t E, uint32_t k) {
        (void)c;
        float p[64];
        for (uint32_t t = 0; t < n; t++) /* (the kernel computes as the CPU engine does) */
                mx_cpu_route(logits + (size_t)t * E, E, k, p, b->choice + (size_t)t * k, b->weight + (size_t)t * k);
        uint32_t running = 0, active = 0;
        for (uint32_t e = 0; e < E; e++) {
                uint32_t start = running;
                for (uint32_t t = 0; t < n; t++)
                        for (uint32_t i = 0; i < k; i++) {
                                if (b->choice[(size_t)t * k + i] != e)
                                        continue;
                                uint32_t below = 0;
                                for (uint32_t j = 0; j < k; j++)
                                        below += b->choice[(size_t)t * k + j] < e;
                                b->list_tok[running] = t;
                                b->list_w[running] = b->weight[(size_t)t * k + i];
                                b->slot_of[(size_t)t * k + below] = running++;
                        }
                b->counts[e] = running - start;
                b->counts[E + e] = start;
                if (running > start)
                        b->counts[2 * E + 1 + active++] = e;
        }
        b->counts[2 * E] = active;
        return 0;
}

/* y = w2 (silu(w1 x) * w3 x), w1 and w3 stacked in w13. */
void fake_expert(const uint16_t *w13, const uint16_t *w2, const float *x, float *y, float *act, uint32_t H,
                 uint32_t F) {
        for (uint32_t f = 0; f < F; f++) {
                float g = 0, u = 0;
                for (uint32_t i = 0; i < H; i++) {
                        g += mx_bf16_to_f32(w13[(size_t)f * H + i]) * x[i];
                        u += mx_bf16_to_f32(w13[(size_t)(F + f) * H + i]) * x[i];
                }
                act[f] = g / (1.0f + expf(-g)) * u;
        }
        for (uint32_t h = 0; h < H; h++) {
                float s = 0;
                for (uint32_t f = 0; f < F; f++)
                        s += mx_bf16_to_f32(w2[(size_t)h * F + f]) * act[f];
                y[h] = s;
        }
}

void mxk_moe_expert(mxk_ctx *c, const mxk_moe_buffers *b, const uint16_t *w13, const uint16_t *w2,
                    uint32_t start, uint32_t count, const float *x, uint32_t H, uint32_t F) {
        (void)c;
        fake.experts_run++;
        for (uint32_t j = start; j < start + count; j++)
                fake_expert(w13, w2, x + (size_t)b->list_tok[j] * H, b->y + (size_t)j * H, b->act, H, F);
}

void mxk_moe_combine(mxk_ctx *c, const mxk_moe_buffers *b, float *acc, uint32_t n, uint32_t k, uint32_t H) {
        (void)c;
        for (uint32_t t = 0; t < n; t++)
                for (uint32_t h = 0; h < H; h++) {
                        float s = 0;
                        for (uint32_t i = 0; i < k; i++) {
                                uint32_t p = b->slot_of[(size_t)t * k + i];
                                s += b->y[(size_t)p * H + h] * b->list_w[p];
                        }
                        acc[(size_t)t * H + h] += s;
                }
}

/* ---- the KV pool and attention (kernels/elementwise.cu, attention.cu) ------- */

/* Element `at` of the pool, as fp32. */
static float kv_get(const mxk_kv *kv, size_t at) {
        return kv->bf16 ? mx_bf16_to_f32(((const uint16_t *)kv->pool)[at]) : ((const float *)kv->pool)[at];
}

/* Where row r's keys of `layer` lie in the pool: the values follow
 * MXK_KV_BLOCK * stride elements later. */
static size_t kv_at(const mxk_kv *kv, uint32_t table, uint32_t pos, uint32_t layer) {
        size_t half = (size_t)MXK_KV_BLOCK * kv->stride;
        return ((size_t)kv->tables[table + pos / MXK_KV_BLOCK] * kv->layers + layer) * 2 * half +
               (size_t)(pos % MXK_KV_BLOCK) * kv->stride;
}

void mxk_kv_append(mxk_ctx *c, const mxk_kv *kv, const mxk_row *rows, uint32_t n, uint32_t layer, const float *k,
                   const float *v) {
        (void)c;
        size_t half = (size_t)MXK_KV_BLOCK * kv->stride;
        for (uint32_t r = 0; r < n; r++) {
                size_t at = kv_at(kv, rows[r].table, rows[r].pos, layer);
                for (uint32_t i = 0; i < kv->stride; i++) {
                        float kr = k[(size_t)r * kv->stride + i], vr = v[(size_t)r * kv->stride + i];
                        if (kv->bf16) {
                                ((uint16_t *)kv->pool)[at + i] = mx_f32_to_bf16(kr);
                                ((uint16_t *)kv->pool)[at + half + i] = mx_f32_to_bf16(vr);
                        } else {
                                ((float *)kv->pool)[at + i] = kr;
                                ((float *)kv->pool)[at + half + i] = vr;
                        }
                }
        }
}

/* One (row, head, slice) as the kernel's MXK_ATT_WARPS warps walk it, each an
 * online softmax over every MXK_ATT_WARPS-th key, then merged: the maximum,
 * the sum and the output into part ([2 + hd]). */
static void attend_slice(const mxk_kv *kv, mxk_row d, uint32_t layer, const float *qh, uint32_t g, uint32_t hd,
                         uint32_t i0, uint32_t i1, float *part) {
        float m[MXK_ATT_WARPS], l[MXK_ATT_WARPS], o[MXK_ATT_WARPS][256] = {{0}}, scale = sqrtf((float)hd);
        size_t half = (size_t)MXK_KV_BLOCK * kv->stride;
        for (uint32_t w = 0; w < MXK_ATT_WARPS; w++) {
                m[w] = -INFINITY, l[w] = 0;
                for (uint32_t i = i0 + w; i < i1; i += MXK_ATT_WARPS) {
                        size_t at = kv_at(kv, d.table, i, layer) + (size_t)g * hd;
                        float dot = 0;
                        for (uint32_t x = 0; x < hd; x++)
                                dot += qh[x] * kv_get(kv, at + x);
                        float sc = dot / scale, mn = fmaxf(m[w], sc), corr = expf(m[w] - mn), p = expf(sc - mn);
                        l[w] = l[w] * corr + p;
                        for (uint32_t x = 0; x < hd; x++)
                                o[w][x] = o[w][x] * corr + p * kv_get(kv, at + half + x);
                        m[w] = mn;
                }
        }
        float mm = -INFINITY;
        for (uint32_t w = 0; w < MXK_ATT_WARPS; w++)
                mm = fmaxf(mm, m[w]);
        part[0] = mm, part[1] = 0;
        for (uint32_t x = 0; x < hd; x++)
                part[2 + x] = 0;
        for (uint32_t w = 0; mm > -INFINITY && w < MXK_ATT_WARPS; w++) {
                float f = expf(m[w] - mm);
                part[1] += l[w] * f;
                for (uint32_t x = 0; x < hd; x++)
                        part[2 + x] += o[w][x] * f;
        }
}

void mxk_attention(mxk_ctx *c, const mxk_kv *kv, const mxk_row *rows, uint32_t n, uint32_t layer, const float *q,
                   float *out, uint32_t heads, uint32_t kv_heads, uint32_t hd, uint32_t longest, float *scratch) {
        (void)c;
        uint32_t slices = mxk_attention_slices(n, kv_heads, longest), group = heads / kv_heads;
        for (uint32_t r = 0; r < n; r++)
                for (uint32_t h = 0; h < heads; h++) {
                        uint32_t len = rows[r].pos + 1, slice = (len + slices - 1) / slices;
                        float *p = scratch + ((size_t)r * heads + h) * slices * (hd + 2), mm = -INFINITY;
                        for (uint32_t s = 0; s < slices; s++) {
                                uint32_t i0 = len < s * slice ? len : s * slice, i1 = len < i0 + slice ? len : i0 + slice;
                                attend_slice(kv, rows[r], layer, q + ((size_t)r * heads + h) * hd, h / group, hd, i0,
                                             i1, p + s * (hd + 2));
                                mm = fmaxf(mm, p[s * (hd + 2)]);
                        }
                        for (uint32_t x = 0; x < hd; x++) {
                                float ll = 0, oo = 0;
                                for (uint32_t s = 0; s < slices; s++) {
                                        const float *ps = p + s * (hd + 2);
                                        if (ps[0] == -INFINITY)
                                                continue;
                                        float f = expf(ps[0] - mm);
                                        ll += ps[1] * f, oo += ps[2 + x] * f;
                                }
                                out[((size_t)r * heads + h) * hd + x] = oo / ll;
                        }
                }
}
