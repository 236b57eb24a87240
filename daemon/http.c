/* The HTTP API's server: HTTP/1.1 by libmicrohttpd, driven from the
 * daemon's sd-event loop, a third transport of the request core beside
 * the protobuf socket and D-Bus. http_api.c has the endpoints.
 *
 *   connections  service.c accepts on the HTTP listeners and hands each
 *                socket here: on the Unix socket the caller is its
 *                SO_PEERCRED uid, as on the protobuf socket, with the same
 *                per-uid cap on connections (both transports together); on
 *                the TCP listener each request names its user with an API
 *                key (keys.c), and a connection counts for the user of its
 *                last key (before one, in a pool of that cap's size).
 *   the loop     libmicrohttpd runs without threads of its own (epoll, no
 *                listening socket): its epoll fd is one io source, its
 *                timeout a timer, and a defer source runs it again when
 *                one of ours resumed a connection.
 *   requests     headers in: the route, the key, Content-Length checked at
 *                once (a refusal never waits for a body); the body is kept
 *                up to max_frame_bytes; once whole, the request waits
 *                (suspended) for its turn, one per loop turn, users in turn
 *                as conn.c takes frames, and http_api.c answers it.
 *   waiting      a request waiting for the engine is suspended, so costs
 *                the loop nothing; libmicrohttpd does not watch a suspended
 *                connection, so an io source here does (EPOLLRDHUP): a
 *                client that goes cancels its request at once.
 *   output       a whole answer is one buffer; a stream's events queue in
 *                the request's buffer, bounded by max_output_bytes: a
 *                client that stops reading is dropped (its request
 *                cancelled) and its connection closed, so a slow reader
 *                costs at most that much.
 *
 * Invariants: a request is suspended exactly while `suspended` says so
 * (libmicrohttpd's resume of a connection not suspended is undefined), and
 * a connection's EPOLLRDHUP source exists only then, so it never outlives
 * the socket libmicrohttpd closes. Main thread only. */
#include <microhttpd.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <syslog.h>
#include <systemd/sd-event.h>

#include "mx_common.h"
#include "http.h"

/* Idle keep-alive connections, and clients that stop reading once their
 * request was dropped, are closed after this long. */
#define IDLE_TIMEOUT_S 60
#define STREAM_BLOCK 16384

typedef struct http_conn http_conn;

struct md_http {
        md_server *srv;
        struct MHD_Daemon *mhd;
        sd_event_source *io, *timer, *soon, *dispatch;
        http_conn *conns;          /* by next */
        uint32_t n_conns;
        md_http_req *ready;        /* bodies complete, oldest first, by next_ready */
        uint32_t last_uid;         /* whose request went last */
        size_t n_reqs;             /* requests between their headers and their end */
        http_conn *adding;         /* during MHD_add_connection */
};

struct http_conn {
        md_http *h;
        int fd;
        bool tcp;
        bool known;                /* uid is its user's: SO_PEERCRED, or the last key on it */
        uint32_t uid;
        pid_t pid;                 /* the Unix socket's peer */
        sd_event_source *hup;      /* while its request is suspended */
        md_http_req *req;          /* the request in progress */
        http_conn *next, *prev;
};

typedef enum q_state {
        Q_BODY,    /* reading the body */
        Q_WAIT,    /* whole, waiting for its turn or for the engine */
        Q_REPLY,   /* a whole answer to queue */
        Q_STREAM,  /* an event stream */
        Q_DEAD,    /* the client went or was dropped: close */
} q_state;

struct md_http_req {
        md_http *h;
        http_conn *conn;
        struct MHD_Connection *mhd;
        q_state state;
        bool suspended, queued, too_large, no_memory, ended;
        uint32_t uid;
        char *method, *path;
        mx_buf body;               /* [body.n] */
        unsigned status;
        const char *content_type;
        char *extra[8];            /* reply headers: name, value, ...; NULL after the last */
        mx_buf out;                /* [out_off, out.n) still to send */
        size_t out_off;
        md_http_gen *gen;
        md_http_req *next_ready;
};

