/* The real daemon under test: started as a child in its own directory. */
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "harness.h"

double dh_now_s(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static double now_ms(void) {
        return dh_now_s() * 1e3;
}

int dh_cmp_double(const void *a, const void *b) {
        double x = *(const double *)a, y = *(const double *)b;
        return (x > y) - (x < y);
}

dh_gen dh_bench_request(int i, uint32_t tokens) {
        static const char *prompts[] = {"The history of", "Once upon a time", "In the beginning",
                                        "A recipe for", "Dear diary,", "The theorem states"};
        return (dh_gen){.prompt = prompts[i % 6], .raw = true, .has_temperature = true, .temperature = 0,
                        .seed = (uint64_t)i, .max_tokens = tokens, .ignore_eos = true};
}

int dh_init(dh_daemon *d, const char *binary, const char *model, const char *config_text) {
        *d = (dh_daemon){.notify_fd = -1, .pid = -1, .binary = binary, .model = model};
        snprintf(d->dir, sizeof(d->dir), "/tmp/mixtrald-test-XXXXXX");
        if (!mkdtemp(d->dir))
                return -errno;
        /* Children that drop to other uids must reach the socket. */
        chmod(d->dir, 0755);
        snprintf(d->socket, sizeof(d->socket), "%s/sock", d->dir);
        snprintf(d->config, sizeof(d->config), "%s/mixtrald.conf", d->dir);
        snprintf(d->state, sizeof(d->state), "%s/state", d->dir);
        snprintf(d->log, sizeof(d->log), "%s/daemon.log", d->dir);
        snprintf(d->notify_path, sizeof(d->notify_path), "%s/notify", d->dir);
        FILE *f = fopen(d->config, "w");
        if (!f)
                return -errno;
        fputs(config_text, f);
        fclose(f);
        d->notify_fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        struct sockaddr_un sa = {.sun_family = AF_UNIX};
        snprintf(sa.sun_path, sizeof(sa.sun_path), "%.100s", d->notify_path);
        if (d->notify_fd < 0 || bind(d->notify_fd, (struct sockaddr *)&sa, sizeof(sa)) < 0)
                return -errno;
        return 0;
}

int dh_launch(dh_daemon *d, const char *const *extra_env) {
        pid_t pid = fork();
        if (pid < 0)
                return -errno;
        if (pid == 0) {
                /* A test that dies takes its daemon along, and the daemon holds
                 * none of the test's output pipes open for the runner. */
                prctl(PR_SET_PDEATHSIG, SIGKILL);
                int fd = open(d->log, O_WRONLY | O_CREAT | O_APPEND, 0644);
                if (fd >= 0)
                        dup2(fd, STDERR_FILENO), dup2(fd, STDOUT_FILENO);
                setenv("NOTIFY_SOCKET", d->notify_path, 1);
                unsetenv("JOURNAL_STREAM");
                for (size_t i = 0; extra_env && extra_env[i]; i++)
                        putenv((char *)extra_env[i]);
                if (d->nofile > 0)
                        setrlimit(RLIMIT_NOFILE, &(struct rlimit){(rlim_t)d->nofile, (rlim_t)d->nofile});
                const char *argv[32] = {d->binary, "--model", d->model, "--socket", d->socket, "--config",
                                        d->config_arg ? d->config_arg : d->config, "--state-directory", d->state};
                size_t n = d->own_dirs ? 3 : 9;
                static const char *const no_bus[] = {"--bus", "none", NULL};
                for (const char *const *a = d->args ? d->args : no_bus; *a && n < 31; a++)
                        argv[n++] = *a;
                argv[n] = NULL;
                execv(d->binary, (char *const *)argv);
                _exit(127);
        }
        d->pid = pid;
        return 0;
}

int dh_start(dh_daemon *d, const char *const *extra_env) {
        int r = dh_launch(d, extra_env);
        if (r < 0)
                return r;
        if (!dh_notify_wait(d, "READY=1", 60000)) {
                fprintf(stderr, "the daemon did not become ready; its log (%s):\n", d->log);
                dh_show_log(d, 1000);
                return -ETIMEDOUT;
        }
        return 0;
}

bool dh_notify_wait(dh_daemon *d, const char *needle, int timeout_ms) {
        double end = now_ms() + timeout_ms;
        char buf[4096];
        for (;;) {
                ssize_t k = recv(d->notify_fd, buf, sizeof(buf) - 1, 0);
                if (k > 0) {
                        buf[k] = '\0';
                        int w = snprintf(d->seen + d->n_seen, sizeof(d->seen) - d->n_seen, "%s\n", buf);
                        if (w > 0 && d->n_seen + (size_t)w < sizeof(d->seen))
                                d->n_seen += (size_t)w;
                        if (strstr(buf, needle))
                                return true;
                        continue;
                }
                double left = end - now_ms();
                if (left <= 0 || (d->pid > 0 && !dh_alive(d)))
                        return false;
                struct pollfd p = {.fd = d->notify_fd, .events = POLLIN};
                poll(&p, 1, left > 100 ? 100 : (int)left + 1);
        }
}

/* Without reaping it: dh_stop still gets its exit status. */
bool dh_alive(const dh_daemon *d) {
        siginfo_t si = {0};
        return d->pid > 0 && waitid(P_PID, (id_t)d->pid, &si, WEXITED | WNOHANG | WNOWAIT) == 0 && si.si_pid == 0;
}

static int wait_status(dh_daemon *d, int timeout_ms) {
        double end = now_ms() + timeout_ms;
        int st;
        for (;;) {
                pid_t r = waitpid(d->pid, &st, WNOHANG);
                if (r == d->pid)
                        break;
                if (r < 0)
                        return -1;
                if (now_ms() > end) {
                        kill(d->pid, SIGKILL);
                        waitpid(d->pid, &st, 0);
                        d->pid = -1;
                        return -ETIMEDOUT;
                }
                usleep(10000);
        }
        d->pid = -1;
        return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

int dh_stop(dh_daemon *d) {
        if (d->pid <= 0)
                return -1;
        kill(d->pid, SIGTERM);
        return wait_status(d, 60000);
}

void dh_kill9(dh_daemon *d) {
        if (d->pid <= 0)
                return;
        kill(d->pid, SIGKILL);
        wait_status(d, 10000);
}

void dh_cleanup(dh_daemon *d) {
        if (d->pid > 0)
                dh_kill9(d);
        if (d->notify_fd >= 0)
                close(d->notify_fd);
        d->notify_fd = -1;
        if (d->dir[0] && !getenv("MIXTRALD_TEST_KEEP")) {
                char cmd[400];
                snprintf(cmd, sizeof(cmd), "rm -rf '%s'", d->dir);
                if (system(cmd) != 0)
                        fprintf(stderr, "cannot remove %s\n", d->dir);
        }
}

void dh_show_log(const dh_daemon *d, int lines) {
        char cmd[400];
        snprintf(cmd, sizeof(cmd), "tail -n %d '%s' >&2", lines, d->log);
        if (system(cmd) < 0)
                perror("system");
}

int dh_drop_to(uid_t uid, gid_t gid) {
        if (setgroups(0, NULL) < 0 || setresgid(gid, gid, gid) < 0 || setresuid(uid, uid, uid) < 0)
                return -errno;
        return 0;
}

int dh_as_user(uid_t uid, gid_t gid, int (*fn)(void *), void *arg) {
        fflush(NULL);
        pid_t pid = fork();
        if (pid < 0)
                return -errno;
        if (pid == 0)
                _exit(dh_drop_to(uid, gid) < 0 ? 99 : fn(arg));
        int st;
        waitpid(pid, &st, 0);
        return WIFEXITED(st) ? WEXITSTATUS(st) : 128;
}

long dh_rss_kib(const dh_daemon *d) {
        char path[64], line[256];
        snprintf(path, sizeof(path), "/proc/%d/status", (int)d->pid);
        FILE *f = fopen(path, "r");
        long kib = -1;
        while (f && fgets(line, sizeof(line), f))
                if (sscanf(line, "VmRSS: %ld", &kib) == 1)
                        break;
        if (f)
                fclose(f);
        return kib;
}

int dh_copy_model(const char *model, char *dir, char shard[300], char fresh[320]) {
        char cmd[800];
        if (!mkdtemp(dir))
                return -errno;
        snprintf(cmd, sizeof(cmd), "cp '%s'/* '%s'/", model, dir);
        if (system(cmd) != 0)
                return -EIO;
        snprintf(shard, 300, "%s/model-00002-of-00002.safetensors", dir);
        snprintf(fresh, 320, "%s.fresh", shard);
        snprintf(cmd, sizeof(cmd), "cp '%s' '%s'", shard, fresh);
        return system(cmd) == 0 ? 0 : -EIO;
}

int dh_connect(const dh_daemon *d) {
        int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        struct sockaddr_un sa = {.sun_family = AF_UNIX};
        snprintf(sa.sun_path, sizeof(sa.sun_path), "%.100s", d->socket);
        if (fd < 0)
                return -errno;
        if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
                int e = -errno;
                close(fd);
                return e;
        }
        return fd;
}

int dh_send_generate(int fd, uint64_t tag, const dh_gen *g) {
        Mixtrald__V1__Generate gen = MIXTRALD__V1__GENERATE__INIT;
        gen.prompt = (char *)g->prompt;
        gen.system = (char *)g->system;
        gen.has_raw = true, gen.raw = g->raw;
        gen.has_want_token_ids = true, gen.want_token_ids = g->want_ids;
        gen.has_ignore_eos = g->ignore_eos, gen.ignore_eos = g->ignore_eos;
        gen.has_temperature = g->has_temperature, gen.temperature = g->temperature;
        gen.has_seed = true, gen.seed = g->seed;
        gen.has_max_tokens = g->max_tokens != 0, gen.max_tokens = g->max_tokens;
        char *stops[1] = {(char *)g->stop};
        if (g->stop)
                gen.n_stop = 1, gen.stop = stops;
        Mixtrald__V1__Request req = MIXTRALD__V1__REQUEST__INIT;
        req.has_tag = true, req.tag = tag;
        req.kind_case = MIXTRALD__V1__REQUEST__KIND_GENERATE, req.generate = &gen;
        return mxp_send(fd, &req.base);
}

int dh_send_cancel(int fd, uint64_t tag, uint64_t request_id) {
        Mixtrald__V1__Cancel c = MIXTRALD__V1__CANCEL__INIT;
        c.has_request_id = true, c.request_id = request_id;
        Mixtrald__V1__Request req = MIXTRALD__V1__REQUEST__INIT;
        req.has_tag = true, req.tag = tag;
        req.kind_case = MIXTRALD__V1__REQUEST__KIND_CANCEL, req.cancel = &c;
        return mxp_send(fd, &req.base);
}

int dh_send_simple(int fd, uint64_t tag, int kind) {
        Mixtrald__V1__StatusQuery sq = MIXTRALD__V1__STATUS_QUERY__INIT;
        Mixtrald__V1__QuotaQuery qq = MIXTRALD__V1__QUOTA_QUERY__INIT;
        Mixtrald__V1__Request req = MIXTRALD__V1__REQUEST__INIT;
        req.has_tag = true, req.tag = tag;
        req.kind_case = kind;
        if (kind == MIXTRALD__V1__REQUEST__KIND_STATUS)
                req.status = &sq;
        else
                req.quota = &qq;
        return mxp_send(fd, &req.base);
}

Mixtrald__V1__Response *dh_recv(int fd, int timeout_ms, int *rc) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        int k = poll(&p, 1, timeout_ms);
        if (k <= 0) {
                *rc = k == 0 ? -ETIMEDOUT : -errno;
                return NULL;
        }
        uint8_t *body;
        size_t len;
        *rc = mxp_read_frame(fd, 64u << 20, &body, &len);
        if (*rc < 0)
                return NULL;
        Mixtrald__V1__Response *r = mixtrald__v1__response__unpack(NULL, len, body);
        free(body);
        if (!r)
                *rc = -EBADMSG;
        return r;
}

