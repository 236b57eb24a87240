/* What one local user's flood costs everyone else: a real mixtrald, and
 * FLOODERS connections of one unprivileged uid that either pipeline status
 * queries as fast as the socket takes them ("status") or send 1 MB prompts
 * one after another ("prompts"), while this process (root) asks
 * for status every 50 ms and streams one answer. Reports the victim's
 * status latency (median, p99, worst) and the longest gap between two
 * chunks of its answer against the same answer with nobody flooding, as
 * one JSON line per run. Needs root (the flooders drop to another uid).
 *
 *   flood-bench MIXTRALD MODEL_DIR FLOODERS status|prompts [SECONDS] */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "harness.h"

enum { FLOOD_UID = 60021 };

/* A frame the flooder sends again and again, packed once. */
static int pack_flood_frame(bool prompts, uint8_t **frame, size_t *len) {
        Mixtrald__V1__StatusQuery sq = MIXTRALD__V1__STATUS_QUERY__INIT;
        Mixtrald__V1__Generate g = MIXTRALD__V1__GENERATE__INIT;
        Mixtrald__V1__Request req = MIXTRALD__V1__REQUEST__INIT;
        char *prompt = NULL;
        req.has_tag = true, req.tag = 1;
        if (prompts) {
                size_t n = 1u << 20;
                prompt = malloc(n + 1);
                for (size_t i = 0; i < n; i++)
                        prompt[i] = "word "[i % 5];
                prompt[n] = '\0';
                g.prompt = prompt, g.has_raw = true, g.raw = true, g.has_max_tokens = true, g.max_tokens = 1;
                req.kind_case = MIXTRALD__V1__REQUEST__KIND_GENERATE, req.generate = &g;
        } else {
                req.kind_case = MIXTRALD__V1__REQUEST__KIND_STATUS, req.status = &sq;
        }
        int r = mxp_frame_pack(&req.base, frame, len);
        free(prompt);
        return r;
}

/* The flooding child: n connections, each writing the frame whenever the
 * socket takes more and reading (and dropping) whatever comes back. */
static int flood(const dh_daemon *d, int n, bool prompts) {
        uint8_t *frame;
        size_t len;
        if (pack_flood_frame(prompts, &frame, &len) < 0)
                return 1;
        struct pollfd *p = calloc((size_t)n, sizeof(*p));
        size_t *off = calloc((size_t)n, sizeof(*off));
        for (int i = 0; i < n; i++) {
                p[i].fd = dh_connect(d);
                p[i].events = POLLIN | POLLOUT;
                if (p[i].fd >= 0)
                        fcntl(p[i].fd, F_SETFL, O_NONBLOCK);
        }
        static uint8_t sink[1 << 16];
        for (;;) {
                if (poll(p, (nfds_t)n, 1000) < 0)
                        continue;
                for (int i = 0; i < n; i++) {
                        if (p[i].fd < 0)
                                continue;
                        if (p[i].revents & (POLLIN | POLLHUP | POLLERR)) {
                                ssize_t k = read(p[i].fd, sink, sizeof(sink));
                                if (k == 0 || (k < 0 && errno != EAGAIN)) {
                                        close(p[i].fd); /* dropped: come back */
                                        p[i].fd = dh_connect(d);
                                        off[i] = 0;
                                        if (p[i].fd >= 0)
                                                fcntl(p[i].fd, F_SETFL, O_NONBLOCK);
                                        continue;
                                }
                        }
                        if (p[i].revents & POLLOUT) {
                                ssize_t k = write(p[i].fd, frame + off[i], len - off[i]);
                                if (k > 0)
                                        off[i] = (off[i] + (size_t)k) % len;
                        }
                }
        }
}

typedef struct victim_stats {
        double status_p50, status_p99, status_max, max_gap, tokens_per_s;
        int statuses;
} victim_stats;

/* For `seconds`, streams answers one after another on one connection
 * while asking for status every 50 ms on another. A gap counts from the
 * request (or the chunk before) to the next chunk. */
