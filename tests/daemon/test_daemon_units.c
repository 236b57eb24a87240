/* The daemon's parts that need neither a socket nor a model: the
 * configuration file, quota precedence, usage accounting on disk,
 * admission, request validation and framing. Each is driven directly, so
 * a failure points at one function rather than at a conversation over
 * the socket (tests/daemon/test_daemon.c covers that). */
#include <dirent.h>
#include <fcntl.h>
#include <grp.h>
#include <math.h>
#include <pwd.h>
#include <sched.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include "mixtrald.h"
#include "test_util.h"

#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

/* A Tuesday, 100 s into an hour of a UTC day: windows are easy to cross. */
#define DAY_START UINT64_C(1699920000)
#define HOUR_START (DAY_START + 22 * 3600)
#define NOW (HOUR_START + 100)

static char tmpdir[] = "/tmp/mixtrald-units-XXXXXX";

static char *path_in(const char *name) {
        char *p;
        if (asprintf(&p, "%s/%s", tmpdir, name) < 0)
                abort();
        return p;
}

static char *write_file(const char *name, const char *text) {
        char *p = path_in(name);
        FILE *f = fopen(p, "we");
        if (!f || fputs(text, f) < 0 || fclose(f) != 0) {
                perror(p);
                abort();
        }
        return p;
}

static void remove_tree(const char *path) {
        struct stat st;
        if (lstat(path, &st) < 0)
                return;
        if (S_ISDIR(st.st_mode)) {
                chmod(path, 0700); /* a test may have made it read-only */
                DIR *d = opendir(path);
                for (struct dirent *e; d && (e = readdir(d));) {
                        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
                                continue;
                        char sub[4096];
                        snprintf(sub, sizeof(sub), "%s/%s", path, e->d_name);
                        remove_tree(sub);
                }
                if (d)
                        closedir(d);
                rmdir(path);
        } else {
                unlink(path);
        }
}

static bool contains(const char *haystack, const char *needle) {
        return strstr(haystack, needle) != NULL;
}

/* ---- configuration --------------------------------------------------------- */

static void test_config_full(void) {
        static const char text[] =
                "# every key there is\n"
                "[daemon]\n"
                "model = /srv/models/mixtral-8x7b\n"
                "device = cuda\n"
                "socket = /run/test/mixtrald.sock\n"
                "socket_mode = 0660\n"
                "state_directory = /var/lib/mixtrald-test\n"
                "admin_group = wheel\n"
                "max_frame_bytes = 64K\n"
                "threads = 12\n"
                "max_batch = 32\n"
                "max_queue = 100\n"
                "max_connections_per_uid = 5\n"
                "max_output_bytes = 8M\n"
                "prefill_chunk = 128\n"
                "drain_seconds = 45\n"
                "expert_memory = 20G\n"
                "host_cache = auto\n"
                "\n"
                "[quota]\n"
                "tokens_per_hour = 100000\n"
                "tokens_per_day = 1000000\n"
                "max_concurrent = 2\n"
                "max_queued = 3\n"
                "max_context = 4096\n"
                "max_tokens = 512\n"
                "[user:root]\n"
                "max_tokens = 1000\n"
                "tokens_per_day = 0\n"
                "[group:nogroup]\n"
                "tokens_per_hour = 5\n";
        char *path = write_file("full.conf", text);
        md_config c;
        md_config_defaults(&c);
        mx_error err = {0};
        int r = md_config_load(&c, path, true, &err);
        CHECK(r == 0, "full config: %d %s", r, err.msg);
        CHECK(c.model && !strcmp(c.model, "/srv/models/mixtral-8x7b"), "model %s", c.model);
        CHECK(c.device && !strcmp(c.device, "cuda"), "device %s", c.device);
        CHECK(c.socket && !strcmp(c.socket, "/run/test/mixtrald.sock"), "socket %s", c.socket);
        CHECK(c.socket_mode == 0660, "socket_mode %o", c.socket_mode);
        CHECK(c.state_directory && !strcmp(c.state_directory, "/var/lib/mixtrald-test"), "state %s",
              c.state_directory);
        CHECK(c.admin_group && !strcmp(c.admin_group, "wheel"), "admin_group %s", c.admin_group);
        CHECK(c.max_frame_bytes == 65536, "max_frame_bytes %u", c.max_frame_bytes);
        CHECK(c.threads == 12, "threads %u", c.threads);
        CHECK(c.max_batch == 32, "max_batch %u", c.max_batch);
        CHECK(c.max_queue == 100, "max_queue %u", c.max_queue);
        CHECK(c.max_connections_per_uid == 5, "max_connections_per_uid %u", c.max_connections_per_uid);
        CHECK(c.max_output_bytes == 8u << 20, "max_output_bytes %u", c.max_output_bytes);
        CHECK(c.prefill_chunk == 128, "prefill_chunk %u", c.prefill_chunk);
        CHECK(c.drain_seconds == 45, "drain_seconds %g", c.drain_seconds);
        CHECK(c.quota.tokens_per_hour == 100000 && c.quota.tokens_per_day == 1000000 &&
                      c.quota.max_concurrent == 2 && c.quota.max_queued == 3 && c.quota.max_context == 4096 &&
                      c.quota.max_tokens == 512,
              "[quota] %llu %llu %u %u %u %u", (unsigned long long)c.quota.tokens_per_hour,
              (unsigned long long)c.quota.tokens_per_day, c.quota.max_concurrent, c.quota.max_queued,
              c.quota.max_context, c.quota.max_tokens);
        CHECK(c.n_sections == 2, "%zu sections", c.n_sections);
        if (c.n_sections == 2) {
                const md_quota_section *u = &c.sections[0], *g = &c.sections[1];
                CHECK(!u->is_group && !strcmp(u->name, "root"), "first section %s", u->name);
                CHECK(u->set == ((1u << 5) | (1u << 1)), "user section sets %#x", u->set);
                CHECK(u->limits.max_tokens == 1000 && u->limits.tokens_per_day == 0, "user limits");
                CHECK(g->is_group && !strcmp(g->name, "nogroup"), "second section %s", g->name);
                CHECK(g->set == 1u && g->limits.tokens_per_hour == 5, "group section sets %#x", g->set);
        }
        md_config_free(&c);
        free(path);

        /* A second file over the first changes only what it names, and a
         * section named again gathers its keys in one place. */
        md_config_defaults(&c);
        char *a = write_file("a.conf", "[daemon]\nthreads = 3\n[user:nobody]\nmax_tokens = 7\n");
        char *b = write_file("b.conf", "[daemon]\nmax_batch = 2\n[user:nobody]\nmax_queued = 1\n");
        CHECK(md_config_load(&c, a, true, &err) == 0 && md_config_load(&c, b, true, &err) == 0, "%s", err.msg);
        CHECK(c.threads == 3 && c.max_batch == 2 && c.max_queue == 64, "layered: %u %u %u", c.threads,
              c.max_batch, c.max_queue);
        CHECK(c.n_sections == 1 && c.sections[0].set == ((1u << 5) | (1u << 3)) &&
                      c.sections[0].limits.max_tokens == 7 && c.sections[0].limits.max_queued == 1,
              "merged [user:nobody]: %zu sections", c.n_sections);
        md_config_free(&c);
        free(a);
        free(b);
}