void dh_result_free(dh_result *r) {
        free(r->text);
        free(r->ids);
        *r = (dh_result){0};
}

/* Folds one response into its result; true when the request has ended. */
static bool fold(dh_result *res, const Mixtrald__V1__Response *r) {
        if (r->has_request_id)
                res->request_id = r->request_id;
        switch (r->kind_case) {
        case MIXTRALD__V1__RESPONSE__KIND_ACCEPTED:
                res->accepted = true;
                return false;
        case MIXTRALD__V1__RESPONSE__KIND_CHUNK: {
                size_t n = strlen(r->chunk->text);
                res->text = realloc(res->text, res->text_len + n + 1);
                memcpy(res->text + res->text_len, r->chunk->text, n + 1);
                res->text_len += n;
                res->ids = realloc(res->ids, (res->n_ids + r->chunk->n_token_ids + 1) * sizeof(int32_t));
                if (r->chunk->n_token_ids)
                        memcpy(res->ids + res->n_ids, r->chunk->token_ids, r->chunk->n_token_ids * sizeof(int32_t));
                res->n_ids += r->chunk->n_token_ids;
                return false;
        }
        case MIXTRALD__V1__RESPONSE__KIND_FINISHED:
                snprintf(res->reason, sizeof(res->reason), "%s", r->finished->reason);
                if (r->finished->usage) {
                        res->prompt_tokens = r->finished->usage->prompt_tokens;
                        res->completion_tokens = r->finished->usage->completion_tokens;
                        res->cached_prompt_tokens = r->finished->usage->cached_prompt_tokens;
                        res->ttft_s = r->finished->usage->time_to_first_token_s;
                }
                return true;
        case MIXTRALD__V1__RESPONSE__KIND_ERROR:
                res->error = r->error->code;
                res->retry_at = r->error->retry_at_unix;
                snprintf(res->message, sizeof(res->message), "%s", r->error->message ? r->error->message : "");
                return true;
        default:
                return false;
        }
}

