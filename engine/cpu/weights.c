/* Weights as the element-wise steps need them, and per-thread scratch. The
 * big matrices are never converted: only norm weights (a few KB) are kept
 * as fp32. */
#include <string.h>

#include "quant.h"
#include "cpu_backend.h"
#include "mx_common.h"

void mx_cpu_row_to_f32(const mx_tensor *t, uint64_t r, float *out) {
        uint64_t cols = t->ndim == 2 ? t->shape[1] : t->shape[0];
        /* (The shape was checked against the type when it was bound.) */
        mx_dequant_row(t->dtype, t->ndim == 2 ? mx_tensor_row(t, r) : t->data, out, cols);
}

static int add_norm(cpu_backend *cb, const mx_tensor *t) {
        cpu_f32 *f = &cb->f32[cb->n_f32];
        f->t = t;
        f->data = malloc(t->shape[0] * sizeof(float));
        if (!f->data)
                return -ENOMEM;
        mx_cpu_row_to_f32(t, 0, f->data);
        cb->n_f32++;
        return 0;
}

int mx_cpu_norms_init(cpu_backend *cb) {
        const mx_model *m = cb->base.model;
        cb->f32 = calloc(2 * m->cfg.n_layers + 1, sizeof(cpu_f32));
        int r = cb->f32 ? add_norm(cb, m->norm) : -ENOMEM;
        for (uint32_t L = 0; r == 0 && L < m->cfg.n_layers; L++) {
                r = add_norm(cb, m->layers[L].attn_norm);
                if (r == 0)
                        r = add_norm(cb, m->layers[L].ffn_norm);
        }
        return r;
}

const float *mx_cpu_f32_of(cpu_backend *cb, const mx_tensor *t) {
        for (size_t i = 0; i < cb->n_f32; i++)
                if (cb->f32[i].t == t)
                        return cb->f32[i].data;
        return NULL;
}

float *mx_cpu_scratch(cpu_backend *cb, uint32_t thread, size_t n) {
        cpu_scratch *s = &cb->scratch[thread];
        if (n > s->cap) {
                float *p = realloc(s->p, n * sizeof(float));
                if (!p)
                        return NULL;
                s->p = p;
                s->cap = n;
        }
        return s->p;
}
