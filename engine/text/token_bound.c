/* A lower bound on how many tokens a text becomes, without tokenizing it:
 * the daemon refuses a prompt that cannot fit the context before spending
 * any time on it (a 100 MB prompt would otherwise keep a thread busy for
 * a minute only to be refused).
 *
 * Whitespace may be collapsed or dropped before encoding (the chat
 * format's normalizer, remove_extra_whitespaces), but no other byte is:
 * each survives as at least one byte of some piece, and a piece stands for
 * at most as many of them as it has bytes that are not U+2581 (the escaped
 * space, which a text may also hold itself: counted as a space on both
 * sides). Without byte fallback a run of unknown characters is one <unk>,
 * so no bound holds and the answer is 0. */
#include <string.h>

#include "text.h"

static const char escaped_space[] = "\xE2\x96\x81"; /* U+2581 */

static bool is_space(unsigned char c) {
        return c == ' ' || (c >= '\t' && c <= '\r');
}

/* The most non-space text bytes one piece stands for: measured once, when
 * the tokenizer is built, since a prompt is bounded on every request. */
void mx_tok_measure_widest(mx_tokenizer *tok) {
        uint32_t most = 1;
        for (uint32_t i = 0; i < tok->n; i++) {
                const char *p = tok->text + tok->off[i];
                uint32_t n = tok->len[i], spaces = 0;
                if (tok->type[i] == MX_PIECE_BYTE || tok->type[i] == MX_PIECE_CONTROL)
                        continue;
                for (const char *q = p; (q = memmem(q, (size_t)(p + n - q), escaped_space, 3)); q += 3)
                        spaces++;
                if (n - 3 * spaces > most)
                        most = n - 3 * spaces;
        }
        tok->widest_piece = most;
}

uint64_t mx_tokenizer_min_tokens(const mx_tokenizer *tok, const char *text, size_t len) {
        if (!tok->byte_fallback)
                return 0;
        uint64_t solid = 0;
        for (size_t i = 0; i < len; i++) {
                unsigned char c = (unsigned char)text[i];
                if (c == 0xE2 && len - i >= 3 && !memcmp(text + i, escaped_space, 3))
                        i += 2;
                else
                        solid += !is_space(c);
        }
        uint32_t widest = tok->widest_piece ? tok->widest_piece : 1;
        return (solid + widest - 1) / widest;
}
