/* The connection to mixtrald: connect, send a request, receive replies
 * (framed as the protocol says) while watching for Ctrl-C. */
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "client.h"
#include "mx_common.h"

int64_t mxc_now_ms(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* How to get a daemon listening on path: the system's through systemd,
 * a per-user one through the user's systemd or by hand, any other by
 * hand on that socket. */
static const char *how_to_start(const char *path, char *buf, size_t size) {
        const char *xdg = getenv("XDG_RUNTIME_DIR");
        char user_socket[4096];
        int n = xdg && *xdg ? snprintf(user_socket, sizeof(user_socket), "%s/mixtrald.sock", xdg) : -1;
        bool per_user = n > 0 && n < (int)sizeof(user_socket) && !strcmp(path, user_socket);
        if (!strcmp(path, MXP_SYSTEM_SOCKET))
                return "start it with \"sudo systemctl start mixtrald\"";
        if (per_user)
                return "start it with \"systemctl --user start mixtrald\", or run \"mixtrald --user\"";
        snprintf(buf, size, "run \"mixtrald --model DIR --socket %s\" to start a daemon there", path);
        return buf;
}

static int connect_failure(const mxc_conn *c, int err) {
        char buf[4200];
        const char *how = err == EACCES || err == EPERM
                                  ? "the socket's permissions keep you out; ask the administrator, or run "
                                    "your own daemon with \"mixtrald --user\""
                                  : how_to_start(c->path, buf, sizeof(buf));
        return mxc_fail(c->json, MXC_EXIT_UNREACHABLE, "UNREACHABLE", NULL,
                        "cannot reach mixtrald at %s: %s (%s; --socket or MIXTRALD_SOCKET choose another socket)",
                        c->path, strerror(err), how);
}

/* One attempt, quiet: -errno when nobody answers. */
static int conn_open(mxc_conn *c) {
        struct sockaddr_un sa = {.sun_family = AF_UNIX};
        size_t n = strlen(c->path);
        if (n >= sizeof(sa.sun_path))
                return -ENAMETOOLONG;
        memcpy(sa.sun_path, c->path, n + 1);
        _cleanup_close_ int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0)
                return -errno;
        /* A full listen backlog blocks connect(); Ctrl-C ends the wait. */
        if (connect(fd, (const struct sockaddr *)&sa, sizeof(sa)) < 0)
                return -errno;
        c->fd = MX_TAKE_FD(fd);
        return 0;
}

int mxc_connect(mxc_conn *c, const mxc_opts *opts) {
        c->path = opts->socket;
        c->json = opts->json;
        int r = conn_open(c);
        if (r < 0 && r != -EINTR)
                connect_failure(c, -r);
        return r;
}

int mxc_reconnect(mxc_conn *c, int64_t deadline) {
        mxc_disconnect(c);
        /* A restarting daemon is back within seconds; a pause of up to one
         * second finds it soon without busy polling. */
        for (int pause = 50;; pause = pause < 500 ? pause * 2 : 1000) {
                int r = conn_open(c);
                if (r == 0 || r == -EINTR)
                        return r;
                int64_t left = deadline - mxc_now_ms();
                if (left <= 0)
                        return r;
                if (mxc_intr_sleep(left < pause ? (int)left : pause) < 0)
                        return -EINTR;
        }
}

void mxc_disconnect(mxc_conn *c) {
        if (c->fd >= 0)
                close(c->fd);
        c->fd = -1;
        free(c->buf);
        c->buf = NULL;
        c->len = c->cap = 0;
}

int mxc_send(mxc_conn *c, const Mixtrald__V1__Request *req) {
        return mxp_send(c->fd, &req->base);
}

/* A whole frame already buffered: 1 and the reply, 0 when more bytes are
 * needed. */
static int take_frame(mxc_conn *c, Mixtrald__V1__Response **out) {
        size_t hdr, body;
        int r = mxp_frame_find(c->buf, c->len, MXC_MAX_REPLY, &hdr, &body);
        if (r <= 0)
                return r;
        Mixtrald__V1__Response *resp = mixtrald__v1__response__unpack(NULL, body, c->buf + hdr);
        c->len -= hdr + body;
        memmove(c->buf, c->buf + hdr + body, c->len);
        if (!resp)
                return -EBADMSG;
        *out = resp;
        return 1;
}