static void test_config_errors(void) {
        static const struct {
                const char *text;
                int line;
                const char *needle; /* the key (or section) the message must name */
        } cases[] = {
                {"[daemon]\nthreads = 1\n[bogus]\nx = 1\n", 4, "bogus"},
                {"[daemon]\nthreads = 1\nfrobnicate = 1\n", 3, "frobnicate"},
                {"[quota]\nmax_things = 3\n", 2, "max_things"},
                {"[quota]\nmax_tokens = abc\n", 2, "max_tokens"},
                {"[quota]\ntokens_per_hour = -1\n", 2, "tokens_per_hour"},
                {"[daemon]\nthreads = -1\n", 2, "threads"},
                {"[quota]\ntokens_per_day = 99999999999999999999\n", 2, "tokens_per_day"},
                {"[quota]\ntokens_per_day = 9223372036854775808\n", 2, "tokens_per_day"},
                {"[quota]\nmax_concurrent = 4294967296\n", 2, "max_concurrent"},
                {"[daemon]\nmax_batch = 99999999999999999999\n", 2, "max_batch"},
                {"[daemon]\nmax_batch = 12abc\n", 2, "max_batch"},
                {"[quota]\nmax_queued = 12abc\n", 2, "max_queued"},
                {"[quota]\nmax_context = 1 2\n", 2, "max_context"},
                {"[daemon]\nmax_batch = 0\n", 2, "max_batch"},
                {"[daemon]\nmax_batch = 1025\n", 2, "max_batch"},
                {"[daemon]\nmax_frame_bytes = 1G\n", 2, "max_frame_bytes"},
                {"[daemon]\nmax_frame_bytes = 512\n", 2, "max_frame_bytes"},
                {"[daemon]\nmax_frame_bytes = 64KB\n", 2, "max_frame_bytes"},
                {"[daemon]\nmax_output_bytes = 2G\n", 2, "max_output_bytes"},
                {"[daemon]\nexpert_memory = lots\n", 2, "expert_memory"},
                {"[daemon]\nquantize = q3_k\n", 2, "quantize=q3_k: expected none, q8_0"},
                {"[daemon]\ndrain_seconds = 86401\n", 2, "drain_seconds"},
                {"[daemon]\nsocket_mode = 0888\n", 2, "socket_mode"},
                {"[daemon]\nsocket_mode = 01777\n", 2, "socket_mode"},
                {"[daemon]\nsocket_mode = rw\n", 2, "socket_mode"},
                {"[daemon]\nsocket_mode = -1\n", 2, "socket_mode"},
                {"[daemon]\nsocket = run/mixtrald.sock\n", 2, "socket"},
                {"[daemon]\ndevice = gpu\n", 2, "device"},
                {"[daemon]\ndevice = cuda:\n", 2, "device"},
                {"[daemon]\ndevice = cuda:x1\n", 2, "device"},
                {"[daemon]\ndevice = cuda:123\n", 2, "device"},
                {"[user:]\nmax_tokens = 1\n", 2, "[user:]"},
                {"[group:]\nmax_tokens = 1\n", 2, "[group:]"},
                {"[user:nobody]\nthreads = 1\n", 2, "threads"},
                {"[daemon]\nthreads = 1\nthreads\n", 3, "key = value"},
                {"[daemon]\nthreads = 1\n[quota\n", 3, "key = value"},
                {"threads = 1\n", 1, "section []"},
                /* What inih would take silently. */
                {"[quota]\ntokens_per_day = 1000\n    0\n", 3, "indented"},
                {"[quota]\ntokens_per_day = 1000\n\tmax_tokens = 5\n", 3, "indented"},
                {"[daemon]\nthreads = 1\nthreads = 2\n", 3, "threads is given twice"},
                {"[quota]\nmax_tokens = 1\n[quota]\nmax_concurrent = 2\n", 3, "[quota] is given twice"},
                {"[user:nobody]\nmax_tokens = 1\n[daemon]\nthreads = 1\n[user:nobody]\n", 5, "given twice"},
        };
        char *path = path_in("bad.conf");
        for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
                free(write_file("bad.conf", cases[i].text));
                md_config c;
                md_config_defaults(&c);
                mx_error err = {0};
                int r = md_config_load(&c, path, true, &err);
                char where[4200];
                snprintf(where, sizeof(where), "%s:%d:", path, cases[i].line);
                CHECK(r < 0, "case %zu accepted: %s", i, cases[i].text);
                CHECK(r < 0 && err.code == r, "case %zu: code %d vs %d", i, err.code, r);
                CHECK(contains(err.msg, where), "case %zu: '%s' does not name %s", i, err.msg, where);
                CHECK(contains(err.msg, cases[i].needle), "case %zu: '%s' does not name %s", i, err.msg,
                      cases[i].needle);
                md_config_free(&c);
        }

        /* A NUL byte would end the line for inih: the rest unread. */
        FILE *f = fopen(path, "we");
        fwrite("[daemon]\nthreads = 1\0 junk\n", 1, 28, f);
        fclose(f);
        md_config n;
        md_config_defaults(&n);
        mx_error nerr = {0};
        CHECK(md_config_load(&n, path, true, &nerr) < 0 && contains(nerr.msg, ":2:") && contains(nerr.msg, "NUL"),
              "a NUL byte: '%s'", nerr.msg);
        md_config_free(&n);
        /* Indented comments and blank lines are fine. */
        free(write_file("bad.conf", "[daemon]\n   # a note\n\t; another\n  \nthreads = 1\n"));
        md_config_defaults(&n);
        CHECK(md_config_load(&n, path, true, &nerr) == 0 && n.threads == 1, "indented comments: %s", nerr.msg);
        md_config_free(&n);

        /* Limits at their bounds are accepted. */
        char *ok = write_file("edge.conf",
                              "[quota]\ntokens_per_day = 9223372036854775807\nmax_concurrent = 4294967295\n"
                              "[daemon]\nmax_frame_bytes = 256M\nsocket_mode = 0777\nmax_batch = 1024\n");
        md_config c;
        md_config_defaults(&c);
        mx_error err = {0};
        CHECK(md_config_load(&c, ok, true, &err) == 0, "bounds: %s", err.msg);
        CHECK(c.quota.tokens_per_day == INT64_MAX && c.quota.max_concurrent == UINT32_MAX &&
                      c.max_frame_bytes == 256u << 20 && c.socket_mode == 0777 && c.max_batch == 1024,
              "bounds read back");
        md_config_free(&c);
        free(ok);
        free(path);
}

static void test_config_files(void) {
        md_config c, d;
        md_config_defaults(&d);
        mx_error err = {0};

        char *missing = path_in("no-such.conf");
        md_config_defaults(&c);
        int r = md_config_load(&c, missing, false, &err);
        CHECK(r == 0, "optional missing file: %d %s", r, err.msg);
        CHECK(c.socket_mode == d.socket_mode && c.max_frame_bytes == d.max_frame_bytes &&
                      c.max_batch == d.max_batch && c.max_queue == d.max_queue && !c.model && !c.socket &&
                      c.n_sections == 0 && !memcmp(&c.quota, &d.quota, sizeof(c.quota)),
              "defaults changed by a missing file");
        r = md_config_load(&c, missing, true, &err);
        CHECK(r == -ENOENT, "required missing file: %d", r);
        CHECK(contains(err.msg, missing), "'%s' does not name the file", err.msg);
        md_config_free(&c);
        free(missing);

        md_config_defaults(&c);
        r = md_config_load(&c, tmpdir, false, &err);
        CHECK(r < 0, "a directory was read as a config file");
        CHECK(contains(err.msg, tmpdir), "'%s' does not name the directory", err.msg);
        md_config_free(&c);

        char *empty = write_file("empty.conf", "; nothing\n\n# at all\n");
        md_config_defaults(&c);
        CHECK(md_config_load(&c, empty, true, &err) == 0 && c.max_batch == d.max_batch, "empty file: %s",
              err.msg);
        md_config_free(&c);
        free(empty);
}

static void test_config_set_daemon(void) {
        static const struct {
                const char *key, *good, *bad;
        } keys[] = {
                {"model", "/m", NULL},
                {"device", "cpu", "tpu"},
                {"device", "cuda:1", "cuda1"},
                {"socket", "/tmp/x.sock", "x.sock"},
                {"socket_mode", "0600", "0800"},
                {"state_directory", "/var/lib/x", NULL},
                {"admin_group", "adm", NULL},
                {"max_frame_bytes", "2M", "300M"},
                {"max_output_bytes", "4K", "4095"},
                {"drain_seconds", "0", "1.5"},
                {"expert_memory", "auto", "-1"},
                {"expert_memory", "100%", "99999999T"}, /* more than a uint64_t: the engine refuses it */
                {"expert_memory", "1.5G", "+5G"},
                {"host_cache", "512M", "lots"},
                {"host_cache", "all", "101%"},
                {"quantize", "q4_k_m", "q4_k"},
                {"quantize", "none", "Q8_0"},
                {"threads", "0", "4097"},
                {"max_batch", "1", "0"},
                {"max_queue", "0", "1048577"},
                {"max_connections_per_uid", "1", "0"},
                {"prefill_chunk", "65536", "65537"},
                {"no_such_key", NULL, "1"},
                {"tokens_per_hour", NULL, "1"}, /* a [quota] key, not a [daemon] one */
        };
        for (size_t i = 0; i < ARRAY_SIZE(keys); i++) {
                md_config c;
                md_config_defaults(&c);
                mx_error err = {0};
                if (keys[i].good) {
                        int r = md_config_set_daemon(&c, keys[i].key, keys[i].good, &err);
                        CHECK(r == 0, "%s=%s: %d %s", keys[i].key, keys[i].good, r, err.msg);
                }
                if (keys[i].bad) {
                        md_config before;
                        memcpy(&before, &c, sizeof(c));
                        int r = md_config_set_daemon(&c, keys[i].key, keys[i].bad, &err);
                        CHECK(r == -EINVAL, "%s=%s accepted (%d)", keys[i].key, keys[i].bad, r);
                        CHECK(contains(err.msg, keys[i].key), "'%s' does not name %s", err.msg, keys[i].key);
                        CHECK(!memcmp(&before, &c, sizeof(c)), "%s=%s changed the config", keys[i].key,
                              keys[i].bad);
                }
                md_config_free(&c);
        }

        /* What each good value became. */
        md_config c;
        md_config_defaults(&c);
        mx_error err = {0};
        for (size_t i = 0; i < ARRAY_SIZE(keys); i++)
                if (keys[i].good)
                        md_config_set_daemon(&c, keys[i].key, keys[i].good, &err);
        CHECK(c.model && !strcmp(c.model, "/m"), "model");
        CHECK(c.device && !strcmp(c.device, "cuda:1"), "device (the last good value)");
        CHECK(c.socket && !strcmp(c.socket, "/tmp/x.sock"), "socket");
        CHECK(c.socket_mode == 0600, "socket_mode %o", c.socket_mode);
        CHECK(c.state_directory && !strcmp(c.state_directory, "/var/lib/x"), "state_directory");
        CHECK(c.admin_group && !strcmp(c.admin_group, "adm"), "admin_group");
        CHECK(c.max_frame_bytes == 2u << 20, "max_frame_bytes %u", c.max_frame_bytes);
        CHECK(c.max_output_bytes == 4096, "max_output_bytes %u", c.max_output_bytes);
        CHECK(c.drain_seconds == 0, "drain_seconds %g", c.drain_seconds);
        CHECK(c.threads == 0 && c.max_batch == 1 && c.max_queue == 0 && c.max_connections_per_uid == 1 &&
                      c.prefill_chunk == 65536,
              "numbers %u %u %u %u %u", c.threads, c.max_batch, c.max_queue, c.max_connections_per_uid,
              c.prefill_chunk);
        /* A later value replaces an earlier one (command line over file). */
        CHECK(md_config_set_daemon(&c, "model", "/other", &err) == 0 && !strcmp(c.model, "/other"),
              "model replaced");
        md_config_free(&c);
}