static void run_soon(md_http *h);

md_server *md_httpq_server(const md_http_req *q) {
        return q->h->srv;
}

/* ---- suspending, and watching the client meanwhile ------------------------------ */

static void client_gone(md_http_req *q, const char *why);

static int on_hup(sd_event_source *s, int fd, uint32_t revents, void *userdata) {
        http_conn *hc = userdata;
        if (hc->req)
                client_gone(hc->req, NULL);
        return 0;
}

static void suspend(md_http_req *q) {
        if (q->suspended)
                return;
        MHD_suspend_connection(q->mhd);
        q->suspended = true;
        http_conn *hc = q->conn;
        if (sd_event_add_io(q->h->srv->event, &hc->hup, hc->fd, EPOLLRDHUP, on_hup, hc) < 0)
                hc->hup = NULL; /* (then only the next write notices a client that went) */
}

static void resume(md_http_req *q) {
        if (!q->suspended)
                return;
        q->conn->hup = sd_event_source_disable_unref(q->conn->hup);
        q->suspended = false;
        MHD_resume_connection(q->mhd);
        run_soon(q->h);
}

static void unlink_ready(md_http_req *q) {
        for (md_http_req **p = &q->h->ready; *p; p = &(*p)->next_ready)
                if (*p == q) {
                        *p = q->next_ready;
                        break;
                }
        q->queued = false;
}

/* The request stops: its generation (if any) is detached, the connection
 * closes as soon as libmicrohttpd looks at it again. */
static void client_gone(md_http_req *q, const char *why) {
        http_conn *hc = q->conn;
        if (why)
                md_log(LOG_INFO, "dropping the HTTP connection of uid %u: %s", q->uid, why);
        if (q->gen)
                md_http_api_gone(q->h->srv, q->gen);
        q->gen = NULL;
        if (q->queued)
                unlink_ready(q);
        q->state = Q_DEAD;
        mx_buf_free(&q->out);
        q->out_off = 0;
        hc->hup = sd_event_source_disable_unref(hc->hup);
        resume(q);
}

/* ---- the loop ---------------------------------------------------------------------- */

static void plan(md_http *h) {
        MHD_UNSIGNED_LONG_LONG ms;
        if (MHD_get_timeout(h->mhd, &ms) != MHD_YES) {
                sd_event_source_set_enabled(h->timer, SD_EVENT_OFF);
                return;
        }
        if (ms == 0)
                return run_soon(h);
        sd_event_source_set_time_relative(h->timer, ms * 1000);
        sd_event_source_set_enabled(h->timer, SD_EVENT_ONESHOT);
}

static void run(md_http *h) {
        MHD_run(h->mhd);
        plan(h);
}

static int on_io(sd_event_source *s, int fd, uint32_t revents, void *userdata) {
        run(userdata);
        return 0;
}

static int on_timer(sd_event_source *s, uint64_t usec, void *userdata) {
        run(userdata);
        return 0;
}

static int on_soon(sd_event_source *s, void *userdata) {
        md_http *h = userdata;
        h->soon = sd_event_source_unref(h->soon);
        run(h);
        return 0;
}

/* A one-shot source, made anew each time (as conn.c's dispatcher). */
static void run_soon(md_http *h) {
        if (!h->soon && sd_event_add_defer(h->srv->event, &h->soon, on_soon, h) < 0)
                md_log(LOG_ERR, "cannot schedule the HTTP server: out of memory");
}

/* ---- one request per loop turn, users in turn ------------------------------------ */

/* The oldest waiting request of the user after the one served last (in
 * uid order, wrapping), as conn.c takes frames. */
static md_http_req *pick(md_http *h) {
        md_http_req *best = NULL;
        uint64_t age = 0, best_age = 0;
        for (md_http_req *q = h->ready; q; q = q->next_ready, age++)
                if (!best || md_turn_before(h->last_uid, q->uid, age, best->uid, best_age))
                        best = q, best_age = age;
        return best;
}

static int on_dispatch(sd_event_source *s, void *userdata);

