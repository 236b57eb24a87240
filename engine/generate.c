/* One generation request, driven step by step so that the daemon can put
 * many of them in each forward pass. It starts from the longest prefix
 * of its tokens the KV cache holds, and feeds the rest of the prompt in
 * chunks; then each step samples a token, decodes it to whole UTF-8
 * characters, and holds back text that could still become a stop string.
 * It finishes on EOS, a stop string (not included in the text),
 * max_tokens, or a full context. A scheduler may suspend it between
 * steps (its blocks go back to the pool) and start it again later: it
 * then reads its prompt and what it generated again, from the cache where
 * the cache kept them, and carries on where it was. */
#include <string.h>

#include "mx_common.h"

#include "mixtral.h"

struct mx_gen {
        mx_engine *e;
        const mx_tokenizer *tok;
        mx_seq *seq;
        mx_sampler *sampler;
        mx_ids all;        /* prompt, then what was generated */
        size_t n_prompt;
        size_t fed;        /* tokens the model has seen */
        uint32_t last_fed; /* tokens fed by the last prepare */
        bool started;      /* holds its sequence's blocks (or reused what it could) */
        bool ever_started;
        size_t cached;     /* prompt tokens the cache served at the first start */
        bool wants_logits;
        int32_t next;      /* what the engine sampled */
        mx_decoder dec;
        mx_buf pending;    /* decoded, not yet released (a stop string may start in it) */
        char **stop;
        size_t n_stop;
        uint32_t max_tokens, chunk;
        int32_t eos;               /* -1 with ignore_eos */
        mx_finish finish;
};

const char *mx_finish_name(mx_finish f) {
        static const char *const names[] = {"none", "eos", "length", "stop", "context"};
        return f <= MX_FINISH_CONTEXT ? names[f] : "?";
}

void mx_gen_free(mx_gen *g) {
        if (!g)
                return;
        mx_seq_free(g->seq);
        mx_sampler_free(g->sampler);
        mx_ids_free(&g->all);
        mx_buf_free(&g->pending);
        for (size_t i = 0; i < g->n_stop; i++)
                free(g->stop[i]);
        free(g->stop);
        free(g);
}

static int copy_stops(mx_gen *g, const mx_gen_opts *o, mx_error *err) {
        if (o->n_stop == 0)
                return 0;
        if (!(g->stop = calloc(o->n_stop, sizeof(char *))))
                return mx_error_set(err, -ENOMEM, "out of memory");
        for (size_t i = 0; i < o->n_stop; i++) {
                if (!o->stop[i] || !*o->stop[i])
                        return mx_error_set(err, -EINVAL, "stop string %zu is empty", i + 1);
                if (!(g->stop[i] = strdup(o->stop[i])))
                        return mx_error_set(err, -ENOMEM, "out of memory");
                g->n_stop++;
        }
        return 0;
}

int mx_gen_new(mx_engine *e, const mx_tokenizer *tok, const int32_t *prompt, size_t n_prompt,
               const mx_gen_opts *o, mx_gen **out, mx_error *err) {
        const mx_config *c = &mx_engine_model(e)->cfg;
        if (n_prompt == 0)
                return mx_error_set(err, -EINVAL, "the prompt is empty");
        int r = mx_sampling_check(&o->sampling, err);
        if (r < 0)
                return r;
        _cleanup_(mx_gen_freep) mx_gen *g = calloc(1, sizeof(*g));
        if (!g)
                return mx_error_set(err, -ENOMEM, "out of memory");
        g->e = e, g->tok = tok, g->n_prompt = n_prompt, g->max_tokens = o->max_tokens;
        g->chunk = o->prefill_chunk ? o->prefill_chunk : UINT32_MAX;
        g->eos = o->ignore_eos ? -1 : tok ? mx_tokenizer_eos(tok) : c->eos_token_id;
        if ((r = copy_stops(g, o, err)) < 0)
                return r;
        if ((r = mx_seq_new(e, o->max_context, &g->seq, err)) < 0)
                return r;
        mx_seq_set_cache(g->seq, !o->no_prefix_cache, o->cache_namespace);
        uint32_t cap = mx_seq_capacity(g->seq);
        if (n_prompt >= cap)
                return mx_error_set(err, -E2BIG, "the prompt of %zu tokens does not fit the %s of %u tokens", n_prompt,
                                    cap == mx_engine_kv_tokens(e) ? "KV cache (kv_memory)" : "context", cap);
        if (mx_ids_append(&g->all, prompt, n_prompt) < 0 ||
            mx_sampler_new(&o->sampling, c->vocab_size, &g->sampler) < 0 ||
            mx_buf_append(&g->pending, "", 0) < 0)
                return mx_error_set(err, -ENOMEM, "out of memory");
        if (tok)
                mx_decoder_init(&g->dec, tok);
        g->dec.bos_ws = !o->keep_leading_space;
        *out = MX_TAKE_PTR(g);
        return 0;
}

/* From the longest cached prefix, leaving the last token to compute. */
static void reuse(mx_gen *g) {
        g->fed = mx_seq_reuse(g->seq, g->all.v, g->all.n - 1);
        if (!g->ever_started)
                g->cached = g->fed < g->n_prompt ? g->fed : g->n_prompt;
        g->started = g->ever_started = true;
}

