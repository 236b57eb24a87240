/* Building the tokenizer's flat tables (mx_tokenizer_build), from a
 * SentencePiece model (a serialized sentencepiece.ModelProto, here) or a
 * GGUF vocabulary (model/gguf_vocab.c): both describe their pieces and
 * settings in an mx_vocab_src and the tables are made and checked once.
 * Everything SentencePiece itself would refuse is refused too, with the
 * reason; settings this tokenizer does not implement (unigram models,
 * normalization rules other than identity) are refused by name rather than
 * silently tokenized differently. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "mx_common.h"
#include "sentencepiece_model.pb-c.h"
#include "text.h"

/* MX_TOKENIZER_MAX_PIECES (text.h) is far above real vocabularies (Mixtral
 * 32k, the largest known 256k), and checked before protobuf-c allocates a
 * struct per piece. */

typedef Sentencepiece__ModelProto ModelProto;
typedef Sentencepiece__ModelProto__SentencePiece Piece;

static void model_proto_freep(ModelProto **p) {
        if (*p)
                sentencepiece__model_proto__free_unpacked(*p, NULL);
}

static bool read_varint(const uint8_t **p, const uint8_t *end, uint64_t *v) {
        *v = 0;
        for (int shift = 0; shift < 64 && *p < end; shift += 7) {
                uint8_t b = *(*p)++;
                *v |= (uint64_t)(b & 0x7f) << shift;
                if (!(b & 0x80))
                        return true;
        }
        return false;
}

/* Counts the pieces (field 1) of a serialized ModelProto by walking its
 * top-level fields; -1 when the wire format is broken. Every piece can cost
 * as little as two bytes of input, so this bounds what unpacking allocates. */
static long count_pieces(const uint8_t *p, size_t len) {
        const uint8_t *end = p + len;
        long n = 0;
        while (p < end) {
                uint64_t tag, v;
                if (!read_varint(&p, end, &tag))
                        return -1;
                switch (tag & 7) {
                case 0:
                        if (!read_varint(&p, end, &v))
                                return -1;
                        break;
                case 1:
                case 5:
                        if ((size_t)(end - p) < ((tag & 7) == 1 ? 8u : 4u))
                                return -1;
                        p += (tag & 7) == 1 ? 8 : 4;
                        break;
                case 2:
                        if (!read_varint(&p, end, &v) || v > (uint64_t)(end - p))
                                return -1;
                        p += v;
                        n += (tag >> 3) == 1;
                        break;
                default:
                        return -1;
                }
        }
        return n;
}

static uint64_t hash_bytes(const char *s, size_t len) {
        uint64_t h = 1469598103934665603ull;
        for (size_t i = 0; i < len; i++)
                h = (h ^ (uint8_t)s[i]) * 1099511628211ull;
        return h ^ (h >> 29);
}

int32_t mx_tok_lookup(const mx_tokenizer *tok, const char *s, size_t len) {
        for (uint64_t i = hash_bytes(s, len) & tok->mask;; i = (i + 1) & tok->mask) {
                uint32_t v = tok->slots[i];
                if (v == 0)
                        return -1;
                uint32_t id = v - 1;
                if (tok->len[id] == len && memcmp(tok->text + tok->off[id], s, len) == 0)
                        return (int32_t)id;
        }
}

void mx_tokenizer_free(mx_tokenizer *tok) {
        if (!tok)
                return;
        free(tok->text);
        free(tok->off);
        free(tok->len);
        free(tok->score);
        free(tok->type);
        free(tok->byte_of);
        free(tok->slots);
        free(tok->user_defined);
        free(tok->unk_surface);
        free(tok);
}

/* "<0x41>" -> 0x41, as SentencePiece spells byte pieces; else -1. */
static int parse_byte_piece(const char *s, size_t len) {
        static const char hex[] = "0123456789ABCDEF";
        if (len != 6 || memcmp(s, "<0x", 3) != 0 || s[5] != '>')
                return -1;
        const char *hi = memchr(hex, s[3], 16), *lo = memchr(hex, s[4], 16);
        if (!hi || !lo || !s[3] || !s[4])
                return -1;
        return (int)((hi - hex) * 16 + (lo - hex));
}

static int alloc_tables(mx_tokenizer *tok, size_t text_bytes) {
        uint32_t n = tok->n;
        size_t slots = 1;
        while (slots < (size_t)n * 2)
                slots <<= 1;
        tok->mask = (uint32_t)(slots - 1);
        tok->text = malloc(text_bytes);
        tok->off = calloc(n, sizeof(uint32_t));
        tok->len = calloc(n, sizeof(uint32_t));
        tok->score = calloc(n, sizeof(float));
        tok->type = calloc(n, 1);
        tok->byte_of = calloc(n, sizeof(int16_t));
        tok->slots = calloc(slots, sizeof(uint32_t));
        if (!tok->text || !tok->off || !tok->len || !tok->score || !tok->type ||
            !tok->byte_of || !tok->slots)
                return -ENOMEM;
        return 0;
}

