/* The GGUF header, as ggml's gguf.md defines it (versions 2 and 3; version
 * 1's 32-bit counts are refused), little-endian:
 *
 *   "GGUF", u32 version, u64 tensor count, u64 metadata count,
 *   metadata: string key, u32 value type, value        (per entry)
 *   tensor infos: string name, u32 n_dims, u64 ne[n_dims], u32 ggml type,
 *                 u64 offset from the data section       (per tensor)
 *   padding to general.alignment (default 32), then the tensor data.
 *
 * A string is a u64 byte count and the bytes; an array a u32 element type,
 * a u64 element count and the elements (arrays of arrays are allowed by
 * the format; they are walked, to a bounded depth, and never used).
 *
 * Every field comes from an untrusted file and is checked before it is
 * used: counts against the bytes left (each entry takes a known minimum),
 * string and array lengths, value types, booleans, duplicate keys,
 * general.alignment (a u32 power of two), and per tensor its name, rank,
 * dimensions (none zero, products without overflow), ggml type (supported
 * ones only, named when refused), rows of whole blocks, an aligned offset,
 * data inside the file, no overlap with another tensor, no duplicate name.
 * Nothing is copied: keys, values and tensor data point into the mapping
 * (mx_tensor owns only its name). Called by the model loader (gguf_model.c)
 * and the fuzzer. */
#include <string.h>

#include "model.h"
#include "mx_common.h"
#include "text.h"

#if __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "GGUF files are little-endian; this reader assumes the host is too"
#endif

#define MAX_KEY 65535u
#define MAX_ENTRIES (1u << 20) /* metadata entries and tensors: real files have a few thousand */
#define MAX_ARRAY_DEPTH 4
#define MAX_ALIGNMENT (1u << 20)

static const uint8_t value_size[MX_GGUF_TYPE_COUNT] = {
        [MX_GGUF_U8] = 1,  [MX_GGUF_I8] = 1,  [MX_GGUF_U16] = 2, [MX_GGUF_I16] = 2,
        [MX_GGUF_U32] = 4, [MX_GGUF_I32] = 4, [MX_GGUF_F32] = 4, [MX_GGUF_BOOL] = 1,
        [MX_GGUF_U64] = 8, [MX_GGUF_I64] = 8, [MX_GGUF_F64] = 8,
};

static const char *const value_name[MX_GGUF_TYPE_COUNT] = {
        "u8", "i8", "u16", "i16", "u32", "i32", "f32", "bool", "string", "array", "u64", "i64", "f64",
};

/* ggml's types by number: the supported ones map to an mx_dtype, the
 * others are only named in the refusal. */
static const struct {
        const char *name;
        int dtype; /* mx_dtype, or -1 */
} ggml_types[] = {
        [0] = {"F32", MX_DTYPE_F32},      [1] = {"F16", MX_DTYPE_F16},
        [2] = {"Q4_0", MX_DTYPE_Q4_0},    [3] = {"Q4_1", -1},
        [6] = {"Q5_0", -1},               [7] = {"Q5_1", -1},
        [8] = {"Q8_0", MX_DTYPE_Q8_0},    [9] = {"Q8_1", -1},
        [10] = {"Q2_K", -1},              [11] = {"Q3_K", -1},
        [12] = {"Q4_K", MX_DTYPE_Q4_K},   [13] = {"Q5_K", MX_DTYPE_Q5_K},
        [14] = {"Q6_K", MX_DTYPE_Q6_K},   [15] = {"Q8_K", -1},
        [16] = {"IQ2_XXS", -1},           [17] = {"IQ2_XS", -1},
        [18] = {"IQ3_XXS", -1},           [19] = {"IQ1_S", -1},
        [20] = {"IQ4_NL", -1},            [21] = {"IQ3_S", -1},
        [22] = {"IQ2_S", -1},             [23] = {"IQ4_XS", -1},
        [24] = {"I8", -1},                [25] = {"I16", -1},
        [26] = {"I32", -1},               [27] = {"I64", -1},
        [28] = {"F64", -1},               [29] = {"IQ1_M", -1},
        [30] = {"BF16", MX_DTYPE_BF16},   [34] = {"TQ1_0", -1},
        [35] = {"TQ2_0", -1},             [39] = {"MXFP4", -1},
        [40] = {"NVFP4", -1},             [41] = {"Q1_0", -1},
        [42] = {"Q2_0", -1},
};