static int victim(const dh_daemon *d, double seconds, victim_stats *st) {
        int gen = dh_connect(d), stat = dh_connect(d);
        dh_gen g = {.prompt = "The history of", .raw = true, .has_temperature = true, .max_tokens = 48,
                    .ignore_eos = true, .seed = 1, .want_ids = true};
        static double lat[1 << 16];
        double t0 = dh_now_s(), next_status = t0, asked = 0, last = 0;
        int n_lat = 0, tokens = 0;
        bool waiting = false, streaming = false;
        *st = (victim_stats){0};
        if (gen < 0 || stat < 0)
                return -1;
        while (dh_now_s() - t0 < seconds || streaming || waiting) {
                double now = dh_now_s();
                if (!streaming && now - t0 < seconds) {
                        if (dh_send_generate(gen, 1, &g) < 0)
                                return -1;
                        streaming = true, last = now;
                }
                if (!waiting && now >= next_status && now - t0 < seconds) {
                        if (dh_send_simple(stat, 9, MIXTRALD__V1__REQUEST__KIND_STATUS) < 0)
                                return -1;
                        asked = now, waiting = true, next_status = now + 0.05;
                }
                struct pollfd p[2] = {{.fd = gen, .events = POLLIN}, {.fd = stat, .events = POLLIN}};
                poll(p, 2, 10);
                int rc;
                if (p[1].revents & POLLIN) {
                        Mixtrald__V1__Response *r = dh_recv(stat, 60000, &rc);
                        if (!r)
                                return -1;
                        if (n_lat < (int)(sizeof(lat) / sizeof(lat[0])))
                                lat[n_lat++] = dh_now_s() - asked;
                        waiting = false;
                        mixtrald__v1__response__free_unpacked(r, NULL);
                }
                if (p[0].revents & POLLIN) {
                        Mixtrald__V1__Response *r = dh_recv(gen, 60000, &rc);
                        if (!r)
                                return -1;
                        double t = dh_now_s();
                        if (r->kind_case == MIXTRALD__V1__RESPONSE__KIND_CHUNK) {
                                tokens += (int)r->chunk->n_token_ids;
                                st->max_gap = t - last > st->max_gap ? t - last : st->max_gap;
                                last = t;
                        }
                        if (r->kind_case == MIXTRALD__V1__RESPONSE__KIND_FINISHED ||
                            r->kind_case == MIXTRALD__V1__RESPONSE__KIND_ERROR)
                                streaming = false;
                        mixtrald__v1__response__free_unpacked(r, NULL);
                }
        }
        st->tokens_per_s = tokens / (dh_now_s() - t0);
        qsort(lat, (size_t)n_lat, sizeof(double), dh_cmp_double);
        st->statuses = n_lat;
        st->status_p50 = n_lat ? lat[n_lat / 2] : 0;
        st->status_p99 = n_lat ? lat[(n_lat * 99) / 100] : 0;
        st->status_max = n_lat ? lat[n_lat - 1] : 0;
        close(gen), close(stat);
        return 0;
}

static void print_stats(const char *name, const victim_stats *s) {
        printf("\"%s\": {\"status_p50_ms\": %.2f, \"status_p99_ms\": %.2f, \"status_max_ms\": %.2f, "
               "\"statuses\": %d, \"stream_max_gap_ms\": %.1f, \"stream_tokens_per_s\": %.1f}",
               name, s->status_p50 * 1e3, s->status_p99 * 1e3, s->status_max * 1e3, s->statuses, s->max_gap * 1e3,
               s->tokens_per_s);
}

int main(int argc, char **argv) {
        if (argc < 5 || (strcmp(argv[4], "status") && strcmp(argv[4], "prompts"))) {
                fprintf(stderr, "usage: flood-bench MIXTRALD MODEL_DIR FLOODERS status|prompts [SECONDS]\n");
                return 2;
        }
        if (geteuid() != 0) {
                fprintf(stderr, "flood-bench needs root: the flooders run as uid %d\n", FLOOD_UID);
                return 77;
        }
        int n = atoi(argv[3]);
        double seconds = argc > 5 ? atof(argv[5]) : 5;
        bool prompts = !strcmp(argv[4], "prompts");
        signal(SIGPIPE, SIG_IGN);
        dh_daemon d;
        static const char config[] = "[daemon]\nthreads=1\nmax_frame_bytes=8M\nmax_connections_per_uid=64\n"
                                     "[quota]\nmax_concurrent=0\n";
        if (dh_init(&d, argv[1], argv[2], config) < 0 || dh_start(&d, NULL) < 0) {
                fprintf(stderr, "cannot start the daemon\n");
                return 1;
        }
        victim_stats calm = {0}, loud = {0};
        int r = victim(&d, seconds, &calm) < 0 ? 1 : 0;
        pid_t child = -1;
        if (r == 0 && n > 0) {
                fflush(NULL);
                child = fork();
                if (child == 0)
                        _exit(dh_drop_to(FLOOD_UID, FLOOD_UID) < 0 ? 99 : flood(&d, n, prompts));
                sleep(1); /* let the flood build up */
        }
        if (r == 0)
                r = victim(&d, seconds, &loud) < 0 ? 1 : 0;
        if (child > 0) {
                kill(child, SIGKILL);
                waitpid(child, NULL, 0);
        }
        if (r == 0) {
                printf("{\"flooders\": %d, \"flood\": \"%s\", ", n, argv[4]);
                print_stats("calm", &calm);
                printf(", ");
                print_stats("flooded", &loud);
                printf(", \"daemon_alive\": %s}\n", dh_alive(&d) ? "true" : "false");
        }
        dh_stop(&d);
        dh_cleanup(&d);
        return r;
}
