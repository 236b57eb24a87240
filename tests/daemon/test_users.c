/* Several users of one daemon: each child drops to its own uid before it
 * connects, so the daemon knows it by SO_PEERCRED alone. Quotas are per
 * uid (and per [user:]/[group:] section, by the groups of the user's
 * passwd entry whatever group its process runs as), survive a restart,
 * change on SIGHUP; nobody sees or cancels another user's requests, or
 * reuses another's cached prompt prefix unless the admin allows it. Needs
 * root: the test users live in a private mount namespace's /etc/passwd and
 * /etc/group, which the daemon it starts sees too.
 *
 *   test-users MIXTRALD DEMO_MODEL_DIR */
#include <sched.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <signal.h>
#include <sys/wait.h>
#include <time.h>

#include "harness.h"
#include "test_util.h"

enum { ALICE = 60001, BOB = 60002, CAROL = 60003, DAVE = 60004, NOBODY = 65534, NOGROUP = 65534,
       LIMITED = 60010, OTHER = 60011 };

static const char *mixtrald, *model;
static dh_daemon d;

static const char config[] =
        "[daemon]\n"
        "threads = 1\n"
        "admin_group = mxadmin\n"
        "max_connections_per_uid = 5\n"
        "[quota]\n"
        "tokens_per_hour = 200\n"
        "max_concurrent = 1\n"
        "max_queued = 1\n"
        "max_tokens = 40\n"
        "[user:nobody]\n"
        "tokens_per_hour = 0\n"
        "max_tokens = 0\n"
        "[group:mxlimited]\n"
        "tokens_per_hour = 30\n";

/* Child bodies return 0 for "as expected"; they report why not on stderr. */
static int fail(const char *fmt, ...) {
        va_list ap;
        va_start(ap, fmt);
        fprintf(stderr, "[uid %u] ", getuid());
        vfprintf(stderr, fmt, ap);
        fputc('\n', stderr);
        va_end(ap);
        return 1;
}

/* Spends the hourly budget: every request is admitted until one is
 * refused with the next hour as its retry time; the total stays in it. */
static const dh_gen spend = {.prompt = "spend some tokens", .raw = true, .max_tokens = 40, .seed = 1};

static int exhaust(void *arg) {
        dh_gen g = spend;
        int i;
        for (i = 0; i < 50; i++) {
                dh_result res = {0};
                if (dh_run(&d, &g, &res) < 0)
                        return fail("request %d got no answer", i);
                int err = res.error;
                uint64_t retry = res.retry_at;
                dh_result_free(&res);
                if (err == 0)
                        continue;
                if (err != MIXTRALD__V1__ERROR_CODE__QUOTA_EXCEEDED)
                        return fail("request %d: error %d, expected QUOTA_EXCEEDED", i, err);
                uint64_t now = (uint64_t)time(NULL);
                if (retry != now - now % 3600 + 3600 && retry != now + 1)
                        return fail("retry_at %llu is not the next hour", (unsigned long long)retry);
                break;
        }
        if (i == 50 || i < 2)
                return fail("the budget of 200 tokens allowed %d requests", i);
        Mixtrald__V1__Response *q = dh_quota(&d);
        if (!q || q->quota->used_hour > 200 || q->quota->limits->tokens_per_hour != 200 || q->quota->exempt)
                return fail("quota after exhausting: used %llu", q ? (unsigned long long)q->quota->used_hour : 0);
        mixtrald__v1__response__free_unpacked(q, NULL);
        return 0;
}

/* 0 when g's answer is the error want (0: an answer). */
static int expect(dh_gen g, int want) {
        dh_result res = {0};
        int rc = dh_run(&d, &g, &res);
        int err = res.error;
        dh_result_free(&res);
        return rc == 0 && err == want ? 0 : fail("request: rc %d error %d, expected %d", rc, err, want);
}

static int one_request(void *arg) {
        return expect((dh_gen){.prompt = "hello", .raw = true, .max_tokens = 5}, 0);
}

/* The request exhaust ended on is refused again: what is left of the
 * budget does not depend on how many tokens the answers happened to take. */
static int still_exhausted(void *arg) {
        return expect(spend, MIXTRALD__V1__ERROR_CODE__QUOTA_EXCEEDED);
}

