/* Per-uid token usage in the current hour and day, kept in STATE/usage so
 * that neither a restart nor kill -9 loses it: each save writes a temp file,
 * fsyncs it, renames it over the old one and fsyncs the directory.
 *
 * The file is text, one uid per line: "uid hour_start hour_used day_start
 * day_used", after a "mixtrald-usage 1" header line.
 *
 * The state directory is the daemon's alone: it must belong to the user
 * the daemon runs as and be writable by nobody else (else any user could
 * rewrite everyone's usage), and STATE/lock, held with flock while the
 * daemon runs, keeps a second daemon out (two would each count their own
 * usage, the last writer winning: quotas doubled). */
#include <fcntl.h>
#include <inttypes.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>

#include "mx_common.h"
#include "mixtrald.h"

#define KIND "usage" /* STATE/usage, which starts "mixtrald-usage 1" */

void md_usage_free(md_usage *u) {
        free(u->v);
        free(u->path);
        if (u->lock_fd >= 0)
                close(u->lock_fd); /* (and the lock with it) */
        *u = (md_usage){.lock_fd = -1};
}

static md_usage_entry *find(md_usage *u, uint32_t uid) {
        for (size_t i = 0; i < u->n; i++)
                if (u->v[i].uid == uid)
                        return &u->v[i];
        return NULL;
}

static md_usage_entry *add(md_usage *u, uint32_t uid) {
        if (mx_grow((void **)&u->v, &u->cap, u->n + 1, sizeof(*u->v)) < 0)
                return NULL;
        md_usage_entry *e = &u->v[u->n++];
        *e = (md_usage_entry){.uid = uid};
        return e;
}

bool md_field_u64(const char **p, char sep, uint64_t max, uint64_t *out) {
        const char *s = *p;
        uint64_t v = 0;
        if (*s < '0' || *s > '9')
                return false;
        for (; *s >= '0' && *s <= '9'; s++)
                if (!mx_mul_u64(v, 10, &v) || !mx_add_u64(v, (uint64_t)(*s - '0'), &v))
                        return false;
        if (*s != sep || v > max)
                return false;
        *p = s + 1;
        *out = v;
        return true;
}

static bool parse_line(const char *line, md_usage_entry *e) {
        uint64_t uid;
        bool ok = md_field_u64(&line, ' ', UINT32_MAX, &uid) && md_field_u64(&line, ' ', UINT64_MAX, &e->hour_start) &&
                  md_field_u64(&line, ' ', UINT64_MAX, &e->hour_used) &&
                  md_field_u64(&line, ' ', UINT64_MAX, &e->day_start) &&
                  md_field_u64(&line, '\n', UINT64_MAX, &e->day_used) && *line == '\0';
        e->uid = (uint32_t)uid;
        return ok;
}

/* text[0..len], NUL-terminated, changed and restored as it goes. */
static int parse_state(const char *path, char *text, size_t len, const char *kind,
                       int (*line_fn)(const char *line, void *arg), void *arg, mx_error *err) {
        char header[64];
        int n_header = snprintf(header, sizeof(header), "mixtrald-%s 1\n", kind);
        if (strlen(text) != len)
                return mx_error_set(err, -EBADMSG, "%s: not a mixtrald %s file (a NUL byte)", path, kind);
        if (strncmp(text, header, (size_t)n_header))
                return mx_error_set(err, -EBADMSG, "%s: not a mixtrald %s file", path, kind);
        char *line = text + n_header, *next;
        for (unsigned n = 2; *line; n++, line = next) {
                next = strchr(line, '\n');
                next = next ? next + 1 : line + strlen(line);
                char saved = *next;
                *next = '\0';
                int r = line_fn(line, arg);
                *next = saved;
                if (r == -ENOMEM)
                        return mx_error_set(err, r, "out of memory");
                if (r < 0)
                        return mx_error_set(err, -EBADMSG, "%s:%u: corrupt line", path, n);
        }
        return 0;
}

