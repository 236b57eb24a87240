/* The wire protocol's framing (protobuf's delimited convention: a varint
 * length, then the message) shared by the daemon, the client and the
 * tests, and the generated mixtrald.v1 messages. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "mixtrald.pb-c.h"

/* Default and hard bounds on one frame's message (docs/daemon.md). */
#define MXP_DEFAULT_MAX_FRAME (1u << 20)
#define MXP_VARINT_MAX 10

/* Looks for one frame at the start of buf[0..n): 1 and its header and body
 * lengths when complete, 0 when more bytes are needed, -EMSGSIZE when the
 * length exceeds max, -EBADMSG for a malformed length. */
int mxp_frame_find(const uint8_t *buf, size_t n, size_t max, size_t *hdr, size_t *body);

/* A frame for message m: newly allocated, varint length first. */
int mxp_frame_pack(const ProtobufCMessage *m, uint8_t **out, size_t *len);

/* Blocking helpers for clients: the whole frame, or one frame's body
 * (newly allocated; -ECONNRESET at a clean end of stream, -EPROTO for a
 * stream cut inside a frame). */
int mxp_write_all(int fd, const void *buf, size_t len);
int mxp_send(int fd, const ProtobufCMessage *m);
int mxp_read_frame(int fd, size_t max, uint8_t **body, size_t *len);

/* The name of the first text (string) field in the message buf[0..len)
 * of type d, nested messages included, that holds a NUL byte; NULL when
 * none does. protobuf-c cuts such text at the NUL without a word, so a
 * reader that must not misread checks the frame first. */
const char *mxp_text_with_nul(const ProtobufCMessageDescriptor *d, const uint8_t *buf, size_t len);

/* "INVALID_ARGUMENT", ...: the protocol's names for error codes. */
const char *mxp_error_name(int code);

/* The socket path a client uses: --socket, else $MIXTRALD_SOCKET, else
 * the system socket when it exists, else $XDG_RUNTIME_DIR/mixtrald.sock. */
const char *mxp_default_socket(const char *option, char *buf, size_t size);

#define MXP_SYSTEM_SOCKET "/run/mixtrald/mixtrald.sock"