int dh_collect_many(int fd, dh_result *out, size_t n, int timeout_ms) {
        size_t done = 0;
        double end = now_ms() + timeout_ms;
        bool *ended = calloc(n + 1, sizeof(bool));
        int rc = 0;
        while (done < n) {
                int left = (int)(end - now_ms());
                Mixtrald__V1__Response *r = left > 0 ? dh_recv(fd, left, &rc) : NULL;
                if (!r) {
                        rc = rc ? rc : -ETIMEDOUT;
                        break;
                }
                uint64_t tag = r->tag;
                if (tag >= 1 && tag <= n && !ended[tag] && fold(&out[tag - 1], r))
                        ended[tag] = true, done++;
                else if (tag == 0 && r->kind_case == MIXTRALD__V1__RESPONSE__KIND_ERROR) {
                        rc = -EPROTO; /* a connection-level error */
                        mixtrald__v1__response__free_unpacked(r, NULL);
                        break;
                }
                mixtrald__v1__response__free_unpacked(r, NULL);
        }
        free(ended);
        return done == n ? 0 : rc;
}

int dh_collect(int fd, uint64_t tag, dh_result *out, int timeout_ms) {
        double end = now_ms() + timeout_ms;
        for (;;) {
                int rc, left = (int)(end - now_ms());
                Mixtrald__V1__Response *r = left > 0 ? dh_recv(fd, left, &rc) : NULL;
                if (!r)
                        return left > 0 ? rc : -ETIMEDOUT;
                bool ended = r->tag == tag && fold(out, r);
                if (r->tag == 0 && r->kind_case == MIXTRALD__V1__RESPONSE__KIND_ERROR && tag != 0) {
                        fold(out, r);
                        ended = true;
                }
                mixtrald__v1__response__free_unpacked(r, NULL);
                if (ended)
                        return 0;
        }
}

