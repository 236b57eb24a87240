/* The safetensors header: 8 bytes of little-endian header length, a JSON
 * object mapping tensor names to {dtype, shape, data_offsets}, then the
 * data. Every field comes from an untrusted file, so each is checked before
 * it is used, and all of the data must be covered by exactly one tensor:
 * no gaps, no overlaps, nothing past the end. */
#include <jansson.h>
#include <string.h>

#include "mx_common.h"
#include "text.h"

#include "mixtral.h"

static const struct {
        const char *name;
        int dtype; /* mx_dtype, or -1 for a known but unsupported one */
} dtypes[] = {
        {"BF16", MX_DTYPE_BF16}, {"F16", MX_DTYPE_F16}, {"F32", MX_DTYPE_F32},
        {"F64", -1},  {"I64", -1}, {"I32", -1}, {"I16", -1},     {"I8", -1},
        {"U64", -1},  {"U32", -1}, {"U16", -1}, {"U8", -1},      {"BOOL", -1},
        {"F8_E4M3", -1}, {"F8_E5M2", -1}, {"F8_E8M0", -1}, {"F4", -1}, {"F6_E2M3", -1},
        {"F6_E3M2", -1}, {"C64", -1},
};

typedef struct parse_ctx {
        const char *label;
        mx_error *err;
        mx_tensor *t;
        size_t n;
} parse_ctx;

/* Names and values go into one-line messages: keep them printable. */
static const char *printable(const char *s, char *buf, size_t size) {
        size_t j = 0;
        for (size_t i = 0; s[i] && j + 4 < size; i++)
                buf[j++] = (unsigned char)s[i] < 0x20 || s[i] == 0x7f ? '?' : s[i];
        if (s[j] && j + 4 >= size)
                memcpy(buf + j, "...", 3), j += 3;
        buf[j] = '\0';
        return buf;
}

