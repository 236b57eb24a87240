/* One client connection: non-blocking reads into a buffer bounded by the
 * largest frame, requests dispatched as their frames complete, and output
 * queued in a buffer bounded per connection. A bad frame gets a BAD_FRAME
 * error and the connection closes; a client that stops reading is dropped.
 * Neither affects anyone else. */
#include <string.h>
#include <sys/socket.h>
#include <systemd/sd-event.h>
#include <syslog.h>

#include "mx_common.h"
#include "mixtrald.h"

#define READ_CHUNK 65536

static int on_io(sd_event_source *s, int fd, uint32_t revents, void *userdata);

void md_conn_free(md_conn *c) {
        if (!c)
                return;
        md_server *srv = c->srv;
        if (c->prev)
                c->prev->next = c->next;
        else if (srv->conns == c)
                srv->conns = c->next;
        if (c->next)
                c->next->prev = c->prev;
        srv->n_conns--;
        sd_event_source_disable_unref(c->src);
        sd_event_source_disable_unref(c->defer);
        if (c->fd >= 0)
                close(c->fd);
        free(c->in);
        free(c->out);
        free(c);
}

static int on_defer_free(sd_event_source *s, void *userdata) {
        md_conn_free(userdata);
        return 0;
}

void md_conn_kill(md_conn *c, const char *why) {
        if (c->dead)
                return;
        c->dead = true;
        if (why)
                md_log(LOG_INFO, "dropping the connection of uid %u (pid %d): %s", c->uid, (int)c->pid, why);
        md_server_detach(c->srv, c);
        sd_event_source_set_enabled(c->src, SD_EVENT_OFF);
        /* Callers up the stack may still hold c: free it from the loop. */
        if (sd_event_add_defer(c->srv->event, &c->defer, on_defer_free, c) < 0) {
                shutdown(c->fd, SHUT_RDWR);
                c->defer = NULL;
        }
}

static void update_events(md_conn *c) {
        uint32_t ev = (c->closing ? 0 : EPOLLIN) | (c->out_n > c->out_off ? EPOLLOUT : 0);
        sd_event_source_set_io_events(c->src, ev);
}

