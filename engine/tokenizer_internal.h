/* The tokenizer's tables, shared by its loading, encoding and decoding. */
#pragma once

#include "mixtral.h"

enum {
        MX_PIECE_NORMAL = 1,
        MX_PIECE_UNKNOWN = 2,
        MX_PIECE_CONTROL = 3,
        MX_PIECE_USER_DEFINED = 4,
        MX_PIECE_UNUSED = 5,
        MX_PIECE_BYTE = 6,
};

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
        int32_t unk, bos, eos;
        bool add_dummy_prefix, remove_extra_whitespaces, escape_whitespaces;
        bool byte_fallback;
        /* No piece has U+2581 after another character, so no piece can
         * span the start of a word: each word is encoded on its own. */
        bool split_words;
        char *unk_surface;
        size_t unk_surface_len;
};

/* Id of the piece spelled s[0..len), or -1. */
int32_t mx_tok_lookup(const mx_tokenizer *tok, const char *s, size_t len);

static inline bool mx_tok_mergeable(const mx_tokenizer *tok, int32_t id) {
        uint8_t t = tok->type[id];
        return t == MX_PIECE_NORMAL || t == MX_PIECE_USER_DEFINED || t == MX_PIECE_UNUSED;
}
