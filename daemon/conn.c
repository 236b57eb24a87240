/* Client connections: non-blocking reads into a buffer bounded by the
 * largest frame, frames handed to the protobuf transport (proto_api.c),
 * and output queued in a buffer bounded per connection. A bad frame gets a
 * BAD_FRAME error and the connection closes; a client that stops reading
 * is dropped. Neither affects anyone else.
 *
 * Nor does a flood. A connection with a complete frame waiting stops
 * being read (the kernel's buffers push back on the client), and frames
 * are handled one per turn of the event loop, from the users with frames
 * waiting in turn, one frame per user per round: a user with 32
 * connections pipelining requests gets no more turns than another with
 * one, and between two turns the loop serves everything else (the
 * engine's output, new connections, D-Bus). */
#include <string.h>
#include <sys/socket.h>
#include <systemd/sd-event.h>
#include <syslog.h>

#include "mx_common.h"
#include "mixtrald.h"

#define READ_CHUNK 65536

struct md_conn {
        md_server *srv;
        int fd;
        sd_event_source *src, *defer;
        uint32_t uid;
        pid_t pid;
        md_proto_conn *pc;          /* NULL once killed */
        uint8_t *in;                /* [in_n] read, room for in_cap */
        size_t in_n, in_cap;
        uint8_t *out;               /* [out_off, out_n) unsent, room for out_cap */
        size_t out_n, out_off, out_cap;
        bool ready;                 /* a complete frame waits in `in` */
        uint64_t turns;             /* frames handled: the dispatcher's tie-break */
        bool closing;               /* flush what is queued, then close */
        bool dead;                  /* being freed */
        md_conn *next, *prev;
};

static int on_io(sd_event_source *s, int fd, uint32_t revents, void *userdata);

uint32_t md_conn_uid(const md_conn *c) {
        return c->uid;
}

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
        md_proto_conn_free(c->pc);
        sd_event_source_disable_unref(c->src);
        sd_event_source_disable_unref(c->defer);
        if (c->fd >= 0)
                close(c->fd);
        free(c->in);
        free(c->out);
        free(c);
        /* A place freed: accepting may go on if the fd limit had stopped it. */
        md_service_accept_again(srv);
}

static int on_defer_free(sd_event_source *s, void *userdata) {
        md_conn_free(userdata);
        return 0;
}

/* Its requests stop at once; it is freed at the top of the loop, since
 * callers up the stack may still hold it. */
void md_conn_kill(md_conn *c, const char *why) {
        if (c->dead)
                return;
        c->dead = true;
        c->ready = false;
        if (why)
                md_log(LOG_INFO, "dropping the connection of uid %u (pid %d): %s", c->uid, (int)c->pid, why);
        md_proto_conn_free(c->pc);
        c->pc = NULL;
        sd_event_source_set_enabled(c->src, SD_EVENT_OFF);
        if (sd_event_add_defer(c->srv->event, &c->defer, on_defer_free, c) < 0) {
                shutdown(c->fd, SHUT_RDWR);
                c->defer = NULL;
        }
}

/* Reading stops while a frame waits or the connection is closing. */
static void update_events(md_conn *c) {
        uint32_t ev = (c->closing || c->ready ? 0 : EPOLLIN) | (c->out_n > c->out_off ? EPOLLOUT : 0);
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
        c->ready = false;
        md_proto_conn_free(c->pc);
        c->pc = NULL;
        flush(c);
}

/* 1 with the next frame's header and body sizes, 0 when incomplete, or
 * -1 after a framing error (the connection is closing). */
static int next_frame(md_conn *c, size_t *hdr, size_t *body) {
        int r = mxp_frame_find(c->in, c->in_n, c->srv->cfg.max_frame_bytes, hdr, body);
        if (r < 0) {
                char why[160];
                if (r == -EMSGSIZE)
                        snprintf(why, sizeof(why), "the frame is larger than max_frame_bytes (%u bytes)",
                                 c->srv->cfg.max_frame_bytes);
                bad_frame(c, r == -EMSGSIZE ? why : "the frame length is malformed");
                return -1;
        }
        if (r == 1 && *body == 0) {
                bad_frame(c, "the frame is empty");
                return -1;
        }
        return r;
}

static int on_dispatch(sd_event_source *s, void *userdata);

/* A one-shot source for the next turn, made anew each time (a defer
 * source switched off and on again is not dispatched again). */
