/* A GGUF file as a model: which files (one GGUF; a split set
 * NAME-00001-of-0000N.gguf, every part present and saying it is part k of
 * N; or a directory holding one of those), the configuration from the
 * first file's llama.* metadata, and the tensors under llama.cpp's names
 * with each merged expert tensor (blk.N.ffn_{gate,up,down}_exps.weight,
 * [experts][rows][cols]) replaced by one 2-D view per expert, named
 * "<name>[e]", whose data, offset and size are that expert's slice of the
 * file: the engine and expert streaming see per-expert tensors whichever
 * way the file stores them. Only headers are read. Called by
 * mx_model_open (model.c) and the fuzzer. */
#include <dirent.h>
#include <libgen.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "model.h"
#include "mx_common.h"

#define MAX_PARTS 4096u /* as many shards as a safetensors index may name */

static void closedirp(DIR **d) {
        if (*d)
                closedir(*d);
}

/* "NAME-00002-of-00005.gguf": the part (1-based), the count and the length
 * of NAME; false for any other name. */
static bool split_name(const char *s, unsigned *part, unsigned *count, size_t *prefix) {
        size_t n = strlen(s);
        const char *tail = n >= 20 ? s + n - 20 : NULL; /* "-KKKKK-of-NNNNN.gguf" */
        if (!tail || tail == s || tail[0] != '-' || memcmp(tail + 6, "-of-", 4) != 0 ||
            strcmp(tail + 15, ".gguf") != 0)
                return false;
        for (int i = 0; i < 5; i++)
                if (tail[1 + i] < '0' || tail[1 + i] > '9' || tail[10 + i] < '0' || tail[10 + i] > '9')
                        return false;
        *part = (unsigned)strtoul(tail + 1, NULL, 10);
        *count = (unsigned)strtoul(tail + 10, NULL, 10);
        *prefix = (size_t)(tail - s);
        return *part >= 1 && *part <= *count;
}

static bool ends_with(const char *s, const char *suffix) {
        size_t n = strlen(s), k = strlen(suffix);
        return n >= k && strcmp(s + n - k, suffix) == 0;
}

static bool has_magic(const char *path) {
        uint64_t size;
        char magic[4];
        _cleanup_close_ int fd = mx_open_regular(path, &size, NULL);
        return fd >= 0 && pread(fd, magic, 4, 0) == 4 && memcmp(magic, "GGUF", 4) == 0;
}

/* The .gguf files in dir: how many, and the name of one. */
static int scan_dir(const char *dir, size_t *n, char **one, mx_error *err) {
        _cleanup_(closedirp) DIR *d = opendir(dir);
        if (!d)
                return mx_error_set(err, -errno, "%s: %s", dir, strerror(errno));
        *n = 0;
        for (struct dirent *e; (e = readdir(d));)
                if (ends_with(e->d_name, ".gguf") && e->d_name[0] != '.') {
                        if (++*n == 1 && one && !(*one = strdup(e->d_name)))
                                return mx_error_set(err, -ENOMEM, "%s: out of memory", dir);
                }
        return 0;
}

bool mx_model_is_gguf(const char *path) {
        struct stat st;
        if (stat(path, &st) < 0)
                return false;
        if (S_ISREG(st.st_mode))
                return ends_with(path, ".gguf") || has_magic(path);
        size_t n = 0;
        return S_ISDIR(st.st_mode) && !mx_dir_has(path, "config.json") &&
               !mx_dir_has(path, "params.json") && scan_dir(path, &n, NULL, NULL) == 0 && n > 0;
}

/* The files of the model named by file (in m->dir): itself, or every part
 * of its split set. */
static int list_parts(mx_model *m, const char *file, mx_error *err) {
        unsigned part, count;
        size_t prefix;
        if (!split_name(file, &part, &count, &prefix))
                return mx_model_add_file(m, file) < 0 ? mx_error_set(err, -ENOMEM, "out of memory") : 0;
        if (count > MAX_PARTS)
                return mx_error_set(err, -EINVAL, "%s/%s: a split set of %u parts (at most %u)", m->dir, file,
                                    count, MAX_PARTS);
        for (unsigned k = 1; k <= count; k++) {
                char name[4096];
                snprintf(name, sizeof(name), "%.*s-%05u-of-%05u.gguf", (int)prefix, file, k, count);
                if (!mx_dir_has(m->dir, name))
                        return mx_error_set(err, -ENOENT, "%s/%s: part %u of the %u of this split set is missing",
                                            m->dir, name, k, count);
                if (mx_model_add_file(m, name) < 0)
                        return mx_error_set(err, -ENOMEM, "out of memory");
        }
        return 0;
}

