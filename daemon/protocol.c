/* Decoding and validating requests. Everything here is reachable by any
 * local user, so every field is checked before anything uses it: numbers
 * for range and NaN, text for UTF-8 and size, roles by name. */
#include <math.h>
#include <string.h>
#include <sys/random.h>

#include "mx_common.h"
#include "mixtrald.h"

/* Far above any context, yet bounded: a frame could hold millions. */
#define MAX_STOPS 16
#define MAX_STOP_BYTES 256
#define MAX_MESSAGES 4096

Mixtrald__V1__Request *md_request_unpack(const uint8_t *body, size_t len) {
        return mixtrald__v1__request__unpack(NULL, len, body);
}

void md_request_free(Mixtrald__V1__Request *r) {
        if (r)
                mixtrald__v1__request__free_unpacked(r, NULL);
}

void md_gen_params_free(md_gen_params *p) {
        free(p->messages);
        *p = (md_gen_params){0};
}

static int check_text(const char *field, const char *s, mx_error *err) {
        if (!mx_utf8_valid(s, strlen(s)))
                return mx_error_set(err, -EINVAL, "%s is not valid UTF-8", field);
        return 0;
}

static int check_unit(const char *field, double v, bool has, float *out, mx_error *err) {
        if (!has)
                return 0;
        /* Checked here as doubles: a huge double would become inf as a float. */
        if (!isfinite(v) || v < -1e6 || v > 1e6)
                return mx_error_set(err, -EINVAL, "%s %g is not a usable number", field, v);
        *out = (float)v;
        return 0;
}

static int sampling_from(const Mixtrald__V1__Generate *g, mx_sampling *s, mx_error *err) {
        mx_sampling_defaults(s);
        int r;
        if ((r = check_unit("temperature", g->temperature, g->has_temperature, &s->temperature, err)) < 0 ||
            (r = check_unit("top_p", g->top_p, g->has_top_p, &s->top_p, err)) < 0 ||
            (r = check_unit("min_p", g->min_p, g->has_min_p, &s->min_p, err)) < 0 ||
            (r = check_unit("repeat_penalty", g->repeat_penalty, g->has_repeat_penalty, &s->repeat_penalty,
                            err)) < 0)
                return r;
        if (g->has_top_k)
                s->top_k = g->top_k;
        if (g->has_seed)
                s->seed = g->seed;
        else if (getrandom(&s->seed, sizeof(s->seed), 0) != sizeof(s->seed))
                return mx_error_set(err, -EIO, "no randomness for a seed");
        return mx_sampling_check(s, err);
}

static int stops_from(const Mixtrald__V1__Generate *g, md_gen_params *p, mx_error *err) {
        if (g->n_stop > MAX_STOPS)
                return mx_error_set(err, -EINVAL, "%zu stop strings; at most %d", g->n_stop, MAX_STOPS);
        for (size_t i = 0; i < g->n_stop; i++) {
                size_t n = strlen(g->stop[i]);
                if (n == 0 || n > MAX_STOP_BYTES)
                        return mx_error_set(err, -EINVAL, "stop string %zu is empty or over %d bytes", i + 1,
                                            MAX_STOP_BYTES);
                int r = check_text("a stop string", g->stop[i], err);
                if (r < 0)
                        return r;
        }
        p->stop = (const char *const *)g->stop;
        p->n_stop = g->n_stop;
        return 0;
}

static int messages_from(const Mixtrald__V1__Generate *g, md_gen_params *p, mx_error *err) {
        if (g->n_messages > MAX_MESSAGES)
                return mx_error_set(err, -EINVAL, "%zu messages; at most %d", g->n_messages, MAX_MESSAGES);
        if (!(p->messages = calloc(g->n_messages, sizeof(*p->messages))))
                return mx_error_set(err, -ENOMEM, "out of memory");
        for (size_t i = 0; i < g->n_messages; i++) {
                const Mixtrald__V1__ChatMessage *m = g->messages[i];
                if (!m->role || mx_role_from_string(m->role, &p->messages[i].role) < 0)
                        return mx_error_set(err, -EINVAL, "message %zu: role must be user, assistant or system",
                                            i + 1);
                if (!m->content)
                        return mx_error_set(err, -EINVAL, "message %zu has no content", i + 1);
                int r = check_text("a message", m->content, err);
                if (r < 0)
                        return r;
                p->messages[i].content = m->content;
                p->messages[i].len = strlen(m->content);
        }
        p->n_messages = g->n_messages;
        return 0;
}

int md_gen_params_from(const Mixtrald__V1__Generate *g, md_gen_params *p, mx_error *err) {
        *p = (md_gen_params){.raw = g->has_raw && g->raw, .want_ids = g->has_want_token_ids && g->want_token_ids,
                             .ignore_eos = g->has_ignore_eos && g->ignore_eos,
                             .max_tokens = g->has_max_tokens ? g->max_tokens : 0, .system = g->system};
        if (!g->prompt == !g->n_messages)
                return mx_error_set(err, -EINVAL, "give either a prompt or messages");
        if (p->raw && g->n_messages)
                return mx_error_set(err, -EINVAL, "raw applies to a prompt, not to messages");
        if (p->raw && g->system)
                return mx_error_set(err, -EINVAL, "a system prompt needs the chat template (not raw)");
        int r;
        if (g->prompt) {
                if (!*g->prompt)
                        return mx_error_set(err, -EINVAL, "the prompt is empty");
                if ((r = check_text("the prompt", g->prompt, err)) < 0)
                        return r;
                p->prompt = g->prompt;
        } else if ((r = messages_from(g, p, err)) < 0)
                return r;
        if (g->system && (r = check_text("the system prompt", g->system, err)) < 0)
                return r;
        if ((r = sampling_from(g, &p->sampling, err)) < 0 || (r = stops_from(g, p, err)) < 0)
                return r;
        return 0;
}

int md_gen_params_ids(const md_gen_params *p, const mx_tokenizer *tok, mx_ids *ids, mx_error *err) {
        if (p->prompt && !p->raw) {
                mx_message m = {.role = MX_ROLE_USER, .content = p->prompt, .len = strlen(p->prompt)};
                return mx_chat_encode(tok, p->system, &m, 1, ids, err);
        }
        if (!p->prompt)
                return mx_chat_encode(tok, p->system, p->messages, p->n_messages, ids, err);
        int32_t bos = mx_tokenizer_bos(tok);
        if (bos >= 0 && mx_ids_push(ids, bos) < 0)
                return mx_error_set(err, -ENOMEM, "out of memory");
        int r = mx_tokenize(tok, p->prompt, strlen(p->prompt), ids);
        return r < 0 ? mx_error_set(err, r, "cannot tokenize the prompt: %s", strerror(-r)) : 0;
}
