/* Checks the tokenizer against expectations computed by the reference
 * (Python sentencepiece, or the shared fixture file). Reads lines:
 *
 *   E <hex text> <ids> <hex decode(ids)>   encode text, decode ids
 *   D <ids> <hex decode(ids)>              decode ids only
 *   F <hex text> <ids>                     fixture: encode only
 *
 * fields separated by tabs, ids by spaces. For every case it also checks
 * that streaming decode, one id at a time, emits only whole UTF-8
 * characters and adds up to the batch decode, and that decode(encode(x))
 * gives x back for valid UTF-8 without U+2581 (which SentencePiece itself
 * maps to a space), and that mx_tokenizer_min_tokens never says more than
 * the real count.
 *
 *   tokenizer-check [--fixture] TOKENIZER CASES
 *
 * TOKENIZER is a SentencePiece model or a GGUF file (its vocabulary).
 * With --fixture the lines are those of tokenizer_v1_cases.tsv: hex text,
 * tab, ids (an F line without its tag); without TOKENIZER and CASES it
 * finds the real tokenizer and the fixture in ../shared, or skips. */
#include "mixtral.h"
#include "test_util.h"

#define MAX_REPORTS 20

static int reports;

static int parse_ids(char *s, mx_ids *ids) {
        ids->n = 0;
        for (char *tok = strtok(s, " "); tok; tok = strtok(NULL, " ")) {
                char *end;
                long v = strtol(tok, &end, 10);
                if (*end || mx_ids_push(ids, (int32_t)v) < 0)
                        return -1;
        }
        return 0;
}

static void report(const char *what, const char *text, size_t len, const mx_ids *want,
                   const mx_ids *got) {
        test_failures++;
        if (++reports > MAX_REPORTS)
                return;
        fprintf(stderr, "MISMATCH (%s) text hex=", what);
        print_hex(stderr, text, len);
        fprintf(stderr, "\n  expected:");
        for (size_t i = 0; want && i < want->n; i++)
                fprintf(stderr, " %d", want->v[i]);
        fprintf(stderr, "\n  got:     ");
        for (size_t i = 0; got && i < got->n; i++)
                fprintf(stderr, " %d", got->v[i]);
        fprintf(stderr, "\n");
}

static bool has_u2581(const char *s, size_t n) {
        return memmem(s, n, "\xE2\x96\x81", 3) != NULL;
}

/* Streams ids through the incremental decoder; every chunk must be whole
 * characters, and all of them together the batch decode. */
static void check_decode(const mx_tokenizer *tok, const mx_ids *ids, const char *want,
                         size_t want_len) {
        mx_buf batch = {0}, stream = {0};
        mx_decoder d;
        int r = mx_detokenize(tok, ids->v, ids->n, &batch);
        if (r < 0 || batch.n != want_len || memcmp(batch.p, want, want_len) != 0)
                report("decode", want, want_len, ids, NULL);
        mx_decoder_init(&d, tok);
        for (size_t i = 0; i <= ids->n; i++) {
                size_t before = stream.n;
                r = i < ids->n ? mx_decoder_push(&d, ids->v[i], &stream) : mx_decoder_finish(&d, &stream);
                if (r < 0 || !utf8_strict(stream.p + before, stream.n - before)) {
                        report("stream chunk not whole UTF-8", stream.p + before, stream.n - before, ids,
                               NULL);
                        break;
                }
        }
        if (stream.n != batch.n || (stream.n && memcmp(stream.p, batch.p, batch.n) != 0))
                report("stream != batch", stream.p ? stream.p : "", stream.n, ids, NULL);
        mx_buf_free(&batch);
        mx_buf_free(&stream);
}

static void check_encode(const mx_tokenizer *tok, const char *text, size_t len, const mx_ids *want) {
        mx_ids got = {0};
        int r = mx_tokenize(tok, text, len, &got);
        if (r < 0 || !ids_eq(got.v, got.n, want->v, want->n))
                report("encode", text, len, want, &got);
        /* The daemon refuses prompts on this bound before tokenizing. */
        if (r == 0 && mx_tokenizer_min_tokens(tok, text, len) > got.n)
                report("min_tokens above the real count", text, len, want, &got);
        if (utf8_strict(text, len) && !has_u2581(text, len)) {
                mx_buf back = {0};
                if (mx_detokenize(tok, got.v, got.n, &back) < 0 || back.n != len ||
                    memcmp(back.p ? back.p : "", text, len) != 0)
                        report("decode(encode(x)) != x", text, len, &got, NULL);
                mx_buf_free(&back);
        }
        mx_ids_free(&got);
}

