/* The service's life under systemd or by hand: the listening sockets (from
 * sd_listen_fds or made here: the protobuf socket, the HTTP API's Unix
 * socket and TCP listener), accepting, SIGHUP reloads, SIGTERM drains,
 * and the sd_notify states that go with them. */
#include <fcntl.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <syslog.h>
#include <systemd/sd-daemon.h>
#include <systemd/sd-event.h>

#include "mx_common.h"
#include "mixtrald.h"

static const char *const kind_names[MD_LISTEN_KINDS] = {"the protobuf socket", "the HTTP socket",
                                                         "the HTTP TCP listener"};

static void set_accepting(md_server *srv, bool on) {
        for (int k = 0; k < MD_LISTEN_KINDS; k++)
                if (srv->listen[k].src)
                        sd_event_source_set_enabled(srv->listen[k].src, on ? SD_EVENT_ON : SD_EVENT_OFF);
}

void md_service_accept_again(md_server *srv) {
        if (!srv->accept_retry)
                set_accepting(srv, true);
}

uint32_t md_service_conns_of(const md_server *srv, uint32_t uid) {
        return md_conn_count(srv, uid) + md_http_count(srv, uid);
}

/* At the file descriptor limit accept() fails while the client waits in
 * the backlog, so the listening socket stays readable: without care the
 * loop spins on it. Then a descriptor kept in reserve is given up to
 * accept the client, tell it why (in its protocol) and close it,
 * accepting pauses for a moment (or until a connection closes), and the
 * log says so once a minute at most. */
static int on_accept_retry(sd_event_source *s, uint64_t usec, void *userdata) {
        md_server *srv = userdata;
        srv->accept_retry = sd_event_source_disable_unref(srv->accept_retry);
        set_accepting(srv, true);
        return 0;
}

static void tell_busy(const md_listener *l, int c) {
        static const char why[] = "the daemon is out of file descriptors; try again shortly";
        if (l->kind != MD_LISTEN_PROTO)
                return md_http_refuse(c, 503, why);
        Mixtrald__V1__Error e = MIXTRALD__V1__ERROR__INIT;
        e.has_code = true, e.code = MIXTRALD__V1__ERROR_CODE__BUSY, e.message = (char *)why;
        e.has_retry_after_ms = true, e.retry_after_ms = 1000;
        Mixtrald__V1__Response resp = MIXTRALD__V1__RESPONSE__INIT;
        resp.kind_case = MIXTRALD__V1__RESPONSE__KIND_ERROR, resp.error = &e;
        uint8_t *frame;
        size_t len;
        if (mxp_frame_pack(&resp.base, &frame, &len) == 0) {
                ssize_t k = send(c, frame, len, MSG_NOSIGNAL | MSG_DONTWAIT);
                (void)k; /* best effort */
                free(frame);
        }
        close(c);
}

