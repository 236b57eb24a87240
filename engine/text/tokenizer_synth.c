/* A made-up SentencePiece BPE model of a given vocabulary size, for random
 * demo models whose vocabulary no real tokenizer at hand has (the b1
 * benchmark shape has Mixtral's 32000): <unk>, <s>, </s>, the 256 byte
 * pieces (so any text encodes, through byte fallback), "▁" and the
 * printable ASCII characters (so plain text round-trips), "▁w", then as
 * many filler words "▁w0", "▁w1", ... as fill it (each made by BPE from
 * the one before and a digit), with Mixtral's normalizer settings. Its answers are as much noise as the weights'; what it buys
 * is a model every tool and the daemon take as they take a real one. */
#include <stdio.h>
#include <string.h>

#include "mx_common.h"
#include "sentencepiece_model.pb-c.h"
#include "text.h"

#include "mixtral.h"

typedef Sentencepiece__ModelProto__SentencePiece Piece;

static void set_piece(Piece *p, char *text, float score, int type) {
        sentencepiece__model_proto__sentence_piece__init(p);
        p->piece = text;
        p->has_score = true, p->score = score;
        p->has_type = true, p->type = type;
}

enum { SPECIALS = 3, BYTES = 256, ASCII = 126 - 33 + 1, FIXED = SPECIALS + BYTES + 1 + ASCII + 1 };

/* The piece texts, in one buffer: 16 bytes each is room for them all. */
static void fill(Piece *pieces, char *text, uint32_t n) {
        static const char *const specials[] = {"<unk>", "<s>", "</s>"};
        static const int special_type[] = {SENTENCEPIECE__MODEL_PROTO__SENTENCE_PIECE__TYPE__UNKNOWN,
                                           SENTENCEPIECE__MODEL_PROTO__SENTENCE_PIECE__TYPE__CONTROL,
                                           SENTENCEPIECE__MODEL_PROTO__SENTENCE_PIECE__TYPE__CONTROL};
        const int normal = SENTENCEPIECE__MODEL_PROTO__SENTENCE_PIECE__TYPE__NORMAL;
        for (uint32_t i = 0; i < n; i++) {
                char *t = text + (size_t)i * 16;
                uint32_t ascii = i - (SPECIALS + BYTES + 1);
                if (i < SPECIALS) {
                        snprintf(t, 16, "%s", specials[i]);
                        set_piece(&pieces[i], t, 0, special_type[i]);
                } else if (i < SPECIALS + BYTES) {
                        snprintf(t, 16, "<0x%02X>", i - SPECIALS);
                        set_piece(&pieces[i], t, 0, SENTENCEPIECE__MODEL_PROTO__SENTENCE_PIECE__TYPE__BYTE);
                } else if (i == SPECIALS + BYTES) {
                        snprintf(t, 16, "\xE2\x96\x81");
                        set_piece(&pieces[i], t, 0, normal);
                } else if (ascii < ASCII) {
                        snprintf(t, 16, "%c", (char)(33 + ascii));
                        set_piece(&pieces[i], t, 0, normal);
                } else if (i == FIXED - 1) {
                        snprintf(t, 16, "\xE2\x96\x81w");
                        set_piece(&pieces[i], t, -1, normal);
                } else {
                        snprintf(t, 16, "\xE2\x96\x81w%u", i - FIXED);
                        set_piece(&pieces[i], t, -2 - (float)(i - FIXED), normal);
                }
        }
}

int mx_tokenizer_write_synthetic(const char *path, uint32_t vocab_size, mx_error *err) {
        if (vocab_size < FIXED || vocab_size > 1000000)
                return mx_error_set(err, -EINVAL, "a made-up tokenizer of %u pieces: expected %d to 1000000",
                                    vocab_size, FIXED);
        _cleanup_free_ Piece *pieces = calloc(vocab_size, sizeof(*pieces));
        _cleanup_free_ Piece **ptrs = calloc(vocab_size, sizeof(*ptrs));
        _cleanup_free_ char *text = calloc(vocab_size, 16);
        if (!pieces || !ptrs || !text)
                return mx_error_set(err, -ENOMEM, "out of memory");
        fill(pieces, text, vocab_size);
        for (uint32_t i = 0; i < vocab_size; i++)
                ptrs[i] = &pieces[i];
        Sentencepiece__TrainerSpec ts = SENTENCEPIECE__TRAINER_SPEC__INIT;
        ts.has_model_type = true, ts.model_type = SENTENCEPIECE__TRAINER_SPEC__MODEL_TYPE__BPE;
        ts.has_vocab_size = true, ts.vocab_size = (int32_t)vocab_size;
        ts.has_byte_fallback = true, ts.byte_fallback = true;
        Sentencepiece__NormalizerSpec ns = SENTENCEPIECE__NORMALIZER_SPEC__INIT;
        ns.name = "identity";
        ns.has_add_dummy_prefix = true, ns.add_dummy_prefix = true;
        ns.has_remove_extra_whitespaces = true, ns.remove_extra_whitespaces = false;
        ns.has_escape_whitespaces = true, ns.escape_whitespaces = true;
        Sentencepiece__ModelProto m = SENTENCEPIECE__MODEL_PROTO__INIT;
        m.n_pieces = vocab_size, m.pieces = ptrs;
        m.trainer_spec = &ts, m.normalizer_spec = &ns;
        size_t len = sentencepiece__model_proto__get_packed_size(&m);
        _cleanup_free_ uint8_t *buf = malloc(len);
        if (!buf)
                return mx_error_set(err, -ENOMEM, "out of memory");
        sentencepiece__model_proto__pack(&m, buf);
        _cleanup_fclose_ FILE *f = fopen(path, "we");
        if (!f || fwrite(buf, 1, len, f) != len || fflush(f) != 0)
                return mx_error_set(err, -EIO, "%s: cannot write it", path);
        return 0;
}
