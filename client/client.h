/* mixtral, the thin client of mixtrald: what its modules share. It talks
 * to the daemon only (docs/daemon.md) and never loads a model. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "mxproto.h"

/* Exit statuses: stable, listed in --help and mixtral(1). */
enum {
        MXC_EXIT_OK = 0,
        MXC_EXIT_INTERNAL = 1,    /* INTERNAL, ERROR_UNSPECIFIED, unexpected reply, no memory */
        MXC_EXIT_USAGE = 2,
        MXC_EXIT_UNREACHABLE = 3, /* connect() failed */
        MXC_EXIT_INVALID = 4,     /* INVALID_ARGUMENT, NOT_FOUND */
        MXC_EXIT_QUOTA = 5,
        MXC_EXIT_BUSY = 6,
        MXC_EXIT_TOO_LONG = 7,
        MXC_EXIT_CANCELLED = 8,   /* CANCELLED, UNAVAILABLE: the daemon's doing */
        MXC_EXIT_CONNECTION = 9,  /* the stream ended or broke; BAD_FRAME */
        MXC_EXIT_TOO_LARGE = 10,  /* more input than the daemon takes (max_frame_bytes) */
        MXC_EXIT_INTERRUPTED = 130,
};

/* Replies carry at most one chunk or a status table: anything this large
 * is a broken or hostile peer, not a reply. */
#define MXC_MAX_REPLY (16u << 20)
#define MXC_MAX_STDIN (64u << 20)
/* How long a cancelled request may take to confirm before we leave. */
#define MXC_CANCEL_WAIT_MS 2000
/* How long chat waits for a daemon that went away, unless --reconnect. */
#define MXC_RECONNECT_S 60

typedef struct mxc_opts {
        const char *socket; /* resolved: --socket, $MIXTRALD_SOCKET, ... */
        bool json;
        bool ids;
        uint32_t reconnect_s; /* chat: how long to wait for the daemon to come back; 0: not at all */
        /* The generation options as given: has_* set only for those on the
         * command line, so the daemon's defaults apply to the rest. prompt
         * and messages stay empty here; stop points into argv. */
        Mixtrald__V1__Generate gen;
} mxc_opts;

/* interrupt.c: Ctrl-C as a readable file descriptor (a self-pipe), and
 * the terminal's bracketed paste mode, which no stop or exit may leave on. */
int mxc_intr_setup(void);
int mxc_intr_fd(void);
/* Drains the pipe: true when a Ctrl-C arrived since the last call. */
bool mxc_intr_take(void);
/* The next Ctrl-C is handled again instead of ending the process. */
void mxc_intr_rearm(void);
/* Whether the terminal's cursor is mid-line, so that an exit on a second
 * Ctrl-C can end the line first. */
void mxc_intr_mid_line(bool mid);
/* Bracketed paste on the terminal tty_fd, or off: off as well while the
 * process is stopped (Ctrl-Z) and when a signal ends it. */
void mxc_intr_paste(int tty_fd, bool on);
/* Sleeps ms milliseconds: -EINTR when Ctrl-C comes first. */
int mxc_intr_sleep(int ms);

/* connection.c: one connection to the daemon. */
typedef struct mxc_conn {
        int fd;
        /* From 1: the daemon tags errors about the whole connection 0. */
        uint64_t next_tag;
        uint8_t *buf; /* [cap] bytes, the first len read and not yet parsed */
        size_t len, cap;
        const char *path; /* the socket, for connecting again */
        bool json;        /* failures are reported as JSON events too */
} mxc_conn;

#define MXC_CONN_INIT {.fd = -1, .next_tag = 1}

/* On failure reports the one line that says why and what to do (with
 * --json an error event too) and returns -errno. */
int mxc_connect(mxc_conn *c, const mxc_opts *opts);
/* Closes c and connects to the same socket again, quietly, retrying with
 * a growing pause until deadline (mxc_now_ms()'s clock): -EINTR after
 * Ctrl-C, else the last attempt's -errno. */
int mxc_reconnect(mxc_conn *c, int64_t deadline);
/* Milliseconds on the monotonic clock. */
int64_t mxc_now_ms(void);
void mxc_disconnect(mxc_conn *c);
int mxc_send(mxc_conn *c, const Mixtrald__V1__Request *req);
/* The next reply: -EINTR when Ctrl-C came first, -ETIMEDOUT after
 * timeout_ms (-1: none), -ECONNRESET at the end of the stream, -EPROTO
 * when it ends inside a frame, -EMSGSIZE or -EBADMSG for a broken one. */
