/* The text module (tokenizer, chat format, UTF-8): the tokenizer's tables,
 * shared by its loading, encoding and decoding, and UTF-8 validity exactly as
 * SentencePiece judges it (no overlong forms, no surrogates, nothing above
 * U+10FFFF). Private to the engine. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "mixtral.h"

struct mx_tokenizer {
        uint32_t n;           /* pieces */
        char *text;           /* all pieces, each NUL-terminated */
        uint32_t *off, *len;  /* piece i is text[off[i] .. off[i]+len[i]) */
        float *score;
        uint8_t *type;
        int16_t *byte_of;     /* byte value of a BYTE piece, else -1 */
        int32_t byte_id[256]; /* id of <0xHH>, -1 when absent */
        uint32_t *slots;      /* open-addressing table of ids + 1 (0 = empty) */
        uint32_t mask;
        uint32_t *user_defined; /* ids of USER_DEFINED pieces */
        uint32_t n_user_defined;
        uint32_t n_unused;
        int32_t unk, bos, eos, pad;
        bool add_bos, add_eos; /* kept for files that record them (GGUF); encoding ignores them */
        bool add_dummy_prefix, remove_extra_whitespaces, escape_whitespaces;
        bool byte_fallback;
        /* No piece has U+2581 after another character, so no piece can
         * span the start of a word: each word is encoded on its own. */
        bool split_words;
        /* The most bytes of text other than whitespace one piece stands
         * for (token_bound.c). */
        uint32_t widest_piece;
        char *unk_surface;
        size_t unk_surface_len;
};

/* One piece as a loader hands it to the table builder. */
typedef struct mx_piece_src {
        const char *s;
        size_t len;
        float score;
        int type; /* mx_piece_type, unchecked */
} mx_piece_src;

/* What a tokenizer is built from, whichever file it came from (a
 * SentencePiece ModelProto, a GGUF vocabulary). */
typedef struct mx_vocab_src {
        uint32_t n;           /* pieces, at least 1 */
        size_t text_bytes;    /* their lengths, summed */
        /* Piece i, asked for once each, in order. */
        void (*piece)(void *ctx, uint32_t i, mx_piece_src *out);
        void *ctx;
        bool byte_fallback, add_dummy_prefix, remove_extra_whitespaces, escape_whitespaces;
        const char *unk_surface; /* NULL: SentencePiece's " \u2047 " */
} mx_vocab_src;

#define MX_TOKENIZER_MAX_PIECES (1u << 20)
#define MX_TOKENIZER_MAX_PIECE_BYTES 4096

/* Builds the tables and checks what SentencePiece checks (pieces non-empty,
 * not too long, known types, finite scores, no duplicates, one unknown
 * piece, every byte piece when byte_fallback). BOS, EOS and padding are -1,
 * add_bos on: the loader sets them as its file says. */
int mx_tokenizer_build(const mx_vocab_src *src, const char *label, mx_tokenizer **out,
                       mx_error *err);

/* Id of the piece spelled s[0..len), or -1. */
int32_t mx_tok_lookup(const mx_tokenizer *tok, const char *s, size_t len);

static inline bool mx_tok_mergeable(const mx_tokenizer *tok, int32_t id) {
        uint8_t t = tok->type[id];
        return t == MX_PIECE_NORMAL || t == MX_PIECE_USER_DEFINED || t == MX_PIECE_UNUSED;
}

/* ---- UTF-8 ---------------------------------------------------------------- */

#define MX_UTF8_REPLACEMENT "\xEF\xBF\xBD" /* U+FFFD */

/* Length of a character from its first byte alone, as SentencePiece's
 * OneCharLen (used only on text that is already valid). */
static inline uint32_t mx_utf8_lead_len(unsigned char c) {
        static const uint8_t len[16] = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 3, 4};
        return len[c >> 4];
}

static inline bool mx_utf8_trail(unsigned char c) {
        return (c & 0xC0) == 0x80;
}

/* The range the second byte must fall in after lead c; false for bytes that
 * never start a character. Together with the trail-byte rule for the third
 * and fourth bytes this is exactly the well-formed UTF-8 of Unicode 3.9. */
static inline bool mx_utf8_second_range(unsigned char c, unsigned char *lo, unsigned char *hi,
                                        uint32_t *need) {
        *lo = 0x80, *hi = 0xBF;
        if (c >= 0xC2 && c <= 0xDF)
                *need = 2;
        else if (c >= 0xE0 && c <= 0xEF)
                *need = 3, *lo = c == 0xE0 ? 0xA0 : 0x80, *hi = c == 0xED ? 0x9F : 0xBF;
        else if (c >= 0xF0 && c <= 0xF4)
                *need = 4, *lo = c == 0xF0 ? 0x90 : 0x80, *hi = c == 0xF4 ? 0x8F : 0xBF;
        else
                return false;
        return true;
}

/* How the bytes s[0..len) begin: returns the length of a complete valid
 * character at s, 0 when s cannot begin one, and -1 when s is a valid but
 * unfinished prefix (more bytes could complete it). */
static inline int mx_utf8_check(const char *s, size_t len) {
        const unsigned char *u = (const unsigned char *)s;
        if (len == 0)
                return -1;
        if (u[0] < 0x80)
                return 1;
        unsigned char lo, hi;
        uint32_t need;
        if (!mx_utf8_second_range(u[0], &lo, &hi, &need))
                return 0;
        for (uint32_t i = 1; i < need; i++) {
                if (i >= len)
                        return -1;
                if (i == 1 ? (u[1] < lo || u[1] > hi) : !mx_utf8_trail(u[i]))
                        return 0;
        }
        return (int)need;
}

/* Length of the valid character at s, or 0 when there is none (an
 * unfinished one counts as invalid, as it does for SentencePiece). */
static inline size_t mx_utf8_valid_char(const char *s, size_t len) {
        int k = mx_utf8_check(s, len);
        return k > 0 ? (size_t)k : 0;
}

/* Sets tok->widest_piece, once the pieces are in (token_bound.c). */
void mx_tok_measure_widest(mx_tokenizer *tok);
