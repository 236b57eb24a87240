/* mixtrald's life as systemd sees it, on a test NOTIFY_SOCKET: READY=1,
 * WATCHDOG=1 from the loop, RELOADING=1 on SIGHUP (connections kept, a bad
 * file rejected), STOPPING=1 on SIGTERM with a drain, BUSY when the queue
 * is full, usage that survives kill -9, and streamed experts' budget
 * under memory pressure and SIGHUP.
 *
 *   test-lifecycle MIXTRALD DEMO_MODEL_DIR */
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>

#include "harness.h"
#include "test_util.h"

static const char *mixtrald, *model;

static int start(dh_daemon *d, const char *config, const char *const *env) {
        int r = dh_init(d, mixtrald, model, config);
        if (r == 0)
                r = dh_start(d, env);
        CHECK(r == 0, "the daemon did not start: %s", strerror(-r));
        return r;
}

static void rewrite(const dh_daemon *d, const char *text) {
        FILE *f = fopen(d->config, "w");
        fputs(text, f);
        fclose(f);
}

static uint32_t status_max_queue(dh_daemon *d, int fd) {
        int rc;
        CHECK(dh_send_simple(fd, 1, MIXTRALD__V1__REQUEST__KIND_STATUS) == 0, "send status");
        Mixtrald__V1__Response *r = dh_recv(fd, 10000, &rc);
        uint32_t q = r && r->status ? r->status->max_queue : UINT32_MAX;
        if (r)
                mixtrald__v1__response__free_unpacked(r, NULL);
        return q;
}

static void test_watchdog_and_reload(void) {
        dh_daemon d;
        const char *env[] = {"WATCHDOG_USEC=200000", NULL};
        if (start(&d, "[daemon]\nthreads=1\nmax_queue=10\n", env) < 0)
                return dh_cleanup(&d);
        /* Loading says how far it got and asks for more time, before READY. */
        const char *extend = strstr(d.seen, "EXTEND_TIMEOUT_USEC="), *loading = strstr(d.seen, "STATUS=Loading"),
                   *ready = strstr(d.seen, "READY=1");
        CHECK(extend && loading && ready && extend < ready && loading < ready,
              "no STATUS=Loading and EXTEND_TIMEOUT_USEC before READY=1: %s", d.seen);
        CHECK(dh_notify_wait(&d, "WATCHDOG=1", 3000), "no WATCHDOG=1 within 3 s (WATCHDOG_USEC=200 ms)");
        CHECK(dh_notify_wait(&d, "WATCHDOG=1", 3000), "WATCHDOG=1 came only once");

        int fd = dh_connect(&d);
        CHECK(status_max_queue(&d, fd) == 10, "max_queue is not 10 before the reload");
        rewrite(&d, "[daemon]\nthreads=1\nmax_queue=20\n");
        kill(d.pid, SIGHUP);
        CHECK(dh_notify_wait(&d, "RELOADING=1", 5000), "no RELOADING=1 after SIGHUP");
        CHECK(dh_notify_wait(&d, "READY=1", 5000), "no READY=1 after the reload");
        CHECK(status_max_queue(&d, fd) == 20, "the connection from before the reload does not see max_queue 20");

        rewrite(&d, "[daemon]\nmax_queue=lots\n");
        kill(d.pid, SIGHUP);
        CHECK(dh_notify_wait(&d, "READY=1", 5000), "no READY=1 after a failed reload");
        CHECK(status_max_queue(&d, fd) == 20, "a bad file replaced the running configuration");
        close(fd);

        CHECK(dh_stop(&d) == 0, "exit status after SIGTERM is not 0");
        CHECK(dh_notify_wait(&d, "STOPPING=1", 1000), "no STOPPING=1");
        dh_cleanup(&d);
}

/* With one place in the batch and two in the queue, the fourth request is
 * BUSY whatever the engine thread did meanwhile (limits count what was
 * admitted), and the three admitted are told 0, 1 and 2 requests ahead;
 * cancelling frees the places again. */