static void arm_dispatch(md_http *h) {
        if (!h->dispatch && sd_event_add_defer(h->srv->event, &h->dispatch, on_dispatch, h) < 0)
                md_log(LOG_ERR, "cannot queue the next HTTP request: out of memory");
}

static int on_dispatch(sd_event_source *s, void *userdata) {
        md_http *h = userdata;
        h->dispatch = sd_event_source_unref(h->dispatch);
        md_http_req *q = pick(h);
        if (!q)
                return 0;
        unlink_ready(q);
        h->last_uid = q->uid;
        md_http_call call = {q->method, q->path, q->body.p ? q->body.p : "", q->body.n, q->uid, q->conn->tcp};
        md_http_api_handle(h->srv, q, &call);
        mx_buf_free(&q->body); /* (what the request needs, it copied) */
        if (h->ready)
                arm_dispatch(h);
        return 0;
}

static void enqueue(md_http_req *q) {
        md_http_req **p = &q->h->ready;
        while (*p)
                p = &(*p)->next_ready;
        *p = q;
        q->next_ready = NULL;
        q->queued = true;
        arm_dispatch(q->h);
}

/* ---- answers --------------------------------------------------------------------------- */

static void free_extra(md_http_req *q) {
        for (size_t i = 0; q->extra[i]; i++)
                free(q->extra[i]), q->extra[i] = NULL;
}

void md_httpq_reply(md_http_req *q, unsigned status, const char *content_type, const char *body, size_t len,
                    const char *const *extra) {
        if (q->state != Q_BODY && q->state != Q_WAIT)
                return;
        q->state = Q_REPLY;
        q->status = status, q->content_type = content_type;
        mx_buf_free(&q->out);
        if (len && mx_buf_append(&q->out, body, len) < 0)
                q->status = 500, q->content_type = "text/plain";
        free_extra(q);
        for (size_t i = 0; extra && extra[i] && extra[i + 1] && i + 2 < MX_ELEMENTSOF(q->extra); i += 2)
                if (!(q->extra[i] = strdup(extra[i])) || !(q->extra[i + 1] = strdup(extra[i + 1]))) {
                        free_extra(q);
                        break;
                }
        resume(q);
}

void md_httpq_error(md_http_req *q, unsigned status, const char *code, const char *msg, uint64_t retry_after,
                    bool retry) {
        _cleanup_free_ char *body = md_http_error_json(status, code, msg);
        char seconds[24];
        snprintf(seconds, sizeof(seconds), "%llu", (unsigned long long)retry_after);
        const char *extra[7] = {0};
        size_t n = 0;
        if (retry_after)
                extra[n++] = "Retry-After", extra[n++] = seconds;
        /* OpenAI's clients retry 409, 429 and 5xx unless told not to. */
        if (!retry)
                extra[n++] = "x-should-retry", extra[n++] = "false";
        if (status == 401)
                extra[n++] = "WWW-Authenticate", extra[n++] = "Bearer";
        if (!body)
                return md_httpq_reply(q, 500, "text/plain", "out of memory\n", 14, NULL);
        md_httpq_reply(q, status, "application/json", body, strlen(body), extra);
}

void md_httpq_stream(md_http_req *q) {
        if (q->state != Q_WAIT)
                return;
        q->state = Q_STREAM, q->status = 200, q->content_type = "text/event-stream";
        resume(q);
}

int md_httpq_write(md_http_req *q, const char *data, size_t len) {
        if (q->state == Q_DEAD)
                return -ENOBUFS;
        size_t pending = q->out.n - q->out_off;
        if (pending + len > q->h->srv->cfg.max_output_bytes) {
                q->gen = NULL; /* (its owner lets go of it) */
                client_gone(q, "it does not read its output");
                return -ENOBUFS;
        }
        if (q->out_off) { /* compact before growing */
                memmove(q->out.p, q->out.p + q->out_off, pending);
                q->out.n = pending, q->out_off = 0;
        }
        if (mx_buf_append(&q->out, data, len) < 0) {
                q->gen = NULL;
                client_gone(q, "out of memory");
                return -ENOBUFS;
        }
        if (q->state == Q_STREAM)
                resume(q);
        return 0;
}

