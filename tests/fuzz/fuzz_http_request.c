/* Fuzzes the HTTP API's request bodies, which any local user (and any
 * holder of an API key) sends: the first byte picks the endpoint (even:
 * /v1/chat/completions, odd: /v1/completions), the rest is the body,
 * decoded as http_api.c does (md_http_gen_parse) and, when accepted,
 * tokenized as the core would (with the tokenizer trained at build time, or
 * MX_FUZZ_TOKENIZER). Besides the sanitizers, it checks that what the
 * decoder accepts is what the engine may rely on (fuzz_params.h), that a
 * refusal is one line of UTF-8, and that decoding is deterministic: the same body
 * decodes to the same parameters twice. */
#include "fuzz.h"
#include "fuzz_params.h"

static bool same_params(const md_http_gen_req *a, const md_http_gen_req *b) {
        const md_gen_params *p = &a->params, *q = &b->params;
        if (a->stream != b->stream || a->include_usage != b->include_usage || p->n_messages != q->n_messages ||
            p->n_stop != q->n_stop || p->max_tokens != q->max_tokens || p->prompt.len != q->prompt.len ||
            memcmp(&p->sampling, &q->sampling, sizeof(p->sampling)))
                return false;
        for (size_t i = 0; i < p->n_messages; i++)
                if (p->messages[i].role != q->messages[i].role || p->messages[i].len != q->messages[i].len ||
                    memcmp(p->messages[i].content, q->messages[i].content, p->messages[i].len))
                        return false;
        return !p->prompt.s || !memcmp(p->prompt.s, q->prompt.s, p->prompt.len);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        if (size == 0)
                return 0;
        md_http_kind kind = data[0] & 1 ? MD_HTTP_COMPLETION : MD_HTTP_CHAT;
        const char *body = (const char *)data + 1;
        md_http_gen_req a, b;
        mx_error err = {0};
        if (md_http_gen_parse(kind, body, size - 1, &a, &err) == 0) {
                fuzz_check_params(&a.params);
                if (kind == MD_HTTP_COMPLETION && (!a.params.raw || a.params.n_messages))
                        abort();
                /* Without a seed in the body each decoding draws its own. */
                if (a.params.has_seed && (md_http_gen_parse(kind, body, size - 1, &b, &err) != 0 || !same_params(&a, &b)))
                        abort();
                if (a.params.has_seed)
                        md_http_gen_req_free(&b);
                fuzz_check_ids(&a.params, fuzz_tokenizer());
        } else {
                fuzz_check_refusal(&err);
                /* It goes back in a JSON string. */
                if (!mx_utf8_valid(err.msg, strlen(err.msg)))
                        abort();
        }
        md_http_gen_req_free(&a);
        return 0;
}