static int unlimited(void *arg) {
        /* nobody's section lifts the hourly budget: far past 200 tokens. */
        for (int i = 0; i < 8; i++)
                if (one_request(NULL))
                        return 1;
        dh_gen g = {.prompt = "x", .raw = true, .max_tokens = 40};
        for (int i = 0; i < 6; i++) {
                dh_result res = {0};
                if (dh_run(&d, &g, &res) < 0 || res.error)
                        return fail("request %d refused: %s", i, res.message);
                dh_result_free(&res);
        }
        return 0;
}

/* Five connections are fine; the sixth is told BUSY and closed. */
static int too_many_connections(void *arg) {
        int fds[6], rc;
        for (int i = 0; i < 5; i++) {
                fds[i] = dh_connect(&d);
                if (fds[i] < 0 || dh_send_simple(fds[i], 1, MIXTRALD__V1__REQUEST__KIND_QUOTA) < 0)
                        return fail("connection %d failed", i);
                Mixtrald__V1__Response *r = dh_recv(fds[i], 10000, &rc);
                bool ok = r && r->kind_case == MIXTRALD__V1__RESPONSE__KIND_QUOTA;
                if (r)
                        mixtrald__v1__response__free_unpacked(r, NULL);
                if (!ok)
                        return fail("connection %d was not served", i);
        }
        fds[5] = dh_connect(&d);
        Mixtrald__V1__Response *r = fds[5] >= 0 ? dh_recv(fds[5], 10000, &rc) : NULL;
        bool busy = r && r->kind_case == MIXTRALD__V1__RESPONSE__KIND_ERROR &&
                    r->error->code == MIXTRALD__V1__ERROR_CODE__BUSY;
        if (r)
                mixtrald__v1__response__free_unpacked(r, NULL);
        if (!busy)
                return fail("the sixth connection was not BUSY");
        r = dh_recv(fds[5], 10000, &rc);
        if (r || rc != -ECONNRESET)
                return fail("the sixth connection stayed open");
        for (int i = 0; i < 6; i++)
                close(fds[i]);
        return 0;
}

/* Dave's passwd group is mxlimited; he runs as his other group (as `sg
 * mxother` would): mxlimited's limit holds all the same. */
static int group_by_passwd(void *arg) {
        if (getegid() != OTHER)
                return fail("running as gid %u, not %u", getegid(), OTHER);
        Mixtrald__V1__Response *q = dh_quota(&d);
        uint64_t limit = q ? q->quota->limits->tokens_per_hour : 0;
        if (q)
                mixtrald__v1__response__free_unpacked(q, NULL);
        return limit == 30 ? 0 : fail("tokens_per_hour %llu, not mxlimited's 30", (unsigned long long)limit);
}

static int exempt_admin(void *arg) {
        Mixtrald__V1__Response *q = dh_quota(&d);
        bool ok = q && q->quota->exempt;
        if (q)
                mixtrald__v1__response__free_unpacked(q, NULL);
        return ok ? 0 : fail("a member of admin_group is not exempt");
}

/* nobody ("Bob" here): one running, one queued, the third refused; Alice cannot see or
 * cancel them, Bob can. */

static int bob_fills_his_slots(void *arg) {
        int *pipe_w = arg;
        int fd = dh_connect(&d), rc;
        dh_gen slow = {.prompt = "long", .raw = true, .seed = 9, .ignore_eos = true};
        /* To the end of the context: nobody's section allows it. */
        for (int i = 1; i <= 3; i++)
                dh_send_generate(fd, (uint64_t)i, &slow);
        int accepted = 0;
        dh_result third = {0};
        uint64_t ids[2] = {0};
        for (int k = 0; k < 100 && (accepted < 2 || !third.error); k++) {
                Mixtrald__V1__Response *r = dh_recv(fd, 10000, &rc);
                if (!r)
                        return fail("no answer");
                if (r->kind_case == MIXTRALD__V1__RESPONSE__KIND_ACCEPTED && r->tag <= 2)
                        ids[accepted++] = r->request_id;
                if (r->tag == 3 && r->kind_case == MIXTRALD__V1__RESPONSE__KIND_ERROR)
                        third.error = r->error->code;
                mixtrald__v1__response__free_unpacked(r, NULL);
        }
        if (third.error != MIXTRALD__V1__ERROR_CODE__QUOTA_EXCEEDED)
                return fail("the third request got %d, not QUOTA_EXCEEDED", third.error);
        if (write(pipe_w[1], ids, sizeof(ids)) != sizeof(ids))
                return fail("pipe");
        /* Wait for the parent's go, then cancel the second ourselves. */
        char go;
        if (read(pipe_w[2], &go, 1) != 1)
                return fail("pipe");
        dh_send_cancel(fd, 50, ids[1]);
        bool cancelled = false;
        for (int k = 0; k < 200 && !cancelled; k++) {
                Mixtrald__V1__Response *r = dh_recv(fd, 10000, &rc);
                if (!r)
                        break;
                cancelled = r->kind_case == MIXTRALD__V1__RESPONSE__KIND_CANCELLED;
                mixtrald__v1__response__free_unpacked(r, NULL);
        }
        close(fd);
        return cancelled ? 0 : fail("Bob could not cancel his own request");
}