const char *mx_gguf_type_name(uint32_t type) {
        return type < MX_ELEMENTSOF(ggml_types) && ggml_types[type].name ? ggml_types[type].name : NULL;
}

uint32_t mx_gguf_ggml_type(mx_dtype t) {
        for (uint32_t i = 0; i < MX_ELEMENTSOF(ggml_types); i++)
                if (ggml_types[i].name && ggml_types[i].dtype == (int)t)
                        return i;
        return UINT32_MAX;
}

/* ---- reading ---------------------------------------------------------------- */

typedef struct rd {
        const uint8_t *base, *p, *end;
        const char *label;
        mx_error *err;
} rd;

static uint64_t left(const rd *r) {
        return (uint64_t)(r->end - r->p);
}

static uint64_t pos(const rd *r) {
        return (uint64_t)(r->p - r->base);
}

static int truncated(rd *r, const char *what) {
        return mx_error_set(r->err, -EINVAL, "%s: the file ends at byte %llu, inside %s", r->label,
                            (unsigned long long)(r->end - r->base), what);
}

static bool take(rd *r, uint64_t n, const uint8_t **out) {
        if (left(r) < n)
                return false;
        *out = r->p;
        r->p += n;
        return true;
}

static bool get_u32(rd *r, uint32_t *v) {
        const uint8_t *p;
        return take(r, 4, &p) && (memcpy(v, p, 4), true);
}

static bool get_u64(rd *r, uint64_t *v) {
        const uint8_t *p;
        return take(r, 8, &p) && (memcpy(v, p, 8), true);
}

/* A string's length and bytes; false when the file ends first. */
static bool get_string(rd *r, const uint8_t **s, uint64_t *len) {
        return get_u64(r, len) && take(r, *len, s);
}

/* ---- metadata ---------------------------------------------------------------- */

/* Keys go into messages: printable ASCII, which every real key is. */
static bool key_ok(const uint8_t *s, uint64_t len) {
        for (uint64_t i = 0; i < len; i++)
                if (s[i] < 0x20 || s[i] > 0x7e)
                        return false;
        return true;
}

