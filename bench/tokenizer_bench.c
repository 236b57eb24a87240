/* Tokenizer encoding speed on English text, one core.
 *
 *   tokenizer-bench TOKENIZER TEXT_FILE [SECONDS]
 *
 * The text is encoded whole in 64 KiB pieces (a long prompt) and line by
 * line (chat-sized messages); prints one JSON object with MB/s for each. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "mixtral.h"

static double now(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* Encodes text in pieces of at most `piece` bytes (cut at newlines when
 * piece is 0) until `seconds` have passed; returns MB/s and token count. */
static double run(const mx_tokenizer *tok, const char *text, size_t len, size_t piece, double seconds,
                  size_t *tokens_per_pass) {
        mx_ids ids = {0};
        size_t bytes = 0, passes = 0;
        double t0 = now();
        do {
                size_t tokens = 0;
                for (size_t pos = 0; pos < len;) {
                        size_t n = len - pos;
                        if (piece && n > piece)
                                n = piece;
                        if (!piece) {
                                const char *nl = memchr(text + pos, '\n', n);
                                n = nl ? (size_t)(nl - (text + pos)) + 1 : n;
                        }
                        ids.n = 0;
                        if (mx_tokenize(tok, text + pos, n, &ids) < 0) {
                                fprintf(stderr, "tokenize failed\n");
                                exit(1);
                        }
                        tokens += ids.n;
                        pos += n;
                }
                *tokens_per_pass = tokens;
                bytes += len;
                passes++;
        } while (now() - t0 < seconds);
        double mbps = (double)bytes / (now() - t0) / 1e6;
        mx_ids_free(&ids);
        return mbps;
}

int main(int argc, char **argv) {
        if (argc < 3) {
                fprintf(stderr, "usage: %s TOKENIZER TEXT_FILE [SECONDS]\n", argv[0]);
                return 2;
        }
        double seconds = argc > 3 ? atof(argv[3]) : 2.0;
        mx_error err = {0};
        mx_tokenizer *tok = NULL;
        char *text = NULL;
        size_t len = 0, tok_long = 0, tok_lines = 0;
        if (mx_tokenizer_load(&tok, argv[1], &err) < 0 ||
            mx_read_file(argv[2], 1u << 30, &text, &len, &err) < 0) {
                fprintf(stderr, "%s\n", err.msg);
                return 1;
        }
        double long_mbps = run(tok, text, len, 65536, seconds, &tok_long);
        double line_mbps = run(tok, text, len, 0, seconds, &tok_lines);
        printf("{\"benchmark\": \"tokenizer-encode\", \"tokenizer\": \"%s\", \"text_bytes\": %zu, "
               "\"tokens\": %zu, \"bytes_per_token\": %.2f, \"long_text_MBps\": %.2f, "
               "\"per_line_MBps\": %.2f, \"threads\": 1}\n",
               argv[1], len, tok_long, (double)len / (double)tok_long, long_mbps, line_mbps);
        free(text);
        mx_tokenizer_free(tok);
        return 0;
}