static int alice_snoops(void *arg) {
        uint64_t *ids = arg;
        Mixtrald__V1__Response *s = dh_status(&d);
        if (!s)
                return fail("no status");
        size_t n = s->status->n_requests;
        uint32_t running = s->status->running + s->status->queued;
        mixtrald__v1__response__free_unpacked(s, NULL);
        if (n != 0)
                return fail("Alice sees %zu requests that are not hers", n);
        if (running < 1)
                return fail("the aggregate counts show no request");
        int fd = dh_connect(&d), rc;
        dh_send_cancel(fd, 1, ids[0]);
        Mixtrald__V1__Response *r = dh_recv(fd, 10000, &rc);
        bool not_found = r && r->kind_case == MIXTRALD__V1__RESPONSE__KIND_ERROR &&
                         r->error->code == MIXTRALD__V1__ERROR_CODE__NOT_FOUND;
        if (r)
                mixtrald__v1__response__free_unpacked(r, NULL);
        close(fd);
        return not_found ? 0 : fail("Alice's cancel of Bob's request was not NOT_FOUND");
}

static void test_privacy(void) {
        int p[2], go[2];
        CHECK(pipe(p) == 0 && pipe(go) == 0, "pipe");
        int fds[3] = {p[0], p[1], go[0]};
        fflush(NULL);
        pid_t bob = fork();
        if (bob == 0) {
                if (dh_drop_to(NOBODY, NOGROUP) < 0)
                        _exit(99);
                _exit(bob_fills_his_slots(fds) ? 1 : 0);
        }
        uint64_t ids[2] = {0};
        CHECK(read(p[0], ids, sizeof(ids)) == sizeof(ids), "Bob did not report his requests");
        CHECK(dh_as_user(ALICE, ALICE, alice_snoops, ids) == 0, "Alice saw or cancelled Bob's requests");
        /* Root sees everyone's. */
        Mixtrald__V1__Response *s = dh_status(&d);
        bool seen = false;
        for (size_t i = 0; s && i < s->status->n_requests; i++)
                seen |= s->status->requests[i]->uid == NOBODY;
        CHECK(seen, "root does not see Bob's requests");
        if (s)
                mixtrald__v1__response__free_unpacked(s, NULL);
        CHECK(write(go[1], "g", 1) == 1, "pipe");
        int st;
        waitpid(bob, &st, 0);
        CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "Bob's part failed");
        close(p[0]), close(p[1]), close(go[0]), close(go[1]);
}

