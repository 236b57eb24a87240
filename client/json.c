/* JSON output: protocol messages converted through their protobuf-c
 * descriptors, so that a field added to the proto shows up in --json
 * without a change here. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "client.h"
#include "mx_common.h"

json_t *mxc_json_u64(uint64_t v) {
        /* JSON integers are signed 64-bit in jansson; nothing real gets near. */
        return json_integer(v > INT64_MAX ? INT64_MAX : (json_int_t)v);
}

static json_t *json_number(double v) {
        return isfinite(v) ? json_real(v) : json_null();
}

/* The length of the valid UTF-8 sequence at s[0..n), 0 when invalid:
 * no overlong forms, no surrogates, nothing past U+10FFFF. */
static size_t utf8_seq(const unsigned char *s, size_t n) {
        unsigned char c = s[0];
        if (c < 0x80)
                return 1;
        size_t len;
        uint32_t cp, min;
        if ((c & 0xe0) == 0xc0)
                len = 2, cp = c & 0x1f, min = 0x80;
        else if ((c & 0xf0) == 0xe0)
                len = 3, cp = c & 0x0f, min = 0x800;
        else if ((c & 0xf8) == 0xf0)
                len = 4, cp = c & 0x07, min = 0x10000;
        else
                return 0;
        if (n < len)
                return 0;
        for (size_t i = 1; i < len; i++) {
                if ((s[i] & 0xc0) != 0x80)
                        return 0;
                cp = cp << 6 | (s[i] & 0x3f);
        }
        if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
                return 0;
        return len;
}

json_t *mxc_json_text(const char *s, size_t n) {
        json_t *j = json_stringn(s, n);
        if (j)
                return j;
        /* Not UTF-8: one U+FFFD per bad byte, as a terminal would show it. */
        size_t cap;
        if (!mx_mul_size(n, 3, &cap))
                return NULL;
        _cleanup_free_ char *fixed = malloc(cap + 1);
        if (!fixed)
                return NULL;
        size_t out = 0;
        const unsigned char *u = (const unsigned char *)s;
        for (size_t i = 0; i < n;) {
                size_t len = utf8_seq(u + i, n - i);
                if (len) {
                        memcpy(fixed + out, s + i, len);
                        out += len;
                        i += len;
                } else {
                        memcpy(fixed + out, "\xef\xbf\xbd", 3);
                        out += 3;
                        i++;
                }
        }
        return json_stringn(fixed, out);
}

static size_t element_size(ProtobufCType t) {
        switch (t) {
        case PROTOBUF_C_TYPE_INT32:
        case PROTOBUF_C_TYPE_SINT32:
        case PROTOBUF_C_TYPE_SFIXED32:
        case PROTOBUF_C_TYPE_UINT32:
        case PROTOBUF_C_TYPE_FIXED32:
                return 4;
        case PROTOBUF_C_TYPE_INT64:
        case PROTOBUF_C_TYPE_SINT64:
        case PROTOBUF_C_TYPE_SFIXED64:
        case PROTOBUF_C_TYPE_UINT64:
        case PROTOBUF_C_TYPE_FIXED64:
                return 8;
        case PROTOBUF_C_TYPE_FLOAT:
                return sizeof(float);
        case PROTOBUF_C_TYPE_DOUBLE:
                return sizeof(double);
        case PROTOBUF_C_TYPE_BOOL:
                return sizeof(protobuf_c_boolean);
        case PROTOBUF_C_TYPE_ENUM:
                return sizeof(int);
        case PROTOBUF_C_TYPE_BYTES:
                return sizeof(ProtobufCBinaryData);
        case PROTOBUF_C_TYPE_STRING:
        case PROTOBUF_C_TYPE_MESSAGE:
        default:
                return sizeof(void *);
        }
}

