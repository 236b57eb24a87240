/* Loading tokenizer models: every malformed or unsupported model is refused
 * with a message naming the file; BPE details that the real tokenizer does
 * not exercise (unused pieces, no byte fallback); streaming decode.
 *
 *   test-tokenizer-model TRAINED_TOKENIZER */
#include <fcntl.h>
#include <math.h>
#include <sys/stat.h>

#include "mixtral.h"
#include "mx_common.h"
#include "sentencepiece_model.pb-c.h"
#include "test_util.h"

typedef Sentencepiece__ModelProto__SentencePiece Piece;

typedef struct model_spec {
        const char *pieces[300];
        float scores[300];
        int types[300];
        size_t n;
        int model_type;
        bool byte_fallback, whitespace_suffix;
        const char *charsmap;
} model_spec;

static void add(model_spec *s, const char *p, float score, int type) {
        s->pieces[s->n] = p;
        s->scores[s->n] = score;
        s->types[s->n++] = type;
}

/* The usual <unk> <s> </s> head, then (optionally) all byte pieces. */
static void base(model_spec *s, bool bytes) {
        static char names[256][8];
        *s = (model_spec){.model_type = 2, .byte_fallback = bytes};
        add(s, "<unk>", 0, 2);
        add(s, "<s>", 0, 3);
        add(s, "</s>", 0, 3);
        for (int b = 0; bytes && b < 256; b++) {
                snprintf(names[b], sizeof(names[b]), "<0x%02X>", b);
                add(s, names[b], 0, 6);
        }
}

static uint8_t *pack(const model_spec *s, size_t *len) {
        Sentencepiece__ModelProto m = SENTENCEPIECE__MODEL_PROTO__INIT;
        Sentencepiece__TrainerSpec ts = SENTENCEPIECE__TRAINER_SPEC__INIT;
        Sentencepiece__NormalizerSpec ns = SENTENCEPIECE__NORMALIZER_SPEC__INIT;
        Piece pieces[300], *pp[300];
        for (size_t i = 0; i < s->n; i++) {
                sentencepiece__model_proto__sentence_piece__init(&pieces[i]);
                pieces[i].piece = (char *)s->pieces[i];
                pieces[i].has_score = true, pieces[i].score = s->scores[i];
                pieces[i].has_type = true, pieces[i].type = s->types[i];
                pp[i] = &pieces[i];
        }
        m.n_pieces = s->n, m.pieces = pp;
        ts.has_model_type = true, ts.model_type = s->model_type;
        ts.has_byte_fallback = true, ts.byte_fallback = s->byte_fallback;
        ts.has_treat_whitespace_as_suffix = true, ts.treat_whitespace_as_suffix = s->whitespace_suffix;
        ns.name = (char *)"identity";
        ns.has_add_dummy_prefix = true, ns.add_dummy_prefix = true;
        ns.has_remove_extra_whitespaces = true, ns.remove_extra_whitespaces = false;
        if (s->charsmap) {
                ns.name = (char *)"nmt_nfkc";
                ns.has_precompiled_charsmap = true;
                ns.precompiled_charsmap.data = (uint8_t *)s->charsmap;
                ns.precompiled_charsmap.len = strlen(s->charsmap);
        }
        m.trainer_spec = &ts, m.normalizer_spec = &ns;
        *len = sentencepiece__model_proto__get_packed_size(&m);
        uint8_t *buf = malloc(*len + 1);
        sentencepiece__model_proto__pack(&m, buf);
        return buf;
}

static void expect_refused(const model_spec *s, const char *needle) {
        size_t len;
        uint8_t *buf = pack(s, &len);
        mx_tokenizer *tok = NULL;
        mx_error err = {0};
        int r = mx_tokenizer_load_buffer(&tok, buf, len, "bad.model", &err);
        CHECK(r < 0 && !tok && strstr(err.msg, "bad.model: ") && strstr(err.msg, needle),
              "expected \"%s\", got %d \"%s\"", needle, r, err.msg);
        mx_tokenizer_free(tok);
        free(buf);
}