void md_httpq_end(md_http_req *q) {
        q->ended = true;
        if (q->state == Q_STREAM)
                resume(q);
}

void md_httpq_set_gen(md_http_req *q, md_http_gen *g) {
        q->gen = g;
}

/* What libmicrohttpd sends of a stream: what is queued, else nothing for
 * now (suspended until more comes), else the end. */
static ssize_t read_stream(void *cls, uint64_t pos, char *buf, size_t max) {
        md_http_req *q = cls;
        if (q->state == Q_DEAD)
                return MHD_CONTENT_READER_END_WITH_ERROR;
        size_t left = q->out.n - q->out_off, n = left < max ? left : max;
        if (n) {
                memcpy(buf, q->out.p + q->out_off, n);
                q->out_off += n;
                if (q->out_off == q->out.n)
                        q->out.n = q->out_off = 0;
                return (ssize_t)n;
        }
        if (q->ended)
                return MHD_CONTENT_READER_END_OF_STREAM;
        suspend(q);
        return 0;
}

static enum MHD_Result queue(md_http_req *q) {
        md_server *srv = q->h->srv;
        struct MHD_Response *resp;
        if (q->state == Q_STREAM)
                resp = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, STREAM_BLOCK, read_stream, q, NULL);
        else if ((resp = MHD_create_response_from_buffer(q->out.n, q->out.p, MHD_RESPMEM_MUST_FREE)))
                q->out = (mx_buf){0};
        if (!resp)
                return MHD_NO;
        bool ok = MHD_add_response_header(resp, "Content-Type", q->content_type) == MHD_YES;
        for (size_t i = 0; ok && q->extra[i]; i += 2)
                ok = MHD_add_response_header(resp, q->extra[i], q->extra[i + 1]) == MHD_YES;
        if (ok && q->state == Q_STREAM)
                ok = MHD_add_response_header(resp, "Cache-Control", "no-cache") == MHD_YES;
        /* A drain ends keep-alive: each connection closes after its answer. */
        if (ok && srv->draining)
                ok = MHD_add_response_header(resp, "Connection", "close") == MHD_YES;
        enum MHD_Result r = ok ? MHD_queue_response(q->mhd, q->status, resp) : MHD_NO;
        MHD_destroy_response(resp);
        free_extra(q);
        md_metrics_http(&srv->metrics, q->status);
        return r;
}

/* ---- requests ---------------------------------------------------------------------- */

/* Whether a connection of the TCP listener may count as uid's. */
static bool claim(http_conn *hc, uint32_t uid) {
        if (hc->known && hc->uid == uid)
                return true;
        if (md_service_conns_of(hc->h->srv, uid) >= hc->h->srv->cfg.max_connections_per_uid)
                return false;
        hc->known = true, hc->uid = uid;
        return true;
}

/* Over TCP, "Authorization: Bearer KEY" names the user; false when the
 * request is answered already (401, or 429 over the connection cap). */
static bool identify(md_http_req *q, struct MHD_Connection *mc) {
        md_server *srv = q->h->srv;
        const char *auth = MHD_lookup_connection_value(mc, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION);
        uint32_t uid;
        if (!auth || strncasecmp(auth, "Bearer ", 7) ||
            md_keys_check(&srv->keys, auth + 7, strlen(auth + 7), &uid) < 0) {
                md_log(LOG_NOTICE, "refused an HTTP request on the TCP listener: %s API key",
                       auth ? "a wrong" : "no");
                md_httpq_error(q, 401, "invalid_api_key",
                               auth ? "the API key is not valid (revoked, or not one of this daemon's)"
                                    : "an API key is needed: Authorization: Bearer KEY (mixtral key new)", 0, false);
                return false;
        }
        q->uid = uid;
        if (claim(q->conn, uid))
                return true;
        md_log_request(LOG_NOTICE, &(md_log_fields){.uid = uid}, "refused: BUSY: over max_connections_per_uid (%u)",
                       srv->cfg.max_connections_per_uid);
        md_httpq_error(q, 429, "too_many_connections", "too many connections from your user (max_connections_per_uid)",
                       1, true);
        return false;
}

