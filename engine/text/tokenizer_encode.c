/* Text to ids, exactly as SentencePiece's BPE model encodes:
 *
 *  1. normalize: invalid UTF-8 bytes become U+FFFD one byte at a time, a
 *     dummy space is put in front, spaces become U+2581;
 *  2. split into characters (user-defined pieces stay whole and frozen);
 *  3. repeatedly merge the adjacent pair whose concatenation is a piece with
 *     the highest score, the leftmost on ties;
 *  4. unused pieces are split back into what they were merged from, and
 *     characters that are no piece become byte pieces (byte fallback) or
 *     one <unk> per run.
 *
 * Merges never cross a boundary that no piece spans, and merges on either
 * side of one do not affect each other (the queue's order restricted to one
 * side is the same). So for vocabularies where words start such boundaries
 * (tok->split_words), each word is merged on its own: same ids, and a small
 * queue that stays in cache instead of one as long as the text. */
#include <string.h>

#include "mx_common.h"
#include "text.h"

#define SPACE_SYMBOL "\xE2\x96\x81" /* U+2581 */

typedef struct symbol {
        uint32_t start, len;
        int32_t prev, next;
        bool freeze;
} symbol;

typedef struct pair {
        float score;
        int32_t left, right;
        uint32_t size;
} pair;

typedef struct encoder {
        const mx_tokenizer *tok;
        const char *norm;
        symbol *sym;
        size_t n_sym;
        pair *heap;
        size_t n_heap, cap_heap;
        uint32_t *rev_left_len; /* for unused pieces: length of the left half */
        bool prev_unk;
} encoder;

/* ---- normalization ---------------------------------------------------------- */

static int append_space(mx_buf *out, bool escape) {
        return escape ? mx_buf_append(out, SPACE_SYMBOL, 3) : mx_buf_append(out, " ", 1);
}

static bool ends_with_space(const mx_buf *b, bool escape) {
        size_t k = escape ? 3 : 1;
        return b->n >= k && memcmp(b->p + b->n - k, escape ? SPACE_SYMBOL : " ", k) == 0;
}

static int normalize(const mx_tokenizer *tok, const char *s, size_t len, mx_buf *out) {
        const bool trim = tok->remove_extra_whitespaces, esc = tok->escape_whitespaces;
        size_t i = 0;
        if (trim)
                while (i < len && s[i] == ' ')
                        i++;
        if (i == len)
                return 0;
        int r = 0;
        if (tok->add_dummy_prefix)
                r = append_space(out, esc);
        bool prev_space = trim;
        while (r == 0 && i < len) {
                unsigned char c = (unsigned char)s[i];
                if (c == ' ') {
                        if (!prev_space)
                                r = append_space(out, esc);
                        prev_space = trim;
                        i++;
                        continue;
                }
                size_t k = c < 0x80 ? 1 : mx_utf8_valid_char(s + i, len - i);
                if (k == 0) {
                        r = mx_buf_append(out, MX_UTF8_REPLACEMENT, 3);
                        k = 1;
                } else {
                        r = mx_buf_append(out, s + i, k);
                }
                prev_space = false;
                i += k;
        }
        if (trim)
                while (ends_with_space(out, esc))
                        out->n -= esc ? 3 : 1;
        return r;
}

/* ---- the merge queue: highest score first, then leftmost ------------------ */

static bool before(const pair *a, const pair *b) {
        return a->score > b->score || (a->score == b->score && a->left < b->left);
}

static int heap_push(encoder *e, pair p) {
        int r = mx_grow((void **)&e->heap, &e->cap_heap, e->n_heap + 1, sizeof(pair));
        if (r < 0)
                return r;
        size_t i = e->n_heap++;
        while (i > 0) {
                size_t up = (i - 1) / 2;
                if (!before(&p, &e->heap[up]))
                        break;
                e->heap[i] = e->heap[up];
                i = up;
        }
        e->heap[i] = p;
        return 0;
}

static pair heap_pop(encoder *e) {
        pair top = e->heap[0], last = e->heap[--e->n_heap];
        size_t i = 0, n = e->n_heap;
        for (;;) {
                size_t c = 2 * i + 1;
                if (c >= n)
                        break;
                if (c + 1 < n && before(&e->heap[c + 1], &e->heap[c]))
                        c++;
                if (!before(&e->heap[c], &last))
                        break;
                e->heap[i] = e->heap[c];
                i = c;
        }
        if (n)
                e->heap[i] = last;
        return top;
}

static int maybe_add_pair(encoder *e, int32_t l, int32_t r) {
        if (l < 0 || r < 0 || e->sym[l].freeze || e->sym[r].freeze)
                return 0;
        uint32_t size = e->sym[l].len + e->sym[r].len;
        int32_t id = mx_tok_lookup(e->tok, e->norm + e->sym[l].start, size);
        if (id < 0 || !mx_tok_mergeable(e->tok, id))
                return 0;
        if (e->tok->type[id] == MX_PIECE_UNUSED)
                e->rev_left_len[id] = e->sym[l].len;
        return heap_push(e, (pair){e->tok->score[id], l, r, size});
}

/* ---- splitting into characters ------------------------------------------ */