static void refuse_at_limit(md_listener *l) {
        md_server *srv = l->srv;
        if (srv->reserve_fd >= 0) {
                close(srv->reserve_fd);
                int c = accept4(l->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
                if (c >= 0) {
                        tell_busy(l, c);
                        srv->emfile_refused++;
                }
                srv->reserve_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
        }
        double now = md_now();
        if (now - srv->emfile_logged >= 60) {
                md_log(LOG_WARNING, "out of file descriptors: %llu clients refused; accepting pauses while at the "
                       "limit (raise LimitNOFILE= or lower max_connections_per_uid)",
                       (unsigned long long)srv->emfile_refused);
                srv->emfile_logged = now, srv->emfile_refused = 0;
        }
        set_accepting(srv, false);
        if (!srv->accept_retry)
                sd_event_add_time_relative(srv->event, &srv->accept_retry, CLOCK_MONOTONIC, 250000, 0, on_accept_retry,
                                           srv);
}

static int on_accept(sd_event_source *s, int fd, uint32_t revents, void *userdata) {
        md_listener *l = userdata;
        for (int i = 0; i < 64; i++) {
                int c = accept4(fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
                if (c >= 0) {
                        if (l->kind == MD_LISTEN_PROTO)
                                md_conn_new(l->srv, c);
                        else
                                md_http_add(l->srv, c, l->kind == MD_LISTEN_HTTP_TCP);
                        continue;
                }
                if (errno == EMFILE || errno == ENFILE)
                        refuse_at_limit(l);
                else if (errno != EAGAIN && errno != EINTR && errno != ECONNABORTED)
                        md_log(LOG_WARNING, "accept: %m");
                break;
        }
        return 0;
}

/* mkdir -p for the socket's directory (mode 0755: the socket's own mode
 * decides who may connect). */
static int make_parent(const char *path) {
        _cleanup_free_ char *dir = strdup(path);
        if (!dir)
                return -ENOMEM;
        for (char *p = dir + 1; *p; p++) {
                if (*p != '/')
                        continue;
                *p = '\0';
                if (mkdir(dir, 0755) < 0 && errno != EEXIST)
                        return -errno;
                *p = '/';
        }
        return 0;
}

/* A socket file left by a daemon that died is removed; one that answers
 * belongs to a live daemon and is an error. */
static int clear_stale(const char *path, const struct sockaddr_un *sa, mx_error *err) {
        struct stat st;
        if (lstat(path, &st) < 0)
                return 0;
        if (!S_ISSOCK(st.st_mode))
                return mx_error_set(err, -EEXIST, "%s exists and is not a socket", path);
        _cleanup_close_ int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd >= 0 && connect(fd, (const struct sockaddr *)sa, sizeof(*sa)) == 0)
                return mx_error_set(err, -EADDRINUSE, "another mixtrald serves %s", path);
        unlink(path);
        return 0;
}

static int make_unix(md_server *srv, md_listener *l, const char *path, mx_error *err) {
        struct sockaddr_un sa = {.sun_family = AF_UNIX};
        if (strlen(path) >= sizeof(sa.sun_path))
                return mx_error_set(err, -ENAMETOOLONG, "socket path too long: %s", path);
        strcpy(sa.sun_path, path);
        int r = make_parent(path);
        if (r < 0)
                return mx_error_set(err, r, "cannot create the directory of %s: %s", path, strerror(-r));
        if ((r = clear_stale(path, &sa, err)) < 0)
                return r;
        _cleanup_close_ int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd < 0)
                return mx_error_set(err, -errno, "socket: %s", strerror(errno));
        /* Bind under a umask that leaves nobody a window before the chmod. */
        mode_t old = umask(0177);
        r = bind(fd, (struct sockaddr *)&sa, sizeof(sa));
        umask(old);
        if (r < 0)
                return mx_error_set(err, -errno, "cannot bind %s: %s", path, strerror(errno));
        if (!(l->created = strdup(path)))
                return mx_error_set(err, -ENOMEM, "out of memory");
        if (chmod(path, srv->cfg.socket_mode) < 0 || listen(fd, 256) < 0)
                return mx_error_set(err, -errno, "%s: %s", path, strerror(errno));
        l->fd = MX_TAKE_FD(fd);
        md_log(LOG_INFO, "listening on %s (mode %04o) for %s", path, srv->cfg.socket_mode,
               l->kind == MD_LISTEN_PROTO ? "protobuf" : "HTTP");
        return 0;
}

static int make_tcp(md_server *srv, md_listener *l, const char *addr, mx_error *err) {
        struct sockaddr_storage ss;
        socklen_t len;
        int r = md_listen_addr_parse(addr, &ss, &len, err);
        if (r < 0)
                return r;
        _cleanup_close_ int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd < 0)
                return mx_error_set(err, -errno, "http_listen=%s: socket: %s", addr, strerror(errno));
        int on = 1;
        if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof(on)) < 0 ||
            bind(fd, (struct sockaddr *)&ss, len) < 0 || listen(fd, 256) < 0)
                return mx_error_set(err, -errno, "http_listen=%s: %s", addr, strerror(errno));
        l->fd = MX_TAKE_FD(fd);
        md_log(LOG_INFO, "listening on %s for HTTP (API keys)", addr);
        return 0;
}

