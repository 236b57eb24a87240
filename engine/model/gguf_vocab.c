/* A GGUF file's own vocabulary as a tokenizer: tokenizer.ggml.model
 * "llama" (SentencePiece BPE) with tokens, scores and token_type arrays of
 * one length (the model's vocabulary size), the special ids and flags.
 * Everything is checked before the text room's table builder sees it:
 * array types and lengths (a narrower element type than expected is
 * refused, not read past), every token UTF-8 without NUL, ids inside the
 * vocabulary, the unknown id agreeing with the UNKNOWN piece, no
 * normalization rules. What GGUF does not record takes SentencePiece's
 * Mixtral settings: byte fallback when byte pieces are there, spaces
 * escaped, the default unknown surface. Called by mx_model_load_tokenizer
 * and the fuzzer. */
#include <string.h>

#include "model.h"
#include "mx_common.h"
#include "text.h"

typedef struct vocab {
        const mx_gguf_kv *tokens, *scores, *types;
        const uint8_t *at; /* the next token's string */
} vocab;

static void gguf_piece(void *ctx, uint32_t i, mx_piece_src *out) {
        vocab *v = ctx;
        uint64_t len;
        mx_gguf_next_string(&v->at, &out->s, &len);
        out->len = (size_t)len;
        out->score = (float)mx_gguf_real_at(v->scores, i);
        int64_t t = mx_gguf_int_at(v->types, i);
        out->type = t < 0 || t > 255 ? 0 : (int)t; /* the builder refuses what is not 1..6 */
}

static int require_array(const mx_gguf *g, const char *key, uint32_t type, uint64_t n,
                         const mx_gguf_kv **out, mx_error *err) {
        int r = mx_gguf_array(g, key, type, out, err);
        if (r == -ENOENT)
                return mx_error_set(err, -EINVAL, "%s: key \"%s\" is missing", g->label, key);
        if (r == 0 && (*out)->n != n)
                r = mx_error_set(err, -EINVAL, "%s: key \"%s\" has %llu entries, but the vocabulary %llu",
                                 g->label, key, (unsigned long long)(*out)->n, (unsigned long long)n);
        return r;
}

/* Every token is UTF-8 without NUL (GGUF strings are UTF-8, and pieces
 * are C strings in the tables); their bytes are summed for the builder. */
static int check_tokens(const mx_gguf *g, const mx_gguf_kv *tokens, size_t *bytes, mx_error *err) {
        const uint8_t *at = tokens->value;
        *bytes = 0;
        for (uint64_t i = 0; i < tokens->n; i++) {
                const char *s;
                uint64_t len;
                mx_gguf_next_string(&at, &s, &len);
                if (memchr(s, '\0', len) || !mx_utf8_valid(s, len))
                        return mx_error_set(err, -EINVAL, "%s: tokenizer.ggml.tokens: token %llu is not UTF-8 "
                                            "without NUL", g->label, (unsigned long long)i);
                *bytes += len; /* cannot overflow: the strings are in the file */
        }
        return 0;
}

/* A special id: absent is -1; present, it must name a token. */
static int special_id(const mx_gguf *g, const char *key, uint32_t n, int32_t *out, mx_error *err) {
        mx_cfg_value v = mx_gguf_value(g, key);
        *out = -1;
        if (v.kind == MX_CFG_ABSENT)
                return 0;
        if (v.kind != MX_CFG_INT || v.neg || v.mag >= n)
                return mx_error_set(err, -EINVAL, "%s: key \"%s\" is not a token id below %u", g->label,
                                    key, n);
        *out = (int32_t)v.mag;
        return 0;
}

