/* /etc/mixtrald/mixtrald.conf: [daemon] settings, [quota] defaults and
 * [user:NAME] / [group:NAME] overrides (docs/daemon.md). Parsed with
 * inih; every value is checked and an error names the file, line and key. */
#include <arpa/inet.h>
#include <ctype.h>
#include <grp.h>
#include <ini.h>
#include <pwd.h>
#include <stdarg.h>
#include <string.h>
#include <sys/stat.h>

#include "mx_common.h"
#include "mixtrald.h"

#define MAX_CONFIG_BYTES (1u << 20)

void md_config_defaults(md_config *c) {
        *c = (md_config){
                .socket_mode = 0666,
                .max_frame_bytes = MXP_DEFAULT_MAX_FRAME,
                .max_batch = 16,
                .max_queue = 64,
                .max_connections_per_uid = 32,
                .max_output_bytes = 4u << 20,
                .prefill_chunk = 256,
                .drain_seconds = 30,
                .quota = {.tokens_per_hour = 0, .tokens_per_day = 0, .max_concurrent = 4,
                          .max_queued = 16, .max_context = 0, .max_tokens = 0},
        };
}

void md_config_free(md_config *c) {
        free(c->model), free(c->device), free(c->socket), free(c->state_directory);
        free(c->admin_group), free(c->bus), free(c->expert_memory), free(c->memory_pressure);
        free(c->host_cache), free(c->kv_type), free(c->kv_memory), free(c->http_socket), free(c->http_listen);
        for (size_t i = 0; i < c->n_sections; i++)
                free(c->sections[i].name);
        free(c->sections);
        *c = (md_config){0};
}

static int parse_u64(const char *s, uint64_t max, uint64_t *out) {
        if (!isdigit((unsigned char)*s))
                return -EINVAL;
        errno = 0;
        char *end;
        unsigned long long v = strtoull(s, &end, 10);
        /* Byte sizes may say K, M or G (powers of 1024). */
        unsigned shift = *end == 'K' ? 10 : *end == 'M' ? 20 : *end == 'G' ? 30 : 0;
        if (shift)
                end++;
        if (errno || *end || (shift && v > (UINT64_MAX >> shift)))
                return -ERANGE;
        v <<= shift;
        if (v > max)
                return -ERANGE;
        *out = v;
        return 0;
}

static int parse_u32(const char *s, uint32_t *out) {
        uint64_t v;
        int r = parse_u64(s, UINT32_MAX, &v);
        if (r == 0)
                *out = (uint32_t)v;
        return r;
}

/* The engine's own parser, so that what the file accepts the engine takes
 * when the model is loaded (or on SIGHUP). */
static bool valid_budget(const char *v) {
        return mx_expert_budget_parse(v, NULL, NULL, NULL) == 0;
}

/* host (an IPv4 address or localhost, or inside [] an IPv6 one) as a
 * socket address, if it is a loopback address. */
static int loopback_addr(const char *host, bool v6, uint16_t port, struct sockaddr_storage *ss, mx_error *err) {
        struct sockaddr_in *a4 = (struct sockaddr_in *)ss;
        struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)ss;
        *ss = (struct sockaddr_storage){0};
        if (!v6 && !strcmp(host, "localhost"))
                host = "127.0.0.1";
        if (!v6 && inet_pton(AF_INET, host, &a4->sin_addr) == 1) {
                a4->sin_family = AF_INET, a4->sin_port = htons(port);
                if ((ntohl(a4->sin_addr.s_addr) >> 24) == 127)
                        return 0;
        } else if (v6 && inet_pton(AF_INET6, host, &a6->sin6_addr) == 1) {
                a6->sin6_family = AF_INET6, a6->sin6_port = htons(port);
                if (IN6_IS_ADDR_LOOPBACK(&a6->sin6_addr))
                        return 0;
        } else
                return mx_error_set(err, -EINVAL, "'%s' is not an IPv4 address, [IPv6] or localhost", host);
        return mx_error_set(err, -EINVAL, "%s is not a loopback address: keys would cross the network in the clear "
                            "(put a TLS proxy in front of a loopback address)", host);
}

