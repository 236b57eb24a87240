/* The HTTP API against the protobuf socket, on one real mixtrald: N
 * clients, each on its own connection, send a streamed request at once
 * (a raw prompt, greedy, a fixed number of tokens: EOS ignored), through
 * each transport in turn; aggregate completion tokens/s over the wall time
 * of the set, and time to first token as each client sees it (from its
 * send to its first text), median and worst. Both transports are measured
 * the same way, from the client's side, so the difference is what the
 * transport costs. Each set runs REPS times per transport, interleaved;
 * one JSON line of medians per client count.
 *
 *   http-bench MIXTRALD MODEL_DIR TOKENS THREADS REPS CLIENTS... */
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "harness.h"

typedef struct client {
        int fd;
        double sent, first;      /* first: 0 until text came */
        unsigned tokens;
        bool done;
        char *buf;               /* [n] read, not yet used (HTTP: the whole response) */
        size_t n, cap;
} client;

typedef struct result {
        double tokens_per_s, ttft_p50, ttft_max;
} result;

static int connect_to(const char *path) {
        int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        struct sockaddr_un sa = {.sun_family = AF_UNIX};
        snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", path);
        if (fd >= 0 && connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
                close(fd);
                return -1;
        }
        return fd;
}

/* ---- the two transports: send a request, take what came ------------------------------ */

static int send_proto(client *c, int i, unsigned tokens) {
        dh_gen g = dh_bench_request(i, tokens);
        return dh_send_generate(c->fd, 1, &g);
}

/* send_proto's request in OpenAI's words. */
static int send_http(client *c, int i, unsigned tokens) {
        dh_gen g = dh_bench_request(i, tokens);
        char body[256], req[512];
        int n = snprintf(body, sizeof(body),
                         "{\"prompt\": \"%s\", \"max_tokens\": %u, \"temperature\": 0, \"seed\": %llu, "
                         "\"ignore_eos\": true, \"stream\": true, \"stream_options\": {\"include_usage\": true}}",
                         g.prompt, g.max_tokens, (unsigned long long)g.seed);
        int m = snprintf(req, sizeof(req), "POST /v1/completions HTTP/1.1\r\nHost: localhost\r\n"
                         "Content-Length: %d\r\n\r\n%s", n, body);
        return mxp_write_all(c->fd, req, (size_t)m);
}

/* Responses in the buffer: the first chunk's time, the end's tokens. */
static void take_proto(client *c, double t) {
        size_t hdr, body;
        while (mxp_frame_find((uint8_t *)c->buf, c->n, 64u << 20, &hdr, &body) == 1) {
                Mixtrald__V1__Response *r = mixtrald__v1__response__unpack(NULL, body, (uint8_t *)c->buf + hdr);
                if (r && r->kind_case == MIXTRALD__V1__RESPONSE__KIND_CHUNK && r->chunk->text[0] && !c->first)
                        c->first = t;
                if (r && r->kind_case == MIXTRALD__V1__RESPONSE__KIND_FINISHED)
                        c->tokens = r->finished->usage->completion_tokens, c->done = true;
                if (r && r->kind_case == MIXTRALD__V1__RESPONSE__KIND_ERROR)
                        c->done = true;
                if (r)
                        mixtrald__v1__response__free_unpacked(r, NULL);
                memmove(c->buf, c->buf + hdr + body, c->n - hdr - body);
                c->n -= hdr + body;
        }
}

/* Whether an event in s has new text. */
static bool has_text(const char *s) {
        for (const char *p = s; (p = strstr(p, "\"text\":\"")); p++)
                if (p[8] != '"')
                        return true;
        return false;
}

static void take_http(client *c, double t) {
        c->buf[c->n] = '\0';
        if (!c->first && has_text(c->buf))
                c->first = t;
        const char *u = strstr(c->buf, "\"completion_tokens\":");
        if (u && strstr(u, "data: [DONE]"))
                c->tokens = (unsigned)atoi(u + strlen("\"completion_tokens\":")), c->done = true;
        if (strstr(c->buf, "data: {\"error\"") || !strncmp(c->buf, "HTTP/1.1 4", 10) ||
            !strncmp(c->buf, "HTTP/1.1 5", 10))
                c->done = true;
}

/* ---- one set ----------------------------------------------------------------------------- */

static int read_some(client *c, bool http, double t) {
        if (c->cap - c->n < 65537) {
                char *p = realloc(c->buf, c->cap = c->cap * 2 + 65537);
                if (!p)
                        return -ENOMEM;
                c->buf = p;
        }
        ssize_t k = recv(c->fd, c->buf + c->n, c->cap - c->n - 1, 0);
        if (k <= 0)
                return -EPIPE;
        c->n += (size_t)k;
        http ? take_http(c, t) : take_proto(c, t);
        return 0;
}