/* Writes what the socket takes now; the rest waits for EPOLLOUT. */
static void flush(md_conn *c) {
        while (c->out_off < c->out_n) {
                ssize_t k = send(c->fd, c->out + c->out_off, c->out_n - c->out_off, MSG_NOSIGNAL | MSG_DONTWAIT);
                if (k < 0 && errno == EINTR)
                        continue;
                if (k < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
                        break;
                if (k < 0)
                        return md_conn_kill(c, NULL);
                c->out_off += (size_t)k;
        }
        if (c->out_off == c->out_n) {
                c->out_off = c->out_n = 0;
                if (c->closing)
                        return md_conn_kill(c, NULL);
        }
        update_events(c);
}

void md_conn_send(md_conn *c, const Mixtrald__V1__Response *resp) {
        if (c->dead)
                return;
        uint8_t *frame;
        size_t len;
        if (mxp_frame_pack(&resp->base, &frame, &len) < 0)
                return md_conn_kill(c, "out of memory");
        size_t pending = c->out_n - c->out_off;
        if (pending + len > c->srv->cfg.max_output_bytes) {
                free(frame);
                return md_conn_kill(c, "it does not read its output");
        }
        if (c->out_off) { /* compact before growing */
                memmove(c->out, c->out + c->out_off, pending);
                c->out_n = pending, c->out_off = 0;
        }
        int r = mx_grow((void **)&c->out, &c->out_cap, c->out_n + len, 1);
        if (r == 0)
                memcpy(c->out + c->out_n, frame, len), c->out_n += len;
        free(frame);
        if (r < 0)
                return md_conn_kill(c, "out of memory");
        flush(c);
}

void md_conn_send_error(md_conn *c, uint64_t tag, uint64_t request_id, int code, const char *msg) {
        Mixtrald__V1__Error e = MIXTRALD__V1__ERROR__INIT;
        e.has_code = true, e.code = code, e.message = (char *)msg;
        Mixtrald__V1__Response resp = MIXTRALD__V1__RESPONSE__INIT;
        resp.has_tag = true, resp.tag = tag;
        resp.has_request_id = request_id != 0, resp.request_id = request_id;
        resp.kind_case = MIXTRALD__V1__RESPONSE__KIND_ERROR, resp.error = &e;
        md_conn_send(c, &resp);
}

/* After a protocol error: say why, stop reading, close once it is sent. */
static void bad_frame(md_conn *c, const char *why) {
        md_log(LOG_NOTICE, "uid %u (pid %d) sent a bad frame: %s", c->uid, (int)c->pid, why);
        md_conn_send_error(c, 0, 0, MIXTRALD__V1__ERROR_CODE__BAD_FRAME, why);
        if (c->dead)
                return;
        c->closing = true;
        md_server_detach(c->srv, c);
        flush(c);
}

static void dispatch(md_conn *c, const uint8_t *body, size_t len) {
        Mixtrald__V1__Request *req = md_request_unpack(body, len);
        if (!req)
                return bad_frame(c, "the frame is not a mixtrald.v1.Request");
        uint64_t tag = req->has_tag ? req->tag : 0;
        switch (req->kind_case) {
        case MIXTRALD__V1__REQUEST__KIND_GENERATE:
                md_server_generate(c, tag, req->generate);
                break;
        case MIXTRALD__V1__REQUEST__KIND_CANCEL:
                md_server_cancel(c, tag, req->cancel);
                break;
        case MIXTRALD__V1__REQUEST__KIND_STATUS:
                md_server_status(c, tag);
                break;
        case MIXTRALD__V1__REQUEST__KIND_QUOTA:
                md_server_quota(c, tag);
                break;
        default:
                md_conn_send_error(c, tag, 0, MIXTRALD__V1__ERROR_CODE__INVALID_ARGUMENT,
                                   "the request has no kind this daemon knows (generate, cancel, status, quota)");
        }
        md_request_free(req);
}

/* Handles every complete frame at the start of the input buffer. */
static void consume(md_conn *c) {
        size_t off = 0;
        while (!c->dead && !c->closing) {
                size_t hdr, body;
                int r = mxp_frame_find(c->in + off, c->in_n - off, c->srv->cfg.max_frame_bytes, &hdr, &body);
                if (r == 0)
                        break;
                if (r < 0) {
                        bad_frame(c, r == -EMSGSIZE ? "the frame is larger than max_frame_bytes"
                                                    : "the frame length is malformed");
                        break;
                }
                if (body == 0) {
                        bad_frame(c, "the frame is empty");
                        break;
                }
                dispatch(c, c->in + off + hdr, body);
                off += hdr + body;
        }
        if (c->dead)
                return;
        memmove(c->in, c->in + off, c->in_n - off);
        c->in_n -= off;
}

static void on_readable(md_conn *c) {
        /* A frame never needs more than its header and max_frame_bytes. */
        size_t limit = (size_t)c->srv->cfg.max_frame_bytes + MXP_VARINT_MAX;
        size_t want = c->in_n + READ_CHUNK < limit ? c->in_n + READ_CHUNK : limit;
        if (mx_grow((void **)&c->in, &c->in_cap, want, 1) < 0)
                return md_conn_kill(c, "out of memory");
        ssize_t k = recv(c->fd, c->in + c->in_n, want - c->in_n, MSG_DONTWAIT);
        if (k < 0 && (errno == EAGAIN || errno == EINTR))
                return;
        if (k <= 0) {
                if (k == 0 && c->in_n)
                        md_log(LOG_NOTICE, "uid %u (pid %d) closed inside a frame", c->uid, (int)c->pid);
                return md_conn_kill(c, NULL);
        }
        c->in_n += (size_t)k;
        consume(c);
}

static int on_io(sd_event_source *s, int fd, uint32_t revents, void *userdata) {
        md_conn *c = userdata;
        if (!c->dead && (revents & EPOLLOUT))
                flush(c);
        if (!c->dead && (revents & (EPOLLIN | EPOLLHUP | EPOLLERR)) && !c->closing)
                on_readable(c);
        else if (!c->dead && (revents & (EPOLLHUP | EPOLLERR)))
                md_conn_kill(c, NULL);
        return 0;
}

static uint32_t conns_of(const md_server *srv, uint32_t uid) {
        uint32_t n = 0;
        for (const md_conn *c = srv->conns; c; c = c->next)
                n += c->uid == uid && !c->dead;
        return n;
}

int md_conn_new(md_server *srv, int fd) {
        struct ucred cred;
        socklen_t len = sizeof(cred);
        if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0) {
                md_log(LOG_WARNING, "cannot identify a peer (SO_PEERCRED): %m");
                close(fd);
                return -errno;
        }
        md_conn *c = calloc(1, sizeof(*c));
        if (!c) {
                close(fd);
                return -ENOMEM;
        }
        *c = (md_conn){.srv = srv, .fd = fd, .uid = cred.uid, .gid = cred.gid, .pid = cred.pid};
        int r = sd_event_add_io(srv->event, &c->src, fd, EPOLLIN, on_io, c);
        if (r < 0) {
                close(fd);
                free(c);
                return r;
        }
        c->next = srv->conns;
        if (srv->conns)
                srv->conns->prev = c;
        srv->conns = c;
        srv->n_conns++;
        if (cred.uid != 0 && conns_of(srv, cred.uid) > srv->cfg.max_connections_per_uid) {
                md_conn_send_error(c, 0, 0, MIXTRALD__V1__ERROR_CODE__BUSY,
                                   "too many connections from your user (max_connections_per_uid)");
                c->closing = true;
                flush(c);
        }
        return 0;
}