/* ---- quota precedence ------------------------------------------------------ */

static md_config load_config(const char *name, const char *text) {
        char *path = write_file(name, text);
        md_config c;
        md_config_defaults(&c);
        mx_error err = {0};
        int r = md_config_load(&c, path, true, &err);
        CHECK(r == 0, "%s: %s", name, err.msg);
        free(path);
        return c;
}

static bool limits_eq(const md_limits *a, const md_limits *b) {
        return a->tokens_per_hour == b->tokens_per_hour && a->tokens_per_day == b->tokens_per_day &&
               a->max_concurrent == b->max_concurrent && a->max_queued == b->max_queued &&
               a->max_context == b->max_context && a->max_tokens == b->max_tokens;
}

static void print_limits(const char *what, const md_limits *l) {
        fprintf(stderr, "  %s: hour %llu day %llu concurrent %u queued %u context %u tokens %u\n", what,
                (unsigned long long)l->tokens_per_hour, (unsigned long long)l->tokens_per_day,
                l->max_concurrent, l->max_queued, l->max_context, l->max_tokens);
}

#define CHECK_LIMITS(got, want, ...)                                                               \
        do {                                                                                       \
                bool eq_ = limits_eq(&(got), &(want));                                             \
                CHECK(eq_, __VA_ARGS__);                                                           \
                if (!eq_) {                                                                        \
                        print_limits("got", &(got));                                               \
                        print_limits("want", &(want));                                             \
                }                                                                                  \
        } while (0)

#define NOBODY 65534
#define NO_PASSWD 4000123 /* a uid without a passwd entry */

/* The limits of a uid as the daemon finds them: its passwd entry's groups,
 * whatever group a process of it runs as. */
static void limits_of(const md_config *c, uint32_t uid, md_limits *l, bool *exempt) {
        md_identity who;
        CHECK(md_identity_lookup(uid, &who) == 0, "look up uid %u", uid);
        md_config_limits(c, &who, l, exempt);
        md_identity_free(&who);
}

static void test_limits(void) {
        /* getpwuid's answers share one buffer: copy each before the next. */
        char root_name[256] = "", group_name[256] = "";
        struct passwd *pw = getpwuid(0);
        if (pw)
                snprintf(root_name, sizeof(root_name), "%s", pw->pw_name);
        struct group *gr = getgrgid(NOBODY);
        if (gr)
                snprintf(group_name, sizeof(group_name), "%s", gr->gr_name);
        pw = getpwuid(NOBODY);
        if (!*root_name || !*group_name || !pw || strcmp(pw->pw_name, "nobody") || pw->pw_gid != NOBODY) {
                printf("note: no root, nobody (65534) or its group; quota precedence not checked\n");
                return;
        }
        CHECK(getpwuid(NO_PASSWD) == NULL, "uid %d exists here", NO_PASSWD);

        char text[2048];
        snprintf(text, sizeof(text),
                 "[quota]\n"
                 "tokens_per_hour = 1000\ntokens_per_day = 10000\nmax_concurrent = 2\n"
                 "max_queued = 3\nmax_context = 2048\nmax_tokens = 256\n"
                 "[user:%s]\nmax_tokens = 9\n"
                 "[user:nobody]\ntokens_per_hour = 50\nmax_tokens = 0\n"
                 "[group:%s]\ntokens_per_hour = 70\ntokens_per_day = 700\nmax_queued = 1\n"
                 "[group:no-such-group-here]\nmax_concurrent = 99\n",
                 root_name, group_name);
        md_config c = load_config("limits.conf", text);
        const md_limits base = {1000, 10000, 2, 3, 2048, 256};
        md_limits l;
        bool exempt;

        limits_of(&c, NO_PASSWD, &l, &exempt);
        CHECK(!exempt, "uid without passwd is exempt");
        CHECK_LIMITS(l, base, "uid without passwd: not the defaults");

        /* root: exempt, and its own section still shapes the numbers shown. */
        limits_of(&c, 0, &l, &exempt);
        CHECK(exempt, "root is not exempt");
        md_limits want = base;
        want.max_tokens = 9;
        CHECK_LIMITS(l, want, "root's section");

        /* nobody: its user section beats the group's for tokens_per_hour, the
         * group sets what the user section leaves, [quota] the rest. */
        limits_of(&c, NOBODY, &l, &exempt);
        CHECK(!exempt, "nobody is exempt");
        want = (md_limits){50, 700, 2, 1, 2048, 0};
        CHECK_LIMITS(l, want, "nobody: user, then group, then [quota]");

        /* A uid without a passwd entry has no groups: [quota] alone. */
        limits_of(&c, NO_PASSWD, &l, &exempt);
        CHECK_LIMITS(l, base, "uid without passwd: a group counted");

        /* admin_group makes members exempt, by passwd's primary group; a
         * named group that does not exist makes nobody exempt. */
        free(c.admin_group);
        c.admin_group = strdup(group_name);
        limits_of(&c, NOBODY, &l, &exempt);
        CHECK(exempt, "nobody in admin_group %s is not exempt", group_name);
        limits_of(&c, NO_PASSWD, &l, &exempt);
        CHECK(!exempt, "a uid without passwd, in no group, is exempt");
        free(c.admin_group);
        c.admin_group = strdup("no-such-group-here");
        limits_of(&c, NOBODY, &l, &exempt);
        CHECK(!exempt, "a missing admin_group made nobody exempt");
        md_config_free(&c);

        /* A user section beats the group's even where it is stricter. */
        snprintf(text, sizeof(text), "[group:%s]\nmax_concurrent = 8\n[user:nobody]\nmax_concurrent = 1\n",
                 group_name);
        c = load_config("user-over-group.conf", text);
        limits_of(&c, NOBODY, &l, &exempt);
        CHECK(l.max_concurrent == 1, "user section lost to the group: %u", l.max_concurrent);
        md_config_free(&c);
}

/* Runs fn in a child whose mount namespace shows `group_file` as
 * /etc/group, so that nobody can be in several groups without touching
 * the system. -1: no namespace could be made here. */
static int with_etc_group(const char *group_file, void (*fn)(void)) {
        fflush(stdout);
        fflush(stderr);
        pid_t pid = fork();
        if (pid < 0)
                return -1;
        if (pid == 0) {
                if (unshare(CLONE_NEWNS) < 0) {
                        /* Unprivileged: our own user namespace owns the mounts. */
                        uid_t uid = getuid();
                        gid_t gid = getgid();
                        if (unshare(CLONE_NEWUSER | CLONE_NEWNS) < 0)
                                _exit(EXIT_SKIP);
                        char map[64];
                        int fd = open("/proc/self/setgroups", O_WRONLY | O_CLOEXEC);
                        if (fd >= 0)
                                (void)!write(fd, "deny", 4), close(fd);
                        snprintf(map, sizeof(map), "0 %u 1", (unsigned)uid);
                        if ((fd = open("/proc/self/uid_map", O_WRONLY | O_CLOEXEC)) < 0 ||
                            write(fd, map, strlen(map)) < 0)
                                _exit(EXIT_SKIP);
                        close(fd);
                        snprintf(map, sizeof(map), "0 %u 1", (unsigned)gid);
                        if ((fd = open("/proc/self/gid_map", O_WRONLY | O_CLOEXEC)) < 0 ||
                            write(fd, map, strlen(map)) < 0)
                                _exit(EXIT_SKIP);
                        close(fd);
                }
                if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) < 0 ||
                    mount(group_file, "/etc/group", NULL, MS_BIND, NULL) < 0)
                        _exit(EXIT_SKIP);
                /* nscd or another NSS source may not see the file. */
                if (!getgrnam("mxtest-a"))
                        _exit(EXIT_SKIP);
                test_failures = 0;
                fn();
                fflush(stdout);
                fflush(stderr);
                _exit(test_failures ? 1 : 0);
        }
        int st;
        if (waitpid(pid, &st, 0) < 0 || !WIFEXITED(st))
                return 1;
        return WEXITSTATUS(st) == EXIT_SKIP ? -1 : WEXITSTATUS(st);
}