/* What a socket from systemd is for. */
static int kind_of(const md_server *srv, int fd, md_listen_kind *kind, mx_error *err) {
        const char *http = srv->cfg.http_socket;
        if (sd_is_socket_inet(fd, AF_UNSPEC, SOCK_STREAM, 1, 0) > 0)
                *kind = MD_LISTEN_HTTP_TCP;
        else if (sd_is_socket_unix(fd, SOCK_STREAM, 1, NULL, 0) <= 0)
                return mx_error_set(err, -EINVAL, "a socket from systemd is not a listening stream socket");
        else if (strcmp(http, "none") && sd_is_socket_unix(fd, SOCK_STREAM, 1, http, 0) > 0)
                *kind = MD_LISTEN_HTTP;
        else
                *kind = MD_LISTEN_PROTO;
        if (srv->listen[*kind].fd >= 0)
                return mx_error_set(err, -EINVAL, "systemd passed two sockets for %s (HTTP's Unix socket is told "
                                    "apart by its path: http_socket=%s)", kind_names[*kind], http);
        return 0;
}

/* Under socket activation, systemd owns the sockets: the daemon serves
 * what it passes and makes none (it could not under the system unit). */
static int take_from_systemd(md_server *srv, int n, mx_error *err) {
        for (int i = 0; i < n; i++) {
                int fd = SD_LISTEN_FDS_START + i;
                md_listen_kind kind = MD_LISTEN_PROTO;
                int r = kind_of(srv, fd, &kind, err);
                if (r < 0)
                        return r;
                if (fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK) < 0)
                        return mx_error_set(err, -errno, "fcntl: %s", strerror(errno));
                srv->listen[kind].fd = fd;
                md_log(LOG_INFO, "listening on %s from systemd", kind_names[kind]);
        }
        if (srv->listen[MD_LISTEN_PROTO].fd < 0)
                return mx_error_set(err, -EINVAL, "systemd passed no protobuf socket");
        if (srv->listen[MD_LISTEN_HTTP].fd < 0 && strcmp(srv->cfg.http_socket, "none"))
                md_log(LOG_NOTICE, "systemd passed no socket at http_socket=%s: HTTP over a Unix socket is off",
                       srv->cfg.http_socket);
        return 0;
}

static int make_own(md_server *srv, mx_error *err) {
        int r = make_unix(srv, &srv->listen[MD_LISTEN_PROTO], srv->cfg.socket, err);
        if (r == 0 && strcmp(srv->cfg.http_socket, "none"))
                r = make_unix(srv, &srv->listen[MD_LISTEN_HTTP], srv->cfg.http_socket, err);
        if (r == 0 && srv->cfg.http_listen)
                r = make_tcp(srv, &srv->listen[MD_LISTEN_HTTP_TCP], srv->cfg.http_listen, err);
        return r;
}

int md_service_listen(md_server *srv, mx_error *err) {
        for (int k = 0; k < MD_LISTEN_KINDS; k++)
                srv->listen[k] = (md_listener){.srv = srv, .kind = (md_listen_kind)k, .fd = -1};
        int n = sd_listen_fds(true), r;
        if (n < 0)
                return mx_error_set(err, n, "sd_listen_fds: %s", strerror(-n));
        if ((r = n > 0 ? take_from_systemd(srv, n, err) : make_own(srv, err)) < 0)
                return r;
        if ((srv->reserve_fd = open("/dev/null", O_RDONLY | O_CLOEXEC)) < 0)
                return mx_error_set(err, -errno, "/dev/null: %s", strerror(errno));
        for (int k = 0; k < MD_LISTEN_KINDS; k++) {
                md_listener *l = &srv->listen[k];
                if (l->fd >= 0 && (r = sd_event_add_io(srv->event, &l->src, l->fd, EPOLLIN, on_accept, l)) < 0)
                        return mx_error_set(err, r, "sd_event_add_io: %s", strerror(-r));
        }
        return 0;
}

