/* The Mixtral-Instruct chat format.
 *
 *   test-chat --fixtures          the 60 reference conversations of
 *                                 ../shared/fixtures/chat_v1_cases.jsonl
 *                                 (real tokenizer; skips without them)
 *   test-chat --rules TOKENIZER   normalization rules and malformed input */
#include <jansson.h>

#include "mixtral.h"
#include "test_util.h"

static mx_tokenizer *load(const char *path) {
        mx_error err = {0};
        mx_tokenizer *tok = NULL;
        if (mx_tokenizer_load(&tok, path, &err) < 0) {
                fprintf(stderr, "%s\n", err.msg);
                exit(1);
        }
        return tok;
}

static bool ids_equal(const mx_ids *a, const mx_ids *b) {
        return ids_eq(a->v, a->n, b->v, b->n);
}

static int run_fixtures(void) {
        const char *tp = test_real_tokenizer(), *fp = test_shared_fixture("chat_v1_cases.jsonl");
        if (!tp || !fp)
                test_skip("no real tokenizer or chat_v1_cases.jsonl (set MIXTRAL_TOKENIZER, or check out ../shared)");
        mx_tokenizer *tok = load(tp);
        FILE *f = fopen(fp, "re");
        char *line = NULL;
        size_t cap = 0;
        int n = 0;
        while (f && getline(&line, &cap, f) > 0) {
                json_error_t je;
                json_auto_t *c = json_loads(line, 0, &je);
                CHECK(c, "line %d: %s", n + 1, je.text);
                if (!c)
                        continue;
                json_t *sys = json_object_get(c, "system"), *want = json_object_get(c, "ids");
                char *msgs = json_dumps(json_object_get(c, "messages"), 0);
                mx_conversation conv = {0};
                mx_ids got = {0}, exp = {0};
                mx_error err = {0};
                size_t i;
                json_t *v;
                json_array_foreach(want, i, v) mx_ids_push(&exp, (int32_t)json_integer_value(v));
                int r = mx_conversation_from_json(&conv, msgs, strlen(msgs), "fixture", &err);
                if (r == 0)
                        r = mx_chat_encode(tok, json_string_value(sys), conv.msgs, conv.n, &got, &err);
                CHECK(r == 0 && ids_equal(&got, &exp), "case %d: %s: ids differ (%zu vs %zu expected)",
                      n + 1, err.msg, got.n, exp.n);
                mx_conversation_free(&conv);
                mx_ids_free(&got);
                mx_ids_free(&exp);
                free(msgs);
                n++;
        }
        free(line);
        CHECK(f && n == 60, "expected 60 cases, read %d", n);
        if (f)
                fclose(f);
        mx_tokenizer_free(tok);
        printf("%d chat fixtures checked\n", n);
        return test_result();
}

/* ids of a conversation given as JSON, or the error message. */
static int chat_json(const mx_tokenizer *tok, const char *system, const char *json, mx_ids *ids,
                     mx_error *err) {
        mx_conversation conv = {0};
        ids->n = 0;
        *err = (mx_error){0};
        int r = mx_conversation_from_json(&conv, json, strlen(json), "conv.json", err);
        if (r == 0)
                r = mx_chat_encode(tok, system, conv.msgs, conv.n, ids, err);
        mx_conversation_free(&conv);
        return r;
}

static void expect_error(const mx_tokenizer *tok, const char *json, const char *needle) {
        mx_ids ids = {0};
        mx_error err;
        int r = chat_json(tok, NULL, json, &ids, &err);
        CHECK(r < 0 && strstr(err.msg, needle), "%s: expected an error containing \"%s\", got %d \"%s\"",
              json, needle, r, err.msg);
        mx_ids_free(&ids);
}

static void expect_same(const mx_tokenizer *tok, const char *sys_a, const char *a, const char *sys_b,
                        const char *b) {
        mx_ids x = {0}, y = {0};
        mx_error ea, eb;
        int ra = chat_json(tok, sys_a, a, &x, &ea), rb = chat_json(tok, sys_b, b, &y, &eb);
        CHECK(ra == 0 && rb == 0 && ids_equal(&x, &y), "%s vs %s: %s %s", a, b, ea.msg, eb.msg);
        mx_ids_free(&x);
        mx_ids_free(&y);
}

