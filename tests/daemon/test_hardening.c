/* What an ordinary local user (or a bad file) must not be able to do to
 * the daemon, each tried against the real mixtrald:
 *   - a mapped model file truncated under it: requests fail naming the
 *     file, the daemon lives, and serves again once the file is back;
 *   - running it out of file descriptors: no spinning, a polite BUSY for
 *     whoever comes at the limit, and served again when they close;
 *     root has a connection limit too;
 *   - flooding it with pipelined status queries from many connections:
 *     another client is still answered promptly; a prompt far too long
 *     for the context is refused before it is tokenized;
 *   - text with a NUL byte inside: refused, never cut short;
 *   - a second daemon on the same state directory or socket, a state
 *     directory others may write, FIFOs where files should be: refused at
 *     once, and a FIFO met at SIGHUP only fails the reload.
 *
 *   test-hardening MIXTRALD DEMO_MODEL_DIR */
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>

#include "harness.h"
#include "test_util.h"

static const char *mixtrald, *model;

static double now_s(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int start(dh_daemon *d, const char *config) {
        int r = dh_init(d, mixtrald, model, config);
        if (r == 0)
                r = dh_start(d, NULL);
        CHECK(r == 0, "the daemon did not start: %s", strerror(-r));
        return r;
}

static int count_lines(const char *path, const char *needle) {
        char cmd[600];
        snprintf(cmd, sizeof(cmd), "grep -cF -- '%s' '%s'", needle, path);
        FILE *p = popen(cmd, "r");
        int n = -1;
        if (p && fscanf(p, "%d", &n) != 1)
                n = -1;
        if (p)
                pclose(p);
        return n;
}

/* ---- a model file truncated under a daemon that maps it ---------------------- */

static void test_mapped_file_truncated(void) {
        char dir[] = "/tmp/mx-sigbus-XXXXXX", cmd[800], shard[300], fresh[320];
        CHECK(dh_copy_model(model, dir, shard, fresh) == 0, "copy the model into %s", dir);
        dh_gen g = {.prompt = "Once upon a time", .raw = true, .ignore_eos = true, .max_tokens = 12,
                    .has_temperature = true, .temperature = 0};
        dh_result want = {0}, got = {0};
        dh_daemon d;
        if (dh_init(&d, mixtrald, dir, "[daemon]\nthreads=1\n") == 0 && dh_start(&d, NULL) == 0) {
                CHECK(dh_run(&d, &g, &want) == 0 && want.error == 0, "before: %s", want.message);
                CHECK(truncate(shard, 4096) == 0, "truncate the shard");
                /* The kernel drops the truncated pages from every mapping. */
                CHECK(dh_run(&d, &g, &got) == 0 && got.error == MIXTRALD__V1__ERROR_CODE__INTERNAL &&
                              strstr(got.message, shard) && strstr(got.message, "shrank"),
                      "truncated: %d '%s'", got.error, got.message);
                dh_result_free(&got);
                CHECK(dh_alive(&d), "the daemon died of the truncated file");
                Mixtrald__V1__Response *st = dh_status(&d);
                CHECK(st != NULL, "no status after the fault");
                if (st)
                        mixtrald__v1__response__free_unpacked(st, NULL);
                CHECK(rename(fresh, shard) == 0, "rename the copy over it");
                CHECK(dh_run(&d, &g, &got) == 0 && got.error == 0 && got.text && want.text &&
                              !strcmp(got.text, want.text),
                      "after the copy was renamed over it: '%s' (%s)", got.text ? got.text : "", got.message);
                dh_result_free(&got);
                CHECK(dh_stop(&d) == 0, "exit status");
        }
        dh_result_free(&want);
        dh_cleanup(&d);
        snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
        CHECK(system(cmd) == 0, "clean up");
}

/* ---- file descriptors ------------------------------------------------------------ */

/* The daemon's CPU time in seconds (user + system). */
static double cpu_seconds(pid_t pid) {
        char path[64];
        snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
        FILE *f = fopen(path, "re");
        unsigned long ut = 0, st = 0;
        if (f && fscanf(f, "%*d %*s %*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &ut, &st) != 2)
                ut = st = 0;
        if (f)
                fclose(f);
        return (double)(ut + st) / (double)sysconf(_SC_CLK_TCK);
}

static bool status_ok(int fd) {
        int rc;
        if (dh_send_simple(fd, 3, MIXTRALD__V1__REQUEST__KIND_STATUS) < 0)
                return false;
        Mixtrald__V1__Response *r = dh_recv(fd, 10000, &rc);
        bool ok = r && r->kind_case == MIXTRALD__V1__RESPONSE__KIND_STATUS;
        if (r)
                mixtrald__v1__response__free_unpacked(r, NULL);
        return ok;
}

static void test_out_of_fds(void) {
        dh_daemon d;
        enum { N = 80 };
        if (dh_init(&d, mixtrald, model, "[daemon]\nthreads=1\nmax_connections_per_uid=1000\n") < 0)
                return;
        d.nofile = 48;
        if (dh_start(&d, NULL) < 0)
                return dh_cleanup(&d);
        int fds[N], served = 0, refused = 0;
        for (int i = 0; i < N; i++) {
                fds[i] = dh_connect(&d);
                if (fds[i] < 0)
                        continue;
                struct pollfd p = {.fd = fds[i], .events = POLLIN};
                int rc;
                /* At the limit the daemon answers BUSY and closes; below it,
                 * a connection stays quiet until asked. */
                if (poll(&p, 1, 300) == 1) {
                        Mixtrald__V1__Response *r = dh_recv(fds[i], 1000, &rc);
                        refused += r && r->kind_case == MIXTRALD__V1__RESPONSE__KIND_ERROR &&
                                   r->error->code == MIXTRALD__V1__ERROR_CODE__BUSY &&
                                   strstr(r->error->message, "file descriptors");
                        if (r)
                                mixtrald__v1__response__free_unpacked(r, NULL);
                        close(fds[i]);
                        fds[i] = -1;
                } else
                        served++;
        }
        CHECK(refused > 0 && served > 0, "of %d connections %d were kept and %d refused at the fd limit", N, served,
              refused);
        /* At the limit, with clients waiting: no spinning. */
        int waiting[8];
        for (int i = 0; i < 8; i++)
                waiting[i] = dh_connect(&d);
        double c0 = cpu_seconds(d.pid), t0 = now_s();
        usleep(1000000);
        double busy = (cpu_seconds(d.pid) - c0) / (now_s() - t0);
        CHECK(busy < 0.5, "the daemon used %.0f%% of a CPU while at the fd limit", busy * 100);
        CHECK(count_lines(d.log, "out of file descriptors") <= 2, "%d log lines about the fd limit",
              count_lines(d.log, "out of file descriptors"));
        for (int i = 0; i < 8; i++)
                if (waiting[i] >= 0)
                        close(waiting[i]);
        for (int i = 0; i < N; i++)
                if (fds[i] >= 0)
                        close(fds[i]);
        /* Deaf no more once they are gone. */
        bool ok = false;
        for (int t = 0; t < 50 && !ok; t++) {
                int fd = dh_connect(&d);
                ok = fd >= 0 && status_ok(fd);
                if (fd >= 0)
                        close(fd);
                if (!ok)
                        usleep(100000);
        }
        CHECK(ok, "no client was served after the others closed");
        CHECK(dh_stop(&d) == 0, "exit status");
        dh_cleanup(&d);
}

/* Root's connections count against max_connections_per_uid like anyone's. */
static void test_root_connection_cap(void) {
        dh_daemon d;
        if (start(&d, "[daemon]\nthreads=1\nmax_connections_per_uid=3\n") < 0)
                return dh_cleanup(&d);
        int fds[4], rc;
        for (int i = 0; i < 4; i++)
                fds[i] = dh_connect(&d);
        for (int i = 0; i < 3; i++)
                CHECK(fds[i] >= 0 && status_ok(fds[i]), "connection %d was not served", i);
        Mixtrald__V1__Response *r = fds[3] >= 0 ? dh_recv(fds[3], 10000, &rc) : NULL;
        CHECK(r && r->kind_case == MIXTRALD__V1__RESPONSE__KIND_ERROR && r->error->code == MIXTRALD__V1__ERROR_CODE__BUSY,
              "the fourth connection of uid %u was not BUSY", getuid());
        if (r)
                mixtrald__v1__response__free_unpacked(r, NULL);
        for (int i = 0; i < 4; i++)
                if (fds[i] >= 0)
                        close(fds[i]);
        CHECK(dh_stop(&d) == 0, "exit status");
        dh_cleanup(&d);
}

/* ---- floods -------------------------------------------------------------------- */

/* A child writing status queries on n connections as fast as they take
 * them, reading and dropping the answers. */
static pid_t flood(dh_daemon *d, int n) {
        fflush(NULL);
        pid_t pid = fork();
        if (pid != 0)
                return pid;
        uint8_t frame[64];
        Mixtrald__V1__StatusQuery sq = MIXTRALD__V1__STATUS_QUERY__INIT;
        Mixtrald__V1__Request req = MIXTRALD__V1__REQUEST__INIT;
        req.kind_case = MIXTRALD__V1__REQUEST__KIND_STATUS, req.status = &sq;
        uint8_t *one;
        size_t len;
        if (mxp_frame_pack(&req.base, &one, &len) < 0)
                _exit(1);
        memcpy(frame, one, len);
        static uint8_t burst[1 << 16], sink[1 << 16];
        for (size_t i = 0; i + len <= sizeof(burst); i += len)
                memcpy(burst + i, frame, len);
        struct pollfd p[64];
        for (int i = 0; i < n; i++) {
                p[i] = (struct pollfd){.fd = dh_connect(d), .events = POLLIN | POLLOUT};
                fcntl(p[i].fd, F_SETFL, O_NONBLOCK);
        }
        for (;;) {
                poll(p, (nfds_t)n, 1000);
                for (int i = 0; i < n; i++) {
                        if (p[i].revents & POLLIN)
                                (void)!read(p[i].fd, sink, sizeof(sink));
                        if (p[i].revents & POLLOUT)
                                (void)!write(p[i].fd, burst, sizeof(burst) / len * len);
                }
        }
}

static void test_status_flood(void) {
        dh_daemon d;
        if (start(&d, "[daemon]\nthreads=1\nmax_connections_per_uid=64\n") < 0)
                return dh_cleanup(&d);
        pid_t child = flood(&d, 32);
        usleep(500000);
        double worst = 0;
        for (int i = 0; i < 10; i++) {
                int fd = dh_connect(&d);
                double t0 = now_s();
                bool ok = fd >= 0 && status_ok(fd);
                double t = now_s() - t0;
                worst = t > worst ? t : worst;
                CHECK(ok, "no status during the flood");
                if (fd >= 0)
                        close(fd);
        }
        /* Before frames were handled one per turn, each of the 32
         * connections' 64 KiB of queries was answered in one go. */
        CHECK(worst < 3.0, "status took up to %.2f s during a flood from 32 connections", worst);
        dh_gen g = {.prompt = "still here", .raw = true, .max_tokens = 4};
        dh_result res = {0};
        CHECK(dh_run(&d, &g, &res) == 0 && res.error == 0, "no answer during the flood: %s", res.message);
        dh_result_free(&res);
        kill(child, SIGKILL);
        waitpid(child, NULL, 0);
        CHECK(dh_stop(&d) == 0, "exit status");
        dh_cleanup(&d);
}

/* A prompt that cannot fit is refused on its size, before tokenizing. */
static void test_hopeless_prompt(void) {
        dh_daemon d;
        if (start(&d, "[daemon]\nthreads=1\nmax_frame_bytes=16M\n") < 0)
                return dh_cleanup(&d);
        size_t n = 8u << 20;
        char *prompt = malloc(n + 1);
        for (size_t i = 0; i < n; i++)
                prompt[i] = "words "[i % 6];
        prompt[n] = '\0';
        dh_gen g = {.prompt = prompt, .raw = true};
        dh_result res = {0};
        CHECK(dh_run(&d, &g, &res) == 0 && res.error == MIXTRALD__V1__ERROR_CODE__TOO_LONG &&
                      strstr(res.message, "at least"),
              "an 8 MB prompt: %d '%s'", res.error, res.message);
        dh_result_free(&res);
        CHECK(dh_file_has(d.log, "refused: TOO_LONG"), "the refusal was not logged");
        free(prompt);
        CHECK(dh_stop(&d) == 0, "exit status");
        dh_cleanup(&d);
}

/* ---- NUL bytes in text ------------------------------------------------------------ */

static void test_nul_in_text(void) {
        dh_daemon d;
        if (start(&d, "[daemon]\nthreads=1\n") < 0)
                return dh_cleanup(&d);
        /* Request{tag 1, generate{prompt "hi\0 SECRET", raw}}, by hand:
         * protobuf-c would keep only "hi". */
        static const uint8_t body[] = {0x08, 0x01, 0x12, 0x0e, 0x0a, 0x0a, 'h', 'i', 0, ' ', 'S', 'E',
                                       'C',  'R',  'E',  'T',  0x20, 0x01};
        uint8_t frame[1 + sizeof(body)] = {sizeof(body)};
        memcpy(frame + 1, body, sizeof(body));
        int fd = dh_connect(&d), rc;
        CHECK(fd >= 0 && mxp_write_all(fd, frame, sizeof(frame)) == 0, "send");
        Mixtrald__V1__Response *r = dh_recv(fd, 10000, &rc);
        CHECK(r && r->kind_case == MIXTRALD__V1__RESPONSE__KIND_ERROR &&
                      r->error->code == MIXTRALD__V1__ERROR_CODE__INVALID_ARGUMENT && strstr(r->error->message, "prompt") &&
                      strstr(r->error->message, "NUL"),
              "a prompt with a NUL byte was not refused naming it");
        if (r)
                mixtrald__v1__response__free_unpacked(r, NULL);
        CHECK(status_ok(fd), "the connection did not go on after the refusal");
        close(fd);
        CHECK(dh_stop(&d) == 0, "exit status");
        dh_cleanup(&d);
}

/* ---- state and files ---------------------------------------------------------------- */

/* A daemon that must not start: exit status 1 soon, and its log says why. */
static void refused_start(dh_daemon *d, const char *why, const char *needle) {
        double t0 = now_s();
        CHECK(dh_start(d, NULL) < 0, "%s: the daemon started", why);
        int st = dh_stop(d);
        CHECK(st == 1, "%s: exit status %d, not 1", why, st);
        CHECK(now_s() - t0 < 30, "%s: took %.1f s", why, now_s() - t0);
        CHECK(dh_file_has(d->log, needle), "%s: the log does not say '%s'", why, needle);
}

static void test_state_and_files(void) {
        dh_daemon a, b;
        if (start(&a, "[daemon]\nthreads=1\n") < 0)
                return dh_cleanup(&a);
        /* Another daemon on the same state directory, its own socket. */
        CHECK(dh_init(&b, mixtrald, model, "[daemon]\nthreads=1\n") == 0, "init");
        snprintf(b.state, sizeof(b.state), "%s", a.state);
        refused_start(&b, "a shared state directory", "another mixtrald (pid");
        dh_cleanup(&b);
        /* And on the same socket: refused before loading anything. */
        CHECK(dh_init(&b, mixtrald, model, "[daemon]\nthreads=1\n") == 0, "init");
        snprintf(b.socket, sizeof(b.socket), "%s", a.socket);
        refused_start(&b, "a served socket", "another mixtrald serves");
        CHECK(!dh_file_has(b.log, "weights"), "the second daemon opened the model before finding the socket taken");
        dh_cleanup(&b);

        /* A config file that is a FIFO, met at SIGHUP: the reload fails, the
         * daemon goes on. */
        CHECK(unlink(a.config) == 0 && mkfifo(a.config, 0600) == 0, "mkfifo");
        kill(a.pid, SIGHUP);
        CHECK(dh_notify_wait(&a, "READY=1", 5000), "no READY=1 after a reload from a FIFO");
        int fd = dh_connect(&a);
        CHECK(fd >= 0 && status_ok(fd), "not served after a reload from a FIFO");
        if (fd >= 0)
                close(fd);
        CHECK(dh_file_has(a.log, "reload failed") && dh_file_has(a.log, "a FIFO"), "the failed reload was not logged");
        CHECK(dh_stop(&a) == 0, "exit status");

        /* ... and at start. */
        refused_start(&a, "a FIFO as the config file", "a FIFO");
        dh_cleanup(&a);

        /* A usage file that is a FIFO. */
        CHECK(dh_init(&b, mixtrald, model, "[daemon]\nthreads=1\n") == 0, "init");
        char usage[400];
        snprintf(usage, sizeof(usage), "%s/usage", b.state);
        CHECK(mkdir(b.state, 0700) == 0 && mkfifo(usage, 0600) == 0, "mkfifo usage");
        refused_start(&b, "a FIFO as the usage file", "a FIFO");
        dh_cleanup(&b);

        /* A state directory anyone may write. */
        CHECK(dh_init(&b, mixtrald, model, "[daemon]\nthreads=1\n") == 0, "init");
        CHECK(mkdir(b.state, 0777) == 0 && chmod(b.state, 0777) == 0, "mkdir 0777");
        refused_start(&b, "a state directory writable by all", "writable by everyone");
        dh_cleanup(&b);
}

int main(int argc, char **argv) {
        if (argc != 3) {
                fprintf(stderr, "usage: test-hardening MIXTRALD DEMO_MODEL_DIR\n");
                return 2;
        }
        mixtrald = argv[1], model = argv[2];
        signal(SIGPIPE, SIG_IGN);
        struct {
                const char *name;
                void (*fn)(void);
        } tests[] = {
                {"mapped file truncated", test_mapped_file_truncated},
                {"out of file descriptors", test_out_of_fds},
                {"root's connection limit", test_root_connection_cap},
                {"status flood", test_status_flood},
                {"hopeless prompt", test_hopeless_prompt},
                {"NUL in text", test_nul_in_text},
                {"state and files", test_state_and_files},
        };
        for (size_t i = 0; i < sizeof(tests) / sizeof(tests[0]); i++) {
                int before = test_failures;
                const char *only = getenv("TEST_ONLY");
                if (only && !strstr(tests[i].name, only))
                        continue;
                tests[i].fn();
                printf("%s: %s\n", tests[i].name, test_failures == before ? "ok" : "FAILED");
                fflush(stdout);
        }
        return test_result();
}