static bool insert_piece(mx_tokenizer *tok, uint32_t id) {
        const char *s = tok->text + tok->off[id];
        for (uint64_t i = hash_bytes(s, tok->len[id]) & tok->mask;; i = (i + 1) & tok->mask) {
                uint32_t v = tok->slots[i];
                if (v == 0) {
                        tok->slots[i] = id + 1;
                        return true;
                }
                if (tok->len[v - 1] == tok->len[id] &&
                    memcmp(tok->text + tok->off[v - 1], s, tok->len[id]) == 0)
                        return false;
        }
}

/* Copies one piece into the tables and checks what SentencePiece checks. */
static int add_piece(mx_tokenizer *tok, const mx_piece_src *p, uint32_t id, size_t *pos,
                     const char *label, mx_error *err) {
        if (p->len == 0)
                return mx_error_set(err, -EINVAL, "%s: piece %u is empty", label, id);
        if (p->len > MX_TOKENIZER_MAX_PIECE_BYTES)
                return mx_error_set(err, -EINVAL, "%s: piece %u is %zu bytes long", label, id, p->len);
        if (p->type < MX_PIECE_NORMAL || p->type > MX_PIECE_BYTE)
                return mx_error_set(err, -EINVAL, "%s: piece %u has unknown type %d", label, id, p->type);
        if (!isfinite(p->score))
                return mx_error_set(err, -EINVAL, "%s: piece %u has a non-finite score", label, id);

        char *s = tok->text + *pos;
        memcpy(s, p->s, p->len);
        s[p->len] = '\0';
        tok->off[id] = (uint32_t)*pos;
        tok->len[id] = (uint32_t)p->len;
        tok->score[id] = p->score;
        tok->type[id] = (uint8_t)p->type;
        tok->byte_of[id] = -1;
        *pos += p->len + 1;

        if (!insert_piece(tok, id))
                return mx_error_set(err, -EINVAL, "%s: piece %u (\"%s\") is a duplicate", label, id, s);
        if (p->type == MX_PIECE_UNKNOWN) {
                if (tok->unk >= 0)
                        return mx_error_set(err, -EINVAL, "%s: two unknown pieces (%d and %u)",
                                            label, tok->unk, id);
                tok->unk = (int32_t)id;
        } else if (p->type == MX_PIECE_BYTE) {
                int b = parse_byte_piece(s, p->len);
                if (!tok->byte_fallback)
                        return mx_error_set(err, -EINVAL,
                                            "%s: byte piece %u but byte_fallback is off", label, id);
                if (b < 0)
                        return mx_error_set(err, -EINVAL,
                                            "%s: byte piece %u is \"%s\", not <0x00>..<0xFF>", label,
                                            id, s);
                tok->byte_of[id] = (int16_t)b;
                tok->byte_id[b] = (int32_t)id;
        } else if (p->type == MX_PIECE_USER_DEFINED) {
                tok->user_defined[tok->n_user_defined++] = id;
        } else if (p->type == MX_PIECE_UNUSED) {
                tok->n_unused++;
        }
        return 0;
}

/* True when U+2581 appears in pieces only as a leading run ("▁▁ab", never
 * "a▁b"): then a piece can never cross the boundary between a character
 * and a following U+2581, and encoding word by word gives the same ids as
 * encoding the whole text (see tokenizer_encode.c). Unused pieces make
 * results depend on the order of all merges, so they rule it out too. */
static bool can_split_words(const mx_tokenizer *tok) {
        if (!tok->escape_whitespaces || tok->n_unused > 0)
                return false;
        for (uint32_t id = 0; id < tok->n; id++) {
                if (!mx_tok_mergeable(tok, (int32_t)id))
                        continue;
                const char *s = tok->text + tok->off[id], *end = s + tok->len[id];
                while (end - s >= 3 && memcmp(s, "\xE2\x96\x81", 3) == 0)
                        s += 3;
                if (memmem(s, (size_t)(end - s), "\xE2\x96\x81", 3))
                        return false;
        }
        return true;
}

