/* API keys: how a caller of the HTTP API's TCP listener, where there is no
 * SO_PEERCRED, says which local user it acts for. A user asks for a key
 * over the Unix socket (the key is bound to the uid the kernel reports
 * there), the daemon hands it out once and keeps only its SHA-256, so that
 * a copy of the state directory reveals no usable key. Owners revoke their
 * own keys, root and the admin group anyone's.
 *
 * STATE/keys is text, one key per line after a "mixtrald-keys 1" header:
 * "ID UID CREATED SHA256HEX[ NAME]"; it is rewritten whole (md_state_write)
 * before a new key is handed out or a revocation is confirmed, so a crash
 * never leaves a key working that its owner was told is gone. Main thread
 * only; md_keys_check runs for every request on the TCP listener. */
#include <nettle/memops.h>
#include <nettle/sha2.h>
#include <string.h>
#include <sys/random.h>

#include "mx_common.h"
#include "mixtrald.h"

#define KIND "keys" /* STATE/keys, which starts "mixtrald-keys 1" */
#define PREFIX "mxk-"
#define MAX_KEYS_FILE (16u << 20)

void md_keys_free(md_keys *k) {
        free(k->v);
        free(k->path);
        *k = (md_keys){0};
}

static void sha256(const char *text, size_t len, uint8_t out[SHA256_DIGEST_SIZE]) {
        struct sha256_ctx c;
        sha256_init(&c);
        sha256_update(&c, len, (const uint8_t *)text);
        sha256_digest(&c, SHA256_DIGEST_SIZE, out);
}

static void to_hex(const uint8_t *b, size_t n, char *out) {
        static const char digits[] = "0123456789abcdef";
        for (size_t i = 0; i < n; i++)
                out[2 * i] = digits[b[i] >> 4], out[2 * i + 1] = digits[b[i] & 15];
        out[2 * n] = '\0';
}

