/* The HTTP API's parts that need no daemon: OpenAI's JSON bodies into
 * md_gen_params (every field's type, null, the features refused by name,
 * what is ignored), the API key store (hashes only, owners, revoking, the
 * file's strictness and mode), and the configuration's http_socket and
 * http_listen (loopback only). */
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/stat.h>

#include "mixtrald.h"
#include "test_util.h"

#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

static bool contains(const char *s, const char *part) {
        return s && strstr(s, part);
}

/* ---- requests ------------------------------------------------------------------------ */

static int parse(md_http_kind kind, const char *body, md_http_gen_req *out, mx_error *err) {
        *err = (mx_error){0};
        return md_http_gen_parse(kind, body, strlen(body), out, err);
}

static void test_refused(void) {
        static const struct {
                md_http_kind kind;
                const char *body, *words;
        } cases[] = {
                {MD_HTTP_CHAT, "", "not valid JSON"},
                {MD_HTTP_CHAT, "[]", "a JSON object"},
                {MD_HTTP_CHAT, "{\"messages\": []}", "'messages' must be a non-empty array"},
                {MD_HTTP_CHAT, "{}", "'messages'"},
                {MD_HTTP_CHAT, "{\"messages\": [1]}", "'messages[0]' must be an object"},
                {MD_HTTP_CHAT, "{\"messages\": [{\"content\": \"x\"}]}", "'messages[0].role' must be a string"},
                {MD_HTTP_CHAT, "{\"messages\": [{\"role\": \"tool\", \"content\": \"x\"}]}", "tools are not"},
                {MD_HTTP_CHAT, "{\"messages\": [{\"role\": \"user\"}]}", "'messages[0].content' is missing"},
                {MD_HTTP_CHAT, "{\"messages\": [{\"role\": \"user\", \"content\": 5}]}", "a string or an array"},
                {MD_HTTP_CHAT, "{\"messages\": [{\"role\": \"user\", \"content\": [{\"type\": \"image_url\"}]}]}",
                 "only parts of type \"text\""},
                {MD_HTTP_CHAT, "{\"messages\": [{\"role\": \"user\", \"content\": \"a\\u0000b\"}]}", "NUL"},
                {MD_HTTP_CHAT, "{\"messages\": [], \"messages\": []}", "duplicate"},
                {MD_HTTP_CHAT, "{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"n\": 2}", "n = 1"},
                {MD_HTTP_CHAT, "{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"logprobs\": true}",
                 "log probabilities"},
                {MD_HTTP_CHAT, "{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"top_logprobs\": 2}",
                 "log probabilities"},
                {MD_HTTP_CHAT, "{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"max_tokens\": \"5\"}",
                 "'max_tokens' must be an integer"},
                {MD_HTTP_CHAT, "{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"max_tokens\": 0}",
                 "'max_tokens' must be from 1"},
                {MD_HTTP_CHAT, "{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"max_tokens\": 5.5}",
                 "an integer"},
                {MD_HTTP_CHAT, "{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], "
                               "\"max_completion_tokens\": 4294967296}", "'max_completion_tokens' must be from"},
                {MD_HTTP_CHAT, "{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"temperature\": \"hot\"}",
                 "'temperature' must be a number"},
                {MD_HTTP_CHAT, "{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"temperature\": -1}",
                 "temperature"},
                {MD_HTTP_CHAT, "{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"top_p\": 2}", "top_p"},
                {MD_HTTP_CHAT, "{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"seed\": -1}",
                 "'seed' must be from 0"},
                {MD_HTTP_CHAT, "{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"top_k\": true}",
                 "'top_k' must be an integer"},
                {MD_HTTP_CHAT, "{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"stop\": 5}",
                 "'stop' must be a string or an array"},
                {MD_HTTP_CHAT, "{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"stop\": [\"a\", 5]}",
                 "'stop' must be a string"},
                {MD_HTTP_CHAT, "{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"stop\": \"\"}",
                 "stop string 1 is empty"},
                {MD_HTTP_CHAT, "{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"stream\": \"yes\"}",
                 "'stream' must be true or false"},
                {MD_HTTP_CHAT, "{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"stream_options\": 1}",
                 "'stream_options' must be an object"},
                {MD_HTTP_CHAT, "{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], "
                               "\"stream_options\": {\"include_usage\": 1}}", "'include_usage' must be true or false"},
                {MD_HTTP_CHAT, "{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"model\": 5}",
                 "'model' must be a string"},
                {MD_HTTP_CHAT, "{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"ignore_eos\": 1}",
                 "'ignore_eos' must be true or false"},
                {MD_HTTP_COMPLETION, "{}", "'prompt' must be a string"},
                {MD_HTTP_COMPLETION, "{\"prompt\": [1, 2]}", "token ids"},
                {MD_HTTP_COMPLETION, "{\"prompt\": [\"a\", \"b\"]}", "an array of one string"},
                {MD_HTTP_COMPLETION, "{\"prompt\": \"\"}", "the prompt is empty"},
                {MD_HTTP_COMPLETION, "{\"prompt\": \"x\", \"echo\": true}", "echo"},
                {MD_HTTP_COMPLETION, "{\"prompt\": \"x\", \"best_of\": 3}", "best_of"},
                {MD_HTTP_COMPLETION, "{\"prompt\": \"x\", \"suffix\": \"y\"}", "suffix"},
                {MD_HTTP_COMPLETION, "{\"prompt\": \"x\", \"logprobs\": 3}", "log probabilities"},
        };
        for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
                md_http_gen_req r;
                mx_error err;
                int rc = parse(cases[i].kind, cases[i].body, &r, &err);
                CHECK(rc == -EINVAL && contains(err.msg, cases[i].words), "%s: %d '%s', expected '%s'", cases[i].body,
                      rc, err.msg, cases[i].words);
                CHECK(!strchr(err.msg, '\n'), "%s: the message is more than one line", cases[i].body);
                md_http_gen_req_free(&r);
        }
        /* Invalid UTF-8 never reaches the checks: jansson refuses it. */
        const char bad[] = "{\"prompt\": \"\xff\"}";
        md_http_gen_req r;
        mx_error err;
        CHECK(md_http_gen_parse(MD_HTTP_COMPLETION, bad, sizeof(bad) - 1, &r, &err) == -EINVAL, "invalid UTF-8");
        md_http_gen_req_free(&r);
}