static json_t *field_value(const ProtobufCFieldDescriptor *f, const void *p) {
        switch (f->type) {
        case PROTOBUF_C_TYPE_INT32:
        case PROTOBUF_C_TYPE_SINT32:
        case PROTOBUF_C_TYPE_SFIXED32:
                return json_integer(*(const int32_t *)p);
        case PROTOBUF_C_TYPE_UINT32:
        case PROTOBUF_C_TYPE_FIXED32:
                return json_integer(*(const uint32_t *)p);
        case PROTOBUF_C_TYPE_INT64:
        case PROTOBUF_C_TYPE_SINT64:
        case PROTOBUF_C_TYPE_SFIXED64:
                return json_integer(*(const int64_t *)p);
        case PROTOBUF_C_TYPE_UINT64:
        case PROTOBUF_C_TYPE_FIXED64:
                return mxc_json_u64(*(const uint64_t *)p);
        case PROTOBUF_C_TYPE_FLOAT:
                return json_number(*(const float *)p);
        case PROTOBUF_C_TYPE_DOUBLE:
                return json_number(*(const double *)p);
        case PROTOBUF_C_TYPE_BOOL:
                return json_boolean(*(const protobuf_c_boolean *)p);
        case PROTOBUF_C_TYPE_ENUM: {
                int v = *(const int *)p;
                const ProtobufCEnumValue *ev = protobuf_c_enum_descriptor_get_value(f->descriptor, v);
                return ev ? json_string(ev->name) : json_integer(v);
        }
        case PROTOBUF_C_TYPE_STRING: {
                const char *s = *(char *const *)p;
                return s ? mxc_json_text(s, strlen(s)) : json_null();
        }
        case PROTOBUF_C_TYPE_MESSAGE: {
                const ProtobufCMessage *m = *(ProtobufCMessage *const *)p;
                return m ? mxc_json_message(m) : json_null();
        }
        case PROTOBUF_C_TYPE_BYTES: /* none in the protocol's replies */
        default:
                return json_null();
        }
}

json_t *mxc_json_message(const ProtobufCMessage *m) {
        const ProtobufCMessageDescriptor *d = m->descriptor;
        const uint8_t *base = (const uint8_t *)m;
        json_t *obj = json_object();
        if (!obj)
                return NULL;
        for (unsigned i = 0; i < d->n_fields; i++) {
                const ProtobufCFieldDescriptor *f = &d->fields[i];
                const void *member = base + f->offset;
                json_t *v;
                if (f->label == PROTOBUF_C_LABEL_REPEATED) {
                        size_t n = *(const size_t *)(base + f->quantifier_offset);
                        const uint8_t *arr = *(const uint8_t *const *)member;
                        v = json_array();
                        for (size_t k = 0; v && k < n; k++)
                                if (json_array_append_new(v, field_value(f, arr + k * element_size(f->type))) < 0) {
                                        json_decref(v);
                                        v = NULL;
                                }
                } else if (f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) {
                        if (*(const uint32_t *)(base + f->quantifier_offset) != f->id)
                                continue;
                        v = field_value(f, member);
                } else if (f->label == PROTOBUF_C_LABEL_OPTIONAL && f->type != PROTOBUF_C_TYPE_STRING &&
                           f->type != PROTOBUF_C_TYPE_MESSAGE) {
                        /* proto2 scalars say whether they were sent; strings
                         * and messages are NULL when not. */
                        bool has = *(const protobuf_c_boolean *)(base + f->quantifier_offset);
                        v = has ? field_value(f, member) : json_null();
                } else {
                        v = field_value(f, member);
                }
                if (json_object_set_new(obj, f->name, v) < 0) {
                        json_decref(obj);
                        return NULL;
                }
        }
        return obj;
}

int mxc_json_print(json_t *j) {
        if (!j)
                return -ENOMEM;
        /* Ten digits keep seconds and rates exact enough without the
         * 0.10000000000000001 that a round trip through %.17g shows. */
        _cleanup_free_ char *s = json_dumps(j, JSON_COMPACT | JSON_REAL_PRECISION(10));
        json_decref(j);
        if (!s)
                return -ENOMEM;
        if (fputs(s, stdout) < 0 || putchar('\n') < 0 || fflush(stdout) != 0)
                return errno ? -errno : -EIO;
        return 0;
}