void md_service_unlisten(md_server *srv) {
        for (int k = 0; k < MD_LISTEN_KINDS; k++) {
                md_listener *l = &srv->listen[k];
                l->src = sd_event_source_disable_unref(l->src);
                if (l->created)
                        unlink(l->created);
                free(l->created);
                l->created = NULL; /* a successor may create it again */
                if (l->fd >= 0)
                        close(l->fd);
                l->fd = -1;
        }
}

/* ---- stopping ---------------------------------------------------------------- */

void md_service_maybe_exit(md_server *srv) {
        if (!srv->draining || md_core_live(srv->core))
                return;
        bool pending;
        md_conn_close_idle(srv, &pending);
        if (!pending && !md_http_pending(srv))
                sd_event_exit(srv->event, 0);
}

static int on_drain_deadline(sd_event_source *s, uint64_t usec, void *userdata) {
        md_server *srv = userdata;
        if (md_core_live(srv->core)) {
                md_log(LOG_NOTICE, "drain time over: aborting %zu requests", md_core_live(srv->core));
                md_sched_abort_all(srv->sched, MIXTRALD__V1__ERROR_CODE__UNAVAILABLE,
                                   "the daemon stopped before the request finished");
        }
        /* Clients that do not read their last answers do not hold us up. */
        return sd_event_add_time_relative(srv->event, NULL, CLOCK_MONOTONIC, 2000000, 0,
                                          md_service_exit_now, srv);
}

int md_service_exit_now(sd_event_source *s, uint64_t usec, void *userdata) {
        md_server *srv = userdata;
        return sd_event_exit(srv->event, 0);
}

static int on_stop(sd_event_source *s, const struct signalfd_siginfo *si, void *userdata) {
        md_server *srv = userdata;
        if (srv->draining) {
                md_log(LOG_NOTICE, "second stop signal: aborting everything now");
                md_sched_abort_all(srv->sched, MIXTRALD__V1__ERROR_CODE__UNAVAILABLE, "the daemon is stopping");
                return on_drain_deadline(NULL, 0, srv);
        }
        srv->draining = true;
        /* New clients are told at once (no socket, or refused) instead of
         * waiting in a backlog nobody will accept from. */
        md_service_unlisten(srv);
        /* The drain may be longer than the unit's stop timeout: ask for it. */
        size_t live = md_core_live(srv->core);
        sd_notifyf(false, "STOPPING=1\nSTATUS=Stopping: %zu requests to finish\nEXTEND_TIMEOUT_USEC=%llu", live,
                   (unsigned long long)((srv->cfg.drain_seconds + 10) * 1e6));
        md_log(LOG_INFO, "stopping: letting %zu requests finish (up to %.0f s)", live, srv->cfg.drain_seconds);
        md_dbus_state_changed(srv);
        /* Requests not yet started would only begin new work: end them now. */
        md_core_drain(srv->core);
        uint64_t usec = (uint64_t)(srv->cfg.drain_seconds * 1e6);
        int r = sd_event_add_time_relative(srv->event, &srv->drain_timer, CLOCK_MONOTONIC, usec, 0,
                                           on_drain_deadline, srv);
        if (r < 0)
                return r;
        md_service_maybe_exit(srv);
        return 0;
}

/* ---- reloading --------------------------------------------------------------- */

