/* Generation parameters in the daemon's own terms, whatever transport they
 * came by. Everything here is reachable by any local user, so every field
 * is checked before anything uses it: numbers for range and NaN, text for
 * UTF-8, NUL bytes and size, roles by name, counts against limits. The
 * parameters own their text, so a request outlives the message that
 * carried it (tokenizing happens later, on another thread). */
#include <math.h>
#include <string.h>
#include <sys/random.h>

#include "mx_common.h"
#include "mixtrald.h"

/* Far above any context, yet bounded: a frame could hold millions. */
#define MAX_STOPS 16
#define MAX_STOP_BYTES 256
#define MAX_MESSAGES 4096

static char *text_dup(const char *s, size_t len) {
        char *p = malloc(len + 1);
        if (p) {
                memcpy(p, s, len);
                p[len] = '\0';
        }
        return p;
}

int md_text_set(md_text *t, const char *s, size_t len) {
        char *p = text_dup(s, len);
        if (!p)
                return -ENOMEM;
        free(t->s);
        *t = (md_text){p, len};
        return 0;
}

void md_gen_params_free(md_gen_params *p) {
        free(p->prompt.s);
        free(p->system.s);
        for (size_t i = 0; i < p->n_messages; i++)
                free((char *)p->messages[i].content);
        free(p->messages);
        for (size_t i = 0; i < p->n_stop; i++)
                free(p->stop[i].s);
        free(p->stop);
        *p = (md_gen_params){0};
}

int md_gen_params_add_message(md_gen_params *p, mx_role role, const char *content, size_t len) {
        if (p->n_messages >= MAX_MESSAGES)
                return -E2BIG;
        mx_message *m = realloc(p->messages, (p->n_messages + 1) * sizeof(*m));
        if (!m)
                return -ENOMEM;
        p->messages = m;
        char *c = text_dup(content, len);
        if (!c)
                return -ENOMEM;
        m[p->n_messages++] = (mx_message){.role = role, .content = c, .len = len};
        return 0;
}

int md_gen_params_add_stop(md_gen_params *p, const char *s, size_t len) {
        if (p->n_stop >= MAX_STOPS)
                return -E2BIG;
        md_text *v = realloc(p->stop, (p->n_stop + 1) * sizeof(*v));
        if (!v)
                return -ENOMEM;
        p->stop = v;
        v[p->n_stop] = (md_text){0};
        int r = md_text_set(&v[p->n_stop], s, len);
        if (r == 0)
                p->n_stop++;
        return r;
}

/* Text is valid UTF-8 without NUL bytes: a NUL would cut it short on its
 * way to the tokenizer, and the user would be answered about a prompt
 * they did not send. */
static int check_text(const char *field, const char *s, size_t len, mx_error *err) {
        if (memchr(s, '\0', len))
                return mx_error_set(err, -EINVAL, "%s holds a NUL byte", field);
        if (!mx_utf8_valid(s, len))
                return mx_error_set(err, -EINVAL, "%s is not valid UTF-8", field);
        return 0;
}

static int check_knob(const char *field, const md_knob *k, float *out, mx_error *err) {
        if (!k->set)
                return 0;
        /* Checked as doubles: a huge double would become inf as a float. */
        if (!isfinite(k->v) || k->v < -1e6 || k->v > 1e6)
                return mx_error_set(err, -EINVAL, "%s %g is not a usable number", field, k->v);
        *out = (float)k->v;
        return 0;
}

static int sampling_from(md_gen_params *p, mx_error *err) {
        mx_sampling *s = &p->sampling;
        mx_sampling_defaults(s);
        int r;
        if ((r = check_knob("temperature", &p->temperature, &s->temperature, err)) < 0 ||
            (r = check_knob("top_p", &p->top_p, &s->top_p, err)) < 0 ||
            (r = check_knob("min_p", &p->min_p, &s->min_p, err)) < 0 ||
            (r = check_knob("repeat_penalty", &p->repeat_penalty, &s->repeat_penalty, err)) < 0)
                return r;
        if (p->has_top_k)
                s->top_k = p->top_k;
        if (p->has_seed)
                s->seed = p->seed;
        else if (getrandom(&s->seed, sizeof(s->seed), 0) != sizeof(s->seed))
                return mx_error_set(err, -EIO, "no randomness for a seed");
        return mx_sampling_check(s, err);
}