static int check_model(const mx_gguf *g, mx_error *err) {
        const char *s;
        size_t len;
        int r = mx_gguf_string(g, "tokenizer.ggml.model", &s, &len, err);
        if (r == -ENOENT)
                return mx_error_set(err, -ENOENT, "%s: no vocabulary (tokenizer.ggml.model is missing)",
                                    g->label);
        if (r == 0 && !(len == 5 && memcmp(s, "llama", 5) == 0))
                r = mx_error_set(err, -EOPNOTSUPP,
                                 "%s: tokenizer \"%.*s\" is not supported (only \"llama\", SentencePiece BPE)",
                                 g->label, (int)(len > 64 ? 64 : len), s);
        const mx_gguf_kv *charsmap = mx_gguf_find(g, "tokenizer.ggml.precompiled_charsmap");
        if (r == 0 && charsmap && charsmap->bytes > (charsmap->type == MX_GGUF_ARRAY ? 0 : 8))
                r = mx_error_set(err, -EOPNOTSUPP, "%s: normalization rules (tokenizer.ggml.precompiled_charsmap) "
                                 "are not supported", g->label);
        return r;
}

static int read_flags(const mx_gguf *g, mx_vocab_src *src, bool *add_bos, bool *add_eos, mx_error *err) {
        int r;
        src->add_dummy_prefix = true;
        src->escape_whitespaces = true;
        *add_bos = true;
        if ((r = mx_gguf_bool(g, "tokenizer.ggml.add_space_prefix", &src->add_dummy_prefix, err)) < 0 ||
            (r = mx_gguf_bool(g, "tokenizer.ggml.remove_extra_whitespaces", &src->remove_extra_whitespaces,
                              err)) < 0 ||
            (r = mx_gguf_bool(g, "tokenizer.ggml.add_bos_token", add_bos, err)) < 0 ||
            (r = mx_gguf_bool(g, "tokenizer.ggml.add_eos_token", add_eos, err)) < 0)
                return r;
        return 0;
}

static int set_specials(const mx_gguf *g, mx_tokenizer *tok, mx_error *err) {
        int32_t unk;
        int r;
        if ((r = special_id(g, "tokenizer.ggml.bos_token_id", tok->n, &tok->bos, err)) < 0 ||
            (r = special_id(g, "tokenizer.ggml.eos_token_id", tok->n, &tok->eos, err)) < 0 ||
            (r = special_id(g, "tokenizer.ggml.padding_token_id", tok->n, &tok->pad, err)) < 0 ||
            (r = special_id(g, "tokenizer.ggml.unknown_token_id", tok->n, &unk, err)) < 0)
                return r;
        if (unk >= 0 && unk != tok->unk)
                return mx_error_set(err, -EINVAL,
                                    "%s: key \"tokenizer.ggml.unknown_token_id\" is %d, but the unknown piece is %d",
                                    g->label, unk, tok->unk);
        return 0;
}

int mx_gguf_tokenizer(const mx_gguf *g, uint32_t vocab_size, mx_tokenizer **out, mx_error *err) {
        vocab v = {0};
        bool add_bos, add_eos = false;
        mx_vocab_src src = {.piece = gguf_piece, .ctx = &v};
        int r = check_model(g, err);
        if (r == 0)
                r = require_array(g, "tokenizer.ggml.tokens", MX_GGUF_STRING, vocab_size, &v.tokens, err);
        if (r == 0)
                r = require_array(g, "tokenizer.ggml.scores", MX_GGUF_F32, vocab_size, &v.scores, err);
        if (r == 0)
                r = require_array(g, "tokenizer.ggml.token_type", MX_GGUF_I64, vocab_size, &v.types, err);
        if (r == 0)
                r = check_tokens(g, v.tokens, &src.text_bytes, err);
        if (r == 0)
                r = read_flags(g, &src, &add_bos, &add_eos, err);
        if (r < 0)
                return r;
        src.n = vocab_size;
        for (uint64_t i = 0; i < v.types->n && !src.byte_fallback; i++)
                src.byte_fallback = mx_gguf_int_at(v.types, i) == MX_PIECE_BYTE;
        v.at = v.tokens->value;
        _cleanup_(mx_tokenizer_freep) mx_tokenizer *tok = NULL;
        if ((r = mx_tokenizer_build(&src, g->label, &tok, err)) < 0 || (r = set_specials(g, tok, err)) < 0)
                return r;
        tok->add_bos = add_bos;
        tok->add_eos = add_eos;
        *out = MX_TAKE_PTR(tok);
        return 0;
}