static double mono(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static dh_daemon fair;

static int late_user(void *arg) {
        int *pipe_fds = arg;
        dh_gen g = {.prompt = "my turn", .raw = true, .max_tokens = 300, .seed = 4, .ignore_eos = true};
        dh_result res = {0};
        int rc = dh_run(&fair, &g, &res);
        double t = mono();
        bool ok = rc == 0 && res.error == 0;
        dh_result_free(&res);
        return ok && write(pipe_fds[1], &t, sizeof(t)) == sizeof(t) ? 0 : fail("the late user was not served");
}

/* One place in the batch; root queues four requests, then another user
 * one: the other user goes next, not after all of root's. */
static void test_fair_between_users(void) {
        if (dh_init(&fair, mixtrald, model, "[daemon]\nthreads = 1\nmax_batch = 1\n") < 0 || dh_start(&fair, NULL) < 0) {
                CHECK(0, "the second daemon did not start");
                return dh_cleanup(&fair);
        }
        int fd = dh_connect(&fair), rc, p[2];
        CHECK(pipe(p) == 0, "pipe");
        dh_gen g = {.prompt = "root's turn", .raw = true, .max_tokens = 300, .seed = 3, .ignore_eos = true};
        for (uint64_t tag = 1; tag <= 4; tag++)
                dh_send_generate(fd, tag, &g);
        Mixtrald__V1__Response *r;
        while ((r = dh_recv(fd, 10000, &rc)) && r->kind_case != MIXTRALD__V1__RESPONSE__KIND_CHUNK)
                mixtrald__v1__response__free_unpacked(r, NULL);
        if (r)
                mixtrald__v1__response__free_unpacked(r, NULL);
        fflush(NULL);
        pid_t child = fork();
        if (child == 0) {
                if (dh_drop_to(BOB, BOB) < 0)
                        _exit(99);
                _exit(late_user(p));
        }
        double ends[4] = {0};
        for (uint64_t tag = 1; tag <= 4; tag++) {
                dh_result res = {0};
                CHECK(dh_collect(fd, tag, &res, 60000) == 0 && res.error == 0, "root's request %llu failed",
                      (unsigned long long)tag);
                ends[tag - 1] = mono();
                dh_result_free(&res);
        }
        int st;
        waitpid(child, &st, 0);
        double late = 0;
        CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0 && read(p[0], &late, sizeof(late)) == sizeof(late),
              "the late user's part failed");
        CHECK(late > 0 && late < ends[1], "the other user waited behind root's queue: done at %.3f, root's at "
              "%.3f %.3f %.3f %.3f", late, ends[0], ends[1], ends[2], ends[3]);
        close(fd), close(p[0]), close(p[1]);
        CHECK(dh_stop(&fair) == 0, "exit status");
        dh_cleanup(&fair);
}

static dh_daemon kv;

static const char kv_system[] =
        "You are the assistant of a small team. Answer briefly and exactly, and say so when you do not know; "
        "the team's daemon serves one language model to every user of the machine, within quotas.";

typedef struct kv_case {
        const char *prompt;
        bool cached; /* most of the prompt from the cache, or none of it */
} kv_case;

static int ask(void *arg) {
        const kv_case *c = arg;
        dh_gen g = {.system = kv_system, .prompt = c->prompt, .max_tokens = 4, .has_temperature = true};
        dh_result res = {0};
        int rc = dh_run(&kv, &g, &res);
        uint32_t cached = res.cached_prompt_tokens, prompt = res.prompt_tokens;
        bool ok = rc == 0 && res.error == 0 && (c->cached ? cached > prompt / 2 : cached == 0);
        dh_result_free(&res);
        return ok ? 0 : fail("\"%s\": %u of %u prompt tokens cached, expected %s", c->prompt, cached, prompt,
                             c->cached ? "most" : "none");
}

static void kv_share(const char *share) {
        FILE *f = fopen(kv.config, "w");
        fprintf(f, "[daemon]\nthreads = 1\nprefix_cache_share = %s\n", share);
        fclose(f);
        kill(kv.pid, SIGHUP);
        CHECK(dh_notify_wait(&kv, "READY=1", 5000), "no READY=1 after SIGHUP");
}

/* Cached prompt prefixes: by default a user's requests reuse only their
 * own (a hit is visible in the timing); prefix_cache_share = all shares
 * everyone's, off nobody's; each takes effect on SIGHUP. */
static void test_prefix_sharing(void) {
        if (dh_init(&kv, mixtrald, model, "[daemon]\nthreads = 1\n") < 0 || dh_start(&kv, NULL) < 0) {
                CHECK(0, "the KV daemon did not start");
                return dh_cleanup(&kv);
        }
        chmod(kv.dir, 0755);
        CHECK(dh_as_user(BOB, BOB, ask, &(kv_case){"first", false}) == 0, "Bob's first request");
        CHECK(dh_as_user(BOB, BOB, ask, &(kv_case){"second", true}) == 0, "Bob's own prefix was not reused");
        CHECK(dh_as_user(CAROL, CAROL, ask, &(kv_case){"second", false}) == 0, "Carol was served Bob's prefix");
        kv_share("all");
        CHECK(dh_as_user(BOB, BOB, ask, &(kv_case){"third", false}) == 0, "Bob's request under all");
        CHECK(dh_as_user(CAROL, CAROL, ask, &(kv_case){"fourth", true}) == 0,
              "Carol was not served the prefix under prefix_cache_share = all");
        kv_share("off");
        CHECK(dh_as_user(CAROL, CAROL, ask, &(kv_case){"fifth", false}) == 0, "a prefix was served under off");
        CHECK(dh_as_user(CAROL, CAROL, ask, &(kv_case){"fifth", false}) == 0, "a prefix was served under off");
        CHECK(dh_stop(&kv) == 0, "exit status");
        if (test_failures)
                dh_show_log(&kv, 20);
        dh_cleanup(&kv);
}