static int usage_line(const char *line, void *arg) {
        md_usage *u = arg;
        md_usage_entry e, *p;
        if (!parse_line(line, &e) || find(u, e.uid))
                return -EBADMSG;
        if (!(p = add(u, e.uid)))
                return -ENOMEM;
        *p = e;
        return 0;
}

/* mkdir -p, each new directory 0700 (as the XDG base directory spec asks
 * of the directories under a home). */
static int make_dirs(const char *path) {
        _cleanup_free_ char *p = strdup(path);
        if (!p)
                return -ENOMEM;
        for (char *s = p + 1;; s++) {
                if (*s && *s != '/')
                        continue;
                char c = *s;
                *s = '\0';
                if (mkdir(p, 0700) < 0 && errno != EEXIST)
                        return -errno;
                if (!(*s = c))
                        return 0;
        }
}

static int check_dir(const char *dir, mx_error *err);

int md_state_dir_check(const char *dir, mx_error *err) {
        struct stat st;
        if (stat(dir, &st) < 0 && errno == ENOENT)
                return 0; /* (made at start) */
        return check_dir(dir, err);
}

static int check_dir(const char *dir, mx_error *err) {
        struct stat st;
        if (stat(dir, &st) < 0)
                return mx_error_set(err, -errno, "%s: %s", dir, strerror(errno));
        if (!S_ISDIR(st.st_mode))
                return mx_error_set(err, -ENOTDIR, "%s: not a directory", dir);
        if (st.st_uid != geteuid())
                return mx_error_set(err, -EPERM, "%s belongs to uid %u, not to uid %u that the daemon runs as: "
                                    "anyone who owns it could rewrite the usage", dir, (unsigned)st.st_uid,
                                    (unsigned)geteuid());
        if (st.st_mode & 022)
                return mx_error_set(err, -EPERM, "%s is writable by %s (mode %04o): any such user could rewrite "
                                    "everyone's usage; chmod go-w it", dir, st.st_mode & 002 ? "everyone" : "its group",
                                    (unsigned)(st.st_mode & 07777));
        return 0;
}

/* STATE/lock, with our pid in it for whoever finds it taken. */
static int take_lock(md_usage *u, const char *dir, mx_error *err) {
        _cleanup_free_ char *path = NULL;
        if (asprintf(&path, "%s/lock", dir) < 0)
                return mx_error_set(err, -ENOMEM, "out of memory");
        _cleanup_close_ int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK, 0600);
        if (fd < 0)
                return mx_error_set(err, -errno, "%s: %s", path, strerror(errno));
        struct stat st;
        if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode))
                return mx_error_set(err, -EINVAL, "%s: not a regular file", path);
        if (flock(fd, LOCK_EX | LOCK_NB) < 0) {
                char pid[32] = "";
                ssize_t k = pread(fd, pid, sizeof(pid) - 1, 0);
                pid[k > 0 ? k : 0] = '\0';
                pid[strcspn(pid, "\n")] = '\0';
                return mx_error_set(err, -EBUSY, "another mixtrald%s%s%s uses the state directory %s",
                                    *pid ? " (pid " : "", pid, *pid ? ")" : "", dir);
        }
        char line[32];
        int n = snprintf(line, sizeof(line), "%d\n", (int)getpid());
        if (ftruncate(fd, 0) < 0 || pwrite(fd, line, (size_t)n, 0) != n)
                return mx_error_set(err, -errno, "%s: %s", path, strerror(errno));
        u->lock_fd = MX_TAKE_FD(fd);
        return 0;
}

int md_usage_open(md_usage *u, const char *state_dir, mx_error *err) {
        *u = (md_usage){.lock_fd = -1};
        int r = make_dirs(state_dir);
        if (r < 0)
                return mx_error_set(err, r, "cannot create %s: %s", state_dir, strerror(-r));
        if ((r = check_dir(state_dir, err)) < 0 || (r = take_lock(u, state_dir, err)) < 0)
                return r;
        return md_state_read(state_dir, KIND, 64u << 20, &u->path, usage_line, u, err);
}