int mxc_recv(mxc_conn *c, int timeout_ms, Mixtrald__V1__Response **out);
/* Sends req with a fresh tag and waits for the reply carrying it. */
int mxc_call(mxc_conn *c, Mixtrald__V1__Request *req, Mixtrald__V1__Response **out);
/* Whether a failed send or receive means the daemon went away (it may
 * come back), not that it spoke nonsense. */
bool mxc_conn_lost(int r);
/* What a failed send or receive means, for a message (in buf when it
 * must be composed). */
const char *mxc_conn_failure_text(int r, char *buf, size_t size);
/* Reports a failed send or receive; returns the exit status. */
int mxc_conn_failure(const mxc_conn *c, int r);

/* json.c */
json_t *mxc_json_u64(uint64_t v);
/* A JSON string even for bytes that are not UTF-8 (U+FFFD for those). */
json_t *mxc_json_text(const char *s, size_t n);
/* Every field of m, named as in the proto; null for absent ones. */
json_t *mxc_json_message(const ProtobufCMessage *m);
/* One compact line on stdout; consumes j. */
int mxc_json_print(json_t *j);

/* events.c: the daemon's replies as the user sees them. */
typedef struct mxc_out {
        bool json, ids;
        bool mid_line; /* text mode: the cursor is not at a line's start */
        bool collect;  /* keep the answer's text (chat) */
        char *text;    /* [cap] bytes: the answer so far, len of them, NUL-terminated */
        size_t len, cap;
        /* Chat: a connection that breaks is left to the caller to report
         * (it reconnects); lost then holds why (-errno), else 0. */
        bool may_reconnect;
        int lost;
} mxc_out;

int mxc_out_accepted(mxc_out *o, uint64_t request_id, const Mixtrald__V1__Accepted *a);
int mxc_out_chunk(mxc_out *o, const Mixtrald__V1__Chunk *ch);
int mxc_out_finished(mxc_out *o, const Mixtrald__V1__Finished *f);
/* Ends a partly written line; in text mode only. */
int mxc_out_end_line(mxc_out *o);
/* Reports e (a JSON event too with --json); returns its exit status. */
int mxc_out_error(mxc_out *o, const Mixtrald__V1__Error *e);
/* Only the JSON event of e. */
int mxc_out_error_event(mxc_out *o, const Mixtrald__V1__Error *e);
int mxc_error_exit_status(int code);
/* A failure found here rather than by the daemon: one line on stderr and,
 * with json, an error event with code, that line as its message, and the
 * members of fields (consumed; may be NULL). Returns status. */
int mxc_fail(bool json, int status, const char *code, json_t *fields, const char *fmt, ...)
        __attribute__((format(printf, 5, 6)));
void mxc_out_free(mxc_out *o);
/* A Unix time as local time, for people. */
void mxc_format_time(uint64_t t, char *buf, size_t size);
/* A byte count for people: "512 B", "3.8 MiB". */
const char *mxc_format_bytes(uint64_t b, char *buf, size_t size);

/* generate.c: one generation on c, with prompt or msgs[0..n); returns
 * the exit status, the outcome already reported (a broken connection not,
 * when out->may_reconnect: see out->lost). */
int mxc_generate(mxc_conn *c, const mxc_opts *opts, const char *prompt,
                 Mixtrald__V1__ChatMessage **msgs, size_t n, mxc_out *out);

/* input.c: what a person types in a chat, as whole messages. */
typedef struct mxc_input mxc_input;
int mxc_input_open(mxc_input **in);
void mxc_input_free(mxc_input **in);
/* Where to talk to the person at the terminal; NULL when stdin is not one. */
FILE *mxc_input_terminal(const mxc_input *in);
/* The next message: 1 with *text (valid until the next call) and *plain
 * (typed as one line or continued with \, so that it may be a slash
 * command), 0 at the end of input, -EINTR after Ctrl-C (the message being
 * typed is dropped), -ENOMEM. */
int mxc_input_message(mxc_input *in, const char **text, bool *plain);

/* info.c: sends req and shows the reply of kind want as one JSON object
 * (--json) or through print, given the reply's part; returns the exit
 * status, errors already reported. */
int mxc_show(const mxc_opts *opts, Mixtrald__V1__Request *req, Mixtrald__V1__Response__KindCase want,
             void (*print)(const ProtobufCMessage *));

/* The commands; each returns the process's exit status. */
int mxc_cmd_prompt(const mxc_opts *opts, char **words, size_t n);
int mxc_cmd_chat(const mxc_opts *opts);
int mxc_cmd_status(const mxc_opts *opts);
int mxc_cmd_quota(const mxc_opts *opts);
/* key.c: mixtral key new [NAME] | list | revoke ID */
int mxc_cmd_key(const mxc_opts *opts, char **words, size_t n);

/* main.c */
int mxc_usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