static int run_set(const char *path, bool http, int n, unsigned tokens, result *out) {
        client *c = calloc((size_t)n, sizeof(*c));
        struct pollfd *p = calloc((size_t)n, sizeof(*p));
        double *ttft = calloc((size_t)n, sizeof(double));
        int rc = c && p && ttft ? 0 : -ENOMEM, left = n;
        for (int i = 0; rc == 0 && i < n; i++)
                if ((c[i].fd = connect_to(path)) < 0)
                        rc = -errno;
        double t0 = dh_now_s();
        for (int i = 0; rc == 0 && i < n; i++) {
                c[i].sent = dh_now_s();
                rc = http ? send_http(&c[i], i, tokens) : send_proto(&c[i], i, tokens);
        }
        while (rc == 0 && left > 0) {
                for (int i = 0; i < n; i++)
                        p[i] = (struct pollfd){.fd = c[i].done ? -1 : c[i].fd, .events = POLLIN};
                if (poll(p, (nfds_t)n, 600000) <= 0)
                        rc = -ETIMEDOUT;
                double t = dh_now_s();
                for (int i = 0; rc == 0 && i < n; i++)
                        if (p[i].revents && (rc = read_some(&c[i], http, t)) == 0 && c[i].done)
                                left--;
        }
        double seconds = dh_now_s() - t0, total = 0;
        for (int i = 0; rc == 0 && i < n; i++) {
                if (c[i].tokens != tokens || !c[i].first) {
                        fprintf(stderr, "client %d (%s): %u tokens, first %g: %.*s\n", i, http ? "HTTP" : "protobuf",
                                c[i].tokens, c[i].first, (int)(c[i].n < 600 ? c[i].n : 600), c[i].buf);
                        rc = -EPROTO;
                }
                total += c[i].tokens;
                ttft[i] = c[i].first - c[i].sent;
        }
        if (rc == 0) {
                qsort(ttft, (size_t)n, sizeof(double), dh_cmp_double);
                *out = (result){total / seconds, ttft[n / 2], ttft[n - 1]};
        }
        for (int i = 0; c && i < n; i++) {
                if (c[i].fd > 0)
                        close(c[i].fd);
                free(c[i].buf);
        }
        free(c), free(p), free(ttft);
        return rc;
}

static double median(double *v, int n) {
        qsort(v, (size_t)n, sizeof(double), dh_cmp_double);
        return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

enum { MAX_REPS = 15 };

/* reps sets of n clients through each transport, interleaved (this VM's
 * speed drifts), and the medians of each. */
static int compare(dh_daemon *d, const char *http, int n, unsigned tokens, int reps, result med[2]) {
        double v[2][3][MAX_REPS];
        for (int k = 0; k < reps; k++)
                for (int t = 0; t < 2; t++) {
                        result r;
                        int rc = run_set(t ? http : d->socket, t, n, tokens, &r);
                        if (rc < 0)
                                return rc;
                        v[t][0][k] = r.tokens_per_s, v[t][1][k] = r.ttft_p50, v[t][2][k] = r.ttft_max;
                }
        for (int t = 0; t < 2; t++)
                med[t] = (result){median(v[t][0], reps), median(v[t][1], reps), median(v[t][2], reps)};
        return 0;
}

int main(int argc, char **argv) {
        int reps = argc > 5 ? atoi(argv[5]) : 0;
        if (argc < 7 || reps < 1 || reps > MAX_REPS) {
                fprintf(stderr, "usage: http-bench MIXTRALD MODEL_DIR TOKENS THREADS REPS CLIENTS...\n");
                return 2;
        }
        unsigned tokens = (unsigned)atoi(argv[3]);
        int most = 1;
        for (int a = 6; a < argc; a++)
                most = atoi(argv[a]) > most ? atoi(argv[a]) : most;
        char config[256], http[320];
        snprintf(config, sizeof(config), "[daemon]\nthreads=%s\nmax_batch=%d\nmax_queue=%d\n"
                 "max_connections_per_uid=%d\n[quota]\nmax_concurrent=0\n", argv[4], most, most, 2 * most + 4);
        signal(SIGPIPE, SIG_IGN);
        dh_daemon d;
        if (dh_init(&d, argv[1], argv[2], config) < 0 || dh_start(&d, NULL) < 0) {
                fprintf(stderr, "cannot start the daemon\n");
                return 1;
        }
        snprintf(http, sizeof(http), "%s-http.sock", d.socket); /* the default beside --socket */
        result warm, med[2];
        int r = run_set(d.socket, false, 1, 4, &warm);
        for (int a = 6; r == 0 && a < argc; a++) {
                int n = atoi(argv[a]);
                if ((r = compare(&d, http, n, tokens, reps, med)) == 0)
                        printf("{\"clients\": %d, \"tokens_each\": %u, \"threads\": %s, \"reps\": %d, "
                               "\"protobuf\": {\"tokens_per_s\": %.1f, \"ttft_p50_s\": %.4f, \"ttft_max_s\": %.4f}, "
                               "\"http\": {\"tokens_per_s\": %.1f, \"ttft_p50_s\": %.4f, \"ttft_max_s\": %.4f}}\n",
                               n, tokens, argv[4], reps, med[0].tokens_per_s, med[0].ttft_p50, med[0].ttft_max,
                               med[1].tokens_per_s, med[1].ttft_p50, med[1].ttft_max);
                fflush(stdout);
        }
        if (r < 0)
                fprintf(stderr, "a run failed: %s\n", strerror(-r));
        dh_stop(&d);
        dh_cleanup(&d);
        return r == 0 ? 0 : 1;
}
