/* Per-uid token usage in the current hour and day, kept in STATE/usage so
 * that neither a restart nor kill -9 loses it: each save writes a temp file,
 * fsyncs it, renames it over the old one and fsyncs the directory.
 *
 * The file is text, one uid per line: "uid hour_start hour_used day_start
 * day_used", after a "mixtrald-usage 1" header line. */
#include <fcntl.h>
#include <inttypes.h>
#include <string.h>
#include <sys/stat.h>

#include "mx_common.h"
#include "mixtrald.h"

#define HEADER "mixtrald-usage 1\n"

void md_usage_free(md_usage *u) {
        free(u->v);
        free(u->path);
        *u = (md_usage){0};
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

/* One unsigned decimal field and the separator after it; nothing scanf
 * would also take (signs, spaces, overflow). */
static bool field(const char **p, char sep, uint64_t max, uint64_t *out) {
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
        bool ok = field(&line, ' ', UINT32_MAX, &uid) && field(&line, ' ', UINT64_MAX, &e->hour_start) &&
                  field(&line, ' ', UINT64_MAX, &e->hour_used) && field(&line, ' ', UINT64_MAX, &e->day_start) &&
                  field(&line, '\n', UINT64_MAX, &e->day_used) && *line == '\0';
        e->uid = (uint32_t)uid;
        return ok;
}

static int parse(md_usage *u, FILE *f, mx_error *err) {
        char line[256];
        if (!fgets(line, sizeof(line), f) || strcmp(line, HEADER))
                return mx_error_set(err, -EBADMSG, "%s: not a mixtrald usage file", u->path);
        for (unsigned n = 2; fgets(line, sizeof(line), f); n++) {
                md_usage_entry e;
                if (!parse_line(line, &e) || find(u, e.uid))
                        return mx_error_set(err, -EBADMSG, "%s:%u: corrupt line", u->path, n);
                md_usage_entry *p = add(u, e.uid);
                if (!p)
                        return mx_error_set(err, -ENOMEM, "out of memory");
                *p = e;
        }
        return ferror(f) ? mx_error_set(err, -EIO, "%s: cannot read it", u->path) : 0;
}

int md_usage_open(md_usage *u, const char *state_dir, mx_error *err) {
        *u = (md_usage){0};
        if (mkdir(state_dir, 0700) < 0 && errno != EEXIST)
                return mx_error_set(err, -errno, "cannot create %s: %s", state_dir, strerror(errno));
        if (asprintf(&u->path, "%s/usage", state_dir) < 0) {
                u->path = NULL;
                return mx_error_set(err, -ENOMEM, "out of memory");
        }
        _cleanup_fclose_ FILE *f = fopen(u->path, "re");
        if (!f)
                return errno == ENOENT ? 0 : mx_error_set(err, -errno, "%s: %s", u->path, strerror(errno));
        return parse(u, f, err);
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

static int write_all(int fd, const md_usage *u) {
        _cleanup_fclose_ FILE *f = fdopen(dup(fd), "w");
        if (!f)
                return -errno;
        fputs(HEADER, f);
        for (size_t i = 0; i < u->n; i++) {
                const md_usage_entry *e = &u->v[i];
                if (e->hour_used || e->day_used)
                        fprintf(f, "%" PRIu32 " %" PRIu64 " %" PRIu64 " %" PRIu64 " %" PRIu64 "\n", e->uid,
                                e->hour_start, e->hour_used, e->day_start, e->day_used);
        }
        int r = fflush(f) == 0 && !ferror(f) ? 0 : -EIO;
        return r;
}

int md_usage_save(const md_usage *u, mx_error *err) {
        _cleanup_free_ char *tmp = NULL, *dir = strdup(u->path);
        if (!dir || asprintf(&tmp, "%s.tmp", u->path) < 0)
                return mx_error_set(err, -ENOMEM, "out of memory");
        *strrchr(dir, '/') = '\0';
        /* A fresh file, so that a leftover's looser mode does not carry over. */
        unlink(tmp);
        _cleanup_close_ int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
        if (fd < 0)
                return mx_error_set(err, -errno, "%s: %s", tmp, strerror(errno));
        int r = write_all(fd, u);
        if (r == 0 && fsync(fd) < 0)
                r = -errno;
        if (r == 0 && rename(tmp, u->path) < 0)
                r = -errno;
        if (r < 0) {
                unlink(tmp);
                return mx_error_set(err, r, "cannot save %s: %s", u->path, strerror(-r));
        }
        _cleanup_close_ int dfd = open(*dir ? dir : "/", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (dfd < 0 || fsync(dfd) < 0)
                return mx_error_set(err, -errno, "cannot sync %s: %s", dir, strerror(errno));
        return 0;
}