static void test_chat(void) {
        md_http_gen_req r;
        mx_error err;
        const char *body = "{\"model\": \"gpt-4o\", \"messages\": ["
                           "{\"role\": \"developer\", \"content\": \"Be brief.\"},"
                           "{\"role\": \"user\", \"content\": [{\"type\": \"text\", \"text\": \"Hel\"},"
                           "                                   {\"type\": \"text\", \"text\": \"lo\"}], \"name\": \"x\"},"
                           "{\"role\": \"assistant\", \"content\": null, \"tool_calls\": []},"
                           "{\"role\": \"user\", \"content\": \"again\"}],"
                           "\"max_tokens\": 7, \"max_completion_tokens\": 9, \"temperature\": 0, \"top_p\": 0.5,"
                           "\"top_k\": 3, \"min_p\": 0.1, \"repeat_penalty\": 1.1, \"seed\": 12345678901,"
                           "\"stop\": [\"a\", \"bc\"], \"stream\": true, \"stream_options\": {\"include_usage\": true},"
                           "\"n\": 1, \"logprobs\": false, \"user\": \"me\", \"tools\": [{}], \"frequency_penalty\": 1,"
                           "\"ignore_eos\": true, \"response_format\": {\"type\": \"text\"}}";
        int rc = parse(MD_HTTP_CHAT, body, &r, &err);
        CHECK(rc == 0, "a full chat request: %s", err.msg);
        const md_gen_params *p = &r.params;
        CHECK(p->n_messages == 4 && p->messages[0].role == MX_ROLE_SYSTEM && p->messages[1].role == MX_ROLE_USER &&
                      p->messages[2].role == MX_ROLE_ASSISTANT && !strcmp(p->messages[1].content, "Hello") &&
                      p->messages[2].len == 0 && !strcmp(p->messages[3].content, "again"),
              "messages");
        CHECK(!p->prompt.s && !p->raw, "a chat is no raw prompt");
        CHECK(p->max_tokens == 9, "max_completion_tokens wins: %u", p->max_tokens);
        CHECK(p->sampling.temperature == 0 && p->sampling.top_p == 0.5f && p->sampling.top_k == 3 &&
                      p->sampling.min_p == 0.1f && p->sampling.repeat_penalty == 1.1f && p->sampling.seed == 12345678901ull,
              "sampling");
        CHECK(p->n_stop == 2 && !strcmp(p->stop[1].s, "bc"), "stop");
        CHECK(r.stream && r.include_usage && p->ignore_eos, "flags");
        md_http_gen_req_free(&r);

        /* Nulls are absent: the daemon's defaults. */
        rc = parse(MD_HTTP_CHAT, "{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"max_tokens\": null,"
                                 "\"temperature\": null, \"stop\": null, \"seed\": null, \"stream\": null, "
                                 "\"stream_options\": null, \"n\": null, \"logprobs\": null}", &r, &err);
        mx_sampling def;
        mx_sampling_defaults(&def);
        CHECK(rc == 0 && r.params.max_tokens == 0 && r.params.n_stop == 0 && !r.stream && !r.params.has_seed &&
                      r.params.sampling.temperature == def.temperature,
              "nulls: %d %s", rc, err.msg);
        md_http_gen_req_free(&r);
        rc = parse(MD_HTTP_CHAT, "{\"messages\": [{\"role\": \"user\", \"content\": \"x\"}], \"stop\": \"end\"}", &r,
                   &err);
        CHECK(rc == 0 && r.params.n_stop == 1 && !strcmp(r.params.stop[0].s, "end"), "one stop string");
        md_http_gen_req_free(&r);
}

