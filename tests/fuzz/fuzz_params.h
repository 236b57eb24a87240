/* What the daemon's request decoders (protobuf's and the HTTP API's JSON)
 * promise of parameters they accept, checked the same way by both fuzz
 * targets: the scheduler and the sampler take these on trust. */
#pragma once

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mixtrald.h"

/* The tokenizer trained at build time, or MX_FUZZ_TOKENIZER's; loaded once. */
static inline const mx_tokenizer *fuzz_tokenizer(void) {
        static mx_tokenizer *tok;
        const char *path = getenv("MX_FUZZ_TOKENIZER");
        mx_error err;
        if (!tok && mx_tokenizer_load(&tok, path ? path : MX_FUZZ_TOKENIZER, &err) < 0) {
                fprintf(stderr, "%s\n", err.msg);
                abort();
        }
        return tok;
}

/* UTF-8 with no NUL inside, and NUL-terminated. */
static inline bool fuzz_text_ok(const char *s, size_t len) {
        return s && strlen(s) == len && mx_utf8_valid(s, len);
}

static inline void fuzz_check_params(const md_gen_params *p) {
        if (!p->prompt.s == !p->n_messages ||
            (p->prompt.s && (!p->prompt.len || !fuzz_text_ok(p->prompt.s, p->prompt.len))))
                abort();
        if (p->raw && (p->n_messages || p->system.s))
                abort();
        if (p->system.s && !fuzz_text_ok(p->system.s, p->system.len))
                abort();
        for (size_t i = 0; i < p->n_messages; i++)
                if (!fuzz_text_ok(p->messages[i].content, p->messages[i].len) || p->messages[i].role > MX_ROLE_ASSISTANT)
                        abort();
        if (p->n_stop > 16)
                abort();
        for (size_t i = 0; i < p->n_stop; i++) {
                size_t n = p->stop[i].len;
                if (n == 0 || n > 256 || !fuzz_text_ok(p->stop[i].s, n))
                        abort();
        }
        if (mx_sampling_check(&p->sampling, NULL) < 0)
                abort();
}

/* A tokenizer error is the request's fault, never a crash; a success
 * starts with BOS, as the engine expects. */
static inline void fuzz_check_ids(const md_gen_params *p, const mx_tokenizer *tok) {
        mx_ids ids = {0};
        mx_error err;
        if (md_gen_params_ids(p, tok, &ids, &err) == 0 && (ids.n == 0 || ids.v[0] != mx_tokenizer_bos(tok)))
                abort();
        mx_ids_free(&ids);
}

/* A refusal is one line with a negative errno. */
static inline void fuzz_check_refusal(const mx_error *err) {
        if (err->code >= 0 || !err->msg[0] || strchr(err->msg, '\n'))
                abort();
}
