/* Fuzzes what any local user's bytes reach first: the input is a stream
 * of frames as a connection would deliver it, each frame is decoded as a
 * mixtrald.v1.Request, and a generate request is validated and tokenized
 * (with the tokenizer trained at build time, or MX_FUZZ_TOKENIZER), after
 * the search for NUL bytes inside text that every frame goes through. Besides
 * the sanitizers, it checks that framing agrees with itself and that what
 * the validator accepts is what the engine may rely on. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz.h"
#include "mixtrald.h"

/* The limit the daemon's own tests run with: frames of a fuzzer-sized
 * input can reach it. */
#define MAX_FRAME (64u << 10)

static mx_tokenizer *tok;

static void load(void) {
        const char *path = getenv("MX_FUZZ_TOKENIZER");
        mx_error err;
        if (mx_tokenizer_load(&tok, path ? path : MX_FUZZ_TOKENIZER, &err) < 0) {
                fprintf(stderr, "%s\n", err.msg);
                abort();
        }
}

/* UTF-8 with no NUL inside, and NUL-terminated. */
static bool text_ok(const char *s, size_t len) {
        return s && strlen(s) == len && mx_utf8_valid(s, len);
}

/* What the scheduler and the sampler take on trust once a request passed. */
static void check_accepted(const Mixtrald__V1__Generate *g, const md_gen_params *p) {
        if (!p->prompt.s == !p->n_messages || (p->prompt.s && (!p->prompt.len || !text_ok(p->prompt.s, p->prompt.len))))
                abort();
        if (p->raw && (p->n_messages || p->system.s))
                abort();
        if (p->system.s && !text_ok(p->system.s, p->system.len))
                abort();
        for (size_t i = 0; i < p->n_messages; i++)
                if (!text_ok(p->messages[i].content, p->messages[i].len) || p->messages[i].role > MX_ROLE_ASSISTANT)
                        abort();
        if (p->n_stop > 16 || p->n_stop != g->n_stop)
                abort();
        for (size_t i = 0; i < p->n_stop; i++) {
                size_t n = p->stop[i].len;
                if (n == 0 || n > 256 || !text_ok(p->stop[i].s, n))
                        abort();
        }
        if (mx_sampling_check(&p->sampling, NULL) < 0)
                abort();
}

static void generate(const Mixtrald__V1__Generate *g) {
        md_gen_params p;
        mx_error err;
        if (md_gen_params_from(g, &p, &err) == 0) {
                check_accepted(g, &p);
                mx_ids ids = {0};
                /* A tokenizer error is the request's fault, never a crash;
                 * a success starts with BOS, as the engine expects. */
                if (md_gen_params_ids(&p, tok, &ids, &err) == 0 &&
                    (ids.n == 0 || ids.v[0] != mx_tokenizer_bos(tok)))
                        abort();
                mx_ids_free(&ids);
        } else if (err.code >= 0 || !err.msg[0]) {
                abort();
        }
        md_gen_params_free(&p);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        if (!tok)
                load();
        size_t off = 0;
        while (off < size) {
                const uint8_t *buf = data + off;
                size_t n = size - off, hdr, body;
                int r = mxp_frame_find(buf, n, MAX_FRAME, &hdr, &body);
                if (r == 0 || r == -EMSGSIZE || r == -EBADMSG)
                        break; /* the connection would wait, or close */
                if (r != 1 || hdr == 0 || hdr > MXP_VARINT_MAX || body > MAX_FRAME || body > n - hdr)
                        abort();
                /* The same frame, cut exactly or one byte short, as reads
                 * might deliver it. */
                size_t h2, b2;
                if (mxp_frame_find(buf, hdr + body, MAX_FRAME, &h2, &b2) != 1 || h2 != hdr || b2 != body ||
                    mxp_frame_find(buf, hdr + body - 1, MAX_FRAME, &h2, &b2) != 0)
                        abort();
                Mixtrald__V1__Request *req = md_request_unpack(buf + hdr, body);
                /* The daemon looks for NUL bytes in text of every frame it
                 * could unpack, before anything else. */
                const char *nul = req ? md_request_nul_field(buf + hdr, body) : NULL;
                if (req && !nul && req->kind_case == MIXTRALD__V1__REQUEST__KIND_GENERATE)
                        generate(req->generate);
                md_request_free(req);
                off += hdr + body;
        }
        return 0;
}
