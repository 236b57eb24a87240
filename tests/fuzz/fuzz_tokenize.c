/* Fuzzes encoding and decoding arbitrary bytes with a fixed tokenizer
 * (MX_FUZZ_TOKENIZER, or the one trained at build time), and checks two
 * properties on every input: decode(encode(x)) == x for valid UTF-8 without
 * U+2581, and streaming decode equals batch decode chunk for chunk. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz.h"
#include "mixtral.h"
#include "test_util.h"

static mx_tokenizer *tok;

static void load(void) {
        const char *path = getenv("MX_FUZZ_TOKENIZER");
        mx_error err;
        if (!path)
                path = MX_FUZZ_TOKENIZER;
        if (mx_tokenizer_load(&tok, path, &err) < 0) {
                fprintf(stderr, "%s\n", err.msg);
                abort();
        }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        if (!tok)
                load();
        mx_ids ids = {0};
        mx_buf batch = {0}, stream = {0};
        if (mx_tokenize(tok, (const char *)data, size, &ids) < 0 ||
            mx_detokenize(tok, ids.v, ids.n, &batch) < 0)
                abort();
        if (utf8_strict((const char *)data, size) && !memmem(data, size, "\xe2\x96\x81", 3) &&
            (batch.n != size || memcmp(batch.p, data, size) != 0))
                abort();
        mx_decoder d;
        mx_decoder_init(&d, tok);
        if (mx_buf_append(&stream, "", 0) < 0)
                abort();
        for (size_t i = 0; i <= ids.n; i++) {
                size_t before = stream.n;
                if ((i < ids.n ? mx_decoder_push(&d, ids.v[i], &stream) : mx_decoder_finish(&d, &stream)) < 0 ||
                    !utf8_strict(stream.p + before, stream.n - before))
                        abort();
        }
        if (stream.n != batch.n || memcmp(stream.p, batch.p, batch.n) != 0)
                abort();
        mx_ids_free(&ids);
        mx_buf_free(&batch);
        mx_buf_free(&stream);
        return 0;
}