static int set_flags(mx_tokenizer *tok, const mx_vocab_src *src) {
        const char *surface = src->unk_surface ? src->unk_surface : " \xE2\x81\x87 ";
        tok->byte_fallback = src->byte_fallback;
        tok->add_dummy_prefix = src->add_dummy_prefix;
        tok->remove_extra_whitespaces = src->remove_extra_whitespaces;
        tok->escape_whitespaces = src->escape_whitespaces;
        tok->bos = tok->eos = tok->pad = tok->unk = -1;
        tok->add_bos = true;
        memset(tok->byte_id, 0xff, sizeof(tok->byte_id));
        tok->unk_surface_len = strlen(surface);
        tok->unk_surface = strdup(surface);
        return tok->unk_surface ? 0 : -ENOMEM;
}

int mx_tokenizer_build(const mx_vocab_src *src, const char *label, mx_tokenizer **out,
                       mx_error *err) {
        if (src->n == 0 || src->n > MX_TOKENIZER_MAX_PIECES)
                return mx_error_set(err, -EINVAL, "%s: %u pieces (expected 1..%u)", label, src->n,
                                    MX_TOKENIZER_MAX_PIECES);
        _cleanup_(mx_tokenizer_freep) mx_tokenizer *tok = calloc(1, sizeof(*tok));
        if (!tok)
                return mx_error_set(err, -ENOMEM, "%s: out of memory", label);
        tok->n = src->n;
        /* (a NUL after each piece) */
        if (set_flags(tok, src) < 0 || !(tok->user_defined = calloc(tok->n, sizeof(uint32_t))) ||
            alloc_tables(tok, src->text_bytes + src->n) < 0)
                return mx_error_set(err, -ENOMEM, "%s: out of memory", label);
        size_t pos = 0;
        for (uint32_t i = 0; i < tok->n; i++) {
                mx_piece_src p;
                src->piece(src->ctx, i, &p);
                int r = add_piece(tok, &p, i, &pos, label, err);
                if (r < 0)
                        return r;
        }
        if (tok->unk < 0)
                return mx_error_set(err, -EINVAL, "%s: the model has no unknown piece", label);
        if (tok->byte_fallback)
                for (int b = 0; b < 256; b++)
                        if (tok->byte_id[b] < 0)
                                return mx_error_set(err, -EINVAL,
                                                    "%s: byte_fallback is on but piece <0x%02X> is missing",
                                                    label, b);
        tok->split_words = can_split_words(tok);
        mx_tok_measure_widest(tok);
        *out = MX_TAKE_PTR(tok);
        return 0;
}

/* ---- SentencePiece's ModelProto ------------------------------------------------ */

static int check_specs(const ModelProto *m, mx_vocab_src *src, const char *label, mx_error *err) {
        const Sentencepiece__TrainerSpec *ts = m->trainer_spec;
        const Sentencepiece__NormalizerSpec *ns = m->normalizer_spec;

        if (!ts || !ts->has_model_type ||
            ts->model_type != SENTENCEPIECE__TRAINER_SPEC__MODEL_TYPE__BPE)
                return mx_error_set(err, -EOPNOTSUPP,
                                    "%s: not a BPE SentencePiece model (model_type %d)", label,
                                    ts && ts->has_model_type ? (int)ts->model_type : 1);
        if (ts->treat_whitespace_as_suffix)
                return mx_error_set(err, -EOPNOTSUPP,
                                    "%s: treat_whitespace_as_suffix is not supported", label);
        if (ns && ns->has_precompiled_charsmap && ns->precompiled_charsmap.len > 0)
                return mx_error_set(err, -EOPNOTSUPP,
                                    "%s: normalization rule \"%s\" is not supported (only identity)",
                                    label, ns->name ? ns->name : "");
        if (m->denormalizer_spec && m->denormalizer_spec->has_precompiled_charsmap &&
            m->denormalizer_spec->precompiled_charsmap.len > 0)
                return mx_error_set(err, -EOPNOTSUPP, "%s: denormalization rules are not supported",
                                    label);
        src->byte_fallback = ts->byte_fallback;
        src->add_dummy_prefix = ns ? ns->add_dummy_prefix : true;
        src->remove_extra_whitespaces = ns ? ns->remove_extra_whitespaces : true;
        src->escape_whitespaces = ns ? ns->escape_whitespaces : true;
        src->unk_surface = ts->unk_surface;
        return 0;
}

static void proto_piece(void *ctx, uint32_t i, mx_piece_src *out) {
        const Piece *p = ((const ModelProto *)ctx)->pieces[i];
        out->s = p->piece ? p->piece : "";
        out->len = strlen(out->s);
        out->score = p->score;
        out->type = p->has_type ? (int)p->type : MX_PIECE_NORMAL;
}

/* bos, eos and pad are found by their spelling in the trainer spec, as
 * SentencePiece does, and only count when they are control pieces. */
