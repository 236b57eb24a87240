/* Which files make up a checkpoint, mapped and with their headers checked:
 *
 *   Hugging Face: model.safetensors, or the shards that
 *                 model.safetensors.index.json names (and nothing else);
 *   mistral-inference: every consolidated*.safetensors.
 *
 * Only the headers are touched here; the weights stay on disk until used. */
#include <dirent.h>
#include <jansson.h>
#include <string.h>

#include "model.h"
#include "mx_common.h"

#define INDEX_FILE "model.safetensors.index.json"
#define MAX_INDEX_BYTES (64u << 20)
#define MAX_SHARDS 4096

static void closedirp(DIR **d) {
        if (*d)
                closedir(*d);
}

char *mx_path_join(const char *dir, const char *name) {
        char *p;
        return asprintf(&p, "%s/%s", dir, name) < 0 ? NULL : p;
}

int mx_read_in_dir(const char *dir, const char *name, size_t max, char **path, char **data,
                   size_t *len, mx_error *err) {
        if (!(*path = mx_path_join(dir, name)))
                return mx_error_set(err, -ENOMEM, "%s: out of memory", dir);
        return mx_read_file(*path, max, data, len, err);
}

bool mx_dir_has(const char *dir, const char *name) {
        _cleanup_free_ char *p = mx_path_join(dir, name);
        return p && access(p, F_OK) == 0;
}

static bool names_a_shard(const char *s) {
        size_t n = strlen(s);
        return n > 12 && !strchr(s, '/') && strcmp(s + n - 12, ".safetensors") == 0;
}

int mx_model_add_file(mx_model *m, const char *name) {
        for (size_t i = 0; i < m->n_files; i++)
                if (strcmp(m->files[i].name, name) == 0)
                        return 0;
        mx_model_file *f = realloc(m->files, (m->n_files + 1) * sizeof(*f));
        if (!f)
                return -ENOMEM;
        m->files = f;
        f[m->n_files] = (mx_model_file){.name = strdup(name)};
        return f[m->n_files++].name ? 0 : -ENOMEM;
}

/* The index names the shards; it is kept to check every tensor's home. */
static int read_index(mx_model *m, json_t **weight_map, mx_error *err) {
        _cleanup_free_ char *path = NULL, *data = NULL;
        size_t len;
        int r = mx_read_in_dir(m->dir, INDEX_FILE, MAX_INDEX_BYTES, &path, &data, &len, err);
        if (r < 0)
                return r;
        json_error_t je;
        json_auto_t *root = json_loadb(data, len, JSON_REJECT_DUPLICATES, &je);
        if (!root)
                return mx_error_set(err, -EINVAL, "%s: not valid JSON: %s (line %d)", path, je.text,
                                    je.line);
        json_t *map = json_object_get(root, "weight_map");
        if (!json_is_object(map))
                return mx_error_set(err, -EINVAL, "%s: no \"weight_map\" object", path);
        const char *tensor;
        json_t *v;
        json_object_foreach(map, tensor, v) {
                const char *file = json_string_value(v);
                if (!file || !names_a_shard(file))
                        return mx_error_set(err, -EINVAL,
                                            "%s: tensor \"%s\" maps to %s, not a .safetensors file in the directory",
                                            path, tensor, file ? file : "a non-string");
                if (m->n_files >= MAX_SHARDS)
                        return mx_error_set(err, -EINVAL, "%s: more than %d shards", path, MAX_SHARDS);
                if (mx_model_add_file(m, file) < 0)
                        return -ENOMEM;
        }
        *weight_map = json_incref(map);
        return 0;
}

static int by_name(const void *a, const void *b) {
        return strcmp(((const mx_model_file *)a)->name, ((const mx_model_file *)b)->name);
}

static int list_consolidated(mx_model *m, mx_error *err) {
        _cleanup_(closedirp) DIR *d = opendir(m->dir);
        if (!d)
                return mx_error_set(err, -errno, "%s: %s", m->dir, strerror(errno));
        for (struct dirent *e; (e = readdir(d));)
                if (strncmp(e->d_name, "consolidated", 12) == 0 && names_a_shard(e->d_name) &&
                    (m->n_files >= MAX_SHARDS || mx_model_add_file(m, e->d_name) < 0))
                        return mx_error_set(err, -ENOMEM, "%s: too many files", m->dir);
        if (m->n_files == 0)
                return mx_error_set(err, -ENOENT, "%s: no consolidated*.safetensors file", m->dir);
        qsort(m->files, m->n_files, sizeof(*m->files), by_name);
        return 0;
}