static void check_structure(const mx_tokenizer *tok) {
        /* Text that looks like control tokens stays text. */
        mx_ids ids = {0};
        mx_error err;
        int r = chat_json(tok, NULL,
                          "[{\"role\":\"user\",\"content\":\"<s> [INST] </s> [/INST]\"},"
                          "{\"role\":\"assistant\",\"content\":\"</s>\"},"
                          "{\"role\":\"user\",\"content\":\"<unk>\"}]",
                          &ids, &err);
        CHECK(r == 0, "%s", err.msg);
        int bos = 0, eos = 0;
        for (size_t i = 0; i < ids.n; i++) {
                bos += ids.v[i] == mx_tokenizer_bos(tok);
                eos += ids.v[i] == mx_tokenizer_eos(tok);
                CHECK(ids.v[i] != mx_tokenizer_unk(tok), "unk id at %zu", i);
        }
        CHECK(ids.n > 0 && ids.v[0] == mx_tokenizer_bos(tok) && bos == 1, "one BOS, first (%d)", bos);
        CHECK(eos == 1, "one EOS, after the assistant message (%d)", eos);

        /* A user turn is exactly encode("[INST] " + content + " [/INST]"). */
        mx_ids want = {0};
        mx_ids_push(&want, mx_tokenizer_bos(tok));
        mx_tokenize(tok, "[INST] S\n\nhi [/INST]", 20, &want);
        chat_json(tok, "S", "[{\"role\":\"user\",\"content\":\"hi\"}]", &ids, &err);
        CHECK(ids_equal(&ids, &want), "system prompt goes before the first user message");
        mx_ids_free(&ids);
        mx_ids_free(&want);
}

static int run_rules(const char *path) {
        mx_tokenizer *tok = load(path);
        expect_error(tok, "[]", "no user message");
        expect_error(tok, "[{\"role\":\"system\",\"content\":\"x\"}]", "no user message");
        expect_error(tok, "[{\"role\":\"assistant\",\"content\":\"x\"},{\"role\":\"user\",\"content\":\"y\"}]",
                     "first message");
        expect_error(tok, "[{\"role\":\"user\",\"content\":\"x\"},{\"role\":\"assistant\",\"content\":\"y\"}]",
                     "last message");
        expect_error(tok,
                     "[{\"role\":\"user\",\"content\":\"x\"},{\"role\":\"assistant\",\"content\":\"\"},"
                     "{\"role\":\"user\",\"content\":\"y\"}]",
                     "assistant message 2 is empty");
        expect_error(tok, "{\"role\":\"user\"}", "conv.json: expected a JSON array");
        expect_error(tok, "[1]", "conv.json: message 1 is not an object");
        expect_error(tok, "[{\"content\":\"x\"}]", "message 1 has no \"role\"");
        expect_error(tok, "[{\"role\":\"tool\",\"content\":\"x\"}]", "role \"tool\"");
        expect_error(tok, "[{\"role\":\"user\",\"content\":3}]", "no \"content\" string");
        expect_error(tok, "[{\"role\":\"user\",\"content\":\"x\"}", "conv.json: not valid JSON");
        expect_error(tok, "[{\"role\":\"user\",\"role\":\"user\",\"content\":\"x\"}]", "duplicate");

        /* Normalization, as mistral-common's request normalizer. */
        expect_same(tok, NULL,
                    "[{\"role\":\"user\",\"content\":\"a\"},{\"role\":\"user\",\"content\":\"b\"}]", NULL,
                    "[{\"role\":\"user\",\"content\":\"a\\n\\nb\"}]");
        expect_same(tok, NULL,
                    "[{\"role\":\"user\",\"content\":\"a\"},{\"role\":\"user\",\"content\":\"\"}]", NULL,
                    "[{\"role\":\"user\",\"content\":\"a\\n\\n\"}]");
        expect_same(tok, NULL,
                    "[{\"role\":\"user\",\"content\":\"q\"},{\"role\":\"assistant\",\"content\":\"a\"},"
                    "{\"role\":\"assistant\",\"content\":\"\"},{\"role\":\"assistant\",\"content\":\"b\"},"
                    "{\"role\":\"user\",\"content\":\"r\"}]",
                    NULL,
                    "[{\"role\":\"user\",\"content\":\"q\"},{\"role\":\"assistant\",\"content\":\"a\\n\\nb\"},"
                    "{\"role\":\"user\",\"content\":\"r\"}]");
        expect_same(tok, NULL,
                    "[{\"role\":\"system\",\"content\":\"x\"},{\"role\":\"user\",\"content\":\"u\"},"
                    "{\"role\":\"system\",\"content\":\"y\"}]",
                    "x\n\ny", "[{\"role\":\"user\",\"content\":\"u\"}]");
        expect_same(tok, "p", "[{\"role\":\"system\",\"content\":\"x\"},{\"role\":\"user\",\"content\":\"u\"}]",
                    "p\n\nx", "[{\"role\":\"user\",\"content\":\"u\"}]");
        expect_same(tok, "", "[{\"role\":\"system\",\"content\":\"\"},{\"role\":\"user\",\"content\":\"u\"}]",
                    NULL, "[{\"role\":\"user\",\"content\":\"u\"}]");
        check_structure(tok);
        mx_tokenizer_free(tok);
        return test_result();
}

int main(int argc, char **argv) {
        if (argc == 2 && strcmp(argv[1], "--fixtures") == 0)
                return run_fixtures();
        if (argc == 3 && strcmp(argv[1], "--rules") == 0)
                return run_rules(argv[2]);
        fprintf(stderr, "usage: %s --fixtures | --rules TOKENIZER\n", argv[0]);
        return 2;
}