/* "ADDRESS:PORT": an IPv4 address, [IPv6] or localhost, and a port. The
 * HTTP API carries keys in the clear, so only loopback addresses: from
 * elsewhere, a TLS proxy on this host forwards to it (docs/http.md). */
int md_listen_addr_parse(const char *s, struct sockaddr_storage *out, socklen_t *len, mx_error *err) {
        const char *colon = strrchr(s, ':'), *digits = colon ? colon + 1 : "";
        uint64_t port;
        if (!*digits || digits[strspn(digits, "0123456789")] || parse_u64(digits, 65535, &port) < 0)
                return mx_error_set(err, -EINVAL, "expected ADDRESS:PORT (127.0.0.1:8080, [::1]:8080, localhost:8080)");
        char host[64];
        size_t n = (size_t)(colon - s);
        bool v6 = n >= 2 && s[0] == '[' && s[n - 1] == ']';
        if (v6)
                s++, n -= 2;
        if (n >= sizeof(host))
                return mx_error_set(err, -EINVAL, "the address is too long");
        memcpy(host, s, n);
        host[n] = '\0';
        struct sockaddr_storage ss;
        int r = loopback_addr(host, v6, (uint16_t)port, &ss, err);
        if (r == 0 && out)
                *out = ss, *len = ss.ss_family == AF_INET ? sizeof(struct sockaddr_in) : sizeof(struct sockaddr_in6);
        return r;
}

/* NULL v: back to the default. */
static int set_string(char **dst, const char *v) {
        char *p = v ? strdup(v) : NULL;
        if (v && !p)
                return -ENOMEM;
        free(*dst);
        *dst = p;
        return 0;
}