static int check_stops(const md_gen_params *p, mx_error *err) {
        if (p->n_stop > MAX_STOPS)
                return mx_error_set(err, -EINVAL, "%zu stop strings; at most %d", p->n_stop, MAX_STOPS);
        for (size_t i = 0; i < p->n_stop; i++) {
                size_t n = p->stop[i].len;
                if (n == 0 || n > MAX_STOP_BYTES)
                        return mx_error_set(err, -EINVAL, "stop string %zu is empty or over %d bytes", i + 1,
                                            MAX_STOP_BYTES);
                int r = check_text("a stop string", p->stop[i].s, n, err);
                if (r < 0)
                        return r;
        }
        return 0;
}

static int check_messages(const md_gen_params *p, mx_error *err) {
        if (p->n_messages > MAX_MESSAGES)
                return mx_error_set(err, -EINVAL, "%zu messages; at most %d", p->n_messages, MAX_MESSAGES);
        for (size_t i = 0; i < p->n_messages; i++) {
                char field[48];
                snprintf(field, sizeof(field), "message %zu", i + 1);
                int r = check_text(field, p->messages[i].content, p->messages[i].len, err);
                if (r < 0)
                        return r;
        }
        return 0;
}

int md_gen_params_check(md_gen_params *p, mx_error *err) {
        if (!p->prompt.s == !p->n_messages)
                return mx_error_set(err, -EINVAL, "give either a prompt or messages");
        if (p->raw && p->n_messages)
                return mx_error_set(err, -EINVAL, "raw applies to a prompt, not to messages");
        if (p->raw && p->system.s)
                return mx_error_set(err, -EINVAL, "a system prompt needs the chat template (not raw)");
        int r;
        if (p->prompt.s) {
                if (!p->prompt.len)
                        return mx_error_set(err, -EINVAL, "the prompt is empty");
                if ((r = check_text("the prompt", p->prompt.s, p->prompt.len, err)) < 0)
                        return r;
        } else if ((r = check_messages(p, err)) < 0)
                return r;
        if (p->system.s && (r = check_text("the system prompt", p->system.s, p->system.len, err)) < 0)
                return r;
        if ((r = sampling_from(p, err)) < 0 || (r = check_stops(p, err)) < 0)
                return r;
        return 0;
}

uint64_t md_gen_params_min_tokens(const md_gen_params *p, const mx_tokenizer *tok) {
        uint64_t n = mx_tokenizer_min_tokens(tok, p->prompt.s, p->prompt.len) +
                     mx_tokenizer_min_tokens(tok, p->system.s, p->system.len);
        for (size_t i = 0; i < p->n_messages; i++)
                n += mx_tokenizer_min_tokens(tok, p->messages[i].content, p->messages[i].len);
        return n;
}

int md_gen_params_ids(const md_gen_params *p, const mx_tokenizer *tok, mx_ids *ids, mx_error *err) {
        if (p->prompt.s && !p->raw) {
                mx_message m = {.role = MX_ROLE_USER, .content = p->prompt.s, .len = p->prompt.len};
                return mx_chat_encode(tok, p->system.s, &m, 1, ids, err);
        }
        if (!p->prompt.s)
                return mx_chat_encode(tok, p->system.s, p->messages, p->n_messages, ids, err);
        int32_t bos = mx_tokenizer_bos(tok);
        if (bos >= 0 && mx_ids_push(ids, bos) < 0)
                return mx_error_set(err, -ENOMEM, "out of memory");
        int r = mx_tokenize(tok, p->prompt.s, p->prompt.len, ids);
        return r < 0 ? mx_error_set(err, r, "cannot tokenize the prompt: %s", strerror(-r)) : 0;
}
