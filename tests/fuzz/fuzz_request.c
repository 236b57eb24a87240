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
#include "fuzz_params.h"

/* The limit the daemon's own tests run with: frames of a fuzzer-sized
 * input can reach it. */
#define MAX_FRAME (64u << 10)

static void generate(const Mixtrald__V1__Generate *g) {
        md_gen_params p;
        mx_error err;
        if (md_gen_params_from(g, &p, &err) == 0) {
                fuzz_check_params(&p);
                if (p.n_stop != g->n_stop)
                        abort();
                fuzz_check_ids(&p, fuzz_tokenizer());
        } else {
                fuzz_check_refusal(&err);
        }
        md_gen_params_free(&p);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
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
