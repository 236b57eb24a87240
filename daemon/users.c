/* Who a uid is, for its limits, and a cache of the answer.
 *
 * A user's groups come from the passwd database: its primary group and
 * getgrouplist's supplementary ones, never the peer's effective gid, so a
 * process that ran `sg othergroup` is limited exactly like any other of
 * the same user, on the socket and on D-Bus alike.
 *
 * Looking a user up reads /etc/passwd and /etc/group (or asks NSS): fine
 * once per request, not once per frame of a flood. So limits are kept per
 * uid for 30 s, and forgotten on reload; a group change reaches a running
 * daemon within that time. Main thread only. */
#include <grp.h>
#include <pwd.h>
#include <string.h>

#include "mx_common.h"
#include "mixtrald.h"

#define KEEP_SECONDS 30.0
#define MAX_KEPT 4096

void md_identity_free(md_identity *id) {
        free(id->name);
        free(id->groups);
        *id = (md_identity){0};
}

/* getpwuid_r with a buffer that grows until a big entry fits. */
static int passwd_of(uint32_t uid, char **name, gid_t *gid) {
        size_t size = 4096;
        for (int tries = 0; tries < 8; tries++, size *= 4) {
                _cleanup_free_ char *buf = malloc(size);
                struct passwd pw, *pwp = NULL;
                if (!buf)
                        return -ENOMEM;
                int r = getpwuid_r(uid, &pw, buf, size, &pwp);
                if (r == ERANGE)
                        continue;
                if (r || !pwp)
                        return -ENOENT;
                *gid = pwp->pw_gid;
                return (*name = strdup(pwp->pw_name)) ? 0 : -ENOMEM;
        }
        return -ENOENT;
}

/* Every group of the user, however many (getgrouplist says how many it
 * needs); the primary group first. */
static int groups_of(const char *user, gid_t gid, gid_t **out, int *n) {
        int want = 64;
        for (int tries = 0; tries < 4; tries++) {
                gid_t *g = calloc((size_t)want, sizeof(gid_t));
                int have = want;
                if (!g)
                        return -ENOMEM;
                if (getgrouplist(user, gid, g, &have) >= 0) {
                        *out = g, *n = have;
                        return 0;
                }
                free(g);
                if (have <= want)
                        break;
                want = have;
        }
        return -ENOENT;
}

int md_identity_lookup(uint32_t uid, md_identity *out) {
        *out = (md_identity){.uid = uid};
        gid_t gid;
        int r = passwd_of(uid, &out->name, &gid);
        if (r == -ENOENT)
                return 0; /* a uid without an entry: no name, no groups */
        if (r == 0 && groups_of(out->name, gid, &out->groups, &out->n_groups) < 0) {
                /* At least the primary group. */
                if (!(out->groups = malloc(sizeof(gid_t))))
                        r = -ENOMEM;
                else
                        out->groups[0] = gid, out->n_groups = 1;
        }
        if (r < 0)
                md_identity_free(out);
        return r;
}

typedef struct kept {
        uint32_t uid;
        double at;
        md_limits limits;
        bool exempt;
} kept;

struct md_users {
        kept *v;     /* [n], room for cap */
        size_t n, cap;
};

int md_users_new(md_users **out) {
        return (*out = calloc(1, sizeof(md_users))) ? 0 : -ENOMEM;
}

void md_users_free(md_users *u) {
        if (u)
                free(u->v);
        free(u);
}

void md_users_flush(md_users *u) {
        u->n = 0;
}

static kept *find(md_users *u, uint32_t uid, double now) {
        for (size_t i = 0; i < u->n; i++)
                if (u->v[i].uid == uid) {
                        if (now - u->v[i].at < KEEP_SECONDS)
                                return &u->v[i];
                        u->v[i] = u->v[--u->n]; /* stale */
                        return NULL;
                }
        return NULL;
}

void md_users_limits(md_users *u, const md_config *c, uint32_t uid, md_limits *out, bool *exempt) {
        double now = md_now();
        kept *k = find(u, uid, now);
        if (k) {
                *out = k->limits, *exempt = k->exempt;
                return;
        }
        md_identity who;
        /* Out of memory: the defaults, uncached (no user section, no group). */
        if (md_identity_lookup(uid, &who) < 0)
                who = (md_identity){.uid = uid};
        md_config_limits(c, &who, out, exempt);
        md_identity_free(&who);
        if (u->n == MAX_KEPT)
                u->n = 0; /* many users at once: start over rather than grow without bound */
        if (mx_grow((void **)&u->v, &u->cap, u->n + 1, sizeof(*u->v)) == 0)
                u->v[u->n++] = (kept){uid, now, *out, *exempt};
}