static void bad_models(void) {
        model_spec s;
        base(&s, true), s.model_type = 1;
        expect_refused(&s, "not a BPE");
        base(&s, false), s.pieces[0] = "x", s.types[0] = 1;
        expect_refused(&s, "no unknown piece");
        base(&s, true), s.n--;
        expect_refused(&s, "piece <0xFF> is missing");
        base(&s, true), s.pieces[10] = "<0xzz>";
        expect_refused(&s, "not <0x00>..<0xFF>");
        base(&s, false), add(&s, "<0x41>", 0, 6);
        expect_refused(&s, "byte_fallback is off");
        base(&s, false), add(&s, "ab", -1, 1), add(&s, "ab", -2, 1);
        expect_refused(&s, "duplicate");
        base(&s, false), add(&s, "", -1, 1);
        expect_refused(&s, "is empty");
        base(&s, false), add(&s, "ab", NAN, 1);
        expect_refused(&s, "non-finite score");
        base(&s, false), add(&s, "ab", -1, 9);
        expect_refused(&s, "unknown type 9");
        base(&s, false), add(&s, "<unk2>", 0, 2);
        expect_refused(&s, "two unknown pieces");
        base(&s, false), s.charsmap = "xx";
        expect_refused(&s, "normalization rule \"nmt_nfkc\" is not supported");
        base(&s, false), s.whitespace_suffix = true;
        expect_refused(&s, "treat_whitespace_as_suffix");

        mx_tokenizer *tok = NULL;
        mx_error err = {0};
        CHECK(mx_tokenizer_load_buffer(&tok, "", 0, "empty.model", &err) < 0 &&
                      strstr(err.msg, "empty.model"), "%s", err.msg);
        CHECK(mx_tokenizer_load_buffer(&tok, "\xff\xff\xff\xff\xff", 5, "junk.model", &err) < 0 &&
                      strstr(err.msg, "junk.model: not a SentencePiece model"), "%s", err.msg);
        CHECK(mx_tokenizer_load_buffer(&tok, "\x0a\x05" "ab", 4, "cut.model", &err) < 0 &&
                      strstr(err.msg, "cut.model: not a SentencePiece model"), "%s", err.msg);
        /* Two bytes per empty piece: refused by count before anything is unpacked. */
        size_t n = (1u << 20) + 1;
        char *many = malloc(2 * n);
        for (size_t i = 0; i < n; i++)
                many[2 * i] = 0x0a, many[2 * i + 1] = 0;
        CHECK(mx_tokenizer_load_buffer(&tok, many, 2 * n, "many.model", &err) < 0 &&
                      strstr(err.msg, "many.model: 1048577 pieces (at most 1048576)"), "%s", err.msg);
        free(many);
}

static void expect_file_refused(const char *path, const char *needle) {
        mx_tokenizer *tok = NULL;
        mx_error err = {0};
        int r = mx_tokenizer_load(&tok, path, &err);
        CHECK(r < 0 && strstr(err.msg, path) && strstr(err.msg, needle), "%s: expected \"%s\", got \"%s\"",
              path, needle, err.msg);
}

static void bad_files(void) {
        char dir[] = "/tmp/mx-tok-XXXXXX", path[64];
        CHECK(mkdtemp(dir), "mkdtemp");
        snprintf(path, sizeof(path), "%s/none.model", dir);
        expect_file_refused(path, "No such file");
        expect_file_refused(dir, "not a regular file (a directory)");
        snprintf(path, sizeof(path), "%s/fifo.model", dir);
        CHECK(mkfifo(path, 0600) == 0, "mkfifo");
        expect_file_refused(path, "not a regular file (a FIFO)");
        unlink(path);
        expect_file_refused("/dev/zero", "not a regular file (a character device)");
        snprintf(path, sizeof(path), "%s/huge.model", dir);
        int fd = open(path, O_WRONLY | O_CREAT, 0600);
        CHECK(fd >= 0 && ftruncate(fd, (off_t)MX_TOKENIZER_MAX_FILE_BYTES + 1) == 0, "sparse file");
        close(fd);
        expect_file_refused(path, "more than the");
        unlink(path);
        rmdir(dir);
}

static void expect_ids(const mx_tokenizer *tok, const char *text, const int32_t *want, size_t n) {
        mx_ids ids = {0};
        int r = mx_tokenize(tok, text, strlen(text), &ids);
        CHECK(r == 0 && ids_eq(ids.v, ids.n, want, n),
              "\"%s\": got %zu ids, first %d", text, ids.n, ids.n ? ids.v[0] : -1);
        mx_ids_free(&ids);
}

/* Unused pieces merge but are split back into what formed them; without
 * byte fallback a run of unknown characters is one <unk>. */