int md_state_read(const char *dir, const char *kind, size_t max, char **path,
                  int (*line_fn)(const char *line, void *arg), void *arg, mx_error *err) {
        if (asprintf(path, "%s/%s", dir, kind) < 0) {
                *path = NULL;
                return mx_error_set(err, -ENOMEM, "out of memory");
        }
        /* Read whole, refusing a FIFO or device unopened. */
        _cleanup_free_ char *text = NULL;
        size_t len;
        mx_error why = {0};
        int r = mx_read_file(*path, max, &text, &len, &why);
        if (r == -ENOENT)
                return 0;
        if (r < 0)
                return mx_error_set(err, r, "%s", why.msg);
        return parse_state(*path, text, len, kind, line_fn, arg, err);
}

md_usage_entry *md_usage_get(md_usage *u, uint32_t uid, uint64_t now) {
        md_usage_entry *e = find(u, uid);
        if (!e && !(e = add(u, uid)))
                return NULL;
        uint64_t hour = now - now % 3600, day = now - now % 86400;
        if (e->hour_start != hour)
                e->hour_start = hour, e->hour_used = 0;
        if (e->day_start != day)
                e->day_start = day, e->day_used = 0;
        return e;
}

int md_usage_charge(md_usage *u, uint32_t uid, uint64_t tokens, uint64_t now) {
        md_usage_entry *e = md_usage_get(u, uid, now);
        if (!e)
                return -ENOMEM;
        e->hour_used += tokens;
        e->day_used += tokens;
        return 0;
}

static int write_usage(FILE *f, const void *arg) {
        const md_usage *u = arg;
        fputs("mixtrald-" KIND " 1\n", f);
        for (size_t i = 0; i < u->n; i++) {
                const md_usage_entry *e = &u->v[i];
                if (e->hour_used || e->day_used)
                        fprintf(f, "%" PRIu32 " %" PRIu64 " %" PRIu64 " %" PRIu64 " %" PRIu64 "\n", e->uid,
                                e->hour_start, e->hour_used, e->day_start, e->day_used);
        }
        return 0;
}

int md_usage_save(const md_usage *u, mx_error *err) {
        return md_state_write(u->path, write_usage, u, err);
}

static int write_all(int fd, int (*body)(FILE *f, const void *arg), const void *arg) {
        _cleanup_fclose_ FILE *f = fdopen(dup(fd), "w");
        if (!f)
                return -errno;
        int r = body(f, arg);
        if (r == 0 && (fflush(f) != 0 || ferror(f)))
                r = -EIO;
        return r;
}

int md_state_write(const char *path, int (*body)(FILE *f, const void *arg), const void *arg, mx_error *err) {
        _cleanup_free_ char *tmp = NULL, *dir = strdup(path);
        if (!dir || asprintf(&tmp, "%s.tmp", path) < 0)
                return mx_error_set(err, -ENOMEM, "out of memory");
        *strrchr(dir, '/') = '\0';
        /* A fresh file, so that a leftover's looser mode does not carry over. */
        unlink(tmp);
        _cleanup_close_ int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
        if (fd < 0)
                return mx_error_set(err, -errno, "%s: %s", tmp, strerror(errno));
        int r = write_all(fd, body, arg);
        if (r == 0 && fsync(fd) < 0)
                r = -errno;
        if (r == 0 && rename(tmp, path) < 0)
                r = -errno;
        if (r < 0) {
                unlink(tmp);
                return mx_error_set(err, r, "cannot save %s: %s", path, strerror(-r));
        }
        _cleanup_close_ int dfd = open(*dir ? dir : "/", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (dfd < 0 || fsync(dfd) < 0)
                return mx_error_set(err, -errno, "cannot sync %s: %s", dir, strerror(errno));
        return 0;
}