static void reload(md_server *srv) {
        mx_error err = {0};
        md_config next;
        if (md_service_load_config(srv, &next, &err) < 0) {
                md_log(LOG_ERR, "reload failed, keeping the running configuration: %s", err.msg);
        } else {
                /* What the running engine and socket were built from stays. */
                static const char *const fixed[] = {"model", "device", "socket", "state_directory", "http_socket",
                                                    "http_listen", "kv_type", "kv_memory"};
                char **mine[] = {&srv->cfg.model, &srv->cfg.device, &srv->cfg.socket, &srv->cfg.state_directory,
                                 &srv->cfg.http_socket, &srv->cfg.http_listen, &srv->cfg.kv_type, &srv->cfg.kv_memory};
                char **theirs[] = {&next.model, &next.device, &next.socket, &next.state_directory, &next.http_socket,
                                   &next.http_listen, &next.kv_type, &next.kv_memory};
                for (size_t i = 0; i < MX_ELEMENTSOF(fixed); i++) {
                        if ((*mine[i] || *theirs[i]) && (!*mine[i] || !*theirs[i] || strcmp(*mine[i], *theirs[i])))
                                md_log(LOG_NOTICE, "%s changes only at restart", fixed[i]);
                        char *t = *theirs[i];
                        *theirs[i] = *mine[i], *mine[i] = t;
                }
                next.threads = srv->cfg.threads;
                if (next.quantize != srv->cfg.quantize)
                        md_log(LOG_NOTICE, "quantize changes only at restart");
                next.quantize = srv->cfg.quantize;
                uint64_t budget = srv->expert_budget;
                if (next.quantize && next.expert_memory)
                        md_log(LOG_ERR, "expert_memory=%s: a model quantized as it loads keeps every expert in "
                               "memory; expert memory stays as it was", next.expert_memory);
                else if (mx_expert_budget_parse(next.expert_memory ? next.expert_memory : "auto", srv->load.model, &budget,
                                           &err) < 0)
                        md_log(LOG_ERR, "%s; expert memory stays as it was", err.msg);
                md_config_free(&srv->cfg);
                srv->cfg = next;
                md_users_flush(srv->users);
                if (budget != srv->expert_budget)
                        md_log(LOG_INFO, "expert memory: %llu bytes configured", (unsigned long long)budget);
                srv->expert_budget = budget;
                srv->calm_seconds = 0;
                md_server_set_expert_budget(srv, budget);
                md_log(LOG_INFO, "configuration reloaded");
        }
}

static int on_reload(sd_event_source *s, const struct signalfd_siginfo *si, void *userdata) {
        md_server *srv = userdata;
        /* systemd has been told STOPPING=1: no READY=1 after that. */
        if (srv->draining) {
                md_log(LOG_NOTICE, "reload ignored: the daemon is stopping");
                return 0;
        }
        /* Before READY=1 systemd expects no RELOADING=1: still loading, the
         * file is read again quietly. */
        if (srv->loading)
                return reload(srv), 0;
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        sd_notifyf(false, "RELOADING=1\nSTATUS=Reloading the configuration\nMONOTONIC_USEC=%llu",
                   (unsigned long long)ts.tv_sec * 1000000ull + (unsigned long long)ts.tv_nsec / 1000);
        reload(srv);
        sd_notify(false, "READY=1\nSTATUS=Serving");
        return 0;
}

int md_service_signals(md_server *srv) {
        sigset_t ss;
        sigemptyset(&ss);
        sigaddset(&ss, SIGTERM);
        sigaddset(&ss, SIGINT);
        sigaddset(&ss, SIGHUP);
        sigprocmask(SIG_BLOCK, &ss, NULL);
        signal(SIGPIPE, SIG_IGN);
        int r;
        if ((r = sd_event_add_signal(srv->event, NULL, SIGTERM, on_stop, srv)) < 0 ||
            (r = sd_event_add_signal(srv->event, NULL, SIGINT, on_stop, srv)) < 0 ||
            (r = sd_event_add_signal(srv->event, NULL, SIGHUP, on_reload, srv)) < 0)
                return r;
        /* WATCHDOG=1 from the loop itself: a stuck loop stops the pings. */
        return sd_event_set_watchdog(srv->event, true);
}
