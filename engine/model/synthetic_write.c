/* A synthetic model written out as a Hugging Face checkpoint: the same
 * weights (mx_synth_bf16), so the checkpoint loaded back computes exactly
 * what the synthetic model does, and expert streaming (which reads files)
 * can be measured at the real shape. One shard holds everything but the
 * experts, then one shard per layer holds its experts; a layer's shard is
 * made in memory, written, and freed before the next. */
#include <jansson.h>
#include <stdio.h>
#include <string.h>

#include "pool.h"
#include "model.h"
#include "mx_common.h"
#include "mx_synth.h"

typedef struct shard {
        mx_tensor_data *t;
        size_t n;
} shard;

static void shard_clear(shard *s) {
        for (size_t i = 0; i < s->n; i++)
                free((void *)s->t[i].data);
        free(s->t);
        *s = (shard){0};
}

static bool is_expert(const char *name) {
        return strstr(name, ".experts.") != NULL;
}

/* t's values as the synthetic model has them (norms are host data). */
static void *values(const mx_tensor *t, mx_pool *pool) {
        uint16_t *v = malloc(t->nbytes ? t->nbytes : 1);
        if (!v)
                return NULL;
        if (t->data) {
                memcpy(v, t->data, t->nbytes);
                return v;
        }
        mx_synth_fill(pool, t, v);
        return v;
}

/* Writes the tensors of m that `pick` (L: a layer's experts, -1: the rest)
 * into dir/name, naming it in the weight map; adds their bytes to *done. */
static int write_shard(const mx_model *m, mx_pool *pool, const char *dir, const char *name, int L, json_t *map,
                       uint64_t *done, mx_error *err) {
        _cleanup_(shard_clear) shard s = {0};
        if (!(s.t = calloc(m->n_tensors, sizeof(*s.t))))
                return mx_error_set(err, -ENOMEM, "out of memory");
        char prefix[64];
        snprintf(prefix, sizeof(prefix), "model.layers.%d.", L);
        for (size_t i = 0; i < m->n_tensors; i++) {
                const mx_tensor *t = &m->tensors[i];
                bool want = L < 0 ? !is_expert(t->name) : is_expert(t->name) && !strncmp(t->name, prefix, strlen(prefix));
                if (!want)
                        continue;
                void *v = values(t, pool);
                if (!v)
                        return mx_error_set(err, -ENOMEM, "out of memory for %s", t->name);
                s.t[s.n++] = (mx_tensor_data){t->name, t->dtype, t->ndim, {t->shape[0], t->shape[1]}, v};
                *done += t->nbytes;
                json_object_set_new(map, t->name, json_string(name));
        }
        _cleanup_free_ char *path = NULL;
        if (asprintf(&path, "%s/%s", dir, name) < 0)
                return mx_error_set(err, -ENOMEM, "out of memory");
        return mx_safetensors_write(path, s.t, s.n, err);
}

int mx_synthetic_write(const mx_model *m, const char *dir, void (*progress)(uint64_t, uint64_t, void *),
                       void *arg, mx_error *err) {
        if (strncmp(m->dir, "synthetic:", 10) != 0)
                return mx_error_set(err, -EINVAL, "%s is not a synthetic model", m->dir);
        _cleanup_(mx_pool_freep) mx_pool *pool = NULL;
        int r = mx_synth_pool(&pool);
        if (r < 0)
                return mx_error_set(err, r, "cannot start threads to write %s", dir);
        r = mx_hf_config_write(dir, &m->cfg, err);
        json_t *map = json_object();
        if (r == 0 && !map)
                r = mx_error_set(err, -ENOMEM, "out of memory");
        uint32_t shards = m->cfg.n_layers + 1;
        uint64_t total = 0, done = 0;
        for (size_t i = 0; i < m->n_tensors; i++)
                total += m->tensors[i].nbytes;
        for (uint32_t k = 0; r == 0 && k < shards; k++) {
                char name[64];
                snprintf(name, sizeof(name), "model-%05u-of-%05u.safetensors", k + 1, shards);
                r = write_shard(m, pool, dir, name, (int)k - 1, map, &done, err);
                if (progress && r == 0)
                        progress(done, total, arg);
        }
        if (r < 0) {
                json_decref(map);
                return r;
        }
        return mx_json_write(dir, "model.safetensors.index.json",
                             json_pack("{s:{s:I},s:o}", "metadata", "total_size", (json_int_t)total, "weight_map", map),
                             err);
}