int md_config_set_daemon(md_config *c, const char *key, const char *v, mx_error *err) {
        uint64_t u;
        int r = 0;
        if (!strcmp(key, "model"))
                r = set_string(&c->model, v);
        else if (!strcmp(key, "device")) {
                int index;
                if (mx_device_parse(v, &index) < 0)
                        return mx_error_set(err, -EINVAL, "device=%s: expected cpu, cuda or cuda:N", v);
                r = set_string(&c->device, v);
        } else if (!strcmp(key, "socket")) {
                if (*v != '/')
                        return mx_error_set(err, -EINVAL, "socket=%s: expected an absolute path", v);
                r = set_string(&c->socket, v);
        } else if (!strcmp(key, "http_socket")) {
                if (*v != '/' && strcmp(v, "none"))
                        return mx_error_set(err, -EINVAL, "http_socket=%s: expected an absolute path or none", v);
                r = set_string(&c->http_socket, v);
        } else if (!strcmp(key, "http_listen")) {
                mx_error why = {0};
                if (strcmp(v, "none") && md_listen_addr_parse(v, NULL, NULL, &why) < 0)
                        return mx_error_set(err, -EINVAL, "http_listen=%s: %s", v, why.msg);
                r = set_string(&c->http_listen, strcmp(v, "none") ? v : NULL);
        } else if (!strcmp(key, "socket_mode")) {
                char *end;
                errno = 0;
                unsigned long m = strtoul(v, &end, 8);
                if (errno || *end || !*v || m > 0777)
                        return mx_error_set(err, -EINVAL, "socket_mode=%s: expected octal like 0666", v);
                c->socket_mode = (unsigned)m, c->socket_mode_set = true;
        } else if (!strcmp(key, "bus")) {
                if (strcmp(v, "auto") && strcmp(v, "system") && strcmp(v, "session") && strcmp(v, "none"))
                        return mx_error_set(err, -EINVAL, "bus=%s: expected auto, system, session or none", v);
                r = set_string(&c->bus, v);
        } else if (!strcmp(key, "state_directory"))
                r = set_string(&c->state_directory, v);
        else if (!strcmp(key, "admin_group"))
                r = set_string(&c->admin_group, v);
        else if (!strcmp(key, "max_frame_bytes")) {
                if ((r = parse_u64(v, 256u << 20, &u)) < 0 || u < 1024)
                        return mx_error_set(err, -EINVAL, "max_frame_bytes=%s: expected 1K to 256M", v);
                c->max_frame_bytes = (uint32_t)u;
        } else if (!strcmp(key, "max_output_bytes")) {
                if ((r = parse_u64(v, 1u << 30, &u)) < 0 || u < 4096)
                        return mx_error_set(err, -EINVAL, "max_output_bytes=%s: expected 4K to 1G", v);
                c->max_output_bytes = (uint32_t)u;
        } else if (!strcmp(key, "drain_seconds")) {
                if ((r = parse_u64(v, 86400, &u)) < 0)
                        return mx_error_set(err, -EINVAL, "drain_seconds=%s: expected 0 to 86400", v);
                c->drain_seconds = (double)u;
        } else if (!strcmp(key, "expert_memory")) {
                if (!valid_budget(v))
                        return mx_error_set(err, -EINVAL, "expert_memory=%s: expected auto, min, bytes (K, M, G, T) "
                                            "or a percentage (up to 100%%) of the experts", v);
                r = set_string(&c->expert_memory, strcmp(v, "auto") ? v : NULL);
        } else if (!strcmp(key, "quantize")) {
                if (mx_ftype_parse(v, &c->quantize) < 0)
                        return mx_error_set(err, -EINVAL, "quantize=%s: expected none, q8_0, q4_0, q4_k_m, q5_k_m "
                                            "or q6_k", v);
        } else if (!strcmp(key, "memory_pressure")) {
                if (strcmp(v, "auto") && strcmp(v, "off") && *v != '/')
                        return mx_error_set(err, -EINVAL, "memory_pressure=%s: expected auto, off or an absolute path", v);
                r = set_string(&c->memory_pressure, strcmp(v, "auto") ? v : NULL);
        } else if (!strcmp(key, "host_cache")) {
                if (!valid_budget(v))
                        return mx_error_set(err, -EINVAL, "host_cache=%s: expected auto, min, bytes (K, M, G, T) "
                                            "or a percentage (up to 100%%) of the experts", v);
                r = set_string(&c->host_cache, strcmp(v, "auto") ? v : NULL);
        } else if (!strcmp(key, "kv_type")) {
                mx_kv_type t;
                if (mx_kv_type_from_string(v, &t) < 0)
                        return mx_error_set(err, -EINVAL, "kv_type=%s: expected bf16 or f32", v);
                r = set_string(&c->kv_type, t == MX_KV_BF16 ? NULL : v);
        } else if (!strcmp(key, "kv_memory")) {
                if (mx_kv_memory_parse(v, NULL, NULL, NULL) < 0)
                        return mx_error_set(err, -EINVAL, "kv_memory=%s: expected auto, bytes (K, M, G, T) or a "
                                            "whole percentage (1%% to 100%%) of the free memory", v);
                r = set_string(&c->kv_memory, strcmp(v, "auto") ? v : NULL);
        } else if (!strcmp(key, "prefix_cache_share")) {
                static const char *const shares[] = {"user", "all", "off"};
                size_t i = 0;
                while (i < MX_ELEMENTSOF(shares) && strcmp(v, shares[i]))
                        i++;
                if (i == MX_ELEMENTSOF(shares))
                        return mx_error_set(err, -EINVAL, "prefix_cache_share=%s: expected user, all or off", v);
                c->prefix_cache_share = (int)i;
        } else {
                static const struct {
                        const char *key;
                        size_t off;
                        uint32_t min, max;
                } nums[] = {
                        {"threads", offsetof(md_config, threads), 0, 4096},
                        {"max_batch", offsetof(md_config, max_batch), 1, 1024},
                        {"max_queue", offsetof(md_config, max_queue), 0, 1u << 20},
                        {"max_connections_per_uid", offsetof(md_config, max_connections_per_uid), 1, 1u << 20},
                        {"prefill_chunk", offsetof(md_config, prefill_chunk), 1, 1u << 16},
                };
                for (size_t i = 0; i < MX_ELEMENTSOF(nums); i++) {
                        if (strcmp(key, nums[i].key))
                                continue;
                        uint32_t x = 0;
                        if (parse_u32(v, &x) < 0 || x < nums[i].min || x > nums[i].max)
                                return mx_error_set(err, -EINVAL, "%s=%s: expected %u to %u", key, v,
                                                    nums[i].min, nums[i].max);
                        *(uint32_t *)((char *)c + nums[i].off) = x;
                        return 0;
                }
                return mx_error_set(err, -EINVAL, "unknown key '%s' in [daemon]", key);
        }
        return r == -ENOMEM ? mx_error_set(err, r, "out of memory") : r;
}