static int hex_value(char c) {
        return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

/* n bytes from 2n lower-case hex digits; false for anything else. */
static bool from_hex(const char *s, size_t n, uint8_t *out) {
        for (size_t i = 0; i < n; i++) {
                int hi = hex_value(s[2 * i]), lo = hi < 0 ? -1 : hex_value(s[2 * i + 1]);
                if (lo < 0)
                        return false;
                out[i] = (uint8_t)(hi << 4 | lo);
        }
        return true;
}

static bool is_hex(const char *s, size_t n) {
        for (size_t i = 0; i < n; i++)
                if (hex_value(s[i]) < 0)
                        return false;
        return true;
}

/* Labels go into the file's lines and into terminals: a small alphabet. */
static bool valid_name(const char *s, size_t n) {
        if (n > MD_KEY_NAME_MAX)
                return false;
        for (size_t i = 0; i < n; i++)
                if (!strchr("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-@", s[i]) || !s[i])
                        return false;
        return true;
}

static md_key *find(const md_keys *k, const char *id) {
        for (size_t i = 0; i < k->n; i++)
                if (!strcmp(k->v[i].id, id))
                        return &k->v[i];
        return NULL;
}

/* ---- the file ------------------------------------------------------------------ */

/* "ID UID CREATED HASH[ NAME]\n" */
static bool parse_line(const char *line, md_key *key) {
        *key = (md_key){0};
        uint64_t uid;
        if (!is_hex(line, MD_KEY_ID_LEN) || line[MD_KEY_ID_LEN] != ' ')
                return false;
        memcpy(key->id, line, MD_KEY_ID_LEN);
        line += MD_KEY_ID_LEN + 1;
        if (!md_field_u64(&line, ' ', UINT32_MAX, &uid) || !md_field_u64(&line, ' ', UINT64_MAX, &key->created) ||
            !from_hex(line, sizeof(key->hash), key->hash))
                return false;
        key->uid = (uint32_t)uid;
        line += 2 * sizeof(key->hash);
        if (*line == '\n')
                return line[1] == '\0';
        if (*line++ != ' ')
                return false;
        size_t n = strcspn(line, "\n");
        if (!n || !valid_name(line, n) || strcmp(line + n, "\n"))
                return false;
        memcpy(key->name, line, n);
        return true;
}

static int key_line(const char *line, void *arg) {
        md_keys *k = arg;
        md_key key;
        if (!parse_line(line, &key) || find(k, key.id))
                return -EBADMSG;
        if (mx_grow((void **)&k->v, &k->cap, k->n + 1, sizeof(*k->v)) < 0)
                return -ENOMEM;
        k->v[k->n++] = key;
        return 0;
}

int md_keys_open(md_keys *k, const char *state_dir, mx_error *err) {
        *k = (md_keys){0};
        return md_state_read(state_dir, KIND, MAX_KEYS_FILE, &k->path, key_line, k, err);
}

static int write_keys(FILE *f, const void *arg) {
        const md_keys *k = arg;
        fputs("mixtrald-" KIND " 1\n", f);
        for (size_t i = 0; i < k->n; i++) {
                const md_key *key = &k->v[i];
                char hash[2 * sizeof(key->hash) + 1];
                to_hex(key->hash, sizeof(key->hash), hash);
                fprintf(f, "%s %u %llu %s%s%s\n", key->id, key->uid, (unsigned long long)key->created, hash,
                        key->name[0] ? " " : "", key->name);
        }
        return 0;
}

/* ---- keys ------------------------------------------------------------------------ */

static size_t count_of(const md_keys *k, uint32_t uid) {
        size_t n = 0;
        for (size_t i = 0; i < k->n; i++)
                n += k->v[i].uid == uid;
        return n;
}

/* A fresh key: an id no other key has, and its secret. */
static int draw(const md_keys *k, char id[MD_KEY_ID_LEN + 1], char secret[MD_KEY_LEN + 1]) {
        uint8_t rnd[MD_KEY_ID_LEN / 2 + 24];
        do {
                if (getrandom(rnd, sizeof(rnd), 0) != (ssize_t)sizeof(rnd))
                        return -EIO;
                to_hex(rnd, MD_KEY_ID_LEN / 2, id);
        } while (find(k, id));
        char tail[2 * 24 + 1];
        to_hex(rnd + MD_KEY_ID_LEN / 2, 24, tail);
        snprintf(secret, MD_KEY_LEN + 1, PREFIX "%s-%s", id, tail);
        return 0;
}

int md_keys_new(md_keys *k, uint32_t uid, const char *name, uint64_t now, md_key *out,
                char secret[MD_KEY_LEN + 1], mx_error *err) {
        name = name ? name : "";
        if (!valid_name(name, strlen(name)))
                return mx_error_set(err, -EINVAL, "a key's name has at most %d letters, digits, '.', '_', '-' or '@'",
                                    MD_KEY_NAME_MAX);
        if (count_of(k, uid) >= MD_KEYS_PER_UID)
                return mx_error_set(err, -EINVAL, "you have %d keys, the most a user may have: revoke one first",
                                    MD_KEYS_PER_UID);
        if (mx_grow((void **)&k->v, &k->cap, k->n + 1, sizeof(*k->v)) < 0)
                return mx_error_set(err, -ENOMEM, "out of memory");
        md_key *key = &k->v[k->n];
        *key = (md_key){.uid = uid, .created = now};
        snprintf(key->name, sizeof(key->name), "%s", name);
        if (draw(k, key->id, secret) < 0)
                return mx_error_set(err, -EIO, "no randomness for a key");
        sha256(secret, strlen(secret), key->hash);
        k->n++;
        int r = md_state_write(k->path, write_keys, k, err);
        if (r < 0) {
                k->n--;
                explicit_bzero(secret, MD_KEY_LEN + 1);
                return r;
        }
        *out = *key;
        return 0;
}

int md_keys_revoke(md_keys *k, uint32_t uid, bool admin, const char *id, md_key *out, mx_error *err) {
        md_key *key = find(k, id);
        if (!key || (key->uid != uid && !admin))
                return mx_error_set(err, -ENOENT, "no key %s of yours", id);
        *out = *key;
        size_t i = (size_t)(key - k->v);
        memmove(&k->v[i], &k->v[i + 1], (k->n - i - 1) * sizeof(*k->v));
        k->n--;
        int r = md_state_write(k->path, write_keys, k, err);
        if (r < 0) { /* still in the file: still a key */
                memmove(&k->v[i + 1], &k->v[i], (k->n - i) * sizeof(*k->v));
                k->v[i] = *out;
                k->n++;
        }
        return r;
}

int md_keys_check(const md_keys *k, const char *key, size_t len, uint32_t *uid) {
        const size_t id_at = strlen(PREFIX), tail_at = id_at + MD_KEY_ID_LEN + 1;
        if (len != MD_KEY_LEN || memcmp(key, PREFIX, id_at) || key[tail_at - 1] != '-' ||
            !is_hex(key + id_at, MD_KEY_ID_LEN) || !is_hex(key + tail_at, MD_KEY_LEN - tail_at))
                return -EACCES;
        char id[MD_KEY_ID_LEN + 1];
        memcpy(id, key + id_at, MD_KEY_ID_LEN);
        id[MD_KEY_ID_LEN] = '\0';
        const md_key *found = find(k, id);
        uint8_t hash[SHA256_DIGEST_SIZE];
        sha256(key, len, hash);
        if (!found || !memeql_sec(hash, found->hash, sizeof(hash)))
                return -EACCES;
        *uid = found->uid;
        return 0;
}
