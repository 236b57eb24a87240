/* fake-mixtrald: a stand-in for mixtrald in the client's tests, for what
 * the real daemon does not do on cue, and a record of exactly what the
 * client sent.
 *
 *   fake-mixtrald SOCKET LOG MODE
 *
 * MODE serving: Status says "serving"; every Generate gets Accepted, the
 *               chunk "answer N" (N counting Generates from 1) and
 *               Finished (eos).
 *      loading: Status says "loading" with load_progress 0.42; Generates
 *               as above.
 *      break-first: as serving, but the first Generate gets Accepted and
 *               the chunk "partial", then its connection is closed.
 *      vanish:  as break-first, but then the process exits: a daemon that
 *               does not come back.
 *
 * Each Generate appends one line to LOG: "generate:", " system=TEXT" when
 * it has one, then for each message " ROLE=CONTENT" (or " prompt=TEXT"),
 * with backslashes and newlines in the text written as \\ and \n.
 * Connections are served one at a time, until the process is killed (or
 * vanishes). Only the tests run it. */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "mxproto.h"

#define MAX_FRAME (64u << 20)

typedef enum mode { SERVING, LOADING, BREAK_FIRST, VANISH } mode;

typedef struct fake {
        mode mode;
        FILE *log;
        unsigned generates; /* so far, from every connection */
} fake;

static void log_text(FILE *f, const char *name, const char *s) {
        fprintf(f, " %s=", name);
        for (; s && *s; s++) {
                if (*s == '\n')
                        fputs("\\n", f);
                else if (*s == '\\')
                        fputs("\\\\", f);
                else
                        fputc(*s, f);
        }
}

static int reply(int fd, uint64_t tag, Mixtrald__V1__Response *resp) {
        resp->has_tag = true;
        resp->tag = tag;
        return mxp_send(fd, &resp->base);
}

static int send_status(fake *f, int fd, uint64_t tag) {
        Mixtrald__V1__Status st = MIXTRALD__V1__STATUS__INIT;
        st.version = (char *)"fake";
        st.model = (char *)"/fake/model";
        st.device = (char *)"none";
        st.state = (char *)(f->mode == LOADING ? "loading" : "serving");
        st.has_load_progress = true;
        st.load_progress = f->mode == LOADING ? 0.42 : 1.0;
        Mixtrald__V1__Response resp = MIXTRALD__V1__RESPONSE__INIT;
        resp.kind_case = MIXTRALD__V1__RESPONSE__KIND_STATUS;
        resp.status = &st;
        return reply(fd, tag, &resp);
}

/* 0 to go on with the connection, -1 to close it. */
static int send_answer(fake *f, int fd, uint64_t tag, const Mixtrald__V1__Generate *g) {
        unsigned n = ++f->generates;
        fputs("generate:", f->log);
        if (g->system)
                log_text(f->log, "system", g->system);
        if (g->prompt)
                log_text(f->log, "prompt", g->prompt);
        for (size_t i = 0; i < g->n_messages; i++)
                log_text(f->log, g->messages[i]->role ? g->messages[i]->role : "?", g->messages[i]->content);
        fputc('\n', f->log);
        fflush(f->log);

        Mixtrald__V1__Accepted acc = MIXTRALD__V1__ACCEPTED__INIT;
        Mixtrald__V1__Response resp = MIXTRALD__V1__RESPONSE__INIT;
        resp.has_request_id = true;
        resp.request_id = n;
        resp.kind_case = MIXTRALD__V1__RESPONSE__KIND_ACCEPTED;
        resp.accepted = &acc;
        if (reply(fd, tag, &resp) < 0)
                return -1;

        char text[32];
        bool cut = (f->mode == BREAK_FIRST || f->mode == VANISH) && n == 1;
        snprintf(text, sizeof(text), cut ? "partial" : "answer %u", n);
        Mixtrald__V1__Chunk chunk = MIXTRALD__V1__CHUNK__INIT;
        chunk.text = text;
        resp.kind_case = MIXTRALD__V1__RESPONSE__KIND_CHUNK;
        resp.chunk = &chunk;
        int r = reply(fd, tag, &resp);
        if (cut && f->mode == VANISH)
                exit(0);
        if (r < 0 || cut)
                return -1;

        Mixtrald__V1__Finished fin = MIXTRALD__V1__FINISHED__INIT;
        fin.reason = (char *)"eos";
        resp.kind_case = MIXTRALD__V1__RESPONSE__KIND_FINISHED;
        resp.finished = &fin;
        return reply(fd, tag, &resp) < 0 ? -1 : 0;
}

static void serve(fake *f, int fd) {
        for (;;) {
                uint8_t *body;
                size_t len;
                if (mxp_read_frame(fd, MAX_FRAME, &body, &len) < 0)
                        return;
                Mixtrald__V1__Request *req = mixtrald__v1__request__unpack(NULL, len, body);
                free(body);
                if (!req)
                        return;
                int r = 0;
                if (req->kind_case == MIXTRALD__V1__REQUEST__KIND_STATUS)
                        r = send_status(f, fd, req->tag);
                else if (req->kind_case == MIXTRALD__V1__REQUEST__KIND_GENERATE)
                        r = send_answer(f, fd, req->tag, req->generate);
                mixtrald__v1__request__free_unpacked(req, NULL);
                if (r < 0)
                        return;
        }
}

static int listen_on(const char *path) {
        struct sockaddr_un sa = {.sun_family = AF_UNIX};
        if (strlen(path) >= sizeof(sa.sun_path)) {
                fprintf(stderr, "fake-mixtrald: %s: path too long\n", path);
                return -1;
        }
        strcpy(sa.sun_path, path);
        int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        unlink(path);
        if (fd < 0 || bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0 || listen(fd, 16) < 0) {
                fprintf(stderr, "fake-mixtrald: %s: %s\n", path, strerror(errno));
                return -1;
        }
        return fd;
}

int main(int argc, char **argv) {
        if (argc != 4) {
                fprintf(stderr, "usage: fake-mixtrald SOCKET LOG serving|loading|break-first|vanish\n");
                return 2;
        }
        fake f = {.mode = !strcmp(argv[3], "loading")       ? LOADING
                          : !strcmp(argv[3], "break-first") ? BREAK_FIRST
                          : !strcmp(argv[3], "vanish")      ? VANISH
                                                            : SERVING};
        if (f.mode == SERVING && strcmp(argv[3], "serving") != 0) {
                fprintf(stderr, "fake-mixtrald: unknown mode '%s'\n", argv[3]);
                return 2;
        }
        if (!(f.log = fopen(argv[2], "a"))) {
                fprintf(stderr, "fake-mixtrald: %s: %s\n", argv[2], strerror(errno));
                return 1;
        }
        signal(SIGPIPE, SIG_IGN);
        int ls = listen_on(argv[1]);
        if (ls < 0)
                return 1;
        for (;;) {
                int fd = accept(ls, NULL, NULL);
                if (fd < 0 && errno == EINTR)
                        continue;
                if (fd < 0) {
                        fprintf(stderr, "fake-mixtrald: accept: %s\n", strerror(errno));
                        return 1;
                }
                serve(&f, fd);
                close(fd);
        }
}