static const char *const limit_keys[MD_LIMIT_FIELDS] = {
        "tokens_per_hour", "tokens_per_day", "max_concurrent", "max_queued", "max_context", "max_tokens",
};

static void set_field(md_limits *l, unsigned i, uint64_t v) {
        switch (i) {
        case 0: l->tokens_per_hour = v; break;
        case 1: l->tokens_per_day = v; break;
        case 2: l->max_concurrent = (uint32_t)v; break;
        case 3: l->max_queued = (uint32_t)v; break;
        case 4: l->max_context = (uint32_t)v; break;
        default: l->max_tokens = (uint32_t)v; break;
        }
}

static int set_limit(md_limits *l, unsigned *set, const char *key, const char *v, mx_error *err) {
        for (unsigned i = 0; i < MD_LIMIT_FIELDS; i++) {
                if (strcmp(key, limit_keys[i]))
                        continue;
                uint64_t x;
                if (parse_u64(v, i < 2 ? UINT64_MAX / 2 : UINT32_MAX, &x) < 0)
                        return mx_error_set(err, -EINVAL, "%s=%s: expected a whole number (0: no limit)",
                                            key, v);
                set_field(l, i, x);
                if (set)
                        *set |= 1u << i;
                return 0;
        }
        return mx_error_set(err, -EINVAL, "unknown quota key '%s'", key);
}

static md_quota_section *section_for(md_config *c, const char *name, bool group) {
        for (size_t i = 0; i < c->n_sections; i++)
                if (c->sections[i].is_group == group && !strcmp(c->sections[i].name, name))
                        return &c->sections[i];
        md_quota_section *p = realloc(c->sections, (c->n_sections + 1) * sizeof(*p));
        if (!p)
                return NULL;
        c->sections = p;
        md_quota_section *s = &p[c->n_sections];
        *s = (md_quota_section){.name = strdup(name), .is_group = group};
        if (!s->name)
                return NULL;
        c->n_sections++;
        return s;
}

/* inih goes on after an error and reports the first bad line, so the
 * context keeps the first error and the line it was on. It reads lines
 * through us, so that what inih would take silently is refused here: a
 * line longer than its buffer (two lines to inih), a NUL byte (the rest of
 * the line ignored), an indented line (a continuation that replaces the
 * value above: "tokens_per_day = 1000" then "  0" is unlimited), and a
 * section given twice (its keys merged); on_key refuses a key given twice
 * in one section (the last would win). */
typedef struct parse_ctx {
        md_config *c;
        FILE *f;
        unsigned line, error_line;
        mx_error err;
        int r;
        char **seen;      /* [n_seen] "section]key" and "[section" */
        size_t n_seen, cap_seen;
} parse_ctx;

static void fail_at(parse_ctx *p, int r) {
        if (p->r == 0)
                p->r = r, p->error_line = p->line;
}

/* Records s; false when it was there already. */
static bool first_time(parse_ctx *p, char *s) {
        for (size_t i = 0; s && i < p->n_seen; i++)
                if (!strcmp(p->seen[i], s)) {
                        free(s);
                        return false;
                }
        if (!s || mx_grow((void **)&p->seen, &p->cap_seen, p->n_seen + 1, sizeof(*p->seen)) < 0) {
                free(s);
                fail_at(p, mx_error_set(&p->err, -ENOMEM, "out of memory"));
                return true;
        }
        p->seen[p->n_seen++] = s;
        return true;
}

