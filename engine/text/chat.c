/* The Mixtral-Instruct prompt, as mistral-common's v1 instruct tokenizer
 * builds it after its request normalizer:
 *
 *   [BOS] then per message:  user       encode("[INST] " + content + " [/INST]")
 *                            assistant  encode(content) + [EOS]
 *
 * System messages (and the separate system prompt) join with "\n\n" into one
 * prompt that goes in front of the first user message, followed by "\n\n";
 * consecutive messages of one role merge with "\n\n". [INST] is plain text,
 * and ids are built message by message, never by tokenizing a rendered
 * string, so no user text can forge a control token. */
#include <string.h>

#include "mx_common.h"

#include "mixtral.h"

typedef struct turn {
        mx_role role;
        mx_buf text;
} turn;

static const char *role_name(mx_role r) {
        return r == MX_ROLE_SYSTEM ? "system" : r == MX_ROLE_USER ? "user" : "assistant";
}

int mx_role_from_string(const char *s, mx_role *out) {
        static const mx_role all[] = {MX_ROLE_SYSTEM, MX_ROLE_USER, MX_ROLE_ASSISTANT};
        for (size_t i = 0; i < MX_ELEMENTSOF(all); i++)
                if (strcmp(s, role_name(all[i])) == 0) {
                        *out = all[i];
                        return 0;
                }
        return -EINVAL;
}

static int join(mx_buf *b, const char *s, size_t n) {
        int r = b->n > 0 ? mx_buf_append(b, "\n\n", 2) : 0;
        return r < 0 ? r : mx_buf_append(b, s, n);
}

static void turns_free(turn *t, size_t n) {
        for (size_t i = 0; i < n; i++)
                mx_buf_free(&t[i].text);
        free(t);
}

/* Merging follows mistral-common: user texts join with "\n\n" even when
 * empty; empty assistant texts are dropped before joining. */
static int add_to_turn(turn *t, const mx_message *m) {
        if (m->role == MX_ROLE_ASSISTANT && m->len == 0)
                return 0;
        if (t->text.p) /* already holds a message, possibly empty */
                return join(&t->text, m->content, m->len);
        return mx_buf_append(&t->text, m->content, m->len);
}

/* The normalizer's view: one system prompt, alternating user/assistant. */
static int normalize(const char *system, const mx_message *msgs, size_t n, mx_buf *sys,
                     turn **out, size_t *n_out, mx_error *err) {
        turn *t = calloc(n + 1, sizeof(turn));
        size_t k = 0;
        int r = t ? 0 : -ENOMEM;
        if (r == 0 && system && *system)
                r = join(sys, system, strlen(system));
        for (size_t i = 0; r == 0 && i < n; i++) {
                const mx_message *m = &msgs[i];
                if (m->role == MX_ROLE_SYSTEM) {
                        /* empty system messages are dropped, as mistral-common does */
                        r = m->len ? join(sys, m->content, m->len) : 0;
                        continue;
                }
                if (k == 0 || t[k - 1].role != m->role)
                        t[k++].role = m->role;
                r = add_to_turn(&t[k - 1], m);
        }
        if (r < 0) {
                turns_free(t, k);
                return mx_error_set(err, r, "conversation: out of memory");
        }
        *out = t;
        *n_out = k;
        return 0;
}

static int check_turns(const turn *t, size_t n, mx_error *err) {
        if (n == 0)
                return mx_error_set(err, -EINVAL, "conversation: no user message");
        if (t[0].role != MX_ROLE_USER)
                return mx_error_set(err, -EINVAL,
                                    "conversation: the first message (after system messages) must be from the user, not the %s",
                                    role_name(t[0].role));
        if (t[n - 1].role != MX_ROLE_USER)
                return mx_error_set(err, -EINVAL,
                                    "conversation: the last message must be from the user, not the %s",
                                    role_name(t[n - 1].role));
        for (size_t i = 0; i < n; i++)
                if (t[i].role == MX_ROLE_ASSISTANT && t[i].text.n == 0)
                        return mx_error_set(err, -EINVAL, "conversation: assistant message %zu is empty",
                                            i + 1);
        return 0;
}

static int encode_turn(const mx_tokenizer *tok, const turn *t, const mx_buf *sys, bool first,
                       mx_ids *out) {
        if (t->role == MX_ROLE_ASSISTANT) {
                int r = mx_tokenize(tok, t->text.p, t->text.n, out);
                return r < 0 ? r : mx_ids_push(out, mx_tokenizer_eos(tok));
        }
        _cleanup_(mx_buf_free) mx_buf s = {0};
        int r = mx_buf_append(&s, "[INST] ", 7);
        if (r == 0 && first && sys->n)
                r = mx_buf_append(&s, sys->p, sys->n);
        if (r == 0 && first && sys->n)
                r = mx_buf_append(&s, "\n\n", 2);
        if (r == 0)
                r = mx_buf_append(&s, t->text.p, t->text.n);
        if (r == 0)
                r = mx_buf_append(&s, " [/INST]", 8);
        return r < 0 ? r : mx_tokenize(tok, s.p, s.n, out);
}

int mx_chat_encode(const mx_tokenizer *tok, const char *system, const mx_message *msgs,
                   size_t n, mx_ids *out, mx_error *err) {
        if (mx_tokenizer_bos(tok) < 0 || mx_tokenizer_eos(tok) < 0)
                return mx_error_set(err, -EINVAL, "tokenizer: no <s> and </s> control pieces for chat");
        _cleanup_(mx_buf_free) mx_buf sys = {0};
        turn *t = NULL;
        size_t nt = 0;
        int r = normalize(system, msgs, n, &sys, &t, &nt, err);
        if (r < 0)
                return r;
        r = check_turns(t, nt, err);
        if (r == 0) {
                r = mx_ids_push(out, mx_tokenizer_bos(tok));
                for (size_t i = 0; r == 0 && i < nt; i++)
                        r = encode_turn(tok, &t[i], &sys, i == 0, out);
                if (r < 0)
                        mx_error_set(err, r, "conversation: cannot encode: %s", strerror(-r));
        }
        turns_free(t, nt);
        return r;
}