static void test_completion(void) {
        md_http_gen_req r;
        mx_error err;
        int rc = parse(MD_HTTP_COMPLETION, "{\"prompt\": [\"Once upon\"], \"max_tokens\": 3, \"echo\": false, "
                                           "\"best_of\": 1, \"suffix\": null, \"logprobs\": 0}", &r, &err);
        CHECK(rc == 0 && r.params.raw && !strcmp(r.params.prompt.s, "Once upon") && r.params.max_tokens == 3 &&
                      !r.params.n_messages,
              "a completion: %d %s", rc, err.msg);
        md_http_gen_req_free(&r);
        /* A chat's fields mean nothing to a completion, and the reverse. */
        rc = parse(MD_HTTP_COMPLETION, "{\"prompt\": \"x\", \"messages\": 5, \"max_completion_tokens\": \"z\"}", &r,
                   &err);
        CHECK(rc == 0 && r.params.max_tokens == 0, "a completion with chat's fields: %d %s", rc, err.msg);
        md_http_gen_req_free(&r);
}

/* ---- keys ------------------------------------------------------------------------------ */

static char dir[64];

static void write_file(const char *name, const char *text) {
        char path[128];
        snprintf(path, sizeof(path), "%s/%s", dir, name);
        FILE *f = fopen(path, "w");
        fputs(text, f);
        fclose(f);
}

static char *read_keys_file(void) {
        char path[128];
        snprintf(path, sizeof(path), "%s/keys", dir);
        char *text;
        size_t len;
        mx_error err;
        return mx_read_file(path, 1 << 20, &text, &len, &err) == 0 ? text : NULL;
}

