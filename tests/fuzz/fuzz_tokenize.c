/* Fuzzes encoding and decoding arbitrary bytes with a fixed tokenizer
 * (MX_FUZZ_TOKENIZER, or the one trained at build time), and checks two
 * properties on every input: decode(encode(x)) == x for valid UTF-8 without
 * U+2581, and streaming decode equals batch decode chunk for chunk. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz.h"
#include "mixtral.h"

static mx_tokenizer *tok;

/* Strict UTF-8, written independently of the engine's tables. */
static bool valid_utf8(const uint8_t *s, size_t n) {
        static const uint32_t min[4] = {0, 0x80, 0x800, 0x10000};
        for (size_t i = 0; i < n;) {
                uint32_t need = s[i] < 0x80 ? 0 : (s[i] & 0xE0) == 0xC0 ? 1
                                : (s[i] & 0xF0) == 0xE0 ? 2 : (s[i] & 0xF8) == 0xF0 ? 3 : 4;
                if (need == 4)
                        return false;
                uint32_t cp = need ? s[i] & (0x7Fu >> (need + 1)) : s[i];
                for (uint32_t k = 1; k <= need; k++) {
                        if (i + k >= n || (s[i + k] & 0xC0) != 0x80)
                                return false;
                        cp = cp << 6 | (s[i + k] & 0x3F);
                }
                if (cp < min[need] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
                        return false;
                i += need + 1;
        }
        return true;
}

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
        if (valid_utf8(data, size) && !memmem(data, size, "\xe2\x96\x81", 3) &&
            (batch.n != size || memcmp(batch.p, data, size) != 0))
                abort();
        mx_decoder d;
        mx_decoder_init(&d, tok);
        if (mx_buf_append(&stream, "", 0) < 0)
                abort();
        for (size_t i = 0; i <= ids.n; i++) {
                size_t before = stream.n;
                if ((i < ids.n ? mx_decoder_push(&d, ids.v[i], &stream) : mx_decoder_finish(&d, &stream)) < 0 ||
                    !valid_utf8((const uint8_t *)stream.p + before, stream.n - before))
                        abort();
        }
        if (stream.n != batch.n || memcmp(stream.p, batch.p, batch.n) != 0)
                abort();
        mx_ids_free(&ids);
        mx_buf_free(&batch);
        mx_buf_free(&stream);
        return 0;
}