/* In the namespace: nobody is in mxtest-a, -b, -c and -admin, not in -d. */
static void group_precedence(void) {
        const md_limits base = {1000, 10000, 2, 3, 2048, 256};
        md_config c = load_config("groups.conf",
                                  "[quota]\n"
                                  "tokens_per_hour = 1000\ntokens_per_day = 10000\nmax_concurrent = 2\n"
                                  "max_queued = 3\nmax_context = 2048\nmax_tokens = 256\n"
                                  "[group:mxtest-a]\ntokens_per_hour = 2000\nmax_concurrent = 3\n"
                                  "[group:mxtest-b]\ntokens_per_hour = 0\nmax_concurrent = 1\nmax_tokens = 100\n"
                                  "[group:mxtest-c]\ntokens_per_hour = 5000\nmax_context = 0\n"
                                  "[group:mxtest-d]\ntokens_per_day = 0\nmax_queued = 50\n");
        md_limits l;
        bool exempt;
        limits_of(&c, NOBODY, &l, &exempt);
        /* 0 (no limit) is the most generous; a key only one group sets is
         * taken from it even where [quota] was more generous. */
        md_limits want = {0, 10000, 3, 3, 0, 100};
        CHECK_LIMITS(l, want, "most generous of the groups");
        CHECK(!exempt, "nobody exempt without admin_group");

        limits_of(&c, NO_PASSWD, &l, &exempt);
        CHECK_LIMITS(l, base, "supplementary groups counted for a uid without a name");

        md_config_free(&c);
        c = load_config("groups-user.conf",
                        "[group:mxtest-a]\nmax_concurrent = 30\n[group:mxtest-b]\nmax_concurrent = 0\n"
                        "[user:nobody]\nmax_concurrent = 1\n"
                        "[daemon]\nadmin_group = mxtest-admin\n");
        limits_of(&c, NOBODY, &l, &exempt);
        CHECK(l.max_concurrent == 1, "user section lost to groups: %u", l.max_concurrent);
        CHECK(exempt, "supplementary member of admin_group not exempt");
        limits_of(&c, NO_PASSWD, &l, &exempt);
        CHECK(!exempt, "admin_group membership of someone else counted");
        md_config_free(&c);
}

static void test_group_precedence(void) {
        FILE *in = fopen("/etc/group", "re");
        char *path = path_in("group");
        FILE *out = fopen(path, "we");
        if (!in || !out) {
                printf("note: cannot copy /etc/group; group precedence not checked\n");
                if (in)
                        fclose(in);
                if (out)
                        fclose(out);
                free(path);
                return;
        }
        char buf[4096];
        size_t k;
        while ((k = fread(buf, 1, sizeof(buf), in)) > 0)
                fwrite(buf, 1, k, out);
        fclose(in);
        fputs("\nmxtest-a:x:4100001:nobody\nmxtest-b:x:4100002:daemon,nobody\nmxtest-c:x:4100003:nobody\n"
              "mxtest-d:x:4100004:daemon\nmxtest-admin:x:4100005:nobody\n",
              out);
        fclose(out);
        int r = with_etc_group(path, group_precedence);
        if (r < 0)
                printf("note: no private mount namespace here; several-group precedence not checked\n");
        CHECK(r <= 0, "group precedence (checked in a child, see above)");
        free(path);
}

/* ---- usage ----------------------------------------------------------------- */

static bool exists(const char *path) {
        struct stat st;
        return lstat(path, &st) == 0;
}

static void test_usage_roundtrip(void) {
        char *state = path_in("state");
        md_usage u;
        mx_error err = {0};
        int r = md_usage_open(&u, state, &err);
        CHECK(r == 0, "fresh state directory: %d %s", r, err.msg);
        CHECK(u.n == 0, "fresh usage has %zu entries", u.n);
        struct stat st;
        CHECK(stat(state, &st) == 0 && S_ISDIR(st.st_mode) && (st.st_mode & 0777) == 0700,
              "state directory not created 0700");

        CHECK(md_usage_charge(&u, 1000, 50, NOW) == 0, "charge");
        CHECK(md_usage_charge(&u, 1000, 25, NOW + 10) == 0, "charge");
        CHECK(md_usage_charge(&u, 2000, 7, NOW) == 0, "charge");
        md_usage_entry *e = md_usage_get(&u, 1000, NOW + 20);
        CHECK(e && e->hour_used == 75 && e->day_used == 75 && e->hour_start == HOUR_START &&
                      e->day_start == DAY_START,
              "after charges");
        r = md_usage_save(&u, &err);
        CHECK(r == 0, "save: %d %s", r, err.msg);
        md_usage_free(&u);

        char *file = path_in("state/usage"), *tmp = path_in("state/usage.tmp");
        CHECK(!exists(tmp), "save left %s behind", tmp);
        CHECK(stat(file, &st) == 0 && (st.st_mode & 0777) == 0600, "usage file mode %o", st.st_mode & 0777);

        r = md_usage_open(&u, state, &err);
        CHECK(r == 0 && u.n == 2, "reopen: %d %zu entries %s", r, u.n, err.msg);
        e = md_usage_get(&u, 1000, NOW + 30);
        CHECK(e && e->hour_used == 75 && e->day_used == 75, "uid 1000 after reopen");
        e = md_usage_get(&u, 2000, NOW + 30);
        CHECK(e && e->hour_used == 7 && e->day_used == 7, "uid 2000 after reopen");

        /* The next hour of the same day: only the hour starts over. */
        e = md_usage_get(&u, 1000, HOUR_START + 3600 + 5);
        CHECK(e && e->hour_used == 0 && e->day_used == 75 && e->hour_start == HOUR_START + 3600 &&
                      e->day_start == DAY_START,
              "next hour");
        CHECK(md_usage_charge(&u, 1000, 5, HOUR_START + 3600 + 6) == 0 && e->hour_used == 5 &&
                      e->day_used == 80,
              "charge in the next hour");
        /* The next day: both. */
        e = md_usage_get(&u, 1000, DAY_START + 86400 + 1);
        CHECK(e && e->hour_used == 0 && e->day_used == 0 && e->day_start == DAY_START + 86400 &&
                      e->hour_start == DAY_START + 86400,
              "next day");
        /* A new uid starts empty. */
        e = md_usage_get(&u, 3000, NOW);
        CHECK(e && e->uid == 3000 && e->hour_used == 0 && e->day_used == 0, "new uid");

        /* Entries with nothing used are not written; a stale temp file from
         * a crash is replaced, not appended to. */
        free(write_file("state/usage.tmp", "half a line"));
        r = md_usage_save(&u, &err);
        CHECK(r == 0, "save over a stale temp file: %d %s", r, err.msg);
        CHECK(!exists(tmp), "save left %s behind", tmp);
        md_usage_free(&u);
        r = md_usage_open(&u, state, &err);
        CHECK(r == 0 && u.n == 1 && u.v[0].uid == 2000 && u.v[0].day_used == 7, "after the next day: %d %zu",
              r, u.n);
        md_usage_free(&u);

        /* Not writable: fails and leaves the old file as it was. */
        if (geteuid() == 0) {
                printf("note: running as root, which writes anywhere: unwritable state not checked\n");
        } else {
                CHECK(md_usage_open(&u, state, &err) == 0, "%s", err.msg);
                md_usage_charge(&u, 4000, 1, NOW);
                chmod(state, 0500);
                r = md_usage_save(&u, &err);
                chmod(state, 0700);
                CHECK(r < 0, "save into a read-only directory succeeded");
                CHECK(contains(err.msg, "usage"), "'%s' does not name the file", err.msg);
                CHECK(!exists(tmp), "failed save left %s behind", tmp);
                md_usage_free(&u);
                CHECK(md_usage_open(&u, state, &err) == 0 && u.n == 1, "old file damaged");
                md_usage_free(&u);
        }

        /* A state directory that cannot be created (a file where a parent
         * would be); missing parents are made. */
        free(write_file("a-file", "x"));
        char *deep = path_in("a-file/state");
        r = md_usage_open(&u, deep, &err);
        CHECK(r < 0 && contains(err.msg, deep), "uncreatable state directory: %d %s", r, err.msg);
        md_usage_free(&u);
        free(deep);
        free(state);
        free(file);
        free(tmp);
}

