/* The connection to mixtrald: connect, send a request, receive replies
 * (framed as the protocol says) while watching for Ctrl-C. */
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "client.h"
#include "mx_common.h"

static void connect_hint(const char *path, int err) {
        if (err == EACCES || err == EPERM)
                fprintf(stderr,
                        "mixtral: cannot reach mixtrald at %s: %s (the socket's permissions keep you out; "
                        "ask the administrator, or run \"mixtrald --model DIR\" yourself; --socket or "
                        "MIXTRALD_SOCKET choose another socket)\n",
                        path, strerror(err));
        else
                fprintf(stderr,
                        "mixtral: cannot reach mixtrald at %s: %s (start it with \"sudo systemctl start "
                        "mixtrald\", or run \"mixtrald --model DIR\" yourself; --socket or MIXTRALD_SOCKET "
                        "choose another socket)\n",
                        path, strerror(err));
}

int mxc_connect(mxc_conn *c, const char *path) {
        struct sockaddr_un sa = {.sun_family = AF_UNIX};
        size_t n = strlen(path);
        if (n >= sizeof(sa.sun_path)) {
                connect_hint(path, ENAMETOOLONG);
                return -ENAMETOOLONG;
        }
        memcpy(sa.sun_path, path, n + 1);
        _cleanup_close_ int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0) {
                int r = -errno;
                fprintf(stderr, "mixtral: cannot create a socket: %s\n", strerror(-r));
                return r;
        }
        if (connect(fd, (const struct sockaddr *)&sa, sizeof(sa)) < 0) {
                int r = -errno;
                /* A full listen backlog blocks connect(); Ctrl-C ends the wait. */
                if (r != -EINTR)
                        connect_hint(path, -r);
                return r;
        }
        c->fd = MX_TAKE_FD(fd);
        return 0;
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

static int64_t now_ms(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
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
        int64_t deadline = timeout_ms >= 0 ? now_ms() + timeout_ms : -1;
        for (;;) {
                int r = take_frame(c, out);
                if (r != 0)
                        return r < 0 ? r : 0;
                int wait = -1;
                if (deadline >= 0) {
                        int64_t left = deadline - now_ms();
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

int mxc_conn_failure(int r) {
        switch (r) {
        case -EINTR:
                return MXC_EXIT_INTERRUPTED;
        case -ENOMEM:
                fprintf(stderr, "mixtral: out of memory\n");
                return MXC_EXIT_INTERNAL;
        case -ECONNRESET:
        case -EPIPE:
                fprintf(stderr, "mixtral: mixtrald closed the connection\n");
                break;
        case -EPROTO:
                fprintf(stderr, "mixtral: the connection to mixtrald broke in the middle of a reply\n");
                break;
        case -EMSGSIZE:
                fprintf(stderr, "mixtral: a reply from mixtrald is larger than %u MiB\n", MXC_MAX_REPLY >> 20);
                break;
        case -EBADMSG:
                fprintf(stderr, "mixtral: a reply from mixtrald is not a valid message\n");
                break;
        case -ETIMEDOUT:
                fprintf(stderr, "mixtral: mixtrald did not answer in time\n");
                break;
        default:
                fprintf(stderr, "mixtral: the connection to mixtrald failed: %s\n", strerror(-r));
                break;
        }
        return MXC_EXIT_CONNECTION;
}