static void test_busy(void) {
        dh_daemon d;
        if (start(&d, "[daemon]\nthreads=1\nmax_batch=1\nmax_queue=2\n", NULL) < 0)
                return dh_cleanup(&d);
        int fd = dh_connect(&d), rc;
        dh_gen g = {.prompt = "go", .raw = true, .seed = 1, .ignore_eos = true};
        for (int i = 1; i <= 4; i++)
                CHECK(dh_send_generate(fd, (uint64_t)i, &g) == 0, "send %d", i);
        uint32_t position[4] = {9, 9, 9, 9};
        int busy = 0;
        for (int k = 0; k < 40 && (position[0] == 9 || position[1] == 9 || position[2] == 9 || !busy); k++) {
                Mixtrald__V1__Response *r = dh_recv(fd, 10000, &rc);
                if (!r)
                        break;
                if (r->kind_case == MIXTRALD__V1__RESPONSE__KIND_ACCEPTED && r->tag >= 1 && r->tag <= 4)
                        position[r->tag - 1] = r->accepted->queue_position;
                if (r->kind_case == MIXTRALD__V1__RESPONSE__KIND_ERROR && r->tag == 4)
                        busy = r->error->code;
                mixtrald__v1__response__free_unpacked(r, NULL);
        }
        CHECK(busy == MIXTRALD__V1__ERROR_CODE__BUSY, "the fourth request was not BUSY (%d)", busy);
        CHECK(position[0] == 0 && position[1] == 1 && position[2] == 2 && position[3] == 9,
              "queue positions %u %u %u %u, not 0 1 2 and none", position[0], position[1], position[2], position[3]);
        dh_result res = {0};
        close(fd);
        for (int t = 0; t < 100; t++) {
                Mixtrald__V1__Response *r = dh_status(&d);
                bool idle = r && r->status->running + r->status->queued == 0;
                if (r)
                        mixtrald__v1__response__free_unpacked(r, NULL);
                if (idle)
                        break;
                usleep(20000);
        }
        dh_gen small = {.prompt = "go", .raw = true, .max_tokens = 3};
        CHECK(dh_run(&d, &small, &res) == 0 && res.error == 0, "not served after the queue emptied");
        dh_result_free(&res);
        CHECK(dh_stop(&d) == 0, "exit status");
        dh_cleanup(&d);
}

/* The experts' budget in status, or 0 when not streaming; configured
 * budget in *configured. */
static uint64_t expert_budget(const dh_daemon *d, uint64_t *configured, uint64_t *misses) {
        Mixtrald__V1__Response *r = dh_status(d);
        uint64_t b = 0;
        if (r && r->status && r->status->experts) {
                b = r->status->experts->budget_bytes;
                *configured = r->status->experts->configured_bytes;
                *misses = r->status->experts->misses;
        }
        if (r)
                mixtrald__v1__response__free_unpacked(r, NULL);
        return b;
}

static void write_pressure(const char *path, double some_avg10) {
        FILE *f = fopen(path, "w");
        fprintf(f, "some avg10=%.2f avg60=0.00 avg300=0.00 total=0\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=0\n",
                some_avg10);
        fclose(f);
}

/* Streamed experts (expert_memory): the same text as with all of them
 * mapped, the budget in status, halved under memory pressure (a file like
 * /proc/pressure/memory), and set anew by SIGHUP; requests are served
 * throughout. */