static void test_keys(void) {
        md_keys k;
        mx_error err = {0};
        CHECK(md_keys_open(&k, dir, &err) == 0 && k.n == 0, "no file, no keys: %s", err.msg);
        char a[MD_KEY_LEN + 1], b[MD_KEY_LEN + 1];
        md_key ka, kb, gone;
        CHECK(md_keys_new(&k, 1000, "laptop", 111, &ka, a, &err) == 0, "new: %s", err.msg);
        CHECK(md_keys_new(&k, 1001, NULL, 222, &kb, b, &err) == 0, "new without a name: %s", err.msg);
        CHECK(strlen(a) == MD_KEY_LEN && !strncmp(a, "mxk-", 4) && !strncmp(a + 4, ka.id, MD_KEY_ID_LEN) &&
                      strcmp(a, b) && strcmp(ka.id, kb.id),
              "keys %s %s", a, b);
        uint32_t uid = 0;
        CHECK(md_keys_check(&k, a, strlen(a), &uid) == 0 && uid == 1000, "a's owner");
        CHECK(md_keys_check(&k, b, strlen(b), &uid) == 0 && uid == 1001, "b's owner");
        char wrong[MD_KEY_LEN + 1];
        memcpy(wrong, a, sizeof(wrong));
        wrong[MD_KEY_LEN - 1] = wrong[MD_KEY_LEN - 1] == '0' ? '1' : '0';
        CHECK(md_keys_check(&k, wrong, strlen(wrong), &uid) == -EACCES, "a key with another secret");
        CHECK(md_keys_check(&k, a, strlen(a) - 1, &uid) == -EACCES, "a key cut short");
        CHECK(md_keys_check(&k, "", 0, &uid) == -EACCES, "no key");
        CHECK(md_keys_check(&k, "mxk-zzzzzzzzzzzz-", 17, &uid) == -EACCES, "not hex");
        memcpy(wrong, a, sizeof(wrong));
        wrong[5] = 'X';
        CHECK(md_keys_check(&k, wrong, strlen(wrong), &uid) == -EACCES, "a capital in the id");

        /* Only hashes on disk, 0600, read back the same. */
        char *text = read_keys_file();
        CHECK(text && !strstr(text, a + 4 + MD_KEY_ID_LEN + 1) && contains(text, ka.id) && contains(text, "laptop"),
              "the file: %s", text);
        free(text);
        char path[128];
        struct stat st;
        snprintf(path, sizeof(path), "%s/keys", dir);
        CHECK(stat(path, &st) == 0 && (st.st_mode & 0777) == 0600, "mode %o", st.st_mode & 0777);
        md_keys again;
        CHECK(md_keys_open(&again, dir, &err) == 0 && again.n == 2 && md_keys_check(&again, a, strlen(a), &uid) == 0 &&
                      uid == 1000 && again.v[0].created == 111 && !strcmp(again.v[0].name, "laptop"),
              "read back: %s", err.msg);
        md_keys_free(&again);

        /* Owners revoke their own; an admin anyone's; nobody else's. */
        CHECK(md_keys_revoke(&k, 1001, false, ka.id, &gone, &err) == -ENOENT, "bob revoked alice's key");
        CHECK(md_keys_revoke(&k, 1000, false, "000000000000", &gone, &err) == -ENOENT, "an unknown key");
        CHECK(md_keys_revoke(&k, 1000, false, ka.id, &gone, &err) == 0 && gone.uid == 1000, "alice's own");
        CHECK(md_keys_check(&k, a, strlen(a), &uid) == -EACCES, "a revoked key works");
        CHECK(md_keys_revoke(&k, 0, true, kb.id, &gone, &err) == 0 && k.n == 0, "the admin's revoke");
        CHECK(md_keys_open(&again, dir, &err) == 0 && again.n == 0, "revoked keys came back from the file");
        md_keys_free(&again);

        /* Names, and the most keys a user may have. */
        CHECK(md_keys_new(&k, 1000, "a b", 1, &ka, a, &err) == -EINVAL && contains(err.msg, "name"), "a space");
        CHECK(md_keys_new(&k, 1000, "a\nb", 1, &ka, a, &err) == -EINVAL, "a newline");
        char long_name[MD_KEY_NAME_MAX + 2];
        memset(long_name, 'n', sizeof(long_name) - 1);
        long_name[sizeof(long_name) - 1] = '\0';
        CHECK(md_keys_new(&k, 1000, long_name, 1, &ka, a, &err) == -EINVAL, "a long name");
        long_name[MD_KEY_NAME_MAX] = '\0';
        CHECK(md_keys_new(&k, 1000, long_name, 1, &ka, a, &err) == 0, "the longest name: %s", err.msg);
        for (int i = 1; i < MD_KEYS_PER_UID; i++)
                CHECK(md_keys_new(&k, 1000, "x", 1, &ka, a, &err) == 0, "key %d: %s", i, err.msg);
        CHECK(md_keys_new(&k, 1000, "x", 1, &ka, a, &err) == -EINVAL && contains(err.msg, "revoke one"),
              "past %d keys: %s", MD_KEYS_PER_UID, err.msg);
        CHECK(md_keys_new(&k, 1001, "x", 1, &ka, a, &err) == 0, "another user's first key");
        md_keys_free(&k);
}