static int32_t control_id(const mx_tokenizer *tok, const char *piece, const char *dflt) {
        piece = piece ? piece : dflt;
        int32_t id = mx_tok_lookup(tok, piece, strlen(piece));
        return id >= 0 && tok->type[id] == MX_PIECE_CONTROL ? id : -1;
}

int mx_tokenizer_load_buffer(mx_tokenizer **out, const void *data, size_t len,
                             const char *label, mx_error *err) {
        if (len > MX_TOKENIZER_MAX_FILE_BYTES)
                return mx_error_set(err, -EFBIG, "%s: %zu bytes is too large for a tokenizer",
                                    label, len);
        long pieces = count_pieces(data, len);
        if (pieces > (long)MX_TOKENIZER_MAX_PIECES)
                return mx_error_set(err, -EINVAL, "%s: %ld pieces (at most %u)", label, pieces,
                                    MX_TOKENIZER_MAX_PIECES);
        _cleanup_(model_proto_freep) ModelProto *m =
                pieces < 0 ? NULL : sentencepiece__model_proto__unpack(NULL, len, data);
        if (!m)
                return mx_error_set(err, -EBADMSG,
                                    "%s: not a SentencePiece model (protobuf parse failed)", label);
        if (m->n_pieces == 0 || m->n_pieces > MX_TOKENIZER_MAX_PIECES)
                return mx_error_set(err, -EINVAL, "%s: %zu pieces (expected 1..%u)", label,
                                    m->n_pieces, MX_TOKENIZER_MAX_PIECES);
        mx_vocab_src src = {.n = (uint32_t)m->n_pieces, .piece = proto_piece, .ctx = m};
        int r = check_specs(m, &src, label, err);
        if (r < 0)
                return r;
        /* Pieces cannot exceed the file's size, so this sum cannot overflow. */
        for (size_t i = 0; i < m->n_pieces; i++)
                src.text_bytes += m->pieces[i]->piece ? strlen(m->pieces[i]->piece) : 0;
        _cleanup_(mx_tokenizer_freep) mx_tokenizer *tok = NULL;
        if ((r = mx_tokenizer_build(&src, label, &tok, err)) < 0)
                return r;
        const Sentencepiece__TrainerSpec *ts = m->trainer_spec;
        tok->bos = control_id(tok, ts->bos_piece, "<s>");
        tok->eos = control_id(tok, ts->eos_piece, "</s>");
        tok->pad = control_id(tok, ts->pad_piece, "<pad>");
        *out = MX_TAKE_PTR(tok);
        return 0;
}

int mx_tokenizer_load(mx_tokenizer **out, const char *path, mx_error *err) {
        _cleanup_free_ char *data = NULL;
        size_t len;
        int r = mx_read_file(path, MX_TOKENIZER_MAX_FILE_BYTES, &data, &len, err);
        if (r < 0)
                return r;
        return mx_tokenizer_load_buffer(out, data, len, path, err);
}

uint32_t mx_tokenizer_vocab_size(const mx_tokenizer *tok) {
        return tok->n;
}

int32_t mx_tokenizer_bos(const mx_tokenizer *tok) {
        return tok->bos;
}

int32_t mx_tokenizer_eos(const mx_tokenizer *tok) {
        return tok->eos;
}

int32_t mx_tokenizer_unk(const mx_tokenizer *tok) {
        return tok->unk;
}

const char *mx_tokenizer_piece(const mx_tokenizer *tok, int32_t id, size_t *len) {
        if (id < 0 || (uint32_t)id >= tok->n)
                return NULL;
        if (len)
                *len = tok->len[id];
        return tok->text + tok->off[id];
}

float mx_tokenizer_score(const mx_tokenizer *tok, int32_t id) {
        return id >= 0 && (uint32_t)id < tok->n ? tok->score[id] : 0;
}

mx_piece_type mx_tokenizer_piece_type(const mx_tokenizer *tok, int32_t id) {
        return id >= 0 && (uint32_t)id < tok->n ? (mx_piece_type)tok->type[id] : 0;
}

void mx_tokenizer_get_info(const mx_tokenizer *tok, mx_tokenizer_info *info) {
        *info = (mx_tokenizer_info){
                .bos = tok->bos, .eos = tok->eos, .unk = tok->unk, .pad = tok->pad,
                .add_bos = tok->add_bos, .add_eos = tok->add_eos,
                .add_space_prefix = tok->add_dummy_prefix,
                .remove_extra_whitespaces = tok->remove_extra_whitespaces,
                .escape_whitespaces = tok->escape_whitespaces, .byte_fallback = tok->byte_fallback,
                .unk_surface = tok->unk_surface,
        };
}