static void test_expert_streaming(void) {
        dh_daemon full, d;
        dh_gen g = {.prompt = "Once upon a time", .raw = true, .ignore_eos = true, .max_tokens = 20,
                    .has_temperature = true, .temperature = 0};
        dh_result want = {0}, got = {0};
        if (start(&full, "[daemon]\nthreads=1\n", NULL) == 0)
                CHECK(dh_run(&full, &g, &want) == 0 && want.error == 0, "full: %s", want.message);
        dh_stop(&full);
        dh_cleanup(&full);
        char pressure[] = "/tmp/mx-psi-XXXXXX";
        int pfd = mkstemp(pressure);
        close(pfd);
        write_pressure(pressure, 0);
        char config[512];
        snprintf(config, sizeof(config), "[daemon]\nthreads=1\nexpert_memory=50%%\nmemory_pressure=%s\n", pressure);
        if (start(&d, config, NULL) < 0) {
                unlink(pressure);
                return dh_cleanup(&d);
        }
        CHECK(dh_run(&d, &g, &got) == 0 && got.error == 0 && got.text && want.text && !strcmp(got.text, want.text),
              "streaming at 50%%: '%s', not '%s' (%s)", got.text ? got.text : "", want.text ? want.text : "", got.message);
        dh_result_free(&got);
        uint64_t configured = 0, misses = 0, b0 = expert_budget(&d, &configured, &misses);
        CHECK(b0 > 0 && configured > 0 && misses > 0, "status: budget %llu, configured %llu, %llu misses",
              (unsigned long long)b0, (unsigned long long)configured, (unsigned long long)misses);

        write_pressure(pressure, 40);
        uint64_t b1 = b0;
        for (int t = 0; t < 60 && b1 >= b0; t++) {
                usleep(100000);
                dh_run(&d, &(dh_gen){.prompt = "go", .raw = true, .max_tokens = 1}, &got); /* a step applies it */
                dh_result_free(&got);
                b1 = expert_budget(&d, &configured, &misses);
        }
        CHECK(b1 < b0, "memory pressure did not lower the budget (%llu)", (unsigned long long)b1);
        write_pressure(pressure, 0);
        CHECK(dh_run(&d, &g, &got) == 0 && got.error == 0 && got.text && want.text && !strcmp(got.text, want.text),
              "under pressure: '%s' (%s)", got.text ? got.text : "", got.message);
        dh_result_free(&got);

        snprintf(config, sizeof(config), "[daemon]\nthreads=1\nexpert_memory=min\nmemory_pressure=off\n");
        rewrite(&d, config);
        kill(d.pid, SIGHUP);
        CHECK(dh_notify_wait(&d, "READY=1", 5000), "no READY=1 after the reload");
        uint64_t c2 = 0;
        for (int t = 0; t < 50; t++) {
                usleep(50000);
                expert_budget(&d, &c2, &misses);
                if (c2 < configured)
                        break;
        }
        CHECK(c2 < configured, "SIGHUP with expert_memory=min left the configured budget at %llu", (unsigned long long)c2);
        CHECK(dh_run(&d, &g, &got) == 0 && got.error == 0 && got.text && want.text && !strcmp(got.text, want.text),
              "after expert_memory=min: '%s' (%s)", got.text ? got.text : "", got.message);
        dh_result_free(&got);
        dh_result_free(&want);
        CHECK(dh_stop(&d) == 0, "exit status");
        dh_cleanup(&d);
        unlink(pressure);
}

/* SIGTERM: running requests finish, queued ones are told, new clients are
 * refused; past drain_seconds the rest are aborted with a message. */