static int run_line(const mx_tokenizer *tok, char *line, char *buf, char *buf2) {
        char *f[4] = {0};
        int nf = 0;
        for (char *p = line; nf < 4; nf++) {
                f[nf] = p;
                p = strchr(p, '\t');
                if (!p) {
                        nf++;
                        break;
                }
                *p++ = '\0';
        }
        mx_ids ids = {0};
        long len = -1, dlen = -1;
        int r = -1;
        if (f[0][0] == 'E' && nf == 4) {
                len = unhex(f[1], strlen(f[1]), buf);
                dlen = unhex(f[3], strlen(f[3]), buf2);
                if (len >= 0 && dlen >= 0 && parse_ids(f[2], &ids) == 0) {
                        check_encode(tok, buf, (size_t)len, &ids);
                        check_decode(tok, &ids, buf2, (size_t)dlen);
                        r = 0;
                }
        } else if (f[0][0] == 'F' && nf == 3) {
                len = unhex(f[1], strlen(f[1]), buf);
                if (len >= 0 && parse_ids(f[2], &ids) == 0) {
                        check_encode(tok, buf, (size_t)len, &ids);
                        r = 0;
                }
        } else if (f[0][0] == 'D' && nf == 3) {
                dlen = unhex(f[2], strlen(f[2]), buf2);
                if (dlen >= 0 && parse_ids(f[1], &ids) == 0) {
                        check_decode(tok, &ids, buf2, (size_t)dlen);
                        r = 0;
                }
        }
        mx_ids_free(&ids);
        return r;
}

int main(int argc, char **argv) {
        bool fixture = argc >= 2 && strcmp(argv[1], "--fixture") == 0;
        const char *shared[3] = {argv[0], test_real_tokenizer(),
                                 test_shared_fixture("tokenizer_v1_cases.tsv")};
        if (fixture && argc == 2) {
                if (!shared[1] || !shared[2])
                        test_skip("no real tokenizer or tokenizer_v1_cases.tsv "
                                  "(set MIXTRAL_TOKENIZER, or check out ../shared)");
                argv = (char **)shared;
        } else if (argc != 3 + fixture) {
                fprintf(stderr, "usage: %s [--fixture] [TOKENIZER CASES]\n", argv[0]);
                return 2;
        } else {
                argv += fixture;
                if (fixture && access(argv[2], R_OK) != 0)
                        test_skip("no fixture file (check out ../shared)");
        }
        mx_error err = {0};
        mx_tokenizer *tok = NULL;
        if (mx_tokenizer_open(argv[1], &tok, &err) < 0) {
                fprintf(stderr, "%s\n", err.msg);
                return 1;
        }
        FILE *f = fopen(argv[2], "re");
        if (!f) {
                perror(argv[2]);
                return 1;
        }
        char *line = NULL;
        size_t cap = 0, cases = 0;
        ssize_t n;
        while ((n = getline(&line, &cap, f)) > 0) {
                if (line[n - 1] == '\n')
                        line[--n] = '\0';
                char *buf = malloc((size_t)n + 1), *buf2 = malloc((size_t)n + 1), *tagged = NULL;
                if (fixture && asprintf(&tagged, "F\t%s", line) < 0)
                        tagged = NULL;
                if (!buf || !buf2 || (fixture && !tagged) ||
                    run_line(tok, fixture ? tagged : line, buf, buf2) < 0) {
                        fprintf(stderr, "%s: malformed line %zu\n", argv[2], cases + 1);
                        return 1;
                }
                free(buf), free(buf2), free(tagged);
                cases++;
        }
        free(line);
        fclose(f);
        mx_tokenizer_free(tok);
        printf("%zu cases, %d mismatches\n", cases, test_failures);
        return cases > 0 ? test_result() : 1;
}