static uint32_t user_defined_match(const mx_tokenizer *tok, const char *s, size_t len) {
        uint32_t best = 0;
        for (uint32_t i = 0; i < tok->n_user_defined; i++) {
                uint32_t id = tok->user_defined[i], k = tok->len[id];
                if (k > best && k <= len && memcmp(tok->text + tok->off[id], s, k) == 0)
                        best = k;
        }
        return best;
}

/* Splits norm[begin..end) into characters in e->sym, reusing its memory. */
static void split_symbols(encoder *e, size_t begin, size_t end) {
        e->n_sym = 0;
        e->n_heap = 0;
        for (size_t pos = begin; pos < end;) {
                uint32_t k = user_defined_match(e->tok, e->norm + pos, end - pos);
                bool freeze = k > 0;
                if (!freeze) {
                        k = mx_utf8_lead_len((unsigned char)e->norm[pos]);
                        if (k > end - pos)
                                k = (uint32_t)(end - pos);
                }
                int32_t i = (int32_t)e->n_sym++;
                e->sym[i] = (symbol){(uint32_t)pos, k, i - 1, -1, freeze};
                if (i > 0)
                        e->sym[i - 1].next = i;
                pos += k;
        }
}

static int merge_all(encoder *e) {
        for (size_t i = 1; i < e->n_sym; i++) {
                int r = maybe_add_pair(e, (int32_t)i - 1, (int32_t)i);
                if (r < 0)
                        return r;
        }
        while (e->n_heap > 0) {
                pair top = heap_pop(e);
                symbol *l = &e->sym[top.left], *rt = &e->sym[top.right];
                if (l->len == 0 || rt->len == 0 || l->len + rt->len != top.size)
                        continue; /* stale: one side has merged since */
                l->len += rt->len;
                l->next = rt->next;
                if (rt->next >= 0)
                        e->sym[rt->next].prev = top.left;
                rt->len = 0;
                int r = maybe_add_pair(e, l->prev, top.left);
                if (r == 0)
                        r = maybe_add_pair(e, top.left, l->next);
                if (r < 0)
                        return r;
        }
        return 0;
}

/* ---- output ----------------------------------------------------------------- */

static int emit(encoder *e, const char *s, uint32_t len, int32_t id, mx_ids *out) {
        const mx_tokenizer *tok = e->tok;
        bool unk = id < 0 || tok->type[id] == MX_PIECE_UNKNOWN;
        bool prev_unk = e->prev_unk;
        e->prev_unk = unk;
        if (!unk)
                return mx_ids_push(out, id);
        if (tok->byte_fallback) {
                for (uint32_t i = 0; i < len; i++) {
                        int r = mx_ids_push(out, tok->byte_id[(unsigned char)s[i]]);
                        if (r < 0)
                                return r;
                }
                return 0;
        }
        /* Without byte fallback a run of unknown characters is one <unk>. */
        return prev_unk ? 0 : mx_ids_push(out, tok->unk);
}

static int resegment(encoder *e, uint32_t start, uint32_t len, mx_ids *out) {
        const char *s = e->norm + start;
        int32_t id = mx_tok_lookup(e->tok, s, len);
        if (id >= 0 && e->tok->type[id] == MX_PIECE_UNUSED && e->rev_left_len[id] > 0) {
                uint32_t left = e->rev_left_len[id];
                int r = resegment(e, start, left, out);
                return r < 0 ? r : resegment(e, start + left, len - left, out);
        }
        return emit(e, s, len, id, out);
}

static int encode_span(encoder *e, size_t begin, size_t end, mx_ids *out) {
        split_symbols(e, begin, end);
        int r = merge_all(e);
        for (int32_t i = 0; r == 0 && e->n_sym > 0 && i != -1; i = e->sym[i].next)
                r = resegment(e, e->sym[i].start, e->sym[i].len, out);
        return r;
}

/* End of the word at pos: its leading run of U+2581, then everything up to
 * the next U+2581 (which follows a character that is not one). */
static size_t word_end(const char *s, size_t pos, size_t len) {
        while (len - pos >= 3 && memcmp(s + pos, SPACE_SYMBOL, 3) == 0)
                pos += 3;
        const char *next = memmem(s + pos, len - pos, SPACE_SYMBOL, 3);
        return next ? (size_t)(next - s) : len;
}

static void encoder_done(encoder *e) {
        free(e->sym);
        free(e->heap);
        free(e->rev_left_len);
}

int mx_tokenize(const mx_tokenizer *tok, const char *text, size_t len, mx_ids *out) {
        /* Normalization at most triples the size; indices are 32-bit. */
        if (len > INT32_MAX / 4)
                return -E2BIG;
        _cleanup_(mx_buf_free) mx_buf norm = {0};
        int r = normalize(tok, text, len, &norm);
        if (r < 0 || norm.n == 0)
                return r;

        _cleanup_(encoder_done) encoder e = {.tok = tok, .norm = norm.p};
        if (tok->n_unused > 0 && !(e.rev_left_len = calloc(tok->n, sizeof(uint32_t))))
                return -ENOMEM;
        if (!(e.sym = malloc(norm.n * sizeof(symbol))))
                return -ENOMEM;
        for (size_t pos = 0; r == 0 && pos < norm.n;) {
                size_t end = tok->split_words ? word_end(norm.p, pos, norm.n) : norm.n;
                r = encode_span(&e, pos, end, out);
                pos = end;
        }
        return r;
}
