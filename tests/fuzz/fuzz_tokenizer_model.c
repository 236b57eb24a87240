/* Fuzzes the tokenizer model parser (a serialized SentencePiece
 * ModelProto). A model it accepts must then encode and decode without
 * faults, including the input itself as text. */
#include <string.h>

#include "fuzz.h"
#include "mixtral.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        mx_tokenizer *tok = NULL;
        mx_error err;
        if (mx_tokenizer_load_buffer(&tok, data, size, "fuzz.model", &err) < 0)
                return 0;
        static const char *const texts[] = {"", " ", "Hello world", "  a\n\tb  ", "\xff\xfe\xe6\x97",
                                            "日本語 🙂", "\xe2\x96\x81x"};
        for (size_t i = 0; i < sizeof(texts) / sizeof(texts[0]); i++)
                fuzz_round_trip(tok, texts[i], strlen(texts[i]));
        fuzz_round_trip(tok, (const char *)data, size < 256 ? size : 256);
        int32_t ids[64];
        uint32_t n = mx_tokenizer_vocab_size(tok);
        for (int i = 0; i < 64; i++)
                ids[i] = (int32_t)((uint32_t)(i < (int)size ? data[i] * 131 + i : i) % n);
        mx_buf out = {0};
        mx_detokenize(tok, ids, 64, &out);
        mx_buf_free(&out);
        mx_tokenizer_free(tok);
        return 0;
}