#define KEY_ERR(r, kv, code, fmt, ...)                                                             \
        mx_error_set((r)->err, (code), "%s: key \"%.*s\": " fmt, (r)->label, (int)(kv)->key_len,   \
                     (kv)->key, ##__VA_ARGS__)

static int skip_array(rd *r, const mx_gguf_kv *kv, int depth, uint32_t *elem, uint64_t *n);

/* Moves past n values of type t (n * size bytes, or n strings or arrays). */
static int skip_values(rd *r, const mx_gguf_kv *kv, uint32_t t, uint64_t n, int depth) {
        const uint8_t *p;
        if (value_size[t]) {
                /* n * size cannot overflow: n was checked against the bytes left. */
                if (!take(r, n * value_size[t], &p))
                        return truncated(r, "a metadata value");
                for (uint64_t i = 0; t == MX_GGUF_BOOL && i < n; i++)
                        if (p[i] > 1)
                                return KEY_ERR(r, kv, -EINVAL, "boolean %u is neither 0 nor 1", p[i]);
                return 0;
        }
        for (uint64_t i = 0; i < n; i++) {
                uint64_t len, m;
                uint32_t e;
                int k = t == MX_GGUF_STRING ? (get_string(r, &p, &len) ? 0 : truncated(r, "a string"))
                                            : skip_array(r, kv, depth + 1, &e, &m);
                if (k < 0)
                        return k;
        }
        return 0;
}

/* An array's header, then its elements; the count is checked against the
 * bytes left before anything is walked. */
static int skip_array(rd *r, const mx_gguf_kv *kv, int depth, uint32_t *elem, uint64_t *n) {
        if (depth > MAX_ARRAY_DEPTH)
                return KEY_ERR(r, kv, -EINVAL, "arrays nested more than %d deep", MAX_ARRAY_DEPTH);
        if (!get_u32(r, elem) || !get_u64(r, n))
                return truncated(r, "an array header");
        if (*elem >= MX_GGUF_TYPE_COUNT)
                return KEY_ERR(r, kv, -EINVAL, "array of unknown value type %u", *elem);
        /* the least an element can take: a string's or an array's header */
        uint64_t least = value_size[*elem] ? value_size[*elem] : *elem == MX_GGUF_STRING ? 8 : 12;
        if (*n > left(r) / least)
                return KEY_ERR(r, kv, -EINVAL, "array of %llu elements runs past the end of the file",
                               (unsigned long long)*n);
        return skip_values(r, kv, *elem, *n, depth);
}

static int parse_kv(rd *r, uint64_t i, mx_gguf_kv *kv) {
        const uint8_t *key;
        uint64_t len;
        if (!get_string(r, &key, &len))
                return truncated(r, "a metadata key");
        if (len == 0 || len > MAX_KEY || !key_ok(key, len))
                return mx_error_set(r->err, -EINVAL,
                                    "%s: metadata entry %llu: the key is empty, longer than %u bytes or "
                                    "not printable ASCII", r->label, (unsigned long long)i, MAX_KEY);
        kv->key = (const char *)key;
        kv->key_len = (uint32_t)len;
        kv->n = 1;
        if (!get_u32(r, &kv->type))
                return truncated(r, "a metadata type");
        if (kv->type >= MX_GGUF_TYPE_COUNT)
                return KEY_ERR(r, kv, -EINVAL, "unknown value type %u", kv->type);
        const uint8_t *start = r->p;
        int k = kv->type == MX_GGUF_ARRAY ? skip_array(r, kv, 0, &kv->elem_type, &kv->n)
                                          : skip_values(r, kv, kv->type, 1, 0);
        if (k < 0)
                return k;
        kv->value = kv->type == MX_GGUF_ARRAY ? start + 12 : start;
        kv->bytes = (uint64_t)(r->p - kv->value);
        return 0;
}

static int key_cmp(const char *a, uint32_t alen, const char *b, uint32_t blen) {
        int c = memcmp(a, b, alen < blen ? alen : blen);
        return c ? c : (alen > blen) - (alen < blen);
}

static int by_key(const void *a, const void *b) {
        const mx_gguf_kv *x = *(const mx_gguf_kv *const *)a, *y = *(const mx_gguf_kv *const *)b;
        return key_cmp(x->key, x->key_len, y->key, y->key_len);
}

const mx_gguf_kv *mx_gguf_find(const mx_gguf *g, const char *key) {
        size_t lo = 0, hi = g->n_kv, len = strlen(key);
        while (lo < hi) {
                size_t mid = lo + (hi - lo) / 2;
                int c = key_cmp(g->sorted[mid]->key, g->sorted[mid]->key_len, key, (uint32_t)len);
                if (c == 0)
                        return g->sorted[mid];
                if (c < 0)
                        lo = mid + 1;
                else
                        hi = mid;
        }
        return NULL;
}

/* Sorted for lookup; a key given twice is refused (which value would count?). */
static int index_keys(rd *r, mx_gguf *g) {
        g->sorted = calloc(g->n_kv + 1, sizeof(*g->sorted));
        if (!g->sorted)
                return mx_error_set(r->err, -ENOMEM, "%s: out of memory", r->label);
        for (size_t i = 0; i < g->n_kv; i++)
                g->sorted[i] = &g->kv[i];
        qsort(g->sorted, g->n_kv, sizeof(*g->sorted), by_key);
        for (size_t i = 1; i < g->n_kv; i++)
                if (by_key(&g->sorted[i - 1], &g->sorted[i]) == 0)
                        return KEY_ERR(r, g->sorted[i], -EINVAL, "given twice");
        return 0;
}

static int read_alignment(rd *r, mx_gguf *g) {
        const mx_gguf_kv *kv = mx_gguf_find(g, "general.alignment");
        g->alignment = MX_GGUF_DEFAULT_ALIGNMENT;
        if (!kv)
                return 0;
        if (kv->type != MX_GGUF_U32)
                return KEY_ERR(r, kv, -EINVAL, "type %s, must be u32", value_name[kv->type]);
        memcpy(&g->alignment, kv->value, 4);
        if (g->alignment == 0 || (g->alignment & (g->alignment - 1)) || g->alignment > MAX_ALIGNMENT)
                return KEY_ERR(r, kv, -EINVAL, "%u is not a power of two from 1 to %u", g->alignment,
                               MAX_ALIGNMENT);
        return 0;
}

/* ---- tensor infos -------------------------------------------------------------- */

#define TENSOR_ERR(r, t, code, fmt, ...)                                                           \
        mx_error_set((r)->err, (code), "%s: tensor \"%s\": " fmt, (r)->label, (t)->name, ##__VA_ARGS__)

/* Names go into messages and lookups: UTF-8 without control characters. */
static bool name_ok(const uint8_t *s, uint64_t len) {
        for (uint64_t i = 0; i < len; i++)
                if (s[i] < 0x20 || s[i] == 0x7f)
                        return false;
        return mx_utf8_valid((const char *)s, len);
}

static int parse_type(rd *r, mx_tensor *t) {
        uint32_t type;
        if (!get_u32(r, &type))
                return truncated(r, "a tensor info");
        const char *name = mx_gguf_type_name(type);
        if (!name)
                return TENSOR_ERR(r, t, -EINVAL, "unknown ggml type %u", type);
        if (ggml_types[type].dtype < 0)
                return TENSOR_ERR(r, t, -EOPNOTSUPP,
                                  "ggml type %s is not supported (F32, F16, BF16, Q8_0, Q4_0, Q4_K, Q5_K, Q6_K)",
                                  name);
        t->dtype = (mx_dtype)ggml_types[type].dtype;
        return 0;
}

static int parse_shape(rd *r, mx_tensor *t) {
        uint64_t ne[MX_MAX_DIMS];
        if (!get_u32(r, &t->ndim))
                return truncated(r, "a tensor info");
        if (t->ndim == 0 || t->ndim > MX_MAX_DIMS)
                return TENSOR_ERR(r, t, -EINVAL, "%u dimensions (1 to %d)", t->ndim, MX_MAX_DIMS);
        for (uint32_t i = 0; i < t->ndim; i++) {
                if (!get_u64(r, &ne[i]))
                        return truncated(r, "a tensor info");
                if (ne[i] == 0 || ne[i] > INT64_MAX)
                        return TENSOR_ERR(r, t, -EINVAL, "dimension %u is %llu", i,
                                          (unsigned long long)ne[i]);
                t->shape[t->ndim - 1 - i] = ne[i]; /* ggml's ne[0] is the row */
        }
        return 0;
}

static int check_size(rd *r, mx_tensor *t) {
        int k = mx_dtype_tensor_bytes(t->dtype, t->shape, t->ndim, &t->nbytes);
        if (k == -EINVAL)
                return TENSOR_ERR(r, t, -EINVAL, "rows of %llu weights are not whole %s blocks of %u",
                                  (unsigned long long)t->shape[t->ndim - 1], mx_dtype_name(t->dtype),
                                  mx_dtype_block_elems(t->dtype));
        if (k < 0)
                return TENSOR_ERR(r, t, -EOVERFLOW, "its size overflows 64 bits");
        return 0;
}

static int parse_tensor(rd *r, const mx_gguf *g, uint64_t i, mx_tensor *t) {
        const uint8_t *name;
        uint64_t len;
        if (!get_string(r, &name, &len))
                return truncated(r, "a tensor name");
        if (len == 0 || len > MX_GGUF_MAX_NAME || !name_ok(name, len))
                return mx_error_set(r->err, -EINVAL,
                                    "%s: tensor %llu: the name is empty, longer than %u bytes or not "
                                    "printable UTF-8", r->label, (unsigned long long)i, MX_GGUF_MAX_NAME);
        if (!(t->name = strndup((const char *)name, len)))
                return mx_error_set(r->err, -ENOMEM, "%s: out of memory", r->label);
        int k = parse_shape(r, t);
        if (k == 0)
                k = parse_type(r, t);
        if (k == 0)
                k = check_size(r, t);
        if (k < 0)
                return k;
        if (!get_u64(r, &t->offset))
                return truncated(r, "a tensor info");
        if (t->offset % g->alignment)
                return TENSOR_ERR(r, t, -EINVAL, "data offset %llu is not a multiple of the alignment %u",
                                  (unsigned long long)t->offset, g->alignment);
        return 0;
}

static int by_offset(const void *a, const void *b) {
        const mx_tensor *x = *(const mx_tensor *const *)a, *y = *(const mx_tensor *const *)b;
        return (x->offset > y->offset) - (x->offset < y->offset);
}

static int by_name(const void *a, const void *b) {
        return strcmp((*(const mx_tensor *const *)a)->name, (*(const mx_tensor *const *)b)->name);
}

/* Offsets become positions in the file: each tensor inside it, none
 * overlapping another, no name twice. */
static int place_tensors(rd *r, mx_gguf *g, uint64_t size) {
        _cleanup_free_ mx_tensor **v = calloc(g->n_tensors + 1, sizeof(*v));
        if (!v)
                return mx_error_set(r->err, -ENOMEM, "%s: out of memory", r->label);
        for (size_t i = 0; i < g->n_tensors; i++) {
                mx_tensor *t = v[i] = &g->tensors[i];
                uint64_t end;
                if (!mx_add_u64(g->data_offset, t->offset, &t->offset) ||
                    !mx_add_u64(t->offset, t->nbytes, &end) || end > size)
                        return TENSOR_ERR(r, t, -EINVAL, "its %llu bytes of data run past the end of the file",
                                          (unsigned long long)t->nbytes);
                t->data = r->base + t->offset;
        }
        qsort(v, g->n_tensors, sizeof(*v), by_offset);
        for (size_t i = 1; i < g->n_tensors; i++)
                if (v[i]->offset < v[i - 1]->offset + v[i - 1]->nbytes)
                        return TENSOR_ERR(r, v[i], -EINVAL, "its data overlaps tensor \"%s\"", v[i - 1]->name);
        qsort(v, g->n_tensors, sizeof(*v), by_name);
        for (size_t i = 1; i < g->n_tensors; i++)
                if (strcmp(v[i]->name, v[i - 1]->name) == 0)
                        return TENSOR_ERR(r, v[i], -EINVAL, "given twice");
        return 0;
}

/* ---- the header --------------------------------------------------------------- */

/* A count is plausible when that many of the smallest entry fit in what is
 * left of the file (and under a fixed cap), so nothing is allocated for
 * entries that cannot be there. */
static int check_count(rd *r, uint64_t n, uint64_t least, const char *what) {
        if (n > MAX_ENTRIES || n > left(r) / least)
                return mx_error_set(r->err, -EINVAL, "%s: %llu %s cannot fit in the file", r->label,
                                    (unsigned long long)n, what);
        return 0;
}

static int parse_preamble(rd *r, mx_gguf *g, uint64_t *n_tensors, uint64_t *n_kv) {
        const uint8_t *magic;
        if (!take(r, 4, &magic) || memcmp(magic, "GGUF", 4) != 0)
                return mx_error_set(r->err, -EINVAL, "%s: not a GGUF file (no \"GGUF\" magic)", r->label);
        if (!get_u32(r, &g->version))
                return truncated(r, "the header");
        if (g->version == 1)
                return mx_error_set(r->err, -EOPNOTSUPP, "%s: GGUF version 1 is not supported (2 or 3)",
                                    r->label);
        if (g->version != 2 && g->version != 3)
                return mx_error_set(r->err, -EINVAL, "%s: unknown GGUF version %u (2 or 3)%s", r->label,
                                    g->version, (g->version & 0xffff) == 0 ? ", or a big-endian file" : "");
        if (!get_u64(r, n_tensors) || !get_u64(r, n_kv))
                return truncated(r, "the header");
        /* least bytes: a key of one byte, its type and a one-byte value; a
         * one-byte name, one dimension, type and offset */
        int k = check_count(r, *n_kv, 8 + 1 + 4 + 1, "metadata entries");
        if (k == 0)
                k = check_count(r, *n_tensors, 8 + 1 + 4 + 8 + 4 + 8, "tensors");
        return k;
}

int mx_gguf_parse(const uint8_t *file, uint64_t size, const char *label, mx_gguf *g,
                  mx_error *err) {
        rd r = {file, file, file + size, label, err};
        uint64_t n_tensors = 0, n_kv = 0;
        *g = (mx_gguf){.label = label};
        int k = parse_preamble(&r, g, &n_tensors, &n_kv);
        if (k < 0)
                return k;
        g->kv = calloc(n_kv + 1, sizeof(*g->kv));
        g->tensors = calloc(n_tensors + 1, sizeof(*g->tensors));
        if (!g->kv || !g->tensors)
                k = mx_error_set(err, -ENOMEM, "%s: out of memory", label);
        for (; k == 0 && g->n_kv < n_kv; g->n_kv++)
                k = parse_kv(&r, g->n_kv, &g->kv[g->n_kv]);
        if (k == 0)
                k = index_keys(&r, g);
        if (k == 0)
                k = read_alignment(&r, g);
        for (; k == 0 && g->n_tensors < n_tensors; g->n_tensors++)
                k = parse_tensor(&r, g, g->n_tensors, &g->tensors[g->n_tensors]);
        if (k == 0) {
                /* the data starts at the next multiple of the alignment */
                uint64_t at = pos(&r), pad = (g->alignment - at % g->alignment) % g->alignment;
                g->data_offset = n_tensors ? at + pad : at;
                k = place_tensors(&r, g, size);
        }
        if (k < 0) /* (the counts include the entry that failed: its name is freed too) */
                mx_gguf_clear(g);
        return k;
}

void mx_gguf_clear(mx_gguf *g) {
        mx_tensors_free(g->tensors, g->n_tensors);
        free(g->kv);
        free(g->sorted);
        *g = (mx_gguf){.label = g->label};
}

/* ---- values --------------------------------------------------------------------- */

static bool is_int(uint32_t t) {
        return t <= MX_GGUF_I32 || t == MX_GGUF_U64 || t == MX_GGUF_I64;
}

/* An integer value of any width, as sign and magnitude. */
static void int_value(uint32_t t, const uint8_t *p, bool *neg, uint64_t *mag) {
        uint64_t u = 0;
        memcpy(&u, p, value_size[t]);
        bool is_signed = t == MX_GGUF_I8 || t == MX_GGUF_I16 || t == MX_GGUF_I32 || t == MX_GGUF_I64;
        unsigned bits = 8u * value_size[t];
        *neg = is_signed && (u >> (bits - 1)) & 1;
        if (*neg && bits < 64)
                u |= ~((UINT64_C(1) << bits) - 1); /* sign-extended */
        *mag = *neg ? 0 - u : u;
}

static double real_value(uint32_t t, const uint8_t *p) {
        if (t == MX_GGUF_F32) {
                float f;
                memcpy(&f, p, 4);
                return f;
        }
        double d;
        memcpy(&d, p, 8);
        return d;
}

mx_cfg_value mx_gguf_value(const mx_gguf *g, const char *key) {
        const mx_gguf_kv *kv = mx_gguf_find(g, key);
        mx_cfg_value v = {MX_CFG_ABSENT};
        if (!kv)
                return v;
        if (is_int(kv->type)) {
                v.kind = MX_CFG_INT;
                int_value(kv->type, kv->value, &v.neg, &v.mag);
        } else if (kv->type == MX_GGUF_F32 || kv->type == MX_GGUF_F64) {
                v.kind = MX_CFG_REAL;
                v.real = real_value(kv->type, kv->value);
        } else {
                v.kind = MX_CFG_OTHER;
        }
        return v;
}

static int wrong_type(const mx_gguf *g, const mx_gguf_kv *kv, const char *want, mx_error *err) {
        bool array = kv->type == MX_GGUF_ARRAY;
        return mx_error_set(err, -EINVAL, "%s: key \"%.*s\": %s%s, expected %s", g->label,
                            (int)kv->key_len, kv->key, array ? "an array of " : "type ",
                            value_name[array ? kv->elem_type : kv->type], want);
}

int mx_gguf_string(const mx_gguf *g, const char *key, const char **s, size_t *len,
                   mx_error *err) {
        const mx_gguf_kv *kv = mx_gguf_find(g, key);
        if (!kv)
                return -ENOENT;
        if (kv->type != MX_GGUF_STRING)
                return wrong_type(g, kv, "a string", err);
        *s = (const char *)kv->value + 8;
        *len = kv->bytes - 8;
        if (!mx_utf8_valid(*s, *len))
                return mx_error_set(err, -EINVAL, "%s: key \"%s\": the string is not UTF-8", g->label, key);
        return 0;
}

int mx_gguf_bool(const mx_gguf *g, const char *key, bool *out, mx_error *err) {
        const mx_gguf_kv *kv = mx_gguf_find(g, key);
        if (!kv)
                return 0;
        if (kv->type != MX_GGUF_BOOL)
                return wrong_type(g, kv, "a bool", err);
        *out = kv->value[0];
        return 0;
}

int mx_gguf_array(const mx_gguf *g, const char *key, uint32_t want_type, const mx_gguf_kv **out,
                  mx_error *err) {
        const mx_gguf_kv *kv = mx_gguf_find(g, key);
        if (!kv)
                return -ENOENT;
        uint32_t e = kv->elem_type;
        bool ok = kv->type == MX_GGUF_ARRAY &&
                  (want_type == MX_GGUF_STRING ? e == MX_GGUF_STRING
                   : want_type == MX_GGUF_F32  ? e == MX_GGUF_F32 || e == MX_GGUF_F64
                                               : is_int(e));
        if (!ok)
                return wrong_type(g, kv,
                                  want_type == MX_GGUF_STRING ? "an array of strings"
                                  : want_type == MX_GGUF_F32  ? "an array of floats"
                                                              : "an array of integers",
                                  err);
        *out = kv;
        return 0;
}

int64_t mx_gguf_int_at(const mx_gguf_kv *kv, uint64_t i) {
        bool neg;
        uint64_t mag;
        int_value(kv->elem_type, kv->value + i * value_size[kv->elem_type], &neg, &mag);
        if (mag > INT64_MAX)
                return neg ? INT64_MIN : INT64_MAX;
        return neg ? -(int64_t)mag : (int64_t)mag;
}

double mx_gguf_real_at(const mx_gguf_kv *kv, uint64_t i) {
        return real_value(kv->elem_type, kv->value + i * value_size[kv->elem_type]);
}

void mx_gguf_next_string(const uint8_t **at, const char **s, uint64_t *len) {
        memcpy(len, *at, 8);
        *s = (const char *)*at + 8;
        *at += 8 + *len;
}