static uint32_t room_for(const mx_gen *g, size_t tokens) {
        uint32_t cap = mx_seq_capacity(g->seq);
        return tokens < cap ? (uint32_t)tokens : cap;
}

int mx_gen_start(mx_gen *g, uint32_t spare, mx_error *err) {
        if (g->started || g->finish != MX_FINISH_NONE)
                return 0;
        reuse(g);
        int r = mx_seq_reserve(g->seq, room_for(g, g->all.n + 1), spare);
        if (r == 0)
                return 0;
        mx_gen_suspend(g);
        return r == -ENOBUFS ? mx_error_set(err, r, "the KV cache has no room for %zu more tokens now",
                                            g->all.n + 1)
                             : mx_error_set(err, r, "out of memory");
}

int mx_gen_grow(mx_gen *g) {
        if (!g->started || g->finish != MX_FINISH_NONE)
                return 0;
        return mx_seq_reserve(g->seq, room_for(g, g->all.n), 0);
}

void mx_gen_suspend(mx_gen *g) {
        mx_seq_reset(g->seq);
        g->fed = 0, g->last_fed = 0;
        g->started = false;
}

size_t mx_gen_cached_tokens(const mx_gen *g) {
        return g->cached;
}

void mx_gen_prepare(mx_gen *g, mx_batch_item *item) {
        /* The engine samples (on the GPU where it runs), so no logits come
         * back: only the id. */
        *item = (mx_batch_item){.seq = g->seq, .sampler = g->sampler, .sampled = &g->next};
        g->last_fed = 0;
        g->wants_logits = false;
        if (g->finish != MX_FINISH_NONE)
                return;
        if (!g->started)
                reuse(g);
        size_t todo = g->all.n - g->fed; /* unread prompt, or the last sampled token */
        uint32_t n = todo > g->chunk ? g->chunk : (uint32_t)todo;
        item->tokens = g->all.v + g->fed;
        item->n_tokens = n;
        g->last_fed = n;
        g->wants_logits = g->fed + n == g->all.n;
        item->history = g->all.v;
        item->n_history = g->all.n;
        if (!g->wants_logits)
                item->sampler = NULL, item->sampled = NULL;
}

/* Length of the longest tail of text that begins some stop string. */
static size_t held_back(const mx_gen *g, const char *text, size_t n) {
        size_t hold = 0;
        for (size_t i = 0; i < g->n_stop; i++) {
                size_t len = strlen(g->stop[i]);
                for (size_t k = len - 1 < n ? len - 1 : n; k > hold; k--)
                        if (memcmp(text + n - k, g->stop[i], k) == 0) {
                                hold = k;
                                break;
                        }
        }
        return hold;
}

/* Moves what can no longer become a stop string from pending to text. */
static int release(mx_gen *g, mx_buf *text, bool all) {
        mx_buf *p = &g->pending;
        const char *first = NULL;
        for (size_t i = 0; i < g->n_stop; i++) {
                const char *m = memmem(p->p, p->n, g->stop[i], strlen(g->stop[i]));
                if (m && (!first || m < first))
                        first = m;
        }
        size_t out = first ? (size_t)(first - p->p) : all ? p->n : p->n - held_back(g, p->p, p->n);
        if (first)
                g->finish = MX_FINISH_STOP;
        int r = mx_buf_append(text, p->p, out);
        if (r < 0)
                return r;
        memmove(p->p, p->p + out, p->n - out);
        p->n -= out;
        p->p[p->n] = '\0';
        return 0;
}

static int finish(mx_gen *g, mx_finish why, mx_buf *text) {
        int r = g->tok ? mx_decoder_finish(&g->dec, &g->pending) : 0;
        if (r == 0)
                r = release(g, text, true);
        if (g->finish == MX_FINISH_NONE)
                g->finish = why;
        return r;
}

int mx_gen_advance(mx_gen *g, mx_buf *text, int32_t *token) {
        *token = -1;
        g->fed += g->last_fed;
        if (g->finish != MX_FINISH_NONE || !g->wants_logits)
                return 0;
        int32_t id = g->next;
        *token = id;
        if (id == g->eos)
                return finish(g, MX_FINISH_EOS, text);
        if (mx_ids_push(&g->all, id) < 0)
                return -ENOMEM;
        int r = g->tok ? mx_decoder_push(&g->dec, id, &g->pending) : 0;
        if (r == 0)
                r = release(g, text, false);
        if (r < 0 || g->finish != MX_FINISH_NONE)
                return r;
        size_t made = g->all.n - g->n_prompt;
        if (g->max_tokens && made >= g->max_tokens)
                return finish(g, MX_FINISH_LENGTH, text);
        if (mx_seq_len(g->seq) >= mx_seq_capacity(g->seq))
                return finish(g, MX_FINISH_CONTEXT, text);
        return 0;
}

mx_finish mx_gen_finished(const mx_gen *g) {
        return g->finish;
}

const int32_t *mx_gen_tokens(const mx_gen *g, size_t *n) {
        *n = g->all.n - g->n_prompt;
        return g->all.v + g->n_prompt;
}

size_t mx_gen_prompt_len(const mx_gen *g) {
        return g->n_prompt;
}