static void test_keys_file(void) {
        static const struct {
                const char *text, *words;
        } bad[] = {
                {"", "not a mixtrald keys file"},
                {"mixtrald-usage 1\n", "not a mixtrald keys file"},
                {"mixtrald-keys 1\nzzzzzzzzzzzz 1 2 " "0000000000000000000000000000000000000000000000000000000000000000\n",
                 "keys:2: corrupt line"},
                {"mixtrald-keys 1\n0123456789ab -1 2 0000000000000000000000000000000000000000000000000000000000000000\n",
                 "keys:2"},
                {"mixtrald-keys 1\n0123456789ab 1 2 000000000000000000000000000000000000000000000000000000000000000\n",
                 "keys:2"},
                {"mixtrald-keys 1\n0123456789ab 1 2 0000000000000000000000000000000000000000000000000000000000000000",
                 "keys:2"},
                {"mixtrald-keys 1\n0123456789ab 1 2 0000000000000000000000000000000000000000000000000000000000000000 "
                 "a b\n", "keys:2"},
                {"mixtrald-keys 1\n0123456789ab 1 2 0000000000000000000000000000000000000000000000000000000000000000\n"
                 "0123456789ab 3 4 0000000000000000000000000000000000000000000000000000000000000000\n", "keys:3"},
                {"mixtrald-keys 1\n0123456789ab 1 2 0000000000000000000000000000000000000000000000000000000000000000 \n",
                 "keys:2"},
        };
        for (size_t i = 0; i < ARRAY_SIZE(bad); i++) {
                write_file("keys", bad[i].text);
                md_keys k;
                mx_error err = {0};
                CHECK(md_keys_open(&k, dir, &err) == -EBADMSG && contains(err.msg, bad[i].words),
                      "case %zu: '%s'", i, err.msg);
                md_keys_free(&k);
        }
        char path[128];
        snprintf(path, sizeof(path), "%s/keys", dir);
        unlink(path);
        CHECK(mkfifo(path, 0600) == 0, "mkfifo");
        md_keys k;
        mx_error err = {0};
        CHECK(md_keys_open(&k, dir, &err) < 0 && contains(err.msg, "keys"), "a FIFO: '%s'", err.msg);
        md_keys_free(&k);
        unlink(path);
}

/* ---- configuration ----------------------------------------------------------------------- */

static void test_config(void) {
        static const struct {
                const char *key, *value;
                bool ok;
        } cases[] = {
                {"http_socket", "/run/x/http.sock", true}, {"http_socket", "none", true},
                {"http_socket", "http.sock", false},       {"http_listen", "127.0.0.1:8080", true},
                {"http_listen", "127.9.9.9:1", true},      {"http_listen", "localhost:0", true},
                {"http_listen", "[::1]:65535", true},      {"http_listen", "none", true},
                {"http_listen", "0.0.0.0:8080", false},    {"http_listen", "192.168.1.2:8080", false},
                {"http_listen", "[::]:8080", false},       {"http_listen", "::1:8080", false},
                {"http_listen", "127.0.0.1", false},       {"http_listen", "127.0.0.1:", false},
                {"http_listen", "127.0.0.1:65536", false}, {"http_listen", "127.0.0.1:8K", false},
                {"http_listen", "127.0.0.1:-1", false},    {"http_listen", "example.com:80", false},
        };
        for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
                md_config c;
                md_config_defaults(&c);
                mx_error err = {0};
                int r = md_config_set_daemon(&c, cases[i].key, cases[i].value, &err);
                CHECK((r == 0) == cases[i].ok, "%s=%s: %d '%s'", cases[i].key, cases[i].value, r, err.msg);
                CHECK(cases[i].ok || contains(err.msg, cases[i].key), "'%s' does not name %s", err.msg, cases[i].key);
                md_config_free(&c);
        }
        md_config c;
        md_config_defaults(&c);
        mx_error err = {0};
        md_config_set_daemon(&c, "http_listen", "127.0.0.1:80", &err);
        md_config_set_daemon(&c, "http_listen", "none", &err);
        CHECK(!c.http_listen, "http_listen=none after an address");
        md_config_free(&c);
        struct sockaddr_storage ss;
        socklen_t len;
        CHECK(md_listen_addr_parse("[::1]:443", &ss, &len, &err) == 0 && ss.ss_family == AF_INET6 &&
                      len == sizeof(struct sockaddr_in6),
              "[::1]:443");
}

int main(void) {
        snprintf(dir, sizeof(dir), "/tmp/mixtrald-keys-XXXXXX");
        if (!mkdtemp(dir))
                return 1;
        test_refused();
        test_chat();
        test_completion();
        test_keys();
        test_keys_file();
        test_config();
        char cmd[128];
        snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
        if (system(cmd) != 0)
                fprintf(stderr, "cannot remove %s\n", dir);
        return test_result();
}