#define TENSOR_ERR(c, code, name, fmt, ...)                                                        \
        ({                                                                                         \
                char _nb[160];                                                                     \
                mx_error_set((c)->err, (code), "%s: tensor \"%s\": " fmt, (c)->label,              \
                             printable((name), _nb, sizeof(_nb)), ##__VA_ARGS__);                  \
        })

static int parse_dtype(parse_ctx *c, const char *name, json_t *v, mx_dtype *out) {
        const char *s = json_string_value(v);
        char vb[64];
        if (!s)
                return TENSOR_ERR(c, -EINVAL, name, "\"dtype\" is missing or not a string");
        for (size_t i = 0; i < MX_ELEMENTSOF(dtypes); i++)
                if (strcmp(s, dtypes[i].name) == 0) {
                        if (dtypes[i].dtype < 0)
                                return TENSOR_ERR(c, -EOPNOTSUPP, name,
                                                  "dtype %s is not supported (BF16, F16, F32)", s);
                        *out = (mx_dtype)dtypes[i].dtype;
                        return 0;
                }
        return TENSOR_ERR(c, -EINVAL, name, "unknown dtype \"%s\"", printable(s, vb, sizeof(vb)));
}

static int parse_u64(json_t *v, uint64_t *out) {
        if (!json_is_integer(v) || json_integer_value(v) < 0)
                return -EINVAL;
        *out = (uint64_t)json_integer_value(v);
        return 0;
}

static int parse_shape(parse_ctx *c, const char *name, json_t *v, mx_tensor *t) {
        if (!json_is_array(v))
                return TENSOR_ERR(c, -EINVAL, name, "\"shape\" is missing or not an array");
        size_t nd = json_array_size(v);
        if (nd > MX_MAX_DIMS)
                return TENSOR_ERR(c, -EINVAL, name, "%zu dimensions (at most %d)", nd, MX_MAX_DIMS);
        t->ndim = (uint32_t)nd;
        for (size_t i = 0; i < nd; i++)
                if (parse_u64(json_array_get(v, i), &t->shape[i]) < 0)
                        return TENSOR_ERR(c, -EINVAL, name,
                                          "dimension %zu of \"shape\" is not a non-negative integer", i);
        return 0;
}

static int check_size(parse_ctx *c, const char *name, const mx_tensor *t) {
        uint64_t bytes;
        if (mx_dtype_tensor_bytes(t->dtype, t->shape, t->ndim, &bytes) < 0)
                return TENSOR_ERR(c, -EOVERFLOW, name, "shape overflows 64 bits");
        if (bytes != t->nbytes)
                return TENSOR_ERR(c, -EINVAL, name,
                                  "data_offsets span %llu bytes but its shape of %s needs %llu",
                                  (unsigned long long)t->nbytes, mx_dtype_name(t->dtype),
                                  (unsigned long long)bytes);
        return 0;
}

static int parse_tensor(parse_ctx *c, const char *name, json_t *v, mx_tensor *t) {
        if (!json_is_object(v))
                return TENSOR_ERR(c, -EINVAL, name, "entry is not a JSON object");
        int r = parse_dtype(c, name, json_object_get(v, "dtype"), &t->dtype);
        if (r == 0)
                r = parse_shape(c, name, json_object_get(v, "shape"), t);
        if (r < 0)
                return r;
        json_t *off = json_object_get(v, "data_offsets");
        uint64_t begin, end;
        if (!json_is_array(off) || json_array_size(off) != 2 ||
            parse_u64(json_array_get(off, 0), &begin) < 0 ||
            parse_u64(json_array_get(off, 1), &end) < 0)
                return TENSOR_ERR(c, -EINVAL, name,
                                  "\"data_offsets\" is not a pair of non-negative integers");
        if (end < begin)
                return TENSOR_ERR(c, -EINVAL, name, "data_offsets [%llu, %llu] are out of order",
                                  (unsigned long long)begin, (unsigned long long)end);
        t->offset = begin; /* relative to the data until the layout is checked */
        t->nbytes = end - begin;
        if (!(t->name = strdup(name)))
                return mx_error_set(c->err, -ENOMEM, "%s: out of memory", c->label);
        return check_size(c, name, t);
}

static int metadata_ok(parse_ctx *c, json_t *v) {
        const char *k;
        json_t *x;
        if (!json_is_object(v))
                return mx_error_set(c->err, -EINVAL, "%s: \"__metadata__\" is not an object", c->label);
        json_object_foreach(v, k, x) if (!json_is_string(x)) {
                char kb[96];
                return mx_error_set(c->err, -EINVAL, "%s: __metadata__ \"%s\" is not a string",
                                    c->label, printable(k, kb, sizeof(kb)));
        }
        return 0;
}

static int by_offset(const void *a, const void *b) {
        const mx_tensor *x = a, *y = b;
        if (x->offset != y->offset)
                return x->offset < y->offset ? -1 : 1;
        return x->nbytes < y->nbytes ? -1 : x->nbytes > y->nbytes;
}

/* Sorted by offset, the tensors must tile [0, data_len) exactly. */
static int check_layout(parse_ctx *c, uint64_t data_len) {
        qsort(c->t, c->n, sizeof(mx_tensor), by_offset);
        uint64_t pos = 0;
        for (size_t i = 0; i < c->n; i++) {
                const mx_tensor *t = &c->t[i];
                if (t->offset > pos)
                        return TENSOR_ERR(c, -EINVAL, t->name,
                                          "gap of %llu bytes before its data at offset %llu",
                                          (unsigned long long)(t->offset - pos),
                                          (unsigned long long)t->offset);
                if (t->offset < pos)
                        return TENSOR_ERR(c, -EINVAL, t->name,
                                          "data at offset %llu overlaps \"%s\"",
                                          (unsigned long long)t->offset, c->t[i - 1].name);
                pos = t->offset + t->nbytes; /* cannot overflow: end was a u64 */
                if (pos > data_len)
                        return TENSOR_ERR(c, -EINVAL, t->name,
                                          "data ends at %llu, past the end of the file's %llu data bytes",
                                          (unsigned long long)pos, (unsigned long long)data_len);
        }
        if (pos != data_len)
                return mx_error_set(c->err, -EINVAL,
                                    "%s: %llu bytes of data after the last tensor belong to none",
                                    c->label, (unsigned long long)(data_len - pos));
        return 0;
}

static int parse_json(parse_ctx *c, const char *hdr, uint64_t len) {
        for (uint64_t i = 0; i < len;) {
                size_t k = mx_utf8_valid_char(hdr + i, len - i);
                if (k == 0)
                        return mx_error_set(c->err, -EINVAL,
                                            "%s: header is not valid UTF-8 (byte %llu)", c->label,
                                            (unsigned long long)(8 + i));
                i += k;
        }
        json_error_t je;
        json_auto_t *root = json_loadb(hdr, len, JSON_REJECT_DUPLICATES, &je);
        if (!root && json_error_code(&je) == json_error_duplicate_key)
                return mx_error_set(c->err, -EINVAL, "%s: duplicate tensor %s", c->label,
                                    strstr(je.text, "near ") ? strstr(je.text, "near ") + 5 : "");
        if (!root)
                return mx_error_set(c->err, -EINVAL, "%s: header is not valid JSON: %s at byte %d",
                                    c->label, je.text, 8 + je.position);
        if (!json_is_object(root))
                return mx_error_set(c->err, -EINVAL, "%s: header is not a JSON object", c->label);

        c->t = calloc(json_object_size(root) + 1, sizeof(mx_tensor));
        if (!c->t)
                return mx_error_set(c->err, -ENOMEM, "%s: out of memory", c->label);
        const char *name;
        json_t *v;
        json_object_foreach(root, name, v) {
                int r = strcmp(name, "__metadata__") == 0 ? metadata_ok(c, v)
                                                          : parse_tensor(c, name, v, &c->t[c->n++]);
                if (r < 0)
                        return r;
        }
        return 0;
}

int mx_safetensors_parse(const uint8_t *file, uint64_t size, const char *label,
                         mx_tensor **tensors, size_t *n, mx_error *err) {
        parse_ctx c = {.label = label, .err = err};
        if (size < 8)
                return mx_error_set(err, -EINVAL, "%s: %llu bytes is too short for a safetensors file",
                                    label, (unsigned long long)size);
        uint64_t hlen = 0;
        for (int i = 7; i >= 0; i--)
                hlen = hlen << 8 | file[i];
        if (hlen > MX_SAFETENSORS_MAX_HEADER)
                return mx_error_set(err, -EINVAL, "%s: header length %llu is over the %u-byte limit",
                                    label, (unsigned long long)hlen, MX_SAFETENSORS_MAX_HEADER);
        if (hlen > size - 8)
                return mx_error_set(err, -EINVAL,
                                    "%s: header length %llu runs past the end of the %llu-byte file",
                                    label, (unsigned long long)hlen, (unsigned long long)size);
        int r = parse_json(&c, (const char *)file + 8, hlen);
        if (r == 0)
                r = check_layout(&c, size - 8 - hlen);
        if (r < 0) {
                mx_tensors_free(c.t, c.n);
                return r;
        }
        for (size_t i = 0; i < c.n; i++) {
                c.t[i].offset += 8 + hlen;
                c.t[i].data = file + c.t[i].offset;
        }
        *tensors = c.t;
        *n = c.n;
        return 0;
}

void mx_tensors_free(mx_tensor *tensors, size_t n) {
        for (size_t i = 0; tensors && i < n; i++)
                free(tensors[i].name);
        free(tensors);
}