int mxc_recv(mxc_conn *c, int timeout_ms, Mixtrald__V1__Response **out) {
        int64_t deadline = timeout_ms >= 0 ? mxc_now_ms() + timeout_ms : -1;
        for (;;) {
                int r = take_frame(c, out);
                if (r != 0)
                        return r < 0 ? r : 0;
                int wait = -1;
                if (deadline >= 0) {
                        int64_t left = deadline - mxc_now_ms();
                        if (left <= 0)
                                return -ETIMEDOUT;
                        wait = (int)left;
                }
                struct pollfd p[2] = {{.fd = c->fd, .events = POLLIN}, {.fd = mxc_intr_fd(), .events = POLLIN}};
                int k = poll(p, 2, wait);
                if (k < 0 && errno != EINTR)
                        return -errno;
                /* The handler writes to the pipe before poll() returns EINTR. */
                if ((k < 0 || p[1].revents) && mxc_intr_take())
                        return -EINTR;
                if (k <= 0 || !p[0].revents)
                        continue;
                if ((r = mx_grow((void **)&c->buf, &c->cap, c->len + 65536, 1)) < 0)
                        return r;
                ssize_t got = read(c->fd, c->buf + c->len, c->cap - c->len);
                if (got < 0) {
                        if (errno == EINTR || errno == EAGAIN)
                                continue;
                        return -errno;
                }
                if (got == 0)
                        return c->len ? -EPROTO : -ECONNRESET;
                c->len += (size_t)got;
        }
}

int mxc_call(mxc_conn *c, Mixtrald__V1__Request *req, Mixtrald__V1__Response **out) {
        req->has_tag = true;
        req->tag = c->next_tag++;
        int r = mxc_send(c, req);
        for (;;) {
                Mixtrald__V1__Response *resp;
                /* The daemon may have answered before closing (BAD_FRAME). */
                int rr = mxc_recv(c, r < 0 ? 1000 : -1, &resp);
                if (rr < 0)
                        return r < 0 ? r : rr;
                /* An error with tag 0 (never one of ours) is about the
                 * connection itself. */
                if (resp->tag == req->tag ||
                    (resp->tag == 0 && resp->kind_case == MIXTRALD__V1__RESPONSE__KIND_ERROR)) {
                        *out = resp;
                        return 0;
                }
                mixtrald__v1__response__free_unpacked(resp, NULL);
        }
}

bool mxc_conn_lost(int r) {
        return r == -ECONNRESET || r == -EPIPE || r == -EPROTO;
}

const char *mxc_conn_failure_text(int r, char *buf, size_t size) {
        switch (r) {
        case -ECONNRESET:
        case -EPIPE:
                return "mixtrald closed the connection";
        case -EPROTO:
                return "the connection to mixtrald broke in the middle of a reply";
        case -EMSGSIZE:
                snprintf(buf, size, "a reply from mixtrald is larger than %u MiB", MXC_MAX_REPLY >> 20);
                return buf;
        case -EBADMSG:
                return "a reply from mixtrald is not a valid message";
        case -ETIMEDOUT:
                return "mixtrald did not answer in time";
        default:
                snprintf(buf, size, "the connection to mixtrald failed: %s", strerror(-r));
                return buf;
        }
}

int mxc_conn_failure(const mxc_conn *c, int r) {
        if (r == -EINTR)
                return MXC_EXIT_INTERRUPTED;
        if (r == -ENOMEM)
                return mxc_fail(c->json, MXC_EXIT_INTERNAL, "INTERNAL", NULL, "out of memory");
        char buf[128];
        return mxc_fail(c->json, MXC_EXIT_CONNECTION, "CONNECTION_LOST", NULL, "%s",
                        mxc_conn_failure_text(r, buf, sizeof(buf)));
}