static bool blank_or_comment(const char *s) {
        s += strspn(s, " \t\r\n");
        return !*s || *s == ';' || *s == '#';
}

/* One line as inih sees it, or an error for what it would misread. */
static void check_line(parse_ctx *p, char *str) {
        if (str[0] == ' ' || str[0] == '\t') {
                if (!blank_or_comment(str))
                        fail_at(p, mx_error_set(&p->err, -EINVAL, "the line is indented (INI would join it to the "
                                                "value above): start it at the beginning of the line"));
                return;
        }
        if (str[0] != '[')
                return;
        size_t n = strcspn(str, "]");
        char *s = NULL;
        if (str[n] == ']' && asprintf(&s, "[%.*s", (int)(n - 1), str + 1) < 0)
                s = NULL;
        if (str[n] == ']' && !first_time(p, s))
                fail_at(p, mx_error_set(&p->err, -EINVAL, "section %.*s is given twice", (int)(n + 1), str));
}

static char *read_line(char *str, int num, void *stream) {
        parse_ctx *p = stream;
        int ch = EOF, n = 0;
        bool nul = false;
        while (n < num - 1 && (ch = getc(p->f)) != EOF) {
                nul |= ch == '\0';
                str[n++] = (char)ch;
                if (ch == '\n')
                        break;
        }
        if (n == 0)
                return NULL;
        str[n] = '\0';
        p->line++;
        if (nul) {
                fail_at(p, mx_error_set(&p->err, -EINVAL, "the line holds a NUL byte"));
                str[0] = '\0';
        } else if (n == num - 1 && ch != '\n' && ch != EOF && (ch = getc(p->f)) != EOF) {
                fail_at(p, mx_error_set(&p->err, -EINVAL, "the line is longer than %d bytes", num - 2));
                while (ch != EOF && ch != '\n')
                        ch = getc(p->f);
                str[0] = '\0'; /* the rest is not parsed */
        } else {
                if (n == num - 1 && ch != '\n' && ch != EOF)
                        ungetc(ch, p->f);
                check_line(p, str);
        }
        return str;
}

static int on_key(void *user, const char *section, const char *key, const char *value) {
        parse_ctx *p = user;
        if (p->r < 0)
                return 1;
        mx_error *err = &p->err;
        char *both = NULL;
        if (asprintf(&both, "%s]%s", section, key) < 0)
                both = NULL;
        if (!first_time(p, both)) {
                fail_at(p, mx_error_set(err, -EINVAL, "%s is given twice in [%s]", key, section));
                return 1;
        }
        int r;
        if (!strcmp(section, "daemon"))
                r = md_config_set_daemon(p->c, key, value, err);
        else if (!strcmp(section, "quota"))
                r = set_limit(&p->c->quota, NULL, key, value, err);
        else if (!strncmp(section, "user:", 5) || !strncmp(section, "group:", 6)) {
                bool group = section[0] == 'g';
                const char *name = section + (group ? 6 : 5);
                md_quota_section *s = *name ? section_for(p->c, name, group) : NULL;
                if (!*name)
                        r = mx_error_set(err, -EINVAL, "[%s] names nobody", section);
                else if (!s)
                        r = mx_error_set(err, -ENOMEM, "out of memory");
                else
                        r = set_limit(&s->limits, &s->set, key, value, err);
        } else
                r = mx_error_set(err, -EINVAL, "unknown section [%s]", section);
        if (r < 0)
                fail_at(p, r);
        return 1;
}