static void reply_too_large(md_http_req *q) {
        char msg[96];
        snprintf(msg, sizeof(msg), "the body is larger than max_frame_bytes (%u bytes)", q->h->srv->cfg.max_frame_bytes);
        md_httpq_error(q, 413, "request_too_large", msg, 0, false);
}

/* A body that cannot be taken is refused before it is read: over
 * max_frame_bytes by its Content-Length (libmicrohttpd checked its form),
 * or in a transfer coding other than chunked, whose end libmicrohttpd
 * would only find at the connection's. False when answered. */
static bool body_acceptable(md_http_req *q, struct MHD_Connection *mc) {
        const char *cl = MHD_lookup_connection_value(mc, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
        const char *te = MHD_lookup_connection_value(mc, MHD_HEADER_KIND, MHD_HTTP_HEADER_TRANSFER_ENCODING);
        if (cl && strtoull(cl, NULL, 10) > q->h->srv->cfg.max_frame_bytes)
                reply_too_large(q);
        else if (te && strcasecmp(te, "chunked"))
                md_httpq_error(q, 400, "invalid_argument", "the only transfer coding taken is chunked", 0, false);
        else
                return true;
        return false;
}

static enum MHD_Result start(md_http *h, struct MHD_Connection *mc, const char *url, const char *method,
                             void **con_cls) {
        const union MHD_ConnectionInfo *ci = MHD_get_connection_info(mc, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
        http_conn *hc = ci ? ci->socket_context : NULL;
        md_http_req *q = hc ? calloc(1, sizeof(*q)) : NULL;
        if (!q)
                return MHD_NO;
        *q = (md_http_req){.h = h, .conn = hc, .mhd = mc, .state = Q_BODY, .uid = hc->uid,
                           .method = strdup(method), .path = strdup(url)};
        *con_cls = q;
        hc->req = q;
        h->n_reqs++;
        if (!q->method || !q->path)
                return MHD_NO;
        if (hc->tcp && !identify(q, mc))
                return queue(q);
        if (!md_http_api_routes(q, method, url) || !body_acceptable(q, mc))
                return queue(q);
        return MHD_YES;
}

static void take_body(md_http_req *q, const char *data, size_t n) {
        if (q->too_large || q->no_memory)
                return;
        if (q->body.n + n > q->h->srv->cfg.max_frame_bytes) {
                q->too_large = true;
                mx_buf_free(&q->body);
        } else if (mx_buf_append(&q->body, data, n) < 0) {
                q->no_memory = true;
                mx_buf_free(&q->body);
        }
}

/* The body is whole, or the request was resumed. */
static enum MHD_Result respond(md_http_req *q) {
        switch (q->state) {
        case Q_BODY:
                if (q->too_large)
                        return reply_too_large(q), queue(q);
                if (q->no_memory)
                        return md_httpq_error(q, 500, "internal", "out of memory", 0, true), queue(q);
                q->state = Q_WAIT;
                enqueue(q);
                suspend(q);
                return MHD_YES;
        case Q_WAIT:
                suspend(q);
                return MHD_YES;
        case Q_REPLY:
        case Q_STREAM:
                return queue(q);
        case Q_DEAD:
        default:
                return MHD_NO;
        }
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *mc, const char *url, const char *method,
                                  const char *version, const char *data, size_t *size, void **con_cls) {
        md_http_req *q = *con_cls;
        if (!q)
                return start(cls, mc, url, method, con_cls);
        if (*size) {
                take_body(q, data, *size);
                *size = 0;
                return MHD_YES;
        }
        return respond(q);
}

static void on_completed(void *cls, struct MHD_Connection *mc, void **con_cls, enum MHD_RequestTerminationCode toe) {
        md_http *h = cls;
        md_http_req *q = *con_cls;
        if (!q)
                return;
        *con_cls = NULL;
        if (q->gen)
                md_http_api_gone(h->srv, q->gen);
        if (q->queued)
                unlink_ready(q);
        if (q->conn->req == q)
                q->conn->req = NULL;
        q->conn->hup = sd_event_source_disable_unref(q->conn->hup);
        free_extra(q);
        mx_buf_free(&q->body);
        mx_buf_free(&q->out);
        free(q->method);
        free(q->path);
        free(q);
        h->n_reqs--;
        if (h->srv->draining)
                md_service_maybe_exit(h->srv);
}

/* ---- connections ---------------------------------------------------------------------- */

static void on_connection(void *cls, struct MHD_Connection *mc, void **socket_context,
                          enum MHD_ConnectionNotificationCode code) {
        md_http *h = cls;
        if (code == MHD_CONNECTION_NOTIFY_STARTED) {
                http_conn *hc = MX_TAKE_PTR(h->adding);
                *socket_context = hc;
                if (!hc)
                        return;
                hc->next = h->conns;
                if (h->conns)
                        h->conns->prev = hc;
                h->conns = hc;
                h->n_conns++;
                return;
        }
        http_conn *hc = *socket_context;
        if (!hc)
                return;
        if (hc->prev)
                hc->prev->next = hc->next;
        else
                h->conns = hc->next;
        if (hc->next)
                hc->next->prev = hc->prev;
        h->n_conns--;
        sd_event_source_disable_unref(hc->hup);
        free(hc);
        md_service_accept_again(h->srv);
}

static uint32_t anonymous(const md_http *h) {
        uint32_t n = 0;
        for (const http_conn *hc = h->conns; hc; hc = hc->next)
                n += !hc->known;
        return n;
}

uint32_t md_http_count(const md_server *srv, uint32_t uid) {
        uint32_t n = 0;
        for (const http_conn *hc = srv->http ? srv->http->conns : NULL; hc; hc = hc->next)
                n += hc->known && hc->uid == uid;
        return n;
}

uint32_t md_http_connections(const md_server *srv) {
        return srv->http ? srv->http->n_conns : 0;
}

bool md_http_pending(const md_server *srv) {
        return srv->http && srv->http->n_reqs > 0;
}

void md_http_refuse(int fd, unsigned status, const char *msg) {
        _cleanup_free_ char *body = md_http_error_json(status, status == 429 ? "too_many_connections" : "unavailable",
                                                       msg);
        char head[256];
        int n = snprintf(head, sizeof(head),
                         "HTTP/1.1 %u %s\r\nContent-Type: application/json\r\nContent-Length: %zu\r\n"
                         "Retry-After: 1\r\nConnection: close\r\n\r\n",
                         status, MHD_get_reason_phrase_for(status), body ? strlen(body) : 0);
        /* Best effort: the client may not even read it. */
        if (send(fd, head, (size_t)n, MSG_NOSIGNAL | MSG_DONTWAIT) == n && body)
                (void)!send(fd, body, strlen(body), MSG_NOSIGNAL | MSG_DONTWAIT);
        close(fd);
}

/* Who is at the other end, and whether they may have one more. */
static bool admit(md_http *h, http_conn *hc) {
        md_server *srv = h->srv;
        uint32_t cap = srv->cfg.max_connections_per_uid;
        if (!hc->tcp) {
                struct ucred cred;
                socklen_t len = sizeof(cred);
                if (getsockopt(hc->fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0) {
                        md_log(LOG_WARNING, "cannot identify an HTTP peer (SO_PEERCRED): %m");
                        close(hc->fd);
                        return false;
                }
                hc->known = true, hc->uid = cred.uid, hc->pid = cred.pid;
        }
        if ((hc->known ? md_service_conns_of(srv, hc->uid) : anonymous(h)) < cap)
                return true;
        if (hc->known)
                md_log(LOG_NOTICE, "refused an HTTP connection of uid %u (pid %d): BUSY: over "
                       "max_connections_per_uid (%u)", hc->uid, (int)hc->pid, cap);
        else
                md_log(LOG_NOTICE, "refused a connection on the HTTP TCP listener: %u connections have sent no "
                       "API key yet (max_connections_per_uid)", cap);
        md_http_refuse(hc->fd, 429, "too many connections from your user (max_connections_per_uid)");
        return false;
}

void md_http_add(md_server *srv, int fd, bool tcp) {
        md_http *h = srv->http;
        http_conn *hc = h ? calloc(1, sizeof(*hc)) : NULL;
        if (!hc) {
                close(fd);
                return;
        }
        *hc = (http_conn){.h = h, .fd = fd, .tcp = tcp};
        if (!admit(h, hc)) {
                free(hc);
                return;
        }
        struct sockaddr_storage ss = {0};
        socklen_t len = sizeof(ss);
        if (getpeername(fd, (struct sockaddr *)&ss, &len) < 0)
                len = sizeof(sa_family_t);
        h->adding = hc;
        if (MHD_add_connection(h->mhd, fd, (struct sockaddr *)&ss, len) != MHD_YES)
                md_log(LOG_WARNING, "cannot serve an HTTP connection: %m");
        free(MX_TAKE_PTR(h->adding)); /* (not taken: the connection failed) */
        run_soon(h);
}

/* ---- life ---------------------------------------------------------------------------- */

int md_http_start(md_server *srv, mx_error *err) {
        if (srv->listen[MD_LISTEN_HTTP].fd < 0 && srv->listen[MD_LISTEN_HTTP_TCP].fd < 0)
                return 0;
        md_http *h = calloc(1, sizeof(*h));
        if (!h)
                return mx_error_set(err, -ENOMEM, "out of memory");
        h->srv = srv;
        srv->http = h;
        h->mhd = MHD_start_daemon(MHD_USE_EPOLL | MHD_ALLOW_SUSPEND_RESUME | MHD_USE_NO_LISTEN_SOCKET, 0, NULL, NULL,
                                  on_request, h, MHD_OPTION_NOTIFY_COMPLETED, on_completed, h,
                                  MHD_OPTION_NOTIFY_CONNECTION, on_connection, h, MHD_OPTION_CONNECTION_TIMEOUT,
                                  (unsigned)IDLE_TIMEOUT_S, MHD_OPTION_STRICT_FOR_CLIENT, (int)1,
                                  MHD_OPTION_SIGPIPE_HANDLED_BY_APP, (int)1, MHD_OPTION_END);
        if (!h->mhd)
                return mx_error_set(err, -EIO, "cannot start the HTTP server (libmicrohttpd)");
        const union MHD_DaemonInfo *di = MHD_get_daemon_info(h->mhd, MHD_DAEMON_INFO_EPOLL_FD);
        int r;
        if (!di)
                return mx_error_set(err, -EIO, "the HTTP server has no epoll descriptor (libmicrohttpd)");
        /* The timer is set by plan() (UINT64_MAX: never, until then). */
        if ((r = sd_event_add_io(srv->event, &h->io, di->epoll_fd, EPOLLIN, on_io, h)) < 0 ||
            (r = sd_event_add_time(srv->event, &h->timer, CLOCK_MONOTONIC, UINT64_MAX, 0, on_timer, h)) < 0)
                return mx_error_set(err, r, "event loop: %s", strerror(-r));
        return 0;
}

void md_http_stop(md_server *srv) {
        md_http *h = srv->http;
        if (!h)
                return;
        /* libmicrohttpd must not be stopped with a connection suspended. */
        for (http_conn *hc = h->conns; h->mhd && hc; hc = hc->next)
                if (hc->req && hc->req->state != Q_DEAD)
                        client_gone(hc->req, NULL);
        if (h->mhd)
                MHD_stop_daemon(h->mhd);
        sd_event_source_disable_unref(h->io);
        sd_event_source_disable_unref(h->timer);
        sd_event_source_disable_unref(h->soon);
        sd_event_source_disable_unref(h->dispatch);
        free(h);
        srv->http = NULL;
}