static void test_drain(const char *config, bool expect_finish) {
        dh_daemon d;
        if (start(&d, config, NULL) < 0)
                return dh_cleanup(&d);
        int fd = dh_connect(&d), rc;
        dh_gen run = {.prompt = "go", .raw = true, .seed = 2, .max_tokens = expect_finish ? 300 : 0,
                      .ignore_eos = true};
        dh_gen wait = {.prompt = "wait", .raw = true, .max_tokens = 5};
        CHECK(dh_send_generate(fd, 1, &run) == 0 && dh_send_generate(fd, 2, &wait) == 0, "send");
        /* The first is running once its first chunk comes. */
        for (int i = 0; i < 10; i++) {
                Mixtrald__V1__Response *r = dh_recv(fd, 10000, &rc);
                bool chunk = r && r->kind_case == MIXTRALD__V1__RESPONSE__KIND_CHUNK;
                if (r)
                        mixtrald__v1__response__free_unpacked(r, NULL);
                if (chunk)
                        break;
        }
        kill(d.pid, SIGTERM);
        CHECK(dh_notify_wait(&d, "STOPPING=1", 5000), "no STOPPING=1");
        CHECK(strstr(d.seen, "STOPPING=1\nSTATUS=Stopping") && strstr(strstr(d.seen, "STOPPING=1"), "EXTEND_TIMEOUT_USEC="),
              "STOPPING=1 does not ask for the drain's time: %s", d.seen);
        /* A reload while stopping: systemd must hear no READY=1 after
         * STOPPING=1. */
        kill(d.pid, SIGHUP);
        /* Both ends may come in either order: collect them together. */
        dh_result both[2] = {{0}, {0}};
        int late = dh_connect(&d);
        CHECK(late < 0, "a new client could connect while draining");
        if (late >= 0)
                close(late);
        CHECK(dh_collect_many(fd, both, 2, 60000) == 0, "the requests got no end");
        dh_result running = both[0], queued = both[1];
        CHECK(queued.error == MIXTRALD__V1__ERROR_CODE__UNAVAILABLE,
              "the queued request got %d (%s), not UNAVAILABLE", queued.error, queued.message);
        if (expect_finish)
                CHECK(running.error == 0 && running.completion_tokens == 300,
                      "the running request did not finish in the drain: %d %s", running.error, running.message);
        else
                CHECK(running.error == MIXTRALD__V1__ERROR_CODE__UNAVAILABLE && strstr(running.message, "stopped"),
                      "the running request was not aborted with a message: %d %s", running.error, running.message);
        dh_result_free(&queued), dh_result_free(&running);
        close(fd);
        int st = -1;
        for (int t = 0; t < 500 && dh_alive(&d); t++)
                usleep(20000);
        dh_notify_wait(&d, "(everything)", 200); /* takes in what is left */
        const char *stopping = strstr(d.seen, "STOPPING=1");
        CHECK(stopping && !strstr(stopping, "READY=1") && !strstr(stopping, "RELOADING=1"),
              "READY=1 or RELOADING=1 after STOPPING=1: %s", stopping ? stopping : "");
        st = dh_stop(&d);
        CHECK(st == 0 || st == -1, "the daemon did not exit 0 after draining (%d)", st);
        dh_cleanup(&d);
}

static uint64_t used_hour(dh_daemon *d) {
        Mixtrald__V1__Response *r = dh_quota(d);
        uint64_t u = r ? r->quota->used_hour : UINT64_MAX;
        if (r)
                mixtrald__v1__response__free_unpacked(r, NULL);
        return u;
}

/* Usage is on disk after every request: kill -9 and a restart keep it. */
static void test_usage_survives_kill9(void) {
        dh_daemon d;
        if (start(&d, "[daemon]\nthreads=1\n", NULL) < 0)
                return dh_cleanup(&d);
        uint64_t before = used_hour(&d);
        dh_gen g = {.prompt = "count me", .raw = true, .max_tokens = 7};
        dh_result res = {0};
        CHECK(dh_run(&d, &g, &res) == 0 && res.error == 0, "request failed");
        uint64_t charged = res.prompt_tokens + res.completion_tokens;
        dh_result_free(&res);
        uint64_t after = used_hour(&d);
        CHECK(after == before + charged, "usage went from %llu to %llu for %llu tokens", (unsigned long long)before,
              (unsigned long long)after, (unsigned long long)charged);
        /* Mid-request. */
        int fd = dh_connect(&d);
        dh_gen longer = {.prompt = "go", .raw = true, .ignore_eos = true};
        dh_send_generate(fd, 1, &longer);
        usleep(100000);
        dh_kill9(&d);
        close(fd);
        CHECK(dh_start(&d, NULL) == 0, "restart after kill -9 failed");
        CHECK(used_hour(&d) == after, "usage after kill -9 and restart is %llu, expected %llu",
              (unsigned long long)used_hour(&d), (unsigned long long)after);
        CHECK(dh_stop(&d) == 0, "exit status");
        dh_cleanup(&d);
}