int md_config_load(md_config *c, const char *path, bool required, mx_error *err) {
        /* Read whole, by the engine's reader: a FIFO (which would hang
         * start-up or SIGHUP forever) or a device is refused unopened. */
        _cleanup_free_ char *text = NULL;
        size_t len;
        mx_error why = {0};
        int r = mx_read_file(path, MAX_CONFIG_BYTES, &text, &len, &why);
        if (r == -ENOENT && !required)
                return 0;
        if (r < 0)
                return mx_error_set(err, r, "%s", why.msg);
        _cleanup_fclose_ FILE *f = fmemopen(text, len, "r");
        if (!f)
                return mx_error_set(err, -errno, "%s: %s", path, strerror(errno));
        parse_ctx p = {.c = c, .f = f};
        int line = ini_parse_stream(read_line, &p, on_key, &p);
        for (size_t i = 0; i < p.n_seen; i++)
                free(p.seen[i]);
        free(p.seen);
        if (line < 0 || ferror(f))
                return mx_error_set(err, -EIO, "%s: cannot read it", path);
        /* Whichever came first: ours, or a line inih could not parse. */
        if (p.r < 0 && (line == 0 || (unsigned)line >= p.error_line))
                return mx_error_set(err, p.r, "%s:%u: %s", path, p.error_line, p.err.msg);
        if (line > 0)
                return mx_error_set(err, -EINVAL, "%s:%d: not a 'key = value' line or [section]", path, line);
        return 0;
}

static uint64_t limit_field(const md_limits *l, unsigned i) {
        switch (i) {
        case 0: return l->tokens_per_hour;
        case 1: return l->tokens_per_day;
        case 2: return l->max_concurrent;
        case 3: return l->max_queued;
        case 4: return l->max_context;
        default: return l->max_tokens;
        }
}

/* 0 is "no limit", so it beats any number. */
static bool more_generous(uint64_t a, uint64_t b) {
        return a == 0 ? b != 0 : b != 0 && a > b;
}

static bool in_groups(const md_identity *who, gid_t want) {
        for (int i = 0; i < who->n_groups; i++)
                if (who->groups[i] == want)
                        return true;
        return false;
}

/* getgrnam_r with a buffer that grows until a big group fits. */
static bool group_gid(const char *name, gid_t *out) {
        size_t size = 4096;
        for (int tries = 0; tries < 8; tries++, size *= 4) {
                _cleanup_free_ char *buf = malloc(size);
                struct group gr, *grp = NULL;
                if (!buf)
                        return false;
                int r = getgrnam_r(name, &gr, buf, size, &grp);
                if (r == ERANGE)
                        continue;
                if (r || !grp)
                        return false;
                *out = grp->gr_gid;
                return true;
        }
        return false;
}

void md_config_limits(const md_config *c, const md_identity *who, md_limits *out, bool *exempt) {
        const char *user = who->name;
        gid_t g;

        *exempt = who->uid == 0 || (c->admin_group && group_gid(c->admin_group, &g) && in_groups(who, g));

        md_limits l = c->quota;
        unsigned from_user = 0, from_group = 0;
        md_limits best = {0};
        for (size_t i = 0; i < c->n_sections; i++) {
                const md_quota_section *s = &c->sections[i];
                if (!s->is_group) {
                        if (!user || strcmp(s->name, user))
                                continue;
                        for (unsigned k = 0; k < MD_LIMIT_FIELDS; k++)
                                if (s->set & (1u << k))
                                        set_field(&l, k, limit_field(&s->limits, k));
                        from_user |= s->set;
                        continue;
                }
                if (!group_gid(s->name, &g) || !in_groups(who, g))
                        continue;
                for (unsigned k = 0; k < MD_LIMIT_FIELDS; k++) {
                        if (!(s->set & (1u << k)))
                                continue;
                        uint64_t v = limit_field(&s->limits, k);
                        if (!(from_group & (1u << k)) || more_generous(v, limit_field(&best, k)))
                                set_field(&best, k, v);
                        from_group |= 1u << k;
                }
        }
        for (unsigned k = 0; k < MD_LIMIT_FIELDS; k++)
                if ((from_group & (1u << k)) && !(from_user & (1u << k)))
                        set_field(&l, k, limit_field(&best, k));
        *out = l;
}