/* A directory: its one GGUF, or the parts of its one split set. */
static int pick_in_dir(mx_model *m, char **file, mx_error *err) {
        size_t n;
        int r = scan_dir(m->dir, &n, file, err);
        if (r < 0)
                return r;
        unsigned part, count;
        size_t prefix;
        if (n == 0)
                return mx_error_set(err, -ENOENT, "%s: no .gguf file in this directory", m->dir);
        if (n > 1 && !(split_name(*file, &part, &count, &prefix) && count == n))
                return mx_error_set(err, -EINVAL,
                                    "%s: %zu .gguf files that are not one split set; give --model the file",
                                    m->dir, n);
        return 0;
}

static int locate(mx_model *m, const char *path, mx_error *err) {
        struct stat st;
        _cleanup_free_ char *file = NULL, *d = strdup(path), *b = strdup(path);
        if (!d || !b)
                return mx_error_set(err, -ENOMEM, "out of memory");
        if (stat(path, &st) == 0 && S_ISDIR(st.st_mode)) {
                if (!(m->dir = strdup(path)))
                        return mx_error_set(err, -ENOMEM, "out of memory");
                int r = pick_in_dir(m, &file, err);
                if (r < 0)
                        return r;
        } else if (!(m->dir = strdup(dirname(d))) || !(file = strdup(basename(b)))) {
                return mx_error_set(err, -ENOMEM, "out of memory");
        }
        return list_parts(m, file, err);
}

/* ---- the files' headers ------------------------------------------------------- */

static int parse_part(mx_model *m, size_t i, mx_error *err) {
        model_priv *p = m->priv;
        mx_model_file *f = &m->files[i];
        char *path = mx_path_join(m->dir, f->name);
        if (!path)
                return mx_error_set(err, -ENOMEM, "out of memory");
        p->gguf[i].label = path; /* owned: freed with the model */
        int r = p->borrowed_maps ? 0 : mx_map_file(path, &f->map, &f->size, err);
        return r < 0 ? r : mx_gguf_parse(f->map, f->size, path, &p->gguf[i], err);
}

static int expect_count(const mx_gguf *g, const char *key, uint64_t want, bool required, mx_error *err) {
        mx_cfg_value v = mx_gguf_value(g, key);
        if (v.kind == MX_CFG_ABSENT && !required)
                return 0;
        if (v.kind != MX_CFG_INT || v.neg || v.mag != want)
                return mx_error_set(err, -EINVAL, "%s: key \"%s\" should be %llu in this split set",
                                    g->label, key, (unsigned long long)want);
        return 0;
}

/* Each part of a split set says which it is (split.no from 0) and how many
 * there are; the first, how many tensors all hold. A lone file may not
 * claim to be part of a set. */
static int check_split(const mx_model *m, mx_error *err) {
        const mx_gguf *g = ((model_priv *)m->priv)->gguf;
        uint64_t tensors = 0;
        int r = 0;
        for (size_t i = 0; i < m->n_files; i++)
                tensors += g[i].n_tensors;
        if (m->n_files == 1)
                return expect_count(&g[0], "split.count", 1, false, err);
        for (size_t i = 0; r == 0 && i < m->n_files; i++)
                if ((r = expect_count(&g[i], "split.count", m->n_files, true, err)) == 0)
                        r = expect_count(&g[i], "split.no", i, true, err);
        return r < 0 ? r : expect_count(&g[0], "split.tensors.count", tensors, false, err);
}

/* Only Mixtral's architecture: llama with experts, RoPE unscaled. */
static int check_architecture(const mx_gguf *g, mx_error *err) {
        const char *s;
        size_t len;
        int r = mx_gguf_string(g, "general.architecture", &s, &len, err);
        if (r == -ENOENT)
                return mx_error_set(err, -EINVAL, "%s: key \"general.architecture\" is missing", g->label);
        if (r < 0)
                return r;
        if (len != 5 || memcmp(s, "llama", 5) != 0)
                return mx_error_set(err, -EOPNOTSUPP,
                                    "%s: architecture \"%.*s\" is not supported (only \"llama\" with experts, as Mixtral)",
                                    g->label, (int)(len > 64 ? 64 : len), s);
        r = mx_gguf_string(g, "llama.rope.scaling.type", &s, &len, err);
        if (r == 0 && !(len == 4 && memcmp(s, "none", 4) == 0))
                return mx_error_set(err, -EOPNOTSUPP, "%s: RoPE scaling \"%.*s\" is not supported", g->label,
                                    (int)(len > 64 ? 64 : len), s);
        return r == -ENOENT ? 0 : r;
}