/* Faults under a streaming daemon, on its own copy of the model: an
 * injected read error fails that request and the next is served; a shard
 * truncated under it fails requests with a message saying so; a good copy
 * renamed over it is taken up without a restart. The daemon lives
 * throughout. */
static void test_expert_faults(void) {
        char dir[] = "/tmp/mx-faults-XXXXXX", cmd[800], shard[300], fresh[320];
        CHECK(dh_copy_model(model, dir, shard, fresh) == 0, "copy the model into %s", dir);
        dh_gen g = {.prompt = "Once upon a time", .raw = true, .ignore_eos = true, .max_tokens = 12,
                    .has_temperature = true, .temperature = 0};
        dh_result want = {0}, got = {0};
        dh_daemon d;
        const char *env[] = {"MX_IO_FAULT=eio:1:40", NULL};
        int r = dh_init(&d, mixtrald, dir, "[daemon]\nthreads=1\nexpert_memory=min\n");
        if (r == 0)
                r = dh_start(&d, env);
        CHECK(r == 0, "the daemon did not start");
        if (r == 0) {
                CHECK(dh_run(&d, &g, &got) == 0 && got.error != 0 && strstr(got.message, "Input/output error") &&
                              strstr(got.message, ".safetensors"),
                      "an injected read error: '%s'", got.message);
                dh_result_free(&got);
                /* (The window is the first 40 reads: requests fail until it passes.) */
                for (int i = 0; i < 20 && (!want.text || want.error); i++) {
                        dh_result_free(&want);
                        CHECK(dh_run(&d, &g, &want) == 0, "run");
                }
                CHECK(want.error == 0 && want.text, "after the injected errors: %s", want.message);
                struct stat st;
                /* (Past the header and layer 1's first tensors: into its experts.) */
                CHECK(stat(shard, &st) == 0 && truncate(shard, 48 * 1024) == 0, "truncate the shard");
                CHECK(dh_run(&d, &g, &got) == 0 && got.error != 0 && strstr(got.message, "truncated"),
                      "truncated: '%s'", got.message);
                dh_result_free(&got);
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

/* The socket is bound before the model loads: while it loads, status says
 * "loading" and how far, and a request waits in the queue, answered once
 * the model is ready (READY=1 only then). */
static void test_serves_while_loading(void) {
        dh_daemon d;
        const char *env[] = {"MX_TEST_LOAD_SECONDS=3", NULL};
        if (dh_init(&d, mixtrald, model, "[daemon]\nthreads=1\n") < 0 || dh_launch(&d, env) < 0)
                return dh_cleanup(&d);
        Mixtrald__V1__Response *st = NULL;
        for (int t = 0; t < 100 && !(st = dh_status(&d)); t++)
                usleep(20000);
        CHECK(st && !strcmp(st->status->state, "loading") && st->status->has_load_progress &&
                      st->status->load_progress < 1,
              "status while loading: %s %g", st ? st->status->state : "(none)", st ? st->status->load_progress : -1);
        if (st)
                mixtrald__v1__response__free_unpacked(st, NULL);
        CHECK(!strstr(d.seen, "READY=1"), "READY=1 before the model was loaded");
        dh_gen g = {.prompt = "early bird", .raw = true, .max_tokens = 4, .ignore_eos = true};
        dh_result res = {0};
        CHECK(dh_run(&d, &g, &res) == 0 && res.error == 0 && res.completion_tokens == 4,
              "a request sent while loading: %d %s", res.error, res.message);
        dh_result_free(&res);
        CHECK(dh_notify_wait(&d, "READY=1", 10000), "no READY=1 after loading");
        st = dh_status(&d);
        CHECK(st && !strcmp(st->status->state, "serving") && st->status->load_progress == 1, "status after loading");
        if (st)
                mixtrald__v1__response__free_unpacked(st, NULL);
        /* By hand, each log line has the time. */
        FILE *f = fopen(d.log, "r");
        char line[512] = "";
        CHECK(f && fgets(line, sizeof(line), f), "no log");
        int y, mo, day, h, mi, sec, ms;
        CHECK(sscanf(line, "%d-%d-%d %d:%d:%d.%d mixtrald: ", &y, &mo, &day, &h, &mi, &sec, &ms) == 7,
              "the log line has no time: %s", line);
        if (f)
                fclose(f);
        CHECK(dh_stop(&d) == 0, "exit status");
        dh_cleanup(&d);
}

/* `mixtrald --user` as a user whose home has nothing yet: the state
 * directory is made (0700, with its parents), the socket is the user's
 * alone (0600). */
static void test_user_in_fresh_home(void) {
        dh_daemon d;
        if (dh_init(&d, mixtrald, model, "") < 0)
                return dh_cleanup(&d);
        char home[280], run[280], env_home[300], env_run[300], state[320];
        snprintf(home, sizeof(home), "%s/home", d.dir);
        snprintf(run, sizeof(run), "%s/run", d.dir);
        CHECK(mkdir(home, 0700) == 0 && mkdir(run, 0700) == 0, "mkdir");
        snprintf(env_home, sizeof(env_home), "HOME=%s", home);
        snprintf(env_run, sizeof(env_run), "XDG_RUNTIME_DIR=%s", run);
        snprintf(d.socket, sizeof(d.socket), "%.250s/mixtrald.sock", run);
        static const char *const args[] = {"--user", "--bus", "none", "--threads", "1", NULL};
        d.args = args, d.own_dirs = true;
        unsetenv("XDG_STATE_HOME"), unsetenv("XDG_CONFIG_HOME");
        const char *env[] = {env_home, env_run, NULL};
        if (dh_start(&d, env) == 0) {
                struct stat st;
                snprintf(state, sizeof(state), "%s/.local/state/mixtrald", home);
                CHECK(stat(state, &st) == 0 && S_ISDIR(st.st_mode) && (st.st_mode & 0777) == 0700,
                      "%s was not made 0700", state);
                CHECK(stat(d.socket, &st) == 0 && (st.st_mode & 0777) == 0600, "the user's socket is %04o, not 0600",
                      (unsigned)(st.st_mode & 0777));
                dh_gen g = {.prompt = "hello", .raw = true, .max_tokens = 2};
                dh_result res = {0};
                CHECK(dh_run(&d, &g, &res) == 0 && res.error == 0, "not served: %s", res.message);
                dh_result_free(&res);
                CHECK(dh_stop(&d) == 0, "exit status");
        } else
                CHECK(0, "mixtrald --user did not start in a fresh home");
        dh_cleanup(&d);
}

int main(int argc, char **argv) {
        if (argc != 3) {
                fprintf(stderr, "usage: test-lifecycle MIXTRALD DEMO_MODEL_DIR\n");
                return 2;
        }
        mixtrald = argv[1], model = argv[2];
        signal(SIGPIPE, SIG_IGN);
        test_watchdog_and_reload();
        test_busy();
        test_drain("[daemon]\nthreads=1\nmax_batch=1\ndrain_seconds=30\n", true);
        test_drain("[daemon]\nthreads=1\nmax_batch=1\ndrain_seconds=0\n", false);
        test_usage_survives_kill9();
        test_expert_streaming();
        test_expert_faults();
        test_serves_while_loading();
        test_user_in_fresh_home();
        return test_result();
}