int dh_run(const dh_daemon *d, const dh_gen *g, dh_result *out) {
        int fd = dh_connect(d);
        if (fd < 0)
                return fd;
        int rc = dh_send_generate(fd, 1, g);
        if (rc == 0)
                rc = dh_collect(fd, 1, out, 120000);
        close(fd);
        return rc;
}

static Mixtrald__V1__Response *simple(const dh_daemon *d, int kind) {
        int fd = dh_connect(d), rc;
        if (fd < 0)
                return NULL;
        Mixtrald__V1__Response *r = NULL;
        if (dh_send_simple(fd, 7, kind) == 0)
                r = dh_recv(fd, 10000, &rc);
        close(fd);
        return r;
}

Mixtrald__V1__Response *dh_status(const dh_daemon *d) {
        Mixtrald__V1__Response *r = simple(d, MIXTRALD__V1__REQUEST__KIND_STATUS);
        if (r && r->kind_case != MIXTRALD__V1__RESPONSE__KIND_STATUS) {
                mixtrald__v1__response__free_unpacked(r, NULL);
                return NULL;
        }
        return r;
}

Mixtrald__V1__Response *dh_quota(const dh_daemon *d) {
        Mixtrald__V1__Response *r = simple(d, MIXTRALD__V1__REQUEST__KIND_QUOTA);
        if (r && r->kind_case != MIXTRALD__V1__RESPONSE__KIND_QUOTA) {
                mixtrald__v1__response__free_unpacked(r, NULL);
                return NULL;
        }
        return r;
}

bool dh_file_has(const char *path, const char *needle) {
        char cmd[600];
        snprintf(cmd, sizeof(cmd), "grep -qF -- '%s' '%s'", needle, path);
        return system(cmd) == 0;
}