/* ---- tensors ---------------------------------------------------------------------- */

/* A merged expert tensor [experts][rows][cols] as one view per expert. */
static int split_experts(mx_model *m, const mx_gguf *g, mx_tensor *t, const char *file, mx_error *err) {
        uint32_t n = m->cfg.n_experts;
        if (t->ndim != 3)
                return mx_error_set(err, -EINVAL, "%s: tensor \"%s\": %u dimensions, expected 3 (experts, rows, columns)",
                                    g->label, t->name, t->ndim);
        if (t->shape[0] != n)
                return mx_error_set(err, -EINVAL, "%s: tensor \"%s\": %llu experts, but llama.expert_count is %u",
                                    g->label, t->name, (unsigned long long)t->shape[0], n);
        mx_tensor *v = calloc(n, sizeof(*v));
        if (!v)
                return mx_error_set(err, -ENOMEM, "out of memory");
        uint64_t slice = t->nbytes / n;
        int r = 0;
        for (uint32_t e = 0; e < n; e++) {
                v[e] = (mx_tensor){.dtype = t->dtype, .ndim = 2, .shape = {t->shape[1], t->shape[2]},
                                   .offset = t->offset + e * slice, .nbytes = slice,
                                   .data = (const uint8_t *)t->data + e * slice};
                if (asprintf(&v[e].name, "%s[%u]", t->name, e) < 0)
                        v[e].name = NULL, r = -ENOMEM;
        }
        if (r == 0)
                r = mx_model_add_tensors(m, v, n, file);
        if (r < 0) {
                mx_tensors_free(v, n);
                return mx_error_set(err, r, "out of memory");
        }
        free(v); /* the names moved into m */
        return 0;
}

static int add_part_tensors(mx_model *m, mx_gguf *g, const char *file, mx_error *err) {
        int r = 0;
        for (size_t i = 0; r == 0 && i < g->n_tensors; i++) {
                mx_tensor *t = &g->tensors[i];
                if (ends_with(t->name, "_exps.weight")) {
                        r = split_experts(m, g, t, file, err);
                } else {
                        r = mx_model_add_tensors(m, t, 1, file) < 0 ? mx_error_set(err, -ENOMEM, "out of memory") : 0;
                        t->name = NULL; /* moved */
                }
        }
        return r;
}

static int open_parsed(mx_model *m, mx_error *err) {
        model_priv *p = m->priv;
        m->layout = MX_LAYOUT_GGUF;
        if (!(p->gguf = calloc(m->n_files, sizeof(*p->gguf))))
                return mx_error_set(err, -ENOMEM, "out of memory");
        int r = 0;
        for (size_t i = 0; r == 0 && i < m->n_files; i++)
                r = parse_part(m, i, err);
        if (r == 0)
                r = check_split(m, err);
        if (r == 0)
                r = check_architecture(&p->gguf[0], err);
        if (r == 0)
                r = mx_config_parse_gguf(&p->gguf[0], &m->cfg, err);
        for (size_t i = 0; r == 0 && i < m->n_files; i++)
                r = add_part_tensors(m, &p->gguf[i], m->files[i].name, err);
        if (r == 0)
                r = mx_model_index_tensors(m, err);
        /* llama.cpp writes no output.weight when it is the embedding's */
        if (r == 0)
                m->cfg.tie_word_embeddings = !mx_model_find(m, "output.weight");
        return r;
}

int mx_gguf_model_files(mx_model *m, const char *path, mx_error *err) {
        int r = locate(m, path, err);
        return r < 0 ? r : open_parsed(m, err);
}

int mx_gguf_model_buffer(mx_model *m, const uint8_t *data, uint64_t size, mx_error *err) {
        model_priv *p = m->priv;
        p->borrowed_maps = true;
        if (!(m->dir = strdup("(memory)")) || mx_model_add_file(m, "model.gguf") < 0)
                return mx_error_set(err, -ENOMEM, "out of memory");
        m->files[0].map = data;
        m->files[0].size = size;
        return open_parsed(m, err);
}

void mx_gguf_model_free(mx_model *m) {
        model_priv *p = m->priv;
        for (size_t i = 0; p->gguf && i < m->n_files; i++) {
                mx_gguf_clear(&p->gguf[i]);
                free((char *)p->gguf[i].label);
        }
        free(p->gguf);
}
