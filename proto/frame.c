/* Delimited framing: a varint byte count, then the message. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "mxproto.h"

int mxp_frame_find(const uint8_t *buf, size_t n, size_t max, size_t *hdr, size_t *body) {
        uint64_t len = 0;
        for (size_t i = 0; i < MXP_VARINT_MAX; i++) {
                if (i == n)
                        return 0;
                len |= (uint64_t)(buf[i] & 0x7f) << (7 * i);
                if (buf[i] & 0x80) {
                        if (len > max) /* already too long: do not wait for the rest */
                                return -EMSGSIZE;
                        continue;
                }
                if (i == MXP_VARINT_MAX - 1 && buf[i] > 1)
                        return -EBADMSG;
                if (len > max)
                        return -EMSGSIZE;
                if (n - (i + 1) < len)
                        return 0;
                *hdr = i + 1;
                *body = (size_t)len;
                return 1;
        }
        return -EBADMSG;
}

static size_t put_varint(uint8_t *p, uint64_t v) {
        size_t i = 0;
        for (; v >= 0x80; v >>= 7)
                p[i++] = (uint8_t)(v | 0x80);
        p[i++] = (uint8_t)v;
        return i;
}

int mxp_frame_pack(const ProtobufCMessage *m, uint8_t **out, size_t *len) {
        size_t body = protobuf_c_message_get_packed_size(m);
        if (body > SIZE_MAX - MXP_VARINT_MAX)
                return -EMSGSIZE;
        uint8_t *p = malloc(body + MXP_VARINT_MAX);
        if (!p)
                return -ENOMEM;
        size_t h = put_varint(p, body);
        protobuf_c_message_pack(m, p + h);
        *out = p;
        *len = h + body;
        return 0;
}

int mxp_write_all(int fd, const void *buf, size_t len) {
        const uint8_t *p = buf;
        while (len) {
                ssize_t k = write(fd, p, len);
                if (k < 0 && errno == EINTR)
                        continue;
                if (k < 0)
                        return -errno;
                p += k;
                len -= (size_t)k;
        }
        return 0;
}

int mxp_send(int fd, const ProtobufCMessage *m) {
        uint8_t *buf;
        size_t len;
        int r = mxp_frame_pack(m, &buf, &len);
        if (r < 0)
                return r;
        r = mxp_write_all(fd, buf, len);
        free(buf);
        return r;
}

/* n bytes, or -ECONNRESET when the stream ends before the first one and
 * -EPROTO when it ends after. */
static int read_exact(int fd, uint8_t *p, size_t n, bool started) {
        size_t got = 0;
        while (got < n) {
                ssize_t k = read(fd, p + got, n - got);
                if (k < 0 && errno == EINTR)
                        continue;
                if (k < 0)
                        return -errno;
                if (k == 0)
                        return got == 0 && !started ? -ECONNRESET : -EPROTO;
                got += (size_t)k;
        }
        return 0;
}

int mxp_read_frame(int fd, size_t max, uint8_t **body, size_t *len) {
        uint64_t v = 0;
        for (size_t i = 0;; i++) {
                uint8_t byte;
                if (i == MXP_VARINT_MAX)
                        return -EBADMSG;
                int r = read_exact(fd, &byte, 1, i > 0);
                if (r < 0)
                        return r;
                v |= (uint64_t)(byte & 0x7f) << (7 * i);
                if (v > max)
                        return -EMSGSIZE;
                if (!(byte & 0x80))
                        break;
        }
        uint8_t *p = malloc(v ? (size_t)v : 1);
        if (!p)
                return -ENOMEM;
        int r = read_exact(fd, p, (size_t)v, true);
        if (r < 0) {
                free(p);
                return r;
        }
        *body = p;
        *len = (size_t)v;
        return 0;
}

const char *mxp_error_name(int code) {
        static const char *const names[] = {
                "ERROR_UNSPECIFIED", "INVALID_ARGUMENT", "QUOTA_EXCEEDED", "BUSY", "TOO_LONG",
                "CANCELLED", "INTERNAL", "NOT_FOUND", "UNAVAILABLE", "BAD_FRAME",
        };
        return code >= 0 && (size_t)code < sizeof(names) / sizeof(names[0]) ? names[code] : "UNKNOWN";
}

const char *mxp_default_socket(const char *option, char *buf, size_t size) {
        if (option && *option)
                return option;
        const char *env = getenv("MIXTRALD_SOCKET");
        if (env && *env)
                return env;
        if (access(MXP_SYSTEM_SOCKET, F_OK) == 0)
                return MXP_SYSTEM_SOCKET;
        const char *xdg = getenv("XDG_RUNTIME_DIR");
        if (xdg && *xdg && snprintf(buf, size, "%s/mixtrald.sock", xdg) < (int)size)
                return buf;
        return MXP_SYSTEM_SOCKET;
}

/* ---- text with NUL bytes ------------------------------------------------ */

static bool read_varint(const uint8_t **p, const uint8_t *end, uint64_t *v) {
        *v = 0;
        for (int i = 0; i < MXP_VARINT_MAX && *p < end; i++) {
                uint8_t b = *(*p)++;
                *v |= (uint64_t)(b & 0x7f) << (7 * i);
                if (!(b & 0x80))
                        return true;
        }
        return false;
}

/* Walks one message's fields by the wire format (the frame already
 * unpacked, so it is well formed); depth bounds nesting. */
static const char *nul_in(const ProtobufCMessageDescriptor *d, const uint8_t *p, const uint8_t *end, int depth) {
        while (p < end && depth < 16) {
                uint64_t key, len;
                if (!read_varint(&p, end, &key))
                        return NULL;
                const ProtobufCFieldDescriptor *f =
                        key >> 3 <= UINT32_MAX ? protobuf_c_message_descriptor_get_field(d, (unsigned)(key >> 3)) : NULL;
                switch (key & 7) {
                case 0:
                        if (!read_varint(&p, end, &len))
                                return NULL;
                        continue;
                case 1:
                case 5:
                        if ((size_t)(end - p) < ((key & 7) == 1 ? 8u : 4u))
                                return NULL;
                        p += (key & 7) == 1 ? 8 : 4;
                        continue;
                case 2:
                        if (!read_varint(&p, end, &len) || len > (uint64_t)(end - p))
                                return NULL;
                        if (f && f->type == PROTOBUF_C_TYPE_STRING && memchr(p, '\0', (size_t)len))
                                return f->name;
                        if (f && f->type == PROTOBUF_C_TYPE_MESSAGE) {
                                const char *in = nul_in(f->descriptor, p, p + len, depth + 1);
                                if (in)
                                        return in;
                        }
                        p += len;
                        continue;
                default:
                        return NULL;
                }
        }
        return NULL;
}

const char *mxp_text_with_nul(const ProtobufCMessageDescriptor *d, const uint8_t *buf, size_t len) {
        return nul_in(d, buf, buf + len, 0);
}
