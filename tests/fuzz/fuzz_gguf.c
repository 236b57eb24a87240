/* Fuzzes GGUF files: whole files through the header parser, then, when
 * they parse, through model binding (configuration from the metadata,
 * merged experts split into views, every tensor the architecture needs),
 * and, when that works, the tokenizer built from the file's vocabulary,
 * which must then encode and decode. Whatever is accepted must describe
 * bytes inside the input: the first and last byte of every tensor and
 * every metadata string are read, so AddressSanitizer sees any pointer
 * past the end. */
#include <stdlib.h>
#include <string.h>

#include "fuzz.h"
#include "model.h"

static volatile uint8_t sink;

static void touch(const uint8_t *data, size_t size, const void *p, uint64_t n) {
        const uint8_t *b = p;
        if (n == 0)
                return;
        if (b < data || (uint64_t)(b - data) > size || n > size - (uint64_t)(b - data))
                abort();
        sink ^= b[0] ^ b[n - 1];
}

static void parse(const uint8_t *data, size_t size) {
        mx_gguf g;
        mx_error err;
        if (mx_gguf_parse(data, size, "fuzz.gguf", &g, &err) < 0)
                return;
        for (size_t i = 0; i < g.n_tensors; i++)
                touch(data, size, g.tensors[i].data, g.tensors[i].nbytes);
        for (size_t i = 0; i < g.n_kv; i++) {
                const mx_gguf_kv *kv = &g.kv[i];
                touch(data, size, kv->key, kv->key_len);
                touch(data, size, kv->value, kv->bytes);
                const uint8_t *at = kv->value;
                for (uint64_t k = 0; kv->type == MX_GGUF_ARRAY && kv->elem_type == MX_GGUF_STRING && k < kv->n; k++) {
                        const char *s;
                        uint64_t len;
                        mx_gguf_next_string(&at, &s, &len);
                        touch(data, size, s, len);
                }
        }
        mx_gguf_clear(&g);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        parse(data, size);
        mx_model *m = NULL;
        mx_tokenizer *tok = NULL;
        mx_error err;
        if (mx_model_open_gguf_buffer(&m, data, size, &err) < 0)
                return 0;
        for (size_t i = 0; i < m->n_tensors; i++)
                touch(data, size, m->tensors[i].data, m->tensors[i].nbytes);
        mx_footprint fp;
        mx_model_footprint(m, &fp);
        if (mx_model_load_tokenizer(m, &tok, &err) == 0) {
                static const char *const texts[] = {"", " ", "Hello world", "  a\n\tb  ", "\xff\xfe", "ab bc"};
                for (size_t i = 0; i < sizeof(texts) / sizeof(texts[0]); i++)
                        fuzz_round_trip(tok, texts[i], strlen(texts[i]));
                mx_tokenizer_free(tok);
        }
        mx_model_free(m);
        return 0;
}