static void test_usage_corrupt(void) {
        static const struct {
                const char *text;
                const char *needle;
        } cases[] = {
                {"", "not a mixtrald usage file"},
                {"mixtrald-usage 2\n", "not a mixtrald usage file"},
                {"mixtrald-usage 1", "not a mixtrald usage file"},
                {"uid hour\n1000 1 2 3 4\n", "not a mixtrald usage file"},
                {"mixtrald-usage 1\n1000 3600 2 0 4\njunk\n", ":3:"},
                {"mixtrald-usage 1\n1000 3600 2 0 4\n1000 3600 6 0 8\n", ":3:"},
                {"mixtrald-usage 1\n1000 3600 2 0 4", ":2:"},
                {"mixtrald-usage 1\n1000 3600 2 0\n", ":2:"},
                {"mixtrald-usage 1\n1000 3600 2 0 4 5\n", ":2:"},
                {"mixtrald-usage 1\n1000 3600 2 0 4 \n", ":2:"},
                {"mixtrald-usage 1\n\n", ":2:"},
                {"mixtrald-usage 1\n7 0 0 0 0\n8 x 0 0 0\n", ":3:"},
        };
        char *state = path_in("corrupt");
        mkdir(state, 0700);
        for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
                free(write_file("corrupt/usage", cases[i].text));
                md_usage u;
                mx_error err = {0};
                int r = md_usage_open(&u, state, &err);
                CHECK(r == -EBADMSG, "corrupt case %zu: %d", i, r);
                CHECK(contains(err.msg, "corrupt/usage"), "case %zu: '%s' does not name the file", i,
                      err.msg);
                CHECK(contains(err.msg, cases[i].needle), "case %zu: '%s' does not say %s", i, err.msg,
                      cases[i].needle);
                md_usage_free(&u);
        }
        free(state);
}

/* ---- admission --------------------------------------------------------------- */

static md_usage_entry entry(uint64_t hour_used, uint64_t day_used) {
        return (md_usage_entry){.uid = 1000, .hour_start = HOUR_START, .hour_used = hour_used,
                                .day_start = DAY_START, .day_used = day_used};
}

static md_admission admit(const md_limits *l, bool exempt, md_usage_entry e, md_inflight f, uint32_t prompt,
                          uint32_t max_tokens, uint32_t context) {
        md_admission a;
        memset(&a, 0xa5, sizeof(a)); /* everything must be written */
        md_quota_admit(l, exempt, &e, &f, prompt, max_tokens, context, NOW, &a);
        return a;
}

enum {
        OK = 0,
        QUOTA = MIXTRALD__V1__ERROR_CODE__QUOTA_EXCEEDED,
        TOO_LONG = MIXTRALD__V1__ERROR_CODE__TOO_LONG,
};

static void test_admit_exempt_and_context(void) {
        const md_limits strict = {10, 10, 1, 0, 100, 5};
        md_inflight busy = {.running = 50, .queued = 50, .reserved = 1000};
        md_admission a = admit(&strict, true, entry(1000, 1000), busy, 200, 0, 4096);
        CHECK(a.code == OK && a.max_tokens == 3896 && a.reserve == 0, "exempt: %d %u %llu", a.code, a.max_tokens,
              (unsigned long long)a.reserve);
        a = admit(&strict, true, entry(1000, 1000), busy, 200, 10, 4096);
        CHECK(a.code == OK && a.max_tokens == 10, "exempt asks 10: %d %u", a.code, a.max_tokens);
        a = admit(&strict, true, entry(0, 0), busy, 4096, 0, 4096);
        CHECK(a.code == TOO_LONG, "exempt prompt = context: %d", a.code);
        a = admit(&strict, true, entry(0, 0), busy, 4095, 0, 4096);
        CHECK(a.code == OK && a.max_tokens == 1, "exempt prompt = context - 1: %d %u", a.code, a.max_tokens);

        const md_limits open = {0};
        md_inflight idle = {0};
        a = admit(&open, false, entry(0, 0), idle, 4096, 0, 4096);
        CHECK(a.code == TOO_LONG && a.msg[0], "prompt = context: %d", a.code);
        a = admit(&open, false, entry(0, 0), idle, 5000, 0, 4096);
        CHECK(a.code == TOO_LONG, "prompt > context: %d", a.code);
        a = admit(&open, false, entry(0, 0), idle, 4095, 0, 4096);
        CHECK(a.code == OK && a.max_tokens == 1 && a.reserve == 0, "prompt = context - 1: %d %u", a.code,
              a.max_tokens);

        md_limits ctx = {.max_context = 1000};
        a = admit(&ctx, false, entry(0, 0), idle, 1000, 0, 4096);
        CHECK(a.code == TOO_LONG, "prompt = max_context: %d", a.code);
        a = admit(&ctx, false, entry(0, 0), idle, 999, 0, 4096);
        CHECK(a.code == OK && a.max_tokens == 1, "prompt = max_context - 1: %d %u", a.code, a.max_tokens);
        ctx.max_context = 8192; /* above the model's: the model's holds */
        a = admit(&ctx, false, entry(0, 0), idle, 4096, 0, 4096);
        CHECK(a.code == TOO_LONG, "max_context above the context: %d", a.code);
        a = admit(&ctx, false, entry(0, 0), idle, 96, 0, 4096);
        CHECK(a.code == OK && a.max_tokens == 4000, "max_context above the context: %u", a.max_tokens);
}

static void test_admit_max_tokens(void) {
        const md_limits l = {.max_tokens = 256};
        md_inflight idle = {0};
        static const struct {
                uint32_t prompt, ask, want;
        } cases[] = {
                {100, 0, 256}, {100, 1000, 256}, {100, 10, 10}, {100, 256, 256}, {4000, 0, 96}, {4000, 200, 96},
        };
        for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
                md_admission a = admit(&l, false, entry(0, 0), idle, cases[i].prompt, cases[i].ask, 4096);
                CHECK(a.code == OK && a.max_tokens == cases[i].want && a.reserve == 0,
                      "max_tokens case %zu: %d %u, want %u", i, a.code, a.max_tokens, cases[i].want);
        }
        const md_limits open = {0};
        md_admission a = admit(&open, false, entry(0, 0), idle, 100, 0, 4096);
        CHECK(a.code == OK && a.max_tokens == 3996, "no max_tokens: %u", a.max_tokens);
}

static void test_admit_concurrency(void) {
        const md_limits l = {.max_concurrent = 2, .max_queued = 3};
        static const struct {
                uint32_t running, queued;
                int code;
        } cases[] = {
                {0, 0, OK}, {2, 2, OK}, {1, 3, OK}, {2, 3, QUOTA}, {5, 0, QUOTA}, {0, 5, QUOTA}, {9, 9, QUOTA},
        };
        for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
                md_inflight f = {.running = cases[i].running, .queued = cases[i].queued};
                md_admission a = admit(&l, false, entry(0, 0), f, 10, 0, 4096);
                CHECK(a.code == cases[i].code, "running %u queued %u: %d, want %d", cases[i].running,
                      cases[i].queued, a.code, cases[i].code);
                if (a.code)
                        CHECK(contains(a.msg, "running"), "'%s'", a.msg);
        }
        const md_limits one = {.max_concurrent = 1};
        md_admission a = admit(&one, false, entry(0, 0), (md_inflight){.running = 1}, 10, 0, 4096);
        CHECK(a.code == QUOTA, "one running of one: %d", a.code);
        a = admit(&one, false, entry(0, 0), (md_inflight){0}, 10, 0, 4096);
        CHECK(a.code == OK, "none running of one: %d", a.code);
        /* max_concurrent 0: no limit, whatever max_queued says. */
        const md_limits unlimited = {.max_concurrent = 0, .max_queued = 3};
        a = admit(&unlimited, false, entry(0, 0), (md_inflight){.running = 1000, .queued = 1000}, 10, 0, 4096);
        CHECK(a.code == OK, "unlimited concurrency refused: %s", a.msg);
}