static void bpe_details(void) {
        model_spec s;
        base(&s, false);
        add(&s, "\xE2\x96\x81" "a", -1, 1);    /* 3: ▁a */
        add(&s, "\xE2\x96\x81" "ab", 0, 5);    /* 4: ▁ab, unused */
        add(&s, "b", -2, 1);                   /* 5 */
        add(&s, "a", -3, 1);                   /* 6 */
        add(&s, "\xE2\x96\x81", -4, 1);        /* 7: ▁ */
        size_t len;
        uint8_t *buf = pack(&s, &len);
        mx_tokenizer *tok = NULL;
        mx_error err = {0};
        CHECK(mx_tokenizer_load_buffer(&tok, buf, len, "t.model", &err) == 0, "%s", err.msg);
        free(buf);
        if (!tok)
                return;
        expect_ids(tok, "ab", (int32_t[]){3, 5}, 2);
        expect_ids(tok, "xyz", (int32_t[]){7, 0}, 2);
        expect_ids(tok, "axyb", (int32_t[]){3, 0, 5}, 3);
        expect_ids(tok, "", NULL, 0);
        mx_buf out = {0};
        CHECK(mx_detokenize(tok, (int32_t[]){1, 3, 0, 5, 2}, 5, &out) == 0 &&
                      strcmp(out.p, "a \xE2\x81\x87 b") == 0, "decode with <unk>: \"%s\"", out.p);
        CHECK(mx_detokenize(tok, (int32_t[]){99}, 1, &out) == -EINVAL, "id out of range");
        mx_buf_free(&out);
        mx_tokenizer_free(tok);
}

/* What each push emits: whole characters only, as soon as they are whole. */
static void streaming(const char *path) {
        mx_tokenizer *tok = NULL;
        mx_error err = {0};
        CHECK(mx_tokenizer_load(&tok, path, &err) == 0, "%s", err.msg);
        if (!tok)
                return;
        static const struct {
                int byte; /* byte piece id is 3 + byte; -1 = finish */
                const char *emits;
        } steps[] = {
                {0xC3, ""}, {0xA9, "\xC3\xA9"},                     /* é in two pushes */
                {0xE6, ""}, {0x41, "\xEF\xBF\xBD" "A"},             /* broken, then A */
                {0xF0, ""}, {0x9F, ""}, {0x99, ""}, {0x82, "\xF0\x9F\x99\x82"}, /* 🙂 */
                {0xF0, ""}, {0x9F, ""}, {-1, "\xEF\xBF\xBD\xEF\xBF\xBD"},        /* cut off */
        };
        mx_decoder d;
        mx_decoder_init(&d, tok);
        for (size_t i = 0; i < MX_ELEMENTSOF(steps); i++) {
                mx_buf out = {0};
                mx_buf_append(&out, "", 0);
                int r = steps[i].byte < 0 ? mx_decoder_finish(&d, &out)
                                          : mx_decoder_push(&d, 3 + steps[i].byte, &out);
                CHECK(r == 0 && strcmp(out.p, steps[i].emits) == 0, "step %zu emitted \"%s\"", i, out.p);
                mx_buf_free(&out);
        }
        mx_tokenizer_free(tok);
}

/* The made-up tokenizer of random demo models (b1's 32000 pieces): it
 * loads, has the specials, and text goes through it and back. */
static void test_synthetic_tokenizer(void) {
        char path[] = "/tmp/mx-synth-tok-XXXXXX";
        int fd = mkstemp(path);
        close(fd);
        mx_error err = {0};
        CHECK(mx_tokenizer_write_synthetic(path, 32000, &err) == 0, "write: %s", err.msg);
        mx_tokenizer *tok = NULL;
        CHECK(mx_tokenizer_load(&tok, path, &err) == 0, "load: %s", err.msg);
        if (tok) {
                CHECK(mx_tokenizer_vocab_size(tok) == 32000 && mx_tokenizer_bos(tok) == 1 && mx_tokenizer_eos(tok) == 2 &&
                              mx_tokenizer_unk(tok) == 0,
                      "pieces %u, bos %d, eos %d, unk %d", mx_tokenizer_vocab_size(tok), mx_tokenizer_bos(tok),
                      mx_tokenizer_eos(tok), mx_tokenizer_unk(tok));
                static const char text[] = "Hello, w12 w7 — ünïcödé";
                mx_ids ids = {0};
                mx_buf back = {0};
                CHECK(mx_tokenize(tok, text, strlen(text), &ids) == 0 && ids.n > 0, "tokenize");
                CHECK(mx_detokenize(tok, ids.v, ids.n, &back) == 0 && back.n == strlen(text) &&
                              !memcmp(back.p, text, back.n),
                      "round trip: '%.*s'", (int)back.n, back.p ? back.p : "");
                mx_ids_free(&ids);
                mx_buf_free(&back);
        }
        mx_tokenizer_free(tok);
        CHECK(mx_tokenizer_write_synthetic(path, 100, &err) < 0, "a tokenizer too small for the bytes was written");
        unlink(path);
}

int main(int argc, char **argv) {
        if (argc != 2) {
                fprintf(stderr, "usage: %s TRAINED_TOKENIZER\n", argv[0]);
                return 2;
        }
        bad_models();
        bad_files();
        bpe_details();
        streaming(argv[1]);
        test_synthetic_tokenizer();
        return test_result();
}
