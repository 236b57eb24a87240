/* Ids to text, as SentencePiece decodes: control pieces vanish, <unk> shows
 * as its surface, U+2581 becomes a space, runs of byte pieces are joined
 * into UTF-8 with each invalid byte shown as U+FFFD, and the space the
 * dummy prefix added is dropped from the first piece that has it.
 *
 * Decoding is incremental so that a stream never carries half a character:
 * bytes of an unfinished character wait in the decoder until they complete
 * it, prove invalid, or a non-byte piece ends the run. */
#include <errno.h>
#include <string.h>

#include "text.h"

#define SPACE_SYMBOL "\xE2\x96\x81"

void mx_decoder_init(mx_decoder *d, const mx_tokenizer *tok) {
        *d = (mx_decoder){.tok = tok, .bos_ws = true};
}

static int put(mx_decoder *d, mx_buf *out, const char *s, size_t n) {
        if (n == 0)
                return 0;
        d->wrote_text = true;
        return mx_buf_append(out, s, n);
}

static int drain(mx_decoder *d, mx_buf *out, bool final) {
        while (d->n_pending > 0) {
                int k = mx_utf8_check((const char *)d->pending, d->n_pending);
                if (k < 0 && !final)
                        return 0;
                int r = k > 0 ? put(d, out, (const char *)d->pending, (size_t)k)
                              : put(d, out, MX_UTF8_REPLACEMENT, 3);
                if (r < 0)
                        return r;
                size_t used = k > 0 ? (size_t)k : 1;
                d->n_pending = (uint8_t)(d->n_pending - used);
                memmove(d->pending, d->pending + used, d->n_pending);
        }
        return 0;
}

/* A piece's text with U+2581 shown as spaces. */
static int put_piece(mx_decoder *d, mx_buf *out, const char *s, size_t n) {
        while (n > 0) {
                const char *sp = memmem(s, n, SPACE_SYMBOL, 3);
                size_t k = sp ? (size_t)(sp - s) : n;
                int r = put(d, out, s, k);
                if (r == 0 && sp)
                        r = put(d, out, " ", 1);
                if (r < 0)
                        return r;
                k += sp ? 3 : 0;
                s += k, n -= k;
        }
        return 0;
}

int mx_decoder_push(mx_decoder *d, int32_t id, mx_buf *out) {
        const mx_tokenizer *tok = d->tok;
        if (id < 0 || (uint32_t)id >= tok->n)
                return -EINVAL;
        if (tok->type[id] == MX_PIECE_BYTE) {
                d->pending[d->n_pending++] = (uint8_t)tok->byte_of[id];
                return drain(d, out, false);
        }
        int r = drain(d, out, true);
        if (r < 0)
                return r;
        if (d->bos_ws_seen || d->wrote_text)
                d->bos_ws = false;
        d->bos_ws_seen = false;
        if (tok->type[id] == MX_PIECE_CONTROL)
                return 0;
        if (tok->type[id] == MX_PIECE_UNKNOWN)
                return put(d, out, tok->unk_surface, tok->unk_surface_len);

        const char *s = tok->text + tok->off[id];
        size_t n = tok->len[id];
        if (d->bos_ws && (tok->add_dummy_prefix || tok->remove_extra_whitespaces) && n >= 3 &&
            memcmp(s, SPACE_SYMBOL, 3) == 0) {
                s += 3, n -= 3;
                d->bos_ws_seen = !tok->remove_extra_whitespaces;
        }
        return put_piece(d, out, s, n);
}

int mx_decoder_finish(mx_decoder *d, mx_buf *out) {
        return drain(d, out, true);
}

int mx_detokenize(const mx_tokenizer *tok, const int32_t *ids, size_t n, mx_buf *out) {
        mx_decoder d;
        mx_decoder_init(&d, tok);
        /* Make out a valid empty string even when nothing is decoded. */
        int r = mx_buf_append(out, "", 0);
        for (size_t i = 0; r == 0 && i < n; i++)
                r = mx_decoder_push(&d, ids[i], out);
        return r < 0 ? r : mx_decoder_finish(&d, out);
}
