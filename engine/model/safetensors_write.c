/* Writing safetensors files, for the demo model and for tests that need
 * real files. The header is padded with spaces to a multiple of 8 so the
 * data is aligned, as the reference writer does; the file appears under
 * its name only once complete (written to a temporary name, synced,
 * renamed). */
#include <jansson.h>
#include <string.h>

#include "model.h"
#include "mx_common.h"

static int tensor_bytes(const mx_tensor_data *t, uint64_t *out) {
        /* Safetensors has no block formats: those go to GGUF. */
        if (mx_dtype_is_block(t->dtype))
                return -EINVAL;
        return mx_dtype_tensor_bytes(t->dtype, t->shape, t->ndim, out);
}

static char *make_header(const mx_tensor_data *t, size_t n, size_t *len) {
        json_auto_t *root = json_object();
        uint64_t pos = 0;
        for (size_t i = 0; root && i < n; i++) {
                uint64_t bytes;
                json_t *shape = json_array(), *e = json_object();
                if (tensor_bytes(&t[i], &bytes) < 0 || !shape || !e) {
                        json_decref(shape), json_decref(e);
                        return NULL;
                }
                for (uint32_t d = 0; d < t[i].ndim; d++)
                        json_array_append_new(shape, json_integer((json_int_t)t[i].shape[d]));
                json_object_set_new(e, "dtype", json_string(mx_dtype_name(t[i].dtype)));
                json_object_set_new(e, "shape", shape);
                json_object_set_new(e, "data_offsets",
                                    json_pack("[II]", (json_int_t)pos, (json_int_t)(pos + bytes)));
                json_object_set_new(root, t[i].name, e);
                pos += bytes;
        }
        char *s = root ? json_dumps(root, JSON_COMPACT) : NULL;
        if (!s)
                return NULL;
        size_t k = strlen(s), padded = (k + 7) & ~(size_t)7;
        char *p = realloc(s, padded + 1);
        if (!p) {
                free(s);
                return NULL;
        }
        memset(p + k, ' ', padded - k);
        p[padded] = '\0';
        *len = padded;
        return p;
}

typedef struct body {
        const mx_tensor_data *t;
        size_t n;
        const char *hdr;
        size_t hlen;
} body;

static int write_body(int fd, void *arg) {
        const body *b = arg;
        uint8_t len8[8];
        for (int i = 0; i < 8; i++)
                len8[i] = (uint8_t)((uint64_t)b->hlen >> (8 * i));
        int r = mx_write_all(fd, len8, 8);
        if (r == 0)
                r = mx_write_all(fd, b->hdr, b->hlen);
        for (size_t i = 0; r == 0 && i < b->n; i++) {
                uint64_t bytes;
                r = tensor_bytes(&b->t[i], &bytes);
                if (r == 0)
                        r = mx_write_all(fd, b->t[i].data, bytes);
        }
        return r;
}

int mx_safetensors_write(const char *path, const mx_tensor_data *t, size_t n, mx_error *err) {
        size_t hlen;
        _cleanup_free_ char *hdr = make_header(t, n, &hlen);
        if (!hdr)
                return mx_error_set(err, -ENOMEM, "%s: cannot build the header", path);
        body b = {t, n, hdr, hlen};
        return mx_write_atomic(path, write_body, &b, err);
}