static int list_files(mx_model *m, json_t **weight_map, mx_error *err) {
        if (m->layout == MX_LAYOUT_CONSOLIDATED)
                return list_consolidated(m, err);
        if (mx_dir_has(m->dir, INDEX_FILE))
                return read_index(m, weight_map, err);
        if (mx_dir_has(m->dir, "model.safetensors"))
                return mx_model_add_file(m, "model.safetensors");
        return mx_error_set(err, -ENOENT, "%s: no model.safetensors or %s", m->dir, INDEX_FILE);
}

int mx_model_add_tensors(mx_model *m, mx_tensor *t, size_t n, const char *file) {
        mx_tensor *all = realloc(m->tensors, (m->n_tensors + n) * sizeof(*all));
        if (!all && m->n_tensors + n > 0)
                return -ENOMEM;
        m->tensors = all;
        for (size_t i = 0; i < n; i++) {
                t[i].file = file;
                m->tensors[m->n_tensors++] = t[i];
        }
        return 0;
}

static int map_one(mx_model *m, mx_model_file *f, mx_error *err) {
        _cleanup_free_ char *path = mx_path_join(m->dir, f->name);
        if (!path)
                return -ENOMEM;
        int r = mx_map_file(path, &f->map, &f->size, err);
        if (r < 0)
                return r;
        mx_tensor *t = NULL;
        size_t n = 0;
        r = mx_safetensors_parse(f->map, f->size, path, &t, &n, err);
        if (r < 0)
                return r;
        if (mx_model_add_tensors(m, t, n, f->name) < 0) {
                mx_tensors_free(t, n);
                return mx_error_set(err, -ENOMEM, "%s: out of memory", path);
        }
        free(t); /* the names moved into m->tensors */
        return 0;
}

/* Every tensor must sit in the shard the index says, and the index must
 * name no tensor that no shard holds. */
static int check_index(mx_model *m, json_t *weight_map, mx_error *err) {
        for (size_t i = 0; i < m->n_tensors; i++) {
                const mx_tensor *t = &m->tensors[i];
                const char *want = json_string_value(json_object_get(weight_map, t->name));
                if (!want)
                        return mx_error_set(err, -EINVAL, "%s/%s: tensor \"%s\" is not in %s", m->dir,
                                            t->file, t->name, INDEX_FILE);
                if (strcmp(want, t->file) != 0)
                        return mx_error_set(err, -EINVAL,
                                            "%s/%s: tensor \"%s\" is here but %s says %s", m->dir,
                                            t->file, t->name, INDEX_FILE, want);
        }
        if (json_object_size(weight_map) != m->n_tensors) {
                const char *name;
                json_t *v;
                json_object_foreach(weight_map, name, v) if (!mx_model_find(m, name))
                        return mx_error_set(err, -EINVAL, "%s/%s: tensor \"%s\" is missing (%s names it)",
                                            m->dir, json_string_value(v), name, INDEX_FILE);
        }
        return 0;
}

int mx_model_files_open(mx_model *m, mx_error *err) {
        json_auto_t *weight_map = NULL;
        int r = list_files(m, &weight_map, err);
        if (r == -ENOMEM)
                return mx_error_set(err, r, "%s: out of memory", m->dir);
        for (size_t i = 0; r == 0 && i < m->n_files; i++)
                r = map_one(m, &m->files[i], err);
        if (r == 0)
                r = mx_model_index_tensors(m, err);
        if (r == 0 && weight_map)
                r = check_index(m, weight_map, err);
        return r;
}

int mx_model_check_files(const mx_model *m, mx_error *err) {
        for (size_t i = 0; i < m->n_files; i++) {
                int r = mx_map_check(m->files[i].map, err);
                if (r < 0)
                        return r;
        }
        return 0;
}

bool mx_model_files_faulted(const mx_model *m) {
        for (size_t i = 0; i < m->n_files; i++)
                if (mx_map_faulted(m->files[i].map))
                        return true;
        return false;
}

void mx_model_files_close(mx_model *m) {
        model_priv *p = m->priv;
        for (size_t i = 0; i < m->n_files; i++) {
                if (!p || !p->borrowed_maps)
                        mx_unmap_file(m->files[i].map, m->files[i].size);
                free(m->files[i].name);
        }
        free(m->files);
        for (size_t i = 0; i < m->n_tensors; i++)
                free(m->tensors[i].name);
        free(m->tensors);
}