/* The system's file with our lines added, bind-mounted over it in a
 * private mount namespace. */
static int overlay(const char *file, const char *more) {
        char path[64];
        snprintf(path, sizeof(path), "/tmp/mx-users-%s-XXXXXX", strrchr(file, '/') + 1);
        int fd = mkstemp(path);
        FILE *in = fopen(file, "re"), *out = fd >= 0 ? fdopen(fd, "w") : NULL;
        char line[4096];
        while (in && out && fgets(line, sizeof(line), in))
                fputs(line, out);
        if (out)
                fputs(more, out);
        bool ok = in && out && fclose(out) == 0;
        if (in)
                fclose(in);
        chmod(path, 0644);
        ok = ok && mount(path, file, NULL, MS_BIND, NULL) == 0;
        unlink(path);
        return ok ? 0 : -1;
}

static void with_test_users(void) {
        if (unshare(CLONE_NEWNS) < 0 || mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) < 0)
                test_skip("no private mount namespace for the test users");
        if (overlay("/etc/passwd",
                    "mxalice:x:60001:60001::/nonexistent:/usr/sbin/nologin\n"
                    "mxbob:x:60002:60002::/nonexistent:/usr/sbin/nologin\n"
                    "mxcarol:x:60003:60003::/nonexistent:/usr/sbin/nologin\n"
                    "mxdave:x:60004:60010::/nonexistent:/usr/sbin/nologin\n") < 0 ||
            overlay("/etc/group",
                    "mxalice:x:60001:\nmxbob:x:60002:\nmxcarol:x:60003:\nmxlimited:x:60010:\n"
                    "mxother:x:60011:mxdave\nmxadmin:x:60012:mxcarol\n") < 0)
                test_skip("cannot put the test users in /etc/passwd and /etc/group");
}

int main(int argc, char **argv) {
        if (argc != 3) {
                fprintf(stderr, "usage: test-users MIXTRALD DEMO_MODEL_DIR\n");
                return 2;
        }
        if (geteuid() != 0)
                test_skip("several users need root to switch uids (run the tests as root)");
        with_test_users();
        mixtrald = argv[1], model = argv[2];
        signal(SIGPIPE, SIG_IGN);
        CHECK(dh_init(&d, mixtrald, model, config) == 0, "init");
        chmod(d.dir, 0755);
        if (dh_start(&d, NULL) < 0) {
                dh_cleanup(&d);
                return 1;
        }
        CHECK(dh_as_user(ALICE, ALICE, exhaust, NULL) == 0, "Alice's budget was not enforced");
        CHECK(dh_as_user(BOB, BOB, one_request, NULL) == 0, "Bob was refused for Alice's usage");
        CHECK(dh_as_user(NOBODY, NOBODY, unlimited, NULL) == 0, "[user:nobody] did not lift the budget");
        CHECK(dh_as_user(CAROL, CAROL, exempt_admin, NULL) == 0, "admin_group is not exempt");
        CHECK(dh_as_user(DAVE, OTHER, group_by_passwd, NULL) == 0, "another egid escaped a [group:] limit");
        CHECK(dh_as_user(BOB, BOB, too_many_connections, NULL) == 0, "max_connections_per_uid is not enforced");
        test_privacy();
        test_fair_between_users();
        test_prefix_sharing();

        /* kill -9 and a restart: Alice is still over her budget. */
        dh_kill9(&d);
        CHECK(dh_start(&d, NULL) == 0, "restart");
        CHECK(dh_as_user(ALICE, ALICE, still_exhausted, NULL) == 0, "a restart forgot Alice's usage");

        /* SIGHUP raises the budget; no restart needed. */
        FILE *f = fopen(d.config, "w");
        fputs("[daemon]\nthreads = 1\n[quota]\ntokens_per_hour = 100000\n", f);
        fclose(f);
        kill(d.pid, SIGHUP);
        CHECK(dh_notify_wait(&d, "READY=1", 5000), "no READY=1 after SIGHUP");
        CHECK(dh_as_user(ALICE, ALICE, one_request, NULL) == 0, "the reloaded budget does not apply");
        CHECK(dh_stop(&d) == 0, "exit status");
        if (test_failures)
                dh_show_log(&d, 30);
        dh_cleanup(&d);
        return test_result();
}