static void arm_dispatch(md_server *srv) {
        if (!srv->dispatch && sd_event_add_defer(srv->event, &srv->dispatch, on_dispatch, srv) < 0)
                md_log(LOG_ERR, "cannot queue the next frame: out of memory");
}

static void set_ready(md_conn *c, bool ready) {
        c->ready = ready;
        if (ready)
                arm_dispatch(c->srv);
        update_events(c);
}

/* Handles the first frame in the buffer. */
static void handle_one(md_conn *c) {
        size_t hdr, body;
        if (next_frame(c, &hdr, &body) != 1)
                return;
        c->turns++;
        if (!md_proto_dispatch(c->pc, c->in + hdr, body))
                return bad_frame(c, "the frame is not a mixtrald.v1.Request");
        if (c->dead || c->closing)
                return;
        memmove(c->in, c->in + hdr + body, c->in_n - hdr - body);
        c->in_n -= hdr + body;
        int r = next_frame(c, &hdr, &body);
        if (r >= 0)
                set_ready(c, r == 1);
}

/* The ready connection to serve next: the user after the one served
 * last (in uid order, wrapping), and of that user's connections the one
 * served least. */
static md_conn *pick(md_server *srv) {
        md_conn *best = NULL;
        for (md_conn *c = srv->conns; c; c = c->next)
                if (c->ready && !c->dead &&
                    (!best || md_turn_before(srv->last_uid_served, c->uid, c->turns, best->uid, best->turns)))
                        best = c;
        return best;
}

/* One frame per turn of the event loop (sd-event dispatches one source per
 * turn, so everything else that is ready goes between two frames). */
static int on_dispatch(sd_event_source *s, void *userdata) {
        md_server *srv = userdata;
        srv->dispatch = sd_event_source_unref(srv->dispatch);
        md_conn *c = pick(srv);
        if (!c)
                return 0;
        srv->last_uid_served = c->uid;
        handle_one(c);
        if (pick(srv))
                arm_dispatch(srv);
        return 0;
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
        size_t hdr, body;
        int r = next_frame(c, &hdr, &body);
        if (r == 1)
                set_ready(c, true);
}

static int on_io(sd_event_source *s, int fd, uint32_t revents, void *userdata) {
        md_conn *c = userdata;
        if (!c->dead && (revents & EPOLLOUT))
                flush(c);
        if (!c->dead && (revents & EPOLLIN) && !c->closing && !c->ready)
                on_readable(c);
        else if (!c->dead && (revents & (EPOLLHUP | EPOLLERR)) && !(revents & EPOLLIN))
                md_conn_kill(c, NULL);
        return 0;
}

void md_conn_close_idle(md_server *srv, bool *pending) {
        *pending = false;
        for (md_conn *c = srv->conns, *next; c; c = next) {
                next = c->next;
                if (c->dead)
                        continue;
                if (c->out_n > c->out_off)
                        c->closing = true, *pending = true; /* the last answers go out first */
                else
                        md_conn_kill(c, NULL);
        }
}

uint32_t md_conn_count(const md_server *srv, uint32_t uid) {
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
        int r = c ? 0 : -ENOMEM;
        if (r >= 0) {
                *c = (md_conn){.srv = srv, .fd = fd, .uid = cred.uid, .pid = cred.pid};
                r = (c->pc = md_proto_conn_new(srv, c)) ? 0 : -ENOMEM;
        }
        if (r >= 0)
                r = sd_event_add_io(srv->event, &c->src, fd, EPOLLIN, on_io, c);
        if (r < 0) {
                if (c)
                        md_proto_conn_free(c->pc);
                close(fd);
                free(c);
                return r;
        }
        c->next = srv->conns;
        if (srv->conns)
                srv->conns->prev = c;
        srv->conns = c;
        srv->n_conns++;
        /* Root too: a flood of connections costs file descriptors whoever
         * opens them. The HTTP API's connections count too. */
        if (md_service_conns_of(srv, cred.uid) > srv->cfg.max_connections_per_uid) {
                md_log(LOG_NOTICE, "refused a connection of uid %u (pid %d): BUSY: over max_connections_per_uid (%u)",
                       c->uid, (int)c->pid, srv->cfg.max_connections_per_uid);
                md_conn_send_error(c, 0, 0, MIXTRALD__V1__ERROR_CODE__BUSY,
                                   "too many connections from your user (max_connections_per_uid)");
                c->closing = true;
                flush(c);
        }
        return 0;
}