static void test_admit_budget(void) {
        md_limits l = {.tokens_per_hour = 1000};
        md_inflight idle = {0};
        /* Exactly enough for the prompt and one token. */
        md_admission a = admit(&l, false, entry(900, 900), idle, 99, 0, 4096);
        CHECK(a.code == OK && a.max_tokens == 1 && a.reserve == 100, "just fits: %d %u %llu", a.code,
              a.max_tokens, (unsigned long long)a.reserve);
        /* One short, and the used tokens alone block: the next hour. */
        a = admit(&l, false, entry(900, 900), idle, 100, 0, 4096);
        CHECK(a.code == QUOTA && a.retry_at == HOUR_START + 3600, "used blocks: %d retry %llu", a.code,
              (unsigned long long)a.retry_at);
        CHECK(contains(a.msg, "101"), "'%s' does not say what it needs", a.msg);
        /* Only reservations block: they come back soon. */
        a = admit(&l, false, entry(500, 500), (md_inflight){.running = 1, .reserved = 450}, 99, 0, 4096);
        CHECK(a.code == QUOTA && a.retry_at == NOW + 1, "reservations block: %d retry %llu", a.code,
              (unsigned long long)a.retry_at);
        /* Used and reserved together, used alone enough to block. */
        a = admit(&l, false, entry(950, 950), (md_inflight){.running = 1, .reserved = 40}, 99, 0, 4096);
        CHECK(a.code == QUOTA && a.retry_at == HOUR_START + 3600, "both block: retry %llu",
              (unsigned long long)a.retry_at);
        /* Used tokens at or over the limit. */
        a = admit(&l, false, entry(1000, 1000), idle, 0, 0, 4096);
        CHECK(a.code == QUOTA && a.retry_at == HOUR_START + 3600, "hour spent: %d", a.code);
        a = admit(&l, false, entry(5000, 5000), idle, 10, 0, 4096);
        CHECK(a.code == QUOTA && a.retry_at == HOUR_START + 3600, "hour overspent: %d", a.code);

        /* The day's limit: the next day, also when the hour blocks too. */
        l = (md_limits){.tokens_per_hour = 1000, .tokens_per_day = 5000};
        a = admit(&l, false, entry(10, 4950), idle, 60, 0, 4096);
        CHECK(a.code == QUOTA && a.retry_at == DAY_START + 86400, "day blocks: %d retry %llu", a.code,
              (unsigned long long)a.retry_at);
        a = admit(&l, false, entry(990, 4990), idle, 19, 0, 4096);
        CHECK(a.code == QUOTA && a.retry_at == DAY_START + 86400, "hour and day block: retry %llu",
              (unsigned long long)a.retry_at);
        a = admit(&l, false, entry(990, 1000), idle, 19, 0, 4096);
        CHECK(a.code == QUOTA && a.retry_at == HOUR_START + 3600, "only the hour blocks: retry %llu",
              (unsigned long long)a.retry_at);
        md_usage_entry e = entry(990, 1000);
        CHECK(md_quota_retry_at(&l, &e, 20) == HOUR_START + 3600, "md_quota_retry_at, hour");
        e = entry(0, 4990);
        CHECK(md_quota_retry_at(&l, &e, 20) == DAY_START + 86400, "md_quota_retry_at, day");

        /* The grant: prompt + grant never exceeds what is left, and is
         * what the request reserves. */
        static const struct {
                md_limits l;
                uint64_t hour_used, day_used, reserved;
                uint32_t prompt, ask, want;
        } grants[] = {
                {{.tokens_per_hour = 1000}, 0, 0, 0, 100, 0, 900},
                {{.tokens_per_hour = 1000}, 0, 0, 300, 100, 0, 600},
                {{.tokens_per_hour = 1000}, 200, 200, 300, 100, 0, 400},
                {{.tokens_per_hour = 1000}, 0, 0, 0, 100, 50, 50},
                {{.tokens_per_hour = 1000, .tokens_per_day = 500}, 0, 0, 0, 100, 0, 400},
                {{.tokens_per_hour = 1000, .tokens_per_day = 5000}, 0, 4800, 0, 100, 0, 100},
                {{.tokens_per_day = 100000}, 0, 0, 0, 100, 0, 3996}, /* the context binds first */
                {{.tokens_per_hour = 1000, .max_tokens = 64}, 0, 0, 0, 100, 0, 64},
        };
        for (size_t i = 0; i < ARRAY_SIZE(grants); i++) {
                md_inflight f = {.running = grants[i].reserved ? 1 : 0, .reserved = grants[i].reserved};
                a = admit(&grants[i].l, false, entry(grants[i].hour_used, grants[i].day_used), f, grants[i].prompt,
                          grants[i].ask, 4096);
                CHECK(a.code == OK && a.max_tokens == grants[i].want &&
                              a.reserve == (uint64_t)grants[i].prompt + grants[i].want,
                      "grant case %zu: %d max_tokens %u reserve %llu, want %u", i, a.code, a.max_tokens,
                      (unsigned long long)a.reserve, grants[i].want);
        }

        /* No token limit: nothing to reserve. Limits of 0 are no limits. */
        const md_limits open = {0};
        a = admit(&open, false, entry(UINT64_C(1) << 40, UINT64_C(1) << 40),
                  (md_inflight){.running = 100000, .queued = 100000, .reserved = UINT64_C(1) << 40}, 100, 0, 4096);
        CHECK(a.code == OK && a.max_tokens == 3996 && a.reserve == 0 && a.retry_at == 0,
              "no limits: %d %u %llu", a.code, a.max_tokens, (unsigned long long)a.reserve);
}

/* ---- requests ---------------------------------------------------------------- */

static void test_gen_defaults(void) {
        Mixtrald__V1__Generate g = MIXTRALD__V1__GENERATE__INIT;
        g.prompt = "Hello";
        md_gen_params p, q;
        mx_error err = {0};
        int r = md_gen_params_from(&g, &p, &err);
        CHECK(r == 0, "plain prompt: %s", err.msg);
        mx_sampling d;
        mx_sampling_defaults(&d);
        CHECK(p.prompt.s && !strcmp(p.prompt.s, g.prompt) && p.prompt.len == 5 && !p.messages && p.n_messages == 0 &&
                      !p.system.s && !p.raw && !p.want_ids && p.max_tokens == 0 && p.n_stop == 0,
              "plain prompt fields");
        CHECK(p.sampling.temperature == d.temperature && p.sampling.top_k == d.top_k &&
                      p.sampling.top_p == d.top_p && p.sampling.min_p == d.min_p &&
                      p.sampling.repeat_penalty == d.repeat_penalty && p.sampling.repeat_last_n == d.repeat_last_n,
              "sampling defaults: %g %u %g %g %g", p.sampling.temperature, p.sampling.top_k, p.sampling.top_p,
              p.sampling.min_p, p.sampling.repeat_penalty);
        CHECK(md_gen_params_from(&g, &q, &err) == 0, "%s", err.msg);
        CHECK(p.sampling.seed != q.sampling.seed, "two random seeds equal: %llu",
              (unsigned long long)p.sampling.seed);
        md_gen_params_free(&p);
        md_gen_params_free(&q);

        /* Every option set. */
        char *stops[] = {"\n\n", "User:"};
        g.system = "Be brief.";
        g.has_temperature = true, g.temperature = 0;
        g.has_top_k = true, g.top_k = 7;
        g.has_top_p = true, g.top_p = 1;
        g.has_min_p = true, g.min_p = 0;
        g.has_repeat_penalty = true, g.repeat_penalty = 1.3;
        g.has_seed = true, g.seed = 42;
        g.has_max_tokens = true, g.max_tokens = 77;
        g.has_want_token_ids = true, g.want_token_ids = true;
        g.n_stop = 2, g.stop = stops;
        r = md_gen_params_from(&g, &p, &err);
        CHECK(r == 0, "every option: %s", err.msg);
        CHECK(p.sampling.temperature == 0 && p.sampling.top_k == 7 && p.sampling.top_p == 1 &&
                      p.sampling.min_p == 0 && fabsf(p.sampling.repeat_penalty - 1.3f) < 1e-6f &&
                      p.sampling.seed == 42,
              "options read");
        CHECK(p.max_tokens == 77 && p.want_ids && p.system.s && !strcmp(p.system.s, g.system) && p.n_stop == 2 &&
                      !strcmp(p.stop[1].s, stops[1]) && p.stop[1].len == strlen(stops[1]),
              "options read");
        md_gen_params_free(&p);

        /* raw without a system prompt. */
        g = (Mixtrald__V1__Generate)MIXTRALD__V1__GENERATE__INIT;
        g.prompt = "Once upon", g.has_raw = true, g.raw = true;
        CHECK(md_gen_params_from(&g, &p, &err) == 0 && p.raw, "raw prompt: %s", err.msg);
        md_gen_params_free(&p);
        /* A stop string of exactly the limit. */
        char s256[257];
        memset(s256, 'x', 256);
        s256[256] = '\0';
        char *one[] = {s256};
        g.n_stop = 1, g.stop = one;
        CHECK(md_gen_params_from(&g, &p, &err) == 0, "256-byte stop string: %s", err.msg);
        md_gen_params_free(&p);
}

static void test_gen_messages(void) {
        Mixtrald__V1__ChatMessage m[4] = {
                MIXTRALD__V1__CHAT_MESSAGE__INIT, MIXTRALD__V1__CHAT_MESSAGE__INIT,
                MIXTRALD__V1__CHAT_MESSAGE__INIT, MIXTRALD__V1__CHAT_MESSAGE__INIT};
        m[0].role = "system", m[0].content = "Be brief.";
        m[1].role = "user", m[1].content = "Hi";
        m[2].role = "assistant", m[2].content = "Hello! 👋";
        m[3].role = "user", m[3].content = "Ünïcödé?";
        Mixtrald__V1__ChatMessage *mp[] = {&m[0], &m[1], &m[2], &m[3]};
        Mixtrald__V1__Generate g = MIXTRALD__V1__GENERATE__INIT;
        g.n_messages = 4, g.messages = mp, g.system = "Answer in English.";
        md_gen_params p;
        mx_error err = {0};
        int r = md_gen_params_from(&g, &p, &err);
        CHECK(r == 0, "conversation: %s", err.msg);
        CHECK(!p.prompt.s && p.n_messages == 4 && p.system.s && !strcmp(p.system.s, g.system), "conversation fields");
        if (r == 0 && p.n_messages == 4) {
                static const mx_role roles[] = {MX_ROLE_SYSTEM, MX_ROLE_USER, MX_ROLE_ASSISTANT, MX_ROLE_USER};
                for (size_t i = 0; i < 4; i++)
                        CHECK(p.messages[i].role == roles[i] && !strcmp(p.messages[i].content, m[i].content) &&
                                      p.messages[i].len == strlen(m[i].content),
                              "message %zu", i);
        }
        md_gen_params_free(&p);
}

/* Each bad request starts from a valid prompt and breaks one thing. */
typedef struct bad_case {
        const char *name, *needle;
        void (*set)(Mixtrald__V1__Generate *g);
} bad_case;

static char *stop_list[17];
static char stop_257[258];
static Mixtrald__V1__ChatMessage bad_msg = MIXTRALD__V1__CHAT_MESSAGE__INIT;
static Mixtrald__V1__ChatMessage *bad_msgs[] = {&bad_msg};

static void set_temperature(Mixtrald__V1__Generate *g, double v) {
        g->has_temperature = true, g->temperature = v;
}
static void t_nan(Mixtrald__V1__Generate *g) { set_temperature(g, NAN); }
static void t_inf(Mixtrald__V1__Generate *g) { set_temperature(g, INFINITY); }
static void t_ninf(Mixtrald__V1__Generate *g) { set_temperature(g, -INFINITY); }
static void t_neg(Mixtrald__V1__Generate *g) { set_temperature(g, -0.5); }
static void t_huge(Mixtrald__V1__Generate *g) { set_temperature(g, 1e300); }
static void t_big(Mixtrald__V1__Generate *g) { set_temperature(g, 101); }
static void top_p_0(Mixtrald__V1__Generate *g) { g->has_top_p = true, g->top_p = 0; }
static void top_p_15(Mixtrald__V1__Generate *g) { g->has_top_p = true, g->top_p = 1.5; }
static void top_p_nan(Mixtrald__V1__Generate *g) { g->has_top_p = true, g->top_p = NAN; }
static void min_p_neg(Mixtrald__V1__Generate *g) { g->has_min_p = true, g->min_p = -0.1; }
static void min_p_big(Mixtrald__V1__Generate *g) { g->has_min_p = true, g->min_p = 1.1; }
static void rp_0(Mixtrald__V1__Generate *g) { g->has_repeat_penalty = true, g->repeat_penalty = 0; }
static void rp_inf(Mixtrald__V1__Generate *g) { g->has_repeat_penalty = true, g->repeat_penalty = INFINITY; }
static void prompt_utf8(Mixtrald__V1__Generate *g) { g->prompt = "ok \xff no"; }
static void prompt_surrogate(Mixtrald__V1__Generate *g) { g->prompt = "\xed\xa0\x80"; }
static void prompt_overlong(Mixtrald__V1__Generate *g) { g->prompt = "\xc0\xaf"; }
static void prompt_truncated(Mixtrald__V1__Generate *g) { g->prompt = "abc\xe6\x97"; }
static void system_utf8(Mixtrald__V1__Generate *g) { g->system = "\xed\xbf\xbf"; }
static void prompt_empty(Mixtrald__V1__Generate *g) { g->prompt = ""; }
static void prompt_none(Mixtrald__V1__Generate *g) { g->prompt = NULL; }
static void both(Mixtrald__V1__Generate *g) {
        bad_msg.role = "user", bad_msg.content = "Hi";
        g->n_messages = 1, g->messages = bad_msgs;
}
static void raw_messages(Mixtrald__V1__Generate *g) {
        both(g);
        g->prompt = NULL, g->has_raw = true, g->raw = true;
}
static void raw_system(Mixtrald__V1__Generate *g) {
        g->has_raw = true, g->raw = true, g->system = "Be brief.";
}
static void msg_role(Mixtrald__V1__Generate *g) {
        both(g);
        g->prompt = NULL, bad_msg.role = "robot";
}
static void msg_no_role(Mixtrald__V1__Generate *g) {
        both(g);
        g->prompt = NULL, bad_msg.role = NULL;
}
static void msg_no_content(Mixtrald__V1__Generate *g) {
        both(g);
        g->prompt = NULL, bad_msg.content = NULL;
}
static void msg_utf8(Mixtrald__V1__Generate *g) {
        both(g);
        g->prompt = NULL, bad_msg.content = "\xed\xa0\xbd\xed\xb8\x80"; /* a surrogate pair in CESU-8 */
}
static void stop_empty(Mixtrald__V1__Generate *g) {
        stop_list[0] = "";
        g->n_stop = 1, g->stop = stop_list;
}
static void stop_17(Mixtrald__V1__Generate *g) {
        for (size_t i = 0; i < 17; i++)
                stop_list[i] = "x";
        g->n_stop = 17, g->stop = stop_list;
}
static void stop_long(Mixtrald__V1__Generate *g) {
        memset(stop_257, 'y', 257);
        stop_257[257] = '\0';
        stop_list[0] = "ok", stop_list[1] = stop_257;
        g->n_stop = 2, g->stop = stop_list;
}
static void stop_utf8(Mixtrald__V1__Generate *g) {
        stop_list[0] = "\xed\xa0\x80";
        g->n_stop = 1, g->stop = stop_list;
}

static void test_gen_bad(void) {
        static const bad_case cases[] = {
                {"temperature NaN", "temperature", t_nan},
                {"temperature inf", "temperature", t_inf},
                {"temperature -inf", "temperature", t_ninf},
                {"temperature -0.5", "temperature", t_neg},
                {"temperature 1e300", "temperature", t_huge},
                {"temperature 101", "temperature", t_big},
                {"top_p 0", "top_p", top_p_0},
                {"top_p 1.5", "top_p", top_p_15},
                {"top_p NaN", "top_p", top_p_nan},
                {"min_p -0.1", "min_p", min_p_neg},
                {"min_p 1.1", "min_p", min_p_big},
                {"repeat_penalty 0", "repeat_penalty", rp_0},
                {"repeat_penalty inf", "repeat_penalty", rp_inf},
                {"prompt not UTF-8", "prompt", prompt_utf8},
                {"prompt surrogate", "prompt", prompt_surrogate},
                {"prompt overlong", "prompt", prompt_overlong},
                {"prompt truncated", "prompt", prompt_truncated},
                {"system surrogate", "system", system_utf8},
                {"empty prompt", "prompt", prompt_empty},
                {"no prompt, no messages", "prompt or messages", prompt_none},
                {"prompt and messages", "prompt or messages", both},
                {"raw with messages", "raw", raw_messages},
                {"raw with system", "system", raw_system},
                {"unknown role", "role", msg_role},
                {"no role", "role", msg_no_role},
                {"no content", "content", msg_no_content},
                {"message surrogates", "message", msg_utf8},
                {"empty stop", "stop string", stop_empty},
                {"17 stops", "stop strings", stop_17},
                {"257-byte stop", "stop string 2", stop_long},
                {"stop surrogate", "stop string", stop_utf8},
        };
        for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
                Mixtrald__V1__Generate g = MIXTRALD__V1__GENERATE__INIT;
                g.prompt = "Hello";
                bad_msg = (Mixtrald__V1__ChatMessage)MIXTRALD__V1__CHAT_MESSAGE__INIT;
                cases[i].set(&g);
                md_gen_params p;
                mx_error err = {0};
                int r = md_gen_params_from(&g, &p, &err);
                CHECK(r < 0, "%s accepted", cases[i].name);
                CHECK(r < 0 && err.code == r, "%s: code %d vs %d", cases[i].name, err.code, r);
                CHECK(contains(err.msg, cases[i].needle), "%s: '%s' does not name %s", cases[i].name, err.msg,
                      cases[i].needle);
                md_gen_params_free(&p);
        }
}

static void test_request_unpack(void) {
        static const uint8_t garbage[][8] = {
                {0xff, 0xff, 0xff, 0xff},        /* a field number past the limit */
                {0x12, 0x0a, 0x0a, 0x01, 'x'},   /* generate: 10 bytes promised, 3 there */
                {0x08},                          /* tag without its varint */
                {0x12, 0x02, 0x0a, 0x05},        /* prompt longer than its message */
                {0x0f, 0x00},                    /* wire type 7 */
        };
        static const size_t garbage_len[] = {4, 5, 1, 4, 2};
        for (size_t i = 0; i < ARRAY_SIZE(garbage); i++) {
                Mixtrald__V1__Request *r = md_request_unpack(garbage[i], garbage_len[i]);
                CHECK(r == NULL, "garbage %zu unpacked", i);
                md_request_free(r);
        }
        md_request_free(NULL);

        Mixtrald__V1__Generate g = MIXTRALD__V1__GENERATE__INIT;
        g.prompt = "Hello there";
        g.has_seed = true, g.seed = UINT64_MAX;
        Mixtrald__V1__Request req = MIXTRALD__V1__REQUEST__INIT;
        req.has_tag = true, req.tag = 7;
        req.kind_case = MIXTRALD__V1__REQUEST__KIND_GENERATE, req.generate = &g;
        uint8_t *frame;
        size_t len, hdr, body;
        CHECK(mxp_frame_pack(&req.base, &frame, &len) == 0, "pack");
        CHECK(mxp_frame_find(frame, len, 1024, &hdr, &body) == 1 && hdr + body == len, "packed frame found");
        Mixtrald__V1__Request *u = md_request_unpack(frame + hdr, body);
        CHECK(u && u->has_tag && u->tag == 7 && u->kind_case == MIXTRALD__V1__REQUEST__KIND_GENERATE &&
                      u->generate && !strcmp(u->generate->prompt, "Hello there") && u->generate->has_seed &&
                      u->generate->seed == UINT64_MAX,
              "generate round trip");
        md_request_free(u);
        free(frame);

        Mixtrald__V1__Cancel cancel = MIXTRALD__V1__CANCEL__INIT;
        cancel.has_request_id = true, cancel.request_id = 99;
        req = (Mixtrald__V1__Request)MIXTRALD__V1__REQUEST__INIT;
        req.kind_case = MIXTRALD__V1__REQUEST__KIND_CANCEL, req.cancel = &cancel;
        CHECK(mxp_frame_pack(&req.base, &frame, &len) == 0, "pack");
        u = md_request_unpack(frame + 1, len - 1);
        CHECK(u && !u->has_tag && u->kind_case == MIXTRALD__V1__REQUEST__KIND_CANCEL && u->cancel &&
                      u->cancel->request_id == 99,
              "cancel round trip");
        md_request_free(u);
        free(frame);

        /* An empty body is a Request with nothing in it: the caller refuses it. */
        u = md_request_unpack((const uint8_t *)"", 0);
        CHECK(u && u->kind_case == MIXTRALD__V1__REQUEST__KIND__NOT_SET, "empty request");
        md_request_free(u);
}

/* Text with a NUL byte inside, which protobuf-c would cut short, found in
 * the frame by field: the prompt, a message's role or content, a stop
 * string; and none in a clean frame or in a non-text field. */
static void test_nul_fields(void) {
        static const struct {
                uint8_t body[24];
                size_t len;
                const char *field;
        } cases[] = {
                /* generate{prompt "hi\0x"} */
                {{0x12, 0x06, 0x0a, 0x04, 'h', 'i', 0, 'x'}, 8, "prompt"},
                /* generate{messages{role "us\0r"}} */
                {{0x12, 0x08, 0x12, 0x06, 0x0a, 0x04, 'u', 's', 0, 'r'}, 10, "role"},
                /* generate{messages{content "\0"}} */
                {{0x12, 0x05, 0x12, 0x03, 0x12, 0x01, 0}, 7, "content"},
                /* generate{stop "a\0"} */
                {{0x12, 0x04, 0x62, 0x02, 'a', 0}, 6, "stop"},
                /* generate{system "\0"} */
                {{0x12, 0x03, 0x1a, 0x01, 0}, 5, "system"},
                /* generate{prompt "fine", seed 0} (a zero byte outside text) */
                {{0x12, 0x08, 0x0a, 0x04, 'f', 'i', 'n', 'e', 0x50, 0x00}, 10, NULL},
                /* tag 0 */
                {{0x08, 0x00}, 2, NULL},
        };
        for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
                Mixtrald__V1__Request *u = md_request_unpack(cases[i].body, cases[i].len);
                CHECK(u != NULL, "case %zu does not unpack", i);
                md_request_free(u);
                const char *f = md_request_nul_field(cases[i].body, cases[i].len);
                CHECK(cases[i].field ? f && !strcmp(f, cases[i].field) : !f, "case %zu: '%s', not '%s'", i,
                      f ? f : "(none)", cases[i].field ? cases[i].field : "(none)");
        }
}

/* ---- framing ----------------------------------------------------------------- */

static int find(const uint8_t *buf, size_t n, size_t max, size_t *hdr, size_t *body) {
        *hdr = *body = 12345;
        return mxp_frame_find(buf, n, max, hdr, body);
}

static void test_frame_find(void) {
        size_t hdr, body;
        const uint8_t abc[] = {3, 'a', 'b', 'c', 2, 'x'};
        CHECK(find(abc, 4, 100, &hdr, &body) == 1 && hdr == 1 && body == 3, "complete frame");
        CHECK(find(abc, 6, 100, &hdr, &body) == 1 && hdr == 1 && body == 3, "frame with more behind it");
        CHECK(find(abc + 4, 2, 100, &hdr, &body) == 0, "second frame partial");
        CHECK(find(abc, 3, 100, &hdr, &body) == 0 && hdr == 12345, "partial body");
        CHECK(find(abc, 1, 100, &hdr, &body) == 0, "header only");
        CHECK(find(abc, 0, 100, &hdr, &body) == 0, "nothing");

        const uint8_t zero[] = {0x00};
        CHECK(find(zero, 1, 100, &hdr, &body) == 1 && hdr == 1 && body == 0, "zero length");
        const uint8_t zero2[] = {0x80, 0x00};
        CHECK(find(zero2, 2, 100, &hdr, &body) == 1 && hdr == 2 && body == 0, "zero length, two bytes");

        /* 200 = 0xc8 0x01 */
        uint8_t big[2 + 201];
        memset(big, 'z', sizeof(big));
        big[0] = 0xc8, big[1] = 0x01;
        CHECK(find(big, 1, 1000, &hdr, &body) == 0, "partial header");
        CHECK(find(big, 2, 1000, &hdr, &body) == 0, "header, no body");
        CHECK(find(big, 201, 1000, &hdr, &body) == 0, "body one short");
        CHECK(find(big, 202, 200, &hdr, &body) == 1 && hdr == 2 && body == 200, "exactly max");
        big[0] = 0xc9; /* 201 */
        CHECK(find(big, 203, 200, &hdr, &body) == -EMSGSIZE, "max + 1");
        CHECK(find(big, 2, 200, &hdr, &body) == -EMSGSIZE, "max + 1 before the body");

        /* The first bytes of a long length already exceed the limit. */
        const uint8_t longv[] = {0xff, 0xff, 0xff};
        CHECK(find(longv, 3, 65536, &hdr, &body) == -EMSGSIZE, "long varint, 3 bytes of it");
        CHECK(find(longv, 2, 1000, &hdr, &body) == -EMSGSIZE, "long varint, 2 bytes of it");
        CHECK(find(longv, 1, 1000, &hdr, &body) == 0, "long varint, 1 byte: not yet known");
        /* 1 GiB + 1 = 0x81 0x80 0x80 0x80 0x04 */
        const uint8_t gib[] = {0x81, 0x80, 0x80, 0x80, 0x04};
        CHECK(find(gib, 4, 65536, &hdr, &body) == 0, "1 GiB, 4 bytes: still small");
        CHECK(find(gib, 5, 65536, &hdr, &body) == -EMSGSIZE, "1 GiB");

        /* Ten bytes whose value does not fit 64 bits, and eleven. */
        uint8_t over[11];
        memset(over, 0x80, sizeof(over));
        over[9] = 0x02;
        CHECK(find(over, 10, 65536, &hdr, &body) == -EBADMSG, "10-byte varint overflow");
        CHECK(find(over, 10, SIZE_MAX, &hdr, &body) == -EBADMSG, "10-byte varint overflow, no max");
        over[9] = 0x80, over[10] = 0x00;
        CHECK(find(over, 11, 65536, &hdr, &body) == -EBADMSG, "11-byte varint");
        CHECK(find(over, 9, 65536, &hdr, &body) == 0, "9 bytes of a zero varint: not yet known");
        /* 2^63 in ten bytes is legal and too big. */
        over[9] = 0x01;
        CHECK(find(over, 10, 65536, &hdr, &body) == -EMSGSIZE, "2^63");
}

int main(void) {
        if (!mkdtemp(tmpdir)) {
                perror("mkdtemp");
                return 1;
        }
        test_config_full();
        test_config_errors();
        test_config_files();
        test_config_set_daemon();
        test_limits();
        test_group_precedence();
        test_usage_roundtrip();
        test_usage_corrupt();
        test_admit_exempt_and_context();
        test_admit_max_tokens();
        test_admit_concurrency();
        test_admit_budget();
        test_gen_defaults();
        test_gen_messages();
        test_gen_bad();
        test_request_unpack();
        test_nul_fields();
        test_frame_find();
        remove_tree(tmpdir);
        return test_result();
}
